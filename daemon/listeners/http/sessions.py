"""The console's login: a one-time code in a URL, exchanged for a session cookie.

Both are signed with the bearer token (HMAC-SHA256), so the daemon keeps no session table:
`stoker web` (which can read the token file, as its user) mints a code, the browser opens
`/login?code=...`, and the daemon answers with a cookie and a redirect to `/`. The token
itself never appears in a URL, a page or the browser's history.

* A **code** is valid for `CODE_TTL` seconds and once: the daemon remembers the codes it
  accepted until they expire (`CodeLedger`).
* A **session** lasts `SESSION_TTL` seconds. Rotating the token (`stoker token --rotate`)
  ends every session at once, as it refuses the old token everywhere else.

Format: `<expiry>.<nonce>.<mac>`, where mac = HMAC(token, "<purpose>|<expiry>|<nonce>").
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

COOKIE = "stoker_session"
CODE_TTL = 120.0
SESSION_TTL = 7 * 86400.0


def _mac(token: str, purpose: str, expiry: int, nonce: str) -> str:
    message = f"{purpose}|{expiry}|{nonce}".encode()
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def _mint(token: str, purpose: str, ttl: float, now: float) -> str:
    expiry = int(now + ttl)
    nonce = secrets.token_urlsafe(12)
    return f"{expiry}.{nonce}.{_mac(token, purpose, expiry, nonce)}"


def _check(value: str, token: str, purpose: str, now: float) -> tuple[int, str] | None:
    """(expiry, nonce) of a valid, unexpired value, else None."""
    parts = value.split(".")
    if len(parts) != 3 or not parts[0].isdigit():
        return None
    expiry, nonce, mac = int(parts[0]), parts[1], parts[2]
    if not hmac.compare_digest(mac.encode(), _mac(token, purpose, expiry, nonce).encode()):
        return None
    if expiry < now:
        return None
    return expiry, nonce


def mint_code(token: str, now: float) -> str:
    return _mint(token, "login", CODE_TTL, now)


def mint_session(token: str, now: float) -> str:
    return _mint(token, "session", SESSION_TTL, now)


def check_session(value: str, token: str, *, now: float) -> bool:
    return _check(value, token, "session", now) is not None


class CodeLedger:
    """The login codes already used, kept until they expire (one use each)."""

    def __init__(self) -> None:
        self._used: dict[str, int] = {}

    def redeem(self, code: str, token: str, now: float) -> bool:
        """True once for a valid code; False when invalid, expired or already used."""
        checked = _check(code, token, "login", now)
        if checked is None:
            return False
        expiry, nonce = checked
        self._used = {n: e for n, e in self._used.items() if e >= now}
        if nonce in self._used:
            return False
        self._used[nonce] = expiry
        return True
