"""Damaged state in an output folder: a re-run never trusts a feature file that is gone, cut
short, reshaped or rewritten, nor a leftover temporary file or a garbage run record; it
recomputes exactly the damaged videos. A ``features.csv`` that is cut short or has a renamed
column is refused with one clear line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from tests.helpers import media
from vadpipe.cli import main
from vadpipe.errors import ManifestError
from vadpipe.manifests.atomic import TMP_MARKER, file_sha256
from vadpipe.manifests.features import read_manifest
from vadpipe.manifests.provenance import extraction_of
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.runner import extract
from vadpipe.pipeline.extract.sources import discover

NAMES = ("a", "b", "c", "d", "e")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("videos")
    for i, name in enumerate(NAMES):
        media.make_video(src / f"{name}.mp4", n_frames=20, seed=70 + i)
    return src


def _config(layout: str = "single") -> ExtractConfig:
    return ExtractConfig(backbone="tiny", crops=5, random_weights=True, device="cpu", workers=0, layout=layout)


def _run(videos: Path, out: Path, layout: str = "single"):
    return extract(discover([videos]), out, _config(layout), progress=False)


def _files(out: Path) -> dict[str, Path]:
    return {Path(r.video).stem: r.feature_files(out)[0] for r in read_manifest(out / "features.csv")}


def test_a_rerun_recomputes_exactly_the_damaged_videos(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = _run(videos, out)
    assert first.ok == len(NAMES) and first.failed == 0
    files = _files(out)
    before = {k: np.load(f) for k, f in files.items()}
    rows = {Path(r.video).stem: r for r in read_manifest(out / "features.csv")}
    assert all(rows[k].sha256 == file_sha256(f) for k, f in files.items())  # hash recorded while writing

    data = files["a"].read_bytes()
    files["a"].write_bytes(data[: len(data) - 7])  # cut short (a half-copied file)
    files["b"].unlink()  # deleted
    np.save(files["c"], np.zeros_like(before["c"]))  # overwritten: same shape and dtype, other values
    np.save(files["d"], before["d"][:-1])  # reshaped
    (out / f"e_tiny.npy{TMP_MARKER}x1y2").write_bytes(b"\x93NUMPY half")  # a killed run's leftover
    (out / "extract-20000101T000000Z.json").write_text("{ not json")  # a garbage run record

    again = _run(videos, out)
    redone = {Path(v).stem: why for v, why in again.redone}
    assert sorted(redone) == ["a", "b", "c", "d"]  # exactly the damaged ones; e was intact
    assert "cut short" in redone["a"] and "missing" in redone["b"]
    shape = list(before["d"].shape)
    assert "sha256 differs" in redone["c"]
    assert f"float32{[shape[0] - 1] + shape[1:]}, the manifest says float32{shape}" in redone["d"]
    assert (again.ok, again.skipped, again.failed) == (4, 1, 0)
    for k, f in _files(out).items():
        np.testing.assert_array_equal(np.load(f), before[k])  # recomputed, identical to the first run
    assert not list(out.glob(f"*{TMP_MARKER}*"))
    assert extraction_of([files["e"]])["config_hash"] == rows["e"].config_hash  # the garbage record is ignored
    assert _run(videos, out).skipped == len(NAMES)  # and now everything is trusted again


def test_per_crop_files_are_checked_one_by_one(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(videos, out, "per-crop")
    (row,) = [r for r in read_manifest(out / "features.csv") if Path(r.video).stem == "b"]
    assert len(row.sha256.split(";")) == 5 == len(row.file_stamp.split(";"))
    crop1 = row.feature_files(out)[1]
    good = np.load(crop1)
    np.save(crop1, good + 1)
    again = _run(videos, out, "per-crop")
    assert [Path(v).stem for v, _ in again.redone] == ["b"] and again.skipped == len(NAMES) - 1
    np.testing.assert_array_equal(np.load(crop1), good)


def test_a_copied_folder_is_trusted_without_recomputing(videos: Path, tmp_path: Path) -> None:
    """Copying a folder (new mtimes, same bytes) re-hashes the files once and redoes nothing;
    the new stamps are saved, so the next run does not hash again."""
    out = tmp_path / "out"
    _run(videos, out)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, copy_function=shutil.copy)  # shutil.copy does not keep mtimes
    stamps = {r.video: r.file_stamp for r in read_manifest(copy / "features.csv")}
    again = _run(videos, copy)
    assert (again.skipped, again.ok, again.redone) == (len(NAMES), 0, [])
    new = {r.video: r.file_stamp for r in read_manifest(copy / "features.csv")}
    assert all(new[v] != stamps[v] for v in stamps)  # refreshed to the copies' stamps


def test_an_old_manifest_without_hashes_still_resumes(videos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(videos, out)
    manifest = out / "features.csv"
    lines = manifest.read_text().splitlines()
    assert lines[0].endswith(",sha256,file_stamp,rotation,recipe")
    manifest.write_text("\n".join(line.rsplit(",", 4)[0] for line in lines) + "\n")  # drop the newer columns
    assert _run(videos, out).skipped == len(NAMES)


@pytest.mark.parametrize("damage", ["cut", "renamed"])
def test_a_damaged_manifest_is_refused_with_one_line(videos: Path, tmp_path: Path, damage: str) -> None:
    out = tmp_path / "out"
    _run(videos, out)
    manifest = out / "features.csv"
    text = manifest.read_text()
    if damage == "cut":
        damaged = text[: len(text) - len(text.splitlines()[-1]) // 2 - 1]  # last row cut mid-way
        expect = "fields (the file is cut short"
    else:
        damaged = text.replace(",status,", ",state,", 1)
        expect = "missing column(s) status"
    manifest.write_text(damaged)
    with pytest.raises(ManifestError, match="move it away to recompute"):
        read_manifest(manifest)
    res = CliRunner().invoke(main, ["extract", str(videos), "-o", str(out), "--backbone", "tiny", "--random-weights",
                                    "--crops", "5", "--device", "cpu", "--workers", "0", "-q"])
    assert res.exit_code == 2, res.output
    (line,) = res.output.strip().splitlines()
    assert line.startswith("error: ") and expect in line and "Traceback" not in res.output
    assert manifest.read_text() == damaged  # refused before touching anything
