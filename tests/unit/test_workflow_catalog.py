"""Discovering workflow files (daemon/workflows/catalog.py): the project's
.stoker/workflows/ up to its root, then the config dir's workflows/, the nearest first."""

from __future__ import annotations

from pathlib import Path

from daemon.workflows import catalog


def put(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text("")
    return path


def test_the_nearest_file_of_a_name_wins_up_to_the_project_root(tmp_path: Path) -> None:
    outside = put(tmp_path / ".stoker" / "workflows", "outside")
    project = tmp_path / "proj"
    (project / ".git").mkdir(parents=True)
    root_review = put(project / ".stoker" / "workflows", "review")
    root_only = put(project / ".stoker" / "workflows", "build")
    sub = project / "pkg" / "mod"
    near_review = put(sub / ".stoker" / "workflows", "review")
    config = tmp_path / "config"
    from_config = put(config / "workflows", "global")
    put(config / "workflows", "build")
    (sub / ".stoker" / "workflows" / "notes.txt").write_text("not a workflow")

    found = dict(catalog.discover(str(sub), config))
    assert found == {"review": near_review, "build": root_only, "global": from_config}
    assert outside not in found.values()  # above the project's root
    assert catalog.places(str(sub), config)[-1] == str(config / "workflows")
    assert catalog.find("review", cwd=str(project), config_dir=config) == root_review
    assert catalog.find("review.toml", cwd=str(sub), config_dir=config) == near_review
    assert catalog.find("nope", cwd=str(sub), config_dir=config) is None


def test_a_path_is_found_relative_to_the_directory(tmp_path: Path) -> None:
    path = put(tmp_path / "flows", "x")
    assert catalog.find("flows/x.toml", cwd=str(tmp_path), config_dir=None) == path
    assert catalog.find(str(path), cwd="/", config_dir=None) == path
