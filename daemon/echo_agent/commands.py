"""The echo agent's prompt commands that stay inside the agent (``/chunks``, ``/sleep``,
``/crash``, ``/tool``, ``/remember``, ...): each gets the running turn and the text after the
command word, and answers with chunks and ``session/update`` notifications. The commands
that make requests to the client are in :mod:`daemon.echo_agent.client_commands`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

from daemon.echo_agent.jsonrpc import INTERNAL_ERROR, RpcError
from daemon.echo_agent.sessions import Turn, now_iso
from daemon.echo_agent.state import AgentState

MAX_MS: Final = 10**9

Command = Callable[[Turn, str], None]


class Usage(Exception):
    """A prompt command's argument is missing or malformed: replied as ``error: ...``."""


def int_arg(arg: str, usage: str, *, low: int = 0, high: int | None = None) -> int:
    """``arg`` as an int in [low, high], else :class:`Usage` with that usage text."""
    try:
        value = int(arg)
    except ValueError:
        raise Usage(usage) from None
    if value < low or (high is not None and value > high):
        raise Usage(usage)
    return value


class LocalCommands:
    """The commands answered from the agent alone."""

    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._wire = state.wire
        self._transient_failures: dict[tuple[str, str], int] = {}
        """``/transient``: failures so far per (session, argument), until it succeeds."""

    def table(self) -> dict[str, Command]:
        """Command word -> handler."""
        return {
            "/chunks": self._cmd_chunks,
            "/sleep": self._cmd_sleep,
            "/slow": self._cmd_slow,
            "/hang": self._cmd_hang,
            "/stall": self._cmd_stall,
            "/crash": self._cmd_crash,
            "/exit": self._cmd_exit,
            "/pid": self._cmd_pid,
            "/tool": self._cmd_tool,
            "/remember": self._cmd_remember,
            "/recall": self._cmd_recall,
            "/think": self._cmd_think,
            "/plan": self._cmd_plan,
            "/commands": self._cmd_commands,
            "/title": self._cmd_title,
            "/usage": self._cmd_usage,
            "/mode": self._cmd_mode,
            "/unknown": self._cmd_unknown,
            "/stderr": self._cmd_stderr,
            "/bigline": self._cmd_bigline,
            "/error": self._cmd_error,
            "/transient": self._cmd_transient,
            "/spawn": self._cmd_spawn,
            "/meta-usage": self._cmd_meta_usage,
            "/lines": self._cmd_lines,
            "/tool-open": self._cmd_tool_open,
        }

    def _cmd_chunks(self, turn: Turn, arg: str) -> None:
        count = int_arg(arg, "usage: /chunks N (N >= 0)")
        self._wire.stream(turn, (f"c{i}" if i == 0 else f" c{i}" for i in range(count)))

    def _cmd_sleep(self, turn: Turn, arg: str) -> None:
        ms = int_arg(arg, "usage: /sleep MS (0 <= MS <= 10^9)", high=MAX_MS)
        if not turn.cancel.wait(ms / 1000):
            self._wire.chunk(turn, f"slept {ms}")

    def _cmd_slow(self, turn: Turn, arg: str) -> None:
        ms = int_arg(arg, "usage: /slow MS (0 <= MS <= 10^9)", high=MAX_MS)
        # Silent, but the reader thread keeps answering requests meanwhile.
        if not turn.cancel.wait(ms / 1000):
            self._wire.chunk(turn, f"slow {ms}")

    def _cmd_hang(self, turn: Turn, arg: str) -> None:
        self._state.hung.set()
        self._wire.silence_forever()  # the write lock is never released: nothing is written

    def _cmd_stall(self, turn: Turn, arg: str) -> None:
        # One session stuck: silent, deaf to session/cancel and session/close, until stdin
        # EOF; the agent goes on answering everything else (a hung session, not process).
        state = self._state
        with state.cond:
            while not state.eof:
                state.cond.wait()

    def _cmd_crash(self, turn: Turn, arg: str) -> None:
        self._wire.chunk(turn, "crashing")
        self._wire.log("crashing on request")
        self._wire.exit_now(3)

    def _cmd_exit(self, turn: Turn, arg: str) -> None:
        self._wire.exit_now(int_arg(arg, "usage: /exit CODE (0..255)", high=255))

    def _cmd_pid(self, turn: Turn, arg: str) -> None:
        self._wire.chunk(turn, str(os.getpid()))

    def _cmd_tool(self, turn: Turn, arg: str) -> None:
        sid = turn.session.session_id
        tool_id = self._state.new_tool_call_id()
        self._wire.update(
            sid,
            {
                "sessionUpdate": "tool_call",
                "toolCallId": tool_id,
                "title": "echo tool",
                "kind": "other",
                "status": "pending",
            },
        )
        self._wire.update(
            sid,
            {"sessionUpdate": "tool_call_update", "toolCallId": tool_id, "status": "in_progress"},
        )
        self._wire.update(
            sid,
            {
                "sessionUpdate": "tool_call_update",
                "toolCallId": tool_id,
                "status": "completed",
                "content": [
                    {"type": "content", "content": {"type": "text", "text": "tool output"}}
                ],
            },
        )
        self._wire.chunk(turn, "tool done")

    def _cmd_tool_open(self, turn: Turn, arg: str) -> None:
        """``/tool-open [COMMAND ...]``: announce a pending tool call that is never updated,
        then run the rest as another of these commands (``/tool-open /crash``,
        ``/tool-open /hang``): a turn that ends with a tool call still open."""
        self._wire.update(
            turn.session.session_id,
            {
                "sessionUpdate": "tool_call",
                "toolCallId": self._state.new_tool_call_id(),
                "title": "open tool",
                "kind": "other",
                "status": "pending",
            },
        )
        word, _, rest = arg.partition(" ")
        if not word:
            self._wire.chunk(turn, "tool left open")
            return
        command = self.table().get(word)
        if command is None or command == self._cmd_tool_open:
            raise Usage("usage: /tool-open [COMMAND ...] (a command of this agent's own)")
        command(turn, rest.strip())

    def _cmd_remember(self, turn: Turn, arg: str) -> None:
        if not arg:
            raise Usage("usage: /remember WORD")
        with self._state.cond:
            turn.session.memory.append(arg)
            self._state.save(turn.session)
        self._wire.chunk(turn, f"remembered {arg}")

    def _cmd_recall(self, turn: Turn, arg: str) -> None:
        with self._state.cond:
            memory = list(turn.session.memory)
        self._wire.chunk(turn, " ".join(memory) if memory else "nothing remembered")

    def _cmd_think(self, turn: Turn, arg: str) -> None:
        self._wire.update(
            turn.session.session_id,
            {"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": arg}},
        )
        self._wire.chunk(turn, "thought")

    def _cmd_plan(self, turn: Turn, arg: str) -> None:
        self._wire.update(
            turn.session.session_id,
            {
                "sessionUpdate": "plan",
                "entries": [
                    {"content": "Read the prompt", "priority": "medium", "status": "in_progress"},
                    {"content": "Echo the answer", "priority": "medium", "status": "pending"},
                ],
            },
        )
        self._wire.chunk(turn, "planned")

    def _cmd_commands(self, turn: Turn, arg: str) -> None:
        self._wire.update(
            turn.session.session_id,
            {
                "sessionUpdate": "available_commands_update",
                "availableCommands": [
                    {"name": "chunks", "description": "Stream N numbered chunks"},
                    {"name": "sleep", "description": "Wait MS milliseconds, then answer"},
                ],
            },
        )
        self._wire.chunk(turn, "commands sent")

    def _cmd_title(self, turn: Turn, arg: str) -> None:
        if not arg:
            raise Usage("usage: /title TEXT")
        with self._state.cond:
            turn.session.title = arg
            turn.session.updated_at = updated = now_iso()
            self._state.save(turn.session)
        self._wire.update(
            turn.session.session_id,
            {"sessionUpdate": "session_info_update", "title": arg, "updatedAt": updated},
        )
        self._wire.chunk(turn, "titled")

    def _cmd_usage(self, turn: Turn, arg: str) -> None:
        self._wire.update(
            turn.session.session_id,
            {
                "sessionUpdate": "usage_update",
                "used": 1234,
                "size": 200000,
                "cost": {"amount": 0.01, "currency": "USD"},
            },
        )
        self._wire.chunk(turn, "usage sent")

    def _cmd_mode(self, turn: Turn, arg: str) -> None:
        if not arg:
            raise Usage("usage: /mode MODEID")
        try:
            self._state.set_mode(turn.session, arg)
        except RpcError as exc:
            raise Usage(exc.message) from None
        self._wire.chunk(turn, f"mode {arg}")

    def _cmd_unknown(self, turn: Turn, arg: str) -> None:
        sid = turn.session.session_id
        self._wire.update(sid, {"sessionUpdate": "x_echo_future", "payload": 1})
        self._wire.notify("_echo/custom", {"sessionId": sid, "n": 1})
        self._wire.chunk(turn, "unknown sent")

    def _cmd_stderr(self, turn: Turn, arg: str) -> None:
        count = int_arg(arg, "usage: /stderr N (N >= 0)")
        try:
            self._wire.err.write("".join(f"echo stderr line {i}\n" for i in range(count)))
            self._wire.err.flush()
        except (OSError, ValueError):
            pass
        self._wire.chunk(turn, f"stderr {count}")

    def _cmd_bigline(self, turn: Turn, arg: str) -> None:
        kb = int_arg(arg, "usage: /bigline KB (0 <= KB <= 1048576)", high=1 << 20)
        self._wire.chunk(turn, "x" * (kb * 1024))

    def _cmd_error(self, turn: Turn, arg: str) -> None:
        raise RpcError(INTERNAL_ERROR, "echo: requested failure")

    def _cmd_transient(self, turn: Turn, arg: str) -> None:
        usage = "usage: /transient N [late]"
        words = arg.split()
        if not words or len(words) > 2 or (len(words) == 2 and words[1] != "late"):
            raise Usage(usage)
        count = int_arg(words[0], usage, high=1000)
        late = len(words) == 2
        key = (turn.session.session_id, arg)
        with self._state.cond:
            failed = self._transient_failures.get(key, 0)
            if failed >= count:
                self._transient_failures.pop(key, None)
            else:
                self._transient_failures[key] = failed + 1
        if failed >= count:
            self._wire.chunk(turn, f"recovered after {count} transient failures")
            return
        if late:
            self._wire.chunk(turn, "partial")
        raise RpcError(INTERNAL_ERROR, f"echo: rate limit exceeded (429 Too Many Requests), "
                                       f"failure {failed + 1} of {count}")

    def _cmd_lines(self, turn: Turn, arg: str) -> None:
        words = arg.split()
        if not words:
            raise Usage("usage: /lines WORD...")
        self._wire.stream(turn, (w if i == 0 else "\n" + w for i, w in enumerate(words)))

    def _cmd_meta_usage(self, turn: Turn, arg: str) -> None:
        ms = int_arg(arg, "usage: /meta-usage [MS] (0 <= MS <= 10^9)", high=MAX_MS) \
            if arg else 0
        usage = {"inputTokens": 100, "outputTokens": 7, "totalTokens": 107,
                 "thoughtTokens": 0, "cachedReadTokens": 3}
        self._wire.update(turn.session.session_id, {
            "sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": ""},
            "_meta": {"usage": usage, "durationMs": 5}})
        if ms == 0 or not turn.cancel.wait(ms / 1000):
            self._wire.chunk(turn, "metered")

    def _cmd_spawn(self, turn: Turn, arg: str) -> None:
        import subprocess

        seconds = int_arg(arg, "usage: /spawn SECONDS", low=1, high=86400)
        child = subprocess.Popen(
            ["sleep", str(seconds)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self._wire.chunk(turn, str(child.pid))
