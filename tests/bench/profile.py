"""Profile the daemon under one benchmark workload with py-spy (sampling, from outside).

    python -m tests.bench.profile WORKLOAD [--out DIR] [--rate HZ] [--gil]

WORKLOAD is one of `ingest` (one `/chunks 100000` turn to one Unix subscriber: the per-delta
path from the agent's pipe to the socket), `fanout` (`/chunks 50000` to 8 Unix subscribers),
`ws` (`/chunks 20000` to 8 WebSocket subscribers), `turns` (500 warm three-chunk turns) and
`replay` (100k deltas replayed from the ring, then from the log). py-spy (`pip install
py-spy`; not a project dependency) attaches to the daemon's pid, writes collapsed stacks to
DIR/WORKLOAD.txt, and the summary printed here ranks functions by own samples and by
samples under them (the profiles docs/PERFORMANCE.md cites).
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from protocol import messages as m
from tests.support.harness import subscribe

from . import bench_fanout, bench_turn
from .common import BenchDaemon, bench_config
from .wire import RawSubscriber, Transport, timed_client

WORKLOADS = ("ingest", "fanout", "ws", "turns", "replay")


async def _workload(name: str, daemon: BenchDaemon) -> None:
    token = daemon.cli("token").stdout.strip()
    async with daemon.client("profile") as control:
        status: m.StatusResult = await control.request(m.GetStatus(id=0))
        info: m.ChatInfo = await control.request(m.OpenChat(id=0, agent="echo",
                                                            cwd=str(daemon.work)))
        await control.request(m.Warm(id=0, chat=info.chat))
        if name == "turns":
            async with timed_client(daemon.socket) as client:
                await subscribe(client, info.chat)
                for _ in range(500):
                    await bench_turn._daemon_turn(client, info.chat)
            return
        if name == "replay":
            await bench_fanout._once(daemon, control, info.chat, "unix", 1, 100_000, None,
                                     None)
            detail: m.ChatDetail = await control.request(m.Inspect(id=0, chat=info.chat))
            for _ in range(5):
                sub = await RawSubscriber.unix(daemon.socket)
                await sub.subscribe(info.chat, detail.chat.head_seq - 100_000, live=False,
                                    wait_complete=False)
                await sub.count_until(b"replay_complete")
                await sub.aclose()
            return
        shapes: dict[str, tuple[Transport, int, int]] = {
            "ingest": ("unix", 1, 100_000), "fanout": ("unix", 8, 50_000),
            "ws": ("ws", 8, 20_000)}
        transport, count, chunks = shapes[name]
        await bench_fanout._once(daemon, control, info.chat, transport,
                                 count, chunks, status.websocket, token)


def _function(frame: str) -> str:
    """`name (file:line)` -> `name (file)`: samples of one function add up."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0]})" if where else name


def summarize(path: Path, top: int = 25) -> str:
    """Per thread: share of samples; for the trio thread (the event loop, where the hot
    path runs): functions ranked by own samples and by samples under them."""
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    total = main = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        thread = frames[0].split(" (")[0] if frames[0].startswith("thread") else "?"
        label = "MainThread" if "MainThread" in frames[0] else thread
        threads[label] += count
        if label != "MainThread":
            continue
        main += count
        functions = [_function(f) for f in frames[1:]]
        if functions:
            own[functions[-1]] += count
        for function in set(functions):
            under[function] += count
    lines = [f"{total} samples; by thread: " + ", ".join(
        f"{name} {100 * n / max(total, 1):.0f}%" for name, n in threads.most_common(4))]
    for title, counter in (("own", own), ("inclusive", under)):
        lines.append(f"-- main thread: top {top} functions by {title} samples")
        for frame, count in counter.most_common(top):
            lines.append(f"  {100 * count / max(main, 1):5.1f}%  {frame}")
    return "\n".join(lines)


def _wait_sampling(recorder: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Wait until py-spy says it is sampling (its first line, on stdout), so that the workload
    starts under the profiler, not before it attached."""
    assert recorder.stdout is not None
    deadline = time.monotonic() + timeout
    seen = b""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([recorder.stdout], [], [], left)
        if not readable:
            break
        chunk = os.read(recorder.stdout.fileno(), 4096)
        if not chunk:
            raise RuntimeError(f"py-spy exited: {seen.decode(errors='replace')}")
        seen += chunk
        if b"Sampling" in seen:
            return
    raise RuntimeError(f"py-spy did not start sampling in {timeout:g}s: {seen!r}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.profile")
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--out", type=Path, default=Path("/tmp/stoker-profiles"))
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--gil", action="store_true",
                        help="sample only the thread holding the GIL (py-spy --gil): where "
                        "the interpreter's time goes, GIL waits left out")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"{args.workload}.txt"
    daemon = BenchDaemon(config=bench_config(websocket=args.workload == "ws",
                                             ring_size=131072))
    try:
        daemon.start_bench()
        recorder = subprocess.Popen(
            [spy, "record", "--pid", str(daemon.pid), "--rate", str(args.rate), "--format",
             "raw", "--output", str(target), "--nonblocking", "--threads",
             *(["--gil"] if args.gil else [])],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        _wait_sampling(recorder)
        trio.run(_workload, args.workload, daemon)
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)
    finally:
        daemon.close()
    print(summarize(target))
    return 0


if __name__ == "__main__":
    sys.exit(main())
