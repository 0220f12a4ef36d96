"""Test harness: the real daemon in a subprocess, with its own directories.

`DaemonProcess` starts `python -m daemon.cli daemon` with a private socket, state dir and
config, waits until it is ready (its READY=1 on a notify socket, as systemd would), and stops
it with SIGTERM (or `kill -9` on request).
Every process it spawns carries `STOKER_TEST_ID` in its environment, so teardown can prove
that no agent process outlived the daemon (and clean up if one did).

Clients are the real `daemon.client.Client` over the real socket; `turn()` drives one prompt
and collects its deltas.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec
import psutil
import trio

from daemon.client import Client
from protocol import deltas as d
from protocol import messages as m

ROOT = Path(__file__).resolve().parents[2]

Body = TypeVar("Body")

#: Python source for a child process that was given descriptors as systemd gives them:
#: moves `spec["fds"]` to 3, 4, ... (inheritable, as systemd passes them), first out of the
#: way (>= 100), so that a source which already is some target fd is not clobbered. The
#: script it goes into imports `fcntl` and `os` and reads `spec` first.
MOVE_FDS_TO_3 = r"""
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for fd in spec["fds"]]
for fd in spec["fds"]:
    os.close(fd)
for i, fd in enumerate(high):
    os.dup2(fd, 3 + i, inheritable=True)
    os.close(fd)
"""


def short_tmpdir(prefix: str = "stk") -> Path:
    """Unix socket paths are limited to ~108 bytes: keep them short."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def processes_with_marker(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("STOKER_TEST_ID") == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
            continue
    return found


@dataclass
class TurnResult:
    chat: str
    turn: int
    deltas: list[d.Delta] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(x.body.text for x in self.deltas if isinstance(x.body, d.Text))

    @property
    def ended(self) -> d.TurnEnded:
        ends = [x.body for x in self.deltas if isinstance(x.body, d.TurnEnded)]
        assert len(ends) == 1, f"expected exactly one turn_ended, got {len(ends)}"
        return ends[0]

    def kinds(self) -> list[str]:
        return [str(type(x.body).__struct_config__.tag) for x in self.deltas]

    def of(self, kind: type[Any]) -> list[Any]:
        return [x.body for x in self.deltas if isinstance(x.body, kind)]


