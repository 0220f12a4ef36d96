"""daemon/mcp/presence.py on a virtual clock (`autojump_clock`): when a session's offer of
Stoker's MCP server counts as up, the one warning and the late notice, and what is not
checked."""

from __future__ import annotations

from collections.abc import Callable

import trio

from daemon.log import Log
from daemon.mcp import presence
from protocol import deltas as d

LOG = Log("test")


def test_only_a_message_past_initialize_marks_the_server_up() -> None:
    presence.offered("c", "a", "http")
    presence.seen_http("c", "a", b'{"jsonrpc": "2.0", "id": 1, "method": "initialize"}')
    presence.seen_http("c", "a", b"not json")
    assert presence.state("c", "a") == "not up (http)"
    presence.seen_http("c", "a",
                       b'[{"jsonrpc": "2.0", "method": "notifications/initialized"}]')
    assert presence.state("c", "a") == "up (http)"
    # A new session's offer is a new check; a chat never offered has no state.
    presence.offered("c", "a", "stdio")
    assert presence.state("c", "a") == "not up (stdio)"
    presence.up("c", "a")
    assert presence.state("c", "a") == "up (stdio)"
    presence.up("other", "a")
    assert presence.state("other", "a") is None


def test_each_agent_of_a_chat_has_its_own_offer() -> None:
    presence.offered("two", "a", "stdio")
    presence.offered("two", "b", "http")
    presence.up("two", "a")
    presence.seen_http("two", "c", b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}')
    assert presence.state("two", "a") == "up (stdio)"
    assert presence.state("two", "b") == "not up (http)"
    assert presence.state("two", "c") is None
    presence.seen_http("two", "b", b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}')
    assert presence.state("two", "b") == "up (http)"
    # A server that does not say its agent (no `agent`) marks every offer of its chat.
    presence.offered("three", "a", "stdio")
    presence.offered("three", "b", "stdio")
    presence.up("three", None)
    assert presence.state("three", "a") == presence.state("three", "b") == "up (stdio)"


def test_an_agent_that_says_it_starts_servers_on_demand() -> None:
    assert presence.on_demand({"_meta": {presence.ON_DEMAND: True}})
    assert not presence.on_demand({"_meta": {presence.ON_DEMAND: "yes"}})
    assert not presence.on_demand({"mcpCapabilities": {"http": True}})
    assert not presence.on_demand(None)


def _notices() -> tuple[list[d.Notice], Callable[[d.DeltaBody], int]]:
    """What a watch publishes (notices only), and the `publish` it is given."""
    said: list[d.Notice] = []

    def publish(body: d.DeltaBody) -> int:
        assert isinstance(body, d.Notice)
        said.append(body)
        return 0

    return said, publish


async def test_one_warning_then_a_late_notice_and_the_offer_ends_with_its_watch(
        autojump_clock: trio.abc.Clock) -> None:
    said, publish = _notices()
    presence.offered("w", "qwen", "stdio")
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
        presence.up("w", "qwen")
        await trio.sleep(1)
        assert [n.level for n in said] == ["warning", "info"]
        assert "came up after all" in said[1].message
        assert presence.state("w", "qwen") == "up (stdio)"
        nursery.cancel_scope.cancel()
    assert presence.state("w", "qwen") is None  # the generation ended: forgotten


async def test_up_in_time_on_demand_or_switched_off_says_nothing(
        autojump_clock: trio.abc.Clock) -> None:
    said: list[d.DeltaBody] = []

    def publish(body: d.DeltaBody) -> int:
        said.append(body)
        return 0

    on_demand = {"_meta": {presence.ON_DEMAND: True}}
    for chat in ("in-time", "demand", "off"):
        presence.offered(chat, "a", "http")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(presence.watch, "in-time", "a", {}, 30.0, publish, LOG)
        nursery.start_soon(presence.watch, "demand", "a", on_demand, 30.0, publish, LOG)
        nursery.start_soon(presence.watch, "off", "a", {}, 0.0, publish, LOG)
        nursery.start_soon(presence.watch, "never-offered", "a", {}, 30.0, publish, LOG)
        await trio.sleep(10)
        presence.seen_http("in-time", "a",
                           b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list"}')
        await trio.sleep(3600)
        assert said == []
        nursery.cancel_scope.cancel()


async def test_two_agents_of_one_chat_are_checked_apart(
        autojump_clock: trio.abc.Clock) -> None:
    """One chat, two live agents, each offered the server: the one that brings it up is not
    warned about, the other is, by name; each watch ends with its own generation."""
    said, publish = _notices()
    presence.offered("pair", "eager", "stdio")
    presence.offered("pair", "late", "stdio")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(presence.watch, "pair", "eager", {}, 30.0, publish, LOG)
        nursery.start_soon(presence.watch, "pair", "late", {}, 30.0, publish, LOG)
        await trio.sleep(1)
        presence.up("pair", "eager")
        await trio.sleep(60)
        [warning] = said
        assert "agent 'late' was offered it" in warning.message
        assert "eager" not in warning.message
        assert presence.state("pair", "eager") == "up (stdio)"
        assert presence.state("pair", "late") == "not up (stdio)"
        nursery.cancel_scope.cancel()
    assert presence.state("pair", "eager") is None
    assert presence.state("pair", "late") is None
