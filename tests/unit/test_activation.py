"""daemon.service.systemd.activation: the sd_listen_fds protocol, with real inherited descriptors.

The interesting cases need descriptors at 3, 4, ... in a process whose pid is
``$LISTEN_PID``, so they run a small child Python: it moves the sockets it was given
(``pass_fds``) to 3, 4, ..., sets ``LISTEN_PID`` to its own pid, as systemd does between
fork and exec, then calls :func:`inherited_sockets` and reports in JSON on stdout. When
``systemd-socket-activate`` is installed, one test lets it do the real thing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from daemon.service.systemd.activation import (
    SD_LISTEN_FDS_START,
    InheritedSocket,
    inherited_sockets,
    pick_unix_listener,
)
from tests.support.harness import MOVE_FDS_TO_3

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0

# Runs in the child. argv[1]: JSON {"fds": [...], "env": {...}, "listen_pid": "self"|str,
# "unset": bool, "echo": bool}.
CHILD = r"""
import fcntl, json, os, socket, sys

spec = json.loads(sys.argv[1])
""" + MOVE_FDS_TO_3 + r"""
for key, value in spec["env"].items():
    os.environ[key] = value
if spec["listen_pid"] == "self":
    os.environ["LISTEN_PID"] = str(os.getpid())
elif spec["listen_pid"] is not None:
    os.environ["LISTEN_PID"] = spec["listen_pid"]

from daemon.service.systemd.activation import inherited_sockets, pick_unix_listener

try:
    found = inherited_sockets(os.environ, unset=spec["unset"])
except ValueError as exc:
    print(json.dumps({"error": str(exc)}), flush=True)
    sys.exit(0)