class DaemonProcess:
    def __init__(self, base: Path | None = None, config: str = "",
                 env: dict[str, str] | None = None) -> None:
        self.base = base or short_tmpdir()
        self.socket = self.base / "run" / "stoker.sock"
        self.state_dir = self.base / "state"
        self.config_path = self.base / "config.toml"
        self.log_path = self.base / "daemon.log"
        self.work = self.base / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self.marker = uuid.uuid4().hex
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None
        """Our end of the daemon's `$NOTIFY_SOCKET`, until it said READY=1."""
        self.write_config(config)

    # ------------------------------------------------------------------ config

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for name in list(env):
            if name.startswith(("STOKER_", "NOTIFY_SOCKET", "LISTEN_", "WATCHDOG_")):
                env.pop(name)
        env.update(
            STOKER_SOCKET=str(self.socket),
            STOKER_STATE_DIR=str(self.state_dir),
            STOKER_CONFIG=str(self.config_path),
            XDG_STATE_HOME=str(self.base / "xdg-state"),
            XDG_RUNTIME_DIR=str(self.base / "xdg-run"),
            XDG_CONFIG_HOME=str(self.base / "xdg-config"),
            STOKER_TEST_ID=self.marker,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    # ------------------------------------------------------------------ process

    def start(self, *, log_level: str = "debug", timeout: float = 20.0,
              extra_args: list[str] | None = None, pass_fds: tuple[int, ...] = (),
              env: dict[str, str] | None = None, wait: bool = True,
              launcher: list[str] | None = None) -> None:
        """`launcher`: argv put before the daemon's own; it must exec the rest of its argv
        (so the daemon keeps its pid, e.g. to set LISTEN_PID as systemd does)."""
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        log = open(self.log_path, "ab")  # noqa: SIM115
        full_env = self.env()
        if env:
            full_env.update(env)
        self._close_notify()
        if "NOTIFY_SOCKET" not in full_env:
            # Play systemd's part for readiness: the daemon sends READY=1 once its store is
            # open, its state loaded and its listeners serve, so waiting for that datagram
            # is waiting for the event itself (a test that owns NOTIFY_SOCKET gets polling).
            self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            name = f"stoker-harness-{self.marker}-{time.monotonic_ns()}"
            self._notify.bind("\0" + name)  # abstract: no path to clean up or to outgrow
            full_env["NOTIFY_SOCKET"] = "@" + name
        self.proc = subprocess.Popen(
            [*(launcher or []), sys.executable, "-m", "daemon.cli", "daemon",
             "--log-level", log_level, *(extra_args or [])],
            env=full_env, stdout=log, stderr=log, cwd=str(self.work), pass_fds=pass_fds,
        )
        log.close()
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 20.0) -> float:
        """Wait until the daemon is ready; returns `time.perf_counter()` at that moment."""
        if self._notify is not None:
            return self._wait_notified_ready(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}:\n{self.log_text()[-4000:]}")
            if self.socket.exists() and self._handshake():
                return time.perf_counter()
            time.sleep(0.02)  # a condition polled under a deadline: no event to wait on here
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log_text()[-4000:]}")

    def _wait_notified_ready(self, timeout: float) -> float:
        """Block on the notify socket and on the process (a pidfd) until READY=1 arrives or
        the daemon exits, under a deadline."""
        notify, proc = self._notify, self.proc
        assert notify is not None
        assert proc is not None
        pidfd = os.pidfd_open(proc.pid)
        try:
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([notify.fileno(), pidfd], [], [], left)
                if notify.fileno() in readable:
                    at = time.perf_counter()
                    if b"READY=1" in notify.recv(65536).split(b"\n"):
                        self._close_notify()  # later datagrams (STATUS=...) go nowhere
                        return at
                elif readable:
                    proc.wait()
                    raise AssertionError(f"daemon exited with {proc.returncode}:\n"
                                         f"{self.log_text()[-4000:]}")
        finally:
            os.close(pidfd)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log_text()[-4000:]}")

    def _close_notify(self) -> None:
        if self._notify is not None:
            self._notify.close()
            self._notify = None

    def _handshake(self) -> bool:
        """Ready means: answers `hello` with `welcome` (the socket accepts into its backlog
        before the daemon has loaded its state, so a bare connect proves nothing)."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(0.5)
        try:
            probe.connect(str(self.socket))
            payload = msgspec.msgpack.encode(m.Hello(client="harness"))
            probe.sendall(len(payload).to_bytes(4, "big") + payload)
            header = probe.recv(4, socket.MSG_WAITALL)
            if len(header) < 4:
                return False
            body = probe.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)
            return isinstance(msgspec.msgpack.decode(body, type=m.ClientSideServerMessage),
                              m.Welcome)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return False
        finally:
            probe.close()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not stop within {timeout}s:\n"
                                 f"{self.log_text()[-4000:]}") from None

    def signal(self, sig: int) -> None:
        """Send the running daemon a signal (SIGHUP: reload, SIGTERM: shutdown)."""
        assert self.proc is not None, "daemon never started"
        assert self.proc.poll() is None, "daemon not running"
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the daemon to exit on its own; returns the exit status."""
        assert self.proc is not None, "daemon never started"
        return self.proc.wait(timeout)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def leftovers(self) -> list[psutil.Process]:
        own = {self.proc.pid} if self.proc is not None else set()
        return [p for p in processes_with_marker(self.marker) if p.pid not in own]

    def cleanup(self) -> list[int]:
        """Stop the daemon; kill and report any process of ours that outlived it."""
        self._close_notify()
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except AssertionError:
                pass
        left = self.leftovers()
        pids = [p.pid for p in left]
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=5)
        return pids

    def remove(self) -> None:
        """Delete the daemon's directories (kept when STOKER_KEEP_TEST_DIRS=1, to debug)."""
        if os.environ.get("STOKER_KEEP_TEST_DIRS") == "1":
            print(f"kept daemon directory: {self.base}")
            return
        shutil.rmtree(self.base, ignore_errors=True)

    # ------------------------------------------------------------------ CLI

    def cli(self, *args: str, input: str | None = None, timeout: float = 60.0,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "daemon.cli", *args], env=self.env(),
            cwd=str(cwd or self.work), capture_output=True, text=True, input=input,
            timeout=timeout)

    def doctor_check(self, check: str) -> dict[str, Any]:
        """One row of `stoker doctor --json --no-probe` (`check`: e.g. "computer loop")."""
        doctor = self.cli("doctor", "--json", "--no-probe")
        rows = {row["check"]: row for row in json.loads(doctor.stdout)["checks"]}
        return dict(rows[check])

    # ------------------------------------------------------------------ clients

    @contextlib.asynccontextmanager
    async def client(self, name: str = "test") -> AsyncIterator[Client]:
        async with Client.connect(self.socket, client=name) as client:
            yield client


