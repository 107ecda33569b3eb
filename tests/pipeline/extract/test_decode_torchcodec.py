"""vadpipe.pipeline.extract.decode, torchcodec backends: PyAV's frames, or PyAV itself.

``backend="torchcodec"`` must give exactly the frames of the PyAV reference (computed
independently, in ``tests/helpers/decode_refs.py``) on every video: decoded by torchcodec where
its checks pass, by PyAV where they do not (with the reason in ``info.fallback_reason``).
The module is skipped when torchcodec (or the FFmpeg libraries it loads) is missing.
"""

from __future__ import annotations

import math
import struct
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from vadpipe.pipeline.extract.decode import torchcodec as tc_decode

_PROBLEM = tc_decode._torchcodec_problem()
if _PROBLEM is not None:
    pytest.skip(f"torchcodec backend unavailable: {_PROBLEM}", allow_module_level=True)

import torch  # noqa: E402

from tests.helpers import media  # noqa: E402
from tests.helpers.decode_refs import ERRORS, SYNTHETIC, reference_all, reference_frames, stream_diff  # noqa: E402
from tests.helpers.paths import REPO, SHARED_FIXTURES  # noqa: E402
from vadpipe.errors import ConfigError, VideoDecodeError  # noqa: E402
from vadpipe.pipeline.extract.decode import VideoReader, check_backend, open_video, probe  # noqa: E402

EXAMPLE = REPO / "examples" / "videos" / "carphone_pristine.mp4"
SHARED_VIDEOS = SHARED_FIXTURES / "videos"


