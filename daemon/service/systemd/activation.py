"""Socket activation: take over the listening sockets systemd opened for us.

With ``stoker.socket`` enabled, systemd binds the daemon's Unix socket itself and starts the
service on the first connection, passing the open socket as an inherited file descriptor.
The protocol is that of ``sd_listen_fds(3)``:

* ``$LISTEN_PID`` names the process the descriptors are meant for. Anything else (a child
  that inherited the environment, a wrapper) must ignore them.
* ``$LISTEN_FDS`` counts them; they are numbered from ``SD_LISTEN_FDS_START`` (3) on.
* ``$LISTEN_FDNAMES`` (optional) names them, colon-separated, from the socket units'
  ``FileDescriptorName=`` (by default the socket unit's name).

Why it matters: clients can connect before the daemon has started (or while it restarts);
the kernel queues them on the socket systemd keeps open, so a restart loses no connection.
The daemon must therefore prefer an inherited listener over binding its own path, and must
never unlink that path on shutdown: it belongs to the socket unit.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "LISTEN_ENV_VARS",
    "PREFERRED_NAMES",
    "SD_LISTEN_FDS_START",
    "InheritedSocket",
    "inherited_sockets",
    "pick_unix_listener",
]

logger = logging.getLogger("stoker.activation")

#: The first inherited descriptor: 0-2 are stdio.
SD_LISTEN_FDS_START = 3

#: What :func:`inherited_sockets` removes from ``os.environ`` (``unset=True``).
LISTEN_ENV_VARS: tuple[str, ...] = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

#: Names :func:`pick_unix_listener` prefers, best first: ``FileDescriptorName=stoker`` in
#: our socket unit, else systemd's default, the socket unit's own name.
PREFERRED_NAMES: tuple[str, ...] = ("stoker.socket", "stoker")

_DEFAULT_NAME = "unknown"  # what sd_listen_fds_with_names(3) reports without LISTEN_FDNAMES


@dataclass(frozen=True, slots=True)
class InheritedSocket:
    """One descriptor systemd passed us, already wrapped as a :class:`socket.socket`.

    The wrapper owns the descriptor: closing ``socket`` closes ``fd``.
    """

    name: str
    """From ``$LISTEN_FDNAMES`` (``"unknown"`` without it)."""
    fd: int
    """The descriptor number (3, 4, ...)."""
    family: socket.AddressFamily
    type: socket.SocketKind
    socket: socket.socket

    @property
    def listening(self) -> bool:
        """Whether the socket is in the listening state (``SO_ACCEPTCONN``).

        A socket unit with ``Accept=yes`` passes connected sockets instead; the daemon has
        no use for those.
        """
        try:
            return bool(self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
        except OSError:
            return False


def _parse_count(name: str, text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={text!r} must be at least {minimum}")
    return value


def _check_socket_fd(fd: int, count_text: str) -> None:
    """Raise ``ValueError`` unless *fd* is an open socket; set ``FD_CLOEXEC`` on it.

    ``FD_CLOEXEC`` because systemd hands the descriptors over inheritable, and an agent we
    spawn must not keep our listening socket open (it would keep accepting nothing, and hold
    the address across a daemon restart).
    """
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        if exc.errno == errno.EBADF:
            raise ValueError(
                f"LISTEN_FDS={count_text} promises fd {fd}, but it is not open"
            ) from None
        raise ValueError(f"cannot inspect inherited fd {fd}: {exc}") from exc
    if not stat.S_ISSOCK(mode):
        raise ValueError(
            f"inherited fd {fd} (from LISTEN_FDS={count_text}) is not a socket "
            f"(file type {stat.filemode(mode)[0]!r})"
        )
    flags = fcntl.fcntl(fd, fcntl.F_GETFD)
    if not flags & fcntl.FD_CLOEXEC:
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)


def _unset_environment() -> None:
    for key in LISTEN_ENV_VARS:
        os.environ.pop(key, None)


def inherited_sockets(
    environ: Mapping[str, str],
    *,
    pid: int | None = None,
    unset: bool = True,
) -> list[InheritedSocket]:
    """The sockets systemd passed to this process, per ``sd_listen_fds_with_names(3)``.

    Returns ``[]`` when the variables are absent or ``$LISTEN_PID`` is not *pid* (ours by
    default). With *unset* (the default) the ``LISTEN_*`` variables are removed from
    ``os.environ`` in every case, as ``sd_listen_fds(3)`` does, so that no child ever sees
    them, even if *environ* is a copy.

    Raises ``ValueError`` with the offending variable or descriptor when the variables are
    malformed (not numbers, a name count that does not match) or a promised descriptor is
    not an open socket. Nothing is wrapped until every descriptor has been checked, so an
    error leaves the descriptors as they were.
    """
    try:
        return _inherited_sockets(environ, os.getpid() if pid is None else pid)
    finally:
        if unset:
            _unset_environment()


def _inherited_sockets(environ: Mapping[str, str], pid: int) -> list[InheritedSocket]:
    pid_text = environ.get("LISTEN_PID", "")
    if not pid_text:
        return []
    listen_pid = _parse_count("LISTEN_PID", pid_text, minimum=1)
    if listen_pid != pid:
        # Meant for another process (we inherited them from a socket-activated parent).
        logger.debug("ignoring LISTEN_FDS: LISTEN_PID=%d is not us (%d)", listen_pid, pid)
        return []
    count_text = environ.get("LISTEN_FDS", "")
    if not count_text:
        return []
    count = _parse_count("LISTEN_FDS", count_text, minimum=0)
    names_text = environ.get("LISTEN_FDNAMES")
    if names_text is None:
        names = [_DEFAULT_NAME] * count
    else:
        names = names_text.split(":") if names_text else []
        if len(names) != count:
            raise ValueError(
                f"LISTEN_FDNAMES={names_text!r} has {len(names)} name(s) "
                f"but LISTEN_FDS={count_text}"
            )
    fds = range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)
    for fd in fds:
        _check_socket_fd(fd, count_text)
    result: list[InheritedSocket] = []
    for fd, name in zip(fds, names, strict=True):
        # fileno= makes Python query family/type/protocol from the kernel.
        sock = socket.socket(fileno=fd)
        result.append(
            InheritedSocket(
                name=name or _DEFAULT_NAME,
                fd=fd,
                family=socket.AddressFamily(sock.family),
                type=socket.SocketKind(sock.type),
                socket=sock,
            )
        )
    return result


def pick_unix_listener(
    sockets: Iterable[InheritedSocket],
    *,
    preferred_names: Sequence[str] = PREFERRED_NAMES,
) -> socket.socket | None:
    """The listening ``AF_UNIX``/``SOCK_STREAM`` socket to serve clients on, or ``None``.

    Among the candidates, one named in *preferred_names* wins (earlier names first), else
    the first one in descriptor order. Other descriptors (a WebSocket TCP port, an
    ``Accept=yes`` connection) are not candidates.
    """
    candidates = [
        inherited
        for inherited in sockets
        if inherited.family == socket.AF_UNIX
        and inherited.type == socket.SOCK_STREAM
        and inherited.listening
    ]
    for name in preferred_names:
        for inherited in candidates:
            if inherited.name == name:
                return inherited.socket
    return candidates[0].socket if candidates else None
