"""Prometheus metrics: where time, tokens and failures go, for an operator to scrape.

Most figures are derived from the deltas as the hub publishes them (`observe`, called once
per delta on the hub's hot path, so it does the least it can: one dict lookup and a few
`isinstance` checks, real work only at a turn's end and a tool's end). The time to first
output is the one `stoker trace` shows: from the marks `turn_ended.timing` carries.
The rest is read when Prometheus scrapes (`Gauges`): actors by state, agents' memory,
subscribers, the store's queue.

Labels are bounded: the agent name (from the config), the outcome (a stop reason or
`error`), the tool kind (ACP's fixed list) and the state; never a chat id, a prompt or an
error text.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from protocol import deltas as d

DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOOL_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800)
OUTPUT = (d.Text, d.Reasoning, d.Content, d.ToolCall)
FINAL_TOOL_STATES = frozenset({"completed", "failed", "cancelled"})
TOOL_KINDS = frozenset({"read", "edit", "delete", "move", "search", "execute", "think",
                        "fetch", "switch_mode", "other"})
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
RESTART_REASONS: tuple[tuple[str, str], ...] = (
    # (a phrase of the crashed Status's reason, its class): first match wins.
    ("unresponsive", "unresponsive"),
    ("protocol error", "protocol_error"),
    ("ignored session/cancel", "cancel_ignored"),
    ("did not answer initialize", "start_timeout"),
    ("refused the session setup", "start_refused"),
    ("killed by", "signal"),
    ("exited with status", "exit"),
    ("lost the connection", "connection_lost"),
    ("cut off", "connection_lost"),
)
"""The reason classes of `stoker_agent_restarts` (plus `other`): a bounded label set derived
from the reason text the actor gives its `crashed` state."""


def restart_reason(text: str) -> str:
    """The bounded class of a crash reason text (see RESTART_REASONS), else ``other``."""
    for phrase, reason in RESTART_REASONS:
        if phrase in text:
            return reason
    return "other"


@dataclass(slots=True)
class _Turn:
    turn: int
    agent: str
    started: float
    first_output: float | None = None
    """The first output delta's ts (used when the turn's end carries no timing)."""
    tools: dict[str, tuple[float, str]] = field(default_factory=dict)
    """Open tool calls: id -> (start, kind)."""


@dataclass(frozen=True, slots=True)
class Gauges:
    """What a scrape reads from the daemon's parts (each returns plain data)."""

    actors_by_state: Callable[[], dict[str, int]]
    agent_rss_by_agent: Callable[[], Awaitable[dict[str, int]]]
    hub: Callable[[], dict[str, int]]
    store: Callable[[], dict[str, int]]


