"""Issue 16: a remote agent's environment (its API keys) never appears in a command line.

The launcher of `daemon/ssh/scripts.py` gets the environment on its stdin; these tests run
it as an SSH server would (`sh -c` the exec request, in a new session) with the real shells
of this machine, and check that the exec request holds no value, that every byte of every
value arrives, and that the agent's own input after the block is untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.ssh import scripts

SECRET = "sk-live-0123456789abcdef"
HOSTILE = "$(touch pwned) `touch pwned2`; 'q' \"dq\" \\n \\0101 %s %b = a=b\n\tend\n\n"
EVERY_BYTE = "".join(chr(c) for c in range(1, 128)) + "é中🙂" + os.fsdecode(b"\xff\xfe")

SHELLS = [pytest.param("/bin/sh", id="sh")] + [
    pytest.param(path, id=os.path.basename(path))
    for path in filter(None, (shutil.which("bash"), shutil.which("dash")))
    if os.path.realpath(path) != os.path.realpath("/bin/sh")]


def run_launcher(tmp_path: Path, shell: str, argv: list[str], env: dict[str, str],
                 after: bytes = b"", unset: tuple[str, ...] = ()
                 ) -> tuple[scripts.Launch, subprocess.CompletedProcess[bytes]]:
    """The launcher for `argv` run by `shell` (the exec request's every /bin/sh made that
    shell), its stdin the environment block then `after`."""
    launch = scripts.launch_command(argv, cwd=str(tmp_path), env=env, unset=unset)
    command = launch.command.replace("/bin/sh", shell)
    done = subprocess.run([shell, "-c", command], input=launch.stdin + after,
                          capture_output=True, timeout=20, cwd=tmp_path,
                          env={**os.environ, "GONE": "here"}, start_new_session=True)
    return launch, done


def output_after_identity(done: subprocess.CompletedProcess[bytes]) -> bytes:
    first, _, rest = done.stdout.partition(b"\n")
    scripts.parse_identity(first)
    return rest


def test_the_exec_request_carries_no_environment_value() -> None:
    env = {"API_KEY": SECRET, "OTHER": HOSTILE, "STOKER_ACTOR": "inst:chat:echo:1"}
    launch = scripts.launch_command(["agent", "--acp"], cwd="/w", env=env, unset=["GONE"])
    for value in env.values():
        assert value not in launch.command
        assert scripts.escape_value(value) not in launch.command
    assert "sk-live" not in launch.command
    assert "API_KEY" not in launch.command  # not even the names
    assert SECRET.encode() in launch.stdin
    assert launch.stdin.isascii()
    assert launch.stdin.count(b"\n") == len(env) + len(scripts.SCRUB) + 1


@pytest.mark.parametrize("shell", SHELLS)
def test_every_value_arrives_byte_for_byte(tmp_path: Path, shell: str) -> None:
    env = {"API_KEY": SECRET, "HOSTILE": HOSTILE, "EVERY": EVERY_BYTE, "EMPTY": "",
           "TRAILING": "x\n\n"}
    dump = ("import os, sys\n"
            "for k in sys.argv[1:]:\n"
            "    v = os.environb.get(k.encode())\n"
            "    sys.stdout.buffer.write(repr(v).encode() + b'\\n')\n"
            "print('GONE' in os.environ)\n")
    _, done = run_launcher(tmp_path, shell, ["python3", "-c", dump, *env], env,
                           unset=("GONE",))
    assert done.returncode == 0, done.stderr
    lines = output_after_identity(done).decode().splitlines()
    expected = [repr(v.encode("utf-8", "surrogateescape")) for v in env.values()]
    assert lines == [*expected, "False"]
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_the_agent_reads_its_own_input_right_after_the_block(tmp_path: Path,
                                                             shell: str) -> None:
    acp = b'{"jsonrpc":"2.0","id":0,"method":"initialize"}\nsecond line\n'
    _, done = run_launcher(tmp_path, shell, ["cat"], {"API_KEY": SECRET}, after=acp)
    assert done.returncode == 0, done.stderr
    assert output_after_identity(done) == acp


def test_a_launcher_whose_environment_never_comes_refuses(tmp_path: Path) -> None:
    launch = scripts.launch_command(["true"], cwd=str(tmp_path), env={"API_KEY": SECRET})
    done = subprocess.run(["/bin/sh", "-c", launch.command], input=launch.stdin[:5],
                          capture_output=True, timeout=20, start_new_session=True)
    with pytest.raises(scripts.LaunchFailed) as refused:
        scripts.parse_identity(done.stdout.split(b"\n")[0])
    assert refused.value.reason == "env"