listener = pick_unix_listener(found)
print(json.dumps({
    "sockets": [
        {
            "name": s.name,
            "fd": s.fd,
            "fileno": s.socket.fileno(),
            "family": s.family.name,
            "type": s.type.name,
            "listening": s.listening,
            "cloexec": bool(fcntl.fcntl(s.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
        }
        for s in found
    ],
    "picked": None if listener is None else listener.fileno(),
    "env": {k: os.environ.get(k) for k in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")},
    "pid": os.getpid(),
}), flush=True)
if spec["echo"] and listener is not None:
    listener.settimeout(20)
    conn, _ = listener.accept()
    with conn:
        conn.sendall(b"echo:" + conn.recv(100))
"""


def _child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_child(
    tmp_path: Path,
    socks: Sequence[socket.socket | int],
    env: Mapping[str, str],
    *,
    listen_pid: str | None = "self",
    unset: bool = True,
    echo: bool = False,
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start the child with *socks* inherited; return it and its JSON report."""
    fds = [s if isinstance(s, int) else s.fileno() for s in socks]
    spec = {"fds": fds, "env": dict(env), "listen_pid": listen_pid, "unset": unset, "echo": echo}
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(spec)],
        pass_fds=fds,
        stdout=subprocess.PIPE,
        env=_child_env(),
        cwd=tmp_path,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(TIMEOUT)
        pytest.fail(f"child printed nothing (exit status {proc.returncode})")
    return proc, json.loads(line)


def finish(proc: subprocess.Popen[str]) -> None:
    assert proc.wait(TIMEOUT) == 0
    if proc.stdout is not None:
        proc.stdout.close()


def unix_listener(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    return sock


def talk(path: Path, message: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        client.connect(str(path))
        client.sendall(message)
        return client.recv(100)


@pytest.fixture
def listeners(tmp_path: Path) -> Iterator[tuple[Path, socket.socket, Path, socket.socket]]:
    other_path, stoker_path = tmp_path / "other.sock", tmp_path / "stoker.sock"
    other, stoker = unix_listener(other_path), unix_listener(stoker_path)
    with other, stoker:
        yield other_path, other, stoker_path, stoker


# -- through a real child process ------------------------------------------------------------


def test_child_inherits_names_and_accepts(
    tmp_path: Path, listeners: tuple[Path, socket.socket, Path, socket.socket]
) -> None:
    _, other, stoker_path, stoker = listeners
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    with udp:
        proc, report = run_child(
            tmp_path,
            [other, stoker, udp],
            {"LISTEN_FDS": "3", "LISTEN_FDNAMES": "other:stoker:metrics"},
            echo=True,
        )
    # Our copies are closed: whoever accepts now is the child, on the inherited socket.
    other.close()
    stoker.close()
    try:
        assert "error" not in report, report
        assert report["sockets"] == [
            {"name": "other", "fd": 3, "fileno": 3, "family": "AF_UNIX", "type": "SOCK_STREAM",
             "listening": True, "cloexec": True},
            {"name": "stoker", "fd": 4, "fileno": 4, "family": "AF_UNIX", "type": "SOCK_STREAM",
             "listening": True, "cloexec": True},
            {"name": "metrics", "fd": 5, "fileno": 5, "family": "AF_INET", "type": "SOCK_DGRAM",
             "listening": False, "cloexec": True},
        ]  # fmt: skip
        assert report["picked"] == 4  # by name, though "other" comes first
        assert report["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
        assert talk(stoker_path, b"hello") == b"echo:hello"
    finally:
        finish(proc)


def test_without_names_every_socket_is_unknown(
    tmp_path: Path, listeners: tuple[Path, socket.socket, Path, socket.socket]
) -> None:
    other_path, other, _, stoker = listeners
    proc, report = run_child(tmp_path, [other, stoker], {"LISTEN_FDS": "2"}, echo=True)
    other.close()
    try:
        assert [(s["name"], s["fd"]) for s in report["sockets"]] == [("unknown", 3), ("unknown", 4)]
        assert report["picked"] == 3  # no preferred name: the first listener
        assert talk(other_path, b"x") == b"echo:x"
    finally:
        finish(proc)


@pytest.mark.parametrize(("listen_pid", "names"), [
    pytest.param("1", {"LISTEN_FDNAMES": "stoker"}, id="other-listen-pid"),
    pytest.param(None, {}, id="missing-listen-pid"),
])
def test_sockets_not_ours_are_ignored_and_unset(
    tmp_path: Path,
    listeners: tuple[Path, socket.socket, Path, socket.socket],
    listen_pid: str | None,
    names: dict[str, str],
) -> None:
    _, _, _, stoker = listeners
    proc, report = run_child(tmp_path, [stoker], {"LISTEN_FDS": "1", **names},
                             listen_pid=listen_pid)
    finish(proc)
    assert report["sockets"] == []
    assert report["picked"] is None
    # Unset even when not ours, so that our children never see them either.
    assert report["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}


def test_unset_false_keeps_the_environment(
    tmp_path: Path, listeners: tuple[Path, socket.socket, Path, socket.socket]
) -> None:
    _, _, _, stoker = listeners
    proc, report = run_child(
        tmp_path, [stoker], {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "stoker"}, unset=False
    )
    finish(proc)
    assert [s["name"] for s in report["sockets"]] == ["stoker"]
    assert report["env"] == {
        "LISTEN_PID": str(report["pid"]),
        "LISTEN_FDS": "1",
        "LISTEN_FDNAMES": "stoker",
    }


def test_promised_fd_not_open_is_an_error(
    tmp_path: Path, listeners: tuple[Path, socket.socket, Path, socket.socket]
) -> None:
    _, _, _, stoker = listeners
    proc, report = run_child(tmp_path, [stoker], {"LISTEN_FDS": "2"})
    finish(proc)
    assert report["error"] == "LISTEN_FDS=2 promises fd 4, but it is not open"


def test_non_socket_fd_is_an_error(tmp_path: Path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("not a socket")
    fd = os.open(plain, os.O_RDONLY)
    try:
        proc, report = run_child(tmp_path, [fd], {"LISTEN_FDS": "1"})
    finally:
        os.close(fd)
    finish(proc)
    assert "fd 3" in report["error"]
    assert "not a socket" in report["error"]


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate (package systemd) is not installed",
)
def test_real_systemd_socket_activate(tmp_path: Path) -> None:
    """systemd's own launcher: binds, waits for a connection, execs us with LISTEN_*."""
    path = tmp_path / "activated.sock"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    spec = json.dumps({"fds": [], "env": {}, "listen_pid": None, "unset": True, "echo": True})
    # It passes children a minimal environment (PATH, HOME, LISTEN_*): hand PYTHONPATH on.
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            f"--listen={path}",
            "--fdname=stoker",
            f"--setenv=PYTHONPATH={_child_env()['PYTHONPATH']}",
            sys.executable,
            str(script),
            spec,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The first connection starts the child, which then accepts this very connection.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(TIMEOUT)
            deadline = time.monotonic() + TIMEOUT
            while True:
                try:
                    client.connect(str(path))
                    break
                except (FileNotFoundError, ConnectionRefusedError):
                    # Not bound yet, or bound but not yet listening (bind comes first).
                    assert proc.poll() is None, proc.communicate()
                    assert time.monotonic() < deadline, "systemd-socket-activate never listened"
                    time.sleep(0.02)
            assert proc.stdout is not None
            report = json.loads(proc.stdout.readline())
            client.sendall(b"ping")
            assert client.recv(100) == b"echo:ping"
        assert [(s["name"], s["fd"], s["listening"]) for s in report["sockets"]] == [
            ("stoker", 3, True)
        ]
        assert report["picked"] == 3
        assert report["env"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


# -- in this process: parsing that fails before any descriptor is touched -------------------


@pytest.fixture
def clean_listen_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(key, raising=False)


@pytest.mark.usefixtures("clean_listen_env")
@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"LISTEN_PID": "abc", "LISTEN_FDS": "1"}, "LISTEN_PID='abc' is not an integer"),
        ({"LISTEN_PID": "0", "LISTEN_FDS": "1"}, "LISTEN_PID='0' must be at least 1"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "one"}, "LISTEN_FDS='one' is not an integer"),
        ({"LISTEN_PID": "{pid}", "LISTEN_FDS": "-1"}, "LISTEN_FDS='-1' must be at least 0"),
        (
            {"LISTEN_PID": "{pid}", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "a:b"},
            "LISTEN_FDNAMES='a:b' has 2 name(s) but LISTEN_FDS=1",
        ),
        (
            {"LISTEN_PID": "{pid}", "LISTEN_FDS": "2", "LISTEN_FDNAMES": ""},
            "LISTEN_FDNAMES='' has 0 name(s) but LISTEN_FDS=2",
        ),
    ],
)
def test_malformed_variables_raise(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], message: str
) -> None:
    for key, value in environ.items():
        monkeypatch.setenv(key, value.format(pid=os.getpid()))
    with pytest.raises(ValueError, match=r"^LISTEN_") as info:
        inherited_sockets(os.environ)
    assert str(info.value) == message
    # Unset even on error: a daemon that logs the error and goes on must not leak them.
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & os.environ.keys()


@pytest.mark.usefixtures("clean_listen_env")
@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"LISTEN_FDS": "1"},  # no LISTEN_PID: not for us
        {"LISTEN_PID": "{pid}"},  # no LISTEN_FDS
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "0"},
        {"LISTEN_PID": "{pid}", "LISTEN_FDS": "0", "LISTEN_FDNAMES": ""},
        {"LISTEN_PID": "{other}", "LISTEN_FDS": "1"},
    ],
)
def test_nothing_inherited(environ: dict[str, str]) -> None:
    values = {k: v.format(pid=os.getpid(), other=os.getpid() + 1) for k, v in environ.items()}
    assert inherited_sockets(values, unset=False) == []


