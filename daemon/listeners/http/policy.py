"""Who may send an HTTP request to the daemon: pure checks on the request's headers.

The rules are the WebSocket handshake's (`daemon.listeners.websocket.auth`), plus what a
page served by the daemon itself needs:

* **Host** (DNS rebinding): the `Host` header must name the daemon by an IP address, as
  `localhost`, or as a name listed in `[websocket] allowed_hosts`. A page on
  `evil.example` whose name was re-pointed at 127.0.0.1 sends `Host: evil.example:PORT`
  and is refused (403) before anything else is looked at. An IP literal cannot be rebound.
* **Origin**: a request that carries one must come from the daemon's own origin
  (`http://` + the accepted Host: the console) or from one listed in `allowed_origins`.
* **Credentials**: `Authorization: Bearer <token>` (programs, `curl`), or the console's
  session cookie. A request authenticated by the cookie that changes something (any
  method but GET/HEAD) must carry an Origin (every browser sends one on such requests), so a
  form on another site cannot use the cookie even in a browser that ignores SameSite.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from daemon.listeners.http.sessions import COOKIE, check_session

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Access:
    """The outcome: `status` 200 lets the request through; anything else is the HTTP
    status of the refusal. `client` names the caller in `by` fields."""

    status: int
    reason: str = ""
    via: str = ""
    """How the caller authenticated: "token", "session" or "" (not at all)."""
    origin: str | None = None
    """The request's Origin, when it carried an allowed one (for CORS headers)."""

    @property
    def allowed(self) -> bool:
        return self.status == 200


def header(headers: Headers, name: bytes) -> bytes | None:
    """The value of the first header called `name` (lower case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def split_host(host: str) -> tuple[str, str]:
    """`host[:port]` -> (host without brackets, port or "")."""
    host = host.strip()
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") else ""
    if host.count(":") == 1:
        name, _, port = host.partition(":")
        return name, port
    return host, ""


def host_allowed(host: str, allowed_hosts: Collection[str]) -> bool:
    """Whether a `Host` header names the daemon in a way DNS rebinding cannot forge."""
    name, _ = split_host(host)
    if not name:
        return False
    lowered = name.lower().rstrip(".")
    if lowered == "localhost" or lowered in {h.lower() for h in allowed_hosts}:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def check_host(headers: Headers, allowed_hosts: Collection[str]) -> Access:
    hosts = [value for key, value in headers if key.lower() == b"host"]
    if len(hosts) != 1:
        return Access(400, "exactly one Host header is required")
    host = hosts[0].decode("latin-1")
    if not host_allowed(host, allowed_hosts):
        return Access(403, f"host {host!r} is not allowed: use an IP address or localhost, "
                           "or list the name in [websocket] allowed_hosts")
    return Access(200)


def bearer_tokens(headers: Headers) -> list[bytes]:
    found: list[bytes] = []
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credential = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and credential.strip():
                found.append(credential.strip())
    return found


def cookies(headers: Headers) -> dict[str, str]:
    jar: dict[str, str] = {}
    for name, value in headers:
        if name.lower() == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, sep, val = part.strip().partition("=")
                if sep and key not in jar:
                    jar[key] = val
    return jar


def check_request(headers: Headers, method: bytes, *, token: str,
                  allowed_origins: Collection[str], allowed_hosts: Collection[str],
                  now: float, need_credentials: bool = True) -> Access:
    """Decide one request from its headers. Host first (a rebinding page learns nothing),
    then Origin (a foreign page is refused as such, whatever it presents), then the token
    or the session cookie."""
    host = check_host(headers, allowed_hosts)
    if not host.allowed:
        return host
    origins = [value for key, value in headers if key.lower() == b"origin"]
    if len(origins) > 1:
        return Access(403, "more than one Origin header")
    origin: str | None = None
    if origins:
        origin = origins[0].decode("latin-1").strip()
        own = "http://" + (header(headers, b"host") or b"").decode("latin-1").strip()
        if origin != own and origin not in allowed_origins:
            return Access(403, f"origin {origin!r} is not allowed "
                               "(see [websocket] allowed_origins)")
    if not need_credentials:
        return Access(200, origin=origin)
    expected = token.encode("utf-8")
    candidates = bearer_tokens(headers)
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(candidate, expected)
    if matched:
        return Access(200, via="token", origin=origin)
    if candidates:
        return Access(401, "wrong token")
    session = cookies(headers).get(COOKIE)
    if session is not None and check_session(session, token, now=now):
        if method not in (b"GET", b"HEAD") and origin is None:
            return Access(403, "a request with the session cookie must carry an Origin")
        return Access(200, via="session", origin=origin)
    if session is not None:
        return Access(401, "the session has expired or the token was rotated: "
                           "run `stoker web` again")
    return Access(401, "a bearer token is required (see `stoker token`)")
