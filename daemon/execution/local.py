"""Where agent processes run: one interface, a local and an SSH implementation.

The backend actor only sees `Executor` and `AgentProcess`: spawn an argv with an environment
and a working directory, get three byte streams, wait for the exit, stop the whole process
tree. File and terminal services for the agent go through the same executor, so an agent on
another host reads and writes files on *that* host.

Local processes start in their own session (so their own process group): stopping is SIGTERM
to the group, a grace period, SIGKILL to the group, then a sweep for descendants that moved to
another group. Every agent process carries `STOKER_INSTANCE` and `STOKER_ACTOR` in its
environment; after a daemon crash, `reclaim` kills the leader only when pid *and* create time
match the record, and the leftovers only when they carry our markers, so a reused pid is never
killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import msgspec
import psutil
import trio

from daemon.execution.environment import scrub_systemd_env
from daemon.execution.fs import AccessDenied, LocalFiles, confine
from daemon.execution.processes import PROCESSES
from daemon.log import Log

INSTANCE_VAR = "STOKER_INSTANCE"
ACTOR_VAR = "STOKER_ACTOR"


def child_environment(base: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The environment for a child process: `base` without systemd's per-service variables
    (a child must not ping our watchdog or claim our sockets), plus `extra`."""
    env = scrub_systemd_env(base)
    env.update(extra)
    return env


class ProcessIdentity(msgspec.Struct, frozen=True):
    """Enough to find an agent process again after a daemon crash, and never another one."""

    pid: int
    pgid: int
    start_time: float
    computer: str | None = None
    actor: str = ""


@dataclass(frozen=True, slots=True)
class ExitStatus:
    code: int | None
    signal: int | None
    detail: str = ""
    """Why the process is gone when there is no status to tell: a remote agent whose SSH
    connection was lost ("was cut off: the connection to computer 'x' (...) was lost")."""

    def describe(self) -> str:
        if self.detail:
            return self.detail
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exited with status {self.code}"


class SpawnError(Exception):
    """The agent could not be started at all (missing binary, bad cwd, permissions)."""

    transient = False
    """True when trying again later may work (a remote computer that cannot be reached right
    now): the backend then counts it as a failed start under the restart policy instead of
    giving up at once."""


class AgentProcess(Protocol):
    @property
    def stdin(self) -> trio.abc.SendStream: ...
    @property
    def stdout(self) -> trio.abc.ReceiveStream: ...
    @property
    def stderr(self) -> trio.abc.ReceiveStream: ...
    @property
    def identity(self) -> ProcessIdentity: ...
    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> ExitStatus: ...

    async def stop(self, grace: float) -> ExitStatus:
        """SIGTERM the tree, wait up to `grace`, then SIGKILL what is left."""
        ...

    def kill(self) -> None:
        """SIGKILL the whole tree now (no waiting)."""
        ...

    def rss(self) -> int | None:
        """Resident memory of the process tree in bytes (blocking; call from a thread)."""
        ...


class Files(Protocol):
    """File services for an agent, confined to its working directory."""

    async def read_text(self, path: str, line: int | None, limit: int | None) -> str: ...

    async def write_text(self, path: str, content: str) -> None: ...

    async def directory(self, path: str | None) -> str:
        """The real path of the directory `path` (relative to the root, or absolute; the
        root itself when None). `AccessDenied` when it is outside the root or not a
        directory."""
        ...


class Executor(Protocol):
    name: str
    """`local`, or the computer's name."""

    def files(self, root: str) -> Files: ...

    async def spawn(self, argv: list[str], *, env: Mapping[str, str], cwd: str,
                    actor: str, merge_stderr: bool = False) -> AgentProcess:
        """Start `argv`. With `merge_stderr`, stderr goes into stdout (one ordered stream,
        as in a terminal) and `stderr` yields nothing."""
        ...

    async def reclaim(self, identity: ProcessIdentity) -> bool:
        """Kill a leftover agent tree from a previous daemon life. True if anything was
        killed."""
        ...


# --------------------------------------------------------------------------- local


def _status_from_returncode(returncode: int) -> ExitStatus:
    if returncode < 0:
        return ExitStatus(code=None, signal=-returncode)
    return ExitStatus(code=returncode, signal=None)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def _kill_processes(procs: list[psutil.Process]) -> int:
    killed = 0
    for proc in procs:
        try:
            if proc.is_running():
                proc.kill()
                killed += 1
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            pass
    return killed


