"""A chat's deltas as Server-Sent Events, against a real daemon with httpx: replay then
live, resume by `Last-Event-ID` with no gap and no duplicate, `resync_required` for another
epoch, `live=false`, and a client that stops reading: it lags (and is replayed, losing
nothing) while everyone else goes on at full speed."""

from __future__ import annotations

import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import trio

from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import DaemonFactory, collect_turn, open_chat, subscribe, turn
from tests.support.http_client import CONFIG, Event, HttpDaemon, events, start_http_daemon


@pytest.fixture
async def http(daemon_factory: DaemonFactory) -> HttpDaemon:
    return await start_http_daemon(daemon_factory)


@asynccontextmanager
async def stream(http: HttpDaemon, chat: str, query: str = "",
                 headers: dict[str, str] | None = None) -> AsyncIterator[AsyncIterator[Event]]:
    async with http.client() as client, client.stream(
            "GET", f"/api/chats/{chat}/events{query}",
            headers={**http.auth, **(headers or {})}) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield events(response).__aiter__()


async def next_event(source: AsyncIterator[Event], timeout: float = 30.0) -> Event:
    with trio.fail_after(timeout):
        return await source.__anext__()


async def until(source: AsyncIterator[Event], predicate: Any, seen: list[Event],
                timeout: float = 30.0) -> Event:
    with trio.fail_after(timeout):
        while True:
            event = await source.__anext__()
            seen.append(event)
            if predicate(event):
                return event


def _ended(turn_no: int) -> Any:
    def check(event: Event) -> bool:
        if event.event != "delta":
            return False
        body = event.json()
        return bool(body["body"]["kind"] == "turn_ended" and body["turn"] == turn_no)
    return check


def _seqs(seen: list[Event]) -> list[int]:
    return [int(e.id) for e in seen if e.event == "delta" and e.id is not None]


async def test_replay_live_and_resume_with_no_gap_and_no_duplicate(http: HttpDaemon) -> None:
    async with http.proc.client() as unix:
        await open_chat(unix, "sse", cwd=http.proc.work)
        await turn(unix, "sse", "/chunks 5")
        seen: list[Event] = []
        async with stream(http, "sse", "?since=0") as source:
            first = await next_event(source)
            assert first.event == "subscribed"
            assert first.id == "0"
            subscribed = first.json()
            epoch, head = subscribed["epoch"], subscribed["head_seq"]
            assert head > 0
            done = await until(source, lambda e: e.event == "replay_complete", seen)
            assert done.json()["head_seq"] == head
            assert _seqs(seen) == list(range(1, head + 1))
            # Live: a turn sent over the socket streams here.
            accepted = await unix.request(m.Prompt(id=0, chat="sse", text="/chunks 3"))
            await until(source, _ended(accepted.turn), seen)
        cut = _seqs(seen)[-1] - 4  # pretend the last few were lost with the connection
        # While nobody listens, another turn runs.
        await turn(unix, "sse", "/chunks 4")
        resumed: list[Event] = []
        async with stream(http, "sse", f"?epoch={epoch}",
                          headers={"Last-Event-ID": str(cut)}) as source:
            first = await next_event(source)
            assert first.event == "subscribed"
            assert first.id == str(cut)
            head = first.json()["head_seq"]
            await until(source, lambda e: e.event == "replay_complete", resumed)
    assert _seqs(resumed) == list(range(cut + 1, head + 1))
    assert len(set(_seqs(resumed))) == len(_seqs(resumed))
    bodies = [e.json() for e in resumed if e.event == "delta"]
    assert all(b["chat"] == "sse" for b in bodies)


async def test_another_epoch_or_live_false(http: HttpDaemon) -> None:
    async with http.proc.client() as unix:
        await open_chat(unix, "ep", cwd=http.proc.work)
        await turn(unix, "ep", "hello")
    seen: list[Event] = []
    async with stream(http, "ep", "?epoch=not-this-one",
                      headers={"Last-Event-ID": "1"}) as source:
        assert (await next_event(source)).event == "subscribed"
        resync = await until(source, lambda e: e.event == "resync_required", seen)
        body = resync.json()
        assert resync.id == str(body["seq"])
        assert body["snapshot"]["chat"] == "ep"
        await until(source, lambda e: e.event == "replay_complete", seen)
    assert _seqs(seen) == []
    # live=false: the replay is the whole stream, which then ends.
    replayed: list[Event] = []
    async with stream(http, "ep", "?since=0&live=false") as source:
        with trio.fail_after(30):
            replayed = [event async for event in source]
    kinds = [e.event for e in replayed]
    assert kinds[0] == "subscribed"
    assert kinds[-1] == "replay_complete"
    assert _seqs(replayed) == list(range(1, len(_seqs(replayed)) + 1))


