"""A small ACP *client* for tests: runs an agent subprocess and speaks JSON-RPC to it (trio).

Typical use::

    async with open_agent([sys.executable, "-m", "daemon.echo_agent", ...]) as peer:
        await peer.initialize()
        sid = await peer.new_session("/tmp")
        result = await peer.prompt(sid, "hello world")
        assert peer.agent_text(sid) == "hello world"

* Every line the agent writes is parsed and, by default, validated against the vendored ACP
  schema (:class:`AcpSchema`); a violation raises out of the ``async with``.
* ``peer.messages`` holds every message the agent wrote, in order, so a test can check
  ordering (e.g. replay notifications before a response): :meth:`AcpPeer.wait_for` returns
  indexes into it and :class:`Call` records the index of its response.
* Requests the agent sends (fs/*, terminal/*, session/request_permission, ...) are answered
  by ``peer.handlers[method](params)`` (an async function returning the result or raising
  :class:`RpcError`); no handler means -32601.  :class:`LocalFs` and :class:`LocalTerminals`
  are ready-made handlers backed by the real file system and real processes.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import trio

JsonObj = dict[str, Any]
Handler = Callable[[JsonObj], Awaitable[Any]]

SCHEMA_PATH = Path(__file__).parent.parent / "data" / "acp" / "schema.json"


class RpcError(Exception):
    """A JSON-RPC error: raised by :meth:`Call.result`, raise it from handlers."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> JsonObj:
        error: JsonObj = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


class AgentGone(Exception):
    """The agent closed its stdout (exited) before the awaited message arrived."""


