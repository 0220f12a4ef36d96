"""Structured logging: one logfmt line per event on stderr.

`level=info actor=backend chat=c1 agent=echo gen=2 event="agent started" pid=4242`

Under systemd (`JOURNAL_STREAM` set) each line starts with a `<N>` syslog priority so journald
records the level, and the timestamp is left to journald. Fields whose names suggest secrets
(token, key, secret, password, authorization) are redacted; prompt text is logged only at
debug level (callers pass it as `text=`, which is dropped above debug).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

_SECRET_WORDS = ("token", "secret", "password", "passwd", "authorization", "api_key", "apikey")
_DEBUG_ONLY = frozenset({"text", "prompt", "content"})
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _quote(value: object) -> str:
    text = value if isinstance(value, str) else repr(value) if value is None else str(value)
    if text == "" or any(c in text for c in ' ="\n\t\\'):
        text = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{text}"'
    return text


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of `env` fit for a log line: values of secret-looking variables hidden."""
    return {k: ("<redacted>" if is_secret_key(k) else v) for k, v in env.items()}


class LogfmtFormatter(logging.Formatter):
    def __init__(self, *, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", {})
        parts: list[str] = []
        if self.journald:
            parts.append(f"<{_PRIORITY.get(record.levelno, 6)}>level={record.levelname.lower()}")
        else:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
            parts.append(f"{stamp}.{int(record.msecs):03d}")
            parts.append(f"level={record.levelname.lower()}")
        actor = fields.get("actor") or record.name.removeprefix("stoker.")
        parts.append(f"actor={_quote(actor)}")
        for key in ("chat", "agent", "gen"):
            if key in fields and fields[key] is not None:
                parts.append(f"{key}={_quote(fields[key])}")
        parts.append(f"event={_quote(record.getMessage())}")
        debug = record.levelno <= logging.DEBUG
        for key, value in fields.items():
            if key in ("actor", "chat", "agent", "gen"):
                continue
            if key in _DEBUG_ONLY and not debug:
                continue
            parts.append(f"{key}={'<redacted>' if is_secret_key(key) else _quote(value)}")
        line = " ".join(parts)
        if record.exc_info:
            trace = self.formatException(record.exc_info).replace("\n", "\n    ")
            line = f"{line}\n    {trace}"
        return line


_pinned_level: str | None = None
"""`stoker daemon --log-level`: beats the config's log_level, also after a reload."""


def setup(level: str = "info", stream: TextIO | None = None, *, pinned: bool = False) -> None:
    """Install the formatter on the `stoker` logger tree (idempotent). `pinned`: the level
    came from the command line, so a config reload (`set_level`) must not change it."""
    global _pinned_level
    _pinned_level = level if pinned else None
    root = logging.getLogger("stoker")
    root.setLevel(LEVELS.get(level, logging.INFO))
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogfmtFormatter(journald=bool(os.environ.get("JOURNAL_STREAM"))))
    root.addHandler(handler)
    root.propagate = False


def set_level(level: str) -> None:
    """Apply the config's log_level (after a reload), unless the command line pinned one."""
    logging.getLogger("stoker").setLevel(LEVELS.get(_pinned_level or level, logging.INFO))


class Log:
    """A logger bound to an actor and context fields (chat, agent, generation...)."""

    __slots__ = ("_ctx", "_logger")

    def __init__(self, actor: str, **ctx: Any) -> None:
        self._logger = logging.getLogger(f"stoker.{actor}")
        self._ctx: dict[str, Any] = {"actor": actor, **ctx}

    def bind(self, **ctx: Any) -> Log:
        new = Log.__new__(Log)
        new._logger = self._logger
        new._ctx = {**self._ctx, **ctx}
        return new

    def _log(self, level: int, event: str, exc: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": {**self._ctx, **fields}},
                             exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, False, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """Log at error level with the current exception's traceback."""
        self._log(logging.ERROR, event, True, fields)

    def enabled(self, level: int) -> bool:
        return self._logger.isEnabledFor(level)
