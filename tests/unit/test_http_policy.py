"""The HTTP policy and the console's login, pure: Host (DNS rebinding), Origin, token and
session cookie, one-time codes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from daemon.listeners.http.policy import check_request, host_allowed, split_host
from daemon.listeners.http.sessions import (
    COOKIE,
    CodeLedger,
    check_session,
    mint_code,
    mint_session,
)

TOKEN = "t" * 43
NOW = 1_000_000.0


def _check(headers: list[tuple[bytes, bytes]], method: bytes = b"POST", **kw: object) -> int:
    access = check_request(headers, method, token=TOKEN, allowed_origins=["https://ok.example"],
                           allowed_hosts=["stoker.test"], now=NOW, **kw)  # type: ignore[arg-type]
    return access.status


def test_host_names_that_cannot_be_rebound() -> None:
    assert split_host("[::1]:7717") == ("::1", "7717")
    assert split_host("127.0.0.1:80") == ("127.0.0.1", "80")
    assert split_host("localhost") == ("localhost", "")
    for good in ("127.0.0.1:7717", "[::1]:7717", "localhost:7717", "LOCALHOST.", "10.1.2.3",
                 "stoker.test:7717"):
        assert host_allowed(good, ["stoker.test"]), good
    for bad in ("evil.example:7717", "127.0.0.1.nip.io", "", ":7717", "localhost.evil.example"):
        assert not host_allowed(bad, ["stoker.test"]), bad


@given(st.from_regex(r"[a-z][a-z0-9-]{0,20}\.(com|net|example|io)", fullmatch=True))
def test_any_other_name_is_refused(name: str) -> None:
    auth = (b"authorization", f"Bearer {TOKEN}".encode())
    assert _check([(b"host", name.encode()), auth]) == 403


def test_order_host_origin_credentials() -> None:
    host = (b"host", b"127.0.0.1:7717")
    auth = (b"authorization", f"Bearer {TOKEN}".encode())
    assert _check([host, auth]) == 200
    assert _check([auth]) == 400  # no Host at all
    assert _check([host, host, auth]) == 400
    assert _check([(b"host", b"evil.example:7717"), auth]) == 403
    assert _check([host, auth, (b"origin", b"https://evil.example")]) == 403
    assert _check([host, auth, (b"origin", b"http://127.0.0.1:7717")]) == 200
    assert _check([host, auth, (b"origin", b"https://ok.example")]) == 200
    assert _check([host]) == 401
    assert _check([host, (b"authorization", b"Bearer wrong")]) == 401
    # Pages and the API document need no credentials, but still the Host and Origin rules.
    assert _check([host], need_credentials=False) == 200
    assert _check([(b"host", b"evil.example")], need_credentials=False) == 403


def test_session_cookie() -> None:
    host = (b"host", b"127.0.0.1:7717")
    own = (b"origin", b"http://127.0.0.1:7717")
    cookie = (b"cookie", f"other=1; {COOKIE}={mint_session(TOKEN, NOW)}".encode())
    assert _check([host, cookie, own]) == 200
    assert _check([host, cookie], method=b"GET") == 200
    assert _check([host, cookie]) == 403  # a POST with the cookie must carry its Origin
    stale = (b"cookie", f"{COOKIE}={mint_session(TOKEN, NOW - 8 * 86400)}".encode())
    assert _check([host, stale, own]) == 401
    rotated = (b"cookie", f"{COOKIE}={mint_session('other', NOW)}".encode())
    assert _check([host, rotated, own]) == 401
    assert check_session(mint_session(TOKEN, NOW), TOKEN, now=NOW)
    assert not check_session("1.2.3", TOKEN, now=NOW)


def test_login_codes_work_once_and_expire() -> None:
    ledger = CodeLedger()
    code = mint_code(TOKEN, NOW)
    assert not ledger.redeem(code, "another-token", NOW)
    assert ledger.redeem(code, TOKEN, NOW)
    assert not ledger.redeem(code, TOKEN, NOW + 1)
    assert not CodeLedger().redeem(mint_code(TOKEN, NOW), TOKEN, NOW + 121)
    forged = code.rsplit(".", 1)[0] + "." + "0" * 64
    assert not CodeLedger().redeem(forged, TOKEN, NOW)
