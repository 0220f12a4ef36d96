"""Whether the agent brought Stoker's MCP server up in each session it was offered to.

An agent that fails to start the server it was offered (qwen under load: "MCP server(s)
failed to start: stoker. Continuing with built-in tools") goes on without Stoker's tools,
and nothing else would tell its user. So:

* `offer` records each session's offer here (`offered`: the chat, the agent, the
  transport) as it builds the `mcpServers` entry; a new session (a restart, a resume, a
  setup after authentication) is a new offer, and a new check.
* Offers are per actor, (chat, agent): a chat may have several live agents (it switched
  agents; each keeps its own process and session), each offered its own server, and each
  brings it up or not. The entry names the agent (`stoker mcp`: `STOKER_MCP_AGENT` in its
  environment; HTTP: `?agent=` in the URL), and the signal carries it back.
* The server is *up* once the agent got past the MCP handshake with it: its first message
  other than `initialize` (normally `notifications/initialized`). `stoker mcp` (stdio)
  tells the daemon so with an `mcp_up` request carrying the chat's credential and the
  agent (`up`); the daemon's HTTP endpoint sees the requests itself (`seen_http`).
* `watch` runs in the session's generation from its set-up on: if the server is not up
  `tasks.mcp_start_timeout` after it, the chat gets one `notice` (warning) naming the
  agent, the transport and what to do, and the log a warning line; if the server comes up
  later after all, an info notice says so. Nothing is said when it comes up in time; the
  offer is forgotten when the generation ends.

An agent that starts MCP servers only when a tool is needed, and says so in its
`agentCapabilities._meta` (`ON_DEMAND`: Stoker's echo agent does), is not checked.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from daemon.log import Log
from protocol import deltas as d

ON_DEMAND = "stoker.dev/mcpOnDemand"
"""`agentCapabilities._meta[ON_DEMAND] = true`: the agent starts an MCP server only when a
tool of it is needed (not at session setup), so not having started it says nothing."""


@dataclass(eq=False)
class Offer:
    """One session's offer of Stoker's server."""

    chat: str
    agent: str
    transport: str
    """"stdio" or "http"."""
    up: bool = False
    changed: trio.Event | None = field(default=None)
    """Set when `up` becomes true (made by the watch that waits for it)."""


_offers: dict[tuple[str, str], Offer] = {}
"""The current offer of each actor, (chat, agent), whose session was offered the server."""


def offered(chat: str, agent: str, transport: str) -> None:
    """The session of `chat` on `agent` is being offered the server over `transport` (a new
    check)."""
    _offers[chat, agent] = Offer(chat, agent, transport)


def _waiting(chat: str, agent: str | None) -> list[Offer]:
    """The offers not yet up of `chat` on `agent` (None: on any agent)."""
    if agent is not None:
        offer = _offers.get((chat, agent))
        found = [] if offer is None else [offer]
    else:
        found = [offer for key, offer in _offers.items() if key[0] == chat]
    return [offer for offer in found if not offer.up]


def up(chat: str, agent: str | None) -> None:
    """The server of `chat` on `agent` got past its MCP handshake (the caller checked the
    chat's credential). None: a server that did not say its agent (every offer of the chat
    then counts as up)."""
    for offer in _waiting(chat, agent):
        offer.up = True
        if offer.changed is not None:
            offer.changed.set()


def seen_http(chat: str, agent: str | None, body: bytes) -> None:
    """An authenticated request of `chat` on `agent` (from its URL) reached the HTTP
    endpoint with `body`: the server is up if it carries a message other than
    `initialize`. Reads the body only while an offer waits for that."""
    if not _waiting(chat, agent):
        return
    try:
        decoded = json.loads(body)
    except ValueError:
        return
    messages = decoded if isinstance(decoded, list) else [decoded]
    if any(isinstance(msg, dict) and msg.get("method") != "initialize" for msg in messages):
        up(chat, agent)


def state(chat: str, agent: str) -> str | None:
    """"up (TRANSPORT)", "not up (TRANSPORT)", or None when the current session of `chat`
    on `agent` was not offered the server (or its generation ended)."""
    offer = _offers.get((chat, agent))
    if offer is None:
        return None
    return f"{'up' if offer.up else 'not up'} ({offer.transport})"


def on_demand(capabilities: dict[str, Any] | None) -> bool:
    """Whether an agent with these `agentCapabilities` starts MCP servers on demand."""
    meta = (capabilities or {}).get("_meta")
    return isinstance(meta, dict) and meta.get(ON_DEMAND) is True


def missing_message(agent: str, transport: str, timeout: float) -> str:
    """The warning a chat gets when its session's server did not come up."""
    if transport == "stdio":
        how = "stdio (`stoker mcp`, a process the agent starts)"
        hint = (f"; if the agent supports MCP over HTTP, `[tasks] mcp_transport_agents = "
                f"{{ {agent} = \"http\" }}` needs no process")
    else:
        how = "HTTP (the daemon's own endpoint)"
        hint = (f"; `[tasks] mcp_transport_agents = {{ {agent} = \"stdio\" }}` offers it as "
                "a process instead")
    return (f"Stoker's MCP server did not come up in this session: agent {agent!r} was "
            f"offered it over {how} and had not started it {timeout:g} s after the session "
            f"was set up, so it works without Stoker's tools (tasks, workflows). Check the "
            f"agent's log for MCP errors{hint}.")


async def watch(chat: str, agent: str, capabilities: dict[str, Any] | None,
                timeout: float, publish: Callable[[d.DeltaBody], object], log: Log) -> None:
    """Check the current offer of `chat` on `agent`, from its session's set-up on (run in
    the session's generation, whose end cancels it): warn once if its server is not up
    within `timeout` seconds (0: no check), say so if it comes up later."""
    offer = _offers.get((chat, agent))
    if offer is None:
        return
    try:
        if offer.up or timeout <= 0 or on_demand(capabilities):
            await trio.sleep_forever()
        offer.changed = trio.Event()
        start = trio.current_time()
        with trio.move_on_after(timeout):
            await offer.changed.wait()
        if not offer.up:
            log.warning("Stoker's MCP server did not come up", transport=offer.transport,
                        seconds=timeout)
            publish(d.Notice(level="warning",
                             message=missing_message(agent, offer.transport, timeout)))
            await offer.changed.wait()
            late = trio.current_time() - start
            log.info("Stoker's MCP server came up late", transport=offer.transport,
                     seconds=round(late, 1))
            publish(d.Notice(level="info", message=(
                f"Stoker's MCP server came up after all ({late:.0f} s after the session "
                "was set up): its tools (tasks, workflows) are available.")))
        await trio.sleep_forever()
    finally:
        if _offers.get((chat, agent)) is offer:
            del _offers[chat, agent]
