"""vadpipe.pipeline.extract.decode: frames agree with PyAV (the FFmpeg reference), safely fast.

The reference in every comparison is computed independently of the module under test
(``tests/helpers/decode_refs.py``): iterate ``container.decode(stream)`` with PyAV and
convert each frame with ``frame.to_ndarray(format="rgb24")``.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import av
import numpy as np
import pytest

from tests.helpers import media
from tests.helpers.decode_refs import ERRORS, SYNTHETIC, reference_all, reference_frames, stream_diff
from tests.helpers.paths import REPO, SHARED_FIXTURES
from vadpipe.errors import ConfigError, VideoDecodeError
from vadpipe.pipeline.extract.decode import BACKENDS, MAX_CHUNK_BYTES, VideoInfo, VideoReader, open_video, probe

EXAMPLE = REPO / "examples" / "videos" / "carphone_pristine.mp4"
SHARED_VIDEOS = SHARED_FIXTURES / "videos"
REAL_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4", "vtest.avi")


# ----------------------------------------------------------------------------- helpers


def packet_stats(path: Path) -> tuple[int, int]:
    """(non-empty video packets, those flagged discard by the demuxer)."""
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
    return len(packets), sum(p.is_discard for p in packets)


def shared_video(name: str) -> Path:
    path = SHARED_VIDEOS / name
    if not path.is_file():
        pytest.skip(f"shared fixture {path} not available")
    return path


# ----------------------------------------------------------------------------- corpus

@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("decode_corpus")
    made = {name: Path(make(root / name)) for name, (make, _, _) in SYNTHETIC.items()}
    made["delayed.mp4"] = media.make_delayed_start(made["h264_bframes.mp4"], root / "delayed.mp4", 5)
    made["delayed.mkv"] = media.make_delayed_start(made["h264.mkv"], root / "delayed.mkv", 5)
    return made


@pytest.fixture(scope="module")
def edit_list(tmp_path_factory) -> dict[str, Path | int]:
    """A 60-frame H.264 MP4 with B-frames cut by stream copy 3 frames after its second keyframe."""
    root = tmp_path_factory.mktemp("edit_list")
    src = media.make_video(root / "src.mp4", 60, gop=12, bframes=True, seed=21)
    with av.open(str(src)) as c:
        packets = [p for p in c.demux(c.streams.video[0]) if p.size]
    order = sorted(p.pts for p in packets)
    keys = sorted(order.index(p.pts) for p in packets if p.is_keyframe)
    cut = keys[1] + 3
    dst = media.make_edit_list_mp4(src, root / "cut.mp4", cut_frame=cut)
    return {"src": src, "dst": dst, "cut": cut, "key": keys[1], "n": 60}


# ----------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("name", [*SYNTHETIC, "delayed.mp4", "delayed.mkv"])
def test_auto_matches_the_pyav_reference(corpus: dict[str, Path], name: str) -> None:
    path = corpus[name]
    ref = reference_all(path)
    with open_video(path, chunk_size=8) as reader:
        got = reader.read_all()
        info = reader.info
    assert got.shape == ref.shape and got.dtype == np.uint8
    assert np.array_equal(got, ref), f"{name}: auto ({info.backend}) differs from PyAV"
    expected_backend, n = SYNTHETIC.get(name, (None, "decord", ref.shape[0]))[1:]
    assert info.backend == expected_backend, info.fallback_reason
    assert (info.fallback_reason is None) == (info.backend == "decord")
    assert ref.shape[0] == n
    # the frames are the encoded ones, in order (indices survive compression)
    assert [media.read_index(f) for f in got] == list(range(n))


@pytest.mark.parametrize("name", [n for n, (_, b, _) in SYNTHETIC.items() if b == "decord"] + ["delayed.mkv"])
def test_forced_backends_agree_where_auto_trusts_decord(corpus: dict[str, Path], name: str) -> None:
    path = corpus[name]
    with open_video(path, backend="decord", chunk_size=16) as d, open_video(path, backend="pyav", chunk_size=16) as p:
        assert (d.info.backend, p.info.backend) == ("decord", "pyav")
        assert d.info.fallback_reason is None and p.info.fallback_reason is None
        assert np.array_equal(d.read_all(), p.read_all())


def test_fallback_reasons_name_the_cause(corpus: dict[str, Path]) -> None:
    assert "MPEG-TS" in probe(corpus["h264.ts"]).fallback_reason
    assert "yuv420p10le" in probe(corpus["h264_10bit.mkv"]).fallback_reason
    assert "timestamps" in probe(corpus["h264_bframes.avi"]).fallback_reason


def test_ten_bit_difference_is_why_decord_is_avoided(corpus: dict[str, Path]) -> None:
    """decord's RGB conversion of 10-bit video is not FFmpeg's: measured, not assumed."""
    path = corpus["h264_10bit.mkv"]
    with open_video(path, backend="decord") as reader:
        n, n_ref, worst, mean = stream_diff(path, reader.iter_chunks())
    assert n == n_ref == 20
    assert worst > 0 and mean < 2.0


def test_bundled_example_matches_pyav() -> None:
    with open_video(EXAMPLE, chunk_size=50) as reader:
        assert reader.info.backend == "decord" and reader.info.fallback_reason is None
        assert (reader.info.width, reader.info.height) == (176, 144)
        assert reader.info.fps == pytest.approx(29.97, abs=1e-2)
        assert np.array_equal(reader.read_all(), reference_all(EXAMPLE))
        assert reader.frames_read == 120


@pytest.mark.parametrize("name", REAL_VIDEOS)
def test_real_videos_match_pyav(name: str) -> None:
    """Real encoder output: decord (forced) and auto against the reference, frame by frame.

    Measured with decord2 3.4.0 / PyAV 18.1.0: bit-identical on all four (max abs diff 0).
    The contract tested is the tolerance (same count, mean abs diff < 1.0) for forced
    decord, and exact equality for auto (which only picks decord where it proved exact).
    """
    path = shared_video(name)
    with open_video(path, backend="decord") as reader:
        n, n_ref, worst, mean = stream_diff(path, reader.iter_chunks())
    assert n == n_ref and mean < 1.0, (n, n_ref, worst, mean)
    with open_video(path) as reader:
        n, n_ref, worst, mean = stream_diff(path, reader.iter_chunks())
        assert reader.frames_read == n_ref
    assert (n, worst) == (n_ref, 0), (reader.info, mean)


# ----------------------------------------------------------------------------- edit lists


def test_edit_list_mp4_is_decoded_like_ffmpeg(edit_list: dict) -> None:
    dst, cut, n = edit_list["dst"], edit_list["cut"], edit_list["n"]
    # 1. the file really has an edit list that starts the track after the pre-roll
    (entries,) = media.read_elst(dst)
    assert len(entries) == 1 and entries[0][1] > 0, entries
    n_packets, n_discard = packet_stats(dst)
    assert n_discard >= 3 and n_packets == n - edit_list["key"]  # copied from the keyframe on
    # 2. the reference shows the frames from the cut on
    ref = reference_all(dst)
    assert [media.read_index(f) for f in ref] == list(range(cut, n))
    # 3. auto detects it, falls back to PyAV and equals the reference frame by frame
    with open_video(dst, chunk_size=10) as reader:
        got = reader.read_all()
        assert reader.info.backend == "pyav"
        assert "edit list" in reader.info.fallback_reason
        assert reader.info.n_frames_hint == n_packets  # the container's claim: includes hidden frames
        assert reader.frames_read == n - cut
    assert np.array_equal(got, ref)


def test_what_decord_alone_does_on_the_edit_list_mp4(edit_list: dict) -> None:
    """Why auto avoids decord here (decord2 3.4.0): it counts the hidden pre-roll packets,
    so it returns more frames than FFmpeg shows (the extra ones at the end are copies of
    the last frame) and its frame timestamps start before 0."""
    import decord

    dst = edit_list["dst"]
    n_packets, n_discard = packet_stats(dst)
    vr = decord.VideoReader(str(dst))
    assert len(vr) == n_packets
    assert vr.get_frame_timestamp([0])[0, 0] < 0
    ref = reference_all(dst)
    with open_video(dst, backend="decord") as reader:
        assert reader.info.backend == "decord" and reader.info.fallback_reason is None
        got = reader.read_all()
    assert got.shape[0] == n_packets > ref.shape[0]
    assert np.array_equal(got[:ref.shape[0]], ref)  # the visible frames come first ...
    assert all(np.array_equal(f, ref[-1]) for f in got[ref.shape[0]:])  # ... then copies


def test_bframe_mp4_has_a_harmless_edit_list(corpus: dict[str, Path]) -> None:
    """x264's B-frame delay alone gives an edit list (a shift, nothing hidden): decord is fine."""
    path = corpus["h264_bframes.mp4"]
    (entries,) = media.read_elst(path)
    assert entries[0][1] > 0
    assert packet_stats(path)[1] == 0
    assert probe(path).backend == "decord"