def _running(proc: psutil.Process) -> bool:
    """Alive and not a zombie. Orphans are reaped by whatever PID 1 is; in containers that
    may never happen, and a zombie holds no resources worth waiting for."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until none of `procs` runs; returns those still running at the deadline."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.02)
        alive = [p for p in alive if _running(p)]
    return alive


GROUP_POLL = 0.02
"""How often a stop looks whether its process group still runs."""


def tree_rss(pid: int) -> int | None:
    return PROCESSES.tree_rss(pid)


def _escaped(pid: int, since: float) -> list[psutil.Process]:
    """`pid`'s descendants (to find those that leave its group), from a scan begun after
    the stop was asked for, shared with the other stops of the moment."""
    procs: list[psutil.Process] = []
    for child in PROCESSES.descendants(pid, since):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied,
                                 psutil.ZombieProcess):
            procs.append(psutil.Process(child))  # pins its create time against pid reuse
    return procs


class _EmptyStream(trio.abc.ReceiveStream):
    """The stderr of a process whose stderr was merged into stdout: always at EOF."""

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        return b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class ProcessStreams:
    """The half of an `AgentProcess` that does not depend on where the process runs: its
    three streams, its identity, the ACP goodbye and closing the streams. `LocalProcess` and
    the SSH one (`daemon/ssh/process.py`) build on it, so both say goodbye the same way."""

    def __init__(self, stdin: trio.abc.SendStream, stdout: trio.abc.ReceiveStream,
                 stderr: trio.abc.ReceiveStream, identity: ProcessIdentity) -> None:
        self._stdin = stdin
        self._stdout = stdout
        self._stderr = stderr
        self._identity = identity

    @property
    def stdin(self) -> trio.abc.SendStream:
        return self._stdin

    @property
    def stdout(self) -> trio.abc.ReceiveStream:
        return self._stdout

    @property
    def stderr(self) -> trio.abc.ReceiveStream:
        return self._stderr

    @property
    def identity(self) -> ProcessIdentity:
        return self._identity

    async def _say_goodbye(self, grace: float, ended: Callable[[], Awaitable[object]]) -> None:
        """Close stdin and wait up to half a second (at most `grace`) for `ended`: EOF on
        stdin is how an ACP client says goodbye, and most agents exit at once, before any
        signal is needed."""
        with contextlib.suppress(Exception):
            await self._stdin.aclose()
        with trio.move_on_after(min(0.5, grace)):
            await ended()

    async def _close_streams(self) -> None:
        for stream in (self._stdin, self._stdout, self._stderr):
            with contextlib.suppress(Exception):
                await stream.aclose()


async def _group_alive(pgid: int, scans: trio.CapacityLimiter) -> bool:
    """Whether a process of the group still runs. Zombies do not count: `killpg(pgid, 0)`
    succeeds while a member is a zombie, and an orphaned zombie stays until PID 1 reaps it,
    which a container's PID 1 may never do (a stop would wait out its whole grace)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    runs = PROCESSES.group_runs_now(pgid, GROUP_POLL)
    if runs is None:
        runs = await trio.to_thread.run_sync(PROCESSES.group_runs, pgid, GROUP_POLL,
                                             limiter=scans)
    return runs


