"""The unit files in systemd/ and scripts/install-service.

``systemd-analyze verify`` is the judge of the unit syntax. What it needs, measured on the
project image (Debian 12, systemd 252, tests run as root in a container without systemd
as PID 1):

* system units verify as they are;
* ``--user`` needs ``$XDG_RUNTIME_DIR`` (to resolve ``%t``) or it aborts with "Failed to
  lookup RuntimeDirectory path: No such device or address". A private temporary directory
  is enough: no user manager or D-Bus session is needed;
* unknown keys and bad values are only *warnings* (exit status 0), so its output must be
  empty, not just its exit status;
* ``--man=no`` keeps the ``Documentation=man:`` checks from depending on whether man pages
  are installed (slim images strip them).

The installer is run against a stub ``systemctl`` (or none at all) so that a test run on a
developer's machine never stops or reloads their real user manager.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
INSTALLER = REPO / "scripts" / "install-service"
USER_UNITS = ("stoker.service", "stoker.socket")
SYSTEM_UNITS = ("stoker-system.service", "stoker-system.socket")
PLACEHOLDER = "@STOKER_BIN@"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze (package systemd) is not installed; unit syntax not verified",
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (a key may repeat); comments and blanks dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {raw!r}"
        assert "=" in line, f"not an assignment: {raw!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    return parse_unit((UNITS / name).read_text())


def one(parsed: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = parsed.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= set {len(values)} times: {values}"
    return values[0]


def environment(parsed: dict[str, dict[str, list[str]]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for assignment in parsed["Service"].get("Environment", []):
        for word in assignment.split():
            key, _, value = word.partition("=")
            env[key] = value
    return env


# -- required directives ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["stoker.service", "stoker-system.service"])
def test_service_directives(name: str) -> None:
    parsed = unit(name)
    expected = {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogSec": "30s",
        "Restart": "on-failure",
        "RestartSec": "2s",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "KillMode": "mixed",
        "TimeoutStopSec": "20s",
        "NoNewPrivileges": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "SystemCallArchitectures": "native",
        "ExecStart": f"{PLACEHOLDER} daemon",
    }
    for key, value in expected.items():
        assert one(parsed, "Service", key) == value, key
    # V8's JIT needs W+X memory: node-based agents die under MemoryDenyWriteExecute.
    assert "MemoryDenyWriteExecute" not in parsed["Service"]
    # The timeout must leave room for the daemon's 5 s agent grace.
    assert int(one(parsed, "Service", "TimeoutStopSec").removesuffix("s")) > 5


def test_user_service_specifics() -> None:
    parsed = unit("stoker.service")
    assert one(parsed, "Service", "UMask") == "0077"
    assert one(parsed, "Install", "WantedBy") == "default.target"
    assert environment(parsed)["STOKER_SOCKET"] == "%t/stoker/stoker.sock"
    assert "stoker.socket" in one(parsed, "Unit", "After")


def test_user_socket() -> None:
    parsed = unit("stoker.socket")
    assert one(parsed, "Socket", "ListenStream") == "%t/stoker/stoker.sock"
    assert one(parsed, "Socket", "SocketMode") == "0600"
    assert one(parsed, "Socket", "DirectoryMode") == "0700"
    assert one(parsed, "Socket", "FileDescriptorName") == "stoker"
    assert one(parsed, "Install", "WantedBy") == "sockets.target"


def test_system_service_specifics() -> None:
    parsed = unit("stoker-system.service")
    service = parsed["Service"]
    assert one(parsed, "Service", "User") == "stoker"
    assert one(parsed, "Service", "Group") == "stoker"
    assert one(parsed, "Service", "StateDirectory") == "stoker"
    assert one(parsed, "Service", "RuntimeDirectory") == "stoker"
    assert one(parsed, "Service", "RuntimeDirectoryMode") == "0700"
    assert one(parsed, "Service", "ConfigurationDirectory") == "stoker"
    assert one(parsed, "Service", "ProtectSystem") == "strict"
    assert one(parsed, "Service", "ProtectHome") == "read-only"
    assert one(parsed, "Service", "PrivateTmp") == "yes"
    assert service["ReadWritePaths"], "the worktree root must be writable"
    env = environment(parsed)
    assert env["STOKER_STATE_DIR"] == "%S/stoker"
    assert env["STOKER_CONFIG"].startswith("%E/stoker/")
    socket_unit = unit("stoker-system.socket")
    assert env["STOKER_SOCKET"] == one(socket_unit, "Socket", "ListenStream")
    assert one(socket_unit, "Socket", "FileDescriptorName") == "stoker"
    assert one(socket_unit, "Socket", "SocketUser") == "stoker"
    assert one(parsed, "Install", "WantedBy") == "multi-user.target"


@pytest.mark.parametrize("name", USER_UNITS + SYSTEM_UNITS)
def test_placeholder_only_in_exec_start(name: str) -> None:
    text = (UNITS / name).read_text()
    expected = 1 if name.endswith(".service") else 0
    assert text.count(PLACEHOLDER) == expected


@pytest.mark.parametrize("name", USER_UNITS + SYSTEM_UNITS)
def test_nothing_secret_in_environment(name: str) -> None:
    parsed = parse_unit((UNITS / name).read_text())
    for key in environment(parsed) if "Service" in parsed else {}:
        assert not any(word in key for word in ("KEY", "TOKEN", "SECRET", "PASSWORD")), key


# -- systemd-analyze verify ------------------------------------------------------------------


def render(names: tuple[str, ...], directory: Path, binary: str) -> list[Path]:
    """The templates as the installer writes them, with ExecStart= on *binary*."""
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        target = directory / name
        target.write_text((UNITS / name).read_text().replace(PLACEHOLDER, binary))
        out.append(target)
    return out


def verify(paths: list[Path], *, user: bool, tmp_path: Path) -> None:
    """Run systemd-analyze verify; fail on a non-zero status or on any diagnostic."""
    assert SYSTEMD_ANALYZE is not None
    env = dict(os.environ)
    args = [SYSTEMD_ANALYZE]
    if user:
        runtime = tmp_path / "xdg-runtime"
        runtime.mkdir(mode=0o700, exist_ok=True)
        env["XDG_RUNTIME_DIR"] = str(runtime)
        args.append("--user")
    args += ["verify", "--man=no", *map(str, paths)]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # Diagnostics about our files (unknown keys, bad values) do not change the exit status.
    names = [p.name for p in paths] + [str(p.parent) for p in paths]
    ours = [line for line in output.splitlines() if any(n in line for n in names)]
    assert ours == [], output


@needs_analyze
def test_verify_user_units(tmp_path: Path) -> None:
    paths = render(USER_UNITS, tmp_path / "units", str(INSTALLER))
    verify(paths, user=True, tmp_path=tmp_path)


@needs_analyze
def test_verify_system_units(tmp_path: Path) -> None:
    # User=stoker need not exist: verify does not resolve accounts (checked on systemd 252).
    paths = render(SYSTEM_UNITS, tmp_path / "units", str(INSTALLER))
    verify(paths, user=False, tmp_path=tmp_path)


@needs_analyze
def test_verify_is_not_vacuous(tmp_path: Path) -> None:
    """The harness above does catch a typo that systemd only warns about."""
    paths = render(USER_UNITS, tmp_path / "units", str(INSTALLER))
    service = paths[0]
    service.write_text(service.read_text().replace("Type=notify", "Type=notifyy"))
    with pytest.raises(AssertionError, match="notifyy"):
        verify(paths, user=True, tmp_path=tmp_path)


@needs_analyze
def test_verify_rejects_missing_executable(tmp_path: Path) -> None:
    paths = render(USER_UNITS, tmp_path / "units", str(tmp_path / "no-such-stoker"))
    with pytest.raises(AssertionError, match="not executable"):
        verify(paths, user=True, tmp_path=tmp_path)


# -- scripts/install-service -----------------------------------------------------------------


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A stand-in stoker executable."""
    path = tmp_path / "opt" / "stoker"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def stub_systemctl(directory: Path, *, manager: bool) -> Path:
    """A systemctl that logs its arguments; with *manager*, it claims a user manager exists."""
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / "systemctl.log"
    script = directory / "systemctl"
    script.write_text(
        "#!/bin/sh\n"
        f'echo "$*" >> "{log}"\n'
        # No manager: like systemctl --user without a session bus.
        + ("exit 0\n" if manager else 'echo "Failed to connect to bus" >&2; exit 1\n')
    )
    script.chmod(0o755)
    return log


