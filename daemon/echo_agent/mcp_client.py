"""A small MCP client (standard library only): the echo agent calls the tools of an MCP
server it was given in ``mcpServers``, so that tests drive delegation through Stoker's MCP
server without a model. Two transports, one interface (``call``):

* **stdio** (``McpServer``): started on first use. Newline-delimited JSON-RPC 2.0:
  ``initialize``, the ``notifications/initialized`` notification, then ``tools/call``
  requests. A reader thread queues what the server writes, so a waiting call also sees its
  turn's cancel (then it sends ``notifications/cancelled``). The server runs in the agent's
  process group and reads EOF when the agent dies, so it never outlives the agent.
* **Streamable HTTP** (``HttpMcpServer``, an entry ``{type: "http", url, headers}``): each
  message is a POST of its own (``http.client``) with the entry's headers; the answer is
  either one JSON object or a Server-Sent Events stream carrying it, both handled. The
  ``Mcp-Session-Id`` the server may assign is sent back. A cancel closes the connection of
  the waiting call (the server then stops it).
"""

from __future__ import annotations

import abc
import http.client
import json
import os
import queue
import socket
import subprocess
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any, Protocol

from daemon.echo_agent.jsonrpc import JsonObj

PROTOCOL_VERSION = "2025-06-18"
START_TIMEOUT = 60.0
"""Seconds for the server to answer ``initialize`` (an SDK server imports a lot)."""


class McpError(Exception):
    """The server could not be started or broke the protocol."""


class McpClient(Protocol):
    name: str

    def open(self, cancel: threading.Event) -> None: ...

    def call(self, tool: str, arguments: JsonObj, cancel: threading.Event
             ) -> tuple[bool, str]: ...


def open_server(spec: JsonObj, cwd: str) -> McpClient:
    """The client of one ``mcpServers`` entry (nothing is started or connected yet)."""
    if spec.get("type") == "http":
        return HttpMcpServer(spec)
    return McpServer(spec, cwd)


def _tool_text(result: JsonObj) -> tuple[bool, str]:
    texts = [c.get("text", "") for c in result.get("content") or []
             if isinstance(c, dict) and c.get("type") == "text"]
    return bool(result.get("isError")), "".join(texts)


class _Server(abc.ABC):
    """What both transports share: one call at a time, the server opened (started, or its
    session initialized) on the first."""

    name: str
    _lock: threading.Lock

    def call(self, tool: str, arguments: JsonObj, cancel: threading.Event) -> tuple[bool, str]:
        """Call `tool`; (is_error, the text of its content). Cancel: (True, "cancelled")."""
        with self._lock:
            if not self._opened():
                self._open(cancel)
            result = self._request("tools/call", {"name": tool, "arguments": arguments},
                                   cancel, None)
        if result is None:
            return True, "cancelled"
        return _tool_text(result)

    def open(self, cancel: threading.Event) -> None:
        """Start (stdio) or initialize (HTTP) the server now, if it is not yet."""
        with self._lock:
            if not self._opened():
                self._open(cancel)

    @abc.abstractmethod
    def _opened(self) -> bool: ...

    @abc.abstractmethod
    def _open(self, cancel: threading.Event) -> None: ...

    @abc.abstractmethod
    def _request(self, method: str, params: JsonObj, cancel: threading.Event,
                 timeout: float | None) -> Any:
        """The result of one request (None if cancelled first)."""


