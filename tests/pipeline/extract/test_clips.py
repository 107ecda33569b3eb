"""Tests of vadpipe.pipeline.extract.clips: clip geometry, tail policies, streaming cutter."""

from __future__ import annotations

import itertools
import random
import tracemalloc
import weakref

import numpy as np
import pytest

from vadpipe.errors import ConfigError, VideoDecodeError
from vadpipe.pipeline.extract.clips import (
    TAIL_POLICIES,
    ClipSpec,
    clip_frame_ranges,
    count_clips,
    iter_clips,
)

# ---------------------------------------------------------------------------- ClipSpec


def test_defaults():
    spec = ClipSpec()
    assert (spec.length, spec.stride, spec.tail) == (16, 16, "drop")
    assert TAIL_POLICIES == ("drop", "pad")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"length": 0}, "length must be an integer >= 1"),
        ({"length": -3}, "length"),
        ({"length": 2.5}, "length"),
        ({"length": True}, "length"),
        ({"stride": 0}, "stride must be an integer >= 1"),
        ({"stride": "4"}, "stride"),
        ({"tail": "wrap"}, "'drop', 'pad'"),
    ],
)
def test_spec_validation(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        ClipSpec(**kwargs)


def test_spec_accepts_numpy_ints():
    spec = ClipSpec(length=np.int64(8), stride=np.int32(4))
    assert spec.length == 8 and type(spec.length) is int


# ---------------------------------------------------------------------------- counts


@pytest.mark.parametrize(
    "n, length, stride, drop, pad",
    [
        (1601, 16, 16, 100, 101),
        (1600, 16, 16, 100, 100),
        (15, 16, 16, 0, 1),
        (16, 16, 16, 1, 1),
        (17, 16, 16, 1, 2),
        (1, 16, 16, 0, 1),
        (0, 16, 16, 0, 0),
        (32, 16, 8, 3, 3),  # [0,16) [8,24) [16,32): everything covered
        (30, 16, 8, 2, 3),  # frames 24..29 uncovered -> padded [16, 30)
        (24, 16, 8, 2, 2),
        (7, 4, 8, 1, 1),  # frames 4..6 lie in the gap before the next start (8)
        (9, 4, 8, 1, 2),  # next start 8 < 9 -> padded [8, 9)
        (8, 4, 8, 1, 1),
    ],
)
def test_counts_hand_cases(n, length, stride, drop, pad):
    assert count_clips(n, ClipSpec(length, stride, "drop")) == drop
    assert count_clips(n, ClipSpec(length, stride, "pad")) == pad


def test_ranges_hand_cases():
    assert clip_frame_ranges(40, ClipSpec(16, 16, "drop")) == [(0, 16), (16, 32)]
    assert clip_frame_ranges(40, ClipSpec(16, 16, "pad")) == [(0, 16), (16, 32), (32, 40)]
    assert clip_frame_ranges(15, ClipSpec(16, 16, "pad")) == [(0, 15)]
    assert clip_frame_ranges(15, ClipSpec(16, 16, "drop")) == []
    assert clip_frame_ranges(30, ClipSpec(16, 8, "pad")) == [(0, 16), (8, 24), (16, 30)]
    assert clip_frame_ranges(9, ClipSpec(4, 8, "pad")) == [(0, 4), (8, 9)]
    assert clip_frame_ranges(1601, ClipSpec())[-1] == (1584, 1600)
    assert clip_frame_ranges(1601, ClipSpec(tail="pad"))[-1] == (1600, 1601)


def test_bad_n_frames():
    with pytest.raises(ValueError):
        count_clips(-1, ClipSpec())
    with pytest.raises(ValueError):
        clip_frame_ranges(3.0, ClipSpec())


def _brute_force_ranges(n, spec):
    """The clip rule written out by enumeration, independent of the closed forms."""
    complete = []
    start = 0
    while start + spec.length <= n:
        complete.append((start, start + spec.length))
        start += spec.stride
    if spec.tail == "drop":
        return complete
    covered = {f for a, b in complete for f in range(a, b)}
    # A padded clip exists iff a frame outside every complete clip lies at or after the
    # next grid start.
    if any(f not in covered and f >= start for f in range(n)):
        complete.append((start, n))
    return complete


def test_ranges_match_brute_force():
    for n, length, stride, tail in itertools.product(
        range(0, 45), (1, 2, 3, 5, 16), (1, 2, 3, 5, 7, 16, 20), TAIL_POLICIES
    ):
        spec = ClipSpec(length, stride, tail)
        ranges = clip_frame_ranges(n, spec)
        assert ranges == _brute_force_ranges(n, spec), (n, spec)
        assert count_clips(n, spec) == len(ranges)
        drop = (n - length) // stride + 1 if n >= length else 0
        assert sum(b - a == length for a, b in ranges) == drop
        assert all(b - a < length for a, b in ranges[drop:])
        assert len(ranges) - drop <= 1


# ---------------------------------------------------------------------------- iter_clips


def _video(n, h=1, w=1):
    """int32 frames whose every pixel holds the frame index."""
    return np.broadcast_to(np.arange(n, dtype=np.int32)[:, None, None, None], (n, h, w, 3)).copy()


def _naive_clips(video, spec):
    out = []
    for a, b in clip_frame_ranges(video.shape[0], spec):
        clip = video[a:b]
        if b - a < spec.length:
            clip = np.concatenate([clip, np.repeat(video[b - 1 : b], spec.length - (b - a), 0)])
        out.append(clip)
    return out


def _chunked(video, sizes):
    """Split video into chunks of the given sizes (cycled)."""
    i = 0
    for size in itertools.cycle(sizes):
        if i >= video.shape[0]:
            return
        yield video[i : i + size]
        i += size


CHUNKINGS = [(1,), (3,), (16,), (1000,), (2, 7, 1, 5), (13, 1, 1)]


def test_iter_clips_matches_naive_slicing():
    rng = random.Random(0)
    combos = 0
    for n, length, stride, tail, sizes in itertools.product(
        (0, 1, 2, 4, 5, 15, 16, 17, 31, 33, 40, 57),
        (1, 2, 3, 5, 16),
        (1, 2, 3, 5, 7, 16, 20),
        TAIL_POLICIES,
        CHUNKINGS + [None],
    ):
        spec = ClipSpec(length, stride, tail)
        video = _video(n)
        if sizes is None:
            sizes = tuple(rng.randint(1, 9) for _ in range(5))
        got = list(iter_clips(_chunked(video, sizes), spec))
        want = _naive_clips(video, spec)
        assert len(got) == len(want), (n, spec, sizes)
        for g, w in zip(got, want):
            assert g.shape == (length, 1, 1, 3)
            np.testing.assert_array_equal(g, w)
        combos += 1
    assert combos > 4000


def test_iter_clips_uint8_frames_and_padding_repeats_last_frame():
    rng = np.random.default_rng(1)
    video = rng.integers(0, 256, (21, 4, 5, 3), dtype=np.uint8)
    clips = list(iter_clips(_chunked(video, (4,)), ClipSpec(8, 8, "pad")))
    assert [c.shape for c in clips] == [(8, 4, 5, 3)] * 3
    assert all(c.dtype == np.uint8 for c in clips)
    np.testing.assert_array_equal(clips[2][:5], video[16:21])
    np.testing.assert_array_equal(clips[2][5:], np.repeat(video[20:21], 3, 0))


def test_iter_clips_yields_read_only_arrays():
    clips = list(iter_clips(_chunked(_video(40), (5,)), ClipSpec(16, 8, "pad")))
    for clip in clips:
        with pytest.raises(ValueError):
            clip[0, 0, 0, 0] = 1


def test_iter_clips_skips_empty_chunks():
    video = _video(20)
    chunks = [video[:0], video[:7], video[7:7], video[7:]]
    got = list(iter_clips(chunks, ClipSpec(4, 4)))
    assert len(got) == 5
    np.testing.assert_array_equal(got[-1], video[16:20])


def test_iter_clips_rejects_shape_change():
    chunks = [np.zeros((4, 2, 2, 3), np.uint8), np.zeros((4, 2, 3, 3), np.uint8)]
    with pytest.raises(VideoDecodeError, match="same size"):
        list(iter_clips(chunks, ClipSpec(2, 2)))
    with pytest.raises(ValueError):
        list(iter_clips([np.zeros((4, 2, 3), np.uint8)], ClipSpec(2, 2)))


@pytest.mark.parametrize(
    "length, stride, chunk", [(16, 16, 5), (16, 4, 7), (4, 16, 3), (16, 16, 40)]
)
def test_iter_clips_frees_consumed_chunks(length, stride, chunk):
    """When chunk k is requested, chunks before k - 1 must be garbage (clips dropped)."""
    refs: list[weakref.ref] = []

    def source():
        for k in range(60):
            # No gc.collect(): the arrays are in no reference cycle, so refcounting frees
            # them at once (and a full collection is slow once torch is imported).
            alive = [i for i, r in enumerate(refs[: max(0, k - 1)]) if r() is not None]
            assert not alive, f"chunks {alive} still alive when chunk {k} is produced"
            arr = np.full((chunk, 2, 2, 3), k % 256, np.uint8)
            refs.append(weakref.ref(arr))
            yield arr

    n = 0
    for clip in iter_clips(source(), ClipSpec(length, stride, "pad")):
        assert clip.shape[0] == length
        n += 1
        del clip
    assert n == count_clips(60 * chunk, ClipSpec(length, stride, "pad"))


def test_iter_clips_memory_bounded():
    """Peak memory stays O(length + chunk) frames for a long video (tracemalloc)."""
    length, chunk, frame = 16, 7, (32, 32, 3)
    frame_bytes = int(np.prod(frame))
    n_chunks = 300  # 2100 frames, ~6.4 MB in total

    def source():
        for k in range(n_chunks):
            yield np.full((chunk, *frame), k % 256, np.uint8)

    tracemalloc.start()
    try:
        count = 0
        for _clip in iter_clips(source(), ClipSpec(length, 8, "pad")):
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == count_clips(n_chunks * chunk, ClipSpec(length, 8, "pad"))
    bound = (2 * length + 3 * chunk) * frame_bytes + 64 * 1024
    assert peak < bound, (peak, bound)
