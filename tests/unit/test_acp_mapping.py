"""The pure half of `stoker acp`: which delta becomes which `session/update`, and that every
update it can produce is valid ACP."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from daemon.acp.rpc import AUTH_REQUIRED, INTERNAL_ERROR, INVALID_PARAMS, RESOURCE_NOT_FOUND
from daemon.editor.mapping import (
    PromptHold,
    agent_capabilities,
    daemon_error,
    delta_update,
    history_update,
    permission_outcome,
    permission_params,
    session_info,
    session_setup,
)
from protocol import deltas as d
from protocol import messages as m
from tests.support.acp_bridge_helpers import BridgeSchema

TOOL = {"sessionUpdate": "tool_call", "toolCallId": "t1", "title": "read", "kind": "read",
        "status": "pending"}
TOOL_UPDATE = {"sessionUpdate": "tool_call_update", "toolCallId": "t1", "status": "completed",
               "content": [{"type": "content", "content": {"type": "text", "text": "ok"}}]}

SAMPLES: list[d.DeltaBody] = [
    d.TurnStarted(agent="echo", prompt="hi", by="cli"),
    d.Text(text="hello"),
    d.Reasoning(text="hmm"),
    d.UserText(text="typed"),
    d.Content(role="agent", block={"type": "image", "data": "aGk=", "mimeType": "image/png"}),
    d.ToolCall(tool_call_id="t1", title="read", acp=TOOL),
    d.ToolCall(tool_call_id="t2", title="bare"),
    d.ToolUpdate(tool_call_id="t1", status="completed", acp=TOOL_UPDATE),
    d.ToolUpdate(tool_call_id="t2", status="failed"),
    d.Plan(entries=[{"content": "step", "priority": "medium", "status": "pending"}]),
    d.Commands(commands=[{"name": "help", "description": "show help"}]),
    d.Mode(mode="plan"),
    d.Config(options=[{"id": "verbose", "name": "Verbose", "type": "boolean",
                       "currentValue": False}]),
    d.Usage(used=10, size=100, cost={"amount": 0.5, "currency": "USD"}),
    d.Info(title="A title", updated_at="2025-01-01T00:00:00Z"),
    d.Notice(level="warning", message="context reset"),
]


@pytest.mark.parametrize("body", SAMPLES, ids=lambda b: type(b).__name__)
def test_every_forwarded_update_is_valid_acp(body: d.DeltaBody) -> None:
    update = delta_update(body, own_client="acp:me:1", notices=True)
    assert update is not None
    BridgeSchema().check({"jsonrpc": "2.0", "method": "session/update",
                          "params": {"sessionId": "c1", "update": update}})


def test_agent_objects_pass_through_unchanged() -> None:
    assert delta_update(SAMPLES[5], own_client=None) is TOOL
    assert delta_update(SAMPLES[7], own_client=None) is TOOL_UPDATE


@pytest.mark.parametrize("body", [
    d.Status(agent="echo", state="busy"),
    d.Terminal(terminal="t", event="output", data="x"),
    d.Diff(workspace="w", files=1, insertions=1, deletions=0),
    d.Raw(method="session/update", acp={"sessionUpdate": "x_future"}),
    d.TurnEnded(stop_reason="end_turn"),
    d.PermissionRequest(request="p1", agent="echo", tool_call={}, options=[]),
    d.PermissionResolved(request="p1", outcome="cancelled"),
    d.Usage(input_tokens=3, output_tokens=4, total_tokens=7),
], ids=lambda b: type(b).__name__)
def test_what_acp_has_no_place_for_is_not_forwarded(body: d.DeltaBody) -> None:
    assert delta_update(body, own_client=None, notices=True) is None


def test_own_turns_are_not_echoed_and_notices_need_the_capability() -> None:
    mine = d.TurnStarted(agent="echo", prompt="hi", by="acp:me:1")
    assert delta_update(mine, own_client="acp:me:1") is None
    assert delta_update(mine, own_client="acp:other:2") == {
        "sessionUpdate": "user_message_chunk", "content": {"type": "text", "text": "hi"}}
    assert delta_update(d.Notice(level="info", message="x"), own_client=None) is None


def test_history_is_the_conversation_not_the_state() -> None:
    kept = [b for b in SAMPLES if history_update(b) is not None]
    assert {type(b) for b in kept} == {d.TurnStarted, d.Text, d.Reasoning, d.UserText,
                                       d.Content, d.ToolCall, d.ToolUpdate, d.Plan}
    # In a replay every prompt is a user message, whoever sent it.
    assert history_update(d.TurnStarted(agent="echo", prompt="p", by="acp:me:1")) is not None


def test_capabilities_are_the_backends_plus_what_the_daemon_serves() -> None:
    backend = {"loadSession": False, "promptCapabilities": {"image": True},
               "sessionCapabilities": {"fork": {}}, "_meta": {"x": 1}}
    caps = agent_capabilities(backend)
    assert caps == {"promptCapabilities": {"image": True}, "loadSession": True,
                    "sessionCapabilities": {"list": {}, "resume": {}, "close": {}}}


def test_permission_answers_and_params() -> None:
    def raw(value: Any) -> msgspec.Raw:
        return msgspec.Raw(msgspec.json.encode(value))

    assert permission_outcome(raw({"outcome": {"outcome": "selected", "optionId": "a"}})) == "a"
    assert permission_outcome(raw({"outcome": {"outcome": "cancelled"}})) is None
    assert permission_outcome(msgspec.Raw(b"not json")) is None
    params = permission_params("c1", "p1", {"title": "x"}, [])
    assert params["toolCall"] == {"title": "x", "toolCallId": "p1"}


def test_daemon_errors_map_to_json_rpc_codes() -> None:
    assert daemon_error("unknown_chat", "no").code == RESOURCE_NOT_FOUND
    assert daemon_error("bad_request", "no").code == INVALID_PARAMS
    assert daemon_error("internal", "no").code == INTERNAL_ERROR
    auth = daemon_error("auth_required", "login", {"authMethods": [{"id": "x"}]})
    assert auth.code == AUTH_REQUIRED
    assert auth.data["authMethods"] == [{"id": "x"}]
    agent = daemon_error("agent_error", "boom", {"code": -32001, "message": "m"})
    assert agent.code == -32001
    assert agent.data == {"stoker": "agent_error"}


def test_session_info_and_setup_shapes() -> None:
    schema = BridgeSchema()
    info = session_info(m.ChatSummary(chat="c1", agent="echo", state="ready", cwd="/w",
                                      title="T", updated_at=0.5))
    assert info["updatedAt"] == "1970-01-01T00:00:00.500000Z"
    schema.validator("SessionInfo").validate(info)
    detail = m.ActorDetail(agent="echo", state="ready",
                           modes={"currentModeId": "a", "availableModes": [
                               {"id": "a", "name": "A"}], "extra": 1})
    setup = session_setup(detail)
    assert setup == {"modes": {"currentModeId": "a",
                               "availableModes": [{"id": "a", "name": "A"}]}}
    schema.validator("LoadSessionResponse").validate(setup)
    assert session_setup(None) == {}


def test_a_queued_prompt_is_shown_when_its_turn_runs() -> None:
    hold = PromptHold()

    def feed(turn: int, body: d.DeltaBody) -> list[str]:
        updates = hold.feed(turn, body, delta_update(body, own_client="me"))
        return [f"{u['sessionUpdate']}:{u['content']['text']}" for u in updates]

    shown = [
        *feed(1, d.TurnStarted(agent="echo", prompt="first", by="cli")),
        *feed(2, d.TurnStarted(agent="echo", prompt="queued", by="web")),
        *feed(3, d.TurnStarted(agent="echo", prompt="dropped", by="web", queued=2)),
        *feed(1, d.Text(text="one")),
        *feed(1, d.TurnEnded(stop_reason="end_turn")),
        *feed(3, d.TurnEnded(stop_reason="cancelled")),
        *feed(2, d.Text(text="two")),
    ]
    assert shown == ["user_message_chunk:first", "agent_message_chunk:one",
                     "user_message_chunk:dropped", "user_message_chunk:queued",
                     "agent_message_chunk:two"]
    feed(4, d.TurnStarted(agent="echo", prompt="silent", by="cli"))
    assert [u["content"]["text"] for u in hold.flush()] == ["silent"]
    assert hold.flush() == []
