"""The ACP session inside one generation: the handshake (`initialize`, then
`session/resume`, `session/load` or `session/new`), authentication, the session's modes,
config options and model, and the session updates the agent streams.

A recorded session id is resumed when the agent advertises a way to; otherwise the chat gets
a fresh session and a visible `notice` that the agent lost its context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import trio

from daemon.acp import types as acp
from daemon.acp.rpc import AUTH_REQUIRED, ConnectionLost, JsonRpcConnection, RpcError
from daemon.acp.updates import decode_chunk_line, decode_session_update
from daemon.actors import mailbox as mb
from daemon.actors.backend import events as ev
from daemon.actors.backend.core import Core
from daemon.actors.backend.mcp_offer import StokerMcp
from daemon.actors.backend.probe import INITIALIZE_PARAMS
from daemon.errors import (
    AgentRequestFailed,
    AgentUnavailable,
    AuthRequired,
    BadRequest,
    StokerError,
    Unsupported,
)
from daemon.mcp import presence
from protocol import deltas as d

if TYPE_CHECKING:
    from daemon.actors.backend.generation import Ending, Generation

Control = mb.SetMode | mb.SetConfig | mb.Authenticate
"""A command about the session, answered through its reply."""


class Session:
    """Sets up and adjusts one actor's ACP session, and takes in its updates."""

    def __init__(self, core: Core) -> None:
        self._core = core
        self._mcp = StokerMcp(core)
        """Why Stoker's MCP server was last not offered to this chat's remote agent (its
        notice is published when the reason changes, not at every session setup)."""

    def _timeout(self) -> float:
        return float(self._core.settings.config.daemon.request_timeout)

    # ------------------------------------------------------------------ handshake

    async def setup(self, gen: Generation, rpc: JsonRpcConnection, *,
                    post: Callable[[ev.Event], Awaitable[None]],
                    waiting: Callable[[], bool]) -> None:
        """The handshake, then (if the agent wants it) authentication attempts as the
        actor's loop sends them (an `authenticate` command, or None when prompts or warm-ups
        wait: `waiting`); reports `Ready` once a session is set up."""
        try:
            await self.handshake(rpc)
        except AuthRequired as exc:
            await post(ev.AuthNeeded(gen, exc.message, first=True))
            while True:
                auth = await gen.attempts.receive()
                if auth is not None:
                    await self.authenticate(rpc, auth)
                if auth is not None or waiting():
                    try:
                        await self.retry_establish(rpc)
                        break
                    except AuthRequired as again:
                        await post(ev.AuthNeeded(gen, again.message, first=False))
                        continue
                await post(ev.AuthNeeded(gen, "", first=False))
        gen.set_up = True
        if gen.nursery is not None:  # is the offered MCP server brought up? (mcp/presence)
            core = self._core
            gen.nursery.start_soon(presence.watch, core.chat, core.agent, core.info.get(
                "agentCapabilities"), core.settings.config.tasks.mcp_start_timeout,
                core.publish, core.log)
        await post(ev.Ready(gen))

    async def handshake(self, rpc: JsonRpcConnection) -> None:
        core = self._core
        raw = await rpc.request("initialize", INITIALIZE_PARAMS, timeout=self._timeout())
        init = msgspec.json.decode(raw, type=acp.InitializeResult)
        full = msgspec.json.decode(raw)
        if init.protocol_version != acp.PROTOCOL_VERSION:
            raise AgentUnavailable(
                f"agent speaks ACP version {init.protocol_version}; Stoker speaks "
                f"{acp.PROTOCOL_VERSION}")
        core.info["agentCapabilities"] = full.get("agentCapabilities") or {}
        core.info["authMethods"] = full.get("authMethods") or []
        core.info["agentInfo"] = full.get("agentInfo") or {}
        core.info["protocolVersion"] = init.protocol_version
        await self.establish(rpc, init)

    async def retry_establish(self, rpc: JsonRpcConnection) -> None:
        """After authentication: the session setup again, with the capabilities known."""
        init = msgspec.convert({"agentCapabilities": self._core.info.get(
            "agentCapabilities", {})}, acp.InitializeResult)
        await self.establish(rpc, init)

    async def establish(self, rpc: JsonRpcConnection, init: acp.InitializeResult) -> None:
        core = self._core
        timeout = self._timeout()
        caps = init.agent_capabilities
        setup_params = {"cwd": core.cwd,
                        "mcpServers": [*core.mcp, *await self._mcp.servers()]}
        old = core.session_id
        lost_reason = ""
        if old is not None:
            methods = []
            if caps.session_capabilities.get("resume") is not None:
                methods.append("session/resume")
            if caps.load_session:
                methods.append("session/load")
            for method in methods:
                core.loading = method == "session/load"
                try:
                    failure = await self._reattach(rpc, method, {"sessionId": old,
                                                                 **setup_params}, timeout)
                finally:
                    core.loading = False
                if failure is None:
                    return
                lost_reason = failure
            if not lost_reason:
                lost_reason = "the agent supports neither session/resume nor session/load"
        chosen = chosen_settings(core.info) if old is not None else []
        try:
            raw = await rpc.request("session/new", setup_params, timeout=timeout)
        except RpcError as exc:
            self.raise_if_auth(exc)
            raise
        setup = msgspec.json.decode(raw, type=acp.SessionSetup)
        if not setup.session_id:
            raise AgentUnavailable("session/new answered without a sessionId")
        core.session_id = setup.session_id
        self._apply_setup(setup)
        core.persist()
        if old is not None:
            restored, failed = await self._reapply(rpc, chosen, timeout)
            message = f"the agent lost its context ({lost_reason}); a new session was started"
            if restored:
                message += f"; re-applied {', '.join(restored)}"
            if failed:
                message += f"; could not re-apply {'; '.join(failed)}"
            core.publish(d.Notice(level="warning", message=message))
            core.log.warning("session lost; started a new one", reason=lost_reason,
                             restored=", ".join(restored), failed="; ".join(failed))

    async def _reapply(self, rpc: JsonRpcConnection, chosen: list[Setting], timeout: float
                       ) -> tuple[list[str], list[str]]:
        """Set the chat's mode, config options and model on a fresh session, where it does
        not already have them: a session the agent could not resume must not silently
        revert them. Returns what was re-applied and what could not be (and why)."""
        restored: list[str] = []
        failed: list[str] = []
        for setting in chosen:
            if setting.current(self._core.info) == setting.value:
                continue
            try:
                if setting.kind == "mode":
                    await self._set_mode(rpc, str(setting.value), timeout)
                elif setting.kind == "model":
                    await self._set_model(rpc, str(setting.value), timeout)
                else:
                    await self._set_config(rpc, setting.name, setting.value, timeout)
            except RpcError as exc:
                failed.append(f"{setting.describe()} (agent error {exc.code}: {exc.message})")
            except trio.TooSlowError:
                failed.append(f"{setting.describe()} (no answer in time)")
            except StokerError as exc:
                failed.append(f"{setting.describe()} ({exc.message})")
            else:
                restored.append(setting.describe())
        return restored, failed

    async def _reattach(self, rpc: JsonRpcConnection, method: str, params: dict[str, Any],
                        timeout: float) -> str | None:
        """Resume the recorded session with `method`; None on success, else why not."""
        try:
            raw = await rpc.request(method, params, timeout=timeout)
        except RpcError as exc:
            self.raise_if_auth(exc)
            return f"{method} failed: {exc.message}"
        self._apply_setup(msgspec.json.decode(raw, type=acp.SessionSetup))
        self._core.log.info("session resumed", session=params["sessionId"], method=method)
        return None

    def raise_if_auth(self, exc: RpcError) -> None:
        """`AuthRequired`, naming the agent's methods, if the agent refused for want of it."""
        if exc.code == AUTH_REQUIRED:
            core = self._core
            methods = core.info.get("authMethods") or []
            names = _method_names(methods)
            hint = (f"; run `stoker auth {core.chat} METHOD` with one of: {names}"
                    if names else "; the agent lists no authMethods")
            raise AuthRequired(f"agent {core.agent!r} requires authentication: "
                               f"{exc.message}{hint}", detail={"authMethods": methods})

    def _apply_setup(self, setup: acp.SessionSetup) -> None:
        info = self._core.info
        if setup.modes is not None:
            info["modes"] = setup.modes
        if setup.config_options is not None:
            info["configOptions"] = setup.config_options
        if setup.models is not None:
            info["models"] = setup.models

    async def close(self, rpc: JsonRpcConnection, gen: Generation, ending: Ending) -> None:
        """End the generation with `ending` (hibernate or close) after `session/close`, when
        the agent supports it."""
        core = self._core
        caps = core.info.get("agentCapabilities") or {}
        if core.session_id and (caps.get("sessionCapabilities") or {}).get("close") is not None:
            with trio.move_on_after(2):
                try:
                    await rpc.request("session/close", {"sessionId": core.session_id})
                except (RpcError, ConnectionLost) as exc:
                    core.log.info("session/close failed", error=str(exc))
        gen.end(ending)

    # ------------------------------------------------------------------ controls

    async def authenticate(self, rpc: JsonRpcConnection, cmd: mb.Authenticate) -> None:
        """`authenticate` with one of the methods the agent listed in `initialize` (ACP:
        the id must be one of them); any other is refused here, before the agent sees it,
        naming the ones it offers."""
        core = self._core
        methods = core.info.get("authMethods")
        if isinstance(methods, list) and cmd.method not in {
                m.get("id") for m in methods if isinstance(m, dict)}:
            names = _method_names(methods)
            offered = (f"; it offers: {names}" if names
                       else "; it lists none (it needs no `stoker auth`)")
            cmd.reply.fail(BadRequest(f"agent {core.agent!r} has no auth method "
                                      f"{cmd.method!r}{offered}",
                                      detail={"authMethods": methods}))
            return
        try:
            await rpc.request("authenticate", {"methodId": cmd.method},
                              timeout=self._timeout())
        except RpcError as exc:
            cmd.reply.fail(AgentRequestFailed("authenticate", exc.code, exc.message, exc.data))
            return
        except trio.TooSlowError:
            cmd.reply.fail(AgentUnavailable("authenticate timed out"))
            return
        cmd.reply.set(None)
        self._core.publish(d.Notice(level="info", message=f"authenticated with {cmd.method}"))

    async def run_control(self, rpc: JsonRpcConnection, control: Control) -> None:
        """Run one command and answer its reply (errors included)."""
        timeout = self._timeout()
        try:
            if isinstance(control, mb.SetMode):
                await self._set_mode(rpc, control.mode, timeout)
            elif isinstance(control, mb.SetConfig):
                await self._set_config(rpc, control.option, control.value, timeout)
            else:
                await self.authenticate(rpc, control)
                return
        except RpcError as exc:
            control.reply.fail(AgentRequestFailed(type(control).__name__, exc.code, exc.message,
                                                  exc.data))
            return
        except trio.TooSlowError:
            control.reply.fail(AgentUnavailable("the agent did not answer in time"))
            return
        except StokerError as exc:
            control.reply.fail(exc)
            return
        control.reply.set(None)

    async def _set_mode(self, rpc: JsonRpcConnection, mode: str, timeout: float) -> None:
        core = self._core
        modes = core.info.get("modes")
        if not modes:
            raise Unsupported(f"agent {core.agent!r} has no session modes")
        available = [m.get("id") for m in modes.get("availableModes", [])]
        if mode not in available:
            raise BadRequest(f"unknown mode {mode!r}; available: {', '.join(map(str, available))}")
        await rpc.request("session/set_mode", {"sessionId": core.session_id, "modeId": mode},
                          timeout=timeout)
        modes["currentModeId"] = mode
        core.persist()
        core.publish(d.Mode(mode=mode, available=modes.get("availableModes", [])))

    async def _set_config(self, rpc: JsonRpcConnection, option: str, value: str | bool,
                          timeout: float) -> None:
        core = self._core
        options: list[dict[str, Any]] = core.info.get("configOptions") or []
        target = next((o for o in options if o.get("id") == option), None)
        if target is None and option == "model":
            target = next((o for o in options if o.get("category") == "model"), None)
        if target is None:
            if option == "model" and core.info.get("models"):
                await self._set_model(rpc, str(value), timeout)
                return
            known = ", ".join(str(o.get("id")) for o in options) or "none"
            raise BadRequest(f"agent {core.agent!r} has no config option {option!r} "
                             f"(options: {known})")
        params: dict[str, Any] = {"sessionId": core.session_id, "configId": target["id"]}
        if target.get("type") == "boolean":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "on", "off", "1", "0", "yes", "no"):
                    raise BadRequest(f"option {option!r} is boolean: use true or false")
                value = value.lower() in ("true", "on", "1", "yes")
            params.update(type="boolean", value=value)
        else:
            if isinstance(value, bool):
                raise BadRequest(f"option {option!r} takes a value id, not a boolean")
            values = _select_values(target)
            if values and value not in values:
                raise BadRequest(f"invalid value {value!r} for {option!r}; "
                                 f"choose one of: {', '.join(values)}")
            params["value"] = value
        raw = await rpc.request("session/set_config_option", params, timeout=timeout)
        result = msgspec.json.decode(raw, type=acp.SetConfigResult)
        if result.config_options is not None:
            core.info["configOptions"] = result.config_options
        else:
            target["currentValue"] = params["value"]
        core.persist()
        core.publish(d.Config(options=core.info.get("configOptions") or []))

    async def _set_model(self, rpc: JsonRpcConnection, model: str, timeout: float) -> None:
        core = self._core
        models = core.info.get("models") or {}
        available = [m.get("modelId") for m in models.get("availableModels", [])
                     if isinstance(m, dict)]
        if available and model not in available:
            choices = ", ".join(map(str, available))
            raise BadRequest(f"unknown model {model!r}; available: {choices}")
        await rpc.request("session/set_model", {"sessionId": core.session_id, "modelId": model},
                          timeout=timeout)
        models["currentModelId"] = model
        core.persist()
        core.publish(d.Notice(level="info", message=f"model set to {model}"))

    # ------------------------------------------------------------------ agent -> us

    def on_lines(self, lines: list[bytes], start: int) -> int:
        """The hot path, tried on the lines of each read from the agent from `start` on:
        the run of text chunks (agent, thought or user) there, each decoded from its whole
        line in one pass and published as one batch; returns where the run ends (`start`
        when that line is something else, which then goes the general way). Same outcome
        as `on_notification` for these (published in the current turn, except history
        replayed by session/load)."""
        bodies: list[d.DeltaBody] = []
        end = len(lines)
        index = start
        while index < end:
            body = decode_chunk_line(lines[index])
            if body is None:
                break
            bodies.append(body)
            index += 1
        self.on_chunks(bodies)
        return index

    def on_chunks(self, bodies: list[d.DeltaBody]) -> None:
        """A run of text chunks of this session, decoded (`on_lines`, or a shared process's
        host for its lines naming this session), published as one batch."""
        core = self._core
        if bodies and not core.loading:
            core.publish_chunks(bodies, core.current.turn if core.current else 0)

    def on_notification(self, method: str, params: msgspec.Raw | None) -> None:
        core = self._core
        if method != "session/update":
            core.publish_current(d.Raw(method=method, acp=_json_or_none(params)))
            return
        _session, body = decode_session_update(params)
        kind = type(body)
        if kind is d.Text:
            if not core.loading:
                core.publish(body, core.current.turn if core.current else 0)
            return
        info = core.info
        if isinstance(body, d.Mode):
            modes = info.get("modes")
            if isinstance(modes, dict):
                modes["currentModeId"] = body.mode
                body = d.Mode(mode=body.mode, available=modes.get("availableModes", []))
        elif isinstance(body, d.Config):
            info["configOptions"] = body.options
        elif isinstance(body, d.Commands):
            info["commands"] = body.commands
        elif isinstance(body, d.Usage) and body.input_tokens is not None:
            # Token counts of one call, streamed (qwen's `_meta.usage`).
            if core.loading:
                return
            add_tokens(core, body)
            if core.current is not None:
                core.current.streamed_usage = True
        elif isinstance(body, d.Usage):
            core.usage.context_used = body.used
            core.usage.context_size = body.size
            if body.cost:
                with contextlib.suppress(TypeError, ValueError):
                    core.usage.cost = float(body.cost.get("amount", 0.0))
                    core.usage.currency = body.cost.get("currency")
        elif isinstance(body, d.Info):
            if body.title:
                info["title"] = body.title
        elif core.loading:
            # History the agent replays during session/load is not news: not re-broadcast.
            return
        if core.loading and not isinstance(body, d.Mode | d.Config | d.Commands):
            return
        core.publish_current(body)