def make_rotated_mp4(src: Path, dst: Path) -> Path:
    """Copy of an MP4 whose track header (``tkhd``) matrix rotates the picture by 90 degrees."""
    data = bytearray(src.read_bytes())
    at = data.find(b"tkhd")
    version = data[at + 4]
    matrix = at + 8 + (32 if version == 1 else 20) + 16
    data[matrix:matrix + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    dst.write_bytes(bytes(data))
    return dst


# ----------------------------------------------------------------------------- corpus

#: name -> (how to make it, the backend that must decode it, frames); the test_decode
#: corpus plus codecs and cases that only matter here.
CORPUS = {name: (make, None, n) for name, (make, _, n) in SYNTHETIC.items()}
CORPUS.update({
    "hevc.mkv": (lambda p: media.make_video(p, 20, codec="libx265", seed=13,
                                            options={"x265-params": "log-level=error"}), None, 20),
    "vp8.webm": (lambda p: media.make_video(p, 20, codec="libvpx", seed=14), None, 20),
    "av1.mkv": (lambda p: media.make_video(p, 20, codec="libsvtav1", seed=17, options={"preset": "12"}), None, 20),
    "ffv1.mkv": (lambda p: media.make_video(p, 20, codec="ffv1", seed=18), None, 20),
    "h264.flv": (lambda p: media.make_video(p, 20, codec="libx264", seed=15), None, 20),
    "mpeg2.mkv": (lambda p: media.make_video(p, 20, codec="mpeg2video", seed=16), None, 20),
})

#: Where torchcodec must hand over to PyAV, and a word of the reason.
FALLBACKS = {
    "mpeg4.avi": "codec mpeg4",
    "mjpeg.avi": "codec mjpeg",
    "mpeg2.mkv": "codec mpeg2video",
    "h264_bframes.avi": "first frame is at",  # AVI with B-frames: frame times are not packet times
    "h264.ts": "MPEG-TS",
    "h264_10bit.mkv": "yuv420p10le",
    "rotated.mp4": "rotation",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("torchcodec_corpus")
    made = {name: Path(make(root / name)) for name, (make, _, _) in CORPUS.items()}
    made["delayed.mp4"] = media.make_delayed_start(made["h264_bframes.mp4"], root / "delayed.mp4", 5)
    made["delayed.mkv"] = media.make_delayed_start(made["h264.mkv"], root / "delayed.mkv", 5)
    made["rotated.mp4"] = make_rotated_mp4(made["h264_no_bframes.mp4"], root / "rotated.mp4")
    # a stream-copy cut 3 frames after the second keyframe: the edit list hides the pre-roll
    src = media.make_video(root / "src.mp4", 60, gop=12, bframes=True, seed=21)
    with av.open(str(src)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
    order = sorted(p.pts for p in packets)
    keys = sorted(order.index(p.pts) for p in packets if p.is_keyframe)
    made["edit_list.mp4"] = media.make_edit_list_mp4(src, root / "edit_list.mp4", cut_frame=keys[1] + 3)
    return made


ALL = [*CORPUS, "delayed.mp4", "delayed.mkv", "rotated.mp4", "edit_list.mp4"]


# ----------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("name", ALL)
def test_torchcodec_matches_the_pyav_reference(corpus: dict[str, Path], name: str) -> None:
    path = corpus[name]
    ref = reference_all(path)
    if name == "rotated.mp4":  # frames are turned upright, as torchcodec itself turns them
        from torchcodec.decoders import VideoDecoder

        ref = np.stack([f.permute(1, 2, 0).numpy() for f in VideoDecoder(str(path))])
    with open_video(path, backend="torchcodec", chunk_size=8) as reader:
        got = reader.read_all()
        info = reader.info
        assert reader.frames_read == ref.shape[0]
    assert got.shape == ref.shape and got.dtype == np.uint8
    assert np.array_equal(got, ref), f"{name}: {info.backend} differs from PyAV"
    if name in FALLBACKS:
        assert info.backend == "pyav" and FALLBACKS[name] in info.fallback_reason, info
    else:
        assert info.backend == "torchcodec" and info.fallback_reason is None, info.fallback_reason
    if name in CORPUS:
        assert ref.shape[0] == CORPUS[name][2]
        assert [media.read_index(f) for f in got] == list(range(ref.shape[0]))


def test_edit_list_file_shows_the_frames_from_the_cut(corpus: dict[str, Path]) -> None:
    path = corpus["edit_list.mp4"]
    with av.open(str(path)) as c:
        assert sum(p.is_discard for p in c.demux(c.streams.video[0]) if p.size) >= 3  # hidden pre-roll
    with open_video(path, backend="torchcodec") as reader:
        indices = [media.read_index(f) for f in reader.read_all()]
        assert reader.info.backend == "torchcodec"
    assert indices == list(range(indices[0], 60)) and indices[0] > 12


def test_bundled_example_matches_pyav() -> None:
    with open_video(EXAMPLE, backend="torchcodec", chunk_size=50) as reader:
        assert reader.info.backend == "torchcodec" and reader.info.fallback_reason is None
        assert (reader.info.width, reader.info.height) == (176, 144)
        assert np.array_equal(reader.read_all(), reference_all(EXAMPLE))
        assert reader.frames_read == 120


@pytest.mark.parametrize("name", ["bikes.mp4", "bigbuckbunny.mp4"])
def test_real_h264_matches_pyav_on_its_first_chunks(name: str) -> None:
    """Real encoder output, 720p for bigbuckbunny: the first 48 frames, bit for bit."""
    path = SHARED_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"shared fixture {path} not available")
    with open_video(path, backend="torchcodec", chunk_size=16) as reader:
        assert reader.info.backend == "torchcodec", reader.info.fallback_reason
        chunks, parts = reader.iter_chunks(), []
        while sum(len(p) for p in parts) < 48:  # 720p chunks hold fewer than 16 frames (MAX_CHUNK_BYTES)
            parts.append(next(chunks))
        chunks.close()
        got = np.concatenate(parts)[:48]
    ref = np.stack([f for f, _ in zip(reference_frames(path), range(48))])
    assert np.array_equal(got, ref)


def test_the_codec_rule_is_needed_on_ms_mpeg4() -> None:
    """Why only bit-exact codecs: torchcodec's FFmpeg decodes vtest.avi (MS-MPEG4v3) a little
    differently from PyAV's (measured: ±2 levels from the 3rd frame on)."""
    from torchcodec.decoders import VideoDecoder

    path = SHARED_VIDEOS / "vtest.avi"
    if not path.is_file():
        pytest.skip(f"shared fixture {path} not available")
    raw = VideoDecoder(str(path), dimension_order="NHWC").get_frames_in_range(0, 12).data.numpy()
    ref = np.stack([f for f, _ in zip(reference_frames(path), range(12))])
    assert raw.shape == ref.shape and not np.array_equal(raw, ref)
    assert np.abs(raw.astype(np.int16) - ref).max() <= 8
    info = probe(path, backend="torchcodec")
    assert info.backend == "pyav" and "codec msmpeg4v3" in info.fallback_reason


def test_the_pixel_format_rule_is_needed_on_10_bit(corpus: dict[str, Path]) -> None:
    from torchcodec.decoders import VideoDecoder

    path = corpus["h264_10bit.mkv"]
    raw = VideoDecoder(str(path), dimension_order="NHWC").get_frames_in_range(0, 20).data.numpy()
    assert raw.shape == (20, 48, 64, 3) and not np.array_equal(raw, reference_all(path))


# ----------------------------------------------------------------------------- checks and fallback


def test_first_frame_pixel_check_falls_back(corpus: dict[str, Path], monkeypatch) -> None:
    real = tc_decode._first_picture

    def off_by_one(path: str) -> tuple[np.ndarray, float]:
        frame, rotation = real(path)
        frame = frame.copy()
        frame[0, 0, 0] ^= 1
        return frame, rotation

    monkeypatch.setattr(tc_decode, "_first_picture", off_by_one)
    path = corpus["h264.mkv"]
    with open_video(path, backend="torchcodec") as reader:
        assert reader.info.backend == "pyav"
        assert "first frame differs from PyAV's (max abs difference 1" in reader.info.fallback_reason
        assert np.array_equal(reader.read_all(), reference_all(path))


def test_cuda_tolerance_admits_rounding_not_a_wrong_conversion() -> None:
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, size=(48, 64, 3)).astype(np.uint8)
    noisy = np.clip(ref.astype(np.int16) + rng.integers(-1, 2, size=ref.shape), 0, 255).astype(np.uint8)
    shifted = np.clip(ref.astype(np.int16) + 6, 0, 255).astype(np.uint8)
    assert tc_decode._pixels_differ(ref, ref, cuda=False) is None
    assert "max abs difference 1" in tc_decode._pixels_differ(noisy, ref, cuda=False)
    assert tc_decode._pixels_differ(noisy, ref, cuda=True) is None
    assert "CUDA tolerance" in tc_decode._pixels_differ(shifted, ref, cuda=True)
    assert "shape" in tc_decode._pixels_differ(ref[:, :32], ref, cuda=True)


def _breaks_after_first_call(monkeypatch) -> None:
    from torchcodec.decoders import VideoDecoder

    original = VideoDecoder.get_frames_in_range
    calls = {"n": 0}

    def flaky(self, start, stop, step=1):
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("simulated NVDEC/FFmpeg failure")
        return original(self, start, stop, step)

    monkeypatch.setattr(VideoDecoder, "get_frames_in_range", flaky)


@pytest.mark.parametrize("fps", [None, 10])
def test_torchcodec_error_mid_stream_continues_with_pyav(corpus: dict[str, Path], monkeypatch, fps) -> None:
    path = corpus["h264_bframes.mp4"]  # 40 frames, 25 fps
    with open_video(path, backend="pyav", fps=fps) as reader:
        reference = reader.read_all()
    _breaks_after_first_call(monkeypatch)
    with open_video(path, backend="torchcodec", fps=fps, chunk_size=7) as reader:
        assert reader.info.backend == "torchcodec"
        chunks = list(reader.iter_chunks())
        assert reader.info.backend == "pyav"
        assert "torchcodec failed to decode frames 7..13 of 40 (simulated" in reader.info.fallback_reason
    if fps is None:
        assert [len(c) for c in chunks][:2] == [7, 7]
    np.testing.assert_array_equal(np.concatenate(chunks), reference)
    assert reader.frames_read == len(reference)


def test_frame_time_mismatch_mid_stream_continues_with_pyav(corpus: dict[str, Path], monkeypatch) -> None:
    path = corpus["h264.mkv"]  # 30 frames
    real = tc_decode._expected_seconds

    def shifted_from_frame_20(info):
        times = real(info).copy()
        times[20:] += 0.5
        return times

    monkeypatch.setattr(tc_decode, "_expected_seconds", shifted_from_frame_20)
    with open_video(path, backend="torchcodec", chunk_size=8) as reader:
        got = reader.read_all()
        assert reader.info.backend == "pyav"
        assert "torchcodec frame 20 is at 0.800000 s, the container's frame 20 at 1.300000 s" \
            in reader.info.fallback_reason
    assert np.array_equal(got, reference_all(path))


# ----------------------------------------------------------------------------- chunks and fps


@pytest.mark.parametrize("fps", [None, 10])
def test_chunks_are_bounded_and_concatenate_to_read_all(corpus: dict[str, Path], fps) -> None:
    with open_video(corpus["h264_bframes.mp4"], backend="torchcodec", fps=fps, chunk_size=7) as reader:
        chunks = list(reader.iter_chunks())
        everything = reader.read_all()  # a second iteration: a fresh decoder
        assert reader.info.backend == "torchcodec"
    expected = 40 if fps is None else 16
    assert [len(c) for c in chunks] == [7] * (expected // 7) + ([expected % 7] if expected % 7 else [])
    for c in chunks:
        assert c.dtype == np.uint8 and c.shape[1:] == (48, 64, 3) and c.flags.c_contiguous
        assert isinstance(c, np.ndarray)
    assert np.array_equal(np.concatenate(chunks), everything)


@pytest.mark.parametrize(("name", "fps"), [("h264_bframes.mp4", 10), ("h264.mkv", 50), ("vfr.mp4", 20),
                                           ("delayed.mp4", 7), ("edit_list.mp4", 5), ("h264.ts", 10)])
def test_resampling_gives_the_pyav_frames(corpus: dict[str, Path], name: str, fps: float) -> None:
    with open_video(corpus[name], backend="torchcodec", fps=fps) as t, \
            open_video(corpus[name], backend="pyav", fps=fps) as p:
        a, b = t.read_all(), p.read_all()
        assert t.info.backend == ("pyav" if name in FALLBACKS else "torchcodec")
        assert t.info.fps == p.info.fps == fps
    assert a.shape == b.shape and np.array_equal(a, b)


def test_resampling_real_video_matches_pyav() -> None:
    with open_video(EXAMPLE, backend="torchcodec", fps=10) as t, open_video(EXAMPLE, backend="pyav", fps=10) as p:
        a, b = t.read_all(), p.read_all()
        assert t.info.backend == "torchcodec"
    assert a.shape[0] == math.ceil(120 / (30000 / 1001) * 10) == 41
    assert np.array_equal(a, b)


def test_resample_25_to_10_fps_picks_the_previous_frame(corpus: dict[str, Path]) -> None:
    with open_video(corpus["h264_bframes.mp4"], backend="torchcodec", fps=10) as reader:
        got = [media.read_index(f) for f in reader.read_all()]
    assert got == [math.floor(2.5 * k) for k in range(16)]


def test_thread_counts_give_the_same_frames(corpus: dict[str, Path]) -> None:
    path = corpus["h264_bframes.mp4"]
    outputs = []
    for threads in (1, 0, 2):
        with VideoReader(path, backend="torchcodec", threads=threads) as reader:
            outputs.append(reader.read_all())
    assert all(np.array_equal(outputs[0], o) for o in outputs[1:])


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_videos_torchcodec")
    return media.make_bad_videos(root)


@pytest.mark.parametrize("kind", list(ERRORS))
def test_bad_inputs_raise_the_same_video_decode_errors(bad: dict[str, Path], kind: str) -> None:
    path = bad[kind]
    with pytest.raises(VideoDecodeError) as caught:
        with open_video(path, backend="torchcodec") as reader:
            reader.read_all()
    message = str(caught.value)
    assert ERRORS[kind] in message, message
    assert str(path) in message
    if kind in ("text", "truncated_mp4", "corrupt_mp4", "corrupt_avi"):
        assert caught.value.__cause__ is not None


def test_corrupt_h264_fails_in_torchcodec_then_in_pyav(bad: dict[str, Path]) -> None:
    """The first frames decode, torchcodec raises at the damage, PyAV goes on and raises its error."""
    reader = open_video(bad["corrupt_mp4"], backend="torchcodec", chunk_size=4)
    assert reader.info.backend == "torchcodec"
    with pytest.raises(VideoDecodeError, match="decoding failed after .* the video data is corrupt"):
        reader.read_all()
    assert reader.info.backend == "pyav" and "torchcodec failed to decode" in reader.info.fallback_reason
    assert reader.frames_read >= 4
    reader.close()


def test_file_names_that_look_like_protocols_open(corpus: dict[str, Path], tmp_path: Path) -> None:
    odd = tmp_path / "cam:01.mkv"
    odd.write_bytes(corpus["h264.mkv"].read_bytes())
    with open_video(odd, backend="torchcodec") as reader:
        assert reader.info.backend == "torchcodec"
        assert reader.read_all().shape == (30, 48, 64, 3)


def test_close_stops_iteration(corpus: dict[str, Path]) -> None:
    reader = open_video(corpus["h264.mkv"], backend="torchcodec", chunk_size=4)
    it = reader.iter_chunks()
    assert len(next(it)) == 4
    reader.close()
    assert next(it, None) is None
    with pytest.raises(ValueError):
        reader.iter_chunks()


# ----------------------------------------------------------------------------- configuration


@pytest.fixture
def fresh_availability():
    tc_decode._torchcodec_problem.cache_clear()
    yield
    tc_decode._torchcodec_problem.cache_clear()


def test_missing_torchcodec_is_a_config_error_naming_the_fix(corpus, monkeypatch, fresh_availability) -> None:
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # import torchcodec -> ImportError
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    for backend in ("torchcodec", "torchcodec-cuda"):
        with pytest.raises(ConfigError) as caught:
            VideoReader(corpus["h264.mkv"], backend=backend)
        message = str(caught.value)
        assert "torchcodec cannot be imported" in message
        assert "pip install torchcodec" in message and "apt-get install ffmpeg" in message
    # a setup problem, not a per-file one: reported before the file is looked at
    with pytest.raises(ConfigError):
        VideoReader(corpus["h264.mkv"].parent / "missing.mp4", backend="torchcodec")
    with open_video(corpus["h264.mkv"]) as reader:  # the default path does not need it
        assert reader.read_all().shape[0] == 30


def test_torchcodec_that_fails_to_load_is_a_config_error(corpus, monkeypatch, fresh_availability) -> None:
    """Older torchcodec raises RuntimeError at import when libtorchcodec/FFmpeg cannot be loaded."""

    class FailingLoader:
        def find_spec(self, name, path=None, target=None):
            if name == "torchcodec" or name.startswith("torchcodec."):
                raise RuntimeError("Could not load libtorchcodec. Likely causes:\n  1. FFmpeg is not installed\n[end].")
            return None

    for name in [m for m in sys.modules if m == "torchcodec" or m.startswith("torchcodec.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [FailingLoader(), *sys.meta_path])
    with pytest.raises(ConfigError, match=r"cannot be loaded \(RuntimeError: Could not load libtorchcodec.*"
                                          r"pip install torchcodec.*apt-get install ffmpeg"):
        VideoReader(corpus["h264.mkv"], backend="torchcodec")


def test_torchcodec_without_ffmpeg_libraries_is_a_config_error(corpus, monkeypatch, fresh_availability) -> None:
    import torchcodec

    monkeypatch.setattr(torchcodec, "ffmpeg_major_version", None)  # what it reports when none loads
    with pytest.raises(ConfigError, match=r"no FFmpeg libraries.*apt-get install ffmpeg"):
        check_backend("torchcodec")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_torchcodec_cuda_without_cuda_is_a_config_error(corpus: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match=r"torchcodec-cuda.*CUDA is not available.*--decoder torchcodec"):
        VideoReader(corpus["h264.mkv"], backend="torchcodec-cuda")


def test_torchcodec_cuda_config_error_when_torch_sees_no_gpu(corpus, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="CUDA is not available"):
        probe(corpus["h264.mkv"], backend="torchcodec-cuda")


def test_check_backend_accepts_the_available_ones() -> None:
    for backend in ("auto", "decord", "pyav", "torchcodec"):
        check_backend(backend)
    with pytest.raises(ConfigError, match="unknown decoder backend 'nvdec'"):
        check_backend("nvdec")


def test_cli_offers_the_torchcodec_decoders() -> None:
    from click.testing import CliRunner

    from vadpipe.cli import main

    for command in ("extract", "score"):
        result = CliRunner().invoke(main, [command, "--help"])
        assert result.exit_code == 0 and "torchcodec-cuda" in result.output, result.output


# ----------------------------------------------------------------------------- NVDEC (needs a GPU)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (NVDEC)")
@pytest.mark.parametrize("name", ["h264_bframes.mp4", "h264.mkv", "vp9.webm", "hevc.mkv", "edit_list.mp4",
                                  "h264.ts"])
def test_torchcodec_cuda_gives_pyav_frames_within_tolerance(corpus: dict[str, Path], name: str) -> None:
    path = corpus[name]
    with open_video(path, backend="torchcodec-cuda", chunk_size=8) as reader:
        n, n_ref, worst, mean = stream_diff(path, reader.iter_chunks())
        info = reader.info
    assert n == n_ref and mean <= 1.0, (n, n_ref, worst, mean, info)
    if name == "h264.ts":
        assert info.backend == "pyav" and worst == 0
    else:
        assert info.backend == "torchcodec-cuda", info.fallback_reason
