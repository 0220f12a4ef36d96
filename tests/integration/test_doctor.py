"""`stoker doctor` as an operator runs it: the real CLI, real agents, a real daemon.

PATH is hermetic (a directory with git and python3 only), so the result does not depend on
which agents happen to be installed on the machine running the tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import DaemonFactory, DaemonProcess

ECHO = ["python3", "-m", "daemon.echo_agent"]


@pytest.fixture
def hermetic_path(tmp_path: Path) -> str:
    """A PATH with git and python3 (this venv's) and nothing else."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    git = subprocess.run(["sh", "-c", "command -v git"], capture_output=True, text=True,
                         check=True).stdout.strip()
    (bin_dir / "git").symlink_to(git)
    python3 = bin_dir / "python3"
    python3.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    python3.chmod(0o755)
    return str(bin_dir)


def doctor(daemon: DaemonProcess, path: str, *args: str) -> tuple[int, dict[str, Any]]:
    """Run `stoker doctor --json`; returns (exit status, {check name: (status, detail)})."""
    env = {**daemon.env(), "PATH": path}
    done = subprocess.run([sys.executable, "-m", "daemon.cli", "doctor", "--json", *args],
                          env=env, cwd=str(daemon.work), capture_output=True, text=True,
                          timeout=60)
    assert done.stdout, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] == (done.returncode == 0)
    rows = {row["check"]: (row["status"], row["detail"]) for row in report["checks"]}
    return done.returncode, rows


def test_good_setup_with_the_daemon_running(daemon_factory: DaemonFactory,
                                            hermetic_path: str) -> None:
    daemon = daemon_factory(config=f"[agents.good]\ncommand = {json.dumps(ECHO)}\n",
                            env={"PATH": hermetic_path})
    daemon.start()
    status, rows = doctor(daemon, hermetic_path)
    assert status == 0, rows
    assert rows["config"][0] == "ok"
    assert rows["socket dir"] == ("ok", f"{daemon.socket.parent} (0700)")
    assert rows["socket"] == ("ok", f"{daemon.socket} (0600)")
    assert rows["daemon"][0] == "ok"
    assert f"pid {daemon.pid}" in rows["daemon"][1]
    assert rows["state dir"][0] == "ok"
    assert rows["database"][0] == "ok"
    assert "passes quick_check" in rows["database"][1]
    assert rows["git"][0] == "ok"
    assert rows["git"][1].startswith("git version")
    for agent in ("agent echo", "agent good"):
        assert rows[agent][0] == "ok", rows[agent]
        assert "answers initialize" in rows[agent][1]
    assert "node" not in rows  # no agent here needs it
    assert rows["other agents"][0] == "ok"  # qwen & co: optional, not installed here

    # The table for people: a header, one row per check, a summary on stderr.
    done = subprocess.run([sys.executable, "-m", "daemon.cli", "doctor", "--no-probe"],
                          env={**daemon.env(), "PATH": hermetic_path}, capture_output=True,
                          text=True, timeout=60, cwd=str(daemon.work))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["CHECK", "STATUS", "DETAIL"]
    assert any(line.split()[:3] == ["agent", "good", "ok"] for line in lines)
    assert "0 failure(s)" in done.stderr


def test_broken_config_fails_and_a_stopped_daemon_is_only_a_warning(
        daemon_factory: DaemonFactory, hermetic_path: str) -> None:
    daemon = daemon_factory(config='[lifecycle]\nidle_tt = "1s"\n')
    status, rows = doctor(daemon, hermetic_path)
    assert status == 1
    assert rows["config"][0] == "fail"
    assert "unknown key `idle_tt`" in rows["config"][1]
    assert rows["agents"] == ("warn", "not checked: the config is invalid")
    assert rows["daemon"][0] == "warn"
    assert "not running" in rows["daemon"][1]
    assert rows["state dir"][0] == "ok"  # creatable


