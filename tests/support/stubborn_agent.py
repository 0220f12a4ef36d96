"""The `echo` agent (with --linger: stdin's EOF does not end it) that notes each SIGTERM and
ignores it, so only the stop's SIGKILL ends it. For the parallel-stop test.

    python tests/support/stubborn_agent.py DIRECTORY

Each SIGTERM writes `DIRECTORY/<pid>.term` holding `time.time()` at that moment.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from types import FrameType

from daemon.echo_agent.agent import EchoAgent, parse_options


def main() -> None:
    directory = sys.argv[1]

    def noted(signum: int, frame: FrameType | None) -> None:
        path = os.path.join(directory, f"{os.getpid()}.term")
        with open(path + ".tmp", "w") as handle:
            handle.write(repr(time.time()))
        os.replace(path + ".tmp", path)

    agent = EchoAgent(parse_options(["--linger"]), sys.stdin.buffer, sys.stdout.buffer,
                      sys.stderr)
    signal.signal(signal.SIGTERM, noted)
    sys.exit(agent.serve())


if __name__ == "__main__":
    main()
