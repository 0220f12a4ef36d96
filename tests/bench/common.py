"""What every scenario shares: figures and their targets, statistics, the machine's
description, and a benchmark daemon (the real one, via `tests.support.harness.DaemonProcess`).

Measurements of the daemon's own cost read its process with psutil: CPU is
`cpu_times().user + .system` of the daemon pid alone (children, i.e. agents, are excluded by
construction), memory is the daemon's own RSS (agents are separate processes).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
import trio

from tests.support.harness import ROOT, DaemonProcess

# ----------------------------------------------------------------------------- figures


@dataclass
class Figure:
    """One reported number. `target` is human-readable (e.g. "<= 1 ms"); `holds` is None when
    the figure has no target (a floor, a ratio, a component)."""

    name: str
    value: float | None
    unit: str
    target: str | None = None
    holds: bool | None = None
    note: str = ""

    def shown(self) -> str:
        if self.value is None:
            return "n/a"
        v = self.value
        if abs(v) >= 1e6:
            text = f"{v / 1e6:.2f}M"
        elif abs(v) >= 1e4:
            text = f"{v / 1e3:.1f}k"
        elif abs(v) >= 100:
            text = f"{v:.0f}"
        elif abs(v) >= 1:
            text = f"{v:.2f}"
        else:
            text = f"{v:.3f}"
        return f"{text} {self.unit}".strip()


@dataclass
class Result:
    """A scenario's outcome: its figures, raw per-run detail, and why parts were skipped."""

    scenario: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)
    """The 1-minute load average when the scenario started and when it ended."""

    def add(self, name: str, value: float | None, unit: str, *, target: str | None = None,
            check: Callable[[float], bool] | None = None, note: str = "") -> Figure:
        holds = None if check is None or value is None else bool(check(value))
        fig = Figure(name, value, unit, target, holds, note)
        self.figures.append(fig)
        return fig

    def to_json(self) -> dict[str, Any]:
        return {"scenario": self.scenario, "title": self.title, "seconds": self.seconds,
                "load": list(self.load),
                "figures": [asdict(f) for f in self.figures], "detail": self.detail,
                "skipped": self.skipped}


# ----------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Sequence[float]) -> float:
    return percentile(values, 50.0)


def ms(seconds: float) -> float:
    return seconds * 1000.0


