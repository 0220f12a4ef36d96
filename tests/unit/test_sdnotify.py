"""daemon.service.systemd.notify against a real AF_UNIX datagram socket the test owns.

The receiving end stands in for systemd: whatever arrives there is exactly what the
manager would parse, so every assertion is on the raw datagram bytes.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from daemon.service.systemd.notify import (
    SYSTEMD_ENV_VARS,
    Notifier,
    run_watchdog,
    scrub_systemd_env,
    watchdog_interval,
)

RECV_TIMEOUT = 5.0


@dataclass
class Receiver:
    """The manager's side: a bound datagram socket and its ``$NOTIFY_SOCKET`` spelling."""

    notify_socket: str
    sock: socket.socket

    def recv(self) -> bytes:
        return self.sock.recv(65536)

    def drain(self) -> list[bytes]:
        """Every datagram already queued, without waiting."""
        got: list[bytes] = []
        previous = self.sock.gettimeout()  # 0.0 once trio has wrapped the socket
        self.sock.setblocking(False)
        try:
            while True:
                got.append(self.sock.recv(65536))
        except BlockingIOError:
            return got
        finally:
            self.sock.settimeout(previous)


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = tmp_path / "notify.sock"
        sock.bind(str(path))
        notify_socket = str(path)
    else:
        name = f"stoker-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        notify_socket = "@" + name
    sock.settimeout(RECV_TIMEOUT)
    try:
        yield Receiver(notify_socket, sock)
    finally:
        sock.close()


@pytest.fixture
def notifier(receiver: Receiver) -> Iterator[Notifier]:
    made = Notifier.from_env({"NOTIFY_SOCKET": receiver.notify_socket})
    assert made is not None
    with made:
        yield made


# -- construction ----------------------------------------------------------------------------


@pytest.mark.parametrize("environ", [{}, {"NOTIFY_SOCKET": ""}, {"PATH": "/bin"}])
def test_from_env_without_notify_socket_is_none(environ: dict[str, str]) -> None:
    assert Notifier.from_env(environ) is None


def test_from_env_unsupported_address_is_none_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="stoker.sdnotify"):
        assert Notifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
        assert Notifier.from_env({"NOTIFY_SOCKET": "relative/path"}) is None
    assert len(caplog.records) == 2
    assert all(r.name == "stoker.sdnotify" for r in caplog.records)


def test_constructor_rejects_unsupported_address() -> None:
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        Notifier("vsock:2:1234")


# -- exact datagrams -------------------------------------------------------------------------


def test_ready(receiver: Receiver, notifier: Notifier) -> None:
    assert notifier.ready() is True
    assert receiver.recv() == b"READY=1"


def test_ready_with_status_is_one_datagram(receiver: Receiver, notifier: Notifier) -> None:
    assert notifier.ready("serving /run/stoker.sock")
    assert receiver.recv() == b"READY=1\nSTATUS=serving /run/stoker.sock"
    assert receiver.drain() == []


def test_status(receiver: Receiver, notifier: Notifier) -> None:
    assert notifier.status("3 agents, 1 busy")
    assert receiver.recv() == b"STATUS=3 agents, 1 busy"


def test_status_cannot_inject_assignments(receiver: Receiver, notifier: Notifier) -> None:
    """A newline in a status (from an error message, say) must not become STOPPING=1."""
    assert notifier.status("agent crashed:\nSTOPPING=1")
    assert receiver.recv() == b"STATUS=agent crashed: STOPPING=1"


def test_long_status_fits_in_a_datagram(receiver: Receiver, notifier: Notifier) -> None:
    assert notifier.ready("é" * 10_000)
    data = receiver.recv()
    assert data.startswith(b"READY=1\nSTATUS=\xc3\xa9")
    assert data.endswith(b"...")
    assert len(data) < 4096  # systemd drops datagrams of PIPE_BUF bytes or more
    data.decode("utf-8")  # not cut inside a character


def test_stopping(receiver: Receiver, notifier: Notifier) -> None:
    assert notifier.stopping()
    assert receiver.recv() == b"STOPPING=1"


def test_watchdog(receiver: Receiver, notifier: Notifier) -> None:
    assert notifier.watchdog()
    assert receiver.recv() == b"WATCHDOG=1"


