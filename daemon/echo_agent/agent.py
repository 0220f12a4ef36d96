"""stoker-echo: Stoker's built-in reference ACP agent.

A real Agent Client Protocol (ACP v1) agent that speaks JSON-RPC 2.0 on stdin/stdout, one
UTF-8 JSON object per line.  It is Stoker's embedded default agent and the peer every
integration test of the daemon drives, so it is deterministic, starts fast (standard library
only) and does exactly what its prompt says.  Run it with ``python -m daemon.echo_agent`` or
``stoker echo-agent``; :func:`main` is the entry point.

Protocol surface
================
``initialize``
    Answers ``protocolVersion`` 1, ``agentInfo`` {name "stoker-echo", version "1"},
    ``loadSession`` true, ``promptCapabilities`` {image, audio false, embeddedContext},
    ``sessionCapabilities`` {resume, close, list} and ``authMethods`` (empty unless
    ``--require-auth``).  Records the client's ``fs.readTextFile``, ``fs.writeTextFile`` and
    ``terminal`` capabilities; ``/read``, ``/write`` and ``/terminal`` refuse (with an
    ``error: ...`` reply) when the client did not advertise them.
``authenticate {methodId}``
    ``{}``.  With ``--require-auth`` only ``echo-login`` is accepted (else -32602) and it
    unlocks ``session/new``, ``session/load`` and ``session/resume`` (which answer -32000
    "Authentication required" before that).
``session/new {cwd, mcpServers}``
    A fresh uuid ``sessionId``, ``modes`` (``default``, ``plan``) and ``configOptions``: a
    select ``model`` (``echo-1``/``echo-2``, category ``model``) and a boolean ``verbose``.
    Both options and the mode are inert: they are stored, persisted and reported, nothing more.
``session/load {sessionId, cwd, mcpServers}``
    Replays the stored history as ``session/update`` notifications, in order, *before* the
    response: one ``user_message_chunk`` per prompt text and one ``agent_message_chunk`` per
    reply text (entries with empty text are not replayed).  Unknown session: -32002.
``session/resume {sessionId, cwd}``
    Reattaches without replay.  Unknown session: -32002.  Load and resume both return the
    stored modes/configOptions and adopt the request's ``cwd``.
``session/close {sessionId}``
    Cancels a running prompt (as ``session/cancel`` would), forgets the session in memory
    and answers ``{}``; its file stays, so load/resume keep working.
``session/list {cwd?}``
    Every session file in the state dir (optionally only those with that cwd), most recently
    updated first: ``sessionId``, ``cwd``, ``title`` (when set), ``updatedAt``.
``session/set_mode {sessionId, modeId}``
    ``{}`` after a ``current_mode_update`` notification; unknown mode: -32602.
``session/set_config_option {sessionId, configId, value}``
    ``model`` takes a string value id, ``verbose`` a boolean (``"type": "boolean"``).  Sends a
    ``config_option_update`` notification, then answers ``{configOptions}``; unknown
    option or value: -32602.
``session/prompt {sessionId, prompt}``
    Runs the prompt language below on a worker thread (the agent keeps answering requests
    meanwhile) and answers ``{stopReason: "end_turn" | "cancelled", usage: {totalTokens,
    inputTokens, outputTokens}}`` where inputTokens is the number of words of the prompt text
    and outputTokens the number of ``agent_message_chunk`` notifications sent.  Unknown
    session: -32002; a second prompt while one runs on that session: -32602 "a prompt is
    already running".
``session/cancel {sessionId}`` (notification)
    Ends the running prompt promptly with stopReason ``cancelled``.  A pending
    ``session/request_permission`` stays answered by whatever the client sends (the spec
    says ``cancelled``); the agent waits at most 5 s for that answer.
Anything else
    Unknown requests (``_``-prefixed extension methods included) get -32601 "Method not
    found"; unknown notifications and responses to unknown ids are ignored; a line that is not
    JSON gets a -32700 parse error (id null) and one that is JSON but not a JSON-RPC message
    -32600; the agent carries on either way.  On stdin EOF it cancels what runs and exits 0;
    SIGTERM kills it at once (default handler).

Prompt language
===============
Non-text blocks are described first, in order, one ``agent_message_chunk`` each, ending
with a newline: ``image MIME N bytes`` (N = decoded base64 length; ``audio`` alike),
``link URI`` for a ``resource_link``, ``resource URI N chars`` for an embedded text resource
(``resource URI N bytes`` for a blob).  Then the text blocks are joined with a space,
stripped, and interpreted:

``plain text``         echoed word by word: chunks ``w1``, `` w2``, ... (a slash word that is
                       not a command below is plain text too)
``/chunks N``          N chunks ``c0``, `` c1`` ... `` c{N-1}``; cancellable
``/sleep MS``          after MS ms one chunk ``slept MS``; cancellable
``/slow MS``           silent for MS ms (requests are still answered), then ``slow MS``;
                       cancellable
``/hang``              stops reading stdin and answering anything, until killed
``/crash``             chunk ``crashing``, stderr ``stoker-echo: crashing on request``,
                       then exits with status 3 at once
``/exit CODE``         exits with status CODE without replying
``/pid``               chunk: the process id
``/tool``              ``tool_call`` (id ``tool-N``, title "echo tool", kind other, pending),
                       ``tool_call_update`` in_progress, ``tool_call_update`` completed with
                       text content "tool output", then chunk ``tool done``
``/write PATH TEXT``   ``fs/write_text_file`` (PATH made absolute against the session cwd);
                       chunk ``wrote ABSPATH`` or ``error: MESSAGE``
``/read PATH``         ``fs/read_text_file``; chunk: the content, or ``error: MESSAGE``
``/permission``        ``tool_call`` (kind edit, "echo wants permission", pending), then
                       ``session/request_permission`` with options allow (allow_once), always
                       (allow_always), reject (reject_once); chunk ``permission: OPTIONID`` or
                       ``permission: cancelled``; stopReason cancelled if the turn was
                       cancelled meanwhile
``/terminal CMD ARGS`` ``terminal/create`` (cwd = session cwd, outputByteLimit 65536; ARGS are
                       split shell-style), ``terminal/wait_for_exit``, ``terminal/output``,
                       ``terminal/release``; chunk: the output followed directly by
                       ``[exit N]`` or ``[signal S]``, or ``error: MESSAGE``.  On cancel the
                       agent stops waiting and releases the terminal.
``/remember WORDS``    adds WORDS to the session memory; chunk ``remembered WORDS``
``/recall``            chunk: the remembered items joined by spaces, or ``nothing remembered``
``/think TEXT``        ``agent_thought_chunk`` TEXT, then chunk ``thought``
``/plan``              ``plan`` with 2 entries (priority medium; in_progress, pending);
                       chunk ``planned``
``/commands``          ``available_commands_update`` with 2 commands; chunk ``commands sent``
``/title TEXT``        ``session_info_update`` {title, updatedAt}; chunk ``titled``
``/usage``             ``usage_update`` {used 1234, size 200000, cost 0.01 USD};
                       chunk ``usage sent``
``/mode MODEID``       as session/set_mode (``current_mode_update``); chunk ``mode MODEID``
``/unknown``           a ``session/update`` of unknown kind ``x_echo_future`` (``payload: 1``)
                       and a ``_echo/custom`` {sessionId, n: 1} notification;
                       chunk ``unknown sent``
``/stderr N``          N lines ``echo stderr line I`` (I = 0..N-1) on stderr; chunk ``stderr N``
``/bigline KB``        one chunk of KB*1024 ``x``
``/error``             the prompt fails with JSON-RPC error -32603 "echo: requested failure"
``/meta-usage``        an empty ``agent_message_chunk`` whose ``_meta.usage`` reports one call's
                       tokens (inputTokens 100, outputTokens 7, totalTokens 107,
                       cachedReadTokens 3), as qwen does; chunk ``metered``
``/ask METHOD``        sends a request METHOD (params ``{sessionId}``) to the client; chunk
                       ``error CODE: MESSAGE`` or ``result JSON``
``/spawn SECONDS``     starts ``sleep SECONDS`` in a new session (it leaves the agent's process
                       group, as tool processes of real agents do); chunk: its pid

A command whose argument is missing or malformed replies ``error: USAGE`` and ends the turn.
Every prompt's text and its reply (the concatenated chunks) are appended to the session
history and persisted before the prompt is answered.

Knobs (a flag wins over its environment variable)
==================================================
``--state-dir DIR`` (``STOKER_ECHO_STATE``)
    Where ``<sessionId>.json`` files {sessionId, cwd, memory, history, mode, config, title,
    updatedAt} live; written atomically (temp file + ``os.replace``) so sessions survive the
    agent's restarts and ``kill -9``.  Default ``$XDG_STATE_HOME/stoker-echo``, else
    ``~/.local/state/stoker-echo``.
``--no-load`` / ``--no-resume`` / ``--no-close``
    Do not advertise (and answer -32601 to) session/load, session/resume, session/close.
``--no-image``
    promptCapabilities.image and embeddedContext false.
``--require-auth`` / ``--no-require-auth`` (``STOKER_ECHO_REQUIRE_AUTH=1``)
    Advertise the ``echo-login`` auth method and require it before sessions.
``--fail-initialize`` / ``--no-fail-initialize`` (``STOKER_ECHO_FAIL_INIT=1``)
    On ``initialize``: one line on stderr, then exit status 4.
``--startup-delay MS`` (``STOKER_ECHO_STARTUP_DELAY_MS``)
    Sleep MS ms before reading stdin.
``--models-only``
    No ``configOptions``; instead the unstable ``models`` state (``currentModelId``,
    ``availableModels`` echo-1/echo-2) in session setup answers, and ``session/set_model``
    {sessionId, modelId} (for testing clients' fallback to it).
``--linger`` (``STOKER_ECHO_LINGER=1``)
    Ignore stdin EOF and keep running (until a signal), like agents that do not notice their
    client went away: the tests of orphan reclaim and process-tree stop need one.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import IO, Any, Final, NoReturn

__all__ = ["EchoAgent", "Options", "main", "parse_options"]

PROTOCOL_VERSION: Final = 1
AGENT_NAME: Final = "stoker-echo"
AGENT_VERSION: Final = "1"

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
AUTH_REQUIRED: Final = -32000
RESOURCE_NOT_FOUND: Final = -32002

AUTH_METHOD_ID: Final = "echo-login"
FLUSH_EVERY: Final = 256
OUTPUT_BYTE_LIMIT: Final = 65536
CANCEL_GRACE_S: Final = 5.0
EXIT_JOIN_S: Final = 2.0
MAX_MS: Final = 10**9

MODES: Final = (("default", "Default"), ("plan", "Plan"))
MODEL_VALUES: Final = (("echo-1", "Echo 1"), ("echo-2", "Echo 2"))
DEFAULT_CONFIG: Final[dict[str, str | bool]] = {"model": "echo-1", "verbose": False}

JsonObj = dict[str, Any]


class RpcError(Exception):
    """A JSON-RPC error to answer a request with."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> JsonObj:
        err: JsonObj = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class Options:
    """The agent's knobs (see the module docstring)."""

    def __init__(
        self,
        *,
        state_dir: str,
        load: bool = True,
        resume: bool = True,
        close: bool = True,
        image: bool = True,
        require_auth: bool = False,
        fail_initialize: bool = False,
        startup_delay_ms: int = 0,
        linger: bool = False,
        models_only: bool = False,
    ) -> None:
        self.linger = linger
        self.models_only = models_only
        self.state_dir = state_dir
        self.load = load
        self.resume = resume
        self.close = close
        self.image = image
        self.require_auth = require_auth
        self.fail_initialize = fail_initialize
        self.startup_delay_ms = startup_delay_ms


