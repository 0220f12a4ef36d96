"""A real SSH server for the remote-agent tests, and a daemon configured to use it.

`SshServer` runs `tests/support/sshd.py` (asyncssh's server) as a separate process on loopback with
a host key and an authorized client key generated into the test's directory, so a test can
`kill -9` it (the host vanishes) and start it again on the same port with the same key.
Commands it runs carry the daemon's `STOKER_TEST_ID`, so the harness's leftover check covers
remote agents too.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncssh

from tests.support.harness import ROOT, DaemonFactory, DaemonProcess, short_tmpdir

ECHO = [sys.executable, "-m", "daemon.echo_agent"]


class SshServer:
    def __init__(self, base: Path | None = None) -> None:
        self.base = base or short_tmpdir("sshd")
        self.host_key = self.base / "host_key"
        self.client_key = self.base / "client_key"
        self.authorized = self.base / "authorized_keys"
        self.known_hosts = self.base / "known_hosts"
        self.port_file = self.base / "port"
        self.log_path = self.base / "sshd.log"
        self.exec_log = self.base / "exec.log"
        """Every exec request the server received (`exec_requests()`)."""
        self.work = self.base / "remote"
        self.work.mkdir(parents=True, exist_ok=True)
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(self.host_key))
        client = asyncssh.generate_private_key("ssh-ed25519")
        client.write_private_key(str(self.client_key))
        client.write_public_key(str(self.authorized))
        os.chmod(self.client_key, 0o600)
        self.port = 0
        self.child_env: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host_public_key(self) -> str:
        key = asyncssh.read_private_key(str(self.host_key))
        return key.export_public_key().decode().strip()

    def trust(self, public_key: str | None = None) -> None:
        """Write known_hosts with the server's key (or another one)."""
        self.known_hosts.write_text(
            f"[127.0.0.1]:{self.port} {public_key or self.host_public_key}\n")

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None or self.proc.poll() is not None
        self.port_file.unlink(missing_ok=True)
        args = [sys.executable, "-m", "tests.support.sshd", "--port", str(self.port),
                "--host-key", str(self.host_key), "--authorized-keys", str(self.authorized),
                "--port-file", str(self.port_file), "--exec-log", str(self.exec_log)]
        for name, value in self.child_env.items():
            args += ["--child-env", f"{name}={value}"]
        env = {k: v for k, v in os.environ.items() if k != "STOKER_TEST_ID"}
        env["PYTHONPATH"] = str(ROOT)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, cwd=str(ROOT), env=env, stdout=log,
                                         stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited: {self.log_path.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError("sshd did not start")
            time.sleep(0.02)
        self.port = int(self.port_file.read_text())
        if not self.known_hosts.exists():
            self.trust()

    def exec_requests(self) -> list[str]:
        """The command of every exec request so far, in order."""
        try:
            text = self.exec_log.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line]

    def kill(self) -> None:
        """The host goes away at once (no goodbye on the connection)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        self.kill()

    def computer_config(self, name: str = "loop", **extra: object) -> str:
        keys: dict[str, object] = {
            "host": "127.0.0.1", "port": self.port, "user": getpass.getuser(),
            "identity_files": [str(self.client_key)], "use_agent": False,
            "known_hosts": str(self.known_hosts), "keepalive": "2s",
            "connect_timeout": "5s", "workdir": str(self.work / "state"),
        }
        keys.update(extra)
        body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in keys.items())
        return f"[computers.{name}]\n{body}"


def remote_config(server: SshServer, *, state: Path, extra: str = "",
                  lifecycle: str = "") -> str:
    """Computer `loop`, agent `recho` (the echo agent) on it, fast restarts."""
    agent = {"STOKER_ECHO_STATE": str(state)}
    return (
        "[lifecycle]\n"
        'restart_backoff = "100ms"\nrestart_backoff_max = "500ms"\nsweep_interval = "100ms"\n'
        + lifecycle + "\n"
        + server.computer_config() + "\n"
        "[agents.recho]\n"
        f"command = {json.dumps(ECHO)}\n"
        'computer = "loop"\n'
        f"env = {{ STOKER_ECHO_STATE = {json.dumps(agent['STOKER_ECHO_STATE'])} }}\n"
        + extra
    )


def start_remote(server: SshServer, factory: DaemonFactory, *, extra: str = "",
                 lifecycle: str = "") -> DaemonProcess:
    """A daemon using `server`; the server is (re)started so that the commands it runs carry
    that daemon's leftover marker."""
    daemon = factory(config="")
    # What the server's commands get on top of its environment: the leftover marker, and
    # private state for agents that were not given a state dir.
    server.child_env = {"STOKER_TEST_ID": daemon.marker,
                        "XDG_STATE_HOME": str(daemon.base / "remote-xdg")}
    if server.proc is None or server.proc.poll() is not None:
        server.start()
    daemon.write_config(remote_config(server, state=daemon.base / "echo-state", extra=extra,
                                      lifecycle=lifecycle))
    daemon.start()
    return daemon
