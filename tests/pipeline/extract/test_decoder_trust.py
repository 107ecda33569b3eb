"""decord is trusted only where its frames equal PyAV's, and resume never mixes decoders.

* odd-size MJPEG with subsampled chroma (175x97 ``yuvj422p`` / ``yuvj420p``, AVI and Matroska):
  decord's RGB differs from PyAV's, so ``--decoder auto`` takes PyAV and says why;
* the decoder is part of what resume compares: a folder written with one decoder and run again
  with another is recomputed; folders that nothing changed for keep their rows;
* an MPEG-TS whose frame size changes mid-stream is extracted, the scaling recorded.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from tests.helpers import media, tricky
from tests.helpers.decode_refs import reference_all
from vadpipe.manifests.features import read_manifest, write_manifest
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.decode import open_video
from vadpipe.pipeline.extract.runner import extract
from vadpipe.pipeline.extract.sources import discover

CFG = ExtractConfig(backbone="tiny", crops=1, random_weights=True, device="cpu", workers=0)


def _mjpeg(path: Path, width: int, height: int, pix_fmt: str, n_frames: int = 6) -> Path:
    return tricky.make_encoded(path, n_frames, width=width, height=height, codec="mjpeg", pix_fmt=pix_fmt)


def _decord_frames(path: Path) -> np.ndarray:
    with open_video(path, backend="decord") as r:
        return r.read_all()


@pytest.mark.parametrize("suffix", [".avi", ".mkv"])
@pytest.mark.parametrize("pix_fmt", ["yuvj422p", "yuvj420p"])
def test_odd_size_subsampled_mjpeg_is_not_given_to_decord(tmp_path: Path, suffix: str, pix_fmt: str) -> None:
    path = _mjpeg(tmp_path / f"odd{suffix}", 175, 97, pix_fmt)
    ref = reference_all(path)
    forced = _decord_frames(path)
    assert forced.shape == ref.shape
    assert np.abs(forced.astype(int) - ref).max() >= 3  # the reason for the rule: decord's pixels differ
    with open_video(path) as r:
        got, info = r.read_all(), r.info
    assert info.backend == "pyav" and "odd frame size 175x97" in info.fallback_reason, info
    np.testing.assert_array_equal(got, ref)


def test_even_size_mjpeg_still_goes_to_decord_and_matches(tmp_path: Path) -> None:
    path = _mjpeg(tmp_path / "even.avi", 176, 96, "yuvj422p")
    with open_video(path) as r:
        got, info = r.read_all(), r.info
    assert info.backend == "decord" and info.fallback_reason is None
    np.testing.assert_array_equal(got, reference_all(path))


def test_the_manifest_says_why_decord_was_not_used(tmp_path: Path) -> None:
    path = _mjpeg(tmp_path / "in" / "odd.mkv", 175, 97, "yuvj422p", 16)
    summary = extract(discover([path]), tmp_path / "out", CFG, progress=False)
    assert summary.failed == 0, summary.failures
    (row,) = read_manifest(tmp_path / "out" / "features.csv")
    assert row.decoder.startswith("pyav (fallback: odd frame size 175x97 with subsampled chroma (yuvj422p)")


@pytest.fixture()
def h264(tmp_path: Path) -> Path:
    """A video decord is trusted with (auto picks it)."""
    return media.make_video(tmp_path / "in" / "clip.mp4", n_frames=40, seed=3)


def _run(video: Path, out: Path, decoder: str):
    summary = extract(discover([video]), out, replace(CFG, decoder=decoder), progress=False)
    assert summary.failed == 0, summary.failures
    (row,) = read_manifest(out / "features.csv")
    return summary, row


@pytest.mark.parametrize(("first", "second"), [("decord", "pyav"), ("pyav", "auto"), ("decord", "auto"),
                                               ("auto", "pyav")])
def test_another_decoder_recomputes_the_folder(h264: Path, tmp_path: Path, first: str, second: str) -> None:
    out = tmp_path / "out"
    _, row1 = _run(h264, out, first)
    assert row1.decoder == ("pyav" if first == "pyav" else "decord")
    again, same = _run(h264, out, first)
    assert (again.ok, again.skipped) == (0, 1) and same.config_hash == row1.config_hash
    summary, row2 = _run(h264, out, second)
    assert (summary.ok, summary.skipped) == (1, 0)
    assert row2.config_hash != row1.config_hash
    assert row2.decoder == ("pyav" if second == "pyav" else "decord")


def test_rows_auto_gave_to_decord_are_what_forced_decord_gives(h264: Path, tmp_path: Path) -> None:
    """auto uses decord only where it is trusted, so forcing decord keeps those rows (relabelled)."""
    out = tmp_path / "out"
    _, row1 = _run(h264, out, "auto")
    summary, row2 = _run(h264, out, "decord")
    assert (summary.ok, summary.skipped) == (0, 1) and row2.config_hash != row1.config_hash
    assert (row2.decoder, row2.sha256) == ("decord", row1.sha256)


def _make_old(out: Path, **changes) -> None:
    """Rewrite the folder's rows as an older vadpipe wrote them: the decoder not in the hash."""
    rows = read_manifest(out / "features.csv")
    write_manifest(out / "features.csv", [replace(r, **changes) for r in rows])


