"""Cutting a stream of decoded frames into fixed-length clips.

Clip geometry
-------------
A video of ``n`` frames is cut on a regular grid: clip ``k`` starts at source frame
``k * stride`` and would cover ``length`` frames. With ``c`` the number of *complete*
clips (all ``length`` frames inside the video)::

    c = (n - length) // stride + 1   if n >= length else 0

Tail policy (:attr:`ClipSpec.tail`):

``"drop"``
    Only the ``c`` complete clips. Frames after the last complete clip are ignored; this
    is what the community feature sets do (e.g. 1601 frames, 16/16 -> 100 clips, the
    last frame is never seen; 15 frames -> 0 clips).
``"pad"``
    The ``c`` complete clips, plus one final *padded* clip when some frames at the end
    of the video are not in any complete clip **and** the next grid start ``c * stride``
    is still inside the video. The padded clip starts at ``c * stride``, takes the
    frames ``[c * stride, n)`` and is completed to ``length`` frames by repeating the
    video's last frame. Hence a video shorter than one clip (``1 <= n < length``) gives
    exactly one padded clip, and 1601 frames at 16/16 give 101 clips. With
    ``stride > length`` frames that fall in a gap between grid clips are skipped by
    design, so trailing gap frames do not create a padded clip (length 4, stride 8,
    n = 7: one clip ``[0, 4)``; n = 9: a second, padded clip ``[8, 9)``). There is at
    most one padded clip.

:func:`clip_frame_ranges` returns these clips as ``(start, end)`` source-frame ranges,
``end`` exclusive and clamped to ``n`` for the padded clip; :func:`iter_clips` yields
exactly these clips from a stream of frame chunks without holding the whole video.

Frames left out (:attr:`ClipSpec.drop_last`)
--------------------------------------------
``drop_last = k`` leaves the last ``k`` decoded frames out before the video is cut: the
grid, the tail policy and ``n`` above then apply to the first ``n - k`` frames (none when
``n <= k``). XD-Violence's RGB features are made this way with ``k = 1``, so that RGB clips
line up with the optical flow, which has one frame fewer (XDVioDet ``list/make_gt.py``:
``(lens - 1) % clip_len``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from vadpipe.errors import ConfigError, VideoDecodeError

TAIL_POLICIES = ("drop", "pad")

#: Largest :attr:`ClipSpec.drop_last` accepted (a typo such as 16000 is refused, not obeyed).
MAX_DROP_LAST = 1024


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ClipSpec:
    """How a video is cut into clips.

    Attributes:
        length: frames per clip (16 for I3D and C3D); an int ``>= 1``.
        stride: frames between the starts of consecutive clips (``length``: no overlap;
            smaller: overlapping clips; larger: frames between clips are skipped);
            an int ``>= 1``.
        tail: ``"drop"``: frames after the last complete clip are ignored (what the
            community feature sets do); ``"pad"``: an incomplete last clip is completed
            by repeating the video's last frame. See the module docstring for the exact
            rule.
        drop_last: the last ``drop_last`` frames of the video are left out before it is cut
            (0: every frame is used; 1: XD-Violence's RGB features). An int in
            ``[0, MAX_DROP_LAST]``.

    Raises:
        ConfigError: on a non-integer or non-positive ``length``/``stride``, an unknown
            ``tail`` or a ``drop_last`` out of range.
    """

    length: int = 16
    stride: int = 16
    tail: str = "drop"
    drop_last: int = 0

    def __post_init__(self) -> None:
        for name in ("length", "stride"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ConfigError(f"ClipSpec.{name} must be an integer >= 1, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.tail not in TAIL_POLICIES:
            allowed = ", ".join(repr(p) for p in TAIL_POLICIES)
            raise ConfigError(f"ClipSpec.tail must be one of {allowed}, got {self.tail!r}")
        if not _is_int(self.drop_last) or not 0 <= self.drop_last <= MAX_DROP_LAST:
            raise ConfigError(
                f"ClipSpec.drop_last must be an integer in [0, {MAX_DROP_LAST}], got {self.drop_last!r}"
            )
        object.__setattr__(self, "drop_last", int(self.drop_last))

    def used_frames(self, n_frames: int) -> int:
        """Frames of an ``n_frames``-frame video that the clips are cut from: ``max(0, n - drop_last)``."""
        return max(0, _check_n_frames(n_frames) - self.drop_last)


def _check_n_frames(n_frames: int) -> int:
    if not _is_int(n_frames) or n_frames < 0:
        raise ValueError(f"n_frames must be an integer >= 0, got {n_frames!r}")
    return int(n_frames)


def _complete_count(n: int, spec: ClipSpec) -> int:
    return (n - spec.length) // spec.stride + 1 if n >= spec.length else 0


def _has_padded_clip(n: int, spec: ClipSpec, complete: int) -> bool:
    if spec.tail != "pad":
        return False
    covered_end = (complete - 1) * spec.stride + spec.length if complete else 0
    return complete * spec.stride < n and covered_end < n


def count_clips(n_frames: int, spec: ClipSpec) -> int:
    """Number of clips a video of ``n_frames`` frames gives under ``spec``.

    ``"drop"``: ``(n - length) // stride + 1`` if ``n >= length`` else ``0``;
    ``"pad"``: that, plus one padded clip as described in the module docstring; ``n`` is
    ``n_frames - drop_last`` (:meth:`ClipSpec.used_frames`).
    """
    n = spec.used_frames(n_frames)
    complete = _complete_count(n, spec)
    return complete + int(_has_padded_clip(n, spec, complete))


def clip_frame_ranges(n_frames: int, spec: ClipSpec) -> list[tuple[int, int]]:
    """Source-frame range ``(start, end)`` of every clip, in order.

    ``start`` is inclusive and ``end`` exclusive. Complete clips have
    ``end - start == length``; a padded tail clip has ``end == n_frames`` and
    ``end - start < length`` (it is completed by repeating frame ``n_frames - 1``).
    With ``drop_last`` the frames ``[n_frames - drop_last, n_frames)`` are in no range and
    ``n_frames`` above reads ``n_frames - drop_last``.
    """
    n = spec.used_frames(n_frames)
    complete = _complete_count(n, spec)
    ranges = [(k * spec.stride, k * spec.stride + spec.length) for k in range(complete)]
    if _has_padded_clip(n, spec, complete):
        ranges.append((complete * spec.stride, n))
    return ranges


def _checked_chunks(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The non-empty chunks of ``chunks`` as arrays ``[t, H, W, C]``, all of one frame shape and dtype.

    Raises:
        VideoDecodeError: a chunk's frame shape or dtype differs from the first chunk's.
        ValueError: a chunk is not a 4-D array.
    """
    frame_shape: tuple[int, ...] | None = None
    dtype = None
    for chunk in chunks:
        chunk = np.asarray(chunk)
        if chunk.ndim != 4:
            raise ValueError(f"frame chunks must be [t, H, W, C] arrays, got shape {chunk.shape}")
        if chunk.shape[0] == 0:
            continue
        if frame_shape is None:
            frame_shape, dtype = chunk.shape[1:], chunk.dtype
        elif chunk.shape[1:] != frame_shape or chunk.dtype != dtype:
            raise VideoDecodeError(
                f"frame chunk of shape {chunk.shape[1:]} and dtype {chunk.dtype} after frames of "
                f"shape {frame_shape} and dtype {dtype}; a video's frames must all have the "
                "same size"
            )
        yield chunk


def _without_last(chunks: Iterable[np.ndarray], k: int) -> Iterator[np.ndarray]:
    """``chunks`` (checked, non-empty ``[t, H, W, C]``) less the stream's last ``k`` frames.

    Holds back ``k`` frames (a copy, so the chunk they came from can be freed) until the
    next chunk shows that they are not the last; the held frames are never yielded.
    """
    held: np.ndarray | None = None
    for chunk in chunks:
        buf = chunk if held is None else np.concatenate([held, chunk], axis=0)
        if buf.shape[0] <= k:
            held = buf
            continue
        cut = buf.shape[0] - k
        held = buf[cut:].copy()
        yield buf[:cut]


def iter_clips(chunks: Iterable[np.ndarray], spec: ClipSpec) -> Iterator[np.ndarray]:
    """Cut a stream of frame chunks into clips.

    Args:
        chunks: consecutive chunks of one video's frames, each an array
            ``[t, H, W, C]`` (uint8 ``[t, H, W, 3]`` as decoders give), any ``t >= 1``
            and varying between chunks; empty chunks are skipped. All chunks must have
            the same ``H, W, C`` and dtype.
        spec: the clip geometry (and the frames left out at the end, ``spec.drop_last``).

    Yields:
        Arrays ``[length, H, W, C]``, exactly the clips of
        ``clip_frame_ranges(total_frames, spec)`` in that order. Yielded arrays are
        read-only and may be views sharing memory with other clips or with the input
        chunks; copy one to modify it.

    Memory: besides the chunk being consumed (and the previous one, which the caller's
    generator may still reference), at most ``length - 1 + drop_last`` earlier frames are
    kept, so memory is ``O(length + drop_last + chunk)`` frames whatever the video length;
    frames that fall in a gap (``stride > length``) are dropped as soon as they arrive.

    Raises:
        VideoDecodeError: if a chunk's frame shape or dtype differs from the first
            chunk's (e.g. a resolution change mid-stream).
        ValueError: if a chunk is not a 4-D array.
    """
    length, stride = spec.length, spec.stride
    stream = _checked_chunks(chunks)
    if spec.drop_last:
        stream = _without_last(stream, spec.drop_last)
    buf: np.ndarray | None = None  # frames [buf_start, total) that later clips need
    buf_start = 0
    total = 0  # frames received so far
    start = 0  # start of the next grid clip
    covered_end = 0  # end of the last complete clip yielded

    for chunk in stream:
        first = total
        total += chunk.shape[0]
        if total <= start:
            continue  # the whole chunk lies in a gap before the next clip
        if start > first:
            chunk = chunk[start - first :]
            first = start
        if buf is None:
            buf, buf_start = chunk, first
        else:
            buf = np.concatenate([buf, chunk], axis=0)

        while start + length <= total:
            i = start - buf_start
            clip = buf[i : i + length]
            clip.flags.writeable = False
            yield clip
            covered_end = start + length
            start += stride

        if start >= total:
            buf = None
        else:
            # Keep only the (< length) frames the next clip needs, as a copy so that the
            # consumed chunk can be freed.
            buf = buf[start - buf_start :].copy()
            buf_start = start

    if spec.tail == "pad" and start < total and covered_end < total:
        assert buf is not None and buf_start == start
        rest = buf
        pad = np.repeat(rest[-1:], length - rest.shape[0], axis=0)
        clip = np.concatenate([rest, pad], axis=0)
        clip.flags.writeable = False
        yield clip
