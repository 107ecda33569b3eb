"""``ClipSpec.drop_last``: the last frames of a video are left out before it is cut into clips
(XD-Violence's RGB features use ``n - 1`` frames), in the streaming cutter and in the counts."""

from __future__ import annotations

import numpy as np
import pytest

from vadpipe.errors import ConfigError, VideoDecodeError
from vadpipe.pipeline.extract.clips import MAX_DROP_LAST, ClipSpec, clip_frame_ranges, count_clips, iter_clips


def _frames(n: int) -> np.ndarray:
    """``[n, 1, 1, 1]`` frames whose value is their index."""
    return np.arange(n, dtype=np.int64).reshape(n, 1, 1, 1)


def _chunked(frames: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    out, i, k = [], 0, 0
    while i < len(frames):
        size = sizes[k % len(sizes)]
        out.append(frames[i:i + size])
        i, k = i + size, k + 1
    return out


@pytest.mark.parametrize("tail", ["drop", "pad"])
@pytest.mark.parametrize("length, stride", [(16, 16), (4, 2), (4, 8), (1, 1)])
@pytest.mark.parametrize("drop_last", [1, 3, 17])
def test_streamed_clips_equal_the_clips_of_the_video_cut_short(tail: str, length: int, stride: int,
                                                                drop_last: int) -> None:
    rng = np.random.default_rng(length * 100 + stride * 10 + drop_last)
    for n in [0, 1, drop_last, drop_last + 1, length + drop_last, 33, 50]:
        spec = ClipSpec(length, stride, tail, drop_last=drop_last)
        plain = ClipSpec(length, stride, tail)
        frames = _frames(n)
        sizes = [int(s) for s in rng.integers(1, 9, size=5)] + [0]  # empty chunks too
        got = [c[:, 0, 0, 0].tolist() for c in iter_clips(_chunked(frames, sizes), spec)]
        want = [c[:, 0, 0, 0].tolist() for c in iter_clips([frames[: max(0, n - drop_last)]], plain)]
        assert got == want, (n, sizes)
        assert count_clips(n, spec) == count_clips(max(0, n - drop_last), plain) == len(got)
        assert clip_frame_ranges(n, spec) == clip_frame_ranges(max(0, n - drop_last), plain)
        assert all(frame < n - drop_last for clip in got for frame in clip)  # the left-out frames are never seen


def test_xd_violence_rule_one_frame_left_out() -> None:
    spec = ClipSpec(16, 16, "drop", drop_last=1)
    for n in (16, 17, 32, 33, 1601):
        assert count_clips(n, spec) == (n - 1) // 16  # XDVioDet list/make_gt.py: (lens - 1) % 16 dropped
    assert clip_frame_ranges(32, spec) == [(0, 16)]  # frame 31 is left out, so the second clip is incomplete
    assert clip_frame_ranges(32, ClipSpec()) == [(0, 16), (16, 32)]
    padded = list(iter_clips([_frames(20)], ClipSpec(16, 16, "pad", drop_last=1)))
    assert padded[-1][:, 0, 0, 0].tolist() == [16, 17, 18] + [18] * 13  # repeats the last frame used, not 19


def test_drop_last_is_validated_and_defaults_to_every_frame() -> None:
    assert ClipSpec().drop_last == 0 and ClipSpec(drop_last=np.int64(2)).drop_last == 2
    assert ClipSpec().used_frames(5) == 5 and ClipSpec(drop_last=7).used_frames(5) == 0
    for bad in (-1, 1.0, True, MAX_DROP_LAST + 1, "1"):
        with pytest.raises(ConfigError, match="drop_last"):
            ClipSpec(drop_last=bad)


def test_a_size_change_is_still_a_decode_error_with_frames_held_back() -> None:
    a = np.zeros((5, 2, 2, 3), np.uint8)
    b = np.zeros((5, 3, 2, 3), np.uint8)
    with pytest.raises(VideoDecodeError, match="same size"):
        list(iter_clips([a, b], ClipSpec(4, 4, drop_last=2)))
