"""`stoker daemon`: the root of the supervision tree.

    daemon (this module; SIGTERM/SIGINT -> orderly shutdown, SIGHUP -> reload)
    ├── store        SQLite (WAL) behind one writer
    ├── hub          channels: seq numbering, ring + persisted log, fan-out
    ├── pool         one backend actor per (chat, agent)
    ├── listeners    Unix socket (and WebSocket when enabled); one client actor each
    └── systemd      sd_notify READY/STATUS/WATCHDOG/STOPPING

Shutdown order matters and is explicit: stop accepting; end every open turn and stop every
agent (the pool); say goodbye to clients once their queues drained; then the store flushes
and closes. The store is opened first and closed last so that every delta published during
shutdown is persisted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import socket as stdsocket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from daemon import log as logging_setup
from daemon.actors.pool import Pool
from daemon.actors.ref import ActorRef
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.config import file as config_mod
from daemon.config.agents import registry
from daemon.config.file import Config
from daemon.config.paths import Paths, ensure_private_dir
from daemon.errors import BadRequest, ConfigError, UnknownComputer
from daemon.execution.local import Executor, LocalExecutor
from daemon.listeners.connection import Limits
from daemon.listeners.unix import DaemonAlreadyRunning, UnixListener, bind_unix_socket
from daemon.log import Log
from daemon.service import subsystems
from daemon.service.systemd import notify as sdnotify
from daemon.store.sqlite import Store
from daemon.version import VERSION
from protocol import messages as m
from protocol.messages import TextBlock


class StateDirLocked(DaemonAlreadyRunning):
    pass


def lock_state_dir(path: Path) -> int:
    """Hold an exclusive lock on the state dir for the daemon's life: two daemons on one
    database would each think they own every agent."""
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = os.pread(fd, 32, 0).decode().strip()
        except OSError:
            owner = "?"
        os.close(fd)
        raise StateDirLocked(
            f"another daemon (pid {owner or '?'}) is using the state dir {path.parent}"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


class Daemon:
    """Request handlers and shared services for every connection (the `Handlers` of
    connection.py)."""

    def __init__(self, *, paths: Paths, settings: Settings, store: Store, hub: Hub,
                 pool: Pool, instance: str) -> None:
        self.paths = paths
        self.settings = settings
        self.store = store
        self.hub = hub
        self.pool = pool
        self.instance = instance
        self.started_at = time.time()
        self.websocket_url: str | None = None
        self.reloads = 0
        self._log = Log("daemon")
        self.extra_handlers: dict[type, Callable[[Any, str], Any]] = {}
        """Requests served by optional subsystems (workspaces, computers), by type."""
        self.on_reload: list[Callable[[Config], None]] = []
        self.on_shutdown: list[Callable[[], Any]] = []
        """Async callables run (shielded) after the pool stopped, before clients are
        dismissed: subsystems close their listeners here."""
        self.executors: dict[str | None, Executor] = {}
        """Executors by computer name (None = local); the SSH subsystem adds its own."""
        self.notifier: sdnotify.Notifier | None = None
        """systemd's notification socket, when the daemon runs under a notify-aware manager."""

    def welcome(self, encoding: str) -> m.Welcome:
        return m.Welcome(protocol=m.PROTOCOL_VERSION, version=VERSION, pid=os.getpid(),
                         encoding=encoding,
                         max_frame=int(self.settings.config.daemon.max_frame))

    def limits(self) -> Limits:
        ch = self.settings.config.channels
        return Limits(subscriber_queue=ch.subscriber_queue,
                      subscriber_bytes=int(ch.subscriber_bytes),
                      heartbeat=float(ch.heartbeat),
                      max_frame=int(self.settings.config.daemon.max_frame))

    async def handle(self, req: Any, client: str) -> Any:
        pool = self.pool
        if isinstance(req, m.Prompt):
            content = list(req.content) or [TextBlock(text=req.text)]
            return await pool.prompt(chat_id=req.chat, content=content, agent=req.agent,
                                     by=client)
        if isinstance(req, m.OpenChat):
            return await self.open_chat(req)
        if isinstance(req, m.Ping):
            return m.Pong(time=time.time())
        if isinstance(req, m.GetStatus):
            return await self.status()
        if isinstance(req, m.ListAgents):
            return self.list_agents()
        if isinstance(req, m.Cancel):
            await pool.cancel(req.chat, queued=req.queued, by=client, turn=req.turn)
            return m.Ok()
        if isinstance(req, m.CloseChat):
            await pool.close(req.chat, reason=f"closed by {client}")
            return m.Ok()
        if isinstance(req, m.ListChats):
            return m.ChatList(chats=await pool.list_chats(req.include_closed, req.cwd))
        if isinstance(req, m.Inspect):
            return await pool.inspect(req.chat)
        if isinstance(req, m.Permit):
            await pool.permit(req.chat, req.request, req.option, by=client)
            return m.Ok()
        if isinstance(req, m.SetPolicy):
            await pool.set_policy(req.chat, req.policy)
            return m.Ok()
        if isinstance(req, m.SetMode):
            await pool.set_mode(req.chat, req.mode)
            return m.Ok()
        if isinstance(req, m.SetConfig):
            await pool.set_config(req.chat, req.option, req.value)
            return m.Ok()
        if isinstance(req, m.Authenticate):
            await pool.authenticate(req.chat, req.method)
            return m.Ok()
        if isinstance(req, m.Reload):
            self.reload()
            return m.Ok()
        if isinstance(req, m.DescribeAgent):
            return await pool.describe_agent(req.agent)
        if isinstance(req, m.Warm):
            actor = await pool.warm(req.chat)
            return actor.detail()
        handler = self.extra_handlers.get(type(req))
        if handler is not None:
            result = handler(req, client)
            if hasattr(result, "__await__"):
                result = await result
            return result
        raise BadRequest(f"request {type(req).__name__} is not available in this daemon")

    async def open_chat(self, req: m.OpenChat) -> m.ChatInfo:
        if req.workspace is not None or req.project is not None:
            handler = self.extra_handlers.get(m.OpenChat)
            if handler is None:
                raise BadRequest("workspaces are not available in this daemon")
            result: m.ChatInfo = await handler(req, "")
            return result
        return await self.pool.open_chat(
            chat_id=req.chat, agent=req.agent, cwd=req.cwd, policy=req.policy,
            title=req.title, computer=req.computer, create=req.create,
            require_cwd=req.require_cwd, mcp=req.mcp_servers)

    def list_agents(self) -> m.AgentsResult:
        agents = []
        for spec in self.settings.agents.values():
            ok, why = spec.available()
            agents.append(m.AgentInfo(name=spec.name, command=list(spec.command), available=ok,
                                      source="config" if spec.source == "config" else "builtin",
                                      reason=why, computer=spec.computer))
        return m.AgentsResult(agents=agents, default=self.settings.config.daemon.default_agent)

    async def status(self) -> m.StatusResult:
        import psutil

        daemon_rss = int(psutil.Process().memory_info().rss)
        return m.StatusResult(
            pid=os.getpid(), version=VERSION, started_at=self.started_at,
            uptime=time.time() - self.started_at, socket=str(self.paths.socket),
            state_dir=str(self.paths.state_dir), chats=self.pool.chat_count,
            actors=self.pool.counts(), memory_rss=await self.pool.memory_used(),
            daemon_rss=daemon_rss,
            restarts_last_hour=await self.pool.restarts_since(time.time() - 3600),
            websocket=self.websocket_url)

    def reload(self) -> int:
        """Re-read the config (SIGHUP and `stoker reload` alike). An invalid file raises
        `ConfigError` and changes nothing. Agents whose definition changed are recycled; the
        others keep their process.

        systemd hears RELOADING=1 before and READY=1 after, also when the file is rejected:
        the old config is still in force, and the unit must leave `reloading` either way."""
        notifier = self.notifier
        if notifier is not None:
            notifier.reloading()
        try:
            return self._reload_config()
        finally:
            if notifier is not None:
                notifier.ready(status=_status_line(self.pool))

    def _reload_config(self) -> int:
        try:
            config = config_mod.load(self.paths.config, must_exist=self.paths.config_explicit)
        except ConfigError as exc:
            self._log.error("reload rejected; keeping the running config", error=exc.message)
            raise
        changed_keys = _changed_keys(self.settings.config, config)
        agents = registry(config)
        self.settings.config = config
        self.settings.agents = agents

        def changed(actor: ActorRef) -> bool:
            spec = agents.get(actor.agent)
            return spec is not None and spec.fingerprint() != actor.spec.fingerprint()

        recycled = self.pool.apply_settings(changed)
        logging_setup.set_level(config.daemon.log_level)
        for hook in self.on_reload:
            hook(config)
        self.reloads += 1
        self._log.info("config reloaded", agents=len(agents), recycled=recycled,
                       changed=",".join(changed_keys) or "nothing")
        return recycled


