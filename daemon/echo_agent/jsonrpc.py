"""The JSON-RPC 2.0 vocabulary the echo agent speaks: error codes, the error it answers with,
and the one JSON encoding every line it writes goes through. Imports nothing of the agent.
"""

from __future__ import annotations

import json
from typing import Any, Final

JsonObj = dict[str, Any]

PARSE_ERROR: Final = -32700
INVALID_REQUEST: Final = -32600
METHOD_NOT_FOUND: Final = -32601
INVALID_PARAMS: Final = -32602
INTERNAL_ERROR: Final = -32603
AUTH_REQUIRED: Final = -32000
RESOURCE_NOT_FOUND: Final = -32002


class RpcError(Exception):
    """A JSON-RPC error to answer a request with."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> JsonObj:
        """The response's ``error`` member; ``data`` only when there is some."""
        err: JsonObj = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


def json_bytes(obj: Any) -> bytes:
    """Compact JSON in UTF-8; lone surrogates fall back to ASCII escapes (still valid JSON)."""
    try:
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def param_str(params: JsonObj, key: str) -> str:
    """``params[key]`` when it is a string, else -32602 naming the key."""
    value = params.get(key)
    if not isinstance(value, str):
        raise RpcError(INVALID_PARAMS, f"{key} must be a string")
    return value
