"""A full disk mid-run: one clear line, nothing half-written, a readable manifest, and a re-run
that finishes without redoing the videos that were already written."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from tests.helpers import media
from vadpipe.cli import main
from vadpipe.errors import DiskFullError
from vadpipe.manifests import atomic
from vadpipe.manifests.atomic import TMP_MARKER, atomic_write_text
from vadpipe.manifests.features import read_manifest


def _fill_disk_after(monkeypatch, n_saves: int) -> None:
    """``np.save`` writes part of the array and then fails with ENOSPC from the ``n_saves + 1``-th call on."""
    real_save = np.save
    calls = {"n": 0}

    def save(fh, array, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_saves:
            fh.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(fh, array, *args, **kwargs)

    monkeypatch.setattr(atomic.np, "save", save)


def test_a_full_disk_is_one_line_and_a_rerun_finishes_the_rest(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "videos"
    for i in range(4):
        media.make_video(src / f"v{i}.mp4", n_frames=20, seed=50 + i)
    out = tmp_path / "out"
    args = ["extract", str(src), "-o", str(out), "--backbone", "tiny", "--random-weights", "--crops", "1",
            "--device", "cpu", "--workers", "0", "-q"]
    with monkeypatch.context() as m:
        _fill_disk_after(m, 2)
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert "no space left on the device writing" in line and "run the same command again" in line
    assert not list(out.rglob(f"*{TMP_MARKER}*"))  # no temporary or half-written file
    assert sorted(p.name for p in out.glob("*.npy")) == ["v0_tiny.npy", "v1_tiny.npy"]
    rows = {Path(r.video).name: r.status for r in read_manifest(out / "features.csv")}  # readable, whole
    assert rows == {"v0.mp4": "ok", "v1.mp4": "ok", "v2.mp4": "skipped", "v3.mp4": "skipped"}

    again = CliRunner().invoke(main, args)  # space freed
    assert again.exit_code == 0, again.output
    assert "2 extracted, 2 already done" in again.output
    assert all(r.status == "ok" for r in read_manifest(out / "features.csv"))


def test_every_atomic_write_reports_a_full_disk_and_keeps_the_old_file(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "t.txt"
    atomic_write_text(target, "old")

    def full(*args, **kwargs):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(DiskFullError, match="no space left on the device writing .*t.txt"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.txt"]
