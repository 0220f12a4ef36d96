"""Issue 15 (supervision correctness) and issue 16's stderr flood, against the real daemon
with real echo-agent processes: slow is not hung, an agent's over-long line is its own
protocol error, mode and model survive a fresh session, turn timeouts, transient-error
retries, and an agent flooding stderr."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import trio

from daemon.client import Client
from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import (
    DaemonFactory,
    actor,
    agent_pid,
    open_chat,
    replay,
    turn,
    wait_for_body,
    wait_state,
    wait_turn_end,
)

FAST = {"sweep_interval": "100ms", "restart_backoff": "100ms", "restart_backoff_max": "1s"}


def lifecycle(**keys: Any) -> str:
    """A config with a fast `[lifecycle]` (overridable) for tests."""
    merged = {**FAST, **keys}
    return "[lifecycle]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in merged.items())


async def every_turn_ended_once(client: Client, chat: str) -> list[d.Delta]:
    """Everything retained for `chat` (replayed on a second connection, leaving `client`'s
    subscriptions alone), checked: every turn started ended exactly once."""
    assert client.socket_path is not None
    async with Client.connect(client.socket_path, client="audit") as audit:
        deltas = await replay(audit, chat)
    started = [x.turn for x in deltas if isinstance(x.body, d.TurnStarted)]
    ended = [x.turn for x in deltas if isinstance(x.body, d.TurnEnded)]
    assert sorted(started) == sorted(ended), (started, ended)
    assert len(ended) == len(set(ended)), f"a turn ended twice: {ended}"
    return deltas


def restarts(deltas: list[d.Delta]) -> list[str]:
    return [x.body.state for x in deltas if isinstance(x.body, d.Status)
            and x.body.state in ("crashed", "restarting")]


async def test_a_slow_turn_after_an_idle_gap_is_not_killed_as_hung(
        daemon_factory: DaemonFactory) -> None:
    """The issue's reproduction: silence measured from the agent's last message (before the
    idle gap) killed the next turn at its first check, without a single probe. (The issue
    had a 1 s probe interval, a 6 s grace and a 7 s gap; the timings of
    test_slow_but_responsive_agent_is_not_restarted, scaled alike, fail the same way.)"""
    grace = 1.0
    daemon = daemon_factory(config=lifecycle(probe_interval="300ms", stale_grace=f"{grace}s",
                                             idle_ttl="1h"))
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "gap", cwd=daemon.work)
        assert (await turn(client, info.chat, "hello")).text == "hello"
        pid = await agent_pid(client, info.chat)
        await trio.sleep(1.5 * grace)  # the idle gap is the scenario: longer than the grace
        slow = await turn(client, info.chat, "/slow 1500", timeout=30)  # five probe intervals
        assert slow.ended.error is None, slow.ended.error
        assert slow.ended.stop_reason == "end_turn"
        assert slow.text == "slow 1500"
        assert await agent_pid(client, info.chat) == pid
        assert restarts(await every_turn_ended_once(client, info.chat)) == []
        assert "unresponsive" not in daemon.log_text()


async def test_an_over_long_agent_line_is_that_agents_protocol_error(
        daemon_factory: DaemonFactory) -> None:
    """`/bigline` past `max_line`: the turn ends once naming the agent's protocol error, the
    agent is restarted and the chat goes on; the daemon reports no internal error."""
    daemon = daemon_factory(config='[daemon]\nmax_line = "64KiB"\n' + lifecycle())
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "big", cwd=daemon.work)
        pid = await agent_pid(client, info.chat)
        fits = await turn(client, info.chat, "/bigline 32")
        assert len(fits.text) == 32 * 1024
        big = await turn(client, info.chat, "/bigline 100", timeout=30)
        error = big.ended.error
        assert error is not None
        assert "agent protocol error" in error
        assert "exceeds the 65536 byte cap" in error
        assert "internal error" not in error
        after = await turn(client, info.chat, "/pid")
        assert after.ended.stop_reason == "end_turn"
        assert int(after.text) != pid
        deltas = await every_turn_ended_once(client, info.chat)
        assert restarts(deltas) == ["crashed", "restarting"]
        log = daemon.log_text()
        assert "backend actor failed" not in log
        assert "internal error" not in log


FORGETFUL = """
[agents.forgetful]
command = ["python3", "-m", "daemon.echo_agent", "--no-load", "--no-resume"]
[agents.forgetful-models]
command = ["python3", "-m", "daemon.echo_agent", "--no-load", "--no-resume", "--models-only"]
"""


def echo_session(daemon: Any, session_id: str | None) -> dict[str, Any]:
    """What the echo agent itself recorded about a session (its state file)."""
    assert session_id is not None
    path = daemon.base / "xdg-state" / "stoker-echo" / f"{session_id}.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def notices(deltas: list[d.Delta]) -> list[str]:
    return [x.body.message for x in deltas if isinstance(x.body, d.Notice)]


async def test_mode_and_model_are_reapplied_to_a_fresh_session(
        daemon_factory: DaemonFactory) -> None:
    """An agent that can neither resume nor load comes back (after a crash, and after
    hibernation) with session/new: the chat's mode, model and options are set again on the
    new session, and the notice says so."""
    daemon = daemon_factory(config=FORGETFUL + lifecycle(max_warm=1, idle_ttl="1h"))
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "keep", agent="forgetful", cwd=daemon.work)
        await turn(client, info.chat, "hello")
        await client.request(m.SetMode(id=0, chat=info.chat, mode="plan"))
        await client.request(m.SetConfig(id=0, chat=info.chat, option="model", value="echo-2"))
        await client.request(m.SetConfig(id=0, chat=info.chat, option="verbose", value=True))
        first = (await actor(client, info.chat, "forgetful")).session_id

        crashed = await turn(client, info.chat, "/crash")
        assert crashed.ended.error is not None
        after = await turn(client, info.chat, "/recall")
        assert after.text == "nothing remembered"  # a fresh session indeed
        detail = await actor(client, info.chat, "forgetful")
        assert detail.session_id != first
        assert detail.modes is not None
        assert detail.modes["currentModeId"] == "plan"
        values = {o["id"]: o["currentValue"] for o in detail.config_options}
        assert values == {"model": "echo-2", "verbose": True}
        recorded = echo_session(daemon, detail.session_id)
        assert recorded["mode"] == "plan"
        assert recorded["config"] == {"model": "echo-2", "verbose": True}
        said = [n for n in notices(await every_turn_ended_once(client, info.chat))
                if "lost its context" in n]
        assert len(said) == 1
        assert "re-applied mode plan, model echo-2, verbose true" in said[0]

        # Hibernation (the LRU cap of one) and a wake, with the unstable model state.
        models = await open_chat(client, "models", agent="forgetful-models", cwd=daemon.work)
        await turn(client, models.chat, "hello")
        await client.request(m.SetConfig(id=0, chat=models.chat, option="model",
                                         value="echo-2"))
        await turn(client, info.chat, "wake the other")  # the cap hibernates `models`
        await wait_state(client, models.chat, "hibernated", agent="forgetful-models",
                         timeout=20)
        woken = await turn(client, models.chat, "/recall")
        assert woken.text == "nothing remembered"
        detail = await actor(client, models.chat, "forgetful-models")
        assert detail.models is not None
        assert detail.models["currentModelId"] == "echo-2"
        said = [n for n in notices(await every_turn_ended_once(client, models.chat))
                if "lost its context" in n]
        assert len(said) == 1
        assert "re-applied model echo-2" in said[0]


async def test_turn_timeout_cancels_a_turn_and_names_the_timeout(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=lifecycle(turn_timeout="1500ms"))
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "limit", cwd=daemon.work)
        pid = await agent_pid(client, info.chat)
        quick = await turn(client, info.chat, "/sleep 100")
        assert quick.ended.stop_reason == "end_turn"
        long = await turn(client, info.chat, "/sleep 60000", timeout=30)
        assert long.ended.stop_reason is None
        assert long.ended.error == ("turn timed out: still running after 1.5s "
                                    "(lifecycle.turn_timeout); cancelled")
        assert long.text == ""  # cancelled, not finished
        # A cancel, not a kill: the same agent takes the next turn.
        assert (await turn(client, info.chat, "after")).text == "after"
        assert await agent_pid(client, info.chat) == pid
        assert restarts(await every_turn_ended_once(client, info.chat)) == []


async def test_transient_failures_before_output_are_retried_with_notices(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=lifecycle(transient_backoff="100ms", transient_retries=2))
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "flaky", cwd=daemon.work)
        pid = await agent_pid(client, info.chat)

        recovered = await turn(client, info.chat, "/transient 2")
        assert recovered.ended.stop_reason == "end_turn"
        assert recovered.text == "recovered after 2 transient failures"
        said = [n.message for n in recovered.of(d.Notice)]
        assert len(said) == 2
        assert "429 Too Many Requests" in said[0]
        assert "retrying in 0.1s (retry 1 of 2)" in said[0]
        assert "retrying in 0.2s (retry 2 of 2)" in said[1]

        exhausted = await turn(client, info.chat, "/transient 3")
        assert exhausted.ended.error is not None
        assert "failure 3 of 3" in exhausted.ended.error
        assert len(exhausted.of(d.Notice)) == 2

        # Output already published: never retried (the client saw "partial").
        late = await turn(client, info.chat, "/transient 1 late")
        assert late.text == "partial"
        assert late.ended.error is not None
        assert "failure 1 of 1" in late.ended.error
        assert late.of(d.Notice) == []

        # Not transient: not retried.
        plain = await turn(client, info.chat, "/error")
        assert plain.ended.error is not None
        assert plain.of(d.Notice) == []

        assert await agent_pid(client, info.chat) == pid
        deltas = await every_turn_ended_once(client, info.chat)
        assert restarts(deltas) == []


async def test_a_cancel_while_waiting_to_retry_ends_the_turn_cancelled(
        daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory(config=lifecycle(transient_backoff="1m"))
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "patient", cwd=daemon.work)
        await turn(client, info.chat, "warm")
        accepted = await client.request(m.Prompt(id=0, chat=info.chat, text="/transient 1"))
        notice = await wait_for_body(client, d.Notice, timeout=20)
        assert "retrying in 30s" in notice.message  # capped by transient_backoff_max
        await client.request(m.Cancel(id=0, chat=info.chat))
        ended = await wait_turn_end(client, info.chat, accepted.turn, timeout=20)
        assert ended.stop_reason == "cancelled"
        await every_turn_ended_once(client, info.chat)


def stderr_accounting(log: str, chat: str) -> tuple[int, int]:
    """(stderr lines logged, stderr lines reported dropped) for `chat` in the daemon log."""
    logged = dropped = 0
    for line in log.splitlines():
        if f"chat={chat} " not in line:
            continue
        if 'event="agent stderr" line="echo stderr line' in line:
            logged += 1
        elif 'event="agent stderr rate-limited"' in line:
            found = re.search(r" dropped=(\d+)", line)
            assert found is not None, line
            dropped += int(found.group(1))
    return logged, dropped


async def test_an_agent_flooding_stderr_neither_floods_the_log_nor_slows_other_chats(
        daemon_factory: DaemonFactory) -> None:
    """Issue 16: 500k stderr lines grew the log by 60 MB and slowed another chat's turns
    from 0.1 s to 4.3 s. Now: a bounded number of lines is logged, every other line is
    counted in the log, the crash report still has the last lines, and another chat's
    turns go on."""
    lines = 200_000
    daemon = daemon_factory(config="")
    daemon.start()
    async with daemon.client() as client:
        await open_chat(client, "flood", cwd=daemon.work)
        await open_chat(client, "calm", cwd=daemon.work)
        await turn(client, "flood", "warm")
        baseline = []
        for _ in range(5):
            started = time.monotonic()
            assert (await turn(client, "calm", "/pid")).ended.stop_reason == "end_turn"
            baseline.append(time.monotonic() - started)
        before = daemon.log_path.stat().st_size

        during: list[float] = []
        flood_done = trio.Event()

        async def calm_turns() -> None:
            async with daemon.client("calm") as other:
                while not flood_done.is_set() or not during:
                    started = time.monotonic()
                    result = await turn(other, "calm", "/pid")
                    assert result.ended.stop_reason == "end_turn"
                    during.append(time.monotonic() - started)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(calm_turns)
            flooded = await turn(client, "flood", f"/stderr {lines}", timeout=60)
            assert flooded.text == f"stderr {lines}"
            flood_done.set()

        # Every line is accounted for: logged, or counted in a rate-limit report (which
        # comes within a second of the drop, even with the agent quiet).
        with trio.fail_after(30):
            while sum(stderr_accounting(daemon.log_text(), "flood")) < lines:
                await trio.sleep(0.1)
        logged, dropped = stderr_accounting(daemon.log_text(), "flood")
        assert logged + dropped == lines
        assert logged <= 1000
        growth = daemon.log_path.stat().st_size - before
        assert growth < 512 * 1024, growth  # unlimited: ~26 MB for these lines

        # The crash report still names the agent's last stderr lines, flood or not.
        crashed = await turn(client, "flood", "/crash")
        assert crashed.ended.error is not None
        assert ("echo stderr line 199999 | stoker-echo: crashing on request"
                in crashed.ended.error)
        assert (await turn(client, "calm", "/pid")).ended.stop_reason == "end_turn"
        print(f"calm turn latency: baseline max {max(baseline):.3f}s, during the flood "
              f"max {max(during):.3f}s over {len(during)} turns; log grew {growth} bytes")
        assert max(during) < max(2.0, 10 * max(baseline)), (baseline, during)
