"""The environment every child of the daemon gets: without systemd's per-process variables.

systemd hands a service its notification socket, watchdog and activation sockets through
environment variables that describe *this* process only. An agent that saw our
``NOTIFY_SOCKET`` could report ``READY``/``STOPPING`` on our behalf (systemd accepts it under
``NotifyAccess=all``), and one that saw ``LISTEN_FDS`` could believe it was socket
activated. So every spawner (local processes, terminals, git, the SSH launcher) scrubs them;
the service's systemd module re-exports these names for its own start-up.
"""

from __future__ import annotations

from collections.abc import Mapping

#: The variables through which systemd hands a service its notification socket, its
#: watchdog and its activation sockets. They describe *this* process only.
SYSTEMD_ENV_VARS: frozenset[str] = frozenset(
    {
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
        "WATCHDOG_PID",
        "LISTEN_FDS",
        "LISTEN_PID",
        "LISTEN_FDNAMES",
    }
)

#: Whole families scrubbed as well, so that a variable added by a later systemd (or by
#: ``systemd-socket-activate``) does not leak to children either.
SYSTEMD_ENV_PREFIXES: tuple[str, ...] = ("LISTEN_", "WATCHDOG_")


def scrub_systemd_env(env: Mapping[str, str]) -> dict[str, str]:
    """Return a copy of *env* without the systemd per-process variables.

    Removes :data:`SYSTEMD_ENV_VARS` and every ``LISTEN_*``/``WATCHDOG_*`` variable. Meant
    for every child the daemon spawns (agents, terminals, git): those variables name *our*
    notification socket, watchdog and activation sockets, and a child acting on them
    would speak for the daemon.
    """
    return {
        key: value
        for key, value in env.items()
        if key not in SYSTEMD_ENV_VARS and not key.startswith(SYSTEMD_ENV_PREFIXES)
    }
