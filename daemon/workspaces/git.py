"""Running git: argv only, bounded in time, with a predictable environment.

Every git call of the daemon goes through `run_git` (or a host's equivalent for another
computer). No shell ever sees a path or a branch name, so a branch called `$(rm -rf ~)` is
just an odd branch name. A call that outlives its timeout is killed with its whole process
group (git may have started hooks or ssh) and reported as `GitTimeout`, which callers that
decide about deletion treat as "keep".

The environment is the daemon's, minus systemd's per-service variables and minus the git
variables that would redirect git to another repository or index (a daemon started from a
git hook inherits `GIT_DIR`), plus `GIT_TERMINAL_PROMPT=0` (never wait for a password),
`LC_ALL=C` (messages we can match) and `GIT_OPTIONAL_LOCKS=0` (a status check must not take
the index lock an agent's own git command may want).

The parsers at the bottom are pure.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio

from daemon.errors import GitError
from daemon.execution.local import child_environment

_REDIRECTING = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR",
                "GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_NAMESPACE",
                "GIT_PREFIX", "GIT_CEILING_DIRECTORIES", "GIT_DISCOVERY_ACROSS_FILESYSTEM")

FIXED_ENV = {"GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", "GIT_OPTIONAL_LOCKS": "0"}

DEFAULT_CONFIG = ("-c", "core.quotepath=off", "-c", "color.ui=false")
"""Passed before every subcommand: output we can parse regardless of the user's config."""


class GitFailed(GitError):
    """git ran and exited non-zero."""

    def __init__(self, message: str, *, argv: Sequence[str], returncode: int,
                 stderr: str) -> None:
        super().__init__(message, detail={"argv": list(argv), "returncode": returncode,
                                          "stderr": stderr[-2000:]})
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr


class GitTimeout(GitError):
    """git did not finish within the timeout and was killed."""


@dataclass(frozen=True, slots=True)
class GitResult:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", errors="surrogateescape")

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def git_environment(base: Mapping[str, str] | None = None,
                    extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = child_environment(os.environ if base is None else base, FIXED_ENV)
    for name in _REDIRECTING:
        env.pop(name, None)
    if extra:
        env.update(extra)
    return env


def describe(argv: Sequence[str]) -> str:
    """`git worktree add` for messages: the subcommand without paths or options."""
    words = [a for a in argv[1:] if not a.startswith("-")]
    cut = words[:2] if words[:1] in (["worktree"], ["rev-parse"]) else words[:1]
    return " ".join(["git", *cut])


def checked(argv: Sequence[str], result: GitResult) -> GitResult:
    """`result` when git exited 0, else `GitFailed` naming the subcommand and git's last
    line on stderr: one message for a failure here and on a remote computer."""
    if result.returncode != 0:
        stderr = result.stderr
        first = stderr.splitlines()[-1] if stderr else f"exit status {result.returncode}"
        raise GitFailed(f"{describe(argv)} failed: {first}", argv=argv,
                        returncode=result.returncode, stderr=stderr)
    return result


async def run_git(args: Sequence[str], *, cwd: str | None, timeout: float,
                  env: Mapping[str, str] | None = None, check: bool = True,
                  stdin: bytes | None = None) -> GitResult:
    """Run `git ARGS` locally. Raises `GitTimeout`, `GitFailed` (when `check` and the exit
    status is not 0) or `GitError` (git missing, bad cwd)."""
    argv = ["git", *DEFAULT_CONFIG, *args]

    async def kill_group(proc: trio.Process) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    result: subprocess.CompletedProcess[bytes] | None = None
    with trio.move_on_after(timeout) as scope:
        try:
            result = await trio.run_process(
                argv, cwd=cwd, env=git_environment(extra=env), check=False,
                capture_stdout=True, capture_stderr=True, stdin=stdin or b"",
                start_new_session=True, deliver_cancel=kill_group)
        except FileNotFoundError as exc:
            if cwd is not None and not os.path.isdir(cwd):
                raise GitError(f"directory does not exist: {cwd}") from None
            raise GitError(f"git is not installed ({exc.strerror})") from None
        except NotADirectoryError:
            raise GitError(f"not a directory: {cwd}") from None
        except PermissionError as exc:
            raise GitError(f"cannot run git in {cwd}: {exc.strerror}") from None
    if scope.cancelled_caught or result is None:
        raise GitTimeout(f"{describe(argv)} did not finish within {timeout:g}s"
                         + (f" in {cwd}" if cwd else "") + "; it was stopped")
    stderr = result.stderr.decode("utf-8", errors="replace").strip()
    outcome = GitResult(result.returncode, result.stdout, stderr)
    return checked(argv, outcome) if check else outcome


# ---------------------------------------------------------------------- pure parsers


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str
    insertions: int
    deletions: int
    binary: bool = False


def parse_numstat(data: bytes) -> list[FileChange]:
    """`git diff --numstat -z --no-renames`: `INS\\tDEL\\tPATH\\0` per file (`-` counts
    for binary files)."""
    changes: list[FileChange] = []
    for record in data.split(b"\0"):
        if not record:
            continue
        parts = record.split(b"\t", 2)
        if len(parts) != 3:
            raise ValueError(f"unexpected numstat record {record[:200]!r}")
        ins, dels, path = parts
        name = path.decode("utf-8", errors="surrogateescape")
        if ins == b"-" or dels == b"-":
            changes.append(FileChange(name, 0, 0, binary=True))
        else:
            changes.append(FileChange(name, int(ins), int(dels)))
    return changes


def summary_line(changes: Sequence[FileChange]) -> str:
    """git's own `--stat` summary line (" 3 files changed, 5 insertions(+), 1 deletion(-)")."""
    if not changes:
        return ""
    files = len(changes)
    ins = sum(c.insertions for c in changes)
    dels = sum(c.deletions for c in changes)
    parts = [f" {files} file{'s' if files != 1 else ''} changed"]
    if ins or not dels:
        parts.append(f"{ins} insertion{'s' if ins != 1 else ''}(+)")
    if dels or not ins:
        parts.append(f"{dels} deletion{'s' if dels != 1 else ''}(-)")
    return ", ".join(parts)


def status_is_dirty(porcelain_v2: bytes) -> bool:
    """Any entry in `git status --porcelain=v2 -uall` output (header lines start with `#`)
    means uncommitted work: modified, staged, untracked, unmerged."""
    return any(line and not line.startswith(b"#") for line in porcelain_v2.splitlines())


def parse_cherry(data: bytes) -> tuple[frozenset[str], frozenset[str]]:
    """`git cherry REF HEAD`: (`+` commits, `-` commits)."""
    plus: set[str] = set()
    minus: set[str] = set()
    for line in data.decode("ascii", errors="replace").splitlines():
        mark, _, sha = line.strip().partition(" ")
        if mark == "+":
            plus.add(sha.strip())
        elif mark == "-":
            minus.add(sha.strip())
    return frozenset(plus), frozenset(minus)


def parse_lines(data: bytes) -> list[str]:
    return [line.strip() for line in data.decode("utf-8", errors="surrogateescape")
            .splitlines() if line.strip()]
