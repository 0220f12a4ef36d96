"""The echo agent's JSON-RPC methods: the handshake (initialize, authenticate) and the
session lifecycle (new, load, resume, close, list, set_mode, set_config_option, set_model,
prompt). Each handler returns its result, raises :class:`RpcError`, or (session/prompt)
returns None because a worker thread answers later.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Callable
from typing import Any, Final

from daemon.echo_agent.jsonrpc import (
    AUTH_REQUIRED,
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    JsonObj,
    RpcError,
    param_str,
)
from daemon.echo_agent.mcp_commands import capabilities_meta
from daemon.echo_agent.sessions import MODEL_VALUES, Session, Turn, now_iso
from daemon.echo_agent.state import AgentState

PROTOCOL_VERSION: Final = 1
AGENT_NAME: Final = "stoker-echo"
AGENT_VERSION: Final = "1"
AUTH_METHOD_ID: Final = "echo-login"

Handler = Callable[[Any, JsonObj], JsonObj | None]
RunTurn = Callable[[Turn, list[Any]], None]


class SessionMethods:
    """The handlers of the requests a client sends; ``run_turn`` executes a prompt on the
    worker thread session/prompt starts."""

    def __init__(self, state: AgentState, run_turn: RunTurn) -> None:
        self._state = state
        self.options = state.options
        self._wire = state.wire
        self._run_turn = run_turn

    def table(self) -> dict[str, Handler]:
        """Method name -> handler; anything else is -32601."""
        return {
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

    def _require_auth(self) -> None:
        if self.options.require_auth and not self._state.authenticated:
            raise RpcError(AUTH_REQUIRED, "Authentication required")

    def _initialize(self, _rid: Any, params: JsonObj) -> JsonObj:
        if self.options.fail_initialize:
            self._wire.log("failing initialize as asked (--fail-initialize)")
            self._wire.exit_now(4)
        caps = params.get("clientCapabilities")
        caps = caps if isinstance(caps, dict) else {}
        fs = caps.get("fs")
        fs = fs if isinstance(fs, dict) else {}
        self._state.can_read = fs.get("readTextFile") is True
        self._state.can_write = fs.get("writeTextFile") is True
        self._state.can_terminal = caps.get("terminal") is True
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
                "mcpCapabilities": {"http": self.options.mcp_http, "sse": False},
                "sessionCapabilities": session_caps,
                "_meta": capabilities_meta(),
            },
            "authMethods": auth_methods,
            "agentInfo": {
                "name": AGENT_NAME,
                "title": "Stoker echo agent",
                "version": AGENT_VERSION,
            },
        }

    def _authenticate(self, _rid: Any, params: JsonObj) -> JsonObj:
        method_id = param_str(params, "methodId")
        if self.options.require_auth:
            if method_id != AUTH_METHOD_ID:
                raise RpcError(INVALID_PARAMS, f"unknown auth method {method_id!r}")
            self._state.authenticated = True
        return {}

    def _cwd_param(self, params: JsonObj) -> str:
        cwd = param_str(params, "cwd")
        if not os.path.isabs(cwd):
            raise RpcError(INVALID_PARAMS, "cwd must be an absolute path")
        return cwd

    def _session_new(self, _rid: Any, params: JsonObj) -> JsonObj:
        self._require_auth()
        cwd = self._cwd_param(params)
        session = Session(str(uuid.uuid4()), cwd)
        session.mcp_servers = mcp_servers_param(params)
        with self._state.cond:
            self._state.sessions[session.session_id] = session
            self._state.persist(session)
        self._state.mcp_given(session)
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

    def _reattach(self, params: JsonObj) -> Session:
        """The session of a load/resume request, from memory or from its file."""
        self._require_auth()
        session_id = param_str(params, "sessionId")
        cwd = self._cwd_param(params)
        with self._state.cond:
            session = self._state.sessions.get(session_id)
            if session is None:
                session = self._state.files.read(session_id)
                self._state.sessions[session_id] = session
            if session.cwd != cwd:
                session.cwd = cwd
                self._state.persist(session)
            session.mcp_servers = mcp_servers_param(params)
        self._state.mcp_given(session)
        return session

    def _session_load(self, _rid: Any, params: JsonObj) -> JsonObj:
        if not self.options.load:
            raise RpcError(METHOD_NOT_FOUND, "Method not found", {"method": "session/load"})
        session = self._reattach(params)
        with self._state.cond:
            history = list(session.history)
        for entry in history:
            if entry["text"]:
                kind = "user_message_chunk" if entry["role"] == "user" else "agent_message_chunk"
                self._wire.update(
                    session.session_id,
                    {"sessionUpdate": kind, "content": {"type": "text", "text": entry["text"]}},
                )
        return self._setup_json(session)

    def _session_resume(self, _rid: Any, params: JsonObj) -> JsonObj:
        if not self.options.resume:
            raise RpcError(METHOD_NOT_FOUND, "Method not found", {"method": "session/resume"})
        session = self._reattach(params)
        return self._setup_json(session)

    def _session_close(self, _rid: Any, params: JsonObj) -> JsonObj:
        if not self.options.close:
            raise RpcError(METHOD_NOT_FOUND, "Method not found", {"method": "session/close"})
        session = self._state.session(params)
        with self._state.cond:
            if session.turn is not None:
                session.turn.cancel.set()
                self._state.cond.notify_all()
            self._state.sessions.pop(session.session_id, None)
        return {}

    def _session_list(self, _rid: Any, params: JsonObj) -> JsonObj:
        cwd = params.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise RpcError(INVALID_PARAMS, "cwd must be a string")
        names = self._state.files.names()
        infos: list[JsonObj] = []
        for name in names:
            if not name.endswith(".json") or name.startswith("."):
                continue
            try:
                session = self._state.files.read(name[: -len(".json")])
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

    def _session_set_mode(self, _rid: Any, params: JsonObj) -> JsonObj:
        session = self._state.session(params)
        self._state.set_mode(session, param_str(params, "modeId"))
        return {}

    def _session_set_config_option(self, _rid: Any, params: JsonObj) -> JsonObj:
        session = self._state.session(params)
        config_id = param_str(params, "configId")
        value = params.get("value")
        if config_id == "model":
            if params.get("type") == "boolean" or value not in {v for v, _ in MODEL_VALUES}:
                raise RpcError(INVALID_PARAMS, f"invalid value {value!r} for model")
        elif config_id == "verbose":
            if not isinstance(value, bool):
                raise RpcError(INVALID_PARAMS, f"verbose takes a boolean, not {value!r}")
        else:
            raise RpcError(INVALID_PARAMS, f"unknown config option {config_id!r}")
        with self._state.cond:
            session.config[config_id] = value
            session.updated_at = now_iso()
            self._state.persist(session)
            options = session.config_json()
        self._wire.update(
            session.session_id, {"sessionUpdate": "config_option_update", "configOptions": options}
        )
        return {"configOptions": options}

    def _session_prompt(self, request_id: Any, params: JsonObj) -> None:
        session = self._state.session(params)
        prompt = params.get("prompt")
        if not isinstance(prompt, list):
            raise RpcError(INVALID_PARAMS, "prompt must be an array of content blocks")
        with self._state.cond:
            if session.turn is not None:
                raise RpcError(INVALID_PARAMS, "a prompt is already running on this session")
            turn = Turn(session, request_id)
            session.turn = turn
            worker = threading.Thread(
                target=self._run_turn, args=(turn, prompt), name="echo-prompt", daemon=True
            )
            self._state.workers.add(worker)
        worker.start()

    def _session_set_model(self, _rid: Any, params: JsonObj) -> JsonObj:
        if not self.options.models_only:
            raise RpcError(METHOD_NOT_FOUND, "Method not found: session/set_model")
        session = self._state.session(params)
        model = param_str(params, "modelId")
        if model not in {value for value, _ in MODEL_VALUES}:
            raise RpcError(INVALID_PARAMS, f"unknown model {model!r}")
        with self._state.cond:
            session.config["model"] = model
            self._state.persist(session)
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


def mcp_servers_param(params: JsonObj) -> list[JsonObj]:
    """The stdio and HTTP entries of ``mcpServers`` (others, e.g. SSE, are ignored: the echo
    agent's MCP client speaks those two)."""
    servers = params.get("mcpServers")
    if not isinstance(servers, list):
        return []
    return [s for s in servers if isinstance(s, dict) and (
        isinstance(s.get("command"), str)
        or (s.get("type") == "http" and isinstance(s.get("url"), str)))]