def test_stale_socket_is_a_warning(daemon_factory: DaemonFactory,
                                   hermetic_path: str) -> None:
    daemon = daemon_factory()
    daemon.socket.parent.mkdir(mode=0o700)
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(daemon.socket))
    os.chmod(daemon.socket, 0o600)
    dead.close()  # the file stays; nothing listens: what a kill -9'd daemon leaves
    status, rows = doctor(daemon, hermetic_path, "--no-probe")
    assert status == 0, rows
    assert rows["socket"][0] == "ok"
    assert rows["daemon"][0] == "warn"
    assert "stale socket" in rows["daemon"][1]


def test_missing_agent_binary_fails(daemon_factory: DaemonFactory,
                                    hermetic_path: str) -> None:
    daemon = daemon_factory(config='[agents.ghost]\ncommand = ["ghost-agent-nowhere"]\n')
    status, rows = doctor(daemon, hermetic_path)
    assert status == 1
    assert rows["agent ghost"] == ("fail", "ghost-agent-nowhere not found on PATH")
    assert rows["agent echo"][0] == "ok"


def test_agent_exiting_during_initialize_fails(daemon_factory: DaemonFactory,
                                               hermetic_path: str) -> None:
    daemon = daemon_factory(config=(
        f'[agents.bad]\ncommand = {json.dumps([*ECHO, "--fail-initialize"])}\n'))
    status, rows = doctor(daemon, hermetic_path, "--timeout", "10")
    assert status == 1
    verdict, detail = rows["agent bad"]
    assert verdict == "fail"
    assert "did not answer initialize" in detail
    assert "exited with status 4" in detail
    assert "--fail-initialize" in detail  # its last stderr line says why


def test_node_agent_without_node_fails(daemon_factory: DaemonFactory,
                                       hermetic_path: str) -> None:
    script = Path(hermetic_path) / "some-node-agent"
    script.write_text("#!/usr/bin/env node\nconsole.log('never runs here')\n")
    script.chmod(0o755)
    daemon = daemon_factory(config='[agents.nodey]\ncommand = ["some-node-agent", "--acp"]\n')
    status, rows = doctor(daemon, hermetic_path, "--no-probe")
    assert status == 1
    assert rows["node"] == ("fail", "node not found on PATH (needed for nodey)")
    assert rows["npm"][0] == "warn"
    assert rows["agent nodey"][0] == "ok"  # the binary is there; node is what is missing


def test_memory_budget_defaults_to_half_the_machine_and_doctor_weighs_the_cap(
        daemon_factory: DaemonFactory, hermetic_path: str) -> None:
    """No memory_budget in the config means half of this machine's memory; doctor says so,
    and warns when max_warm warm agents of a typical ~0.5 GiB would not fit the budget."""
    from daemon.config.file import machine_memory

    daemon = daemon_factory(env={"PATH": hermetic_path})
    daemon.start()
    _, rows = doctor(daemon, hermetic_path, "--no-probe")
    status, detail = rows["memory"]
    half = machine_memory() / 2 / (1 << 30)
    assert f"memory_budget {half:.1f} GiB (50% of" in detail, detail
    assert status == ("ok" if half >= 16 * 0.5 else "warn"), detail

    daemon.write_config('[lifecycle]\nmax_warm = 64\nmemory_budget = "4GiB"\n')
    status, rows = doctor(daemon, hermetic_path, "--no-probe")
    assert status == 0  # a warning, not a failure
    assert rows["memory"][0] == "warn"
    assert rows["memory"][1].startswith("max_warm 64 x ~0.5 GiB per warm agent = 32.0 GiB "
                                        "exceeds memory_budget 4.0 GiB"), rows["memory"]

    daemon.write_config('[lifecycle]\nmax_warm = 2\nmemory_budget = "10%"\n')
    _, rows = doctor(daemon, hermetic_path, "--no-probe")
    assert "(10% of" in rows["memory"][1]
