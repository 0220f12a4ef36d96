"""Discovering workflow files: `.stoker/workflows/NAME.toml` in a project (the directory
and each one above it, up to the project's root, the first holding `.git`), then
`workflows/NAME.toml` next to the config file. The nearest file of a name wins."""

from __future__ import annotations

import os
from pathlib import Path

SUFFIX = ".toml"


def places(cwd: str | None, config_dir: Path | None) -> list[str]:
    """The directories searched, nearest first (whether or not they exist)."""
    found: list[str] = []
    if cwd is not None:
        here = Path(cwd)
        for directory in (here, *here.parents):
            found.append(str(directory / ".stoker" / "workflows"))
            if (directory / ".git").exists():
                break
    if config_dir is not None:
        found.append(str(config_dir / "workflows"))
    return found


def discover(cwd: str | None, config_dir: Path | None) -> list[tuple[str, Path]]:
    """(name, file) of every workflow found, nearest first, one per name."""
    seen: dict[str, Path] = {}
    for place in places(cwd, config_dir):
        try:
            names = sorted(os.listdir(place))
        except OSError:
            continue
        for entry in names:
            path = Path(place) / entry
            if entry.endswith(SUFFIX) and path.is_file():
                seen.setdefault(entry[:-len(SUFFIX)], path)
    return list(seen.items())


def find(workflow: str, *, cwd: str | None, config_dir: Path | None) -> Path | None:
    """The file `workflow` names: a path (relative to `cwd`), else a discovered name."""
    path = Path(cwd or os.getcwd()) / os.path.expanduser(workflow)
    if path.is_file():
        return path.resolve()
    for name, found in discover(cwd, config_dir):
        if name == workflow.removesuffix(SUFFIX):
            return found
    return None
