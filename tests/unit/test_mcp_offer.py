"""The `mcpServers` entry of Stoker's MCP server (daemon/mcp/offer.py) and its switches, and
the per-chat credential (daemon/mcp/credentials.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from daemon.config.file import TasksConfig
from daemon.mcp import credentials, offer


@pytest.fixture
def offered() -> Iterator[None]:
    offer.configure("/run/stoker.sock")
    yield
    offer.configure(None)


def test_the_entry_carries_socket_and_credential_in_env_not_argv(offered: None) -> None:
    [entry] = offer.mcp_servers("boss", "qwen", TasksConfig())
    assert entry["name"] == "stoker"
    assert entry["command"] == sys.executable
    assert entry["args"] == ["-m", "daemon.cli", "mcp", "--chat", "boss"]
    env = {e["name"]: e["value"] for e in entry["env"]}
    assert env["STOKER_SOCKET"] == "/run/stoker.sock"
    assert credentials.valid("boss", env[credentials.ENV_CREDENTIAL])
    assert not credentials.valid("other", env[credentials.ENV_CREDENTIAL])
    assert env[credentials.ENV_CREDENTIAL] not in entry["args"]


def test_switches(offered: None) -> None:
    assert offer.mcp_servers("boss", "qwen", TasksConfig(mcp=False)) == []
    assert offer.mcp_servers("boss", "qwen", TasksConfig(mcp_exclude_agents=["qwen"])) == []
    assert offer.mcp_servers("boss", "echo", TasksConfig(mcp_exclude_agents=["qwen"]))
    assert offer.mcp_servers("boss", "qwen", TasksConfig(mcp_exclude_chats=["boss"])) == []
    assert offer.mcp_servers("boss", "qwen", TasksConfig(), remote=True) == []


def test_nothing_is_offered_outside_a_running_daemon() -> None:
    assert offer.mcp_servers("boss", "qwen", TasksConfig()) == []


def test_credentials_differ_per_chat_and_forgeries_fail() -> None:
    assert credentials.credential_for("a") != credentials.credential_for("b")
    assert not credentials.valid("a", "0" * 64)
    assert not credentials.valid("a", "")
