"""The WebSocket handshake policy and the token file, without a daemon (both are pure or
touch only a temporary directory)."""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.listeners.websocket.auth import (
    check_handshake,
    is_loopback,
    presented_tokens,
    websocket_url,
)
from daemon.listeners.websocket.token import TokenFileError, ensure_token, read_token, rotate_token

TOKEN = "s3cret-token_value"
ORIGIN = "https://ok.example"


def _check(headers: list[tuple[bytes, bytes]], subprotocols: tuple[str, ...] = (),
           allowed: tuple[str, ...] = (ORIGIN,)) -> tuple[int, str | None]:
    verdict = check_handshake(headers, subprotocols, token=TOKEN, allowed_origins=allowed)
    return verdict.status, verdict.subprotocol


def test_bearer_header_is_required_and_compared() -> None:
    assert _check([])[0] == 401
    assert _check([(b"authorization", b"Bearer wrong")])[0] == 401
    assert _check([(b"authorization", b"Basic " + TOKEN.encode())])[0] == 401
    assert _check([(b"authorization", b"Bearer")])[0] == 401
    assert _check([(b"authorization", b"Bearer " + TOKEN.encode())]) == (101, None)
    assert _check([(b"Authorization", b"bearer  " + TOKEN.encode() + b" ")]) == (101, None)


def test_subprotocol_token_selects_plain_stoker() -> None:
    offered = ("stoker", f"stoker.bearer.{TOKEN}")
    assert _check([], offered) == (101, "stoker")
    # Without `stoker` on offer no subprotocol is selected (the token is never echoed).
    assert _check([], (f"stoker.bearer.{TOKEN}",)) == (101, None)
    assert _check([], ("stoker", "stoker.bearer.nope"))[0] == 401
    assert _check([], ("stoker", "stoker.bearer."))[0] == 401


def test_origin_must_be_listed_exactly() -> None:
    auth = (b"authorization", b"Bearer " + TOKEN.encode())
    assert _check([auth, (b"origin", ORIGIN.encode())])[0] == 101
    for bad in ("https://ok.example.evil", "http://ok.example", "null", "HTTPS://OK.EXAMPLE"):
        assert _check([auth, (b"origin", bad.encode())])[0] == 403, bad
    assert _check([auth, (b"origin", ORIGIN.encode())], allowed=())[0] == 403
    two = [auth, (b"origin", ORIGIN.encode()), (b"origin", ORIGIN.encode())]
    assert _check(two)[0] == 403
    # The Origin rule comes first: a page is told 403 whatever it presents.
    assert _check([(b"origin", b"https://evil.example")])[0] == 403


@given(st.text(min_size=1, max_size=60).filter(lambda t: t.strip() == t and t != TOKEN))
def test_no_other_token_is_accepted(other: str) -> None:
    header = (b"authorization", ("Bearer " + other).encode())
    assert _check([header])[0] == 401
    assert _check([], ("stoker", "stoker.bearer." + other))[0] == 401


def test_presented_tokens_collects_every_credential() -> None:
    found = presented_tokens([(b"authorization", b"Bearer a"), (b"x-other", b"Bearer b")],
                             ["stoker", "stoker.bearer.c"])
    assert found == [b"a", b"c"]


def test_loopback_and_url() -> None:
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("")
    assert not is_loopback("10.1.2.3")
    assert websocket_url("127.0.0.1", 7717) == "ws://127.0.0.1:7717/"
    assert websocket_url("::1", 80) == "ws://[::1]:80/"


# ------------------------------------------------------------------------- token file


@pytest.fixture
def state_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "state"


def test_token_is_created_once_private_and_kept(state_dir: Path) -> None:
    path = state_dir / "websocket.token"
    assert read_token(path) is None
    token = ensure_token(path)
    assert len(token) >= 43
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert ensure_token(path) == token
    assert read_token(path) == token
    assert [p.name for p in state_dir.iterdir()] == ["websocket.token"], "no temp file left"


def test_rotate_replaces_atomically(state_dir: Path) -> None:
    path = state_dir / "websocket.token"
    first = ensure_token(path)
    second = rotate_token(path)
    assert second != first
    assert read_token(path) == second
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in state_dir.iterdir()] == ["websocket.token"]


def test_loose_permissions_are_tightened_and_empty_file_refused(state_dir: Path) -> None:
    path = state_dir / "websocket.token"
    token = ensure_token(path)
    os.chmod(path, 0o644)
    assert read_token(path) == token
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("")
    with pytest.raises(TokenFileError):
        read_token(path)
