"""The host's process table: parents, groups and resident memory from one scan of /proc,
shared by every caller that accepts its age (`status`, `ls`, the memory budget, the stops of
a shutdown), so that N warm agents cost one scan, not N.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass

import psutil


@dataclass(frozen=True, slots=True)
class ProcessTableStatistics:
    scans: int
    """How many times the table read every process on the host."""
    age: float
    """Seconds since the last scan (inf before the first)."""


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
@dataclass(frozen=True, slots=True)
class _Snapshot:
    children: dict[int, list[int]]
    rss: dict[int, int]
    groups: dict[int, list[int]] | None
    """Each process group's members that are not zombies; None: unknown (no /proc)."""


def _scan_proc() -> _Snapshot:
    """Every process's parent, group, state and resident bytes, from one pass over /proc
    (all in each process's `stat` file)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    groups: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as handle:
                data = handle.read()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        # The command name (field 2) may hold spaces and parentheses: split after its end.
        fields = data[data.rfind(b")") + 2:].split()
        try:
            pid, ppid, pgrp, pages = int(name), int(fields[1]), int(fields[2]), int(fields[21])
        except (IndexError, ValueError):
            continue
        rss[pid] = pages * _PAGE
        children.setdefault(ppid, []).append(pid)
        if fields[0] not in (b"Z", b"X"):
            groups.setdefault(pgrp, []).append(pid)
    return _Snapshot(children, rss, groups)


def _scan_psutil() -> _Snapshot:
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for proc in psutil.process_iter(["ppid", "memory_info"]):
        info = proc.info
        if info.get("memory_info") is None or info.get("ppid") is None:
            continue
        rss[proc.pid] = int(info["memory_info"].rss)
        children.setdefault(int(info["ppid"]), []).append(proc.pid)
    return _Snapshot(children, rss, None)


class ProcessTable:
    """The host's processes (parents, groups, resident memory), from one scan shared by
    every caller that accepts its age.

    `status`, `ls` and the memory budget ask for the RSS of every warm agent's tree at
    once, and a shutdown stops every agent at once; a `children(recursive=True)` per agent
    read all of /proc once *per agent*, in a thread holding the GIL (10 s for a `status`
    at 500 warm agents; a shutdown's stops queued behind each other's scans). One scan
    serves them all. Thread safe: callers run in worker threads."""

    def __init__(self, max_age: float = 0.5) -> None:
        self.max_age = max_age
        """How old an answer `tree_rss` accepts."""
        self._lock = threading.Lock()
        self._scanned = -math.inf
        self._scan_began = -math.inf
        """When the last scan began reading /proc (what it shows existed by then)."""
        self._scans = 0
        self._snapshot = _Snapshot({}, {}, None)

    def _fresh(self, max_age: float) -> _Snapshot:
        if time.monotonic() - self._scanned >= max_age:
            self._rescan()
        return self._snapshot

    def _rescan(self) -> None:
        began = time.monotonic()
        self._snapshot = _scan_proc() if os.path.isdir("/proc/self") else _scan_psutil()
        self._scan_began = began
        self._scanned = time.monotonic()
        self._scans += 1

    def _tree(self, snapshot: _Snapshot, pid: int) -> list[int]:
        found: list[int] = []
        todo = [pid]
        seen: set[int] = set()
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            found.append(current)
            todo.extend(snapshot.children.get(current, ()))
        return found

    def tree_rss(self, pid: int) -> int | None:
        """RSS of `pid` and all its descendants in bytes; None if `pid` is not running."""
        with self._lock:
            snapshot = self._fresh(self.max_age)
            if pid not in snapshot.rss:
                return None
            return sum(snapshot.rss.get(p, 0) for p in self._tree(snapshot, pid))

    def descendants(self, pid: int, since: float) -> list[int]:
        """The pids of `pid`'s descendants, from a scan that began at or after `since`
        (monotonic): it shows every process that existed then. Callers that ask at once
        (a shutdown's stops) share one scan; a scan from before the question is never used,
        since a child made after it (and gone from the group since) would be missed."""
        with self._lock:
            if self._scan_began < since:
                self._rescan()
            return self._tree(self._snapshot, pid)[1:]

    def group_runs(self, pgid: int, max_age: float) -> bool:
        """Whether a member of process group `pgid` is not a zombie (True when unknown)."""
        with self._lock:
            groups = self._fresh(max_age).groups
            return groups is None or bool(groups.get(pgid))

    def group_runs_now(self, pgid: int, max_age: float) -> bool | None:
        """`group_runs` from the last scan if it is young enough and no scan is running;
        None otherwise. Never blocks: for the event loop's thread."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if time.monotonic() - self._scanned >= max_age:
                return None
            groups = self._snapshot.groups
            return groups is None or bool(groups.get(pgid))
        finally:
            self._lock.release()

    def statistics(self) -> ProcessTableStatistics:
        with self._lock:
            return ProcessTableStatistics(scans=self._scans,
                                          age=time.monotonic() - self._scanned)


PROCESSES = ProcessTable()
"""The host's process table, shared by every local agent's `rss()` and `stop`."""