LAG_CONFIG = "[daemon]\ncoalesce_chunks = 0\n" + CONFIG.replace(
    'heartbeat = "200ms"', '''heartbeat = "200ms"
subscriber_queue = 16
subscriber_bytes = "8KiB"''')
"""One delta per chunk (no coalescing): 20,000 of them overflow the stopped client's queue."""


async def test_a_client_that_stops_reading_lags_without_slowing_anyone(
        daemon_factory: DaemonFactory) -> None:
    http = await start_http_daemon(daemon_factory, LAG_CONFIG)
    async with http.proc.client() as unix:
        await open_chat(unix, "lag", cwd=http.proc.work)
        await subscribe(unix, "lag")
        seen: list[Event] = []
        async with stream(http, "lag", "?since=0") as source:
            await until(source, lambda e: e.event == "replay_complete", seen)
            # The SSE client reads nothing while a long turn streams: the socket client
            # still gets the whole turn (the hub never waits for the SSE client).
            accepted = await unix.request(m.Prompt(id=0, chat="lag", text="/chunks 20000"))
            result = await collect_turn(unix, "lag", accepted.turn, timeout=120)
            assert isinstance(result.deltas[-1].body, d.TurnEnded)
            head = result.deltas[-1].seq
            # Now it reads: it was told it lagged, and gets every delta, once, in order.
            await until(source, _ended(accepted.turn), seen, timeout=120)
    assert "lagged" in [e.event for e in seen]
    assert _seqs(seen) == list(range(1, head + 1))


async def test_the_stream_ends_with_goodbye_at_shutdown(http: HttpDaemon) -> None:
    async with http.proc.client() as unix:
        await open_chat(unix, "bye", cwd=http.proc.work)
    seen: list[Event] = []
    async with stream(http, "bye") as source:
        assert (await next_event(source)).event == "subscribed"
        await until(source, lambda e: e.event == "replay_complete", seen)
        async with trio.open_nursery() as nursery:
            async def stop() -> None:
                await trio.to_thread.run_sync(http.proc.stop)
            nursery.start_soon(stop)
            with trio.fail_after(30):
                try:
                    async for event in source:
                        seen.append(event)
                except httpx.HTTPError:
                    pass
    assert seen[-1].event == "goodbye"


async def test_a_stream_reset_mid_turn_ends_only_that_stream(
        daemon_factory: DaemonFactory) -> None:
    """Event-stream clients that vanish with a TCP reset while their stream is written (the
    daemon's send may fail before its EOF watch sees the reset) end their own connections
    only: the listener keeps serving, and the turn ends once."""
    http = await start_http_daemon(daemon_factory, "[daemon]\ncoalesce_chunks = 0\n" + CONFIG)
    host, port = http.base.removeprefix("http://").split("/")[0].rsplit(":", 1)
    async with http.proc.client() as unix:
        await open_chat(unix, "reset", cwd=http.proc.work)
        await subscribe(unix, "reset")
        accepted = await unix.request(m.Prompt(id=0, chat="reset", text="/chunks 50000"))
        with trio.fail_after(60):
            while True:  # the turn streams
                event = await unix.next_event()
                if isinstance(event, d.Delta) and isinstance(event.body, d.Text):
                    break
        raws = []
        for _ in range(3):
            raw = socket.create_connection((host, int(port)))
            raw.sendall(f"GET /api/chats/reset/events?since=0 HTTP/1.1\r\nHost: {host}:{port}"
                        f"\r\nAuthorization: Bearer {http.token}\r\n\r\n".encode())
            with trio.fail_after(30):
                first = await trio.to_thread.run_sync(raw.recv, 65536)
            assert first.startswith(b"HTTP/1.1 200"), first[:200]
            raws.append(raw)
        for raw in raws:
            # Unread data in the receive buffer, SO_LINGER 0: close sends a reset.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()
        result = await collect_turn(unix, "reset", accepted.turn, timeout=120)
        ended = [x for x in result.deltas
                 if isinstance(x.body, d.TurnEnded) and x.turn == accepted.turn]
        assert len(ended) == 1
        # The listener still serves: a new stream replays the turn to its end.
        seen: list[Event] = []
        async with stream(http, "reset", "?since=0&live=false") as source:
            await until(source, lambda e: e.event == "replay_complete", seen, timeout=60)
        assert any(_ended(accepted.turn)(e) for e in seen)
    assert "Traceback" not in http.proc.log_text()
