"""Valid videos that are hard to read right: each made with PyAV, small and fast to write.

Every maker returns the path it wrote. The frames carry :func:`tests.helpers.media.frame_pattern`
patterns where the codec allows it, so a reader's frames can be told apart.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

from tests.helpers.media import frame_pattern


def _rgb(i: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    if width < 16 or height < 12:  # too small for a pattern: one colour per frame
        return np.full((height, width, 3), (37 * i + seed) % 256, dtype=np.uint8)
    return frame_pattern(i, width=width, height=height, seed=seed)


def _encode(container: av.container.OutputContainer, stream: av.video.stream.VideoStream,
            frames: list[np.ndarray], pts: list[int] | None = None) -> None:
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if pts is not None:
            frame.pts = pts[i]
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def make_encoded(path: str | os.PathLike, n_frames: int = 20, *, width: int = 64, height: int = 48,
                 codec: str = "libx264", pix_fmt: str = "yuv420p", rate: Fraction | int = 25,
                 rotation: float | None = None, options: dict[str, str] | None = None,
                 pts: list[int] | None = None, time_base: Fraction | None = None, seed: int = 0) -> Path:
    """One video stream of ``n_frames`` pattern frames in ``codec``/``pix_fmt``.

    ``rotation`` stores a display rotation (degrees counterclockwise, FFmpeg's convention);
    ``pts`` with ``time_base`` gives explicit frame times (variable frame rate, late start).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=rate, options=options or {})
        s.width, s.height, s.pix_fmt = width, height, pix_fmt
        if time_base is not None:
            s.codec_context.time_base = time_base
            s.time_base = time_base
        if rotation is not None:
            s.set_display_rotation(rotation)
        _encode(c, s, [_rgb(i, width, height, seed) for i in range(n_frames)], pts)
    return path


def make_vfr(path: str | os.PathLike, n_frames: int = 30) -> Path:
    """Variable frame rate: frame gaps of 20, 40 and 60 ms in turn (a phone or a screen recorder)."""
    gaps = [20, 40, 60]
    pts = list(np.cumsum([0] + [gaps[i % 3] for i in range(n_frames - 1)]))
    return make_encoded(path, n_frames, pts=[int(p) for p in pts], time_base=Fraction(1, 1000), rate=25,
                        options={"bf": "0"})


def make_late_start(path: str | os.PathLike, n_frames: int = 20, start_s: float = 3.0) -> Path:
    """Frame times start at ``start_s`` seconds, not 0 (a cut of a longer recording)."""
    tb = Fraction(1, 1000)
    pts = [int(start_s * 1000) + 40 * i for i in range(n_frames)]
    return make_encoded(path, n_frames, pts=pts, time_base=tb, rate=25, options={"bf": "0"})


def make_audio_first(path: str | os.PathLike, n_frames: int = 20) -> Path:
    """Stream 0 is audio, stream 1 the video (as some cameras and converters write them)."""
    path = Path(path)
    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=16000)
        v = c.add_stream("libx264", rate=25)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        samples = 1024
        for k in range(int(n_frames / 25 * 16000 / samples) + 1):
            t = (np.arange(samples) + k * samples) / 16000
            af = av.AudioFrame.from_ndarray((0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                            format="fltp", layout="mono")
            af.sample_rate = 16000
            af.pts = k * samples
            for p in a.encode(af):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
        _encode(c, v, [_rgb(i, 64, 48) for i in range(n_frames)])
    return path


def make_two_video_streams(path: str | os.PathLike, small_frames: int = 20, large_frames: int = 28) -> Path:
    """Two video streams: 32×24 with ``small_frames`` frames first, then 96×72 with
    ``large_frames`` (a picture-in-picture or a preview track beside the main one)."""
    path = Path(path)
    with av.open(str(path), "w") as c:
        small = c.add_stream("libx264", rate=25)
        small.width, small.height, small.pix_fmt = 32, 24, "yuv420p"
        large = c.add_stream("libx264", rate=25)
        large.width, large.height, large.pix_fmt = 96, 72, "yuv420p"
        _encode(c, small, [_rgb(i, 32, 24, seed=9) for i in range(small_frames)])
        _encode(c, large, [_rgb(i, 96, 72) for i in range(large_frames)])
    return path


def make_resolution_change(path: str | os.PathLike, first: int = 12, second: int = 12,
                           suffix_format: str = "mpegts") -> Path:
    """One H.264 stream whose frame size changes from 64×48 to 96×72 after ``first`` frames
    (two encodes in a row in one MPEG-TS stream: a camera that switched resolution)."""
    path = Path(path)
    with av.open(str(path), "w", format=suffix_format) as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.codec_context.options = {"bf": "0"}
        for i in range(first):
            frame = av.VideoFrame.from_ndarray(_rgb(i, 64, 48), format="rgb24")
            frame.pts = i
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
        enc = av.CodecContext.create("libx264", "w")
        enc.width, enc.height, enc.pix_fmt = 96, 72, "yuv420p"
        enc.time_base = s.codec_context.time_base
        enc.framerate = 25
        enc.options = {"bf": "0"}
        for i in range(second):
            frame = av.VideoFrame.from_ndarray(_rgb(first + i, 96, 72), format="rgb24")
            frame.pts = first + i
            frame.time_base = enc.time_base
            for p in enc.encode(frame):
                p.stream = s
                c.mux(p)
        for p in enc.encode(None):
            p.stream = s
            c.mux(p)
    return path


#: name -> maker(path) of every tricky case, with the file suffix it is written as.
CASES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "vfr": (".mp4", make_vfr),
    "rotated-90": (".mp4", lambda p: make_encoded(p, rotation=90)),
    "rotated-180": (".mp4", lambda p: make_encoded(p, rotation=180)),
    "rotated-270": (".mp4", lambda p: make_encoded(p, rotation=-90)),
    "yuv444p": (".mp4", lambda p: make_encoded(p, pix_fmt="yuv444p")),
    "yuvj420p": (".mp4", lambda p: make_encoded(p, pix_fmt="yuvj420p")),
    "gray": (".mkv", lambda p: make_encoded(p, codec="ffv1", pix_fmt="gray")),
    "yuv420p10le": (".mp4", lambda p: make_encoded(p, pix_fmt="yuv420p10le")),
    "odd-size": (".mp4", lambda p: make_encoded(p, width=63, height=47, pix_fmt="yuv444p")),
    "1x1": (".mkv", lambda p: make_encoded(p, width=1, height=1, codec="ffv1", pix_fmt="yuv444p")),
    "4k": (".mp4", lambda p: make_encoded(p, n_frames=17, width=3840, height=2160,
                                          options={"preset": "ultrafast"})),
    "audio-first": (".mp4", make_audio_first),
    "late-start": (".mp4", make_late_start),
    "29.97fps": (".mp4", lambda p: make_encoded(p, rate=Fraction(30000, 1001))),
    "two-video-streams": (".mkv", make_two_video_streams),
    "resolution-change": (".ts", make_resolution_change),
}