async def _instance_id(store: Store) -> str:
    rows = await store.query("SELECT value FROM meta WHERE key='instance'")
    if rows:
        return str(rows[0][0])
    import secrets

    instance = secrets.token_hex(6)
    store.execute("INSERT INTO meta(key, value) VALUES ('instance', ?)", (instance,))
    await store.flush()
    return instance


async def _clean_exit_marker(store: Store, value: str) -> str | None:
    rows = await store.query("SELECT value FROM meta WHERE key='clean_exit'")
    store.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('clean_exit', ?)", (value,))
    await store.flush()
    return str(rows[0][0]) if rows else None


def _listening_socket(paths: Paths, log: Log) -> tuple[stdsocket.socket, Path | None]:
    """The inherited socket (systemd socket activation) or a freshly bound one."""
    try:
        from daemon.service.systemd.activation import inherited_sockets, pick_unix_listener
    except ImportError:  # pragma: no cover - the module ships with the daemon
        inherited_sockets = None  # type: ignore[assignment]
    if inherited_sockets is not None:
        try:
            inherited = inherited_sockets(os.environ)
        except ValueError as exc:
            log.error("ignoring invalid socket activation variables", error=str(exc))
            inherited = []
        sock = pick_unix_listener(inherited) if inherited else None
        if sock is not None:
            log.info("using the socket passed by systemd", fd=sock.fileno())
            return sock, None
    return bind_unix_socket(paths.socket), paths.socket