class Metrics:
    def __init__(self, *, collecting: bool = True) -> None:
        self.collecting = collecting
        """`[traces] metrics`: whether `observe` is the hub's tap (else the event-derived
        metrics stay at zero; `stoker_metrics_collecting` says so)."""
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.turns = Counter("stoker_turns", "Turns ended, by agent and outcome "
                             "(stop reason, or error)", ["agent", "outcome"], registry=r)
        self.turn_seconds = Histogram(
            "stoker_turn_duration_seconds", "Turn duration from the prompt reaching the "
            "agent (or the end of the turn before it) to its end", ["agent"],
            buckets=DURATION_BUCKETS, registry=r)
        self.ttft_seconds = Histogram(
            "stoker_turn_first_output_seconds", "Time to the reply's first text, reasoning, "
            "content or tool call", ["agent"], buckets=TTFT_BUCKETS, registry=r)
        self.tool_seconds = Histogram(
            "stoker_tool_call_duration_seconds", "Tool calls from tool_call to their final "
            "status", ["kind", "status"], buckets=TOOL_BUCKETS, registry=r)
        self.tool_unclosed = Counter(
            "stoker_tool_calls_unclosed", "Tool calls still open when their turn ended",
            ["agent"], registry=r)
        self.transitions = Counter(
            "stoker_agent_transitions", "Agent state changes: crashed, restarting, "
            "hibernated, starting (a wake or a first start), failed", ["agent", "state"],
            registry=r)
        self.restarts = Counter(
            "stoker_agent_restarts", "Agent restarts after a failure, by agent and reason "
            "class (" + ", ".join(sorted({r for _, r in RESTART_REASONS})) + ", other)",
            ["agent", "reason"], registry=r)
        self.store_commit_seconds = Histogram(
            "stoker_store_commit_seconds", "Store commits: one batch from its hand-over to "
            "the writer thread to its commit", buckets=COMMIT_BUCKETS, registry=r)
        self.tokens = Counter("stoker_tokens", "Tokens the agents reported, by direction",
                              ["agent", "direction"], registry=r)
        self._turns: dict[str, _Turn] = {}
        """The running turn of each chat."""
        self._queued: dict[str, dict[int, str]] = {}
        """Turns accepted behind the running one: chat -> {turn: agent}, in order."""
        self._crashed: dict[str, str] = {}
        """The reason class of each chat's last crash, until it restarts or gives up."""
        self._gauges: Gauges | None = None
        self._scraped: dict[str, int] = {}

    # ------------------------------------------------------------------ the hub's tap

    def observe(self, chat: str, ts: float, turn: int, body: d.DeltaBody) -> None:
        """One published delta (synchronous, never raises on odd input)."""
        if isinstance(body, d.Text):  # by far the most frequent: fast path
            current = self._turns.get(chat)
            if current is not None and current.first_output is None:
                current.first_output = ts
            return
        if isinstance(body, d.TurnStarted):
            # Running from here unless another turn runs: then its clock starts when the
            # ones ahead of it ended (see TurnEnded).
            if chat in self._turns:
                self._queued.setdefault(chat, {})[turn] = body.agent
            else:
                self._turns[chat] = _Turn(turn=turn, agent=body.agent, started=ts)
            return
        current = self._turns.get(chat)
        if isinstance(body, d.Status):
            if body.state in ("crashed", "restarting", "hibernated", "starting", "failed"):
                self.transitions.labels(body.agent, body.state).inc()
                if body.state == "crashed":
                    self._crashed[chat] = restart_reason(body.reason)
                elif body.state == "restarting":
                    reason = self._crashed.pop(chat, "other")
                    self.restarts.labels(body.agent, reason).inc()
                elif body.state == "failed":
                    self._crashed.pop(chat, None)
            return
        if isinstance(body, d.TurnEnded) and (current is None or current.turn != turn):
            # A queued turn that ended before it ran (cancelled, or the chat closed).
            agent = self._queued.get(chat, {}).pop(turn, None)
            if agent is not None:
                self.turns.labels(agent, body.stop_reason or "error").inc()
            return
        if current is None:
            return
        if isinstance(body, OUTPUT) and current.first_output is None:
            current.first_output = ts
        if isinstance(body, d.ToolCall):
            kind = str(body.acp.get("kind") or "other")
            current.tools[body.tool_call_id] = (ts, kind if kind in TOOL_KINDS else "other")
            if body.status in FINAL_TOOL_STATES:
                self._tool_ended(current, body.tool_call_id, body.status, ts)
        elif isinstance(body, d.ToolUpdate):
            if body.status in FINAL_TOOL_STATES:
                self._tool_ended(current, body.tool_call_id, body.status, ts)
        elif isinstance(body, d.Usage):
            if body.input_tokens:
                self.tokens.labels(current.agent, "input").inc(body.input_tokens)
            if body.output_tokens:
                self.tokens.labels(current.agent, "output").inc(body.output_tokens)
            if body.cached_tokens:
                self.tokens.labels(current.agent, "cached").inc(body.cached_tokens)
        elif isinstance(body, d.TurnEnded):
            outcome = body.stop_reason or "error"
            self.turns.labels(current.agent, outcome).inc()
            self.turn_seconds.labels(current.agent).observe(max(0.0, ts - current.started))
            ttft = _ttft(body.timing, current)
            if ttft is not None:
                self.ttft_seconds.labels(current.agent).observe(ttft)
            if current.tools:
                self.tool_unclosed.labels(current.agent).inc(len(current.tools))
            del self._turns[chat]
            queued = self._queued.get(chat)
            if queued:
                nxt = min(queued)
                self._turns[chat] = _Turn(turn=nxt, agent=queued.pop(nxt), started=ts)

    def _tool_ended(self, current: _Turn, tool: str, status: str, ts: float) -> None:
        opened = current.tools.pop(tool, None)
        if opened is not None:
            start, kind = opened
            self.tool_seconds.labels(kind, status).observe(max(0.0, ts - start))

    # ------------------------------------------------------------------ scrapes

    def attach(self, gauges: Gauges) -> None:
        self._gauges = gauges
        self.registry.register(_Scraped(self))

    async def render(self) -> bytes:
        """The text exposition, with the scrape-time figures read now."""
        if self._gauges is not None:
            rss = await self._gauges.agent_rss_by_agent()
            self._scraped = {f"rss:{k}": v for k, v in rss.items()}
        return generate_latest(self.registry)