def test_an_older_folder_of_a_forced_decoder_is_kept_where_that_decoder_made_its_rows(h264: Path,
                                                                                    tmp_path: Path) -> None:
    out = tmp_path / "out"
    auto_hash = _run(h264, out, "auto")[1].config_hash  # = the hash before the decoder was hashed
    _run(h264, out, "pyav")
    _make_old(out, config_hash=auto_hash)
    summary, row = _run(h264, out, "pyav")
    assert (summary.ok, summary.skipped) == (0, 1) and row.config_hash != auto_hash  # relabelled, kept
    _make_old(out, config_hash=auto_hash, decoder="decord")  # an older row decord made
    summary, row = _run(h264, out, "pyav")
    assert (summary.ok, summary.skipped) == (1, 0) and row.decoder == "pyav"
    assert "decoded by decord; this run decodes with --decoder pyav" in summary.redone[0][1]


def test_auto_redoes_rows_decord_made_where_it_is_no_longer_trusted(tmp_path: Path) -> None:
    """A folder extracted under the older rule (decord took odd-size MJPEG) is not kept as is."""
    video = _mjpeg(tmp_path / "in" / "odd.avi", 175, 97, "yuvj420p", 16)
    out = tmp_path / "out"
    auto_hash = _run(video, out, "auto")[1].config_hash
    _run(video, out, "decord")
    _make_old(out, config_hash=auto_hash)  # what auto wrote when decord was trusted with this file
    summary, row = _run(video, out, "auto")
    assert (summary.ok, summary.skipped) == (1, 0) and row.decoder.startswith("pyav (fallback: odd frame size")
    assert "auto no longer uses for this file (odd frame size 175x97" in summary.redone[0][1]
    again, _ = _run(video, out, "auto")
    assert (again.ok, again.skipped) == (0, 1)


@pytest.mark.parametrize("decoder", ["auto", "pyav"])
def test_mpegts_whose_size_changes_mid_stream_is_extracted(tmp_path: Path, decoder: str) -> None:
    (tmp_path / "in").mkdir()
    video = tricky.make_resolution_change(tmp_path / "in" / "switch.ts")
    summary, row = _run(video, tmp_path / "out", decoder)
    assert row.status == "ok" and row.n_frames == 24 and row.n_clips == 1
    assert "12 frame(s) scaled from 96x72 to 64x48" in row.decoder
    feats = np.load(tmp_path / "out" / row.feature_path)
    assert feats.shape == (1, 1, row.dim) and np.isfinite(feats).all()