class Setting(msgspec.Struct, frozen=True):
    """One choice a chat made about its session: its mode, a config option or its model."""

    kind: str
    """`mode`, `config` or `model` (the unstable ACP model state)."""
    name: str
    value: str | bool

    def describe(self) -> str:
        value = str(self.value).lower() if isinstance(self.value, bool) else self.value
        return f"{self.name} {value}"

    def current(self, info: dict[str, Any]) -> Any:
        """The value a session described by `info` has for this setting (None: unknown)."""
        if self.kind == "mode":
            return (info.get("modes") or {}).get("currentModeId")
        if self.kind == "model":
            return (info.get("models") or {}).get("currentModelId")
        for option in info.get("configOptions") or []:
            if isinstance(option, dict) and option.get("id") == self.name:
                return option.get("currentValue")
        return None


def chosen_settings(info: dict[str, Any]) -> list[Setting]:
    """The mode, config options and model of the session `info` describes, in the order
    they are re-applied to a fresh one (mode first: an agent may offer other options in
    another mode)."""
    found: list[Setting] = []
    modes = info.get("modes")
    if isinstance(modes, dict) and isinstance(modes.get("currentModeId"), str):
        found.append(Setting("mode", "mode", modes["currentModeId"]))
    for option in info.get("configOptions") or []:
        if not isinstance(option, dict) or not isinstance(option.get("id"), str):
            continue
        value = option.get("currentValue")
        if isinstance(value, str | bool):
            found.append(Setting("config", option["id"], value))
    models = info.get("models")
    if isinstance(models, dict) and isinstance(models.get("currentModelId"), str):
        found.append(Setting("model", "model", models["currentModelId"]))
    return found


def add_tokens(core: Core, body: d.Usage) -> None:
    """Add one call's token counts to the actor's totals."""
    totals = core.usage
    totals.input_tokens += body.input_tokens or 0
    totals.output_tokens += body.output_tokens or 0
    totals.total_tokens += body.total_tokens or 0
    totals.cached_tokens += body.cached_tokens or 0


def _json_or_none(params: msgspec.Raw | None) -> Any:
    if params is None:
        return None
    try:
        return msgspec.json.decode(params)
    except msgspec.DecodeError:
        return None


def _select_values(option: dict[str, Any]) -> list[str]:
    values: list[str] = []
    for entry in option.get("options") or []:
        if not isinstance(entry, dict):
            continue
        if "value" in entry:
            values.append(str(entry["value"]))
        for sub in entry.get("options") or []:
            if isinstance(sub, dict) and "value" in sub:
                values.append(str(sub["value"]))
    return values


def _method_names(methods: list[Any]) -> str:
    """An agent's `authMethods`, as `id (name), ...` for a message."""
    return ", ".join(f"{m.get('id')} ({m.get('name', '')})" for m in methods
                     if isinstance(m, dict))
