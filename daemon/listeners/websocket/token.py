"""The WebSocket bearer token: one secret in a 0600 file in the state dir.

The file is the single source of truth. `stoker token` prints it (creating it when missing,
so it works before the daemon ever ran), `stoker token --rotate` replaces it, and the daemon
re-reads it on every WebSocket handshake, so a rotation takes effect at once without a
SIGHUP or a restart (connections already open stay open: they were authorised when they
opened).

Writes are atomic: the new token goes to a private temporary file in the same directory,
which is then linked (create: never clobbers a token another process just made) or renamed
(rotate) into place. A reader therefore sees the old token or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from daemon.config.paths import ensure_private_dir

TOKEN_BYTES = 32
"""256 bits of randomness; `token_urlsafe` makes it 43 characters of [A-Za-z0-9_-], which are
all valid in an HTTP header and in a `Sec-WebSocket-Protocol` token."""


class TokenFileError(Exception):
    """The token file exists but cannot be used (unreadable, empty, someone else's)."""


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def read_token(path: Path) -> str | None:
    """The token in `path`, or None when the file does not exist.

    A file that is more open than 0600 is tightened (a token others can read is no secret);
    one owned by another user, or an empty one, is refused with `TokenFileError`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise TokenFileError(f"cannot read the token file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise TokenFileError(f"{path} is owned by uid {st.st_uid}, not by us")
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
        data = os.read(fd, 4096)
    finally:
        os.close(fd)
    token = data.decode("ascii", errors="replace").strip()
    if not token:
        raise TokenFileError(f"the token file {path} is empty; run `stoker token --rotate`")
    return token


def _write_temp(directory: Path, token: str) -> Path:
    tmp = directory / f".websocket.token.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (token + "\n").encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def ensure_token(path: Path) -> str:
    """The existing token, or a new one written atomically when there is none."""
    existing = read_token(path)
    if existing is not None:
        return existing
    ensure_private_dir(path.parent)
    tmp = _write_temp(path.parent, new_token())
    try:
        # link() fails if the file appeared meanwhile: then the other writer's token wins.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    token = read_token(path)
    if token is None:  # removed again between link and read: extremely unlikely
        raise TokenFileError(f"the token file {path} vanished while it was created")
    return token


def rotate_token(path: Path) -> str:
    """Replace the token with a new one (atomically) and return it."""
    ensure_private_dir(path.parent)
    token = new_token()
    tmp = _write_temp(path.parent, token)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return token