async def serve(paths: Paths, config: Config, *,
                ready: Callable[[Daemon], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT. Returns the exit status."""
    log = Log("daemon")
    lock_fd = lock_state_dir(paths.lock_file)
    try:
        return await _serve_locked(paths, config, log, ready)
    finally:
        os.close(lock_fd)


async def _serve_locked(paths: Paths, config: Config, log: Log,
                        ready: Callable[[Daemon], None] | None) -> int:
    notifier = sdnotify.Notifier.from_env(os.environ)
    watchdog = sdnotify.watchdog_interval(os.environ, os.getpid())
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        # Socket activation reads LISTEN_* from os.environ: take the socket before the
        # scrub below removes them (scrubbing first silently ignored systemd's socket).
        sock, sock_path = _listening_socket(paths, log)
        # Our children must not inherit systemd's per-service variables.
        for name in os.environ.keys() - sdnotify.scrub_systemd_env(os.environ).keys():
            del os.environ[name]
        async with Store.open(paths.database) as store:
            instance = await _instance_id(store)
            previous = await _clean_exit_marker(store, "0")
            if previous == "0":
                log.warning("the previous daemon did not exit cleanly; reclaiming its agents")
            hub = Hub(store, ring_size=config.channels.ring_size)
            settings = Settings(config, registry(config))
            executors: dict[str | None, Executor] = {None: LocalExecutor(instance)}

            def executor_for(computer: str | None) -> Executor:
                found = executors.get(computer)
                if found is None:
                    raise UnknownComputer(f"unknown computer {computer!r}")
                return found

            pool = Pool(hub=hub, store=store, settings=settings, executors=executor_for,
                        instance=instance)
            daemon = Daemon(paths=paths, settings=settings, store=store, hub=hub, pool=pool,
                            instance=instance)
            daemon.executors = executors
            pool.unclean_start = previous == "0"
            daemon.notifier = notifier
            listener = UnixListener(sock, daemon, daemon.limits(),
                                    max_connections=config.daemon.max_connections,
                                    path=sock_path)
            exit_code = 0
            async with trio.open_nursery() as root:
                for prepare in subsystems.load_prepare():
                    await prepare(daemon, root)
                await root.start(pool.run)
                retention = config.channels
                await hub.prune(retain_deltas=retention.retain_deltas,
                                retain_age=float(retention.retain_age))
                for setup in subsystems.load():
                    await setup(daemon, root)
                await root.start(listener.serve)
                root.start_soon(_retention, hub, settings)
                if notifier is not None and watchdog:
                    await root.start(sdnotify.run_watchdog, notifier, watchdog)
                log.info("ready", socket=str(sock_path or sock.getsockname()),
                         activated=sock_path is None, state_dir=str(paths.state_dir),
                         pid=os.getpid(), version=VERSION, agents=len(settings.agents))
                if notifier is not None:
                    notifier.ready(status=_status_line(pool))
                    root.start_soon(_status_updates, notifier, pool)
                if ready is not None:
                    ready(daemon)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        with contextlib.suppress(ConfigError):
                            daemon.reload()
                        continue
                    log.info("shutting down", signal=signal.Signals(signum).name)
                    break
                if notifier is not None:
                    notifier.stopping()
                listener.stop_accepting()
                with trio.CancelScope(shield=True):
                    await pool.shutdown("daemon shutting down")
                    for hook in daemon.on_shutdown:
                        try:
                            await hook()
                        except Exception:
                            log.exception("shutdown hook failed")
                    await listener.close_connections("daemon shutting down")
                root.cancel_scope.cancel()
            await _clean_exit_marker(store, "1")
        listener.unlink()
    log.info("stopped")
    return exit_code


async def _retention(hub: Hub, settings: Settings) -> None:
    """Prune the delta log to the retention in the (live) config every ten minutes (the
    first pass runs at startup, before clients are accepted)."""
    log = Log("hub")
    while True:
        await trio.sleep(600)
        ch = settings.config.channels
        try:
            await hub.prune(retain_deltas=ch.retain_deltas, retain_age=float(ch.retain_age))
        except Exception:
            log.exception("retention pass failed")


def _changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted names of the settings a reload changes (`lifecycle.idle_ttl`, `agents.x`):
    names only, never values, which may be secrets (agent env)."""
    before, after = config_mod.dump(old), config_mod.dump(new)
    keys: list[str] = []
    for section in sorted(before.keys() | after.keys()):
        a, b = before.get(section), after.get(section)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            keys.extend(f"{section}.{k}" for k in sorted(a.keys() | b.keys())
                        if a.get(k) != b.get(k))
        else:
            keys.append(section)
    return keys


def _status_line(pool: Pool) -> str:
    counts = pool.counts()
    return f"{counts.warm} warm, {counts.busy} busy, {pool.chat_count} chats"


async def _status_updates(notifier: Any, pool: Pool) -> None:
    last = ""
    while True:
        await trio.sleep(5)
        line = _status_line(pool)
        if line != last:
            notifier.status(line)
            last = line
