"""Issue 19: OpenTelemetry spans from the real daemon, exported over OTLP/HTTP to a
collector stand-in (a plain HTTP server decoding the protobuf requests with
opentelemetry-proto): a turn span with its tool call as a child; none when not configured."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trio
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from protocol import deltas as d
from protocol import messages as m
from tests.support.harness import DaemonFactory, open_chat, subscribe, turn, wait_for_delta


class Collector:
    """Receives OTLP/HTTP trace exports; `spans` are (resource attributes, span) pairs."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], Any]] = []
        self.paths: list[str] = []
        self.arrived = threading.Condition()

    def add(self, path: str, body: bytes) -> None:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with self.arrived:
            self.paths.append(path)
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value
                            for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    self.spans.extend((resource, span) for span in scope.spans)
            self.arrived.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[tuple[dict[str, Any], Any]]:
        with self.arrived:
            self.arrived.wait_for(lambda: len(self.spans) >= count, timeout)
            return list(self.spans)


@contextmanager
def collector() -> Iterator[tuple[Collector, str]]:
    found = Collector()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            found.add(self.path, body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield found, f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()
        server.server_close()


def attrs(span: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        value = a.value
        out[a.key] = getattr(value, value.WhichOneof("value"))
    return out


async def test_turn_and_tool_call_spans_exported_over_otlp(
        daemon_factory: DaemonFactory) -> None:
    with collector() as (found, endpoint):
        daemon = daemon_factory(config=f'[traces]\notlp_endpoint = "{endpoint}"\n',
                                env={"OTEL_BSP_SCHEDULE_DELAY": "50"})
        daemon.start()
        async with daemon.client() as client:
            info = await open_chat(client, "spanned", cwd=daemon.work)
            result = await turn(client, info.chat, "/tool")
        timing = result.ended.timing
        assert timing is not None
        spans = await trio.to_thread.run_sync(found.wait_for, 2, 30.0)
        assert "exporting turn spans over OTLP" in daemon.log_text()
    assert set(found.paths) == {"/v1/traces"}
    mine = [(r, s) for r, s in spans if attrs(s).get("stoker.chat") == info.chat
            or s.name == "tool_call"]
    [(resource, turn_span)] = [(r, s) for r, s in mine if s.name == "turn"]
    [(_, tool_span)] = [(r, s) for r, s in mine if s.name == "tool_call"]
    assert resource["service.name"] == "stoker"
    turn_attrs = attrs(turn_span)
    assert turn_attrs["stoker.turn"] == result.turn
    assert turn_attrs["stoker.agent"] == "echo"
    assert turn_attrs["stoker.outcome"] == "end_turn"
    assert turn_attrs["stoker.tool_calls"] == 1
    assert turn_attrs["stoker.output_tokens"] == timing.output_tokens
    # The turn span runs from the turn's acceptance to its end (the deltas' stamps).
    started = next(x for x in result.deltas if isinstance(x.body, d.TurnStarted))
    ended = result.deltas[-1]
    assert turn_span.start_time_unix_nano == int(started.ts * 1_000_000_000)
    assert turn_span.end_time_unix_nano == int(ended.ts * 1_000_000_000)
    # The tool call is the turn's child, inside it, with its kind, title and outcome.
    assert tool_span.trace_id == turn_span.trace_id
    assert tool_span.parent_span_id == turn_span.span_id
    assert turn_span.start_time_unix_nano <= tool_span.start_time_unix_nano
    assert tool_span.end_time_unix_nano <= turn_span.end_time_unix_nano
    assert attrs(tool_span) | {"stoker.tool_call_id": ""} == {
        "stoker.tool_call_id": "", "stoker.tool.kind": "other",
        "stoker.tool.title": "echo tool", "stoker.tool.status": "completed"}


async def test_no_endpoint_no_export(daemon_factory: DaemonFactory) -> None:
    daemon = daemon_factory()
    daemon.start()
    async with daemon.client() as client:
        info = await open_chat(client, "plain", cwd=daemon.work)
        await turn(client, info.chat, "/tool")
    assert "OTLP" not in daemon.log_text()


async def test_spans_flushed_at_sigterm(daemon_factory: DaemonFactory) -> None:
    """The batch processor would wait ten minutes: the spans reach the collector only
    because the daemon's stop path flushes it, before the daemon exits. Both the turn that
    ended just before SIGTERM and the one the shutdown ended are exported."""
    with collector() as (found, endpoint):
        daemon = daemon_factory(config=f'[traces]\notlp_endpoint = "{endpoint}"\n',
                                env={"OTEL_BSP_SCHEDULE_DELAY": "600000"})
        daemon.start()
        async with daemon.client() as client:
            info = await open_chat(client, "flushed", cwd=daemon.work)
            done = await turn(client, info.chat, "/tool")
            await subscribe(client, info.chat)
            running: m.PromptAccepted = await client.request(
                m.Prompt(id=0, chat=info.chat, text="/sleep 600000"))
            await wait_for_delta(client, lambda x: x.turn == running.turn
                                 and isinstance(x.body, d.TurnStarted))
            assert found.spans == []  # nothing exported yet: the delay holds them
            assert daemon.stop() == 0
        # No waiting: the export finished before the daemon exited.
        turns = {attrs(s)["stoker.turn"]: s for _, s in found.spans
                 if s.name == "turn" and attrs(s).get("stoker.chat") == info.chat}
    assert set(turns) == {done.turn, running.turn}
    assert attrs(turns[done.turn])["stoker.outcome"] == "end_turn"
    assert attrs(turns[running.turn])["stoker.outcome"] != "end_turn"
    assert [s.name for _, s in found.spans].count("tool_call") == 1
