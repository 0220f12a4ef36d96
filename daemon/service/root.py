"""`stoker daemon`: the root of the supervision tree.

    daemon (this module; SIGTERM/SIGINT -> orderly shutdown, SIGHUP -> reload)
    ├── store        SQLite (WAL) behind one writer; opened first, closed last
    ├── hub          channels: seq numbering, ring + persisted log, fan-out
    └── the children of `children()`, started in order, stopped in reverse:
        unix-clients, websocket-clients   goodbye to clients (stopped last)
        ssh          remote computers and their executors (before the pool loads chats)
        mcp-offer    Stoker's MCP server offered to agent sessions (daemon/mcp/offer.py)
        pool         one backend actor per (chat, agent); the core requests
        retention    the delta log's retention pass
        workspaces   worktrees and the reaper
        computers    remote worktree hosts; the `computers` request
        tasks        child chats: task requests, scheduling, results
        mcp-http     Stoker's MCP server over HTTP, bound on first use (listeners/mcp_http)
        websocket    the WebSocket listener, when enabled
        unix         the Unix socket listener
        tasks        background tasks (child chats)
        workflows    workflow runs, each an actor; their steps are tasks
        systemd      READY/STATUS/WATCHDOG/STOPPING (stopped first)

Shutdown order is the reverse of the start: stop accepting; end every open turn and stop
every agent (the pool); close remote connections; say goodbye to clients once their queues
drained; then the store flushes and closes, so that every delta published during shutdown
is persisted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import resource
import signal
import socket as stdsocket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from daemon.actors.pool import Pool
from daemon.actors.settings import Settings
from daemon.channels.hub import Hub
from daemon.config.agents import registry
from daemon.config.file import Config
from daemon.config.paths import Paths, ensure_private_dir
from daemon.errors import ConfigError, UnknownComputer
from daemon.execution.local import Executor, LocalExecutor
from daemon.listeners.mcp_http import McpHttpListener
from daemon.listeners.unix import DaemonAlreadyRunning, UnixListener, bind_unix_socket
from daemon.listeners.websocket.service import WebSocketService
from daemon.log import Log
from daemon.router import Router, Routes, slow_requests
from daemon.service import core
from daemon.service.core import Core
from daemon.service.reload import Reloader, status_line
from daemon.service.systemd import notify as sdnotify
from daemon.service.tree import ChildSpec, Tree
from daemon.ssh import service as ssh
from daemon.ssh.service import SshService
from daemon.store import meta
from daemon.store.sqlite import Store
from daemon.tasks import service as tasks
from daemon.tasks.service import TaskService
from daemon.traces import otel
from daemon.traces import service as traces
from daemon.traces.metrics import Gauges, Metrics
from daemon.traces.service import TraceService
from daemon.version import VERSION
from daemon.workflows import service as workflows
from daemon.workflows.service import WorkflowService
from daemon.workspaces import subsystem as workspaces
from daemon.workspaces.service import WorkspaceService
from daemon.workspaces.subsystem import Workspaces
from protocol import messages as m

REQUEST_TABLES: tuple[Routes[Any], ...] = (core.ROUTES, workspaces.ROUTES, ssh.ROUTES,
                                           traces.ROUTES, tasks.ROUTES, workflows.ROUTES)
"""Every table of request handlers, in the order the tree's children register them."""

SLOW_REQUESTS = slow_requests(*REQUEST_TABLES)
"""The requests answered in their own task, as the protocol document lists them (read from
the tables, without starting a daemon)."""


class StateDirLocked(DaemonAlreadyRunning):
    pass


class StartupFailed(RuntimeError):
    """The state dir or the socket cannot be made (a path through a file, too long for a
    Unix socket, not permitted): one line for the person who started the daemon."""


def _startup_step(what: str, path: Path, step: Callable[[], Any]) -> Any:
    try:
        return step()
    except (DaemonAlreadyRunning, StartupFailed):
        raise
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename not in (None, str(path)) else ""
        message = f"cannot use {what} {path}: {where}{exc.strerror or exc}"
        if isinstance(exc, PermissionError):
            raise PermissionError(message) from None
        raise StartupFailed(message) from None


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


