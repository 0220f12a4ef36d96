"""OpenSSH's own `sshd` on loopback, for the behaviour only the real server has.

`tests/support/sshd.py` (asyncssh's server) is quick and portable, but limits such as
`MaxSessions` are OpenSSH's: a test of how Stoker meets them must meet the real thing.
`OpenSshServer` has `SshServer`'s interface (keys, `known_hosts`, `computer_config`,
`start`/`kill`), runs `/usr/sbin/sshd -D` with a config of its own in the test's directory,
and gives the commands it runs the daemon's leftover marker through `SetEnv`.

`sshd` must be started by its absolute path and (for `UsePAM no` logins of the same user)
either as root with /run/sshd present or as the user itself; `openssh_missing()` says why a
test must skip when neither holds. `scripts/test` installs Debian's openssh-server when it
can.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil

from tests.support.harness import ROOT
from tests.support.remote_rig import SshServer

SSHD = "/usr/sbin/sshd"


def openssh_missing() -> str | None:
    """Why OpenSSH's server cannot run here, or None."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is not installed (Debian: apt-get install openssh-server)"
    if not shutil.which("ssh-keygen"):
        return "ssh-keygen is not installed"
    if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
        try:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        except OSError as exc:
            return f"sshd needs /run/sshd: {exc}"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OpenSshServer(SshServer):
    def __init__(self, base: Path | None = None, *, max_sessions: int = 10,
                 allow_tcp_forwarding: str = "yes") -> None:
        super().__init__(base)
        self.max_sessions = max_sessions
        self.allow_tcp_forwarding = allow_tcp_forwarding
        """`AllowTcpForwarding` (OpenSSH's default: yes; "no" refuses remote forwards)."""
        self.config_path = self.base / "sshd_config"
        self.pid_path = self.base / "sshd.pid"
        os.chmod(self.host_key, 0o600)
        os.chmod(self.base, 0o755)

    def start(self, timeout: float = 15.0) -> None:
        assert self.proc is None or self.proc.poll() is not None
        if not self.port:
            self.port = _free_port()
        env = {"PYTHONPATH": str(ROOT), **self.child_env}
        set_env = " ".join(f'"{k}={v}"' for k, v in env.items())
        self.config_path.write_text(
            f"Port {self.port}\n"
            "ListenAddress 127.0.0.1\n"
            f"HostKey {self.host_key}\n"
            f"PidFile {self.pid_path}\n"
            f"AuthorizedKeysFile {self.authorized}\n"
            f"AllowUsers {getpass.getuser()}\n"
            "StrictModes no\n"
            "UsePAM no\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "PermitRootLogin prohibit-password\n"
            f"MaxSessions {self.max_sessions}\n"
            f"AllowTcpForwarding {self.allow_tcp_forwarding}\n"
            "MaxStartups 100\n"
            "LogLevel VERBOSE\n"
            f"SetEnv {set_env}\n"
            "Subsystem sftp internal-sftp\n")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(self.config_path)], stdout=log, stderr=log,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"sshd exited: {self.log_path.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("sshd did not start: "
                                     f"{self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)
        if not self.known_hosts.exists():
            self.trust()

    def kill(self) -> None:
        """sshd and every session it forked (their groups and sessions are their own:
        each process under the listener is killed, not only its group)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                forked = psutil.Process(self.proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                forked = []
            os.killpg(self.proc.pid, signal.SIGKILL)
            for child in forked:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
