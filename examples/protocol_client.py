"""A complete Stoker client in one file: the standard library and msgspec, nothing else.

It connects to the daemon's Unix socket, says hello, opens a chat with the echo agent,
subscribes to it, sends a prompt and prints the reply as it streams, until the turn ends.

    python examples/protocol_client.py "hello there"
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from typing import Any

import msgspec

Message = dict[str, Any]


def socket_path() -> str:
    """Where `stoker daemon` listens: $STOKER_SOCKET, else the XDG runtime dir."""
    if os.environ.get("STOKER_SOCKET"):
        return os.environ["STOKER_SOCKET"]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "stoker", "stoker.sock")
    return f"/tmp/stoker-{os.getuid()}/stoker.sock"


class Connection:
    """Frames are a 4-byte big-endian length, then one msgpack-encoded message."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.last_id = 0
        self.early: list[Message] = []  # messages that arrived while we awaited a reply

    def send(self, message: Message) -> None:
        payload = msgspec.msgpack.encode(message)
        self.sock.sendall(struct.pack(">I", len(payload)) + payload)

    def _read_exactly(self, size: int) -> bytes:
        data = bytearray()
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            data += chunk
        return bytes(data)

    def _read(self) -> Message:
        (size,) = struct.unpack(">I", self._read_exactly(4))
        message: Message = msgspec.msgpack.decode(self._read_exactly(size))
        return message

    def receive(self) -> Message:
        """The next message that is not a reply (deltas, replay_complete, heartbeat...)."""
        return self.early.pop(0) if self.early else self._read()

    def request(self, kind: str, **fields: Any) -> Any:
        """Send a request and return its result; an `error` reply raises."""
        self.last_id += 1
        self.send({"type": kind, "id": self.last_id, **fields})
        while True:
            message = self._read()
            if message["type"] in ("reply", "error") and message["id"] == self.last_id:
                break
            self.early.append(message)
        if message["type"] == "error":
            raise RuntimeError(f"{kind} failed: {message['code']}: {message['message']}")
        return message["result"]


def main(argv: list[str]) -> int:
    prompt = " ".join(argv) or "hello from the protocol example"
    conn = Connection(socket_path())
    conn.send({"type": "hello", "protocol": 1, "client": "example"})
    welcome = conn.receive()
    if welcome["type"] != "welcome":
        raise RuntimeError(f"the daemon refused us: {welcome}")
    chat = conn.request("open_chat", agent="echo", cwd=os.getcwd())["chat"]
    conn.request("subscribe", chat=chat)  # no `since`: live deltas only
    turn = conn.request("prompt", chat=chat, text=prompt)["turn"]
    while True:
        message = conn.receive()
        if message["type"] != "delta" or message["turn"] != turn:
            continue  # replay_complete, heartbeats, status deltas, other turns
        body = message["body"]
        if body["kind"] == "text":
            print(body["text"], end="", flush=True)
        elif body["kind"] == "turn_ended":
            print()
            if body.get("error"):
                print(f"turn failed: {body['error']}", file=sys.stderr)
                return 1
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