class Service:
    """The daemon as its connections see it (the `Handlers` of `listeners.connection`): the
    hub for subscriptions, the router for every other request."""

    def __init__(self, *, hub: Hub, router: Router, core: Core, reloader: Reloader,
                 metrics: Metrics, settings: Settings,
                 spans: otel.TurnSpans | None = None) -> None:
        self.hub = hub
        self.router = router
        self.core = core
        self.reloader = reloader
        self.metrics = metrics
        self.settings = settings
        self.spans = spans
        """The OpenTelemetry turn spans, when exported (flushed at the daemon's stop)."""

    async def handle(self, request: Any, client: str) -> Any:
        return await self.router.handle(request, client)

    def is_slow(self, request: object) -> bool:
        return self.router.is_slow(request)

    def welcome(self, encoding: str) -> m.Welcome:
        return self.core.welcome(encoding)

    async def render_metrics(self) -> bytes | None:
        if not self.settings.config.websocket.metrics:
            return None
        return await self.metrics.render()


@dataclass(frozen=True, slots=True)
class Parts:
    """Everything the children are made of, built before the tree (none of it does I/O
    until its child starts)."""

    paths: Paths
    settings: Settings
    hub: Hub
    pool: Pool
    notifier: sdnotify.Notifier | None
    watchdog: float | None
    ssh: SshService
    workspaces: Workspaces
    websocket: WebSocketService
    unix: UnixListener
    core: Core
    traces: TraceService
    tasks: TaskService
    workflows: WorkflowService
    mcp_http: McpHttpListener


def children(p: Parts) -> list[ChildSpec]:
    """The tree below the hub, in start order (stopped in reverse)."""
    reason = "daemon shutting down"

    async def nothing(nursery: trio.Nursery) -> None:
        del nursery

    async def unix_goodbye() -> None:
        await p.unix.close_connections(reason)

    async def start_pool(nursery: trio.Nursery) -> None:
        await nursery.start(p.pool.run)

    async def stop_pool() -> None:
        await p.pool.shutdown(reason)

    async def start_retention(nursery: trio.Nursery) -> None:
        # The first pass runs now, before clients are accepted.
        await _prune(p.hub, p.settings)
        nursery.start_soon(_retention, p.hub, p.settings)

    async def attach_computers(nursery: trio.Nursery) -> None:
        p.ssh.attach_workspaces(p.workspaces.service)

    async def start_unix(nursery: trio.Nursery) -> None:
        await nursery.start(p.unix.serve)

    async def stop_unix() -> None:
        p.unix.stop_accepting()

    async def announce(nursery: trio.Nursery) -> None:
        await _announce(p, nursery)

    async def stopping() -> None:
        if p.notifier is not None:
            p.notifier.stopping()

    return [
        # Started first so that they stop last: goodbye once every turn has ended.
        ChildSpec("unix-clients", start=nothing, stop=unix_goodbye),
        ChildSpec("websocket-clients", start=nothing, stop=p.websocket.close_connections),
        # Executors of remote computers exist before the pool rebuilds actors on them.
        ChildSpec("ssh", start=p.ssh.start, stop=p.ssh.close, reload=p.ssh.reload),
        ChildSpec("mcp-offer", start=p.tasks.offer_mcp, stop=p.tasks.withdraw_mcp),
        ChildSpec("pool", start=start_pool, stop=stop_pool, routes=core.ROUTES.bind(p.core)),
        ChildSpec("retention", start=start_retention),
        ChildSpec("workspaces", start=p.workspaces.start,
                  routes=workspaces.ROUTES.bind(p.workspaces)),
        ChildSpec("computers", start=attach_computers, routes=ssh.ROUTES.bind(p.ssh)),
        ChildSpec("traces", start=nothing, routes=traces.ROUTES.bind(p.traces)),
        ChildSpec("tasks", start=p.tasks.start, stop=p.tasks.stop, reload=p.tasks.reload,
                  routes=tasks.ROUTES.bind(p.tasks)),
        ChildSpec("workflows", start=p.workflows.start, stop=p.workflows.stop,
                  routes=workflows.ROUTES.bind(p.workflows)),
        # The doors open once everything behind them is up, and close first.
        ChildSpec("mcp-http", start=p.mcp_http.start, stop=p.mcp_http.stop),
        ChildSpec("websocket", start=p.websocket.start, stop=p.websocket.stop_accepting),
        ChildSpec("unix", start=start_unix, stop=stop_unix),
        ChildSpec("systemd", start=announce, stop=stopping),
    ]


