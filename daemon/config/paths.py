"""Where things live: socket, state dir, config file.

Resolution order for each: command-line flag, then environment variable (`STOKER_SOCKET`,
`STOKER_STATE_DIR`, `STOKER_CONFIG`), then the XDG default. Clients use the same rules, so
`stoker send` finds the daemon `stoker daemon` started, with no configuration.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or os.path.expanduser("~"))


def runtime_dir(env: Mapping[str, str] | None = None) -> Path:
    """`$XDG_RUNTIME_DIR/stoker`, or `/tmp/stoker-$UID` when there is no runtime dir."""
    env = os.environ if env is None else env
    base = env.get("XDG_RUNTIME_DIR")
    if base:
        return Path(base) / "stoker"
    return Path(f"/tmp/stoker-{os.getuid()}")


def default_socket(env: Mapping[str, str] | None = None) -> Path:
    return runtime_dir(env) / "stoker.sock"


def default_state_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_STATE_HOME")
    root = Path(base) if base else _home(env) / ".local" / "state"
    return root / "stoker"


def default_config(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME")
    root = Path(base) if base else _home(env) / ".config"
    return root / "stoker" / "config.toml"


@dataclass(frozen=True, slots=True)
class Paths:
    socket: Path
    state_dir: Path
    config: Path
    config_explicit: bool
    """True when the config path was given (flag or env): then it must exist."""

    @property
    def database(self) -> Path:
        return self.state_dir / "stoker.db"

    @property
    def token_file(self) -> Path:
        return self.state_dir / "websocket.token"

    @property
    def lock_file(self) -> Path:
        return self.state_dir / "daemon.lock"


def resolve(
    *,
    socket: str | None = None,
    state_dir: str | None = None,
    config: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Paths:
    env = os.environ if env is None else env
    sock = socket or env.get("STOKER_SOCKET") or None
    state = state_dir or env.get("STOKER_STATE_DIR") or None
    conf = config or env.get("STOKER_CONFIG") or None
    return Paths(
        socket=Path(sock).expanduser() if sock else default_socket(env),
        state_dir=Path(state).expanduser() if state else default_state_dir(env),
        config=Path(conf).expanduser() if conf else default_config(env),
        config_explicit=conf is not None,
    )


def ensure_private_dir(path: Path) -> None:
    """Create `path` (and parents) and make it 0700; refuse one owned by someone else.

    The socket's directory is what actually protects the socket on systems where socket
    file permissions are not enforced, so its mode matters as much as the socket's.
    """
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} is owned by uid {st.st_uid}, not by us ({os.getuid()})")
    if st.st_mode & 0o077:
        path.chmod(0o700)
