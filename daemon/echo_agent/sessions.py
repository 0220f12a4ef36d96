"""What the echo agent remembers: a session (persisted in the state dir, so it survives
restarts and ``kill -9``), the prompt turn running on it, and the files they live in. No I/O
to the client here.

A session lives in two files: ``<sessionId>.json`` holds its settings (rewritten whole, and
atomically, when one changes), ``<sessionId>.history.jsonl`` its exchanges, one line appended
per turn. A turn's end costs the same on the first turn as on the thousandth: ``scripts/bench``
measures the daemon against this agent, so the agent's own cost must not grow with its
history. (A ``.json`` written before the split may still hold a ``history`` list: it is read
first and kept as it is.)
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any, Final

from daemon.echo_agent.jsonrpc import (
    INTERNAL_ERROR,
    RESOURCE_NOT_FOUND,
    JsonObj,
    RpcError,
    json_bytes,
)

MODES: Final = (("default", "Default"), ("plan", "Plan"))
MODEL_VALUES: Final = (("echo-1", "Echo 1"), ("echo-2", "Echo 2"))
DEFAULT_CONFIG: Final[dict[str, str | bool]] = {"model": "echo-1", "verbose": False}


def now_iso() -> str:
    """UTC now as ISO 8601 with milliseconds and a ``Z``: what ``updatedAt`` holds."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def session_id_ok(session_id: str) -> bool:
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
        self.base_history = len(self.history)
        """How many of ``history``'s entries live in the ``.json`` file itself (an older
        layout); the rest are in the ``.history.jsonl`` file."""
        self.mode = mode
        self.config: dict[str, str | bool] = dict(DEFAULT_CONFIG)
        if config:
            self.config.update(config)
        self.title = title
        self.updated_at = updated_at or now_iso()
        self.turn: Turn | None = None
        self.mcp_servers: list[JsonObj] = []
        """The ``mcpServers`` of the last session/new, load or resume (never persisted:
        they may carry credentials)."""

    def to_json(self) -> JsonObj:
        """The session file's content (everything but the running turn)."""
        return {
            "sessionId": self.session_id,
            "cwd": self.cwd,
            "memory": self.memory,
            "history": self.history[: self.base_history],
            "mode": self.mode,
            "config": self.config,
            "title": self.title,
            "updatedAt": self.updated_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> Session:
        """A session from its file, leniently: a file edited by hand or by an older agent
        loses the entries it cannot use rather than the whole session (ValueError only
        when it has no id or cwd)."""
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
        """ACP's ``modes`` state of this session."""
        return {
            "currentModeId": self.mode,
            "availableModes": [{"id": mid, "name": name} for mid, name in MODES],
        }

    def config_json(self) -> list[JsonObj]:
        """ACP's ``configOptions`` of this session (the model select, the verbose flag)."""
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


class SessionFiles:
    """The state dir of session files. Writes are atomic (temp file + ``os.replace``), so a
    reader never sees half a session."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir

    def path(self, session_id: str) -> str:
        """Where that session's file lives (callers check the id with session_id_ok)."""
        return os.path.join(self.state_dir, session_id + ".json")

    def history_path(self, session_id: str) -> str:
        """Where that session's exchanges are appended."""
        return os.path.join(self.state_dir, session_id + ".history.jsonl")

    def append_exchange(self, session: Session, user: str, agent: str) -> None:
        """Record one turn: append its prompt, reply and time to the history file (one
        ``write``, so a ``kill -9`` leaves at most the last line cut short; each line starts
        with a newline so the next one is whole even then). Callers hold the agent's
        condition and have appended the entries to ``session.history``."""
        os.makedirs(self.state_dir, exist_ok=True)
        line = json_bytes({"user": user, "agent": agent, "updatedAt": session.updated_at})
        fd = os.open(
            self.history_path(session.session_id),
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
            0o600,
        )
        try:
            os.write(fd, b"\n" + line)
        finally:
            os.close(fd)

    def persist(self, session: Session) -> None:
        """Write the session's settings file atomically (its appended history is left as it
        is). Callers hold the agent's condition."""
        os.makedirs(self.state_dir, exist_ok=True)
        path = self.path(session.session_id)
        tmp = os.path.join(
            self.state_dir,
            f".{session.session_id}.{os.getpid()}.{threading.get_ident()}.tmp",
        )
        with open(tmp, "wb") as f:
            f.write(json_bytes(session.to_json()))
        os.replace(tmp, path)

    def read(self, session_id: str) -> Session:
        """The session stored under that id: -32002 when there is none, -32603 when its file
        cannot be read."""
        not_found = RpcError(
            RESOURCE_NOT_FOUND,
            f"Resource not found: unknown session {session_id}",
            {"sessionId": session_id},
        )
        if not session_id_ok(session_id):
            raise not_found
        try:
            with open(self.path(session_id), "rb") as f:
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
        self._read_history(session)
        return session

    def _read_history(self, session: Session) -> None:
        """Append the exchanges of the history file to ``session`` (a line that does not
        parse, such as one cut short by a kill, is skipped)."""
        try:
            with open(self.history_path(session.session_id), "rb") as f:
                lines = f.read().split(b"\n")
        except FileNotFoundError:
            return
        except OSError as exc:
            raise RpcError(
                INTERNAL_ERROR, f"session {session.session_id} history is unreadable: {exc}"
            ) from exc
        for raw in lines:
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            user, agent, updated = entry.get("user"), entry.get("agent"), entry.get("updatedAt")
            if not isinstance(user, str) or not isinstance(agent, str):
                continue
            session.history.append({"role": "user", "text": user})
            session.history.append({"role": "agent", "text": agent})
            if isinstance(updated, str) and updated > session.updated_at:
                session.updated_at = updated

    def names(self) -> list[str]:
        """The entries of the state dir (none when it cannot be listed)."""
        try:
            return os.listdir(self.state_dir)
        except OSError:
            return []