class LocalProcess(ProcessStreams):
    """An agent process on this host, leader of its own process group."""

    def __init__(self, proc: trio.Process, identity: ProcessIdentity,
                 scans: trio.CapacityLimiter | None = None) -> None:
        assert proc.stdin is not None
        assert proc.stdout is not None
        super().__init__(proc.stdin, proc.stdout, proc.stderr or _EmptyStream(), identity)
        self._proc = proc
        self._status: ExitStatus | None = None
        self._scans = scans or trio.CapacityLimiter(1)

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> ExitStatus:
        if self._status is None:
            code = await self._proc.wait()
            self._status = _status_from_returncode(code)
        return self._status

    async def stop(self, grace: float) -> ExitStatus:
        pgid = self._identity.pgid
        escaped = await trio.to_thread.run_sync(_escaped, self._proc.pid, time.monotonic(),
                                                limiter=self._scans)
        if self._proc.returncode is None:
            await self._say_goodbye(grace, self.wait)
        _signal_group(pgid, signal.SIGTERM)
        with trio.move_on_after(grace):
            await self.wait()
            # The leader is gone; give the rest of its group the same grace.
            while await _group_alive(pgid, self._scans):
                await trio.sleep(GROUP_POLL)
        _signal_group(pgid, signal.SIGKILL)
        status = await self.wait()
        if escaped:
            await trio.to_thread.run_sync(_kill_processes, escaped, limiter=self._scans)
        await self._close_streams()
        return status

    def kill(self) -> None:
        _signal_group(self._identity.pgid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self._proc.kill()

    def rss(self) -> int | None:
        # Called from a worker thread: trio.Process.returncode may reap the child and close
        # its pidfd, which only the trio thread may do (RuntimeError "must be called from
        # async context" when `inspect` races an agent's death). `_status` is set by wait()
        # on the trio thread; an exited, unreaped child is a zombie, which holds no memory.
        if self._status is not None:
            return None
        return tree_rss(self._proc.pid)


class LocalExecutor:
    """Runs agents as child processes of the daemon."""

    name = "local"

    def __init__(self, instance: str) -> None:
        self.instance = instance
        self._log = Log("exec")
        self._file_threads = trio.CapacityLimiter(FILE_THREADS)
        self._scan_threads = trio.CapacityLimiter(1)
        """Process-table scans of stopping agents: one worker thread, not trio's shared
        ones (a shutdown's hundreds of stops must not queue the store's commits), and one
        at a time is all they need since they share each scan."""

    async def spawn(self, argv: list[str], *, env: Mapping[str, str], cwd: str,
                    actor: str, merge_stderr: bool = False) -> LocalProcess:
        full_env = child_environment(env, {INSTANCE_VAR: self.instance, ACTOR_VAR: actor})
        try:
            proc = await trio.lowlevel.open_process(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            missing = exc.filename or argv[0]
            if missing == cwd or not os.path.isdir(cwd):
                raise SpawnError(f"working directory {cwd!r} does not exist") from None
            raise SpawnError(f"command not found: {argv[0]!r}") from None
        except PermissionError as exc:
            raise SpawnError(f"cannot execute {argv[0]!r}: {exc.strerror}") from None
        except OSError as exc:
            raise SpawnError(f"cannot start {argv[0]!r}: {exc}") from None
        try:
            start = psutil.Process(proc.pid).create_time()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            start = 0.0
        identity = ProcessIdentity(pid=proc.pid, pgid=proc.pid, start_time=start,
                                   computer=None, actor=actor)
        return LocalProcess(proc, identity, self._scan_threads)

    async def reclaim(self, identity: ProcessIdentity) -> bool:
        return await trio.to_thread.run_sync(reclaim_local, identity)

    def files(self, root: str) -> LocalAsyncFiles:
        return LocalAsyncFiles(LocalFiles(root), self._file_threads)


FILE_THREADS = 8
"""Worker threads all agents' file requests may hold at once. They have their own
`CapacityLimiter`, not trio's default one (40 threads, shared with the store's writer and
reader): a file system that stops answering (a hung network mount) then queues only other
agents' file requests, never a commit."""


class LocalAsyncFiles:
    """`LocalFiles` run in worker threads, so a slow disk never blocks the event loop.

    The threads come from `limiter` (the executor's, see `FILE_THREADS`). A request whose
    turn is cancelled, or whose daemon stops, does not wait for its thread
    (`abandon_on_cancel`): a read stuck in the kernel must not hold up a cancel or a
    SIGTERM; the thread's answer is dropped and its limiter token returns when it ends.
    """

    def __init__(self, files: LocalFiles, limiter: trio.CapacityLimiter) -> None:
        self._files = files
        self._limiter = limiter

    async def read_text(self, path: str, line: int | None, limit: int | None) -> str:
        return await trio.to_thread.run_sync(self._files.read_text, path, line, limit,
                                             limiter=self._limiter, abandon_on_cancel=True)

    async def write_text(self, path: str, content: str) -> None:
        await trio.to_thread.run_sync(self._files.write_text, path, content,
                                      limiter=self._limiter, abandon_on_cancel=True)

    async def directory(self, path: str | None) -> str:
        root = self._files.root

        def resolve() -> str:
            real = confine(root, path) if path else os.path.realpath(root)
            if not os.path.isdir(real):
                raise AccessDenied(f"{path or root} is not a directory")
            return real

        return await trio.to_thread.run_sync(resolve, limiter=self._limiter,
                                             abandon_on_cancel=True)


def _has_marker(proc: psutil.Process, actor: str) -> bool:
    try:
        environ = proc.environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, OSError):
        return False
    # Terminals of an actor carry `<actor>/<terminal id>`: they are the actor's too.
    marker = environ.get(ACTOR_VAR, "")
    return INSTANCE_VAR in environ and (marker == actor or marker.startswith(actor + "/"))


def reclaim_local(identity: ProcessIdentity) -> bool:
    """Kill what is left of an agent tree recorded by a previous daemon life.

    The leader is killed only if its pid *and* create time match the record. Other
    processes are killed only if they carry the recorded `STOKER_ACTOR` marker, which an
    unrelated process that happens to reuse a pid cannot have.
    """
    targets: list[psutil.Process] = []
    try:
        leader = psutil.Process(identity.pid)
        if abs(leader.create_time() - identity.start_time) < 0.05:
            targets.append(leader)
            targets.extend(_descendants(identity.pid))
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        pass
    if identity.actor:
        seen = {p.pid for p in targets}
        for proc in psutil.process_iter():
            if proc.pid in seen or proc.pid == os.getpid():
                continue
            try:
                if proc.create_time() + 0.05 < identity.start_time:
                    continue
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if _has_marker(proc, identity.actor):
                targets.append(proc)
    if not targets:
        return False
    for proc in targets:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            proc.terminate()
    alive = _wait_gone(targets, timeout=2.0)
    _kill_processes(alive)
    _wait_gone(alive, timeout=2.0)
    Log("exec").info("reclaimed orphaned agent processes", pids=[p.pid for p in targets],
                     actor=identity.actor)
    return True
