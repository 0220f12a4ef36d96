"""A scripted OpenAI-compatible chat server on loopback, for driving real agents offline.

`FakeLLM` serves `POST /v1/chat/completions` (streaming SSE when the request says
`"stream": true`, one JSON body otherwise) and `GET /v1/models` on 127.0.0.1 with an
ephemeral port, from a thread, so a test can point an agent's `OPENAI_BASE_URL` at it.

Replies come from a script: a FIFO of `Reply` objects (`Text`, `ToolCall`, or a `Dynamic`
that builds one from the request, e.g. to call whichever write tool the agent offers), used
by *main* requests only; anything else gets the default text. Agents also make side calls
(title generation, "next speaker" checks, compression): `FakeLLM.is_main` decides what counts
as a turn request. Every request body is recorded (`requests`), so tests can assert on what
the agent sent, e.g. that a resumed session still carries the earlier user message.

It is deliberately plain: `http.server` with HTTP/1.1 keep-alive and chunked transfer
encoding (node's fetch keeps connections open), each handler on its own daemon thread, every
open connection tracked so `close()` can cut them and return promptly.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class Text:
    """An assistant text reply, streamed in `chunks` pieces (roughly equal).

    With `hold`, only the first piece is sent at once: the rest waits until the event is set
    (or `hold_timeout` passed), so a turn stays open, streaming, for as long as a test or a
    benchmark needs (e.g. to `kill -9` the agent in the middle of it)."""

    text: str
    chunks: int = 3
    hold: threading.Event | None = field(default=None, compare=False)
    hold_timeout: float = 120.0


@dataclass(frozen=True)
class ToolCall:
    """An assistant reply that calls one function tool with JSON arguments."""

    name: str
    arguments: JSON
    call_id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:12]}")


@dataclass(frozen=True)
class Dynamic:
    """A reply decided from the request body (the agent's `tools`, its `messages`)."""

    build: Callable[[JSON], Text | ToolCall]


Reply = Text | ToolCall | Dynamic


@dataclass(frozen=True)
class Request:
    """One recorded request: its path, its body, whether it was a main (scripted) request,
    and what was answered."""

    path: str
    body: JSON
    main: bool
    reply: Text | ToolCall | None
    at: float


def default_is_main(body: JSON) -> bool:
    """A turn request offers tools; side calls (titles, classifiers) do not."""
    return bool(body.get("tools"))


class FakeLLM:
    """The server. Use as a context manager or call `start()`/`close()`."""

    def __init__(self, *, default: str = "OK.", model: str = "fake-model",
                 is_main: Callable[[JSON], bool] = default_is_main) -> None:
        self.default = default
        self.model = model
        self.is_main = is_main
        self.requests: list[Request] = []
        self.errors: list[str] = []
        self._script: list[Reply] = []
        self._cond = threading.Condition()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeLLM:
        owner = self

        class Handler(_Handler):
            llm = owner

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={
            "poll_interval": 0.05}, name="fake-llm", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop accepting, cut open keep-alive connections, join the serving thread."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        with self._cond:
            open_now = list(self._connections)
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> FakeLLM:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ script

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next main requests, in order."""
        with self._cond:
            self._script.extend(replies)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._script)

    def main_requests(self) -> list[Request]:
        with self._cond:
            return [r for r in self.requests if r.main]

    def wait_for(self, predicate: Callable[[list[Request]], bool],
                 timeout: float = 30.0) -> list[Request]:
        """Block (a thread) until `predicate(requests)` holds; the requests on success."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.requests):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"fake LLM: condition not met in {timeout}s "
                                       f"({len(self.requests)} requests)")
                self._cond.wait(left)
            return list(self.requests)

    # ------------------------------------------------------------------ serving

    def _next_reply(self, path: str, body: JSON) -> Text | ToolCall:
        main = self.is_main(body)
        reply: Text | ToolCall
        with self._cond:
            scripted = self._script.pop(0) if main and self._script else None
        if isinstance(scripted, Dynamic):
            try:
                reply = scripted.build(body)
            except Exception as exc:  # a broken script must show up, not hang the agent
                self.errors.append(f"Dynamic reply failed: {exc!r}")
                reply = Text(f"fake LLM script error: {exc!r}")
        elif scripted is not None:
            reply = scripted
        else:
            reply = Text(self.default)
        with self._cond:
            self.requests.append(Request(path, body, main, reply, time.monotonic()))
            self._cond.notify_all()
        return reply

    def _record_other(self, path: str, body: JSON) -> None:
        with self._cond:
            self.requests.append(Request(path, body, False, None, time.monotonic()))
            self._cond.notify_all()

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._cond:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)


