"""A multi-process agent for the crash tests: starts helper processes, then becomes the
`echo` agent (exec, same pid: the leader the daemon spawned, in its own process group).

    python tests/support/two_process_agent.py PIDFILE stubborn|zombie

The helpers' stdin and stdout are /dev/null (so the agent's stdout ends when the leader
dies); their stderr is the agent's (they hold that pipe open, as real agents' tool
processes do). Their pids are written to PIDFILE, space-separated, before the exec.
* stubborn: one child in the agent's group that ignores SIGTERM (it lives until the stop's
  SIGKILL) and leaves a zombie child of its own, never waited for. PIDFILE: the child.
* zombie: a holder that leaves the agent's group (its own group, same session) and a
  member it forks back into the agent's group, which dies on SIGTERM. The holder never
  waits for it, so the dead member stays a zombie in the agent's group for as long as the
  holder lives (the test kills the holder). PIDFILE: holder, member.
Standard library only; no daemon imports.
"""

from __future__ import annotations

import os
import signal
import sys
import time


def _quiet() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)


def _write(pidfile: str, pids: list[int]) -> None:
    with open(pidfile + ".tmp", "w") as handle:
        handle.write(" ".join(map(str, pids)))
    os.replace(pidfile + ".tmp", pidfile)


def main() -> None:
    pidfile, mode = sys.argv[1], sys.argv[2]
    group = os.getpgid(0)
    child = os.fork()
    if child == 0:
        _quiet()
        if mode == "stubborn":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if os.fork() == 0:
                os._exit(0)
        else:
            os.setpgid(0, 0)
            member = os.fork()
            if member == 0:
                os.setpgid(0, group)
                time.sleep(600)
                os._exit(0)
            _write(pidfile, [os.getpid(), member])
        time.sleep(600)
        os._exit(0)
    if mode == "stubborn":
        _write(pidfile, [child])
    while not os.path.exists(pidfile):
        time.sleep(0.005)
    os.execvp(sys.executable, [sys.executable, "-m", "daemon.echo_agent"])


if __name__ == "__main__":
    main()
