"""A prompt turn, start to end, on its worker thread: describe the non-text content blocks,
run the text as a command (or echo it word by word), then record the exchange in the
session history, append it to the session's history file and answer the session/prompt request.
"""

from __future__ import annotations

import base64
import binascii
import threading
from typing import Any

from daemon.echo_agent.commands import Command, Usage
from daemon.echo_agent.jsonrpc import INTERNAL_ERROR, INVALID_PARAMS, RpcError, param_str
from daemon.echo_agent.sessions import Turn, now_iso
from daemon.echo_agent.state import AgentState


class TurnRunner:
    """Runs turns against a table of prompt commands."""

    def __init__(self, state: AgentState, commands: dict[str, Command]) -> None:
        self._state = state
        self._wire = state.wire
        self._commands = commands

    def run(self, turn: Turn, prompt: list[Any]) -> None:
        """The worker thread's body: whatever happens, the turn ends recorded and answered."""
        error: RpcError | None = None
        try:
            self._execute(turn, prompt)
        except RpcError as exc:
            error = exc
        except Exception as exc:
            self._wire.log(f"prompt failed: {exc!r}")
            error = RpcError(INTERNAL_ERROR, f"Internal error: {exc}")
        session = turn.session
        reply = "".join(turn.reply)
        with self._state.cond:
            session.history.append({"role": "user", "text": turn.user_text})
            session.history.append({"role": "agent", "text": reply})
            session.updated_at = now_iso()
            try:
                self._state.files.append_exchange(session, turn.user_text, reply)
            except OSError as exc:
                self._wire.log(f"cannot save session {session.session_id}: {exc}")
            session.turn = None
            self._state.workers.discard(threading.current_thread())
        if error is not None:
            self._wire.respond_error(turn.request_id, error)
            return
        words = len(turn.user_text.split())
        self._wire.respond(
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
        """Describe the non-text blocks, then run the joined text (RpcError fails the turn)."""
        texts: list[str] = []
        described: list[str] = []
        for block in prompt:
            if not isinstance(block, dict):
                raise RpcError(INVALID_PARAMS, "prompt items must be content blocks")
            kind = block.get("type")
            if kind == "text":
                texts.append(param_str(block, "text"))
            elif kind in ("image", "audio"):
                mime = param_str(block, "mimeType")
                try:
                    size = len(base64.b64decode(param_str(block, "data"), validate=True))
                except (binascii.Error, ValueError):
                    raise RpcError(INVALID_PARAMS, f"{kind} data is not base64") from None
                described.append(f"{kind} {mime} {size} bytes\n")
            elif kind == "resource_link":
                described.append(f"link {param_str(block, 'uri')}\n")
            elif kind == "resource":
                resource = block.get("resource")
                if not isinstance(resource, dict):
                    raise RpcError(INVALID_PARAMS, "resource must be an object")
                uri = param_str(resource, "uri")
                if isinstance(resource.get("text"), str):
                    described.append(f"resource {uri} {len(resource['text'])} chars\n")
                else:
                    blob = param_str(resource, "blob")
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
            self._wire.chunk(turn, line)
        if not text:
            return
        command = self._commands.get(text.split(None, 1)[0]) if text.startswith("/") else None
        if command is None:
            words = text.split()
            self._wire.stream(turn, (w if i == 0 else " " + w for i, w in enumerate(words)))
            return
        parts = text.split(None, 1)
        try:
            command(turn, parts[1].strip() if len(parts) > 1 else "")
        except Usage as exc:
            self._wire.chunk(turn, f"error: {exc}")