def _now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _json_bytes(obj: Any) -> bytes:
    """Compact JSON in UTF-8; lone surrogates fall back to ASCII escapes (still valid JSON)."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def _param_str(params: JsonObj, key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, f"{key} must be a string")
    return value


def _session_id_ok(session_id: str) -> bool:
    """Session ids name files: allow only what uuid4 and reasonable clients produce."""
    return (
        0 < len(session_id) <= 128
        and not session_id.startswith(".")
        and all(c.isascii() and (c.isalnum() or c in "-_.") for c in session_id)
    )


class Session:
    """One session's state; everything but ``turn`` is persisted."""

    def __init__(
        self,
        session_id: str,
        cwd: str,
        *,
        memory: list[str] | None = None,
        history: list[JsonObj] | None = None,
        mode: str = "default",
        config: dict[str, str | bool] | None = None,
        title: str | None = None,
        updated_at: str | None = None,
    ) -> None:
        self.session_id = session_id
        self.cwd = cwd
        self.memory: list[str] = memory if memory is not None else []
        self.history: list[JsonObj] = history if history is not None else []
        self.mode = mode
        self.config: dict[str, str | bool] = dict(DEFAULT_CONFIG)
        if config:
            self.config.update(config)
        self.title = title
        self.updated_at = updated_at or _now_iso()
        self.turn: Turn | None = None

    def to_json(self) -> JsonObj:
        return {
            "sessionId": self.session_id,
            "cwd": self.cwd,
            "memory": self.memory,
            "history": self.history,
            "mode": self.mode,
            "config": self.config,
            "title": self.title,
            "updatedAt": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> Session:
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        sid, cwd = data.get("sessionId"), data.get("cwd")
        if not isinstance(sid, str) or not isinstance(cwd, str):
            raise ValueError("sessionId and cwd must be strings")
        memory = [m for m in data.get("memory") or [] if isinstance(m, str)]
        history = [
            h
            for h in data.get("history") or []
            if isinstance(h, dict)
            and h.get("role") in ("user", "agent")
            and isinstance(h.get("text"), str)
        ]
        mode = data.get("mode")
        raw_config = data.get("config")
        config: dict[str, str | bool] = {}
        if isinstance(raw_config, dict):
            if raw_config.get("model") in {v for v, _ in MODEL_VALUES}:
                config["model"] = raw_config["model"]
            if isinstance(raw_config.get("verbose"), bool):
                config["verbose"] = raw_config["verbose"]
        title = data.get("title")
        updated = data.get("updatedAt")
        return cls(
            sid,
            cwd,
            memory=memory,
            history=history,
            mode=mode if mode in {m for m, _ in MODES} else "default",
            config=config,
            title=title if isinstance(title, str) else None,
            updated_at=updated if isinstance(updated, str) else None,
        )

    def modes_json(self) -> JsonObj:
        return {
            "currentModeId": self.mode,
            "availableModes": [{"id": mid, "name": name} for mid, name in MODES],
        }

    def config_json(self) -> list[JsonObj]:
        return [
            {
                "id": "model",
                "name": "Model",
                "category": "model",
                "type": "select",
                "currentValue": self.config["model"],
                "options": [{"value": v, "name": n} for v, n in MODEL_VALUES],
            },
            {
                "id": "verbose",
                "name": "Verbose",
                "type": "boolean",
                "currentValue": self.config["verbose"],
            },
        ]


class Turn:
    """One running ``session/prompt``."""

    def __init__(self, session: Session, request_id: Any) -> None:
        self.session = session
        self.request_id = request_id
        self.cancel = threading.Event()
        self.user_text = ""
        self.reply: list[str] = []
        self.chunks = 0
        # The constant head of this session's agent_message_chunk lines (fast path).
        self.chunk_head = (
            '{"jsonrpc":"2.0","method":"session/update","params":{"sessionId":'
            + json.dumps(session.session_id)
            + ',"update":{"sessionUpdate":"agent_message_chunk","content":{"type":"text","text":'
        ).encode("utf-8")


class _Pending:
    """A request this agent sent to the client, waiting for its response."""

    __slots__ = ("response",)

    def __init__(self) -> None:
        self.response: JsonObj | None = None


class _Usage(Exception):
    """A prompt command's argument is missing or malformed: replied as ``error: ...``."""


Handler = Callable[[Any, JsonObj], JsonObj | None]
Command = Callable[[Turn, str], None]


class EchoAgent:
    """The agent proper: :meth:`serve` reads requests until EOF."""

    def __init__(
        self, options: Options, stdin: IO[bytes], stdout: IO[bytes], stderr: IO[str]
    ) -> None:
        self.options = options
        self._in = stdin
        self._out = stdout
        self._err = stderr
        self._write_lock = threading.Lock()
        self._broken = False
        # Guards sessions, pending client requests, and turn cancellation (notify on change).
        self._cond = threading.Condition(threading.RLock())
        self._sessions: dict[str, Session] = {}
        self._pending: dict[int, _Pending] = {}
        self._next_id = 0
        self._tool_counter = 0
        self._eof = False
        self._hung = threading.Event()
        self._workers: set[threading.Thread] = set()
        self._authenticated = False
        self._can_read = False
        self._can_write = False
        self._can_terminal = False
        self._methods: dict[str, Handler] = {
            "initialize": self._initialize,
            "authenticate": self._authenticate,
            "session/new": self._session_new,
            "session/load": self._session_load,
            "session/resume": self._session_resume,
            "session/close": self._session_close,
            "session/list": self._session_list,
            "session/set_mode": self._session_set_mode,
            "session/set_config_option": self._session_set_config_option,
            "session/set_model": self._session_set_model,
            "session/prompt": self._session_prompt,
        }
        self._commands: dict[str, Command] = {
            "/chunks": self._cmd_chunks,
            "/sleep": self._cmd_sleep,
            "/slow": self._cmd_slow,
            "/hang": self._cmd_hang,
            "/crash": self._cmd_crash,
            "/exit": self._cmd_exit,
            "/pid": self._cmd_pid,
            "/tool": self._cmd_tool,
            "/write": self._cmd_write,
            "/read": self._cmd_read,
            "/permission": self._cmd_permission,
            "/terminal": self._cmd_terminal,
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
            "/spawn": self._cmd_spawn,
            "/ask": self._cmd_ask,
            "/meta-usage": self._cmd_meta_usage,
        }

    # ------------------------------------------------------------------ output

    def _write(self, data: bytes) -> None:
        with self._write_lock:
            if self._broken:
                return
            try:
                self._out.write(data)
                self._out.flush()
            except (OSError, ValueError):
                self._broken = True  # the client went away; stdin EOF follows

    def _send(self, message: JsonObj) -> None:
        self._write(_json_bytes(message) + b"\n")

    def _respond(self, request_id: Any, result: JsonObj) -> None:
        self._send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def _respond_error(self, request_id: Any, error: RpcError) -> None:
        self._send({"jsonrpc": "2.0", "id": request_id, "error": error.to_json()})

    def _notify(self, method: str, params: JsonObj) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    def _update(self, session_id: str, update: JsonObj) -> None:
        self._notify("session/update", {"sessionId": session_id, "update": update})

    def _chunk_line(self, turn: Turn, text: str) -> bytes:
        turn.reply.append(text)
        turn.chunks += 1
        return turn.chunk_head + _json_bytes(text) + b"}}}}\n"

    def _chunk(self, turn: Turn, text: str) -> None:
        """One ``agent_message_chunk``, written and flushed."""
        self._write(self._chunk_line(turn, text))

    def _stream(self, turn: Turn, texts: Iterable[str]) -> None:
        """Many chunks, flushed every FLUSH_EVERY; stops as soon as the turn is cancelled."""
        batch: list[bytes] = []
        for text in texts:
            if turn.cancel.is_set():
                break
            batch.append(self._chunk_line(turn, text))
            if len(batch) >= FLUSH_EVERY:
                self._write(b"".join(batch))
                batch.clear()
        if batch:
            self._write(b"".join(batch))

    def _log(self, text: str) -> None:
        try:
            self._err.write(f"stoker-echo: {text}\n")
            self._err.flush()
        except (OSError, ValueError):
            pass

    def _exit_now(self, code: int) -> NoReturn:
        """Exit at once, without cutting a line another thread is writing."""
        self._write_lock.acquire(timeout=EXIT_JOIN_S)
        try:
            self._out.flush()
        except (OSError, ValueError):
            pass
        try:
            self._err.flush()
        except (OSError, ValueError):
            pass
        os._exit(code)

    # ------------------------------------------------------------------- input

    def serve(self) -> int:
        """Read and dispatch messages until stdin EOF; returns the exit status."""
        if self.options.startup_delay_ms > 0:
            time.sleep(self.options.startup_delay_ms / 1000)
        while True:
            if self._hung.is_set():
                self._hang_forever()
            try:
                line = self._in.readline()
            except (OSError, ValueError):
                line = b""
            if self._hung.is_set():
                self._hang_forever()
            if not line:
                return self._shutdown()
            line = line.strip()
            if line:
                self._handle_line(line)

    def _hang_forever(self) -> NoReturn:
        while True:
            threading.Event().wait()

    def _shutdown(self) -> int:
        if self.options.linger:
            self._hang_forever()
        with self._cond:
            self._eof = True
            for session in self._sessions.values():
                if session.turn is not None:
                    session.turn.cancel.set()
            self._cond.notify_all()
            workers = list(self._workers)
        deadline = time.monotonic() + EXIT_JOIN_S
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        if any(w.is_alive() for w in workers):
            self._exit_now(0)
        return 0

    def _handle_line(self, line: bytes) -> None:
        try:
            message = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            self._respond_error(None, RpcError(PARSE_ERROR, f"Parse error: {exc}"))
            return
        if not isinstance(message, dict):
            self._respond_error(
                None, RpcError(INVALID_REQUEST, "Invalid Request: not a JSON object")
            )
            return
        request_id = message.get("id")
        if request_id is not None and not isinstance(request_id, (str, int)):
            self._respond_error(None, RpcError(INVALID_REQUEST, "Invalid Request: bad id"))
            return
        method = message.get("method")
        if method is None:
            if "id" in message and ("result" in message or "error" in message):
                self._handle_response(message)
            else:
                self._respond_error(
                    request_id, RpcError(INVALID_REQUEST, "Invalid Request: no method")
                )
            return
        if not isinstance(method, str):
            self._respond_error(
                request_id, RpcError(INVALID_REQUEST, "Invalid Request: method must be a string")
            )
            return
        params = message.get("params")
        if params is None:
            params = {}
        if "id" not in message:
            if method == "session/cancel" and isinstance(params, dict):
                self._cancel(params.get("sessionId"))
            return  # other notifications are ignored
        handler = self._methods.get(method)
        if handler is None:
            self._respond_error(
                request_id, RpcError(METHOD_NOT_FOUND, "Method not found", {"method": method})
            )
            return
        try:
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            result = handler(request_id, params)
        except RpcError as exc:
            self._respond_error(request_id, exc)
            return
        except Exception as exc:  # a bug: say so, keep serving
            self._log(f"{method} failed: {exc!r}")
            self._respond_error(request_id, RpcError(INTERNAL_ERROR, f"Internal error: {exc}"))
            return
        if result is not None:
            self._respond(request_id, result)

    def _handle_response(self, message: JsonObj) -> None:
        with self._cond:
            pending = self._pending.get(message["id"])
            if pending is not None:
                pending.response = message
                self._cond.notify_all()

    def _cancel(self, session_id: Any) -> None:
        with self._cond:
            session = self._sessions.get(session_id) if isinstance(session_id, str) else None
            if session is not None and session.turn is not None:
                session.turn.cancel.set()
                self._cond.notify_all()

    # ---------------------------------------------------------- client requests

    def _call(
        self, turn: Turn, method: str, params: JsonObj, *, stop_on_cancel: bool = False
    ) -> JsonObj | None:
        """Send a request to the client and wait for its response message.

        Returns None when there is no answer: stdin reached EOF, or the turn was cancelled and
        either ``stop_on_cancel`` is set or the client did not answer within CANCEL_GRACE_S.
        """
        with self._cond:
            request_id = self._next_id
            self._next_id += 1
            pending = _Pending()
            self._pending[request_id] = pending
        try:
            self._send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
            with self._cond:
                self._cond.wait_for(
                    lambda: pending.response is not None or self._eof or turn.cancel.is_set()
                )
                if pending.response is None and not self._eof and not stop_on_cancel:
                    self._cond.wait_for(
                        lambda: pending.response is not None or self._eof, CANCEL_GRACE_S
                    )
                return pending.response
        finally:
            with self._cond:
                self._pending.pop(request_id, None)

    @staticmethod
    def _error_text(response: JsonObj) -> str | None:
        """``None`` for a success response, else the client's error message."""
        if "error" not in response:
            return None
        error = response["error"]
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        return json.dumps(error)

    # --------------------------------------------------------------- handlers

    def _require_auth(self) -> None:
        if self.options.require_auth and not self._authenticated:
            raise RpcError(AUTH_REQUIRED, "Authentication required")

    def _initialize(self, _rid: Any, params: JsonObj) -> JsonObj:
        if self.options.fail_initialize:
            self._log("failing initialize as asked (--fail-initialize)")
            self._exit_now(4)
        caps = params.get("clientCapabilities")
        caps = caps if isinstance(caps, dict) else {}
        fs = caps.get("fs")
        fs = fs if isinstance(fs, dict) else {}
        self._can_read = fs.get("readTextFile") is True
        self._can_write = fs.get("writeTextFile") is True
        self._can_terminal = caps.get("terminal") is True
        session_caps: JsonObj = {"list": {}}
        if self.options.resume:
            session_caps["resume"] = {}
        if self.options.close:
            session_caps["close"] = {}
        auth_methods: list[JsonObj] = []
        if self.options.require_auth:
            auth_methods.append(
                {
                    "id": AUTH_METHOD_ID,
                    "name": "Echo login",
                    "description": "Pretend login: authenticate with this method id; "
                    "no credentials involved.",
                }
            )
        return {
            "protocolVersion": PROTOCOL_VERSION,
            "agentCapabilities": {
                "loadSession": self.options.load,
                "promptCapabilities": {
                    "image": self.options.image,
                    "audio": False,
                    "embeddedContext": self.options.image,
                },
                "mcpCapabilities": {"http": False, "sse": False},
                "sessionCapabilities": session_caps,
            },
            "authMethods": auth_methods,
            "agentInfo": {
                "name": AGENT_NAME,
                "title": "Stoker echo agent",
                "version": AGENT_VERSION,
            },
        }

    def _authenticate(self, _rid: Any, params: JsonObj) -> JsonObj:
        method_id = _param_str(params, "methodId")
        if self.options.require_auth:
            if method_id != AUTH_METHOD_ID:
                raise RpcError(INVALID_PARAMS, f"unknown auth method {method_id!r}")
            self._authenticated = True
        return {}

    def _cwd_param(self, params: JsonObj) -> str:
        cwd = _param_str(params, "cwd")
        if not os.path.isabs(cwd):
            raise RpcError(INVALID_PARAMS, "cwd must be an absolute path")
        return cwd

    def _session_new(self, _rid: Any, params: JsonObj) -> JsonObj:
        self._require_auth()
        cwd = self._cwd_param(params)
        session = Session(str(uuid.uuid4()), cwd)
        with self._cond:
            self._sessions[session.session_id] = session
            self._persist(session)
        if self.options.models_only:
            return {
                "sessionId": session.session_id,
                "modes": session.modes_json(),
                "models": self._models_json(session),
            }
        return {
            "sessionId": session.session_id,
            "modes": session.modes_json(),
            "configOptions": session.config_json(),
        }

    def _session_path(self, session_id: str) -> str:
        return os.path.join(self.options.state_dir, session_id + ".json")

    def _persist(self, session: Session) -> None:
        """Write the session file atomically.  Callers hold ``_cond``."""
        os.makedirs(self.options.state_dir, exist_ok=True)
        path = self._session_path(session.session_id)
        tmp = os.path.join(
            self.options.state_dir,
            f".{session.session_id}.{os.getpid()}.{threading.get_ident()}.tmp",
        )
        with open(tmp, "wb") as f:
            f.write(_json_bytes(session.to_json()))
        os.replace(tmp, path)

    def _reattach(self, params: JsonObj) -> Session:
        """The session of a load/resume request, from memory or from its file."""
        self._require_auth()
        session_id = _param_str(params, "sessionId")
        cwd = self._cwd_param(params)
        with self._cond:
            session = self._sessions.get(session_id)
            if session is None:
                session = self._read_session(session_id)
                self._sessions[session_id] = session
            if session.cwd != cwd:
                session.cwd = cwd
                self._persist(session)
            return session

    def _read_session(self, session_id: str) -> Session:
        not_found = RpcError(
            RESOURCE_NOT_FOUND,
            f"Resource not found: unknown session {session_id}",
            {"sessionId": session_id},
        )
        if not _session_id_ok(session_id):
            raise not_found
        try:
            with open(self._session_path(session_id), "rb") as f:
                data = json.loads(f.read())
        except FileNotFoundError:
            raise not_found from None
        except (OSError, ValueError) as exc:
            raise RpcError(INTERNAL_ERROR, f"session {session_id} is unreadable: {exc}") from exc
        try:
            session = Session.from_json(data)
        except ValueError as exc:
            raise RpcError(INTERNAL_ERROR, f"session {session_id} is unreadable: {exc}") from exc
        if session.session_id != session_id:
            raise not_found
        return session

    def _session_load(self, _rid: Any, params: JsonObj) -> JsonObj:
        if not self.options.load:
            raise RpcError(METHOD_NOT_FOUND, "Method not found", {"method": "session/load"})
        session = self._reattach(params)
        with self._cond:
            history = list(session.history)
        for entry in history:
            if entry["text"]:
                kind = "user_message_chunk" if entry["role"] == "user" else "agent_message_chunk"
                self._update(
                    session.session_id,
                    {"sessionUpdate": kind, "content": {"type": "text", "text": entry["text"]}},
                )
        return self._setup_json(session)

    def _session_resume(self, _rid: Any, params: JsonObj) -> JsonObj:
        if not self.options.resume:
            raise RpcError(METHOD_NOT_FOUND, "Method not found", {"method": "session/resume"})
        session = self._reattach(params)
        return self._setup_json(session)

    def _session(self, params: JsonObj) -> Session:
        """The active session named by ``params.sessionId``, else -32002."""
        session_id = _param_str(params, "sessionId")
        with self._cond:
            session = self._sessions.get(session_id)
        if session is None:
            raise RpcError(
                RESOURCE_NOT_FOUND,
                f"Resource not found: unknown session {session_id}",
                {"sessionId": session_id},
            )
        return session

    def _session_close(self, _rid: Any, params: JsonObj) -> JsonObj:
        if not self.options.close:
            raise RpcError(METHOD_NOT_FOUND, "Method not found", {"method": "session/close"})
        session = self._session(params)
        with self._cond:
            if session.turn is not None:
                session.turn.cancel.set()
                self._cond.notify_all()
            self._sessions.pop(session.session_id, None)
        return {}

    def _session_list(self, _rid: Any, params: JsonObj) -> JsonObj:
        cwd = params.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise RpcError(INVALID_PARAMS, "cwd must be a string")
        try:
            names = os.listdir(self.options.state_dir)
        except OSError:
            names = []
        infos: list[JsonObj] = []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                session = self._read_session(name[: -len(".json")])
            except RpcError:
                continue
            if cwd is not None and session.cwd != cwd:
                continue
            info: JsonObj = {"sessionId": session.session_id, "cwd": session.cwd}
            if session.title is not None:
                info["title"] = session.title
            info["updatedAt"] = session.updated_at
            infos.append(info)
        infos.sort(key=lambda i: (i["updatedAt"], i["sessionId"]), reverse=True)
        return {"sessions": infos}

    def _set_mode(self, session: Session, mode_id: str) -> None:
        if mode_id not in {m for m, _ in MODES}:
            raise RpcError(INVALID_PARAMS, f"unknown mode {mode_id!r}")
        with self._cond:
            session.mode = mode_id
            session.updated_at = _now_iso()
            self._persist(session)
        self._update(
            session.session_id, {"sessionUpdate": "current_mode_update", "currentModeId": mode_id}
        )

    def _session_set_mode(self, _rid: Any, params: JsonObj) -> JsonObj:
        session = self._session(params)
        self._set_mode(session, _param_str(params, "modeId"))
        return {}

    def _session_set_config_option(self, _rid: Any, params: JsonObj) -> JsonObj:
        session = self._session(params)
        config_id = _param_str(params, "configId")
        value = params.get("value")
        if config_id == "model":
            if params.get("type") == "boolean" or value not in {v for v, _ in MODEL_VALUES}:
                raise RpcError(INVALID_PARAMS, f"invalid value {value!r} for model")
        elif config_id == "verbose":
            if not isinstance(value, bool):
                raise RpcError(INVALID_PARAMS, f"verbose takes a boolean, not {value!r}")
        else:
            raise RpcError(INVALID_PARAMS, f"unknown config option {config_id!r}")
        with self._cond:
            session.config[config_id] = value
            session.updated_at = _now_iso()
            self._persist(session)
            options = session.config_json()
        self._update(
            session.session_id, {"sessionUpdate": "config_option_update", "configOptions": options}
        )
        return {"configOptions": options}

    def _session_prompt(self, request_id: Any, params: JsonObj) -> None:
        session = self._session(params)
        prompt = params.get("prompt")
        if not isinstance(prompt, list):
            raise RpcError(INVALID_PARAMS, "prompt must be an array of content blocks")
        with self._cond:
            if session.turn is not None:
                raise RpcError(INVALID_PARAMS, "a prompt is already running on this session")
            turn = Turn(session, request_id)
            session.turn = turn
            worker = threading.Thread(
                target=self._run_turn, args=(turn, prompt), name="echo-prompt", daemon=True
            )
            self._workers.add(worker)
        worker.start()

    # ------------------------------------------------------------ prompt turns

    def _run_turn(self, turn: Turn, prompt: list[Any]) -> None:
        error: RpcError | None = None
        try:
            self._execute(turn, prompt)
        except RpcError as exc:
            error = exc
        except Exception as exc:
            self._log(f"prompt failed: {exc!r}")
            error = RpcError(INTERNAL_ERROR, f"Internal error: {exc}")
        session = turn.session
        with self._cond:
            session.history.append({"role": "user", "text": turn.user_text})
            session.history.append({"role": "agent", "text": "".join(turn.reply)})
            session.updated_at = _now_iso()
            try:
                self._persist(session)
            except OSError as exc:
                self._log(f"cannot save session {session.session_id}: {exc}")
            session.turn = None
            self._workers.discard(threading.current_thread())
        if error is not None:
            self._respond_error(turn.request_id, error)
            return
        words = len(turn.user_text.split())
        self._respond(
            turn.request_id,
            {
                "stopReason": "cancelled" if turn.cancel.is_set() else "end_turn",
                "usage": {
                    "totalTokens": words + turn.chunks,
                    "inputTokens": words,
                    "outputTokens": turn.chunks,
                },
            },
        )

    def _execute(self, turn: Turn, prompt: list[Any]) -> None:
        texts: list[str] = []
        described: list[str] = []
        for block in prompt:
            if not isinstance(block, dict):
                raise RpcError(INVALID_PARAMS, "prompt items must be content blocks")
            kind = block.get("type")
            if kind == "text":
                texts.append(_param_str(block, "text"))
            elif kind in ("image", "audio"):
                mime = _param_str(block, "mimeType")
                try:
                    size = len(base64.b64decode(_param_str(block, "data"), validate=True))
                except (binascii.Error, ValueError):
                    raise RpcError(INVALID_PARAMS, f"{kind} data is not base64") from None
                described.append(f"{kind} {mime} {size} bytes\n")
            elif kind == "resource_link":
                described.append(f"link {_param_str(block, 'uri')}\n")
            elif kind == "resource":
                resource = block.get("resource")
                if not isinstance(resource, dict):
                    raise RpcError(INVALID_PARAMS, "resource must be an object")
                uri = _param_str(resource, "uri")
                if isinstance(resource.get("text"), str):
                    described.append(f"resource {uri} {len(resource['text'])} chars\n")
                else:
                    blob = _param_str(resource, "blob")
                    try:
                        size = len(base64.b64decode(blob, validate=True))
                    except (binascii.Error, ValueError):
                        raise RpcError(INVALID_PARAMS, "resource blob is not base64") from None
                    described.append(f"resource {uri} {size} bytes\n")
            else:
                raise RpcError(INVALID_PARAMS, f"unsupported content block type {kind!r}")
        text = " ".join(texts).strip()
        turn.user_text = text
        for line in described:
            self._chunk(turn, line)
        if not text:
            return
        command = self._commands.get(text.split(None, 1)[0]) if text.startswith("/") else None
        if command is None:
            words = text.split()
            self._stream(turn, (w if i == 0 else " " + w for i, w in enumerate(words)))
            return
        parts = text.split(None, 1)
        try:
            command(turn, parts[1].strip() if len(parts) > 1 else "")
        except _Usage as exc:
            self._chunk(turn, f"error: {exc}")

    @staticmethod
    def _int_arg(arg: str, usage: str, *, low: int = 0, high: int | None = None) -> int:
        try:
            value = int(arg)
        except ValueError:
            raise _Usage(usage) from None
        if value < low or (high is not None and value > high):
            raise _Usage(usage)
        return value

    def _cmd_chunks(self, turn: Turn, arg: str) -> None:
        count = self._int_arg(arg, "usage: /chunks N (N >= 0)")
        self._stream(turn, (f"c{i}" if i == 0 else f" c{i}" for i in range(count)))

    def _cmd_sleep(self, turn: Turn, arg: str) -> None:
        ms = self._int_arg(arg, "usage: /sleep MS (0 <= MS <= 10^9)", high=MAX_MS)
        if not turn.cancel.wait(ms / 1000):
            self._chunk(turn, f"slept {ms}")

    def _cmd_slow(self, turn: Turn, arg: str) -> None:
        ms = self._int_arg(arg, "usage: /slow MS (0 <= MS <= 10^9)", high=MAX_MS)
        # Silent, but the reader thread keeps answering requests meanwhile.
        if not turn.cancel.wait(ms / 1000):
            self._chunk(turn, f"slow {ms}")

    def _cmd_hang(self, turn: Turn, arg: str) -> None:
        self._hung.set()
        self._write_lock.acquire()  # never released: nothing is written any more
        self._hang_forever()

    def _cmd_crash(self, turn: Turn, arg: str) -> None:
        self._chunk(turn, "crashing")
        self._log("crashing on request")
        self._exit_now(3)

    def _cmd_exit(self, turn: Turn, arg: str) -> None:
        self._exit_now(self._int_arg(arg, "usage: /exit CODE (0..255)", high=255))

    def _cmd_pid(self, turn: Turn, arg: str) -> None:
        self._chunk(turn, str(os.getpid()))

    def _new_tool_call_id(self) -> str:
        with self._cond:
            self._tool_counter += 1
            return f"tool-{self._tool_counter}"

    def _cmd_tool(self, turn: Turn, arg: str) -> None:
        sid = turn.session.session_id
        tool_id = self._new_tool_call_id()
        self._update(
            sid,
            {
                "sessionUpdate": "tool_call",
                "toolCallId": tool_id,
                "title": "echo tool",
                "kind": "other",
                "status": "pending",
            },
        )
        self._update(
            sid,
            {"sessionUpdate": "tool_call_update", "toolCallId": tool_id, "status": "in_progress"},
        )
        self._update(
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
        self._chunk(turn, "tool done")

    def _abs_path(self, turn: Turn, path: str) -> str:
        return os.path.normpath(os.path.join(turn.session.cwd, os.path.expanduser(path)))

    def _no_answer(self, turn: Turn, what: str) -> None:
        if not turn.cancel.is_set():
            self._chunk(turn, f"error: no answer from the client to {what}")

    def _ask_client(self, turn: Turn, method: str, params: JsonObj, *,
                    stop_on_cancel: bool = False) -> tuple[bool, Any]:
        """(True, the result) of a request to the client; (False, None) once its failure (no
        answer, or an error answer) has been told to the turn as an ``error: ...`` chunk."""
        response = self._call(turn, method, params, stop_on_cancel=stop_on_cancel)
        if response is None:
            self._no_answer(turn, method)
            return False, None
        error = self._error_text(response)
        if error is not None:
            self._chunk(turn, f"error: {error}")
            return False, None
        return True, response.get("result")

    def _cmd_write(self, turn: Turn, arg: str) -> None:
        if not self._can_write:
            self._chunk(turn, "error: the client did not advertise fs.writeTextFile")
            return
        parts = arg.split(None, 1)
        if not parts:
            raise _Usage("usage: /write PATH TEXT")
        path = self._abs_path(turn, parts[0])
        ok, _ = self._ask_client(turn, "fs/write_text_file", {
            "sessionId": turn.session.session_id,
            "path": path,
            "content": parts[1] if len(parts) > 1 else "",
        })
        if ok:
            self._chunk(turn, f"wrote {path}")

    def _cmd_read(self, turn: Turn, arg: str) -> None:
        if not self._can_read:
            self._chunk(turn, "error: the client did not advertise fs.readTextFile")
            return
        if not arg:
            raise _Usage("usage: /read PATH")
        ok, result = self._ask_client(
            turn, "fs/read_text_file",
            {"sessionId": turn.session.session_id, "path": self._abs_path(turn, arg)})
        if not ok:
            return
        content = result.get("content") if isinstance(result, dict) else None
        if not isinstance(content, str):
            self._chunk(turn, "error: fs/read_text_file answered without content")
            return
        self._chunk(turn, content)

    def _cmd_permission(self, turn: Turn, arg: str) -> None:
        sid = turn.session.session_id
        tool_call: JsonObj = {
            "toolCallId": self._new_tool_call_id(),
            "title": "echo wants permission",
            "kind": "edit",
            "status": "pending",
        }
        self._update(sid, {"sessionUpdate": "tool_call", **tool_call})
        response = self._call(
            turn,
            "session/request_permission",
            {
                "sessionId": sid,
                "toolCall": tool_call,
                "options": [
                    {"optionId": "allow", "name": "Allow", "kind": "allow_once"},
                    {"optionId": "always", "name": "Always allow", "kind": "allow_always"},
                    {"optionId": "reject", "name": "Reject", "kind": "reject_once"},
                ],
            },
        )
        if response is None:
            if turn.cancel.is_set():
                self._chunk(turn, "permission: cancelled")
            else:
                self._no_answer(turn, "session/request_permission")
            return
        error = self._error_text(response)
        if error is not None:
            self._chunk(turn, f"error: {error}")
            return
        result = response.get("result")
        outcome = result.get("outcome") if isinstance(result, dict) else None
        if isinstance(outcome, dict) and outcome.get("outcome") == "selected":
            self._chunk(turn, f"permission: {outcome.get('optionId')}")
        elif isinstance(outcome, dict) and outcome.get("outcome") == "cancelled":
            self._chunk(turn, "permission: cancelled")
        else:
            self._chunk(turn, f"error: unexpected permission outcome {json.dumps(outcome)}")

    def _cmd_terminal(self, turn: Turn, arg: str) -> None:
        if not self._can_terminal:
            self._chunk(turn, "error: the client did not advertise terminal")
            return
        import shlex

        try:
            argv = shlex.split(arg)
        except ValueError:
            argv = arg.split()
        if not argv:
            raise _Usage("usage: /terminal CMD ARGS...")
        sid = turn.session.session_id
        ok, result = self._ask_client(turn, "terminal/create", {
            "sessionId": sid,
            "command": argv[0],
            "args": argv[1:],
            "cwd": turn.session.cwd,
            "outputByteLimit": OUTPUT_BYTE_LIMIT,
        })
        if not ok:
            return
        terminal_id = result.get("terminalId") if isinstance(result, dict) else None
        if not isinstance(terminal_id, str):
            self._chunk(turn, "error: terminal/create answered without terminalId")
            return
        ids = {"sessionId": sid, "terminalId": terminal_id}
        try:
            ok, exit_status = self._ask_client(turn, "terminal/wait_for_exit", ids,
                                               stop_on_cancel=True)
            if not ok:
                return
            ok, out_result = self._ask_client(turn, "terminal/output", ids)
            if not ok:
                return
            text = out_result.get("output") if isinstance(out_result, dict) else None
            exit_status = exit_status if isinstance(exit_status, dict) else {}
            if isinstance(exit_status.get("exitCode"), int):
                status = f"[exit {exit_status['exitCode']}]"
            elif exit_status.get("signal") is not None:
                status = f"[signal {exit_status['signal']}]"
            else:
                status = "[exit unknown]"
            self._chunk(turn, (text if isinstance(text, str) else "") + status)
        finally:
            if not self._eof:
                self._call(turn, "terminal/release", ids)

    def _cmd_remember(self, turn: Turn, arg: str) -> None:
        if not arg:
            raise _Usage("usage: /remember WORD")
        with self._cond:
            turn.session.memory.append(arg)
        self._chunk(turn, f"remembered {arg}")

    def _cmd_recall(self, turn: Turn, arg: str) -> None:
        with self._cond:
            memory = list(turn.session.memory)
        self._chunk(turn, " ".join(memory) if memory else "nothing remembered")

    def _cmd_think(self, turn: Turn, arg: str) -> None:
        self._update(
            turn.session.session_id,
            {"sessionUpdate": "agent_thought_chunk", "content": {"type": "text", "text": arg}},
        )
        self._chunk(turn, "thought")

    def _cmd_plan(self, turn: Turn, arg: str) -> None:
        self._update(
            turn.session.session_id,
            {
                "sessionUpdate": "plan",
                "entries": [
                    {"content": "Read the prompt", "priority": "medium", "status": "in_progress"},
                    {"content": "Echo the answer", "priority": "medium", "status": "pending"},
                ],
            },
        )
        self._chunk(turn, "planned")

    def _cmd_commands(self, turn: Turn, arg: str) -> None:
        self._update(
            turn.session.session_id,
            {
                "sessionUpdate": "available_commands_update",
                "availableCommands": [
                    {"name": "chunks", "description": "Stream N numbered chunks"},
                    {"name": "sleep", "description": "Wait MS milliseconds, then answer"},
                ],
            },
        )
        self._chunk(turn, "commands sent")

    def _cmd_title(self, turn: Turn, arg: str) -> None:
        if not arg:
            raise _Usage("usage: /title TEXT")
        with self._cond:
            turn.session.title = arg
            turn.session.updated_at = updated = _now_iso()
        self._update(
            turn.session.session_id,
            {"sessionUpdate": "session_info_update", "title": arg, "updatedAt": updated},
        )
        self._chunk(turn, "titled")

    def _cmd_usage(self, turn: Turn, arg: str) -> None:
        self._update(
            turn.session.session_id,
            {
                "sessionUpdate": "usage_update",
                "used": 1234,
                "size": 200000,
                "cost": {"amount": 0.01, "currency": "USD"},
            },
        )
        self._chunk(turn, "usage sent")

    def _cmd_mode(self, turn: Turn, arg: str) -> None:
        if not arg:
            raise _Usage("usage: /mode MODEID")
        try:
            self._set_mode(turn.session, arg)
        except RpcError as exc:
            raise _Usage(exc.message) from None
        self._chunk(turn, f"mode {arg}")

    def _cmd_unknown(self, turn: Turn, arg: str) -> None:
        sid = turn.session.session_id
        self._update(sid, {"sessionUpdate": "x_echo_future", "payload": 1})
        self._notify("_echo/custom", {"sessionId": sid, "n": 1})
        self._chunk(turn, "unknown sent")

    def _cmd_stderr(self, turn: Turn, arg: str) -> None:
        count = self._int_arg(arg, "usage: /stderr N (N >= 0)")
        try:
            self._err.write("".join(f"echo stderr line {i}\n" for i in range(count)))
            self._err.flush()
        except (OSError, ValueError):
            pass
        self._chunk(turn, f"stderr {count}")

    def _cmd_bigline(self, turn: Turn, arg: str) -> None:
        kb = self._int_arg(arg, "usage: /bigline KB (0 <= KB <= 1048576)", high=1 << 20)
        self._chunk(turn, "x" * (kb * 1024))

    def _cmd_error(self, turn: Turn, arg: str) -> None:
        raise RpcError(INTERNAL_ERROR, "echo: requested failure")

    def _cmd_meta_usage(self, turn: Turn, arg: str) -> None:
        usage = {"inputTokens": 100, "outputTokens": 7, "totalTokens": 107,
                 "thoughtTokens": 0, "cachedReadTokens": 3}
        self._update(turn.session.session_id, {
            "sessionUpdate": "agent_message_chunk", "content": {"type": "text", "text": ""},
            "_meta": {"usage": usage, "durationMs": 5}})
        self._chunk(turn, "metered")

    def _cmd_ask(self, turn: Turn, arg: str) -> None:
        if not arg:
            raise _Usage("usage: /ask METHOD")
        response = self._call(turn, arg.split()[0], {"sessionId": turn.session.session_id})
        if response is None:
            self._no_answer(turn, arg)
            return
        error = response.get("error")
        if isinstance(error, dict):
            self._chunk(turn, f"error {error.get('code')}: {error.get('message')}")
        else:
            self._chunk(turn, f"result {json.dumps(response.get('result'))}")

    def _session_set_model(self, _rid: Any, params: JsonObj) -> JsonObj:
        if not self.options.models_only:
            raise RpcError(METHOD_NOT_FOUND, "Method not found: session/set_model")
        session = self._session(params)
        model = _param_str(params, "modelId")
        if model not in {value for value, _ in MODEL_VALUES}:
            raise RpcError(INVALID_PARAMS, f"unknown model {model!r}")
        with self._cond:
            session.config["model"] = model
            self._persist(session)
        return {}

    def _setup_json(self, session: Session) -> JsonObj:
        """Modes plus configOptions (or, with --models-only, the unstable models state)."""
        if self.options.models_only:
            return {"modes": session.modes_json(), "models": self._models_json(session)}
        return {"modes": session.modes_json(), "configOptions": session.config_json()}

    def _models_json(self, session: Session) -> JsonObj:
        return {
            "currentModelId": session.config.get("model", "echo-1"),
            "availableModels": [{"modelId": v, "name": n} for v, n in MODEL_VALUES],
        }

    def _cmd_spawn(self, turn: Turn, arg: str) -> None:
        import subprocess

        seconds = self._int_arg(arg, "usage: /spawn SECONDS", low=1, high=86400)
        child = subprocess.Popen(
            ["sleep", str(seconds)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)
        self._chunk(turn, str(child.pid))


# ------------------------------------------------------------------------- CLI


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _default_state_dir() -> str:
    xdg = os.environ.get("XDG_STATE_HOME", "")
    base = xdg if os.path.isabs(xdg) else os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "stoker-echo")


def parse_options(argv: list[str] | None = None) -> Options:
    """Command-line flags, falling back to the environment variables, then defaults."""
    parser = argparse.ArgumentParser(
        prog="stoker echo-agent",
        description="Stoker's reference ACP agent (JSON-RPC on stdin/stdout). "
        "See the daemon.echo_agent module docstring for the prompt language.",
    )
    parser.add_argument("--state-dir", help="session files directory (env STOKER_ECHO_STATE)")
    parser.add_argument("--no-load", action="store_true", help="do not support session/load")
    parser.add_argument("--no-resume", action="store_true", help="do not support session/resume")
    parser.add_argument("--no-close", action="store_true", help="do not support session/close")
    parser.add_argument("--no-image", action="store_true", help="no image/embedded context")
    parser.add_argument(
        "--require-auth",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="require authenticate(echo-login) first (env STOKER_ECHO_REQUIRE_AUTH=1)",
    )
    parser.add_argument(
        "--fail-initialize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="exit 4 on initialize (env STOKER_ECHO_FAIL_INIT=1)",
    )
    parser.add_argument("--models-only", action="store_true",
                        help="models state + session/set_model instead of configOptions")
    parser.add_argument(
        "--linger",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep running after stdin EOF (env STOKER_ECHO_LINGER=1)",
    )
    parser.add_argument(
        "--startup-delay",
        metavar="MS",
        type=int,
        default=None,
        help="sleep MS ms before reading stdin (env STOKER_ECHO_STARTUP_DELAY_MS)",
    )
    args = parser.parse_args(argv)
    delay: int | None = args.startup_delay
    if delay is None:
        raw = os.environ.get("STOKER_ECHO_STARTUP_DELAY_MS", "").strip()
        try:
            delay = int(raw) if raw else 0
        except ValueError:
            parser.error(f"STOKER_ECHO_STARTUP_DELAY_MS must be an integer, not {raw!r}")
    if delay < 0:
        parser.error("the startup delay must be >= 0")
    require_auth: bool | None = args.require_auth
    fail_initialize: bool | None = args.fail_initialize
    return Options(
        state_dir=args.state_dir or os.environ.get("STOKER_ECHO_STATE") or _default_state_dir(),
        load=not args.no_load,
        resume=not args.no_resume,
        close=not args.no_close,
        image=not args.no_image,
        require_auth=(
            require_auth if require_auth is not None else _env_flag("STOKER_ECHO_REQUIRE_AUTH")
        ),
        fail_initialize=(
            fail_initialize if fail_initialize is not None else _env_flag("STOKER_ECHO_FAIL_INIT")
        ),
        startup_delay_ms=delay,
        linger=args.linger if args.linger is not None else _env_flag("STOKER_ECHO_LINGER"),
        models_only=args.models_only,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the echo agent on this process's stdin/stdout; returns the exit status."""
    options = parse_options(argv)
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except ValueError:  # not the main thread: leave signals alone
        pass
    agent = EchoAgent(options, sys.stdin.buffer, sys.stdout.buffer, sys.stderr)
    try:
        return agent.serve()
    except KeyboardInterrupt:
        return 130