class McpServer(_Server):
    """One stdio MCP server: started on the first call, one call at a time."""

    def __init__(self, spec: JsonObj, cwd: str) -> None:
        command = spec.get("command")
        if not isinstance(command, str) or not command:
            raise McpError(f"MCP server {spec.get('name')!r} has no stdio command")
        args = spec.get("args") or []
        env = dict(os.environ)
        for entry in spec.get("env") or []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str):
                env[entry["name"]] = str(entry.get("value", ""))
        self.name = str(spec.get("name", ""))
        self._argv = [command, *(str(a) for a in args)]
        self._env = env
        self._cwd = cwd
        self._proc: subprocess.Popen[bytes] | None = None
        self._inbox: queue.Queue[JsonObj | None] = queue.Queue()
        self._lock = threading.Lock()
        self._next_id = 0

    def _opened(self) -> bool:
        return self._proc is not None

    def _open(self, cancel: threading.Event) -> None:
        self._start(cancel)

    def _start(self, cancel: threading.Event) -> None:
        try:
            self._proc = subprocess.Popen(
                self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, env=self._env, cwd=self._cwd)
        except OSError as exc:
            raise McpError(f"cannot start MCP server {self.name!r}: {exc}") from None
        threading.Thread(target=self._read, args=(self._proc,), daemon=True).start()
        answer = self._request("initialize", {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "stoker-echo", "version": "1"}}, cancel, START_TIMEOUT)
        if answer is None:
            raise McpError("cancelled while the MCP server started")
        self._send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                self._inbox.put(message)
        self._inbox.put(None)

    def _send(self, message: JsonObj) -> None:
        stdin = self._proc.stdin if self._proc is not None else None
        if stdin is None:
            raise McpError(f"MCP server {self.name!r} is not running")
        try:
            stdin.write(json.dumps(message).encode() + b"\n")
            stdin.flush()
        except OSError as exc:
            raise McpError(f"MCP server {self.name!r} is gone: {exc}") from None

    def _request(self, method: str, params: JsonObj, cancel: threading.Event,
                 timeout: float | None) -> Any:
        """The result of one request (None if cancelled first)."""
        self._next_id += 1
        rid = self._next_id
        self._send({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
        waited = 0.0
        while True:
            if cancel.is_set():
                self._send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                            "params": {"requestId": rid, "reason": "turn cancelled"}})
                return None
            try:
                message = self._inbox.get(timeout=0.05)
            except queue.Empty:
                waited += 0.05
                if timeout is not None and waited > timeout:
                    raise McpError(f"MCP server {self.name!r} did not answer {method}"
                                   ) from None
                continue
            if message is None:
                self._proc = None
                raise McpError(f"MCP server {self.name!r} exited")
            if "method" in message:
                if "id" in message:  # a request from the server: we offer none
                    self._send({"jsonrpc": "2.0", "id": message["id"], "error": {
                        "code": -32601, "message": "Method not found"}})
                continue
            if message.get("id") != rid:
                continue
            if "error" in message:
                error = message["error"]
                text = error.get("message") if isinstance(error, dict) else error
                raise McpError(f"{method} failed: {text}")
            return message.get("result") or {}