def test_explicit_pid_argument(clean_listen_env: None) -> None:
    assert inherited_sockets({"LISTEN_PID": "77", "LISTEN_FDS": "1"}, pid=78) == []


def test_unset_applies_to_os_environ_even_with_a_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", "1")
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_FDNAMES", "stoker")
    monkeypatch.setenv("LISTEN_UNRELATED_TO_US", "kept")
    assert inherited_sockets(dict(os.environ)) == []
    assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & os.environ.keys()
    assert os.environ["LISTEN_UNRELATED_TO_US"] == "kept"


# -- pick_unix_listener ----------------------------------------------------------------------


def _wrap(name: str, sock: socket.socket) -> InheritedSocket:
    return InheritedSocket(
        name=name,
        fd=sock.fileno(),
        family=socket.AddressFamily(sock.family),
        type=socket.SocketKind(sock.type),
        socket=sock,
    )


@pytest.fixture
def zoo(tmp_path: Path) -> Iterator[dict[str, socket.socket]]:
    """One of each kind a socket unit could pass."""
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    connected, peer = socket.socketpair()
    socks = {
        "tcp": tcp,
        "connected": connected,
        "peer": peer,
        "dgram": socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM),
        "unix_a": unix_listener(tmp_path / "a.sock"),
        "unix_b": unix_listener(tmp_path / "b.sock"),
        "unix_c": unix_listener(tmp_path / "c.sock"),
    }
    try:
        yield socks
    finally:
        for sock in socks.values():
            sock.close()


def test_pick_prefers_stoker_socket_then_stoker(zoo: dict[str, socket.socket]) -> None:
    found = [
        _wrap("web", zoo["tcp"]),
        _wrap("first", zoo["unix_a"]),
        _wrap("stoker", zoo["unix_b"]),
        _wrap("stoker.socket", zoo["unix_c"]),
    ]
    assert pick_unix_listener(found) is zoo["unix_c"]
    assert pick_unix_listener(found[:3]) is zoo["unix_b"]
    assert pick_unix_listener(found[:2]) is zoo["unix_a"]
    assert pick_unix_listener(found, preferred_names=["first"]) is zoo["unix_a"]


def test_pick_ignores_non_listeners(zoo: dict[str, socket.socket]) -> None:
    found = [
        _wrap("stoker", zoo["connected"]),  # right name, but an Accept=yes connection
        _wrap("stoker", zoo["dgram"]),
        _wrap("stoker", zoo["tcp"]),
    ]
    assert pick_unix_listener(found) is None
    assert pick_unix_listener([]) is None


def test_inherited_socket_listening(zoo: dict[str, socket.socket]) -> None:
    assert _wrap("x", zoo["unix_a"]).listening
    assert not _wrap("x", zoo["connected"]).listening
    closed = _wrap("x", zoo["peer"])
    zoo["peer"].close()
    assert not closed.listening


def test_first_fd_constant() -> None:
    assert SD_LISTEN_FDS_START == 3