class AcpSchema:
    """Checks messages an *agent* writes against the ACP JSON schema.

    Responses are checked against the result shape of the method they answer, requests
    against the params shape of their method, ``session/update`` notifications against
    SessionNotification.  Deliberate exceptions: update kinds in ``skip_update_kinds`` are
    not checked, and result fields in ``extra_result_fields[method]`` are removed before
    checking.  Results are cached by message shape (string values of ``text`` keys, which
    the schema leaves unconstrained, are blanked), so 100 000 chunks check quickly.
    """

    RESULT_DEFS: Mapping[str, str] = {
        "initialize": "InitializeResponse",
        "authenticate": "AuthenticateResponse",
        "logout": "LogoutResponse",
        "session/new": "NewSessionResponse",
        "session/load": "LoadSessionResponse",
        "session/list": "ListSessionsResponse",
        "session/delete": "DeleteSessionResponse",
        "session/resume": "ResumeSessionResponse",
        "session/close": "CloseSessionResponse",
        "session/set_mode": "SetSessionModeResponse",
        "session/set_config_option": "SetSessionConfigOptionResponse",
        "session/prompt": "PromptResponse",
    }
    REQUEST_DEFS: Mapping[str, str] = {
        "fs/write_text_file": "WriteTextFileRequest",
        "fs/read_text_file": "ReadTextFileRequest",
        "session/request_permission": "RequestPermissionRequest",
        "terminal/create": "CreateTerminalRequest",
        "terminal/output": "TerminalOutputRequest",
        "terminal/release": "ReleaseTerminalRequest",
        "terminal/wait_for_exit": "WaitForTerminalExitRequest",
        "terminal/kill": "KillTerminalRequest",
        "elicitation/create": "CreateElicitationRequest",
    }
    NOTIFICATION_DEFS: Mapping[str, str] = {
        "session/update": "SessionNotification",
        "elicitation/complete": "CompleteElicitationNotification",
    }

    def __init__(
        self,
        path: Path = SCHEMA_PATH,
        *,
        skip_update_kinds: frozenset[str] = frozenset({"x_echo_future"}),
        extra_result_fields: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.root: JsonObj = json.loads(path.read_text(encoding="utf-8"))
        self.skip_update_kinds = skip_update_kinds
        self.extra_result_fields: Mapping[str, frozenset[str]] = (
            {"session/prompt": frozenset({"usage"})}
            if extra_result_fields is None
            else extra_result_fields
        )
        self._cls: Any = jsonschema.validators.validator_for(self.root)
        self._validators: dict[str, Any] = {}
        self._passed: set[str] = set()
        self.checked = 0
        self.skipped = 0

    def validator(self, def_name: str) -> Any:
        """A validator for ``$defs/<def_name>`` (``"Agent"``: the agent message envelope)."""
        validator = self._validators.get(def_name)
        if validator is None:
            if def_name == "Agent":
                schema: JsonObj = dict(self.root["anyOf"][0])
            else:
                schema = {"$ref": f"#/$defs/{def_name}"}
            schema["$defs"] = self.root["$defs"]
            validator = self._validators[def_name] = self._cls(schema)
        return validator

    def check(self, message: JsonObj, request_method: str | None = None) -> None:
        """Raise ``jsonschema.ValidationError`` (or AssertionError) if ``message`` is wrong.

        ``request_method`` is the method of the request a response answers, when known.
        """
        self.checked += 1
        key = f"{request_method}\0{_shape_key(message)}"
        if key in self._passed:
            return
        self._check(message, request_method)
        self._passed.add(key)

    def _check(self, message: JsonObj, request_method: str | None) -> None:
        self.validator("Agent").validate(message)
        method = message.get("method")
        if isinstance(method, str):
            params = message.get("params")
            if "id" in message:
                def_name = self.REQUEST_DEFS.get(method)
                if def_name is None:
                    assert method.startswith("_"), f"agent sent unknown request {method!r}"
                    return
                self.validator(def_name).validate(params)
                return
            def_name = self.NOTIFICATION_DEFS.get(method)
            if def_name is None:
                assert method.startswith("_"), f"agent sent unknown notification {method!r}"
                return
            update = params.get("update") if isinstance(params, dict) else None
            if isinstance(update, dict) and update.get("sessionUpdate") in self.skip_update_kinds:
                self.skipped += 1  # counts distinct shapes: checks are cached
                return
            self.validator(def_name).validate(params)
            return
        assert ("result" in message) != ("error" in message), f"bad response {message!r}"
        if "error" in message:
            self.validator("Error").validate(message["error"])
            return
        def_name = self.RESULT_DEFS.get(request_method or "")
        if def_name is None:
            return  # an extension method's result, or an answer to no request of ours
        result = message["result"]
        extra = self.extra_result_fields.get(request_method or "", frozenset())
        if extra and isinstance(result, dict):
            result = {k: v for k, v in result.items() if k not in extra}
        self.validator(def_name).validate(result)


def _shape_key(message: JsonObj) -> str:
    """A key equal for messages the schema cannot tell apart.

    The schema leaves ``text`` strings unconstrained, so they are blanked; the plain text
    chunk (by far the most frequent message, whose session id is unconstrained too) takes a
    fast path.
    """
    params = message.get("params")
    if (
        len(message) == 3
        and message.get("jsonrpc") == "2.0"
        and message.get("method") == "session/update"
        and type(params) is dict
        and len(params) == 2
        and type(params.get("sessionId")) is str
    ):
        update = params.get("update")
        if type(update) is dict and len(update) == 2:
            content = update.get("content")
            if (
                type(content) is dict
                and len(content) == 2
                and content.get("type") == "text"
                and type(content.get("text")) is str
            ):
                return f"text-chunk\0{update.get('sessionUpdate')!r}"
    return json.dumps(_blank_texts(message), sort_keys=True)


def _blank_texts(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "" if k == "text" and isinstance(v, str) else _blank_texts(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_blank_texts(v) for v in value]
    return value


@cache
def default_schema() -> AcpSchema:
    """One shared :class:`AcpSchema` (loading and compiling it is not free)."""
    return AcpSchema()


class Call:
    """A request this peer sent; await :meth:`result` (or :meth:`response`)."""

    def __init__(self, peer: AcpPeer, request_id: int, method: str) -> None:
        self.peer = peer
        self.id = request_id
        self.method = method
        self.message: JsonObj | None = None
        self.index = -1  # position of the response in peer.messages
        self.done = trio.Event()

    async def response(self) -> JsonObj:
        """The whole response message."""
        await self.done.wait()
        if self.message is None:
            raise AgentGone(f"the agent exited before answering {self.method} #{self.id}")
        return self.message

    async def result(self) -> Any:
        """The result; an error response raises :class:`RpcError`."""
        message = await self.response()
        if "error" in message:
            error = message["error"]
            raise RpcError(error["code"], error["message"], error.get("data"))
        return message["result"]


class Inbox:
    """The messages a process wrote, in order, as they arrive; and waiting for one of them.

    The reader appends to ``messages`` and calls :meth:`_wake`; it sets ``closed`` (and
    wakes) when the process's output ends."""

    def __init__(self) -> None:
        self.messages: list[JsonObj] = []
        self.closed = False  # the process's output reached EOF
        self._changed = trio.Event()

    def _gone(self) -> Exception:
        """What :meth:`wait_for` raises when the output ends before the message came."""
        return AgentGone("the agent exited before the awaited message")

    async def wait_for(self, predicate: Callable[[JsonObj], bool], *, start: int = 0) -> int:
        """Wait for a message (from index ``start`` on) matching ``predicate``; its index."""
        i = start
        while True:
            while i < len(self.messages):
                if predicate(self.messages[i]):
                    return i
                i += 1
            if self.closed:
                raise self._gone()
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class AcpPeer(Inbox):
    """The client side of one agent process.  Create it with :func:`open_agent`."""

    def __init__(
        self, process: trio.Process, nursery: trio.Nursery, schema: AcpSchema | None
    ) -> None:
        super().__init__()
        self.process = process
        self.nursery = nursery
        self.schema = schema
        self.handlers: dict[str, Handler] = {}
        self.stderr = bytearray()
        self._stderr_done = False
        self._calls: dict[int, Call] = {}
        self._next_id = 1
        self._send_lock = trio.Lock()

    # -------------------------------------------------------------- sending

    async def send_raw(self, data: bytes) -> None:
        """Write bytes to the agent's stdin as they are (add the newline yourself)."""
        assert self.process.stdin is not None
        async with self._send_lock:
            await self.process.stdin.send_all(data)

    async def send(self, message: JsonObj) -> None:
        await self.send_raw(json.dumps(message).encode("utf-8") + b"\n")

    async def start(self, method: str, params: JsonObj | None = None) -> Call:
        """Send a request and return at once; await the returned call later."""
        call = Call(self, self._next_id, method)
        self._next_id += 1
        self._calls[call.id] = call
        if self.closed:
            call.done.set()
        message: JsonObj = {"jsonrpc": "2.0", "id": call.id, "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)
        return call

    async def request(self, method: str, params: JsonObj | None = None) -> Any:
        """Send a request and return its result (an error raises :class:`RpcError`)."""
        return await (await self.start(method, params)).result()

    async def notify(self, method: str, params: JsonObj | None = None) -> None:
        message: JsonObj = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self.send(message)

    async def close_stdin(self) -> None:
        if self.process.stdin is not None:
            async with self._send_lock:
                await self.process.stdin.aclose()

    # ------------------------------------------------------------ receiving

    async def wait_update(
        self, session_id: str, kind: str, *, start: int = 0
    ) -> tuple[int, JsonObj]:
        """Wait for a ``session/update`` of that kind; its index and its ``update``."""
        index = await self.wait_for(
            lambda m: is_update(m, session_id, kind),
            start=start,
        )
        update: JsonObj = self.messages[index]["params"]["update"]
        return index, update

    async def wait_stderr(self, needle: str) -> None:
        """Wait until the agent's stderr contains ``needle``."""
        while needle not in self.stderr_text:
            if self._stderr_done:
                raise AgentGone(f"the agent exited without writing {needle!r} to stderr")
            await self._changed.wait()

    async def wait_exit(self) -> int:
        return await self.process.wait()

    def kill(self) -> None:
        """SIGKILL the agent."""
        self.process.kill()

    def updates(
        self,
        session_id: str | None = None,
        kind: str | None = None,
        start: int = 0,
        end: int | None = None,
    ) -> list[JsonObj]:
        """The ``update`` objects of the session/update notifications in messages[start:end]."""
        return [
            m["params"]["update"]
            for m in self.messages[start:end]
            if is_update(m, session_id, kind)
        ]

    def agent_text(self, session_id: str, start: int = 0, end: int | None = None) -> str:
        """The concatenated text of the agent_message_chunk updates in messages[start:end]."""
        return "".join(
            u["content"].get("text", "")
            for u in self.updates(session_id, "agent_message_chunk", start, end)
        )

    def requests(self, method: str | None = None) -> list[JsonObj]:
        """The requests the agent sent (optionally only those of one method)."""
        return [
            m
            for m in self.messages
            if "id" in m
            and isinstance(m.get("method"), str)
            and (method is None or m["method"] == method)
        ]

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace")

    # -------------------------------------------------------------- helpers

    async def initialize(
        self, *, read: bool = True, write: bool = True, terminal: bool = True
    ) -> JsonObj:
        result: JsonObj = await self.request(
            "initialize",
            {
                "protocolVersion": 1,
                "clientCapabilities": {
                    "fs": {"readTextFile": read, "writeTextFile": write},
                    "terminal": terminal,
                },
                "clientInfo": {"name": "acp-peer", "version": "0"},
            },
        )
        return result

    async def new_session(self, cwd: str | Path) -> str:
        result = await self.request("session/new", {"cwd": str(cwd), "mcpServers": []})
        session_id: str = result["sessionId"]
        return session_id

    async def start_prompt(self, session_id: str, prompt: str | list[JsonObj]) -> Call:
        blocks = [{"type": "text", "text": prompt}] if isinstance(prompt, str) else prompt
        return await self.start("session/prompt", {"sessionId": session_id, "prompt": blocks})

    async def prompt(self, session_id: str, prompt: str | list[JsonObj]) -> JsonObj:
        """Run a prompt turn; its result ({stopReason, ...})."""
        result: JsonObj = await (await self.start_prompt(session_id, prompt)).result()
        return result

    async def cancel(self, session_id: str) -> None:
        await self.notify("session/cancel", {"sessionId": session_id})

    # ------------------------------------------------------------- internals

    async def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        buf = bytearray()
        try:
            while data := await self.process.stdout.receive_some(1 << 20):
                buf += data
                start = 0
                while (end := buf.find(b"\n", start)) >= 0:
                    self._on_line(bytes(buf[start:end]))
                    start = end + 1
                del buf[:start]
                self._wake()
            if buf.strip():
                self._on_line(bytes(buf))
        finally:
            self.closed = True
            for call in self._calls.values():
                call.done.set()
            self._calls.clear()
            self._wake()

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while data := await self.process.stderr.receive_some(1 << 16):
            self.stderr += data
            self._wake()
        self._stderr_done = True
        self._wake()

    def _on_line(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise AssertionError(f"the agent wrote a non-JSON line {line[:200]!r}") from exc
        assert isinstance(message, dict), f"the agent wrote a non-object {message!r}"
        index = len(self.messages)
        self.messages.append(message)
        method = message.get("method")
        call: Call | None = None
        if method is None:
            request_id = message.get("id")
            call = self._calls.pop(request_id, None) if isinstance(request_id, int) else None
        if self.schema is not None:
            self.schema.check(message, call.method if call is not None else None)
        if call is not None:
            call.message = message
            call.index = index
            call.done.set()
        elif isinstance(method, str) and "id" in message:
            self.nursery.start_soon(self._serve, message)

    async def _serve(self, request: JsonObj) -> None:
        handler = self.handlers.get(request["method"])
        reply: JsonObj = {"jsonrpc": "2.0", "id": request["id"]}
        failure: BaseException | None = None
        if handler is None:
            reply["error"] = {"code": -32601, "message": "Method not found"}
        else:
            try:
                reply["result"] = await handler(request.get("params") or {})
            except RpcError as exc:
                reply["error"] = exc.to_json()
            except Exception as exc:
                reply["error"] = {"code": -32603, "message": f"test handler failed: {exc!r}"}
                failure = exc
        if not self.closed:
            try:
                await self.send(reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if failure is not None:
            raise failure


def is_update(message: JsonObj, session_id: str | None = None, kind: str | None = None) -> bool:
    """Is ``message`` a session/update (of that session and kind, when given)?"""
    if message.get("method") != "session/update" or "id" in message:
        return False
    params = message.get("params") or {}
    if session_id is not None and params.get("sessionId") != session_id:
        return False
    return kind is None or (params.get("update") or {}).get("sessionUpdate") == kind


@asynccontextmanager
async def open_agent(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | Path | None = None,
    schema: AcpSchema | bool | None = True,
    exit_timeout: float = 2.0,
) -> AsyncIterator[AcpPeer]:
    """Start the agent; on exit close its stdin, wait ``exit_timeout`` s, then kill it.

    ``schema=True`` validates with :func:`default_schema`; ``None``/``False`` disables it.
    """
    checker = default_schema() if schema is True else (schema or None)
    process = await trio.lowlevel.open_process(
        list(argv),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    try:
        async with trio.open_nursery() as nursery:
            peer = AcpPeer(process, nursery, checker)
            nursery.start_soon(peer._read_stdout)
            nursery.start_soon(peer._read_stderr)
            try:
                yield peer
            finally:
                with trio.CancelScope(shield=True):
                    try:
                        await peer.close_stdin()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    with trio.move_on_after(exit_timeout):
                        await process.wait()
                    await reap(process)
                nursery.cancel_scope.cancel()
    finally:
        await reap(process)


async def reap(process: trio.Process) -> None:
    """SIGKILL `process` if it still runs, and wait for it (shielded from cancellation)."""
    if process.returncode is None:
        process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()


# ----------------------------------------------------------- client handlers


class LocalFs:
    """``fs/read_text_file`` and ``fs/write_text_file`` on the real file system."""

    def __init__(self) -> None:
        self.writes: list[tuple[str, str]] = []
        self.reads: list[str] = []

    def install(self, peer: AcpPeer) -> None:
        peer.handlers["fs/read_text_file"] = self.read_text_file
        peer.handlers["fs/write_text_file"] = self.write_text_file

    async def read_text_file(self, params: JsonObj) -> JsonObj:
        path = trio.Path(params["path"])
        self.reads.append(str(path))
        try:
            return {"content": await path.read_text(encoding="utf-8")}
        except FileNotFoundError:
            raise RpcError(-32002, f"Resource not found: {path}") from None

    async def write_text_file(self, params: JsonObj) -> JsonObj:
        path = trio.Path(params["path"])
        self.writes.append((str(path), params["content"]))
        try:
            await path.write_text(params["content"], encoding="utf-8")
        except OSError as exc:
            raise RpcError(-32603, f"cannot write {path}: {exc.strerror}") from None
        return {}


class _Terminal:
    def __init__(self, process: trio.Process, limit: int | None) -> None:
        self.process = process
        self.limit = limit
        self.output = bytearray()
        self.truncated = False
        self.exited = trio.Event()

    async def pump(self) -> None:
        assert self.process.stdout is not None
        while data := await self.process.stdout.receive_some(1 << 16):
            self.output += data
            if self.limit is not None and len(self.output) > self.limit:
                del self.output[: len(self.output) - self.limit]
                self.truncated = True
        await self.process.wait()
        self.exited.set()

    def exit_status(self) -> JsonObj:
        code = self.process.returncode
        assert code is not None
        if code < 0:
            return {"exitCode": None, "signal": signal.Signals(-code).name}
        return {"exitCode": code, "signal": None}


class LocalTerminals:
    """The ``terminal/*`` methods, running real processes (stdout and stderr merged)."""

    def __init__(self) -> None:
        self.terminals: dict[str, _Terminal] = {}
        self.calls: list[tuple[str, JsonObj]] = []
        self.released: list[str] = []
        self._nursery: trio.Nursery | None = None

    def install(self, peer: AcpPeer) -> None:
        self._nursery = peer.nursery
        for name in ("create", "output", "wait_for_exit", "kill", "release"):
            peer.handlers[f"terminal/{name}"] = self._logged(name, getattr(self, name))

    def _logged(self, name: str, func: Handler) -> Handler:
        async def handler(params: JsonObj) -> Any:
            self.calls.append((name, params))
            return await func(params)

        return handler

    def _get(self, params: JsonObj) -> _Terminal:
        terminal = self.terminals.get(params["terminalId"])
        if terminal is None:
            raise RpcError(-32002, f"unknown terminal {params['terminalId']}")
        return terminal

    async def create(self, params: JsonObj) -> JsonObj:
        assert self._nursery is not None, "install() first"
        argv = [params["command"], *params.get("args", [])]
        try:
            process = await trio.lowlevel.open_process(
                argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=params.get("cwd")
            )
        except OSError as exc:
            raise RpcError(-32603, f"cannot run {params['command']}: {exc.strerror}") from None
        terminal_id = f"term-{len(self.terminals) + len(self.released) + 1}"
        terminal = self.terminals[terminal_id] = _Terminal(process, params.get("outputByteLimit"))
        self._nursery.start_soon(terminal.pump)
        return {"terminalId": terminal_id}

    async def output(self, params: JsonObj) -> JsonObj:
        terminal = self._get(params)
        result: JsonObj = {
            "output": terminal.output.decode("utf-8", "replace"),
            "truncated": terminal.truncated,
        }
        if terminal.exited.is_set():
            result["exitStatus"] = terminal.exit_status()
        return result

    async def wait_for_exit(self, params: JsonObj) -> JsonObj:
        terminal = self._get(params)
        await terminal.exited.wait()
        return terminal.exit_status()

    async def kill(self, params: JsonObj) -> JsonObj:
        terminal = self._get(params)
        if terminal.process.returncode is None:
            terminal.process.kill()
        return {}

    async def release(self, params: JsonObj) -> JsonObj:
        await self.kill(params)
        del self.terminals[params["terminalId"]]
        self.released.append(params["terminalId"])
        return {}
