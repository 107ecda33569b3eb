"""The PyAV (FFmpeg) reference for the decode tests, and the corpus and error messages they share.

The reference is computed independently of the module under test: iterate
``container.decode(stream)`` with PyAV and convert each frame with
``frame.to_ndarray(format="rgb24")``. Used by ``tests/pipeline/extract/test_decode.py`` and
``tests/pipeline/extract/test_decode_torchcodec.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import av
import numpy as np

from tests.helpers import media


def reference_frames(path: Path) -> Iterator[np.ndarray]:
    """The reference: what FFmpeg presents, one RGB frame at a time."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")


def reference_all(path: Path) -> np.ndarray:
    return np.stack(list(reference_frames(path)))


def frames_of(chunks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    for chunk in chunks:
        yield from chunk


def stream_diff(path: Path, chunks: Iterator[np.ndarray]) -> tuple[int, int, int, float]:
    """Compare chunks with the reference without holding the video in memory.

    Returns ``(frames in chunks, frames in reference, max abs diff, mean abs diff)``.
    """
    ours = frames_of(chunks)
    n_ours = n_ref = 0
    worst, total, pixels = 0, 0, 0
    for ref in reference_frames(path):
        n_ref += 1
        frame = next(ours, None)
        if frame is None:
            continue
        n_ours += 1
        d = np.abs(frame.astype(np.int16) - ref.astype(np.int16))
        worst = max(worst, int(d.max()))
        total += int(d.sum())
        pixels += d.size
    n_ours += sum(1 for _ in ours)
    return n_ours, n_ref, worst, total / max(pixels, 1)


#: name -> (how to make it, backend "auto" must choose, frames)
SYNTHETIC = {
    "h264_bframes.mp4": (lambda p: media.make_bframes_mp4(p, 40, seed=1), "decord", 40),
    "h264_no_bframes.mp4": (lambda p: media.make_video(p, 30, bframes=False, seed=2), "decord", 30),
    "mpeg4.avi": (lambda p: media.make_video(p, 33, seed=3), "decord", 33),
    "h264_bframes.avi": (lambda p: media.make_video(p, 24, codec="libx264", bframes=True, seed=4), "pyav", 24),
    "h264.mkv": (lambda p: media.make_video(p, 30, seed=5), "decord", 30),
    "odd_size.mkv": (lambda p: media.make_video(p, 20, width=66, height=50, seed=6), "decord", 20),
    "yuv444.mov": (lambda p: media.make_video(p, 20, pix_fmt="yuv444p", seed=7), "decord", 20),
    "vp9.webm": (lambda p: media.make_video(p, 20, seed=8), "decord", 20),
    "mjpeg.avi": (lambda p: media.make_video(p, 20, codec="mjpeg", pix_fmt="yuvj420p", seed=9), "decord", 20),
    "h264.ts": (lambda p: media.make_video(p, 30, seed=10), "pyav", 30),
    "h264_10bit.mkv": (lambda p: media.make_video(p, 20, pix_fmt="yuv420p10le", seed=11), "pyav", 20),
    "vfr.mp4": (lambda p: media.make_video(p, 24, frame_ms=[100 if i % 3 == 0 else 40 for i in range(24)], seed=12),
                "decord", 24),
}


#: kind of bad input (``media.make_bad_videos``) -> words its VideoDecodeError must contain
ERRORS = {
    "missing": "no such file",
    "directory": "is a directory",
    "zero": "is empty (0 bytes)",
    "text": "not a video: the file contains text",
    "audio": "no video stream (found: audio (aac))",
    "truncated_mp4": "without its index ('moov' box): the file is truncated",
    "truncated_avi": "truncated: the container declares 40 frames but only",
    "truncated_mkv": "truncated: the container declares a 1.60 s video track",
    "corrupt_mp4": "corrupt",
    "corrupt_avi": "corrupt",
}