# ----------------------------------------------------------------------------- machine


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM, kernel, Python, commit, load: what the figures depend on."""
    model = ""
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    cwd=ROOT, capture_output=True, text=True,
                                    timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", False
    return {
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "commit": commit + ("+dirty" if dirty else ""),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "load": [round(x, 2) for x in os.getloadavg()],
    }


def load_average() -> float:
    return os.getloadavg()[0]


def tree_cpu(root: psutil.Process) -> float:
    """User + system CPU seconds of `root` and its live descendants."""
    total = 0.0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return total
    for proc in procs:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return total


def _host_ticks() -> tuple[int, int]:
    """(busy, steal) clock ticks of all CPUs since boot (/proc/stat's first line)."""
    fields = [int(x) for x in _read("/proc/stat").splitlines()[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq + steal, steal


class HostShare:
    """What the rest of the machine did during a measurement: the CPUs' busy time minus the
    bench's own processes (the driver, the daemon, their children), and the time the
    hypervisor gave to other guests (steal). `load < 1` in a target means the host's own
    work, not the loadavg the bench itself raises: `others` is that, in CPUs. The bench's
    processes are the driver's own tree (the daemon and agents are its descendants)."""

    def __init__(self) -> None:
        self._tick = os.sysconf("SC_CLK_TCK")
        self._start = (time.monotonic(), *_host_ticks(), self._ours())

    def _ours(self) -> float:
        return tree_cpu(psutil.Process())

    def read(self) -> tuple[float, float]:
        """(others, steal) since construction, in CPUs (1.0: one CPU busy the whole time).
        A child that exited meanwhile leaves its time to `others`: measure across
        processes that live through it."""
        began, busy0, steal0, ours0 = self._start
        wall = time.monotonic() - began
        busy1, steal1 = _host_ticks()
        ours = self._ours() - ours0
        busy = (busy1 - busy0) / self._tick
        if wall <= 0:
            return 0.0, 0.0
        return max(0.0, busy - ours) / wall, (steal1 - steal0) / self._tick / wall


# ----------------------------------------------------------------------------- daemon


BENCH_CONFIG = """
[daemon]
log_level = "info"
coalesce_chunks = {coalesce_chunks}

[channels]
ring_size = {ring_size}
heartbeat = "1h"

[lifecycle]
max_warm = {max_warm}
idle_ttl = "{idle_ttl}"
sweep_interval = "{sweep_interval}"
probe_interval = "1h"
restart_backoff = "{restart_backoff}"
restart_max = {restart_max}
{lifecycle_extra}
[websocket]
enabled = {websocket}
host = "127.0.0.1"
port = 0
"""


def bench_config(*, ring_size: int = 8192, max_warm: int = 16, idle_ttl: str = "30m",
                 sweep_interval: str = "5s", websocket: bool = False,
                 restart_backoff: str = "0.5s", restart_max: int = 5,
                 extra: str = "", lifecycle_extra: str = "", coalesce_chunks: int = 0) -> str:
    """The daemon's defaults except where a scenario needs otherwise. Heartbeats and probes
    are pushed out of the way so they do not land inside a measurement. `lifecycle_extra`:
    more lines for the `[lifecycle]` table. Coalescing of text chunks is off unless asked
    for (`coalesce_chunks`, default 16 in the daemon): the `/chunks` floods the scenarios
    use measure the per-delta path, which coalescing would bypass (`ingest` reports both)."""
    return BENCH_CONFIG.format(ring_size=ring_size, max_warm=max_warm, idle_ttl=idle_ttl,
                               coalesce_chunks=coalesce_chunks,
                               sweep_interval=sweep_interval, lifecycle_extra=lifecycle_extra,
                               restart_backoff=restart_backoff, restart_max=restart_max,
                               websocket="true" if websocket else "false") + extra


class BenchDaemon(DaemonProcess):
    """The real daemon in a subprocess (private dirs), at log level info, with psutil
    readings of its own process."""

    def start_bench(self, timeout: float = 30.0) -> None:
        self.start(log_level="info", timeout=timeout)

    def process(self) -> psutil.Process:
        return psutil.Process(self.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU of the daemon process itself (agents excluded)."""
        times = self.process().cpu_times()
        return float(times.user + times.system)

    async def settled_cpu(self, quiet: float = 0.002, interval: float = 0.1,
                          timeout: float = 5.0) -> float:
        """The daemon's CPU seconds once it has stopped working: the condition is "less than
        `quiet` s of CPU in the last `interval`" (its batched commits, a restart's
        aftermath are done), checked until `timeout`."""
        last = self.cpu_seconds()
        with trio.move_on_after(timeout):
            while True:
                await trio.sleep(interval)
                now = self.cpu_seconds()
                if now - last < quiet:
                    return now
                last = now
        return last

    def rss(self) -> int:
        """Resident memory of the daemon process itself (agents excluded)."""
        return int(self.process().memory_info().rss)

    def agent_pids(self) -> list[int]:
        try:
            return [p.pid for p in self.process().children(recursive=True)]
        except psutil.Error:
            return []

    def close(self) -> None:
        self.cleanup()
        self.remove()


# ----------------------------------------------------------------------------- context


ECHO_ARGV = (sys.executable, "-m", "daemon.echo_agent")
"""The reference agent, exactly as the daemon's built-in `echo` spec runs it."""


@dataclass
class Context:
    """Options every scenario sees."""

    quick: bool
    runs: int
    progress: Callable[[str], None]

    def say(self, text: str) -> None:
        self.progress(text)
