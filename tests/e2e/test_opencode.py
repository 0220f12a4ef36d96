"""The real `opencode acp` (npm `opencode-ai`) through the daemon, offline.

opencode answers `initialize` and `session/new` without a model provider, so no LLM is needed
to check what the daemon learns from it: `DescribeAgent` (a one-off probe process), `Warm`
(a ready session whose `configOptions` show up in `inspect`), a config change, and the
`session/close` the daemon sends when the chat closes (opencode advertises `close`). Every
message the daemon sent is validated against the official ACP schema at teardown.

Offline is enforced, not hoped for: opencode installs its plugin package with an embedded npm
at start, so its environment points npm at a closed loopback port in offline mode (measured
with strace: with that, its only sockets are loopback ones).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest
import trio

from daemon.client import Client, RequestFailed
from protocol import messages as m
from tests.e2e.agents import OPENCODE, Installed, opencode_env
from tests.e2e.rig import (
    TracedDaemon,
    finish_rig,
    installed_or_skip,
    rig_dirs,
    start_traced,
    wait_until,
)
from tests.support.harness import DaemonFactory, actor

pytestmark = pytest.mark.e2e

AGENT = "opencode"
NETWORK_WORDS = ("ENOTFOUND", "ECONNREFUSED", "EAI_AGAIN", "fetch failed", "network",
                 "Unable to connect")


@pytest.fixture(scope="session")
def opencode_install() -> Installed:
    return installed_or_skip(OPENCODE)


@pytest.fixture
def rig(daemon_factory: DaemonFactory, opencode_install: Installed
        ) -> Iterator[TracedDaemon]:
    assert opencode_install.binary is not None
    daemon = daemon_factory()
    trace_dir, home, workspace = rig_dirs(daemon)
    env = opencode_env(home)
    start_traced(daemon, trace_dir, AGENT, [str(opencode_install.binary), "acp"], env)
    made = TracedDaemon(daemon, trace_dir, workspace)
    yield made
    finish_rig(made)


@pytest.fixture
async def client(rig: TracedDaemon) -> AsyncIterator[Client]:
    async with rig.daemon.client("e2e") as connected:
        yield connected


def _skip_if_offline_impossible(exc: RequestFailed) -> None:
    if any(word.lower() in exc.message.lower() for word in NETWORK_WORDS):
        pytest.skip(f"opencode {OPENCODE.version} needs the network at start: {exc.message}")


async def test_describe_warm_config_and_close(rig: TracedDaemon, client: Client) -> None:
    try:
        described: m.AgentDescription = await client.request(
            m.DescribeAgent(id=0, agent=AGENT))
    except RequestFailed as exc:
        _skip_if_offline_impossible(exc)
        raise
    assert described.agent_info.get("name") == "OpenCode"
    assert described.agent_info.get("version") == OPENCODE.version
    assert described.capabilities.get("loadSession") is True
    assert set(described.capabilities.get("sessionCapabilities", {})) >= {
        "close", "fork", "list", "resume"}
    assert described.auth_methods, "opencode lists its login method"

    info: m.ChatInfo = await client.request(m.OpenChat(
        id=0, chat="oc", agent=AGENT, cwd=str(rig.workspace)))
    started = trio.current_time()
    try:
        warm: m.ActorDetail = await client.request(m.Warm(id=0, chat=info.chat))
    except RequestFailed as exc:
        _skip_if_offline_impossible(exc)
        raise
    cold_start = trio.current_time() - started
    assert warm.state == "ready"
    assert warm.session_id
    options = {o["id"]: o for o in warm.config_options}
    assert {"model", "mode"} <= set(options), options
    assert options["mode"]["category"] == "mode"
    assert options["model"]["category"] == "model"
    modes = [o["value"] for o in options["mode"]["options"]]
    assert "plan" in modes

    # inspect reports the same, and a change goes through session/set_config_option.
    await client.request(m.SetConfig(id=0, chat=info.chat, option="mode", value="plan"))
    detail = await actor(client, info.chat, AGENT)
    values = {o["id"]: o["currentValue"] for o in detail.config_options}
    assert values["mode"] == "plan"
    assert detail.capabilities == described.capabilities

    await client.request(m.CloseChat(id=0, chat=info.chat))
    # The close request returns once the chat is closed; its agent answered session/close
    # before it was stopped, so the trace is complete once the recorder saw that answer.
    await wait_until(lambda: rig.generations(AGENT)[-1].answer("session/close") is not None,
                     "opencode's answer to session/close")
    generations = rig.generations(AGENT)
    probe, session = generations[0], generations[-1]
    assert probe.methods() == ["initialize"], "DescribeAgent is initialize, then stop"
    assert session.methods()[:2] == ["initialize", "session/new"]
    assert "session/set_config_option" in session.methods()
    assert "session/close" in session.methods(), "closing the chat closes the ACP session"
    closed = session.answer("session/close")
    assert closed is not None
    assert "error" not in closed, closed
    checked = rig.validate()
    assert checked.get("session/set_config_option") == 1
    assert checked.get("session/close") == 1
    new_answer = json.dumps(session.answer("session/new"))
    print(f"\nopencode {OPENCODE.version}: cold start to ready session {cold_start:.2f}s; "
          f"session/new answer {len(new_answer)} bytes, longest line "
          f"{session.longest_line()} bytes")
