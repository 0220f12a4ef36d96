"""Re-reading the config (SIGHUP and `stoker reload` alike).

An invalid file raises `ConfigError` and changes nothing. Agents whose definition changed are
recycled; the others keep their process. Then each child of the tree that applies a config
gets it (`ChildSpec.reload`, e.g. the SSH subsystem reconnecting a changed computer).

systemd hears RELOADING=1 before and READY=1 after, also when the file is rejected: the old
config is still in force, and the unit must leave `reloading` either way.
"""

from __future__ import annotations

from collections.abc import Callable

from daemon import log as logging_setup
from daemon.actors.pool import Pool
from daemon.actors.ref import ActorRef
from daemon.actors.settings import Settings
from daemon.config import file as config_mod
from daemon.config.agents import registry
from daemon.config.file import Config
from daemon.config.paths import Paths
from daemon.errors import ConfigError
from daemon.log import Log
from daemon.service.systemd import notify as sdnotify
from protocol import messages as m

STARTUP_ONLY = frozenset({
    "daemon.max_connections", "daemon.storage_patience", "channels.ring_size",
    "websocket.enabled", "websocket.host",
    "websocket.port", "websocket.max_message", "traces.otlp_endpoint", "traces.metrics"})
"""The settings read once, when the daemon starts (docs/OPERATIONS.md, "Reloading the
config"; tests/unit/test_reload_report.py holds the two together): a reload that changes
one says it needs a restart instead of pretending it applied."""


class Reloader:
    """Applies a re-read config to the settings, the pool and the tree's children."""

    def __init__(self, *, paths: Paths, settings: Settings, pool: Pool,
                 notifier: sdnotify.Notifier | None) -> None:
        self._paths = paths
        self._settings = settings
        self._pool = pool
        self._notifier = notifier
        self.children: Callable[[Config], None] = _no_children
        """The tree's `reload`, set once the tree is built (the tree's routes need this
        object's `reload` first)."""
        self.reloads = 0
        self._log = Log("daemon")

    def reload(self) -> m.ReloadResult:
        """Re-read the config; what changed, and what of it needs a restart."""
        notifier = self._notifier
        if notifier is not None:
            notifier.reloading()
        try:
            return self._reload_config()
        finally:
            if notifier is not None:
                notifier.ready(status=status_line(self._pool))

    def _reload_config(self) -> m.ReloadResult:
        try:
            config = config_mod.load(self._paths.config,
                                     must_exist=self._paths.config_explicit)
        except ConfigError as exc:
            self._log.error("reload rejected; keeping the running config", error=exc.message)
            raise
        changed_keys = changed_settings(self._settings.config, config)
        agents = registry(config)
        self._settings.config = config
        self._settings.agents = agents

        def changed(actor: ActorRef) -> bool:
            spec = agents.get(actor.agent)
            return spec is not None and spec.fingerprint() != actor.spec.fingerprint()

        recycled = self._pool.apply_settings(changed)
        logging_setup.set_level(config.daemon.log_level)
        self.children(config)
        self.reloads += 1
        self._log.info("config reloaded", agents=len(agents), recycled=recycled,
                       changed=",".join(changed_keys) or "nothing")
        restart = [key for key in changed_keys if key in STARTUP_ONLY]
        if restart:
            self._log.warning("these settings take effect at the next start",
                              keys=",".join(restart))
        return m.ReloadResult(changed=changed_keys, restart_needed=restart)


def _no_children(config: Config) -> None:
    del config


def changed_settings(old: Config, new: Config) -> list[str]:
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


def status_line(pool: Pool) -> str:
    """The one-line status systemd shows (`systemctl status`)."""
    counts = pool.counts()
    return f"{counts.warm} warm, {counts.busy} busy, {pool.chat_count} chats"
