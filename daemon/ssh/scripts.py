"""The small POSIX sh programs the daemon runs on a remote computer, and their parsers.

Everything that crosses to the remote shell is argv: a fixed script (single-quoted with
`shlex.quote`) plus positional arguments, each quoted. No path, branch, environment value or
command word is ever spliced into script text, so `$(rm -rf ~)` is just an odd file name.

Environment values are the exception: they are not argv at all. The command line of every
process is world-readable on the remote host (/proc/PID/cmdline, `ps`), and an agent's
environment holds its API keys. The launcher reads them from its stdin instead, one
variable a line, before it execs the command (whose stdin is the same channel, so the agent
reads its own input right after them). Each value travels as ASCII with every other byte
(and backslash) as a `\\0ooo` escape that the shell's `printf %b` undoes; `read` takes a pipe
byte by byte, so it never swallows what follows the block.

The launcher starts a process in a process group of its own and reports who it is before it
becomes the agent: the first line on stdout is `stoker-launch PID PGID STARTTIME` (STARTTIME
from /proc/PID/stat, in clock ticks since boot: with the pid it identifies the process even
after the pid is reused). Stage 1 makes the shell a group leader: OpenSSH already starts
every session with setsid(2), so usually it only re-executes itself; otherwise `setsid` (which
does not fork for a process that is not a group leader) makes a new session. Stage 2 changes
to the working directory, exports the environment, checks that the command exists, prints
the identity line and execs the command, so PID is the agent itself.

`TREE_KILL` signals a process group and every process that carries the actor's marker in its
environment (those that left the group), waits up to a number of 50 ms ticks for them to go,
then SIGKILLs what is left: the remote twin of `LocalProcess.stop` and `reclaim_local`. A
zombie does not count as alive (an orphan's zombie may never be reaped in a container).

Remote requirements: Linux (/proc), a POSIX sh, `setsid`, `sed`, `cut`, `awk`, and a `grep` with
`-z` (GNU or busybox).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from daemon.execution.environment import SYSTEMD_ENV_VARS

IDENTITY_PREFIX = b"stoker-launch "
ERROR_PREFIX = b"stoker-launch-error "

SCRUB = tuple(sorted(SYSTEMD_ENV_VARS))
"""Never passed to a remote process (systemd's per-service variables), as locally: the
list `sdnotify` keeps, so the two cannot drift apart. Sorted, so that the launch command
is the same from one daemon run to the next."""

_STAGE1 = (
    'p=$(sed "s/.*) //" /proc/$$/stat 2>/dev/null | cut -d" " -f3)\n'
    'if [ "$p" = "$$" ]; then exec /bin/sh -c "$@"; fi\n'
    'exec setsid /bin/sh -c "$@"\n'
)

_STAGE2 = (
    'd=$1; m=$2; n=$3; shift 3\n'
    'while [ "$n" -gt 0 ]; do\n'
    '  IFS= read -r e || { echo "stoker-launch-error env"; exit 126; }\n'
    '  case $e in\n'
    '    -*) unset "${e#-}";;\n'
    '    *) v=$(printf "%bx" "${e#*=}"); export "${e%%=*}=${v%x}";;\n'
    '  esac\n'
    '  n=$((n - 1))\n'
    'done\n'
    'case $d in "~") d=$HOME;; "~/"*) d=$HOME/${d#"~/"};; esac\n'
    'cd "$d" 2>/dev/null || { echo "stoker-launch-error cwd"; exit 126; }\n'
    'command -v "$1" >/dev/null 2>&1 || { echo "stoker-launch-error notfound"; exit 127; }\n'
    'i=$(sed "s/.*) //" /proc/$$/stat | cut -d" " -f3,20) || exit 126\n'
    'echo "stoker-launch $$ $i"\n'
    'if [ "$m" = 1 ]; then exec "$@" 2>&1; fi\n'
    'exec "$@"\n'
)

TREE_KILL = (
    'g=$1; t=$2; pat=$3; lead=$4; start=$5\n'
    'if [ -n "$lead" ]; then\n'
    '  s=$(sed "s/.*) //" "/proc/$lead/stat" 2>/dev/null | cut -d" " -f3,20)\n'
    '  if [ -n "$s" ] && [ "${s#* }" = "$start" ]; then g=${s%% *}; else g=""; fi\n'
    'fi\n'
    'marked() {\n'
    '  [ -n "$pat" ] || return 0\n'
    '  grep -lsaz -e "$pat" /proc/[0-9]*/environ 2>/dev/null |'
    ' sed -n "s,^/proc/\\([0-9]*\\)/environ$,\\1,p"\n'
    '}\n'
    'sig() {\n'
    '  [ -n "$g" ] && kill -"$1" "-$g" 2>/dev/null\n'
    '  for p in $(marked); do [ "$p" = "$$" ] || kill -"$1" "$p" 2>/dev/null; done\n'
    '}\n'
    'alive() {\n'
    '  { [ -n "$g" ] && cat /proc/[0-9]*/stat 2>/dev/null | awk -v g="$g" \''
    '{ sub(/.*\\) /, ""); if ($3 == g && $1 != "Z") { f = 1; exit } } END { exit !f }\'; } ||\n'
    '  [ -n "$(marked)" ]\n'
    '}\n'
    'found=0; alive && found=1\n'
    'if [ "$found" = 1 ]; then\n'
    '  sig TERM; i=0\n'
    '  while [ "$i" -lt "$t" ] && alive; do sleep 0.05; i=$((i + 1)); done\n'
    '  sig KILL\n'
    'fi\n'
    'echo "found=$found"\n'
)

RSS = "ps -e -o pgid= -o rss="
"""Resident memory (KiB) of every process with its group: summed per agent group."""

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def sh(script: str, *args: str) -> str:
    """A command line running `script` with /bin/sh and `args` as $1, $2, ..."""
    return " ".join(["exec", "/bin/sh", "-c", shlex.quote(script), "stoker",
                     *(shlex.quote(a) for a in args)])


@dataclass(frozen=True, slots=True)
class Launch:
    """How to start a remote process: the exec request, and the bytes to write on its stdin
    first."""

    command: str
    """The exec request. Holds no environment value (see the module doc)."""
    stdin: bytes
    """The environment block the launcher reads before it starts the command."""


_PLAIN = frozenset(range(0x20, 0x7F)) - {ord("\\")}


def escape_value(value: str) -> str:
    """`value` as one line of printable ASCII that `printf %b` turns back into its bytes:
    every byte but printable ASCII (and backslash itself) as `\\0ooo`. The trailing `x` the
    launcher adds and strips keeps trailing newlines, which `$(...)` would drop."""
    data = value.encode("utf-8", "surrogateescape")
    return "".join(chr(b) if b in _PLAIN else f"\\0{b:03o}" for b in data)


def launch_command(argv: Sequence[str], *, cwd: str, env: Mapping[str, str],
                   unset: Sequence[str] = (), merge_stderr: bool = False) -> Launch:
    """Start `argv` in `cwd` (may be `~` or `~/...`) with `env` added to the login
    environment and `unset` (plus `SCRUB`) removed: the exec request carries `argv` and
    `cwd`, the environment goes on stdin."""
    if not argv:
        raise ValueError("empty command")
    changes = [f"-{name}" for name in (*SCRUB, *unset) if _ENV_NAME.match(name)]
    changes += [f"{k}={escape_value(v)}" for k, v in env.items()
                if _ENV_NAME.match(k) and k not in SCRUB]
    stage2_args = [cwd, "1" if merge_stderr else "0", str(len(changes)), *argv]
    command = " ".join(["exec", "/bin/sh", "-c", shlex.quote(_STAGE1), "stoker-launch",
                        shlex.quote(_STAGE2), "stoker-agent",
                        *(shlex.quote(a) for a in stage2_args)])
    return Launch(command=command, stdin="".join(f"{c}\n" for c in changes).encode("ascii"))


def tree_kill_command(*, pgid: int | None, ticks: int, actor: str,
                      leader: tuple[int, float] | None = None) -> str:
    """TERM the group and the marked processes, wait `ticks` x 50 ms, KILL the rest. With
    `leader` (pid, start time), the group is only touched when that process still exists
    with that start time (after a daemon crash the pid may belong to someone else)."""
    lead, start = ("", "") if leader is None else (str(leader[0]), f"{int(leader[1])}")
    return sh(TREE_KILL, str(pgid or ""), str(max(0, ticks)), marker_pattern(actor) if actor
              else "", lead, start)


_BRE_SPECIAL = re.compile(r"([.\[\]\\*^$])")


def marker_pattern(actor: str) -> str:
    """A `grep -z` BRE matching the environment entry of `actor` and of its terminals
    (`actor/term-N`), and nothing else."""
    escaped = _BRE_SPECIAL.sub(r"\\\1", actor)
    return "^STOKER_ACTOR=" + escaped + r"\(/.*\)\{0,1\}$"


@dataclass(frozen=True, slots=True)
class Launched:
    pid: int
    pgid: int
    start: int


class LaunchFailed(Exception):
    """The launcher refused: `reason` is `cwd`, `notfound` or `env` (its stdin ended
    before the environment did)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_identity(line: bytes) -> Launched:
    """The launcher's first line. Raises `LaunchFailed` for its refusals, `ValueError` for
    anything else (then whatever the shell said on stderr is the explanation)."""
    line = line.strip()
    if line.startswith(ERROR_PREFIX.strip()):
        raise LaunchFailed(line[len(ERROR_PREFIX):].decode("ascii", "replace").strip())
    if not line.startswith(IDENTITY_PREFIX.strip()):
        raise ValueError(f"unexpected launcher output {line[:200]!r}")
    parts = line.split()
    if len(parts) != 4:
        raise ValueError(f"unexpected launcher output {line[:200]!r}")
    return Launched(pid=int(parts[1]), pgid=int(parts[2]), start=int(parts[3]))


def parse_rss(output: bytes) -> dict[int, int]:
    """`RSS` output -> bytes per process group."""
    groups: dict[int, int] = {}
    for raw in output.splitlines():
        fields = raw.split()
        if len(fields) != 2:
            continue
        try:
            pgid, kib = int(fields[0]), int(fields[1])
        except ValueError:
            continue
        groups[pgid] = groups.get(pgid, 0) + kib * 1024
    return groups
