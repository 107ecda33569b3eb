"""Non-finite features are never kept: a stored ``.npy`` whose numbers were overwritten with
NaN (header intact, same size) is redone on resume, and the writer never writes NaN/inf."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from tests.helpers import media
from vadpipe.manifests.features import read_manifest, write_manifest
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.runner import extract
from vadpipe.pipeline.extract.sources import VideoJob, discover
from vadpipe.pipeline.extract.stream import VideoDone
from vadpipe.pipeline.extract.writer import WriteContext, backbone_by_name, finish_video

CFG = ExtractConfig(backbone="tiny", crops=1, random_weights=True, device="cpu", workers=0)


def _nan_in_place(path: Path) -> None:
    """Overwrite the data of a float32 ``.npy`` with NaN, keeping its header and size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        offset = f.tell()
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.full((size - offset) // 4, np.nan, dtype=np.float32).tobytes())
    assert path.stat().st_size == size
    arr = np.load(path)
    assert arr.dtype == np.float32 and np.isnan(arr).all()


def _extract_one(tmp_path: Path):
    video = media.make_video(tmp_path / "in" / "v.mp4", n_frames=32)
    out = tmp_path / "out"
    assert extract(discover([video]), out, CFG, progress=False).failed == 0
    (row,) = read_manifest(out / "features.csv")
    return video, out, row


def test_a_nan_overwritten_file_is_redone_and_the_reason_says_nan(tmp_path: Path) -> None:
    video, out, row = _extract_one(tmp_path)
    good = np.load(out / row.feature_path)
    _nan_in_place(out / row.feature_path)
    summary = extract(discover([video]), out, CFG, progress=False)
    assert (summary.ok, summary.skipped) == (1, 0)
    assert summary.redone == [(str(video), f"feature file {row.feature_path} holds {good.size} NaN/inf value(s)")]
    np.testing.assert_array_equal(np.load(out / row.feature_path), good)


def test_a_nan_file_of_a_row_without_a_hash_is_redone(tmp_path: Path) -> None:
    """Rows of older manifests have no sha256: their data is checked for NaN/inf on resume."""
    video, out, row = _extract_one(tmp_path)
    write_manifest(out / "features.csv", [replace(row, sha256="", file_stamp="")])
    again = extract(discover([video]), out, CFG, progress=False)
    assert (again.ok, again.skipped) == (0, 1)  # finite: kept
    write_manifest(out / "features.csv", [replace(row, sha256="", file_stamp="")])
    _nan_in_place(out / row.feature_path)
    summary = extract(discover([video]), out, CFG, progress=False)
    assert (summary.ok, summary.skipped) == (1, 0) and "NaN/inf" in summary.redone[0][1]
    assert np.isfinite(np.load(out / row.feature_path)).all()


def test_the_writer_fails_a_video_whose_features_are_not_finite(tmp_path: Path) -> None:
    spec = backbone_by_name("tiny")
    out = tmp_path / "out"
    out.mkdir()
    ctx = WriteContext(root=out, config=CFG.with_preset(spec.preset), spec=spec, config_hash="h",
                       weights_sha256="random")
    job = VideoJob(path=str(tmp_path / "v.mp4"), rel_name="v")
    done = VideoDone(job=0, video=job, started=time.time(), n_frames=32, fps=25.0, decoder="pyav",
                     n_clips=2)
    feats = torch.ones(2, 1, spec.feature_dim)
    feats[1, 0, 3] = float("inf")
    feats[0, 0, 0] = float("nan")
    row = finish_video(ctx, job, done, [(0, feats)])
    assert row.status == "failed" and "gave 2 NaN/inf value(s)" in row.error and row.feature_path == ""
    assert list(out.iterdir()) == []
