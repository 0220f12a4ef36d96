"""Remote agents over SSH: computers, one pooled connection each, remote workspaces.

An agent configured with `computer = "NAME"` (or a chat opened with `--computer NAME`) runs
on that `[computers.NAME]` host while the daemon, its clients and its guarantees stay here.
The backend actor only sees an `Executor`; this package provides the remote one.

    bridge.py    the subsystem's one asyncio loop inside trio (trio-asyncio)
    computer.py  one host: one verified, kept-alive, reconnecting connection; orphans
    scripts.py   the POSIX sh launcher and tree-kill programs run over there
    process.py   an agent process there (`AgentProcess`): streams, wait, stop, kill
    streams.py   trio byte streams over SSH channels
    executor.py  `SshExecutor` (spawn, files, reclaim)
    sftp.py      SFTP with Python's errors; files.py: an agent's confined `fs/*`
    worktree.py  `SshWorktreeHost`: git worktrees over there, for workspaces and the reaper
    service.py   the subsystem: `prepare`, `setup`, reloads, `stoker computers`
    doctor.py    `stoker doctor`'s check per computer

See docs/REMOTE.md for setup, configuration, the security model and the limitations.
"""

from __future__ import annotations

from daemon.ssh.service import prepare, setup

__all__ = ["prepare", "setup"]
