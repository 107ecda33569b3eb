"""Valid but tricky videos: every backend gives the frames PyAV decodes from the best video
stream (count and pixels), turned upright where the container says so, scaled to the first
frame's size where the size changes mid-stream; stage one extracts each of them and records
what was done."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from tests.helpers import tricky
from vadpipe.manifests.features import read_manifest
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.decode import open_video
from vadpipe.pipeline.extract.runner import extract
from vadpipe.pipeline.extract.sources import discover

try:
    import torchcodec.decoders  # noqa: F401

    BACKENDS = ("auto", "pyav", "torchcodec")
except Exception:  # pragma: no cover - torchcodec or its FFmpeg libraries missing
    BACKENDS = ("auto", "pyav")

SMALL = [name for name in tricky.CASES if name != "4k"]
ROTATED = {"rotated-90": 1, "rotated-180": 2, "rotated-270": 3}  # quarter turns counterclockwise


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tricky")
    return {name: make(root / f"{name}{suffix}") for name, (suffix, make) in tricky.CASES.items() if name in SMALL}


def _reference(path: Path) -> list[np.ndarray]:
    """What FFmpeg presents through PyAV: every frame of the best video stream, as stored."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.best("video"))]


def _read(path: Path, backend: str):
    with open_video(path, backend=backend, chunk_size=5) as r:
        return r.read_all(), r.info


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", [n for n in SMALL if n not in ROTATED and n != "resolution-change"])
def test_every_backend_gives_pyavs_frames(videos, name: str, backend: str) -> None:
    ref = np.stack(_reference(videos[name]))
    got, info = _read(videos[name], backend)
    assert got.shape == ref.shape, info
    np.testing.assert_array_equal(got, ref, err_msg=str(info))
    assert (info.width, info.height, info.rotation) == (ref.shape[2], ref.shape[1], 0)


def test_the_best_stream_is_read_when_there_are_two(videos) -> None:
    with av.open(str(videos["two-video-streams"])) as c:
        best = c.streams.best("video")
        assert len(c.streams.video) == 2
        want = best.codec_context.width, best.codec_context.height
    got, info = _read(videos["two-video-streams"], "auto")
    assert (got.shape[2], got.shape[1]) == want == (info.width, info.height)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(ROTATED))
def test_rotated_videos_come_out_upright_as_torchcodec_shows_them(videos, name: str, backend: str) -> None:
    """The display matrix is applied (frames as players show them): against torchcodec's own
    rotation, an independent implementation, and ``np.rot90`` of the stored frames."""
    from torchcodec.decoders import VideoDecoder

    stored = np.stack(_reference(videos[name]))
    upright = np.stack([f.permute(1, 2, 0).numpy() for f in VideoDecoder(str(videos[name]))])
    np.testing.assert_array_equal(upright, np.rot90(stored, ROTATED[name], axes=(1, 2)))
    got, info = _read(videos[name], backend)
    np.testing.assert_array_equal(got, upright)
    assert info.rotation == 90 * ROTATED[name] and (info.height, info.width) == upright.shape[1:3]
    assert info.backend == "pyav"  # decord and torchcodec turn frames their own way (decord fails on 90/270)
    assert backend == "pyav" or "rotation" in info.fallback_reason


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_mid_stream_size_change_is_scaled_to_the_first_size(videos, backend: str) -> None:
    ref = _reference(videos["resolution-change"])
    sizes = [f.shape for f in ref]
    assert sizes[0] == (48, 64, 3) and sizes[-1] == (72, 96, 3)
    got, info = _read(videos["resolution-change"], backend)
    assert got.shape == (len(ref), 48, 64, 3)
    same = [i for i, s in enumerate(sizes) if s == sizes[0]]
    np.testing.assert_array_equal(got[same], np.stack([ref[i] for i in same]))
    assert info.notes.startswith(f"{len(ref) - len(same)} frame(s) scaled from 96x72 to 64x48")
    if shutil.which("ffmpeg"):  # what the ffmpeg command gives (its own, older swscale: close, not equal)
        raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(videos["resolution-change"]), "-f", "rawvideo",
                              "-pix_fmt", "rgb24", "-"], capture_output=True, check=True).stdout
        ff = np.frombuffer(raw, np.uint8).reshape(-1, 48, 64, 3)
        assert len(ff) == len(got)
        assert np.abs(ff.astype(int) - got).mean() < 0.5


def test_a_size_change_hidden_in_matroska_keeps_decord_out(videos, tmp_path: Path) -> None:
    """In MP4/Matroska the new size is only in the keyframe's in-band parameter sets; decord
    would scale those frames its own way (up to 11 levels off), so ``auto`` must not pick it."""
    src = av.open(str(videos["resolution-change"]))
    mkv = tmp_path / "change.mkv"
    with av.open(str(mkv), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.size:
                packet.stream = stream
                out.mux(packet)
    src.close()
    for backend in BACKENDS:
        if backend != "pyav":
            got, info = _read(mkv, backend)
            assert info.backend == "pyav" and "change the sequence parameters" in info.fallback_reason, backend
            assert got.shape[0] == len(_reference(mkv))


def test_stage_one_extracts_every_tricky_video_and_records_what_was_done(videos, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for path in videos.values():
        shutil.copy(path, src / path.name)
    cfg = ExtractConfig(backbone="tiny", crops=1, random_weights=True, device="cpu", workers=0)
    summary = extract(discover([src]), tmp_path / "out", cfg, progress=False)
    assert summary.failed == 0, summary.failures
    rows = {Path(r.video).name: r for r in read_manifest(tmp_path / "out" / "features.csv")}
    for name, path in videos.items():
        row = rows[path.name]
        assert row.status == "ok" and row.n_frames == len(_reference(path)), (name, row)
        assert row.rotation == 90 * ROTATED.get(name, 0), name
    assert "scaled from 96x72 to 64x48" in rows["resolution-change.ts"].decoder
    assert abs(rows["29.97fps.mp4"].fps - 30000 / 1001) < 1e-5 and rows["1x1.mkv"].n_clips == 1


def test_4k_frames_are_resized_as_they_are_decoded(tmp_path: Path) -> None:
    """A 4K video extracts like any other; workers hold full-size frames for one decoded chunk
    only (clips are cut from resized frames), so its memory does not scale with the batch."""
    path = tricky.CASES["4k"][1](tmp_path / "4k.mp4")
    cfg = ExtractConfig(backbone="tiny", crops=1, random_weights=True, device="cpu", workers=0)
    summary = extract(discover([path]), tmp_path / "out", cfg, progress=False)
    assert summary.failed == 0, summary.failures
    (row,) = read_manifest(tmp_path / "out" / "features.csv")
    assert (row.n_frames, row.n_clips) == (17, 1)
