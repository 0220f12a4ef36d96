"""The echo agent's output: JSON-RPC lines on stdout and diagnostics on stderr.

Every line goes through one lock, so the reader thread and the prompt workers never cut
each other's lines; once stdout breaks (the client went away) writes are dropped and the
stdin EOF that follows ends the agent.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import IO, Any, Final, NoReturn

from daemon.echo_agent.jsonrpc import JsonObj, RpcError, json_bytes
from daemon.echo_agent.sessions import Turn

FLUSH_EVERY: Final = 256
EXIT_JOIN_S: Final = 2.0


def hang_forever() -> NoReturn:
    """Block this thread until the process is killed (``/hang``, ``--linger``)."""
    while True:
        threading.Event().wait()


class Wire:
    """Writes messages to the client (stdout) and log lines to stderr."""

    def __init__(self, stdout: IO[bytes], stderr: IO[str]) -> None:
        self._out = stdout
        self.err = stderr
        self._write_lock = threading.Lock()
        self._broken = False

    def write(self, data: bytes) -> None:
        """Write and flush whole lines; a broken stdout silently drops them."""
        with self._write_lock:
            if self._broken:
                return
            try:
                self._out.write(data)
                self._out.flush()
            except (OSError, ValueError):
                self._broken = True  # the client went away; stdin EOF follows

    def send(self, message: JsonObj) -> None:
        """One JSON-RPC message as one line."""
        self.write(json_bytes(message) + b"\n")

    def respond(self, request_id: Any, result: JsonObj) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "result": result})

    def respond_error(self, request_id: Any, error: RpcError) -> None:
        self.send({"jsonrpc": "2.0", "id": request_id, "error": error.to_json()})

    def notify(self, method: str, params: JsonObj) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})

    def update(self, session_id: str, update: JsonObj) -> None:
        """One ``session/update`` notification."""
        self.notify("session/update", {"sessionId": session_id, "update": update})

    def _chunk_line(self, turn: Turn, text: str) -> bytes:
        """The chunk's line, built on the turn's constant head (the hot path of /chunks);
        it counts towards the turn's reply and usage."""
        turn.reply.append(text)
        turn.chunks += 1
        return turn.chunk_head + json_bytes(text) + b"}}}}\n"

    def chunk(self, turn: Turn, text: str) -> None:
        """One ``agent_message_chunk``, written and flushed."""
        self.write(self._chunk_line(turn, text))

    def stream(self, turn: Turn, texts: Iterable[str]) -> None:
        """Many chunks, flushed every FLUSH_EVERY; stops as soon as the turn is cancelled."""
        batch: list[bytes] = []
        for text in texts:
            if turn.cancel.is_set():
                break
            batch.append(self._chunk_line(turn, text))
            if len(batch) >= FLUSH_EVERY:
                self.write(b"".join(batch))
                batch.clear()
        if batch:
            self.write(b"".join(batch))

    def log(self, text: str) -> None:
        """One ``stoker-echo: ...`` line on stderr; a closed stderr is ignored."""
        try:
            self.err.write(f"stoker-echo: {text}\n")
            self.err.flush()
        except (OSError, ValueError):
            pass

    def silence_forever(self) -> NoReturn:
        """Take the write lock for good (nothing is written any more) and block (``/hang``)."""
        self._write_lock.acquire()
        hang_forever()

    def exit_now(self, code: int) -> NoReturn:
        """Exit at once, without cutting a line another thread is writing."""
        self._write_lock.acquire(timeout=EXIT_JOIN_S)
        try:
            self._out.flush()
        except (OSError, ValueError):
            pass
        try:
            self.err.flush()
        except (OSError, ValueError):
            pass
        os._exit(code)
