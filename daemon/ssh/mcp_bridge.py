"""Stoker's MCP server over stdio, on a computer where only the HTTP endpoint reaches.

This file is a program run over there, not imported here: an agent on another computer
that takes MCP over stdio only is offered `python3 -c <this file> URL` (daemon/ssh/
mcp_stdio.py), with the chat's credential in the entry's `env` (`STOKER_MCP_CREDENTIAL`,
never in argv). URL is the daemon's MCP endpoint as the computer sees it, through the SSH
remote port forward (http://127.0.0.1:PORT/mcp/CHAT). Python 3.7 or later, standard
library only: Stoker is not installed there.

Newline-delimited JSON-RPC on stdin and stdout, each message one POST of MCP's Streamable
HTTP transport (`Authorization: Bearer`, `Accept: application/json, text/event-stream`,
the `Mcp-Session-Id` and protocol version the server gave, sent back). An answer is one
JSON body or a Server-Sent Events stream; each message in it becomes one line on stdout;
`202 Accepted` (a notification) writes nothing. Requests run concurrently, each on a
kept-alive connection of its own, so a long `task_result` does not hold up a `ping`;
notifications and responses are sent in order, before anything read after them. A
`notifications/cancelled` also closes the connection of the request it names (the daemon
then stops that call). Whatever goes wrong with a request (the endpoint unreachable, an
HTTP error) is answered as a JSON-RPC error to it and said on stderr; the bridge keeps
running (the forward comes back with the computer's connection). It exits 0 at EOF on
stdin, and 2 on a bad command line.

A message is never sent twice: once its bytes are all sent, the server may have read it and
run it (a `spawn_task` would start a second task), so a connection that closes before its
answer is answered with an error, not retried. Instead, a kept-alive connection is checked
before it is reused: one the server closed meanwhile (readable while idle: EOF) or idle for
longer than `IDLE_REUSE` (so that the daemon's own idle timeout cannot close it as the
request goes out) is closed and another taken. Only a message whose bytes did not all go
out on a kept-alive connection is sent again, on another connection.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

ENV_CREDENTIAL = "STOKER_MCP_CREDENTIAL"
INTERNAL_ERROR = -32603
PARSE_ERROR = -32700
IDLE_REUSE = 30.0
"""A kept-alive connection idle for longer is not reused: the daemon closes one idle for 60 s
(daemon/listeners/mcp_http.py `KEEPALIVE`), and a request sent as it does may be lost
without a way to tell whether it was read."""


def say(text: str) -> None:
    sys.stderr.write("stoker-mcp-bridge: " + text + "\n")
    sys.stderr.flush()


class Bridge:
    def __init__(self, url: str, credential: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("not an http:// URL: " + url)
        self.host = parts.hostname
        self.port = parts.port
        self.path = parts.path + ("?" + parts.query if parts.query else "")
        self.credential = credential
        self.session: str | None = None
        self.protocol: str | None = None
        self.lock = threading.Lock()
        self.output = threading.Lock()
        self.idle: list[tuple[http.client.HTTPConnection, float]] = []
        """Kept-alive connections and when each became idle (`time.monotonic`)."""
        self.running: dict[Any, http.client.HTTPConnection | None] = {}
        """Request id -> the connection its answer comes on (None: not sent yet)."""
        self.cancelled: set[Any] = set()
        """Ids in `running` the client cancelled."""

    def run(self, stdin: Any) -> None:
        while True:
            line = stdin.readline()
            if not line:
                return
            if not line.strip():
                continue
            try:
                message = json.loads(line)
            except ValueError:
                self.write({"jsonrpc": "2.0", "id": None, "error": {
                    "code": PARSE_ERROR, "message": "stdin: a line that is not JSON"}})
                continue
            if not isinstance(message, dict) or "method" not in message or "id" not in message:
                if isinstance(message, dict) \
                        and message.get("method") == "notifications/cancelled":
                    self.cancel((message.get("params") or {}).get("requestId"))
                self.post(line, message)  # in order: a notification or a response
                continue
            with self.lock:
                self.running[message["id"]] = None
            threading.Thread(target=self.post, args=(line, message), daemon=True).start()

    def cancel(self, rid: Any) -> None:
        with self.lock:
            if rid not in self.running:
                return  # answered already (or never asked)
            conn = self.running[rid]
            self.cancelled.add(rid)
        if conn is not None and conn.sock is not None:
            try:
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def post(self, body: bytes, message: Any) -> None:
        rid = message.get("id") if isinstance(message, dict) and "method" in message else None
        what = str(message.get("method")) if isinstance(message, dict) else "a batch"
        try:
            self.exchange(body, rid)
        except Exception as exc:
            with self.lock:
                cancelled = rid in self.cancelled
            if cancelled:
                return
            text = f"{what}: {describe(exc)}"
            say(text)
            if rid is not None:
                self.write({"jsonrpc": "2.0", "id": rid, "error": {
                    "code": INTERNAL_ERROR, "message": "Stoker's MCP endpoint: " + text}})
        finally:
            if rid is not None:
                with self.lock:
                    self.running.pop(rid, None)
                    self.cancelled.discard(rid)

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection to send on, and whether it was kept alive (call with `lock` held).
        Kept-alive ones the server closed, or idle too long, are closed on the way."""
        now = time.monotonic()
        while self.idle:
            conn, since = self.idle.pop()
            if now - since <= IDLE_REUSE and not closed(conn):
                return conn, True
            conn.close()
        return http.client.HTTPConnection(self.host, self.port), False

    def exchange(self, body: bytes, rid: Any) -> None:
        while True:
            with self.lock:
                if rid in self.cancelled:
                    return
                conn, kept = self.take()
                if rid is not None:
                    self.running[rid] = conn
                headers = {"Content-Type": "application/json",
                           "Accept": "application/json, text/event-stream",
                           "Authorization": "Bearer " + self.credential}
                if self.session is not None:
                    headers["Mcp-Session-Id"] = self.session
                if self.protocol is not None:
                    headers["MCP-Protocol-Version"] = self.protocol
            try:
                conn.request("POST", self.path, body=body, headers=headers)
            except OSError:
                conn.close()
                if kept:  # some of its bytes did not go out: the server cannot have read it
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            # Sent whole: it may have been read and run, so it is never sent again.
            try:
                response = conn.getresponse()
            except (http.client.HTTPException, OSError) as exc:
                conn.close()
                raise Unanswered(f"the connection failed before the answer "
                                 f"({describe(exc)}); it may have run, so it is not "
                                 f"sent again") from exc
            except BaseException:
                conn.close()
                raise
            try:
                self.answer(conn, response, rid)
            except BaseException:
                conn.close()
                raise
            return

    def answer(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse,
               rid: Any) -> None:
        """Write what `response` carries; `conn` goes back to the pool first when it may be
        used again (so a request read after this answer finds it)."""
        session = response.getheader("mcp-session-id")
        if session:
            with self.lock:
                self.session = session
        if response.status >= 400:
            text = response.read(2000).decode("utf-8", "replace").strip()
            raise RuntimeError(f"HTTP {response.status} {text}")
        kind = (response.getheader("content-type") or "").split(";")[0].strip().lower()
        if kind == "text/event-stream":
            for data in events(response):
                if self.forward(json.loads(data), rid):
                    conn.close()  # answered: the rest of the stream is not waited for
                    return
            if rid is not None:
                raise RuntimeError("the event stream ended without an answer")
            conn.close()
            return
        body = response.read()
        found = json.loads(body) if kind == "application/json" and body.strip() else None
        if found is None and rid is not None:
            raise RuntimeError(f"HTTP {response.status} without an answer")
        with self.lock:
            if response.will_close or rid in self.cancelled:
                conn.close()
            else:
                self.idle.append((conn, time.monotonic()))
        if found is not None:
            self.forward(found, rid)

    def forward(self, found: Any, rid: Any) -> bool:
        """Write the message(s) to stdout; whether the answer to `rid` was among them."""
        answered = False
        for message in found if isinstance(found, list) else [found]:
            if not isinstance(message, dict):
                continue
            result = message.get("result")
            if isinstance(result, dict) and isinstance(result.get("protocolVersion"), str):
                with self.lock:
                    self.protocol = result["protocolVersion"]
            answered = answered or ("method" not in message and message.get("id") == rid)
            self.write(message)
        return answered

    def write(self, message: Any) -> None:
        line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self.output:
            try:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
            except (BrokenPipeError, ValueError):
                os._exit(0)  # the client is gone


class Unanswered(Exception):
    """A request sent whole whose connection closed before its answer."""


def closed(conn: http.client.HTTPConnection) -> bool:
    """Whether an idle kept-alive connection is unusable: the server closed it (EOF) or sent
    on it unasked (which it may not), or it has no socket."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False  # nothing to read: still open
    except OSError:
        return True
    return True


def events(response: http.client.HTTPResponse) -> Iterator[str]:
    """The data of each Server-Sent Event (its `data:` lines joined)."""
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
        elif line.startswith("data:"):
            lines.append(line[6:] if line.startswith("data: ") else line[5:])


def describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "cannot connect (the computer's SSH forward to the daemon is not open)"
    return str(exc) or type(exc).__name__


def main(argv: list[str]) -> int:
    credential = os.environ.get(ENV_CREDENTIAL, "")
    if len(argv) != 1 or not credential:
        say("usage: python3 -c PROGRAM URL, with the chat's credential in "
            + ENV_CREDENTIAL)
        return 2
    try:
        bridge = Bridge(argv[0], credential)
    except ValueError as exc:
        say(str(exc))
        return 2
    try:
        bridge.run(sys.stdin.buffer)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
