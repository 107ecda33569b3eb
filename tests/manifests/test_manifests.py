"""Manifest schema, validation and atomic writes."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from vadpipe.errors import ManifestError
from vadpipe.manifests.atomic import TMP_MARKER, atomic_open, atomic_save_npy
from vadpipe.manifests.features import COLUMNS, FeatureRow, read_manifest, write_manifest


def _row(video: str, **kw) -> FeatureRow:
    base = dict(feature_path="a_i3d.npy", backbone="i3d", weights_sha256="ab" * 32, n_frames=120, fps=29.97,
                n_clips=7, crops=10, dim=1024, decoder="decord", config_hash="0123", status="ok", seconds=1.5)
    base.update(kw)
    return FeatureRow(video=video, **base)


def test_roundtrip_preserves_every_field(tmp_path: Path) -> None:
    rows = [_row("/v/b.mp4"), _row("/v/a.mp4", status="failed", error="VideoDecodeError: bad, with comma", n_clips=0)]
    write_manifest(tmp_path / "features.csv", rows)
    back = read_manifest(tmp_path / "features.csv")
    assert [asdict(r) for r in back] == [asdict(r) for r in sorted(rows, key=lambda r: r.video)]
    header = (tmp_path / "features.csv").read_text().splitlines()[0].split(",")
    assert tuple(header) == COLUMNS


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.replace(",status,", ",state,"), "missing column"),
        (lambda t: t.replace(",ok,", ",done,"), "status 'done'"),
        (lambda t: t.replace(",120,", ",many,"), "bad number"),
    ],
)
def test_validation_names_the_problem(tmp_path: Path, mutate, message: str) -> None:
    p = tmp_path / "features.csv"
    write_manifest(p, [_row("/v/a.mp4")])
    p.write_text(mutate(p.read_text()))
    with pytest.raises(ManifestError, match=message):
        read_manifest(p)


def test_duplicate_videos_rejected(tmp_path: Path) -> None:
    p = tmp_path / "features.csv"
    write_manifest(p, [_row("/v/a.mp4")])
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines + lines[1:]) + "\n")
    with pytest.raises(ManifestError, match="listed twice"):
        read_manifest(p)


def test_per_crop_feature_files(tmp_path: Path) -> None:
    row = _row("/v/a.mp4", layout="per-crop", feature_path="sub/a__{k}.npy", crops=5)
    assert row.feature_files(tmp_path) == [tmp_path / f"sub/a__{k}.npy" for k in range(5)]


def test_atomic_write_failure_leaves_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "x.npy"
    atomic_save_npy(target, np.arange(3, dtype=np.float32))
    with pytest.raises(RuntimeError):
        with atomic_open(target, "wb") as fh:
            fh.write(b"partial")
            raise RuntimeError("killed mid-write")
    np.testing.assert_array_equal(np.load(target), np.arange(3, dtype=np.float32))
    assert [f.name for f in tmp_path.iterdir()] == ["x.npy"]


def test_atomic_write_temp_file_is_a_marked_sibling(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "y.bin"
    with atomic_open(target, "wb") as fh:
        siblings = os.listdir(target.parent)
        assert len(siblings) == 1 and TMP_MARKER in siblings[0]
        assert not target.exists()
        fh.write(b"done")
    assert target.read_bytes() == b"done"


def test_atomic_open_refuses_read_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        with atomic_open(tmp_path / "z", "rb"):
            pass