def _ttft(timing: d.TurnTiming | None, current: _Turn) -> float | None:
    """Time to first output, as `stoker trace` reports it: from the actor's marks (the
    prompt reaching the agent, its first output), else from the deltas' stamps."""
    if timing is not None and timing.first_output is not None:
        start = max(timing.accepted, timing.started or timing.accepted)
        return max(0.0, timing.first_output - start)
    if current.first_output is not None:
        return max(0.0, current.first_output - current.started)
    return None


class _Scraped(Collector):
    NAMES = ("stoker_metrics_collecting", "stoker_actors", "stoker_turns_running",
             "stoker_turns_queued",
             "stoker_agent_rss_bytes", "stoker_deltas_published",
             "stoker_subscribers_lagged", "stoker_subscribers_live",
             "stoker_store_pending_writes", "stoker_store_write_errors")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """The names, without reading anything (registration must not touch the daemon)."""
        return [GaugeMetricFamily(name, name) for name in self.NAMES]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauges = self._metrics._gauges
        if gauges is None:
            return []
        actors = GaugeMetricFamily("stoker_actors", "Backend actors by state",
                                   labels=["state"])
        for state, count in sorted(gauges.actors_by_state().items()):
            actors.add_metric([state], count)
        rss = GaugeMetricFamily("stoker_agent_rss_bytes", "Resident memory of the warm "
                                "agents' process trees, by agent", labels=["agent"])
        for key, value in sorted(self._metrics._scraped.items()):
            if key.startswith("rss:"):
                rss.add_metric([key[4:]], value)
        hub = gauges.hub()
        published = GaugeMetricFamily("stoker_deltas_published", "Deltas published since "
                                      "the daemon started")
        published.add_metric([], hub.get("published", 0))
        lagged = GaugeMetricFamily("stoker_subscribers_lagged", "Times a subscriber fell "
                                   "behind and was moved to catch-up, since start")
        lagged.add_metric([], hub.get("lag_events", 0))
        live = GaugeMetricFamily("stoker_subscribers_live", "Live subscriptions now")
        live.add_metric([], hub.get("live_subscribers", 0))
        store = gauges.store()
        pending = GaugeMetricFamily("stoker_store_pending_writes", "Writes queued for the "
                                    "database now")
        pending.add_metric([], store.get("pending", 0))
        errors = GaugeMetricFamily("stoker_store_write_errors", "Database write errors "
                                   "since start")
        errors.add_metric([], store.get("write_errors", 0))
        running = GaugeMetricFamily("stoker_turns_running", "Turns running now")
        running.add_metric([], len(self._metrics._turns))
        queued = GaugeMetricFamily("stoker_turns_queued", "Prompts accepted and waiting "
                                   "behind a chat's running turn now (the turn queue depth)")
        queued.add_metric([], sum(len(q) for q in self._metrics._queued.values()))
        collecting = GaugeMetricFamily(
            "stoker_metrics_collecting", "1 when the metrics derived from the deltas are "
            "collected, 0 when `[traces] metrics = false` turned them off")
        collecting.add_metric([], 1 if self._metrics.collecting else 0)
        return [collecting, actors, running, queued, rss, published, lagged, live, pending, errors]
