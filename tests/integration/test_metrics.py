"""Issue 19: Prometheus metrics at `/metrics` against the real daemon, scraped with httpx
and parsed with prometheus-client's own parser: turns by outcome, first-output and
duration histograms, tool-call durations, crashes and restarts, actors by state, agent
memory; refused without the token; off by default."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from daemon.traces.metrics import OUTPUT
from tests.support.harness import DaemonFactory, open_chat, turn, wait_state
from tests.support.http_client import CONFIG, start_http_daemon


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def get(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
        **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_scraped_after_real_turns(daemon_factory: DaemonFactory) -> None:
    http = await start_http_daemon(daemon_factory, CONFIG + "metrics = true\n")
    async with http.proc.client() as client:
        info = await open_chat(client, "measured", cwd=http.proc.work)
        await turn(client, info.chat, "/tool")
        await turn(client, info.chat, "hello")
        crashed = await turn(client, info.chat, "/crash")
        assert crashed.ended.error is not None
        await wait_state(client, info.chat, "ready")
    async with http.client() as web:
        response = await web.get("/metrics", headers=http.auth)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        found = samples(response.text)
        assert get(found, "stoker_turns_total", agent="echo", outcome="end_turn") == 2
        assert get(found, "stoker_turns_total", agent="echo", outcome="error") == 1
        assert get(found, "stoker_turn_duration_seconds_count", agent="echo") == 3
        assert get(found, "stoker_turn_first_output_seconds_count", agent="echo") >= 2
        assert get(found, "stoker_tool_call_duration_seconds_count", kind="other",
                   status="completed") == 1
        assert get(found, "stoker_agent_transitions_total", agent="echo",
                   state="crashed") == 1
        assert get(found, "stoker_actors", state="ready") == 1
        assert get(found, "stoker_agent_rss_bytes", agent="echo") > 0
        assert get(found, "stoker_deltas_published") > 10
        assert get(found, "stoker_metrics_collecting") == 1
        # The API's token rules: no token, no metrics.
        refused = await web.get("/metrics")
        assert refused.status_code == 401


async def test_metrics_are_off_by_default(daemon_factory: DaemonFactory) -> None:
    http = await start_http_daemon(daemon_factory)
    async with httpx.AsyncClient(base_url=http.base, timeout=30) as web:
        response = await web.get("/metrics", headers=http.auth)
    assert response.status_code == 404
    assert "[websocket] metrics = true" in response.text


LIFECYCLE = ('\n[lifecycle]\nsweep_interval = "100ms"\nrestart_backoff = "100ms"\n'
             'restart_backoff_max = "1s"\nprobe_interval = "300ms"\nstale_grace = "1s"\n')


async def test_exact_counts_after_a_scripted_run(daemon_factory: DaemonFactory) -> None:
    """n = 3 turns that end well, k = 3 failures (an agent error, a crash, a hang killed as
    stale), r = 2 restarts (one per reason class): the scrape counts exactly that, and its
    time to first output is the turns' own marks (`turn_ended.timing`)."""
    http = await start_http_daemon(daemon_factory, CONFIG + "metrics = true\n" + LIFECYCLE)
    script = ["hello there", "/tool", "/chunks 3", "/error", "/crash", "/hang"]
    results = []
    async with http.proc.client() as client:
        info = await open_chat(client, "scripted", cwd=http.proc.work)
        for text in script:
            results.append(await turn(client, info.chat, text, timeout=30))
            await wait_state(client, info.chat, "ready", timeout=30)
    outcomes = [r.ended.stop_reason or "error" for r in results]
    assert outcomes == ["end_turn"] * 3 + ["error"] * 3
    async with http.client() as web:
        response = await web.get("/metrics", headers=http.auth)
    assert response.status_code == 200, response.text
    found = samples(response.text)
    assert get(found, "stoker_turns_total", agent="echo", outcome="end_turn") == 3
    assert get(found, "stoker_turns_total", agent="echo", outcome="error") == 3
    assert get(found, "stoker_turn_duration_seconds_count", agent="echo") == 6
    assert get(found, "stoker_agent_restarts_total", agent="echo", reason="exit") == 1
    assert get(found, "stoker_agent_restarts_total", agent="echo",
               reason="unresponsive") == 1
    restarts = {k: v for k, v in found.items() if k[0] == "stoker_agent_restarts_total"}
    assert sum(restarts.values()) == 2, restarts
    assert get(found, "stoker_agent_transitions_total", agent="echo", state="crashed") == 2
    assert get(found, "stoker_turns_running") == 0
    assert get(found, "stoker_turns_queued") == 0
    assert get(found, "stoker_store_commit_seconds_count") > 0
    assert get(found, "stoker_store_commit_seconds_bucket", le="+Inf") == get(
        found, "stoker_store_commit_seconds_count")
    # Time to first output: each sample is a turn's first output minus its start, from
    # the marks on its turn_ended; the mark is taken as the first output delta is published.
    expected = []
    for result in results:
        timing = result.ended.timing
        assert timing is not None
        if timing.first_output is None:
            continue
        first = next(x for x in result.deltas if isinstance(x.body, OUTPUT))
        assert timing.first_output <= first.ts < timing.first_output + 1.0
        assert timing.started is not None
        expected.append(timing.first_output - max(timing.accepted, timing.started))
    # Every turn but the agent's error and the hang (which wrote nothing) had output.
    assert len(expected) == 4
    assert get(found, "stoker_turn_first_output_seconds_count", agent="echo") == 4
    assert abs(get(found, "stoker_turn_first_output_seconds_sum", agent="echo")
               - sum(expected)) < 1e-6


async def test_metrics_collection_can_be_turned_off(daemon_factory: DaemonFactory) -> None:
    """`[traces] metrics = false`: no hook per delta; the scrape says so and counts no
    turns, while the scrape-time gauges are still read."""
    http = await start_http_daemon(
        daemon_factory, CONFIG + "metrics = true\n\n[traces]\nmetrics = false\n")
    async with http.proc.client() as client:
        info = await open_chat(client, "unmeasured", cwd=http.proc.work)
        await turn(client, info.chat, "hello")
    async with http.client() as web:
        response = await web.get("/metrics", headers=http.auth)
    assert response.status_code == 200, response.text
    found = samples(response.text)
    assert get(found, "stoker_metrics_collecting") == 0
    assert get(found, "stoker_turns_total", agent="echo", outcome="end_turn") == 0
    assert get(found, "stoker_actors", state="ready") == 1
    assert get(found, "stoker_deltas_published") > 0
