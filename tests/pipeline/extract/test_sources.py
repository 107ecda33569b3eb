"""Input discovery: folders, files, CSV lists, name collisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from vadpipe.errors import ConfigError
from vadpipe.pipeline.extract.sources import discover


def _touch(p: Path) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_folder_is_recursive_and_filters_extensions(tmp_path: Path) -> None:
    _touch(tmp_path / "Abuse" / "Abuse001_x264.mp4")
    _touch(tmp_path / "b.AVI")
    _touch(tmp_path / "notes.txt")
    jobs = discover([tmp_path])
    assert [j.rel_name for j in jobs] == ["Abuse/Abuse001_x264", "b"]
    assert all(Path(j.path).is_absolute() for j in jobs)


def test_single_file_of_any_type_is_kept(tmp_path: Path) -> None:
    f = _touch(tmp_path / "clip.txt")
    (job,) = discover([f])
    assert job.rel_name == "clip" and job.path == str(f.resolve())


def test_csv_list_resolves_relative_entries(tmp_path: Path) -> None:
    _touch(tmp_path / "vids" / "a.mp4")
    (tmp_path / "list.csv").write_text("video,label\nvids/a.mp4,normal\n/elsewhere/missing.mp4,anomalous\n")
    jobs = discover([tmp_path / "list.csv"])
    assert [j.rel_name for j in jobs] == ["missing", "vids/a"]
    assert jobs[1].path == str((tmp_path / "vids" / "a.mp4").resolve())


def test_missing_input_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        discover([tmp_path / "nope"])


def test_colliding_output_names_are_an_error(tmp_path: Path) -> None:
    a = _touch(tmp_path / "x" / "clip.mp4")
    b = _touch(tmp_path / "y" / "clip.mp4")
    with pytest.raises(ConfigError, match="same output name"):
        discover([a, b])


def test_same_file_twice_is_deduplicated(tmp_path: Path) -> None:
    a = _touch(tmp_path / "clip.mp4")
    assert len(discover([a, tmp_path])) == 1
