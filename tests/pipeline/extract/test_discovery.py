"""Folder discovery follows folder symlinks (each real folder once, loops cut) and says in one
line what it skipped: dangling links, FIFOs, folders seen twice, loops."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from vadpipe.pipeline.extract.sources import discover


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    _touch(root / "a.mp4")
    _touch(root / "sub" / "b.mp4")
    _touch(tmp_path / "cams" / "c.mp4")
    (root / "cams").symlink_to(tmp_path / "cams", target_is_directory=True)   # a folder elsewhere
    (root / "sub" / "up").symlink_to(root, target_is_directory=True)          # a loop
    (root / "again").symlink_to(root / "sub", target_is_directory=True)       # sorts before "sub"
    (root / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")                  # dangling
    os.mkfifo(root / "pipe.mp4")                                              # would block a reader
    return root


def test_folder_symlinks_are_followed_once_and_skips_reported_in_one_line(tree: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="vadpipe.pipeline.extract.sources"):
        jobs = discover([tree])
    assert [j.rel_name for j in jobs] == ["a", "cams/c", "sub/b"]  # sub/b by its own name, not again/b
    assert jobs[1].path == str(tree / "cams" / "c.mp4")
    (record,) = [r for r in caplog.records if r.name == "vadpipe.pipeline.extract.sources"]
    line = record.getMessage()
    assert "\n" not in line and line.startswith("folder scan skipped 4 entries: ")
    assert f"1 dangling link(s) ({tree / 'gone.mp4'})" in line
    assert f"1 non-regular file(s) ({tree / 'pipe.mp4'} (FIFO))" in line
    assert f"1 symlink loop(s) ({tree / 'sub' / 'up'})" in line
    assert f"1 folder(s) seen twice ({tree / 'again'})" in line


def test_a_clean_tree_logs_nothing(tmp_path: Path, caplog) -> None:
    _touch(tmp_path / "x" / "a.mp4")
    with caplog.at_level(logging.WARNING):
        assert [j.rel_name for j in discover([tmp_path])] == ["x/a"]
    assert not caplog.records
