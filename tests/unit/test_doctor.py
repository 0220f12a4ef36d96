"""daemon.doctor's verdicts: pure functions from facts to ok/warn/fail.

The policy lives here (what merely deserves a look, what will break), so it is tested
without touching the machine; tests/integration/test_doctor.py runs the real thing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config.agents import AgentSpec
from daemon.doctor.checks import (
    Check,
    DaemonAnswer,
    PathFacts,
    agent_verdict,
    config_verdict,
    daemon_verdict,
    exit_status,
    node_agents,
    socket_dir_verdict,
    socket_verdict,
    state_dir_verdict,
    tool_verdict,
)
from daemon.doctor.database import DatabaseFacts, database_verdict

ME = 1000
P = Path("/run/user/1000/stoker/stoker.sock")


@pytest.mark.parametrize(("facts", "status"), [
    (PathFacts("missing"), "ok"),
    (PathFacts("socket", mode=0o600, uid=ME), "ok"),
    (PathFacts("socket", mode=0o660, uid=ME), "warn"),  # the system unit's group socket
    (PathFacts("socket", mode=0o666, uid=ME), "fail"),
    (PathFacts("socket", mode=0o602, uid=ME), "fail"),
    (PathFacts("socket", mode=0o600, uid=0), "warn"),
    (PathFacts("file", mode=0o600, uid=ME), "fail"),
])
def test_socket_modes(facts: PathFacts, status: str) -> None:
    assert socket_verdict(P, facts, ME).status == status


@pytest.mark.parametrize(("facts", "status"), [
    (PathFacts("missing", writable=True), "ok"),
    (PathFacts("missing", writable=False), "fail"),
    (PathFacts("dir", mode=0o700, uid=ME, writable=True), "ok"),
    (PathFacts("dir", mode=0o755, uid=ME, writable=True), "warn"),
    (PathFacts("dir", mode=0o755, uid=0), "warn"),  # /run for the system socket
    (PathFacts("file", mode=0o600, uid=ME), "fail"),
])
def test_socket_dir(facts: PathFacts, status: str) -> None:
    assert socket_dir_verdict(P.parent, facts, ME).status == status


@pytest.mark.parametrize(("facts", "status"), [
    (PathFacts("missing", writable=True), "ok"),
    (PathFacts("missing", writable=False), "fail"),
    (PathFacts("dir", mode=0o700, uid=ME, writable=True), "ok"),
    (PathFacts("dir", mode=0o750, uid=ME, writable=True), "warn"),  # the daemon fixes it
    (PathFacts("dir", mode=0o700, uid=ME, writable=False), "fail"),
    (PathFacts("dir", mode=0o700, uid=0, writable=True), "fail"),  # the daemon refuses it
    (PathFacts("file", mode=0o600, uid=ME), "fail"),
])
def test_state_dir(facts: PathFacts, status: str) -> None:
    assert state_dir_verdict(Path("/s"), facts, ME).status == status


@pytest.mark.parametrize(("answer", "status"), [
    (DaemonAnswer("answering", "pid 1"), "ok"),
    (DaemonAnswer("absent"), "warn"),  # not running is normal under socket activation
    (DaemonAnswer("refused"), "warn"),  # stale socket: the next daemon replaces it
    (DaemonAnswer("denied", "Permission denied"), "fail"),
    (DaemonAnswer("error", "no answer within 5s"), "fail"),
])
def test_daemon(answer: DaemonAnswer, status: str) -> None:
    assert daemon_verdict(P, answer).status == status


def test_config() -> None:
    path = Path("/c.toml")
    assert config_verdict(path, explicit=False, exists=False, error=None,
                          config=None).status == "ok"
    assert config_verdict(path, explicit=True, exists=False, error=None,
                          config=None).status == "fail"
    bad = config_verdict(path, explicit=False, exists=True, error="unknown key `x`",
                         config=None)
    assert bad == Check("config", "fail", "unknown key `x`")


def test_database_and_tools() -> None:
    db = Path("/s/stoker.db")
    assert database_verdict(db, DatabaseFacts(exists=False)).status == "ok"
    assert database_verdict(db, DatabaseFacts(exists=True, size=10)).status == "ok"
    assert database_verdict(db, DatabaseFacts(exists=True, fault="*** in database main ***")
                            ).status == "fail"
    assert tool_verdict("git", "git version 2.39", needed_by="worktrees").status == "ok"
    assert tool_verdict("git", None, needed_by="worktrees").status == "fail"
    assert tool_verdict("npm", None, needed_by="x", required=False).status == "warn"


def test_agent_verdicts() -> None:
    spec = AgentSpec("a", ("a-bin",))
    assert agent_verdict(spec, available=(False, "a-bin not found on PATH"),
                         probe=None).status == "fail"
    assert agent_verdict(spec, available=(True, ""), probe=None).status == "ok"
    assert agent_verdict(spec, available=(True, ""), probe="did not answer").status == "fail"
    answered = agent_verdict(spec, available=(True, ""), elapsed=0.25, probe={
        "protocolVersion": 1, "agentInfo": {"name": "qwen", "version": "0.1"},
        "authMethods": [{"id": "openai", "name": "OpenAI"}]})
    assert answered.status == "ok"
    assert "qwen 0.1" in answered.detail
    assert "openai" in answered.detail
    remote = AgentSpec("r", ("qwen",), computer="box")
    assert agent_verdict(remote, available=(True, ""), probe=None).status == "ok"


def test_node_detection() -> None:
    heads = {"/bin/qwen-shim": b"#!/usr/bin/env node\n", "/bin/py-agent": b"#!/usr/bin/python3\n",
             "/bin/elf": b"\x7fELF\x02\x01"}
    specs = [
        AgentSpec("q", ("qwen", "--acp")),  # known npm agent, even when not resolvable
        AgentSpec("n", ("npx", "-y", "@zed-industries/claude-code-acp")),
        AgentSpec("s", ("qwen-shim",)),
        AgentSpec("p", ("py-agent",)),
        AgentSpec("e", ("elf",)),
        AgentSpec("gone", ("not-installed",)),
        AgentSpec("remote", ("gemini",), computer="box"),  # node matters over there
    ]

    def resolve(name: str) -> str | None:
        path = f"/bin/{name}"
        return path if path in heads else None

    assert node_agents(specs, resolve=resolve, read_head=heads.__getitem__) == ["q", "n", "s"]


def test_exit_status_fails_only_on_failures() -> None:
    assert exit_status([Check("a", "ok", ""), Check("b", "warn", "")]) == 0
    assert exit_status([Check("a", "ok", ""), Check("b", "fail", "")]) == 1


def test_memory_verdict() -> None:
    from daemon.doctor.verdicts import memory_verdict

    gib = 1 << 30
    fits = memory_verdict(max_warm=16, budget=8 * gib, share=50, machine=16 * gib)
    assert fits.status == "ok"
    assert fits.detail == ("memory_budget 8.0 GiB (50% of 16.0 GiB) holds max_warm 16 x "
                           "~0.5 GiB per warm agent = 8.0 GiB")
    assert memory_verdict(max_warm=17, budget=8 * gib, share=None,
                          machine=16 * gib).status == "warn"
    assert "more than this machine" in memory_verdict(max_warm=1, budget=32 * gib, share=None,
                                                      machine=16 * gib).detail
    assert memory_verdict(max_warm=64, budget=None, share=None, machine=16 * gib).status == "warn"
    assert memory_verdict(max_warm=4, budget=None, share=None, machine=16 * gib).status == "ok"