def _split(text: str, parts: int) -> list[str]:
    if not text:
        return [""]
    parts = max(1, min(parts, len(text)))
    size = -(-len(text) // parts)
    return [text[i:i + size] for i in range(0, len(text), size)]


def _usage(body: JSON, reply: Text | ToolCall) -> JSON:
    prompt = len(json.dumps(body.get("messages", []))) // 4
    completion = len(reply.text if isinstance(reply, Text) else json.dumps(reply.arguments)) // 4
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def stream_events(body: JSON, reply: Text | ToolCall, model: str) -> Iterator[JSON]:
    """The SSE `data:` payloads of one streamed completion."""
    base: JSON = {"id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion.chunk",
                  "created": int(time.time()), "model": model}

    def chunk(delta: JSON, finish: str | None = None) -> JSON:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                     "logprobs": None}]}

    yield chunk({"role": "assistant", "content": ""})
    if isinstance(reply, Text):
        for piece in _split(reply.text, reply.chunks):
            yield chunk({"content": piece})
        finish = "stop"
    else:
        arguments = json.dumps(reply.arguments)
        half = len(arguments) // 2
        yield chunk({"tool_calls": [{"index": 0, "id": reply.call_id, "type": "function",
                                     "function": {"name": reply.name,
                                                  "arguments": arguments[:half]}}]})
        yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]})
        finish = "tool_calls"
    yield chunk({}, finish)
    if (body.get("stream_options") or {}).get("include_usage"):
        yield {**base, "choices": [], "usage": _usage(body, reply)}


def completion(body: JSON, reply: Text | ToolCall, model: str) -> JSON:
    """One non-streamed completion."""
    message: JSON = {"role": "assistant", "content": None}
    if isinstance(reply, Text):
        message["content"] = reply.text
        finish = "stop"
    else:
        message["tool_calls"] = [{"id": reply.call_id, "type": "function",
                                  "function": {"name": reply.name,
                                               "arguments": json.dumps(reply.arguments)}}]
        finish = "tool_calls"
    return {"id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish,
                         "logprobs": None}],
            "usage": _usage(body, reply)}


class _Handler(BaseHTTPRequestHandler):
    llm: FakeLLM
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is dropped after this

    def setup(self) -> None:
        super().setup()
        self.llm._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.llm._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest output is for failures."""

    def _send_json(self, status: int, payload: JSON) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _read_body(self) -> JSON | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = self._read_chunked()
        else:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return None
        return body if isinstance(body, dict) else None

    def _read_chunked(self) -> bytes:
        out = b""
        while True:
            size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.rfile.readline()
                return out
            out += self.rfile.read(size)
            self.rfile.readline()

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path.endswith("/models"):
            self.llm._record_other(path, {})
            self._send_json(200, {"object": "list", "data": [
                {"id": self.llm.model, "object": "model", "created": 0, "owned_by": "fake"}]})
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}",
                                            "type": "not_found"}})

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        body = self._read_body()
        if body is None:
            self._send_json(400, {"error": {"message": "body is not a JSON object",
                                            "type": "invalid_request_error"}})
            return
        if not path.endswith("/chat/completions"):
            self.llm._record_other(path, body)
            self._send_json(404, {"error": {"message": f"no route {self.path}",
                                            "type": "not_found"}})
            return
        reply = self.llm._next_reply(path, body)
        if not body.get("stream"):
            if isinstance(reply, Text) and reply.hold is not None:
                reply.hold.wait(reply.hold_timeout)
            self._send_json(200, completion(body, reply, self.llm.model))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for index, event in enumerate(stream_events(body, reply, self.llm.model)):
                self._chunk(f"data: {json.dumps(event)}\n\n".encode())
                if index == 1 and isinstance(reply, Text) and reply.hold is not None:
                    reply.hold.wait(reply.hold_timeout)  # the first piece is out
            self._chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()
