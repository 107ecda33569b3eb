"""A full disk mid-run: one clear line, nothing half-written, a readable manifest, and a re-run
that finishes without redoing the videos that were already written."""

from __future__ import annotations

import errno
import os
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


def _extract_args(tmp_path: Path, out: Path, n_videos: int, seed: int, *device: str) -> list[str]:
    """``n_videos`` short videos and the ``vadpipe extract`` arguments that write them to ``out``."""
    src = tmp_path / "videos"
    for i in range(n_videos):
        media.make_video(src / f"v{i}.mp4", n_frames=20, seed=seed + i)
    return ["extract", str(src), "-o", str(out), "--backbone", "tiny", "--random-weights", "--crops", "1",
            *(device or ("--device", "cpu")), "--workers", "0", "-q"]


def test_a_full_disk_is_one_line_and_a_rerun_finishes_the_rest(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out"
    args = _extract_args(tmp_path, out, 4, 50)
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


def test_a_full_disk_in_a_device_worker_stops_the_run_and_a_rerun_finishes_it(tmp_path: Path, monkeypatch) -> None:
    """Multi-device engine: the first worker whose disk fills stops the whole run with the same
    one error (not one failed row per video, worker after worker); nothing half-written is kept,
    unfinished videos stay ``skipped`` and the re-run completes them."""
    out = tmp_path / "out"
    args = _extract_args(tmp_path, out, 4, 60, "--devices", "cpu,cpu")
    monkeypatch.setenv("VADPIPE_PLUGINS", "tests.helpers.tiny_backbone")
    with monkeypatch.context() as m:
        m.setenv("VADPIPE_TINY_DISK_FULL_AFTER", "1")  # each worker writes one file, then the disk is full
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert line.startswith("error: worker for cpu#") and "no space left on the device writing" in line
    assert not list(out.rglob(f"*{TMP_MARKER}*"))
    rows = {Path(r.video).name: r.status for r in read_manifest(out / "features.csv")}
    assert set(rows.values()) <= {"ok", "skipped"} and "skipped" in rows.values()  # no video failed for it
    done = sum(s == "ok" for s in rows.values())
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert f"{4 - done} extracted, {done} already done" in again.output


def test_a_device_worker_killed_mid_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch) -> None:
    """A worker SIGKILLed while writing a feature file cannot remove its temporary file; the
    driver, once every worker has exited, does (it is the folder's only writer), and the
    videos the workers held are failed rows that a re-run redoes."""
    out = tmp_path / "out"
    args = _extract_args(tmp_path, out, 2, 70, "--devices", "cpu,cpu")
    monkeypatch.setenv("VADPIPE_PLUGINS", "tests.helpers.tiny_backbone")
    with monkeypatch.context() as m:
        m.setenv("VADPIPE_TINY_KILL_WRITING", "1")  # every worker dies in its first np.save
        res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "Traceback" not in res.output, res.output
    assert not list(out.rglob(f"*{TMP_MARKER}*"))
    assert not list(out.glob("*.npy"))
    rows = {Path(r.video).name: r.status for r in read_manifest(out / "features.csv")}
    assert rows == {"v0.mp4": "failed", "v1.mp4": "failed"}
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert all(r.status == "ok" for r in read_manifest(out / "features.csv"))


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 1 MiB tmpfs mounted under ``tmp_path`` (skipped where mounting is not allowed: not
    root, or a container without CAP_SYS_ADMIN)."""
    import shutil
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if not shutil.which("mount") or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                                                   capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk_is_one_line_and_a_rerun_after_freeing_space_finishes(tmp_path: Path,
                                                                               small_tmpfs: Path) -> None:
    """No mocking: a real file system runs out of space part-way through a run."""
    out = small_tmpfs / "out"
    args = _extract_args(tmp_path, out, 6, 80)
    filler = small_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as fh:  # fill the disk to the last block ...
        with pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 4096)
    os.truncate(filler, os.path.getsize(filler) - 24 * 1024)  # ... then free six 4 KiB blocks
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert "no space left on the device writing" in line
    assert not list(small_tmpfs.rglob(f"*{TMP_MARKER}*"))
    done = 0
    if (out / "features.csv").exists():  # readable and whole, whatever write hit the full disk
        rows = read_manifest(out / "features.csv")
        assert {r.status for r in rows} <= {"ok", "skipped"}
        done = sum(r.status == "ok" for r in rows)
    filler.unlink()  # space freed
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0, again.output
    assert f"{6 - done} extracted, {done} already done" in again.output
