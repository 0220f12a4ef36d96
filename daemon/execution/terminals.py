"""Terminals the agent runs through ACP's `terminal/*` methods.

Each terminal is a real process in its own process group (so `kill` reaches its children),
started through the actor's executor (locally or on the agent's remote host), with its cwd
confined to the workspace. stdout and stderr are merged into one output buffer that keeps at
most `outputByteLimit` bytes, dropping from the *beginning* and only at a UTF-8 character
boundary, as the spec requires. Output is also published as `terminal` deltas so every client
can watch it live. Terminals belong to the agent generation that created them: they are
killed when it ends or the chat closes, and a live terminal keeps the actor from being idle.
"""

from __future__ import annotations

import codecs
import itertools
from collections.abc import Callable, Mapping
from typing import Any

import trio

from daemon.execution.local import AgentProcess, Executor, ExitStatus
from daemon.log import Log
from protocol import deltas as d


def trim_to_limit(buf: bytearray, limit: int) -> bool:
    """Drop bytes from the front of `buf` so it holds at most `limit` bytes, cutting only at
    a UTF-8 character boundary. Returns True if anything was dropped."""
    excess = len(buf) - limit
    if excess <= 0:
        return False
    cut = excess
    # Continuation bytes look like 0b10xxxxxx: never start the kept part on one.
    while cut < len(buf) and (buf[cut] & 0xC0) == 0x80:
        cut += 1
    del buf[:cut]
    return True


class UnknownTerminal(Exception):
    pass


class TerminalLimit(Exception):
    pass


class Terminal:
    __slots__ = ("buf", "command", "exited", "id", "limit", "proc", "released", "status",
                 "truncated")

    def __init__(self, terminal_id: str, command: list[str], proc: AgentProcess,
                 limit: int) -> None:
        self.id = terminal_id
        self.command = command
        self.proc = proc
        self.limit = limit
        self.buf = bytearray()
        self.truncated = False
        self.status: ExitStatus | None = None
        self.exited = trio.Event()
        self.released = False

    def append(self, data: bytes | bytearray) -> None:
        self.buf += data
        if trim_to_limit(self.buf, self.limit):
            self.truncated = True

    def output(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "output": self.buf.decode("utf-8", "replace"),
            "truncated": self.truncated,
        }
        if self.status is not None:
            result["exitStatus"] = exit_status_json(self.status)
        return result


def exit_status_json(status: ExitStatus) -> dict[str, Any]:
    signame: str | None = None
    if status.signal is not None:
        try:
            import signal as _signal

            signame = _signal.Signals(status.signal).name
        except ValueError:
            signame = str(status.signal)
    return {"exitCode": status.code, "signal": signame}


class TerminalManager:
    """The terminals of one agent generation. Run `serve()`'s nursery via `attach`."""

    def __init__(
        self,
        *,
        executor: Executor,
        root: str,
        env: Mapping[str, str],
        publish: Callable[[d.DeltaBody], None],
        on_activity: Callable[[], None],
        default_limit: int,
        max_count: int,
        actor: str,
        log: Log,
    ) -> None:
        self._executor = executor
        self._root = root
        self._env = env
        self._publish = publish
        self._on_activity = on_activity
        self._default_limit = default_limit
        self._max_count = max_count
        self._actor = actor
        self._log = log
        self._ids = itertools.count(1)
        self._terminals: dict[str, Terminal] = {}
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    @property
    def live(self) -> int:
        """Terminals whose process is still running."""
        return sum(1 for t in self._terminals.values() if not t.exited.is_set())

    def ids(self) -> list[str]:
        return list(self._terminals)

    def _get(self, terminal_id: str) -> Terminal:
        term = self._terminals.get(terminal_id)
        if term is None:
            raise UnknownTerminal(f"unknown terminal {terminal_id!r}")
        return term

    async def create(self, command: str, args: list[str], env: Mapping[str, str],
                     cwd: str | None, output_byte_limit: int | None) -> str:
        if self._nursery is None:
            raise RuntimeError("terminal manager is not attached to a nursery")
        if len(self._terminals) >= self._max_count:
            raise TerminalLimit(
                f"at most {self._max_count} terminals per chat; release one first")
        # Resolved where the terminal runs (over SFTP for a remote computer).
        real_cwd = await self._executor.files(self._root).directory(cwd)
        argv = [command, *args]
        terminal_id = f"term-{next(self._ids)}"
        proc = await self._executor.spawn(
            argv, env={**self._env, **env}, cwd=real_cwd, actor=f"{self._actor}/{terminal_id}",
            merge_stderr=True)
        limit = self._default_limit if output_byte_limit is None else max(0, output_byte_limit)
        term = Terminal(terminal_id, argv, proc, limit)
        self._terminals[terminal_id] = term
        self._on_activity()
        self._publish(d.Terminal(terminal=terminal_id, event="created", command=argv))
        self._nursery.start_soon(self._run, term)
        self._log.info("terminal started", terminal=terminal_id, command=argv[0],
                       pid=proc.identity.pid)
        return terminal_id

    async def _run(self, term: Terminal) -> None:
        async def pump(stream: trio.abc.ReceiveStream) -> None:
            # Incremental: a character split between two reads is published whole with the
            # second, not as two U+FFFD (the buffer itself is decoded whole, in `output`).
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            try:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        text = decoder.decode(b"", final=True)
                        if text:
                            self._publish(d.Terminal(terminal=term.id, event="output",
                                                     data=text))
                        return
                    term.append(data)
                    self._on_activity()
                    text = decoder.decode(data)
                    if text:
                        self._publish(d.Terminal(terminal=term.id, event="output",
                                                 data=text))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump, term.proc.stdout)
                nursery.start_soon(pump, term.proc.stderr)
                term.status = await term.proc.wait()
            # Both pipes drained: the output is complete before we announce the exit.
        finally:
            if term.status is None:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    term.status = await term.proc.stop(1.0)
            term.exited.set()
            self._on_activity()
            status = term.status
            if status is not None:
                self._publish(d.Terminal(terminal=term.id, event="exited",
                                         exit_code=status.code,
                                         signal=exit_status_json(status)["signal"]))

    def output(self, terminal_id: str) -> dict[str, Any]:
        return self._get(terminal_id).output()

    async def wait_for_exit(self, terminal_id: str) -> dict[str, Any]:
        term = self._get(terminal_id)
        await term.exited.wait()
        assert term.status is not None
        return exit_status_json(term.status)

    async def kill(self, terminal_id: str) -> None:
        term = self._get(terminal_id)
        if not term.exited.is_set():
            term.proc.kill()

    async def release(self, terminal_id: str) -> None:
        term = self._get(terminal_id)
        if not term.exited.is_set():
            term.proc.kill()
            with trio.move_on_after(5):
                await term.exited.wait()
        term.released = True
        del self._terminals[terminal_id]
        self._publish(d.Terminal(terminal=terminal_id, event="released"))

    async def close_all(self) -> None:
        """Kill every terminal (the generation or chat is ending)."""
        for term in list(self._terminals.values()):
            if not term.exited.is_set():
                term.proc.kill()
        with trio.move_on_after(5):
            for term in list(self._terminals.values()):
                await term.exited.wait()
        self._terminals.clear()
