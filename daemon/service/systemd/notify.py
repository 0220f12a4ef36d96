"""The systemd notification protocol (``sd_notify``), spoken without libsystemd.

systemd tells a ``Type=notify`` service where to report its state through
``$NOTIFY_SOCKET``: an ``AF_UNIX`` datagram socket, either a path or (leading ``@``) a name
in Linux's abstract namespace. Each report is one datagram of newline-separated
``KEY=VALUE`` assignments (``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ...). The protocol
is small and stable, so a few dozen lines here are cheaper than a C dependency.

Two rules shape this module:

* **Reporting must never hurt the daemon.** A lost notification costs at most a restart by
  the watchdog; an exception or a blocked send in the middle of startup or shutdown costs
  more. So :class:`Notifier` uses a non-blocking socket and turns every ``OSError`` into a
  logged warning and a ``False`` return.
* **Children must not inherit the manager's channels.** An agent that saw our
  ``NOTIFY_SOCKET`` could report ``READY``/``STOPPING`` on our behalf (systemd accepts it
  under ``NotifyAccess=all``), and one that saw ``LISTEN_FDS`` could believe it was socket
  activated. :func:`scrub_systemd_env` (in ``daemon.execution.environment``, next to the spawner
  that applies it to every child) removes them.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import NoReturn

import trio

from daemon.execution.environment import (
    SYSTEMD_ENV_PREFIXES,
    SYSTEMD_ENV_VARS,
    scrub_systemd_env,
)

__all__ = [
    "SYSTEMD_ENV_PREFIXES",
    "SYSTEMD_ENV_VARS",
    "Notifier",
    "NotifierStatistics",
    "run_watchdog",
    "scrub_systemd_env",
    "watchdog_interval",
]

logger = logging.getLogger("stoker.sdnotify")

# systemd drops a notification datagram of PIPE_BUF (4096) bytes or more ("exceeded
# maximum size"), so a long STATUS would silently lose READY=1 with it. Status texts are
# cut well below that.
_MAX_STATUS_BYTES = 2048
_KEY = re.compile(r"[A-Z_][A-Z0-9_]*\Z")


def _socket_address(notify_socket: str) -> bytes:
    """Turn ``$NOTIFY_SOCKET`` into an ``AF_UNIX`` address (``@name`` -> abstract)."""
    if notify_socket.startswith("@"):
        # Linux abstract namespace: a leading NUL instead of a path.
        return b"\0" + os.fsencode(notify_socket[1:])
    if notify_socket.startswith("/"):
        return os.fsencode(notify_socket)
    raise ValueError(
        f"NOTIFY_SOCKET={notify_socket!r} is not supported: expected an absolute path or "
        "an abstract name starting with '@' (AF_VSOCK addresses are not)"
    )


def _one_line(text: str) -> str:
    """Collapse *text* to one line that fits in a datagram.

    Status texts are built from error messages and the like; a newline in one would start a
    new assignment (a ``STATUS`` of ``"x\\nSTOPPING=1"`` would stop the service), so line
    breaks become spaces rather than an error the caller did not expect.
    """
    flat = " ".join(text.splitlines())
    raw = flat.encode("utf-8", "surrogateescape")
    if len(raw) <= _MAX_STATUS_BYTES:
        return flat
    return raw[: _MAX_STATUS_BYTES - 3].decode("utf-8", "ignore") + "..."


@dataclass(frozen=True, slots=True)
class NotifierStatistics:
    """What a :class:`Notifier` has done, for status pages and tests."""

    address: str
    """``$NOTIFY_SOCKET`` as given (``@name`` for the abstract namespace)."""
    sent: int
    """Datagrams the kernel accepted."""
    failed: int
    """Datagrams that could not be sent (logged, not raised)."""
    last_error: str | None
    """The most recent send error, or ``None`` when the last send succeeded."""


class Notifier:
    """A client of systemd's notification socket.

    Build it with :meth:`from_env`, which returns ``None`` when the daemon does not run under
    a notify-aware manager, so callers write ``if notifier: notifier.ready()``. Every method
    returns whether the datagram was handed to the kernel; none of them raises ``OSError``
    or blocks.
    """

    def __init__(self, notify_socket: str) -> None:
        """Prepare to report to *notify_socket* (``$NOTIFY_SOCKET``'s syntax).

        Raises ``ValueError`` for an address that is not an absolute path or ``@name``.
        """
        self._name = notify_socket
        self._address = _socket_address(notify_socket)
        # Unconnected: each datagram is sent with sendto(), so a manager that re-created its
        # socket (systemd re-exec) is still reached. Non-blocking: a full receive queue on
        # the manager's side must cost a warning, not a stalled trio loop.
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._sent = 0
        self._failed = 0
        self._last_error: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Notifier | None:
        """A notifier for ``$NOTIFY_SOCKET``, or ``None`` when it is unset, empty or unusable.

        An unusable address (e.g. ``vsock:...``, which only systemd >= 253 inside VMs
        uses) or a failure to create the sending socket (out of descriptors) is logged and
        treated as "no manager": the daemon runs fine without notifications, whereas
        refusing to start over them would be the worse outcome.
        """
        notify_socket = environ.get("NOTIFY_SOCKET", "")
        if not notify_socket:
            return None
        try:
            return cls(notify_socket)
        except (ValueError, OSError) as exc:
            logger.warning("not notifying systemd: %s", exc)
            return None

    # -- the well-known assignments -------------------------------------------------------

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: startup finished (the listening socket is bound), or a reload did.

        With a *status*, ``STATUS=`` travels in the same datagram, so ``systemctl status``
        never shows "ready" with a stale startup message.
        """
        if status is None:
            return self.send("READY=1")
        return self.send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> bool:
        """``STATUS=<text>``: the one-line state shown by ``systemctl status``."""
        return self.send(f"STATUS={_one_line(text)}")

    def stopping(self) -> bool:
        """``STOPPING=1``: orderly shutdown began (sent before agents are stopped)."""
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC``: a reload began; send :meth:`ready` after.

        ``Type=notify-reload`` (systemd >= 253) requires the timestamp in the same datagram,
        to tell this reload from an older one; older managers ignore it.
        """
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: we are alive; see :func:`run_watchdog` for the periodic pinger."""
        return self.send("WATCHDOG=1")

    # -- anything else --------------------------------------------------------------------

    def send(self, text: str | None = None, /, **fields: str | int) -> bool:
        """Send raw *text* and/or ``KEY=value`` *fields* in one datagram.

        ``send("READY=1")`` and ``send(READY=1, STATUS="up")`` are both fine; *text* comes
        first. Keys must look like systemd's (``[A-Z_][A-Z0-9_]*``) and field values must be
        single-line: both are programming errors, so they raise ``ValueError`` rather than
        being logged. *text* is sent verbatim (it may hold several lines).
        """
        lines = [] if text is None else [text]
        for key, value in fields.items():
            if not _KEY.match(key):
                raise ValueError(f"not an sd_notify variable name: {key!r}")
            rendered = str(value)
            if "\n" in rendered:
                raise ValueError(f"sd_notify value for {key} contains a newline: {rendered!r}")
            lines.append(f"{key}={rendered}")
        if not lines:
            raise ValueError("send() needs text or at least one field")
        return self._send_datagram("\n".join(lines).encode("utf-8", "surrogateescape"))

    def _send_datagram(self, payload: bytes) -> bool:
        try:
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            # Transient by nature (manager restarting, queue full, socket gone in a test):
            # report once per failure streak at WARNING, then at DEBUG, so a failing watchdog
            # does not flood the journal every few seconds.
            level = logging.WARNING if self._last_error is None else logging.DEBUG
            self._failed += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            logger.log(
                level,
                "sd_notify to %s failed (%s): %r",
                self._name,
                self._last_error,
                payload[:80],
            )
            return False
        self._sent += 1
        self._last_error = None
        return True

    # -- introspection and lifetime -------------------------------------------------------

    @property
    def address(self) -> str:
        """``$NOTIFY_SOCKET`` as given."""
        return self._name

    def statistics(self) -> NotifierStatistics:
        """Counts of sent and failed datagrams, and the last error."""
        return NotifierStatistics(
            address=self._name, sent=self._sent, failed=self._failed, last_error=self._last_error
        )

    def close(self) -> None:
        """Close the sending socket; later sends fail (logged, returning ``False``)."""
        self._sock.close()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Notifier {self._name!r} sent={self._sent} failed={self._failed}>"


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between watchdog pings, or ``None`` when no watchdog is asked of *pid*.

    Half of ``$WATCHDOG_USEC``, the margin ``sd_watchdog_enabled(3)`` recommends, so one
    late ping is not yet a kill. ``$WATCHDOG_PID``, when set, names the process the
    watchdog is meant for; another process (e.g. a child that inherited the variables)
    must not ping. *pid* defaults to ours.

    Raises ``ValueError`` when a variable is set but not a positive integer: the manager
    would kill us for the missing pings, so a bad value is better refused at startup.
    """
    usec_text = environ.get("WATCHDOG_USEC", "")
    if not usec_text:
        return None
    try:
        usec = int(usec_text)
    except ValueError:
        raise ValueError(f"WATCHDOG_USEC={usec_text!r} is not an integer") from None
    if usec <= 0:
        raise ValueError(f"WATCHDOG_USEC={usec_text!r} must be positive")
    pid_text = environ.get("WATCHDOG_PID", "")
    if pid_text:
        try:
            watchdog_pid = int(pid_text)
        except ValueError:
            raise ValueError(f"WATCHDOG_PID={pid_text!r} is not an integer") from None
        if watchdog_pid <= 0:
            raise ValueError(f"WATCHDOG_PID={pid_text!r} must be positive")
        if watchdog_pid != (os.getpid() if pid is None else pid):
            return None
    return usec / 2 / 1_000_000


async def run_watchdog(
    notifier: Notifier,
    interval: float,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Send ``WATCHDOG=1`` now and then every *interval* seconds, until cancelled.

    The pings come from a task in the daemon's own trio loop on purpose: a loop blocked by
    a synchronous call stops pinging and systemd restarts the daemon, which is the whole
    point of the watchdog. Start it with ``await nursery.start(run_watchdog, n, i)``; it
    reports started after the first ping.

    The schedule is fixed-rate (no drift from the send itself). After a stall longer than
    *interval* it pings once at once and starts a new period, instead of catching up with a
    burst of pings that would prove nothing.
    """
    if not interval > 0:
        raise ValueError(f"watchdog interval must be positive, got {interval!r}")
    notifier.watchdog()
    task_status.started()
    deadline = trio.current_time() + interval
    while True:
        await trio.sleep_until(deadline)
        notifier.watchdog()
        now = trio.current_time()
        deadline += interval
        if deadline <= now:
            deadline = now + interval
