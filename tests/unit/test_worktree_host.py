"""The local host's destructive operations refuse anything not strictly under the worktree
root and never follow a symlink (real files in a temp dir; no daemon)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from daemon.workspaces.hosts import LocalHost, UnsafePath


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "proj" / "wt" / "sub").mkdir(parents=True)
    (root / "proj" / "wt" / "sub" / "f.txt").write_text("x")
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    return root, outside


async def test_remove_tree_never_follows_symlinks(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    wt = root / "proj" / "wt"
    (wt / "link").symlink_to(outside)
    (wt / "sub" / "filelink").symlink_to(outside / "precious.txt")
    await LocalHost().remove_tree(str(wt), root=str(root))
    assert not wt.exists()
    assert (outside / "precious.txt").read_text() == "keep me"


async def test_refuses_symlinked_top_directory(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    evil = root / "proj" / "evil"
    evil.symlink_to(outside)
    host = LocalHost()
    with pytest.raises(UnsafePath):
        await host.remove_tree(str(evil), root=str(root))
    with pytest.raises(UnsafePath):
        await host.move(str(evil), str(root / "proj" / "moved"), root=str(root))
    assert (outside / "precious.txt").exists()
    assert evil.is_symlink()
    # shutil.rmtree itself refuses a symlinked root, too (our second line of defence).
    with pytest.raises(OSError, match="symbolic link"):
        shutil.rmtree(evil)
    assert (outside / "precious.txt").exists()


async def test_refuses_paths_outside_or_equal_to_the_root(layout: tuple[Path, Path]) -> None:
    root, outside = layout
    host = LocalHost()
    for target in (outside, root, root / "proj" / ".." / ".." / "outside", Path("rel/x")):
        with pytest.raises(UnsafePath):
            await host.remove_tree(str(target), root=str(root))
    with pytest.raises(UnsafePath):
        await host.move(str(root / "proj" / "wt"), str(outside / "wt"), root=str(root))
    # A parent directory that is a symlink leading out of the root.
    (root / "hop").symlink_to(outside)
    with pytest.raises(UnsafePath):
        await host.remove_tree(str(root / "hop" / "precious.txt"), root=str(root))
    assert (outside / "precious.txt").exists()
    assert (root / "proj" / "wt" / "sub" / "f.txt").exists()


async def test_move_is_a_rename_that_never_overwrites(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    host = LocalHost()
    src = root / "proj" / "wt"
    dst = root / ".trash" / "t1" / "wt"
    await host.make_dirs(str(dst.parent))
    inode = os.lstat(src).st_ino
    await host.move(str(src), str(dst), root=str(root))
    assert os.lstat(dst).st_ino == inode
    other = root / "proj" / "other"
    other.mkdir()
    with pytest.raises(FileExistsError):
        await host.move(str(other), str(dst), root=str(root))
    assert (dst / "sub" / "f.txt").read_text() == "x"
    info = await host.info(str(dst))
    assert info.kind == "dir"
    assert (await host.info(str(root / "nope"))).kind == "missing"
