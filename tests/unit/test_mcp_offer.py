"""The `mcpServers` entry of Stoker's MCP server (daemon/mcp/offer.py) and its switches, and
the per-chat credential (daemon/mcp/credentials.py)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

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
    assert env["STOKER_MCP_AGENT"] == "qwen"  # whose server it is (daemon/mcp/presence.py)
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


HTTP_CAPS = {"mcpCapabilities": {"http": True, "sse": False}}


@pytest.fixture
def served(offered: None) -> Iterator[list[str]]:
    bound: list[str] = []

    def endpoint() -> str:
        bound.append("http://127.0.0.1:4321")
        return bound[-1]

    offer.configure_http(endpoint)
    yield bound
    offer.configure_http(None)


def test_an_agent_that_advertises_http_gets_the_http_entry_with_a_bearer(
        served: list[str]) -> None:
    import jsonschema

    from tests.support.acp_tee import SCHEMA_PATH

    [entry] = offer.mcp_servers("a b/c", "qwen", TasksConfig(), agent_capabilities=HTTP_CAPS)
    assert entry == {
        "type": "http", "name": "stoker", "url": "http://127.0.0.1:4321/mcp/a%20b%2Fc?agent=qwen",
        "headers": [{"name": "Authorization",
                     "value": f"Bearer {credentials.credential_for('a b/c')}"}]}
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.validate(entry, {"$ref": "#/$defs/McpServer", "$defs": schema["$defs"]})
    assert served == ["http://127.0.0.1:4321"]
    query = entry["url"].partition("?")[2]
    assert offer.agent_of(query) == "qwen"
    assert offer.agent_of("") is None
    assert offer.agent_of(query.replace("qwen", "a%20b%26c")) == "a b&c"


def test_the_transport_per_agent(served: list[str]) -> None:
    def kind(agent: str, config: TasksConfig, caps: dict[str, Any] | None) -> str:
        [entry] = offer.mcp_servers("boss", agent, config, agent_capabilities=caps)
        return "http" if entry.get("type") == "http" else "stdio"

    assert kind("qwen", TasksConfig(), HTTP_CAPS) == "http"
    assert kind("qwen", TasksConfig(), {"mcpCapabilities": {"http": False}}) == "stdio"
    assert kind("qwen", TasksConfig(), None) == "stdio"
    assert kind("qwen", TasksConfig(mcp_transport="stdio"), HTTP_CAPS) == "stdio"
    assert kind("qwen", TasksConfig(mcp_transport="http"), None) == "http"
    per_agent = TasksConfig(mcp_transport_agents={"qwen": "stdio", "goose": "http"})
    assert kind("qwen", per_agent, HTTP_CAPS) == "stdio"
    assert kind("goose", per_agent, None) == "http"
    assert kind("echo", per_agent, HTTP_CAPS) == "http"
    # The on/off switches win over the transport.
    assert offer.mcp_servers("boss", "qwen", TasksConfig(mcp=False),
                             agent_capabilities=HTTP_CAPS) == []
    assert offer.mcp_servers("boss", "qwen", TasksConfig(mcp_exclude_chats=["boss"]),
                             agent_capabilities=HTTP_CAPS) == []
    assert offer.mcp_servers("boss", "qwen", TasksConfig(), remote=True,
                             agent_capabilities=HTTP_CAPS) == []


def test_no_http_endpoint_falls_back_to_stdio(offered: None) -> None:
    offer.configure_http(lambda: None)
    try:
        [entry] = offer.mcp_servers("boss", "qwen", TasksConfig(),
                                    agent_capabilities=HTTP_CAPS)
    finally:
        offer.configure_http(None)
    assert entry["command"] == sys.executable


def test_what_a_chat_is_to_be_offered() -> None:
    """`wanted` decides for local and remote agents alike; a remote one then gets HTTP only
    (daemon/actors/backend/session.py)."""
    assert offer.wanted("boss", "qwen", TasksConfig(), HTTP_CAPS) == "http"
    assert offer.wanted("boss", "qwen", TasksConfig(), None) == "stdio"
    assert offer.wanted("boss", "qwen", TasksConfig(mcp_transport="stdio"), HTTP_CAPS) \
        == "stdio"
    assert offer.wanted("boss", "qwen", TasksConfig(mcp=False), HTTP_CAPS) is None
    assert offer.wanted("boss", "qwen", TasksConfig(mcp_exclude_chats=["boss"]),
                        HTTP_CAPS) is None


async def test_nothing_is_offered_to_a_remote_agent_outside_a_running_daemon() -> None:
    with pytest.raises(offer.Unavailable, match="does not serve"):
        await offer.remote_mcp_servers("boss", "qwen", "loop")