def path_without_systemctl(directory: Path) -> str:
    """A PATH with every current PATH command except systemctl (symlinked)."""
    directory.mkdir(parents=True, exist_ok=True)
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        if not entry or not os.path.isdir(entry):
            continue
        for name in os.listdir(entry):
            target = directory / name
            source = os.path.join(entry, name)
            if name == "systemctl" or target.exists() or target.is_symlink():
                continue
            if os.access(source, os.X_OK) and not os.path.isdir(source):
                target.symlink_to(source)
    return str(directory)


def run_installer(
    *args: str, env: Mapping[str, str], check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(INSTALLER), *args],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=120,
        cwd=REPO,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def installer_env(tmp_path: Path) -> dict[str, str]:
    """Temporary XDG_CONFIG_HOME/HOME, and a systemctl stub with no user manager."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "DBUS_"))}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    stub_systemctl(tmp_path / "stub", manager=False)
    env["PATH"] = f"{tmp_path / 'stub'}{os.pathsep}{env.get('PATH', '')}"
    return env


def test_installer_is_executable() -> None:
    assert INSTALLER.stat().st_mode & stat.S_IXUSR
    assert INSTALLER.read_text().startswith("#!/usr/bin/env bash\n")


def test_installer_help(installer_env: dict[str, str]) -> None:
    out = run_installer("--help", env=installer_env).stdout
    for option in ("--system", "--create-user", "--uninstall", "--dry-run", "--bin"):
        assert option in out


def test_installer_rejects_unknown_arguments(installer_env: dict[str, str]) -> None:
    result = run_installer("--frobnicate", env=installer_env, check=False)
    assert result.returncode != 0
    assert "unknown argument" in result.stderr


def test_dry_run_changes_nothing(tmp_path: Path, installer_env: dict[str, str]) -> None:
    out = run_installer("--dry-run", env=installer_env).stdout
    assert not (tmp_path / "config").exists()
    unit_dir = tmp_path / "config" / "systemd" / "user"
    assert f"would write {unit_dir / 'stoker.service'}" in out
    assert f"would write {unit_dir / 'stoker.socket'}" in out
    # Without --bin: this checkout's venv, which a dry run does not create.
    assert f"ExecStart={REPO / '.venv' / 'bin' / 'stoker'} daemon" in out
    assert "would create or refresh" in out
    assert "systemctl --user enable --now stoker.socket" in out


def test_install_is_idempotent_and_uninstall_removes(
    tmp_path: Path, installer_env: dict[str, str], fake_bin: Path
) -> None:
    unit_dir = tmp_path / "config" / "systemd" / "user"
    first = run_installer("--bin", str(fake_bin), env=installer_env)
    assert "no systemd user manager reachable" in first.stdout
    for name in USER_UNITS:
        installed = (unit_dir / name).read_text()
        template = (UNITS / name).read_text()
        assert installed == template.replace(PLACEHOLDER, str(fake_bin))
        assert stat.S_IMODE((unit_dir / name).stat().st_mode) == 0o644
    assert f"ExecStart={fake_bin} daemon\n" in (unit_dir / "stoker.service").read_text()
    mtimes = {name: (unit_dir / name).stat().st_mtime_ns for name in USER_UNITS}

    second = run_installer("--bin", str(fake_bin), env=installer_env)
    assert "nothing to change" in second.stdout
    assert {name: (unit_dir / name).stat().st_mtime_ns for name in USER_UNITS} == mtimes
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted(USER_UNITS)  # no temp files

    if SYSTEMD_ANALYZE is not None:
        verify([unit_dir / name for name in USER_UNITS], user=True, tmp_path=tmp_path)

    run_installer("--uninstall", env=installer_env)
    assert list(unit_dir.iterdir()) == []
    again = run_installer("--uninstall", env=installer_env)
    assert "not installed" in again.stdout


def test_install_without_systemctl_on_path(tmp_path: Path, fake_bin: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "DBUS_"))}
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["PATH"] = path_without_systemctl(tmp_path / "path")
    unit_dir = tmp_path / "config" / "systemd" / "user"
    out = run_installer("--bin", str(fake_bin), env=env).stdout
    assert "skipping" in out
    assert (unit_dir / "stoker.service").is_file()
    run_installer("--uninstall", env=env)
    assert not (unit_dir / "stoker.service").exists()


def test_install_talks_to_a_reachable_manager(
    tmp_path: Path, installer_env: dict[str, str], fake_bin: Path
) -> None:
    """With a (stub) user manager: daemon-reload after install; disable --now on uninstall."""
    log = stub_systemctl(tmp_path / "manager", manager=True)
    env = dict(installer_env, PATH=f"{tmp_path / 'manager'}{os.pathsep}{installer_env['PATH']}")
    run_installer("--bin", str(fake_bin), env=env)
    run_installer("--uninstall", env=env)
    calls = log.read_text().splitlines()
    assert "--user daemon-reload" in calls
    assert "--user disable --now stoker.socket stoker.service" in calls
    assert calls.count("--user daemon-reload") == 2  # after install and after removal


def test_install_path_with_spaces_and_percent(
    tmp_path: Path, installer_env: dict[str, str]
) -> None:
    odd = tmp_path / "my tools 100%" / "stoker"
    odd.parent.mkdir()
    odd.write_text("#!/bin/sh\nexit 0\n")
    odd.chmod(0o755)
    run_installer("--bin", str(odd), env=installer_env)
    unit_dir = tmp_path / "config" / "systemd" / "user"
    service = (unit_dir / "stoker.service").read_text()
    escaped = str(odd).replace("%", "%%")
    assert f'ExecStart="{escaped}" daemon\n' in service
    if SYSTEMD_ANALYZE is not None:
        verify([unit_dir / name for name in USER_UNITS], user=True, tmp_path=tmp_path)


def test_install_refuses_unrepresentable_path(
    tmp_path: Path, installer_env: dict[str, str]
) -> None:
    result = run_installer("--bin", str(tmp_path / 'a"b'), env=installer_env, check=False)
    assert result.returncode != 0
    assert "quotes" in result.stderr
    assert not (tmp_path / "config").exists()


def test_install_refuses_missing_binary(tmp_path: Path, installer_env: dict[str, str]) -> None:
    result = run_installer("--bin", str(tmp_path / "nope"), env=installer_env, check=False)
    assert result.returncode != 0
    assert "not an executable" in result.stderr


def _stoker_account_exists() -> bool:
    return subprocess.run(["getent", "passwd", "stoker"], capture_output=True).returncode == 0


def test_system_dry_run(installer_env: dict[str, str], fake_bin: Path) -> None:
    result = run_installer(
        "--system", "--create-user", "--dry-run", "--bin", str(fake_bin), env=installer_env
    )
    out = result.stdout
    assert "would write /etc/systemd/system/stoker-system.service" in out
    assert "would write /etc/systemd/system/stoker-system.socket" in out
    assert "systemctl enable --now stoker-system.socket" in out
    if not _stoker_account_exists():
        assert "would run: useradd --system" in out


@pytest.mark.skipif(_stoker_account_exists(), reason="this machine has a 'stoker' account")
def test_system_install_requires_the_account(
    tmp_path: Path, installer_env: dict[str, str], fake_bin: Path
) -> None:
    # As root this would otherwise install for real: --unit-dir keeps it in tmp_path.
    args = ("--system", "--unit-dir", str(tmp_path / "sys"), "--bin", str(fake_bin))
    result = run_installer(*args, env=installer_env, check=False)
    assert result.returncode != 0
    if os.geteuid() == 0:
        assert "--create-user" in result.stderr
    else:
        assert "needs root" in result.stderr
    assert not (tmp_path / "sys").exists()


def test_create_user_needs_system(installer_env: dict[str, str]) -> None:
    result = run_installer("--create-user", "--dry-run", env=installer_env, check=False)
    assert result.returncode != 0
    assert "--system" in result.stderr
