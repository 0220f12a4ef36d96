"""Driving `stoker acp` from tests: an SDK editor process, and the judge of its output.

* :func:`open_editor` runs ``tests/support/acp_editor.py`` (the official Python SDK as
  the editor, asyncio, its own process) against ``python -m daemon.cli acp``, with
  ``STOKER_ACP_TRACE`` / ``STOKER_ACP_TRACE_IN`` set, and drives it op by op.
* :func:`check_trace` validates every line `stoker acp` wrote against the official ACP
  schema: responses by the method of the request they answer (taken from the input trace),
  `session/update` and `session/request_permission` by their shapes, `$/cancel_request` as a
  protocol-level notification. It also checks that no `session/update` of a session reaches
  the editor before the `session/new` response that created the session.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import jsonschema
import trio

from tests.support.acp_peer import AcpSchema, Inbox, reap
from tests.support.harness import ROOT, DaemonProcess

JsonObj = dict[str, Any]
EDITOR_SCRIPT = ROOT / "tests" / "support" / "acp_editor.py"


class BridgeSchema(AcpSchema):
    """`AcpSchema` (which judges what an agent writes) plus ACP's protocol-level
    notifications, and with no exceptions: the bridge must never forward an update kind the
    schema does not know."""

    def __init__(self) -> None:
        super().__init__(skip_update_kinds=frozenset(), extra_result_fields={})
        protocol_level: JsonObj = dict(self.root["anyOf"][2])
        protocol_level["$defs"] = self.root["$defs"]
        self._protocol_level = jsonschema.validators.validator_for(self.root)(protocol_level)

    def _check(self, message: JsonObj, request_method: str | None) -> None:
        method = message.get("method")
        if isinstance(method, str) and method.startswith("$/"):
            assert "id" not in message, f"protocol-level request {message!r}"
            assert method == "$/cancel_request", f"unknown protocol method {method!r}"
            self._protocol_level.validate(message)
            self.validator("CancelRequestNotification").validate(message["params"])
            return
        super()._check(message, request_method)


def read_trace(path: Path) -> list[JsonObj]:
    if not path.exists():
        return []
    lines = path.read_bytes().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def check_trace(out_path: Path, in_path: Path, schema: BridgeSchema | None = None
                ) -> list[JsonObj]:
    """Validate what `stoker acp` wrote; returns those messages."""
    schema = schema or BridgeSchema()
    received = read_trace(in_path)
    methods = {msg["id"]: msg["method"] for msg in received
               if "id" in msg and isinstance(msg.get("method"), str)}
    # A session is known to the editor once a session/new response named it, or when the
    # editor itself named it in session/load or session/resume (load replays before
    # answering, as the spec requires).
    named = {msg["params"]["sessionId"] for msg in received
             if msg.get("method") in ("session/load", "session/resume")}
    written = read_trace(out_path)
    assert written, f"{out_path} is empty"
    created: set[str] = set()
    for index, message in enumerate(written):
        method = None if "method" in message else methods.get(message.get("id"))
        try:
            schema.check(message, method)
        except jsonschema.ValidationError as exc:
            raise AssertionError(f"line {index} of {out_path} ({method or message.get('method')})"
                                 f" violates the ACP schema: {exc.message}\n{message}"
                                 ) from None
        if method == "session/new" and "result" in message:
            created.add(message["result"]["sessionId"])
        if message.get("method") in ("session/update", "session/request_permission"):
            session = message["params"]["sessionId"]
            assert session in created or session in named, (
                f"line {index}: {session} reached the editor before the session/new "
                f"response that names it: {message}")
    return written


class EditorError(Exception):
    def __init__(self, error: JsonObj) -> None:
        super().__init__(f"{error.get('code')}: {error.get('message')}")
        self.code = error.get("code")
        self.message = str(error.get("message"))
        self.data: Any = error.get("data")


class Editor(Inbox):
    """One SDK editor process and the `stoker acp` it runs."""

    def __init__(self, process: trio.Process, out_trace: Path, in_trace: Path) -> None:
        super().__init__()
        self.process = process
        self.out_trace = out_trace
        self.in_trace = in_trace
        self.agent_pid = 0
        self._ids = itertools.count(1)

    # -------------------------------------------------------------- commands

    async def send(self, op: str, **args: Any) -> int:
        """Start an op; returns its id (see :meth:`reply`)."""
        command_id = next(self._ids)
        line = json.dumps({"id": command_id, "op": op, **args}) + "\n"
        assert self.process.stdin is not None
        await self.process.stdin.send_all(line.encode())
        return command_id

    async def reply(self, command_id: int, timeout: float = 20.0) -> Any:
        with trio.fail_after(timeout):
            index = await self.wait_for(lambda msg: msg.get("reply") == command_id)
        message = self.messages[index]
        if "error" in message:
            raise EditorError(message["error"])
        return message["result"]

    async def call(self, op: str, timeout: float = 20.0, **args: Any) -> Any:
        return await self.reply(await self.send(op, **args), timeout)

    def reply_index(self, command_id: int) -> int:
        return next(i for i, msg in enumerate(self.messages) if msg.get("reply") == command_id)

    # -------------------------------------------------------------- output

    def _gone(self) -> Exception:
        return AssertionError("the editor exited before the awaited message")

    async def wait_for(self, predicate: Callable[[JsonObj], bool], start: int = 0,
                       timeout: float | None = None) -> int:
        with trio.fail_after(timeout) if timeout is not None else trio.CancelScope():
            return await super().wait_for(predicate, start=start)
        raise AssertionError("unreachable")

    async def wait_event(self, kind: str, start: int = 0, timeout: float = 20.0) -> JsonObj:
        index = await self.wait_for(lambda msg: msg.get("event") == kind, start, timeout)
        return self.messages[index]

    def updates(self, session: str, start: int = 0, end: int | None = None,
                kind: str | None = None) -> list[JsonObj]:
        return [msg["update"] for msg in self.messages[start:end]
                if msg.get("event") == "update" and msg.get("sessionId") == session
                and (kind is None or msg["update"].get("sessionUpdate") == kind)]

    def text(self, session: str, start: int = 0, end: int | None = None,
             kind: str = "agent_message_chunk") -> str:
        return "".join(u["content"].get("text", "")
                       for u in self.updates(session, start, end, kind))

    async def _read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        try:
            while data := await self.process.stdout.receive_some(1 << 16):
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        self.messages.append(json.loads(line))
                self._wake()
        finally:
            self.closed = True
            self._wake()

    # -------------------------------------------------------------- ending

    def kill(self) -> None:
        """SIGKILL the editor (not `stoker acp`: it must notice on its own)."""
        self.process.send_signal(signal.SIGKILL)

    def check_trace(self) -> list[JsonObj]:
        return check_trace(self.out_trace, self.in_trace)


_serial = itertools.count(1)


@asynccontextmanager
async def open_editor(daemon: DaemonProcess, *acp_args: str, agent: str = "echo",
                      check: bool = True) -> AsyncIterator[Editor]:
    """Run an SDK editor against `stoker acp --agent AGENT ACP_ARGS...`. On a normal exit it
    asks the editor to quit (the bridge sees EOF) and validates the trace."""
    serial = next(_serial)
    out_trace = daemon.base / f"editor{serial}.out.jsonl"
    in_trace = daemon.base / f"editor{serial}.in.jsonl"
    env = daemon.env()
    env["STOKER_ACP_TRACE"] = str(out_trace)
    env["STOKER_ACP_TRACE_IN"] = str(in_trace)
    argv = [sys.executable, str(EDITOR_SCRIPT), "--", sys.executable, "-m", "daemon.cli",
            "acp", "--agent", agent, "--log-level", "info", *acp_args]
    log = os.open(daemon.base / f"editor{serial}.log",
                  os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
            cwd=str(daemon.work))
    finally:
        os.close(log)
    editor = Editor(process, out_trace, in_trace)
    ok = False
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(editor._read)
            started = await editor.wait_event("started")
            editor.agent_pid = int(started["agentPid"])
            yield editor
            ok = True
            if process.returncode is None:
                try:
                    await editor.send("exit")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            with trio.move_on_after(10):
                await process.wait()
            nursery.cancel_scope.cancel()
    finally:
        await reap(process)
    if ok and check:
        editor.check_trace()
