"""Issue 19: Prometheus metrics at `/metrics` against the real daemon, scraped with httpx
and parsed with prometheus-client's own parser: turns by outcome, first-output and
duration histograms, tool-call durations, crashes and restarts, actors by state, agent
memory; refused without the token; off by default."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

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
        # The API's token rules: no token, no metrics.
        refused = await web.get("/metrics")
        assert refused.status_code == 401


async def test_metrics_are_off_by_default(daemon_factory: DaemonFactory) -> None:
    http = await start_http_daemon(daemon_factory)
    async with httpx.AsyncClient(base_url=http.base, timeout=30) as web:
        response = await web.get("/metrics", headers=http.auth)
    assert response.status_code == 404
    assert "[websocket] metrics = true" in response.text
