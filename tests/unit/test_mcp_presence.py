"""daemon/mcp/presence.py on a virtual clock (`autojump_clock`): when a session's offer of
Stoker's MCP server counts as up, the one warning and the late notice, and what is not
checked."""

from __future__ import annotations

import trio

from daemon.log import Log
from daemon.mcp import presence
from protocol import deltas as d

LOG = Log("test")


def test_only_a_message_past_initialize_marks_the_server_up() -> None:
    presence.offered("c", "http")
    presence.seen_http("c", b'{"jsonrpc": "2.0", "id": 1, "method": "initialize"}')
    presence.seen_http("c", b"not json")
    assert presence.state("c") == "not up (http)"
    presence.seen_http("c", b'[{"jsonrpc": "2.0", "method": "notifications/initialized"}]')
    assert presence.state("c") == "up (http)"
    # A new session's offer is a new check; a chat never offered has no state.
    presence.offered("c", "stdio")
    assert presence.state("c") == "not up (stdio)"
    presence.up("c")
    assert presence.state("c") == "up (stdio)"
    presence.up("other")
    assert presence.state("other") is None


def test_an_agent_that_says_it_starts_servers_on_demand() -> None:
    assert presence.on_demand({"_meta": {presence.ON_DEMAND: True}})
    assert not presence.on_demand({"_meta": {presence.ON_DEMAND: "yes"}})
    assert not presence.on_demand({"mcpCapabilities": {"http": True}})
    assert not presence.on_demand(None)


async def test_one_warning_then_a_late_notice_and_the_offer_ends_with_its_watch(
        autojump_clock: trio.abc.Clock) -> None:
    said: list[d.Notice] = []

    def publish(body: d.DeltaBody) -> int:
        assert isinstance(body, d.Notice)
        said.append(body)
        return 0

    presence.offered("w", "stdio")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(presence.watch, "w", "qwen", {}, 30.0, publish, LOG)
        await trio.sleep(29.9)
        assert said == []
        await trio.sleep(0.2)
        [warning] = said
        assert warning.level == "warning"
        assert "agent 'qwen' was offered it over stdio" in warning.message
        assert "mcp_transport_agents = { qwen = \"http\" }" in warning.message
        await trio.sleep(600)
        assert len(said) == 1  # not repeated
        presence.up("w")
        await trio.sleep(1)
        assert [n.level for n in said] == ["warning", "info"]
        assert "came up after all" in said[1].message
        assert presence.state("w") == "up (stdio)"
        nursery.cancel_scope.cancel()
    assert presence.state("w") is None  # the generation ended: the offer is forgotten


async def test_up_in_time_on_demand_or_switched_off_says_nothing(
        autojump_clock: trio.abc.Clock) -> None:
    said: list[d.DeltaBody] = []

    def publish(body: d.DeltaBody) -> int:
        said.append(body)
        return 0

    on_demand = {"_meta": {presence.ON_DEMAND: True}}
    for chat in ("in-time", "demand", "off"):
        presence.offered(chat, "http")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(presence.watch, "in-time", "a", {}, 30.0, publish, LOG)
        nursery.start_soon(presence.watch, "demand", "a", on_demand, 30.0, publish, LOG)
        nursery.start_soon(presence.watch, "off", "a", {}, 0.0, publish, LOG)
        nursery.start_soon(presence.watch, "never-offered", "a", {}, 30.0, publish, LOG)
        await trio.sleep(10)
        presence.seen_http("in-time", b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}')
        await trio.sleep(3600)
        assert said == []
        nursery.cancel_scope.cancel()