async def _announce(p: Parts, nursery: trio.Nursery) -> None:
    """The last child: everything is up, say so (log, READY=1) and keep systemd posted."""
    notifier = p.notifier
    if notifier is not None and p.watchdog:
        await nursery.start(sdnotify.run_watchdog, notifier, p.watchdog)
    sock_path = p.unix.path
    log = Log("daemon")
    log.info("ready", socket=str(sock_path or p.unix.address), activated=sock_path is None,
             state_dir=str(p.paths.state_dir), pid=os.getpid(), version=VERSION,
             agents=len(p.settings.agents))
    if notifier is not None:
        notifier.ready(status=status_line(p.pool))
        nursery.start_soon(_status_updates, notifier, p.pool)


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


def raise_open_file_limit(log: Log) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one. systemd starts services at 1024 soft
    (524288 hard) and expects a program that needs more to raise it: every agent costs the
    daemon three pipes, every client a socket, and 1024 would let a few hundred of them
    starve the store and new agents of descriptors (EMFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit", soft=soft, hard=hard, error=str(exc))
        return
    log.info("raised the open-file limit", soft=target, was=soft)


async def serve(paths: Paths, config: Config, *,
                ready: Callable[[Service], None] | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT. Returns the exit status."""
    log = Log("daemon")
    raise_open_file_limit(log)
    lock_fd: int = _startup_step("the state dir", paths.state_dir,
                                 lambda: lock_state_dir(paths.lock_file))
    try:
        return await _serve_locked(paths, config, log, ready)
    finally:
        os.close(lock_fd)


async def _serve_locked(paths: Paths, config: Config, log: Log,
                        ready: Callable[[Service], None] | None) -> int:
    notifier = sdnotify.Notifier.from_env(os.environ)
    watchdog = sdnotify.watchdog_interval(os.environ, os.getpid())
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        # Socket activation reads LISTEN_* from os.environ: take the socket before the
        # scrub below removes them (scrubbing first silently ignored systemd's socket).
        sock, sock_path = _startup_step("the socket", paths.socket,
                                        lambda: _listening_socket(paths, log))
        # Our children must not inherit systemd's per-service variables.
        for name in os.environ.keys() - sdnotify.scrub_systemd_env(os.environ).keys():
            del os.environ[name]
        async with Store.open(paths.database,
                              patience=config.daemon.storage_patience) as store:
            instance = await meta.instance_id(store)
            previous = await meta.swap_clean_exit(store, "0")
            if previous == "0":
                log.warning("the previous daemon did not exit cleanly; reclaiming its agents")
            service, tree, unix = build(paths, config, store, instance, sock, sock_path,
                                         notifier, watchdog)
            service.core.pool.unclean_start = previous == "0"
            reloader = service.reloader
            async with trio.open_nursery() as root:
                await tree.start(root)
                if ready is not None:
                    ready(service)
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        with contextlib.suppress(ConfigError):
                            reloader.reload()
                        continue
                    log.info("shutting down", signal=signal.Signals(signum).name)
                    break
                await tree.stop()
                # Every turn has ended (the pool's stop): export their spans before exit.
                await otel.shutdown(service.spans, Log("traces"))
                root.cancel_scope.cancel()
            await meta.swap_clean_exit(store, "1")
        unix.unlink()
    log.info("stopped")
    return 0


def build(paths: Paths, config: Config, store: Store, instance: str,
           sock: stdsocket.socket, sock_path: Path | None,
           notifier: sdnotify.Notifier | None, watchdog: float | None
           ) -> tuple[Service, Tree, UnixListener]:
    """Make every part and the tree (no I/O: each part does its own when its child
    starts). The router is complete when this returns."""
    collecting = config.traces.metrics
    metrics = Metrics(collecting=collecting)
    hub_tap, spans = otel.tap(metrics.observe if collecting else None,
                              config.traces.otlp_endpoint, Log("traces"))
    hub = Hub(store, ring_size=config.channels.ring_size, tap=hub_tap)
    settings = Settings(config, registry(config))
    executors: dict[str | None, Executor] = {None: LocalExecutor(instance)}

    def executor_for(computer: str | None) -> Executor:
        found = executors.get(computer)
        if found is None:
            raise UnknownComputer(f"unknown computer {computer!r}")
        return found

    pool = Pool(hub=hub, store=store, settings=settings, executors=executor_for,
                instance=instance)
    reloader = Reloader(paths=paths, settings=settings, pool=pool, notifier=notifier)
    workspace_service = WorkspaceService(store=store, pool=pool, hub=hub, settings=settings,
                                         state_dir=paths.state_dir)
    router = Router()
    the_core = Core(paths=paths, settings=settings, pool=pool, workspaces=workspace_service,
                    reload=reloader.reload, websocket_url=lambda: websocket.url)
    service = Service(hub=hub, router=router, core=the_core, reloader=reloader,
                      metrics=metrics, settings=settings, spans=spans)
    metrics.attach(Gauges(actors_by_state=lambda: pool.counts().by_state,
                          agent_rss_by_agent=pool.rss_by_agent, hub=hub.statistics,
                          store=lambda: store.statistics()))  # read at scrape time
    if collecting:
        store.time_commits(metrics.store_commit_seconds.observe)
    task_service = TaskService(pool=pool, hub=hub, store=store, settings=settings,
                               workspaces=workspace_service,
                               socket=str(sock_path or paths.socket))
    the_core.tasks = task_service
    websocket = WebSocketService(service, config=lambda: settings.config.websocket,
                                 token_file=paths.token_file, limits=the_core.limits)
    unix = UnixListener(sock, service, the_core.limits,
                        max_connections=config.daemon.max_connections, path=sock_path)
    ssh_service = SshService(executors=executors, instance=instance, pool=pool,
                             settings=settings)
    parts = Parts(
        paths=paths, settings=settings, hub=hub, pool=pool, notifier=notifier,
        watchdog=watchdog, ssh=ssh_service,
        workspaces=Workspaces(workspace_service), websocket=websocket, unix=unix,
        core=the_core, traces=TraceService(store), tasks=task_service,
        workflows=WorkflowService(pool=pool, hub=hub, tasks=task_service, store=store,
                                  settings=settings, config_dir=paths.config.parent),
        mcp_http=McpHttpListener(service, config=lambda: settings.config.websocket,
                                 forward=ssh_service.forward))
    the_core.mcp_http_url = lambda: parts.mcp_http.url
    tree = Tree(children(parts), router)
    reloader.children = tree.reload
    return service, tree, unix


async def _retention(hub: Hub, settings: Settings) -> None:
    """Prune the delta log to the retention in the (live) config every ten minutes (the
    first pass runs at startup, before clients are accepted)."""
    log = Log("hub")
    while True:
        await trio.sleep(600)
        try:
            await _prune(hub, settings)
        except Exception:
            log.exception("retention pass failed")


async def _prune(hub: Hub, settings: Settings) -> None:
    """One retention pass: the delta log and the state transitions (never those within the
    restart window, which restart intensity counts)."""
    config = settings.config
    ch = config.channels
    await hub.prune(retain_deltas=ch.retain_deltas, retain_age=float(ch.retain_age),
                    retain_transitions=max(float(ch.retain_transitions),
                                           float(config.lifecycle.restart_window)))


async def _status_updates(notifier: sdnotify.Notifier, pool: Pool) -> None:
    last = ""
    while True:
        await trio.sleep(5)
        line = status_line(pool)
        if line != last:
            notifier.status(line)
            last = line