def test_reloading_carries_monotonic_usec(receiver: Receiver, notifier: Notifier) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receiver.recv().split(b"\n")
    assert first == b"RELOADING=1"
    key, _, value = second.partition(b"=")
    assert key == b"MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_send_fields(receiver: Receiver, notifier: Notifier) -> None:
    assert notifier.send(READY=1, STATUS="up", EXTEND_TIMEOUT_USEC=5_000_000)
    assert receiver.recv() == b"READY=1\nSTATUS=up\nEXTEND_TIMEOUT_USEC=5000000"


def test_send_text(receiver: Receiver, notifier: Notifier) -> None:
    assert notifier.send("ERRNO=5")
    assert receiver.recv() == b"ERRNO=5"


def test_send_text_then_fields(receiver: Receiver, notifier: Notifier) -> None:
    assert notifier.send("STATUS=x", MAINPID=42)
    assert receiver.recv() == b"STATUS=x\nMAINPID=42"


@pytest.mark.parametrize(
    ("text", "fields", "message"),
    [
        (None, {}, "needs text"),
        (None, {"lower": "1"}, "variable name"),
        (None, {"STATUS": "a\nREADY=1"}, "newline"),
    ],
)
def test_send_rejects_programming_errors(
    notifier: Notifier, text: str | None, fields: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        notifier.send(text, **fields)


def test_statistics_count_sends(receiver: Receiver, notifier: Notifier) -> None:
    notifier.ready()
    notifier.watchdog()
    stats = notifier.statistics()
    assert (stats.sent, stats.failed, stats.last_error) == (2, 0, None)
    assert stats.address == receiver.notify_socket


# -- failures never reach the caller ---------------------------------------------------------


def test_missing_socket_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    with notifier, caplog.at_level(logging.DEBUG, logger="stoker.sdnotify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    # One warning per failure streak, the repeats at DEBUG: a dead manager must not flood.
    assert len(warnings) == 1
    assert warnings[0].name == "stoker.sdnotify"
    assert "nobody-listens.sock" in warnings[0].getMessage()
    stats = notifier.statistics()
    assert (stats.sent, stats.failed) == (0, 2)
    assert stats.last_error is not None
    assert "FileNotFoundError" in stats.last_error


def test_missing_abstract_socket_does_not_raise() -> None:
    with Notifier(f"@stoker-test-absent-{uuid.uuid4().hex}") as notifier:
        assert notifier.stopping() is False


def test_recovery_after_failure_warns_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "late.sock"
    with Notifier(str(path)) as notifier, caplog.at_level(logging.WARNING, "stoker.sdnotify"):
        assert not notifier.watchdog()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            assert notifier.watchdog()
            assert notifier.statistics().last_error is None
        path.unlink()
        assert not notifier.watchdog()
    assert len(caplog.records) == 2


def test_closed_notifier_does_not_raise(notifier: Notifier) -> None:
    notifier.close()
    assert notifier.ready() is False


async def test_full_manager_queue_never_blocks(receiver: Receiver, notifier: Notifier) -> None:
    """Nobody reads: the kernel queue fills, and sends fail fast instead of blocking.

    The sends run in a thread abandoned on timeout, so a blocking implementation fails the
    test instead of hanging it.
    """

    def flood() -> list[bool]:
        return [notifier.watchdog() for _ in range(5000)]

    with trio.fail_after(10):
        results = await trio.to_thread.run_sync(flood, abandon_on_cancel=True)
    assert results[0] is True
    assert False in results
    assert notifier.statistics().failed == results.count(False)


# -- watchdog_interval ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": ""}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1234"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4321"}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": ""}, 15.0),
        ({"WATCHDOG_USEC": "1"}, 0.0000005),
        ({"WATCHDOG_PID": "1234"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(environ, 1234) == expected


def test_watchdog_interval_defaults_to_our_pid() -> None:
    ours = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(ours) == 1.0
    theirs = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert watchdog_interval(theirs) is None


@pytest.mark.parametrize(
    "environ",
    [
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "-5"},
        {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "me"},
        {"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "0"},
    ],
)
def test_watchdog_interval_rejects_garbage(environ: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="WATCHDOG_"):
        watchdog_interval(environ, 1234)


# -- run_watchdog ----------------------------------------------------------------------------


async def _next_ping(tsock: trio.socket.SocketType) -> float:
    """Wait (bounded) for one datagram; return trio's clock when it was read."""
    with trio.fail_after(RECV_TIMEOUT):
        data = await tsock.recv(65536)
    assert data == b"WATCHDOG=1"
    return trio.current_time()


async def test_run_watchdog_pings_at_the_interval(receiver: Receiver, notifier: Notifier) -> None:
    interval = 0.05
    tsock = trio.socket.from_stdlib_socket(receiver.sock)
    async with trio.open_nursery() as nursery:
        t0 = trio.current_time()
        await nursery.start(run_watchdog, notifier, interval)
        # The first ping is sent before started(): it is already queued.
        assert receiver.drain() == [b"WATCHDOG=1"]
        times = [await _next_ping(tsock) for _ in range(8)]
        nursery.cancel_scope.cancel()
    for k, received in enumerate(times, start=1):
        # trio never wakes a sleep early: ping k cannot arrive before t0 + k * interval.
        assert received >= t0 + k * interval - 1e-3
        # Generous upper bound for a loaded CI machine, but still "periodic", not "eventual".
        assert received <= t0 + k * interval + 1.0


async def test_run_watchdog_count_within_a_window(receiver: Receiver, notifier: Notifier) -> None:
    interval = 0.05
    window = 0.5
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, notifier, interval)
        await trio.sleep(window)
        nursery.cancel_scope.cancel()
    pings = receiver.drain()
    assert set(pings) == {b"WATCHDOG=1"}
    # 1 at start + one per full interval (10); the lower bound allows for a slow machine,
    # the upper bound rules out duplicate or bursty pings.
    assert 5 <= len(pings) <= 12


async def test_blocked_loop_stops_pings_and_does_not_burst(
    receiver: Receiver, notifier: Notifier
) -> None:
    """While the loop is blocked nothing is sent; afterwards one ping, not a catch-up burst."""
    interval = 0.1
    async with trio.open_nursery() as nursery:
        await nursery.start(run_watchdog, notifier, interval)
        assert receiver.drain() == [b"WATCHDOG=1"]
        # Block the whole trio loop, as a synchronous call in the daemon would.
        time.sleep(5.5 * interval)  # noqa: ASYNC251 - blocking the loop is the point
        assert receiver.drain() == []  # nothing could be sent while blocked
        await trio.sleep(0.5 * interval)
        nursery.cancel_scope.cancel()
    late = receiver.drain()
    # One ping on waking up (two if this machine stalled us for another interval); a
    # fixed-rate schedule that caught up would have sent five at once.
    assert 1 <= len(late) <= 2


async def test_run_watchdog_rejects_bad_interval(notifier: Notifier) -> None:
    with pytest.raises(ValueError, match="positive"):
        await run_watchdog(notifier, 0)


async def test_run_watchdog_survives_missing_manager(tmp_path: Path) -> None:
    """No manager: pings fail quietly and the task keeps running until cancelled."""
    with Notifier(str(tmp_path / "gone.sock")) as notifier:
        with trio.move_on_after(0.2):
            await run_watchdog(notifier, 0.02)
        assert notifier.statistics().failed >= 3


# -- scrub_systemd_env ------------------------------------------------------------------------


#: Each variable systemd hands a service, with a value as it would set it.
SYSTEMD_ENV = {
    "NOTIFY_SOCKET": "/run/systemd/notify",
    "WATCHDOG_USEC": "30000000",
    "WATCHDOG_PID": "1",
    "LISTEN_FDS": "1",
    "LISTEN_PID": "1",
    "LISTEN_FDNAMES": "stoker",
}
#: Kept by the scrub: not per-process channels to the manager, or not ours at all.
KEPT_ENV = {
    "PATH": "/usr/bin",
    "HOME": "/home/u",
    "INVOCATION_ID": "abc",
    "JOURNAL_STREAM": "8:123",
    "NOTIFY_SOCKET_BACKUP": "z",
    "MY_LISTEN_FDS": "2",
    "LISTEN": "3",
    "listen_fds": "4",
    "OPENAI_API_KEY": "sk-test",
}


def test_scrub_systemd_env_removes_exactly_the_systemd_variables() -> None:
    # LISTEN_* and WATCHDOG_* go as whole families, names a later systemd may add too.
    env = {**SYSTEMD_ENV, "LISTEN_SOMETHING_NEW": "x", "WATCHDOG_FUTURE": "y", **KEPT_ENV}
    original = dict(env)
    assert scrub_systemd_env(env) == KEPT_ENV
    assert env == original  # a copy, the input is untouched


def test_systemd_env_vars_constant() -> None:
    assert set(SYSTEMD_ENV) == SYSTEMD_ENV_VARS