class DaemonFactory(Protocol):
    """The `daemon_factory` fixture (tests/conftest.py): called like `DaemonProcess`, it makes
    a daemon (not started) whose stop and cleanup the fixture guarantees at teardown."""

    def __call__(self, base: Path | None = None, config: str = "",
                 env: dict[str, str] | None = None) -> DaemonProcess: ...


async def open_chat(client: Client, chat: str | None = None, agent: str = "echo",
                    cwd: Path | str | None = None, **kwargs: Any) -> m.ChatInfo:
    info: m.ChatInfo = await client.request(m.OpenChat(
        id=0, chat=chat, agent=agent, cwd=str(cwd) if cwd else None, **kwargs))
    return info


async def subscribe(client: Client, chat: str, since: int | None = None,
                    epoch: str | None = None, live: bool = True) -> m.Subscribed:
    cursor = None if since is None else m.Cursor(seq=since, epoch=epoch)
    sub: m.Subscribed = await client.request(m.Subscribe(id=0, chat=chat, since=cursor,
                                                         live=live))
    return sub


async def collect_turn(client: Client, chat: str, turn: int, timeout: float = 30.0
                       ) -> TurnResult:
    """Read events until `turn`'s turn_ended; returns the deltas of that turn (and the
    turn-less ones in between, e.g. status)."""
    result = TurnResult(chat=chat, turn=turn)
    with trio.fail_after(timeout):
        while True:
            event = await client.next_event()
            if isinstance(event, d.Delta) and event.chat == chat:
                if event.turn in (turn, 0):
                    result.deltas.append(event)
                if isinstance(event.body, d.TurnEnded) and event.turn == turn:
                    return result


async def turn(client: Client, chat: str, text: str, *, agent: str | None = None,
               timeout: float = 30.0, content: list[Any] | None = None) -> TurnResult:
    """Subscribe (live) if needed, send a prompt, collect its turn."""
    if chat not in getattr(client, "_test_subscribed", set()):
        await subscribe(client, chat)
        subscribed: set[str] = getattr(client, "_test_subscribed", set())
        subscribed.add(chat)
        client._test_subscribed = subscribed  # type: ignore[attr-defined]
    accepted: m.PromptAccepted = await client.request(m.Prompt(
        id=0, chat=chat, text=text, agent=agent, content=content or []))
    return await collect_turn(client, chat, accepted.turn, timeout)


async def wait_turn_end(client: Client, chat: str, turn: int, timeout: float = 30.0
                        ) -> d.TurnEnded:
    """Read events until `turn`'s turn_ended (other events are dropped)."""
    delta = await wait_for_delta(
        client, lambda e: e.chat == chat and e.turn == turn and isinstance(e.body, d.TurnEnded),
        timeout)
    assert isinstance(delta.body, d.TurnEnded)
    return delta.body


async def wait_for_delta(client: Client, predicate: Any, timeout: float = 30.0) -> d.Delta:
    with trio.fail_after(timeout):
        while True:
            event = await client.next_event()
            if isinstance(event, d.Delta) and predicate(event):
                return event


async def inspect(client: Client, chat: str) -> m.ChatDetail:
    detail: m.ChatDetail = await client.request(m.Inspect(id=0, chat=chat))
    return detail


async def actor(client: Client, chat: str, agent: str = "echo") -> m.ActorDetail:
    detail = await inspect(client, chat)
    for a in detail.actors:
        if a.agent == agent:
            return a
    raise AssertionError(f"no actor {agent} in chat {chat}")


async def wait_actor(client: Client, chat: str, predicate: Callable[[m.ActorDetail], bool],
                     *, agent: str = "echo", timeout: float = 20.0) -> m.ActorDetail:
    """Poll inspect until `predicate` holds for the actor (a condition with a deadline)."""
    with trio.fail_after(timeout):
        while True:
            detail = await actor(client, chat, agent)
            if predicate(detail):
                return detail
            await trio.sleep(0.05)


async def wait_state(client: Client, chat: str, state: str, timeout: float = 20.0,
                     agent: str = "echo") -> m.ActorDetail:
    """Poll inspect until the actor reaches `state` (a condition with a deadline)."""
    return await wait_actor(client, chat, lambda a: a.state == state, agent=agent,
                            timeout=timeout)


