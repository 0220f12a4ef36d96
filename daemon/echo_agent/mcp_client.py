"""A small MCP client (stdio transport, standard library only): the echo agent starts an MCP
server it was given in ``mcpServers`` on first use and calls its tools, so that tests drive
delegation through Stoker's MCP server without a model.

MCP's stdio transport is newline-delimited JSON-RPC 2.0: ``initialize``, the
``notifications/initialized`` notification, then ``tools/call`` requests. A reader thread
queues what the server writes, so a waiting call also sees its turn's cancel (then it sends
``notifications/cancelled``). The server runs in the agent's process group and reads EOF
when the agent dies, so it never outlives the agent.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import threading
from typing import Any

from daemon.echo_agent.jsonrpc import JsonObj

PROTOCOL_VERSION = "2025-06-18"
START_TIMEOUT = 60.0
"""Seconds for the server to answer ``initialize`` (an SDK server imports a lot)."""


class McpError(Exception):
    """The server could not be started or broke the protocol."""


class McpServer:
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

    def call(self, tool: str, arguments: JsonObj, cancel: threading.Event) -> tuple[bool, str]:
        """Call `tool`; (is_error, the text of its content). Cancel: (True, "cancelled")."""
        with self._lock:
            if self._proc is None:
                self._start(cancel)
            result = self._request("tools/call", {"name": tool, "arguments": arguments},
                                   cancel, None)
        if result is None:
            return True, "cancelled"
        texts = [c.get("text", "") for c in result.get("content") or []
                 if isinstance(c, dict) and c.get("type") == "text"]
        return bool(result.get("isError")), "".join(texts)

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
