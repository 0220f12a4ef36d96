"""The config file's value types: durations ("500ms", "10s", "30m", "7d"), sizes ("8GiB",
"512KB" or a byte count) and the memory budget (a size or a share of the machine, "50%"),
with their parsers, their formatting, and msgspec's decode and encode hooks for them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any


class Duration(float):
    """Seconds, written in the file as "500ms", "10s", "5m", "2h", "7d" or a number."""

    def __repr__(self) -> str:
        return f"Duration({float(self)!r})"


class ByteSize(int):
    """Bytes, written as "8GiB", "512MB", "64KiB" or a number."""


def machine_memory() -> int:
    """This machine's physical memory, bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class MemoryBudget(ByteSize):
    """`lifecycle.memory_budget`: bytes, written as a size or as a share of this machine's
    memory ("50%", the default: a warm real agent is ~0.5 GiB, so 16 of them need 8 GiB)."""

    share: float | None = None
    """The percentage it was written as; None for a plain size."""

    @classmethod
    def of_machine(cls, percent: float, total: int | None = None) -> MemoryBudget:
        budget = cls(int((machine_memory() if total is None else total) * percent / 100))
        budget.share = percent
        return budget


DEFAULT_MEMORY_SHARE = 50.0
"""The default `memory_budget`, in percent of the machine's memory."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "B": 1,
    "K": 1000, "KB": 1000, "KIB": 1024, "KI": 1024,
    "M": 1000**2, "MB": 1000**2, "MIB": 1024**2, "MI": 1024**2,
    "G": 1000**3, "GB": 1000**3, "GIB": 1024**3, "GI": 1024**3,
    "T": 1000**4, "TB": 1000**4, "TIB": 1024**4, "TI": 1024**4,
}


def parse_duration(value: object) -> Duration:
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: must not be negative")
        return Duration(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return Duration(float(m.group(1)) * _DURATION_UNITS[m.group(2)])
    raise ValueError(f'invalid duration {value!r}: use e.g. "500ms", "10s", "30m", "2h", "7d"')


def parse_size(value: object) -> ByteSize:
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"invalid size {value!r}: must not be negative")
        return ByteSize(value)
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            unit = (m.group(2) or "").upper()
            if unit in _SIZE_UNITS:
                return ByteSize(int(float(m.group(1)) * _SIZE_UNITS[unit]))
    raise ValueError(f'invalid size {value!r}: use e.g. "8GiB", "512MB", "64KiB" or bytes')


_SHARE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


def parse_memory_budget(value: object) -> MemoryBudget:
    """A size, or a share of this machine's memory ("50%", more than 0, at most 100)."""
    if isinstance(value, str):
        m = _SHARE.match(value)
        if m:
            percent = float(m.group(1))
            if not 0 < percent <= 100:
                raise ValueError(f"invalid share {value!r}: between 0% and 100%")
            return MemoryBudget.of_machine(percent)
    try:
        return MemoryBudget(parse_size(value))
    except ValueError:
        raise ValueError(f'invalid memory budget {value!r}: use a share of this machine\'s '
                         'memory such as "50%", or a size such as "8GiB"') from None


def format_duration(seconds: float) -> str:
    """The shortest spelling `parse_duration` reads back exactly (never an exponent)."""
    if seconds and seconds < 1:
        millis = seconds * 1000
        if millis == int(millis):
            return f"{int(millis)}ms"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s"


def _dec_hook(type_: type, obj: Any) -> Any:
    """msgspec's hook for our own value types. A TypeError here becomes msgspec's
    ValidationError naming the field, as any other bad value does."""
    if type_ is Duration:
        return parse_duration(obj)
    if type_ is ByteSize:
        return parse_size(obj)
    if type_ is MemoryBudget:
        return parse_memory_budget(obj)
    raise TypeError(f"no decoder for {type_}")


def _enc_hook(obj: Any) -> Any:
    """The inverse of `_dec_hook`, for `dump` (which settings a reload changes)."""
    if isinstance(obj, Duration):
        return format_duration(float(obj))
    if isinstance(obj, ByteSize):
        return int(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot encode {type(obj)}")