async def wait_log(daemon: DaemonProcess, pattern: str, *, after: int = 0,
                   timeout: float = 20.0) -> re.Match[str]:
    """The first match of `pattern` (a regular expression) in the daemon's log past offset
    `after`, polled under a deadline."""
    compiled = re.compile(pattern)
    with trio.fail_after(timeout):
        while True:
            found = compiled.search(daemon.log_text(), after)
            if found:
                return found
            await trio.sleep(0.05)


async def wait_committed(daemon: DaemonProcess, sql: str, params: tuple[Any, ...] = (),
                         *, timeout: float = 20.0) -> None:
    """Wait until `sql` returns a row in the daemon's database, as committed (a reader of
    the WAL sees only committed transactions): what a `kill -9` cannot take back."""
    with trio.fail_after(timeout):
        while True:
            with contextlib.closing(sqlite3.connect(daemon.state_dir / "stoker.db")) as conn:
                if conn.execute(sql, params).fetchone() is not None:
                    return
            await trio.sleep(0.02)


async def wait_for_body(client: Client, kind: type[Body],
                        predicate: Callable[[Body], bool] | None = None,
                        timeout: float = 30.0) -> Body:
    """The body of the next delta (of any chat) that is a `kind` for which `predicate`
    holds; the events before it are dropped."""
    delta = await wait_for_delta(
        client, lambda e: isinstance(e.body, kind) and (predicate is None or predicate(e.body)),
        timeout)
    assert isinstance(delta.body, kind)
    return delta.body


async def replay(client: Client, chat: str, timeout: float = 20.0) -> list[d.Delta]:
    """Every delta retained for `chat`: subscribe since 0, not live, and read until the
    replay is complete."""
    await subscribe(client, chat, since=0, live=False)
    out: list[d.Delta] = []
    with trio.fail_after(timeout):
        while True:
            event = await client.next_event()
            if isinstance(event, m.ReplayComplete):
                return out
            if isinstance(event, d.Delta):
                out.append(event)


async def wait_turns_ended(client: Client, count: int, timeout: float = 20.0
                           ) -> tuple[dict[int, d.TurnEnded], dict[int, str]]:
    """Read deltas until `count` turns have ended. Returns each turn's turn_ended, in the
    order they came (a turn that ends twice fails), and the text each turn streamed."""
    ends: dict[int, d.TurnEnded] = {}
    texts: dict[int, str] = {}
    with trio.fail_after(timeout):
        while len(ends) < count:
            event = await client.next_event()
            if not isinstance(event, d.Delta):
                continue
            if isinstance(event.body, d.Text):
                texts[event.turn] = texts.get(event.turn, "") + event.body.text
            if isinstance(event.body, d.TurnEnded):
                assert event.turn not in ends, f"turn {event.turn} ended twice"
                ends[event.turn] = event.body
    return ends, texts


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def wait_gone(pids: Iterable[int], timeout: float = 10.0) -> None:
    """Wait until none of `pids` is alive."""
    pids = list(pids)
    with trio.fail_after(timeout):
        while [p for p in pids if alive(p)]:
            await trio.sleep(0.05)


async def agent_pid(client: Client, chat: str, agent: str | None = None) -> int:
    """The pid the chat's echo agent reports: a `/pid` turn (which starts it if needed)."""
    return int((await turn(client, chat, "/pid", agent=agent)).text)


async def assert_fs_confined(client: Client, chat: str, cwd: Path, outside: Path) -> None:
    """The echo agent of `chat`, in `cwd`, writes and reads files there through the
    client's fs/* and nowhere else: `outside` (a file in the directory that `cwd/link`
    points to) stays out of reach by absolute path, by `..` and through the link, and
    nothing is written next to it or beside `cwd`."""
    secret = outside.read_text()
    wrote = await turn(client, chat, "/write notes/a.txt hi there")
    assert wrote.text == f"wrote {cwd}/notes/a.txt", wrote.text
    assert (cwd / "notes" / "a.txt").read_text() == "hi there"
    assert (await turn(client, chat, "/read notes/a.txt")).text == "hi there"
    for attempt in (f"/read {outside}", f"/read ../{outside.name}", f"/read link/{outside.name}",
                    "/write ../escape.txt x", "/write link/escape.txt x"):
        result = await turn(client, chat, attempt)
        assert "access denied" in result.text, (attempt, result.text)
    assert not (outside.parent / "escape.txt").exists()
    assert not (cwd.parent / "escape.txt").exists()
    assert outside.read_text() == secret
    missing = await turn(client, chat, "/read nope.txt")
    assert missing.text.startswith("error:"), missing.text
