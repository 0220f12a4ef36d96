"""Who may open a WebSocket: the handshake policy, pure (the listener is `listener.py`, the
subsystem that starts it `service.py`).

The WebSocket listener serves the client protocol over WebSocket, for browsers and remote
tools. Off by default (`[websocket] enabled = false`) and bound to 127.0.0.1 unless the config says
otherwise. Every connection speaks exactly the protocol of the Unix socket (the same
`Connection` actor serves it), one protocol message per WebSocket message: msgpack in binary
messages or JSON in text messages, as the client chooses in `hello.encoding`.

Who may connect is decided in the HTTP handshake, before the upgrade is accepted, so that a
refused peer never reaches the protocol at all:

* `Host` (checked by the listener first, with `daemon.listeners.http.policy.check_host`):
  an IP address, `localhost` or a name in `allowed_hosts`, else 403 (DNS rebinding). The
  same port serves plain HTTP too (`daemon/listeners/http/`, docs/WEB.md) under the same
  rules.

* `Origin`: a request that carries one (every browser sends it) is refused with 403 unless
  the origin is listed in `allowed_origins` (exact match; default: none). A web page the user
  happens to visit can therefore not drive the daemon, even with a guessed or leaked token.
  Requests without `Origin` come from programs, not pages, and need only the token.
* The bearer token (`stoker token` prints it) is sent as `Authorization: Bearer <token>` or,
  by browsers (which cannot set headers on a WebSocket), as a subprotocol
  `stoker.bearer.<token>` next to a plain `stoker`; the daemon then selects `stoker`, so the
  token is never echoed back. Missing or wrong: 401. The token file is re-read on every
  handshake, so `stoker token --rotate` takes effect at once.
* More than `max_connections` open connections: 503.

`max_message` bounds what a client may send (trio-websocket's `max_message_size`): a larger
message closes that connection with 1009 (Message Too Big); the daemon and the other clients
are unaffected. `enabled`, `host`, `port` and `max_message` are read at startup;
`allowed_origins` and `max_connections` are re-read from the live config at every handshake,
so a reload changes them.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from daemon.listeners.http.policy import bearer_tokens

SUBPROTOCOL = "stoker"
"""The subprotocol the daemon selects when the client offers it."""
BEARER_PREFIX = "stoker.bearer."
"""A subprotocol carrying the token, for browsers (which cannot send `Authorization`)."""
MESSAGE_TOO_BIG = 1009
GOING_AWAY = 1001
HANDSHAKE_TIMEOUT = 10.0
"""A peer that has not finished its HTTP handshake by then is dropped (slowloris)."""
CLOSE_TIMEOUT = 2.0
MESSAGE_QUEUE = 4
"""Messages trio-websocket buffers ahead of the connection's reader: small, so that a client
flooding requests is slowed by TCP backpressure rather than by our memory."""


# ------------------------------------------------------------------------- handshake policy


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a handshake check: `status` 101 accepts, anything else is the HTTP
    status of the refusal."""

    status: int
    reason: str = ""
    subprotocol: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == 101


def presented_tokens(headers: Sequence[tuple[bytes, bytes]], subprotocols: Sequence[str]
                     ) -> list[bytes]:
    """Every credential the request carries: `Authorization: Bearer` values and
    `stoker.bearer.*` subprotocols."""
    found = bearer_tokens(headers)
    for proto in subprotocols:
        if proto.startswith(BEARER_PREFIX) and len(proto) > len(BEARER_PREFIX):
            found.append(proto[len(BEARER_PREFIX):].encode("utf-8", errors="replace"))
    return found


def check_handshake(headers: Sequence[tuple[bytes, bytes]], subprotocols: Sequence[str], *,
                    token: str, allowed_origins: Collection[str]) -> Verdict:
    """Decide a handshake from its headers alone. Pure: the listener adds the connection
    limit, which is state.

    The Origin rule comes first: a browser page must be refused as such (403) whatever it
    presents, and a wrong-token answer would tell it nothing useful anyway."""
    origins = [value for name, value in headers if name.lower() == b"origin"]
    if len(origins) > 1:
        return Verdict(403, "more than one Origin header")
    if origins:
        origin = origins[0].decode("latin-1").strip()
        if origin not in allowed_origins:
            return Verdict(403, f"origin {origin!r} is not allowed "
                                "(see [websocket] allowed_origins)")
    candidates = presented_tokens(headers, subprotocols)
    if not candidates:
        return Verdict(401, "a bearer token is required (see `stoker token`)")
    expected = token.encode("utf-8")
    # Compare against every candidate (no early exit) in constant time per comparison.
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(candidate, expected)
    if not matched:
        return Verdict(401, "wrong token")
    return Verdict(101, subprotocol=SUBPROTOCOL if SUBPROTOCOL in subprotocols else None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def websocket_url(host: str, port: int) -> str:
    shown = host or "0.0.0.0"
    if ":" in shown:
        shown = f"[{shown}]"
    return f"ws://{shown}:{port}/"