class HttpMcpServer(_Server):
    """One Streamable HTTP MCP server: initialized on the first call, one call at a time."""

    def __init__(self, spec: JsonObj) -> None:
        url = spec.get("url")
        parsed = urllib.parse.urlsplit(url if isinstance(url, str) else "")
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise McpError(f"MCP server {spec.get('name')!r} has no http(s) url")
        self.name = str(spec.get("name", ""))
        self._https = parsed.scheme == "https"
        self._host = parsed.hostname
        self._port = parsed.port
        self._path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        self._headers = {str(h["name"]): str(h.get("value", ""))
                         for h in spec.get("headers") or []
                         if isinstance(h, dict) and isinstance(h.get("name"), str)}
        self._session: str | None = None
        self._protocol: str | None = None
        self._lock = threading.Lock()
        self._next_id = 0

    def _opened(self) -> bool:
        return self._protocol is not None

    def _open(self, cancel: threading.Event) -> None:
        self._initialize(cancel)

    def _initialize(self, cancel: threading.Event) -> None:
        answer = self._request("initialize", {
            "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
            "clientInfo": {"name": "stoker-echo", "version": "1"}}, cancel, START_TIMEOUT)
        if answer is None:
            raise McpError("cancelled while initializing the MCP server")
        self._protocol = str(answer.get("protocolVersion") or PROTOCOL_VERSION)
        self._post({"jsonrpc": "2.0", "method": "notifications/initialized"}, None, cancel,
                   START_TIMEOUT)

    def _request(self, method: str, params: JsonObj, cancel: threading.Event,
                 timeout: float | None) -> Any:
        """The result of one request (None if cancelled first)."""
        self._next_id += 1
        return self._post({"jsonrpc": "2.0", "id": self._next_id, "method": method,
                           "params": params}, self._next_id, cancel, timeout)

    def _post(self, message: JsonObj, rid: int | None, cancel: threading.Event,
              timeout: float | None) -> Any:
        """POST one message in a thread while this one watches `cancel` and the time."""
        conn: http.client.HTTPConnection = (
            http.client.HTTPSConnection(self._host, self._port) if self._https
            else http.client.HTTPConnection(self._host, self._port))
        box: queue.Queue[tuple[bool, Any]] = queue.Queue()

        def run() -> None:
            try:
                box.put((True, self._exchange(conn, message, rid)))
            except Exception as exc:
                box.put((False, exc))

        threading.Thread(target=run, daemon=True).start()
        waited = 0.0
        method = str(message.get("method"))
        try:
            while True:
                if cancel.is_set():
                    return None
                try:
                    ok, value = box.get(timeout=0.05)
                except queue.Empty:
                    waited += 0.05
                    if timeout is not None and waited > timeout:
                        raise McpError(f"MCP server {self.name!r} did not answer {method}"
                                       ) from None
                    continue
                if not ok:
                    if isinstance(value, McpError):
                        raise value
                    raise McpError(f"MCP server {self.name!r} is not reachable: {value}")
                return value
        finally:
            _abort(conn)

    def _exchange(self, conn: http.client.HTTPConnection, message: JsonObj,
                  rid: int | None) -> Any:
        method = str(message.get("method"))
        headers = {**self._headers, "Content-Type": "application/json",
                   "Accept": "application/json, text/event-stream"}
        if self._session is not None:
            headers["Mcp-Session-Id"] = self._session
        if self._protocol is not None:
            headers["MCP-Protocol-Version"] = self._protocol
        conn.request("POST", self._path, body=json.dumps(message).encode(), headers=headers)
        response = conn.getresponse()
        session = response.getheader("mcp-session-id")
        if session:
            self._session = session
        if response.status >= 400:
            text = response.read(4096).decode("utf-8", "replace").strip()
            raise McpError(f"{method} failed: HTTP {response.status}: {text}")
        if rid is None:
            response.read()
            return None
        kind = (response.getheader("content-type") or "").split(";")[0].strip().lower()
        if kind == "application/json":
            return _answer(json.loads(response.read()), rid, method)
        if kind == "text/event-stream":
            for data in _sse_data(response):
                try:
                    answer = json.loads(data)
                except ValueError:
                    continue
                if isinstance(answer, dict) and "method" not in answer \
                        and answer.get("id") == rid:
                    return _answer(answer, rid, method)
            raise McpError(f"{method}: the event stream ended without an answer")
        raise McpError(f"{method}: unexpected content type {kind!r}")


def _answer(message: Any, rid: int, method: str) -> Any:
    if not isinstance(message, dict) or message.get("id") != rid:
        raise McpError(f"{method}: an answer to another request")
    if "error" in message:
        error = message["error"]
        text = error.get("message") if isinstance(error, dict) else error
        raise McpError(f"{method} failed: {text}")
    return message.get("result") or {}


def _sse_data(response: http.client.HTTPResponse) -> Iterator[str]:
    """The data of each Server-Sent Event (its ``data:`` lines joined)."""
    lines: list[str] = []
    while True:
        raw = response.readline()
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
            continue
        if line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))


def _abort(conn: http.client.HTTPConnection) -> None:
    """Close the connection, waking a thread blocked on it (a cancelled call: the server
    sees the client gone and stops the call)."""
    sock = conn.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    conn.close()
