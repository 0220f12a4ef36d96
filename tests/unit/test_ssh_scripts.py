"""The remote shell programs of the SSH executor, run with this machine's /bin/sh (what an
SSH server does with an exec request), and the pure parts around them."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from daemon.doctor.checks import Check
from daemon.doctor.ssh import ComputerFacts, computer_verdict, parse_python
from daemon.ssh import scripts
from daemon.ssh.executor import forwarded


def launch(tmp_path: Path, argv: list[str], *, env: dict[str, str] | None = None,
           cwd: str | None = None, merge: bool = False) -> subprocess.Popen[bytes]:
    """Start the launcher as an SSH server would (`/bin/sh -c` the exec request, in a new
    session) and write its environment block on its stdin, as the executor does."""
    launch = scripts.launch_command(argv, cwd=cwd or str(tmp_path), env=env or {},
                                    merge_stderr=merge)
    proc = subprocess.Popen(["/bin/sh", "-c", launch.command], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stdin is not None
    proc.stdin.write(launch.stdin)
    proc.stdin.flush()
    return proc


def test_launcher_reports_identity_then_becomes_the_command(tmp_path: Path) -> None:
    hostile = "$(touch pwned) `touch pwned2`; rm -rf ~ 'quoted' \"double\"\nnewline"
    proc = launch(tmp_path, ["sh", "-c", 'printf "%s|%s|%s" "$1" "$X" "$(pwd)"', "arg0",
                             hostile], env={"X": hostile})
    out, err = proc.communicate(timeout=10)
    first, _, rest = out.partition(b"\n")
    ident = scripts.parse_identity(first)
    assert ident.pid == proc.pid  # exec all the way down: the pid is the command's
    assert ident.pgid == ident.pid
    assert ident.start > 0
    assert rest.decode() == f"{hostile}|{hostile}|{tmp_path}"
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()
    assert proc.returncode == 0, err


def test_launcher_makes_a_group_leader_when_started_inside_another_group(
        tmp_path: Path) -> None:
    launch = scripts.launch_command(["sh", "-c", "echo in"], cwd=str(tmp_path), env={})
    # Not a new session here: the launcher must make one itself (setsid).
    done = subprocess.run(["/bin/sh", "-c", launch.command], capture_output=True, timeout=10,
                          input=launch.stdin)
    ident = scripts.parse_identity(done.stdout.split(b"\n")[0])
    assert ident.pgid == ident.pid
    assert done.stdout.split(b"\n")[1] == b"in"


def test_launcher_refusals_and_merge(tmp_path: Path) -> None:
    missing = launch(tmp_path, ["true"], cwd=str(tmp_path / "nope"))
    with pytest.raises(scripts.LaunchFailed) as cwd:
        scripts.parse_identity(missing.communicate(timeout=10)[0])
    assert cwd.value.reason == "cwd"
    absent = launch(tmp_path, ["/no/such/agent"])
    with pytest.raises(scripts.LaunchFailed) as notfound:
        scripts.parse_identity(absent.communicate(timeout=10)[0])
    assert notfound.value.reason == "notfound"
    merged = launch(tmp_path, ["sh", "-c", "echo out; echo err >&2"], merge=True)
    out, err = merged.communicate(timeout=10)
    assert out.split(b"\n", 1)[1] == b"out\nerr\n"
    assert err == b""


def test_launcher_scrubs_systemd_variables_and_expands_home(tmp_path: Path) -> None:
    launch = scripts.launch_command(["sh", "-c", 'echo "${NOTIFY_SOCKET:-none} $PWD"'],
                                    cwd="~", env={})
    env = {**os.environ, "NOTIFY_SOCKET": "/run/x", "HOME": str(tmp_path)}
    done = subprocess.run(["/bin/sh", "-c", launch.command], capture_output=True, timeout=10,
                          env=env, start_new_session=True, input=launch.stdin)
    assert done.stdout.split(b"\n")[1].decode() == f"none {tmp_path}"


def test_tree_kill_reaches_the_group_and_marked_escapees(tmp_path: Path) -> None:
    actor = "inst:chat.1:echo:ab12"
    proc = launch(tmp_path, ["sh", "-c", "setsid sleep 300 & echo started; sleep 300"],
                  env={"STOKER_ACTOR": actor, "STOKER_INSTANCE": "inst"})
    assert proc.stdout is not None
    ident = scripts.parse_identity(proc.stdout.readline())
    assert proc.stdout.readline() == b"started\n"
    other = launch(tmp_path, ["sleep", "300"], env={"STOKER_ACTOR": actor + "x"})
    assert other.stdout is not None
    other_ident = scripts.parse_identity(other.stdout.readline())
    try:
        # A leader check with the wrong start time leaves the group alone.
        wrong = scripts.tree_kill_command(pgid=None, ticks=0, actor="",
                                          leader=(ident.pid, ident.start + 1))
        assert b"found=0" in subprocess.run(["/bin/sh", "-c", wrong], capture_output=True,
                                            timeout=10).stdout
        assert proc.poll() is None
        started = time.monotonic()
        kill = scripts.tree_kill_command(pgid=ident.pgid, ticks=40, actor=actor)
        done = subprocess.run(["/bin/sh", "-c", kill], capture_output=True, timeout=10)
        assert b"found=1" in done.stdout
        assert time.monotonic() - started < 1.5  # SIGTERM was enough: no full grace
        assert proc.wait(timeout=5) != 0
        survivors = [p for p in psutil.process_iter(["status"])
                     if _pgid(p.pid) == ident.pgid and p.info["status"] != psutil.STATUS_ZOMBIE]
        assert survivors == []
        # The escaped `setsid sleep` carried the marker: gone too; a prefix twin is not.
        marked = subprocess.run(["sh", "-c", f"grep -lsaz -e '{scripts.marker_pattern(actor)}'"
                                 " /proc/[0-9]*/environ"], capture_output=True).stdout
        assert marked == b""
        assert os.path.exists(f"/proc/{other_ident.pid}")
    finally:
        other.kill()
        other.wait()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_marker_pattern_is_exact() -> None:
    pattern = scripts.marker_pattern("i:a.b:echo:12")
    regex = re.compile(pattern.replace(r"\(", "(").replace(r"\)", ")")
                       .replace(r"\{0,1\}", "?"))
    assert regex.match("STOKER_ACTOR=i:a.b:echo:12")
    assert regex.match("STOKER_ACTOR=i:a.b:echo:12/term-3")
    assert not regex.match("STOKER_ACTOR=i:aXb:echo:12")
    assert not regex.match("STOKER_ACTOR=i:a.b:echo:123")


def test_parsers() -> None:
    assert scripts.parse_rss(b"  10   400\n 10 100\n 12 1\njunk\n") == {10: 512000, 12: 1024}
    with pytest.raises(ValueError, match="unexpected"):
        scripts.parse_identity(b"hello")
    assert scripts.parse_identity(b"stoker-launch 5 5 77\n") == scripts.Launched(5, 5, 77)


def test_only_what_differs_from_our_environment_is_forwarded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAME", "1")
    monkeypatch.setenv("CHANGED", "old")
    env = {"SAME": "1", "CHANGED": "new", "NEW": "x", "NOTIFY_SOCKET": "/run/n",
           "STOKER_ACTOR": "spoofed"}
    assert forwarded(env) == {"CHANGED": "new", "NEW": "x"}


PY_OK = (0, "3.11.7")


@pytest.mark.parametrize(("facts", "status"), [
    (ComputerFacts("b", "h:22", "ok", "Linux 6.1 x86_64", (), 0.01, "", PY_OK), "ok"),
    (ComputerFacts("b", "h:22", "ok", "Linux", ("git",), 0.01, "", PY_OK), "warn"),
    (ComputerFacts("b", "h:22", "ok", "Linux", ("setsid",), 0.01, "", PY_OK), "fail"),
    (ComputerFacts("b", "h:22", "refused", "host key of computer 'b' CHANGED"), "fail"),
    (ComputerFacts("b", "h:22", "unreachable", "cannot connect"), "fail"),
    (ComputerFacts("b", "h:22", "ok", "Linux", (), 0.01, "refused to forward a port",
                   PY_OK), "warn"),
    (ComputerFacts("b", "h:22", "ok", "Linux", (), 0.01, "", (127, "sh: python3: not found")),
     "warn"),
    (ComputerFacts("b", "h:22", "ok", "Linux", (), 0.01, "", (1, "3.6.9")), "warn"),
    (ComputerFacts("b", "h:22", "ok", "Linux", (), 0.01, "", (2, "Segmentation fault")),
     "warn"),
    (ComputerFacts("b", "h:22", "ok", "Linux", (), 0.01, "", (None, "")), "warn"),
])
def test_computer_verdict(facts: ComputerFacts, status: str) -> None:
    check = computer_verdict(facts)
    assert isinstance(check, Check)
    assert check.name == "computer b"
    assert check.status == status


def test_the_python3_verdict_says_what_it_costs_and_what_to_do() -> None:
    ok = computer_verdict(ComputerFacts("b", "h:22", "ok", "Linux", (), 0.01, "", PY_OK))
    assert "python3 3.11.7" in ok.detail
    missing = computer_verdict(
        ComputerFacts("b", "h:22", "ok", "Linux", (), 0.01, "", (127, "sh: python3: not found")))
    assert missing.status == "warn"
    assert "python3 is not found on its PATH" in missing.detail
    assert "take MCP over stdio get no Stoker MCP server (task tools)" in missing.detail
    assert "install Python 3.7 or later there" in missing.detail
    old = computer_verdict(ComputerFacts("b", "h:22", "ok", "Linux", (), 0.01, "", (1, "3.6.9")))
    assert "its python3 (3.6.9) is older than 3.7" in old.detail
    crashed = computer_verdict(
        ComputerFacts("b", "h:22", "ok", "Linux", (), 0.01, "", (139, "Segmentation fault")))
    assert "python3 does not run (Segmentation fault)" in crashed.detail


def test_the_python3_line_of_the_round_trip() -> None:
    assert parse_python("stoker-python3 0 3.11.7") == (0, "3.11.7")
    assert parse_python("stoker-python3 127 sh: 1: python3: not found ") == (
        127, "sh: 1: python3: not found")
    assert parse_python("stoker-python3 ") == (None, "")
