"""Remote agents over SSH: computers, one pooled connection each, remote workspaces.

An agent configured with `computer = "NAME"` (or a chat opened with `--computer NAME`) runs
on that `[computers.NAME]` host while the daemon, its clients and its guarantees stay here.
The backend actor only sees an `Executor`; this package provides the remote one.

    bridge.py    the subsystem's one asyncio loop inside trio (trio-asyncio)
    computer.py  one host: one verified, kept-alive, reconnecting connection; orphans;
                 the remote port forward of the daemon's MCP endpoint (`forward`)
    forwards.py  that host's forwards, opened once per connection, re-opened after a loss
    mcp_stdio.py Stoker's MCP server for an agent there taking stdio only: a stdio entry
                 running mcp_bridge.py (a program for the host's python3) to the forward
    scripts.py   the POSIX sh launcher and tree-kill programs run over there
    process.py   an agent process there (`AgentProcess`): streams, wait, stop, kill
    streams.py   trio byte streams over SSH channels
    executor.py  `SshExecutor` (spawn, files, reclaim)
    sftp.py      SFTP with Python's errors; files.py: an agent's confined `fs/*`
    worktree.py  `SshWorktreeHost`: git worktrees over there, for workspaces and the reaper
    service.py   the subsystem: its two children's start/stop, reloads, `stoker computers`,
                 `forward` (given to the MCP endpoint by the root, for remote agents)
    (`stoker doctor`'s check per computer is `daemon.doctor.ssh`)

See docs/REMOTE.md for setup, configuration, the security model and the limitations.

The package imports none of its modules: asyncssh loads only when a computer is configured.
"""
