"""The per-chat credential of Stoker's MCP server.

The daemon gives each chat's MCP server (`stoker mcp --chat ID`) a credential: an HMAC of
the chat id under a key the daemon draws at start. The server sends it with every request
it makes for that chat; the tasks subsystem checks it, so an MCP server (or an agent that
read another chat's environment) cannot act as a chat it was not given. The key lives in
memory only: every agent process, and so every MCP server it started, is restarted with
the daemon, and gets a fresh credential then.

Not a boundary against the user's own processes (any process of the daemon's user may
talk to its socket without one); it keeps an agent's delegation to its own chat.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ENV_CREDENTIAL = "STOKER_MCP_CREDENTIAL"
"""The variable that carries the credential to `stoker mcp` (never its argv: argv is
visible to every user of the machine in `ps`)."""

_key = secrets.token_bytes(32)


def credential_for(chat: str) -> str:
    """The credential of `chat`'s MCP server."""
    return hmac.new(_key, chat.encode(), hashlib.sha256).hexdigest()


def valid(chat: str, credential: str) -> bool:
    """Whether `credential` is `chat`'s (constant-time comparison)."""
    return hmac.compare_digest(credential_for(chat), credential)