# ----------------------------------------------------------------------------- chunks


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("fps", [None, 10])
def test_chunks_are_bounded_and_concatenate_to_read_all(corpus: dict[str, Path], backend: str, fps) -> None:
    path = corpus["h264_bframes.mp4"]  # 40 frames at 25 fps
    with open_video(path, backend=backend, fps=fps, chunk_size=7) as reader:
        chunks = list(reader.iter_chunks())
        total = sum(len(c) for c in chunks)
        assert reader.frames_read == total
        everything = reader.read_all()
    expected = 40 if fps is None else 16
    assert [len(c) for c in chunks] == [7] * (expected // 7) + ([expected % 7] if expected % 7 else [])
    for c in chunks:
        assert c.dtype == np.uint8 and c.ndim == 4 and c.shape[1:] == (48, 64, 3)
        assert c.flags.c_contiguous
    assert np.array_equal(np.concatenate(chunks), everything)


def test_iterating_twice_gives_the_same_frames(corpus: dict[str, Path]) -> None:
    with open_video(corpus["h264.mkv"], chunk_size=4) as reader:
        assert reader.info.backend == "decord"
        first, second = reader.read_all(), reader.read_all()
    assert np.array_equal(first, second) and reader.frames_read == 30


def test_close_stops_iteration(corpus: dict[str, Path]) -> None:
    reader = open_video(corpus["h264.mkv"], backend="pyav", chunk_size=4)
    it = reader.iter_chunks()
    assert len(next(it)) == 4
    reader.close()
    assert next(it, None) is None
    with pytest.raises(ValueError):
        reader.iter_chunks()


def test_decord_bridge_setting_does_not_leak_into_output(corpus: dict[str, Path]) -> None:
    import decord

    decord.bridge.set_bridge("torch")
    try:
        with open_video(corpus["h264.mkv"], backend="decord", chunk_size=8) as reader:
            chunk = next(reader.iter_chunks())
    finally:
        decord.bridge.set_bridge("native")
    assert isinstance(chunk, np.ndarray) and chunk.shape == (8, 48, 64, 3)


# ----------------------------------------------------------------------------- fps


@pytest.mark.parametrize("backend", BACKENDS)
def test_resample_25_to_10_fps_picks_the_previous_frame(corpus: dict[str, Path], backend: str) -> None:
    path = corpus["h264_bframes.mp4"]  # 40 frames, 25 fps: 1.6 s
    with open_video(path, backend=backend, fps=10) as reader:
        got = reader.read_all()
        assert reader.info.fps == 10.0
        assert reader.frames_read == 16
    # output k at k/10 s; frame i at i/25 s: the largest i with i/25 <= k/10 is floor(2.5 k)
    assert [media.read_index(f) for f in got] == [math.floor(2.5 * k) for k in range(16)]
    ref = reference_all(path)
    assert np.array_equal(got, ref[[math.floor(2.5 * k) for k in range(16)]])


def test_resample_upwards_repeats_frames(corpus: dict[str, Path]) -> None:
    with open_video(corpus["h264.mkv"], fps=50) as reader:
        got = reader.read_all()
    assert [media.read_index(f) for f in got] == [k // 2 for k in range(60)]


def test_resample_follows_timestamps_of_variable_frame_rate(corpus: dict[str, Path]) -> None:
    durations = [100 if i % 3 == 0 else 40 for i in range(24)]
    starts = np.cumsum([0] + durations[:-1])  # ms
    outputs = {}
    for backend in ("decord", "pyav"):
        with open_video(corpus["vfr.mp4"], backend=backend, fps=20) as reader:
            outputs[backend] = [media.read_index(f) for f in reader.read_all()]
    # k / 20 s, up to the end of the last frame, which lasts one average frame period
    end_ms = starts[-1] + 1000 / probe(corpus["vfr.mp4"]).fps
    targets = [50 * k for k in range(100) if 50 * k < end_ms]
    expected = [int(np.searchsorted(starts, t, side="right")) - 1 for t in targets]
    assert outputs["decord"] == outputs["pyav"] == expected


def test_resampled_output_is_the_same_on_both_backends_for_real_video() -> None:
    with open_video(EXAMPLE, backend="decord", fps=10) as d, open_video(EXAMPLE, backend="pyav", fps=10) as p:
        a, b = d.read_all(), p.read_all()
    assert a.shape[0] == math.ceil(120 / (30000 / 1001) * 10) == 41
    assert np.array_equal(a, b)


def test_resample_edit_list_file_counts_from_the_cut(edit_list: dict) -> None:
    shown = edit_list["n"] - edit_list["cut"]  # frames at 25 fps: ceil(shown / 25 * 5) outputs
    with open_video(edit_list["dst"], fps=5) as reader:
        got = [media.read_index(f) for f in reader.read_all()]
    assert got == [edit_list["cut"] + 5 * k for k in range(math.ceil(shown / 5))]


# ----------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def bad(tmp_path_factory, corpus: dict[str, Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad_videos")
    return media.make_bad_videos(root)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", list(ERRORS))
def test_bad_inputs_raise_a_specific_video_decode_error(bad: dict[str, Path], kind: str, backend: str) -> None:
    path = bad[kind]
    with pytest.raises(VideoDecodeError) as caught:
        with open_video(path, backend=backend) as reader:
            reader.read_all()
    message = str(caught.value)
    assert ERRORS[kind] in message, message
    assert str(path) in message  # names the file
    if kind in ("text", "truncated_mp4", "corrupt_mp4", "corrupt_avi"):
        assert caught.value.__cause__ is not None  # the library error is kept


def test_probe_raises_the_same_errors_without_decoding(bad: dict[str, Path]) -> None:
    for kind in ("missing", "zero", "text", "audio", "truncated_mp4", "truncated_avi", "truncated_mkv"):
        with pytest.raises(VideoDecodeError, match="|".join(["no such", "empty", "not a video", "no video",
                                                             "truncated"])):
            probe(bad[kind])
    # corrupt packet data is only found by decoding
    assert isinstance(probe(bad["corrupt_mp4"]), VideoInfo)


def test_truncated_mpegts_decodes_its_first_part(tmp_path: Path) -> None:
    """MPEG-TS states no length, so a cut file cannot be told from a short one."""
    src = media.make_video(tmp_path / "ok.ts", 40)
    cut = media.make_truncated(src, tmp_path / "cut.ts", 0.5)
    with open_video(cut) as reader:
        got = reader.read_all()
    assert 0 < got.shape[0] < 40
    assert np.array_equal(got, reference_all(cut))


# ----------------------------------------------------------------------------- API


def test_probe_reports_the_video(corpus: dict[str, Path]) -> None:
    info = probe(corpus["odd_size.mkv"])
    assert info == VideoInfo(path=str(corpus["odd_size.mkv"]), width=66, height=50, fps=25.0,
                             n_frames_hint=20, backend="decord", fallback_reason=None)
    assert probe(corpus["odd_size.mkv"], backend="pyav").backend == "pyav"


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_forced_backend_is_reported_truthfully(corpus: dict[str, Path], backend: str) -> None:
    for name in ("h264.mkv", "h264.ts"):
        with open_video(corpus[name], backend=backend) as reader:
            assert reader.info.backend == backend
            assert reader.info.fallback_reason is None


@pytest.mark.parametrize("kwargs", [{"backend": "ffmpeg"}, {"chunk_size": 0}, {"fps": -1.0}, {"fps": float("nan")}])
def test_invalid_options_raise_config_error(corpus: dict[str, Path], kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        VideoReader(corpus["h264.mkv"], **kwargs)


def test_file_names_that_look_like_protocols_open(corpus: dict[str, Path], tmp_path: Path) -> None:
    odd = tmp_path / "cam:01.mkv"
    odd.write_bytes(corpus["h264.mkv"].read_bytes())
    for backend in BACKENDS:
        with open_video(odd, backend=backend) as reader:
            assert reader.read_all().shape == (30, 48, 64, 3)


def test_media_helpers_are_deterministic(tmp_path: Path) -> None:
    a = media.make_video(tmp_path / "a.mp4", 20, seed=3)
    b = media.make_video(tmp_path / "b.mp4", 20, seed=3)
    assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    assert [media.read_index(f) for f in reference_frames(a)] == list(range(20))


def test_auto_switches_to_pyav_when_decord_breaks_mid_stream(corpus: dict[str, Path], monkeypatch) -> None:
    import vadpipe.pipeline.extract.decode as decode
    from vadpipe.pipeline.extract.decode import info as decode_info

    path = next(p for p in corpus.values() if p.suffix == ".mp4")
    reference = open_video(path, backend="pyav").read_all()
    original = decode.VideoReader._decord_chunks

    def breaks_after_first_chunk(self, vr=None):
        gen = original(self, vr)
        yield next(gen)
        raise decode_info._fail(self.path, "decord failed to decode frames (simulated)")

    monkeypatch.setattr(decode.VideoReader, "_decord_chunks", breaks_after_first_chunk)
    with open_video(path, chunk_size=7) as reader:
        assert reader.info.backend == "decord"
        chunks = list(reader.iter_chunks())
        assert reader.info.backend == "pyav" and "decord failed after 7 frames" in reader.info.fallback_reason
    assert [len(c) for c in chunks][:2] == [7, 7]
    np.testing.assert_array_equal(np.concatenate(chunks), reference)
    assert reader.frames_read == len(reference)
    with pytest.raises(VideoDecodeError, match="simulated"):
        open_video(path, backend="decord").read_all()


def test_frame_width_decord_rejects_is_decoded_by_auto(tmp_path: Path) -> None:
    # decord 3.4 raises "DECORDArrayCopyFromTo: The size must exactly match" on 96x64 H.264
    from vadpipe.pipeline.benchmark import make_synthetic_video

    path = make_synthetic_video(tmp_path / "w96.mp4", seconds=0.5, width=96, height=64)
    with open_video(path) as reader:
        frames = reader.read_all()
    np.testing.assert_array_equal(frames, open_video(path, backend="pyav").read_all())


def test_chunks_of_large_frames_are_capped_in_bytes(tmp_path) -> None:
    big = media.make_video(tmp_path / "hd.mp4", n_frames=20, width=1280, height=720, seed=2)
    with open_video(big, backend="pyav") as reader:
        assert reader.chunk_size == MAX_CHUNK_BYTES // (1280 * 720 * 3) == 9
        assert [len(c) for c in reader.iter_chunks()] == [9, 9, 2]
    small = media.make_video(tmp_path / "sd.mp4", n_frames=20, seed=2)
    with open_video(small, backend="pyav", chunk_size=16) as reader:
        assert [len(c) for c in reader.iter_chunks()] == [16, 4]
