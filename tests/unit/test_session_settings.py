"""The choices a chat made about its ACP session, as re-applied to a fresh session
(daemon/actors/backend/session.py: `chosen_settings`, `Setting`)."""

from __future__ import annotations

from typing import Any

from daemon.actors.backend.session import Setting, chosen_settings

INFO: dict[str, Any] = {
    "modes": {"currentModeId": "plan", "availableModes": [{"id": "default"}, {"id": "plan"}]},
    "configOptions": [
        {"id": "model", "type": "select", "currentValue": "echo-2"},
        {"id": "verbose", "type": "boolean", "currentValue": True},
        {"id": "broken"},
        "not an option",
    ],
    "models": {"currentModelId": "m2", "availableModels": []},
}


def test_mode_first_then_options_then_model() -> None:
    assert chosen_settings(INFO) == [
        Setting("mode", "mode", "plan"),
        Setting("config", "model", "echo-2"),
        Setting("config", "verbose", True),
        Setting("model", "model", "m2"),
    ]


def test_nothing_chosen_without_session_state() -> None:
    assert chosen_settings({}) == []
    assert chosen_settings({"modes": None, "configOptions": None, "models": "x"}) == []


def test_current_reads_a_fresh_sessions_value() -> None:
    fresh = {"modes": {"currentModeId": "default"},
             "configOptions": [{"id": "verbose", "currentValue": False}]}
    assert Setting("mode", "mode", "plan").current(fresh) == "default"
    assert Setting("config", "verbose", True).current(fresh) is False
    assert Setting("config", "model", "echo-2").current(fresh) is None
    assert Setting("model", "model", "m2").current(fresh) is None
    assert Setting("config", "verbose", True).describe() == "verbose true"
