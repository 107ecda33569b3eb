#!/usr/bin/env python
"""Decode-only frames/s of PyAV, decord and torchcodec, single-threaded and threaded.

    python scripts/bench_decoders.py [--out DIR] [--seconds 10] [--repeat 3] [--chunk 64] [--video PATH ...]

Videos: H.264 at 320x240 and 1280x720, ``--seconds`` long at 25 fps, written with PyAV
(libx264 ``preset=medium crf=23``, B-frames, the encoder's default GOP) into ``DIR`` (a
temporary folder by default; existing files are reused), plus
``../shared/fixtures/videos/bigbuckbunny.mp4`` (real 720p H.264) when it is readable, plus
every ``--video``.

Each row decodes the whole video to host RGB uint8 frames, best of ``--repeat`` passes:

* ``vadpipe f/s``: ``VideoReader(path, backend=B, threads=T, chunk_size=--chunk)`` over
  ``iter_chunks()`` (64: the pipeline's default), opening included: PyAV's demux pass, and
  for torchcodec its own index pass plus the first-frame check against PyAV (see
  ``vadpipe/pipeline/extract/decode/``);
* ``raw f/s``: the library alone: PyAV ``container.decode`` + ``to_ndarray("rgb24")`` per
  frame, decord ``get_batch`` and torchcodec ``get_frames_in_range``
  (``dimension_order="NHWC"``) in batches of 8 frames, opening included. Small batches
  measure the decoder, not the allocator: a 64-frame 720p batch (177 MB) is above glibc's
  mmap threshold, so every batch is fresh memory whose page faults cost about as much as
  decoding it (measured on bigbuckbunny, 1 thread: 0.41 CPU s with chunks of 64 against
  0.27 s with chunks of 8, PyAV and torchcodec alike).

``threads`` 1 is one decoding thread; ``auto`` is vadpipe's default ``threads=0``: PyAV
``thread_type="AUTO", thread_count=0``, decord ``num_threads=0``, torchcodec
``num_ffmpeg_threads=0`` (FFmpeg picks, about one per core; torchcodec's own default is 1).
``torchcodec-cuda`` (NVDEC, frames copied back to the host) is added when CUDA is available.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vadpipe.pipeline.extract.decode import VideoReader  # noqa: E402

SHARED = ROOT.parent / "shared" / "fixtures" / "videos" / "bigbuckbunny.mp4"
RAW_BATCH = 8


def make_h264(path: Path, seconds: float, width: int, height: int, fps: int = 25) -> Path:
    """A synthetic H.264 MP4 with texture and motion (so that the bit rate is realistic)."""
    if path.is_file():
        return path
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    texture = np.kron(texture, np.ones((8, 8, 1), dtype=np.uint8))  # 8x8 blocks
    yy, xx = np.mgrid[0:height, 0:width]
    n = int(round(seconds * fps))
    tmp = path.with_suffix(".part.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps),
                                options={"preset": "medium", "crf": "23"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            dx, dy = (3 * i) % texture.shape[1], i % texture.shape[0]
            moving = np.roll(np.roll(texture, dx, axis=1), dy, axis=0)[:height, :width]
            wave = (64 + 63 * np.sin((xx + 4 * i) / 40.0) * np.cos((yy - 2 * i) / 30.0)).astype(np.uint8)
            img = (moving // 2 + wave[..., None] // 2 + np.array([0, 20, 40], np.uint8)).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    tmp.rename(path)
    return path


# ----------------------------------------------------------------------------- raw decoders


def raw_pyav(path: str, threads: int) -> int:
    n = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        if threads == 1:
            s.codec_context.thread_count = 1
        else:
            s.thread_type = "AUTO"
            s.codec_context.thread_count = 0
        for frame in c.decode(s):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n


def raw_decord(path: str, threads: int) -> int:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
    total = len(vr)
    for start in range(0, total, RAW_BATCH):
        vr.get_batch(list(range(start, min(total, start + RAW_BATCH)))).asnumpy()
    return total


def raw_torchcodec(path: str, threads: int, device: str = "cpu") -> int:
    from torchcodec.decoders import VideoDecoder

    dec = VideoDecoder(path, dimension_order="NHWC", num_ffmpeg_threads=threads, device=device)
    total = len(dec)
    for start in range(0, total, RAW_BATCH):
        dec.get_frames_in_range(start, min(total, start + RAW_BATCH)).data.cpu().numpy()
    return total


def vadpipe_pass(path: str, backend: str, threads: int, chunk: int) -> tuple[int, str]:
    with VideoReader(path, backend=backend, threads=threads, chunk_size=chunk) as reader:
        n = sum(len(chunk) for chunk in reader.iter_chunks())
        used = reader.info.backend + (" (fallback)" if reader.info.fallback_reason else "")
    return n, used


def best_rate(fn: Callable[[], int], repeat: int) -> tuple[float, float, int]:
    """Best frames per wall-clock second and best frames per CPU second (all threads) of ``repeat`` passes."""
    best_wall = best_cpu = 0.0
    frames = 0
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        frames = fn()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best_wall = max(best_wall, frames / wall)
        best_cpu = max(best_cpu, frames / max(cpu, 1e-9))
    return best_wall, best_cpu, frames


def load() -> str:
    try:
        return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "load average unknown"


# ----------------------------------------------------------------------------- main


def versions() -> str:
    import decord

    parts = [f"PyAV {av.__version__} (libavcodec {'.'.join(map(str, av.library_versions['libavcodec']))})",
             f"decord {getattr(decord, '__version__', '?')}"]
    try:
        import torchcodec

        parts.append(f"torchcodec {torchcodec.__version__} (FFmpeg {torchcodec.ffmpeg_major_version})")
    except Exception as e:  # pragma: no cover - reported, not fatal
        parts.append(f"torchcodec unavailable ({type(e).__name__})")
    return ", ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="folder for the generated videos")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=64, help="VideoReader chunk_size [64, the pipeline's]")
    parser.add_argument("--video", type=Path, action="append", default=[], help="another video to measure")
    args = parser.parse_args()

    out = args.out or Path(tempfile.mkdtemp(prefix="bench_decoders_"))
    out.mkdir(parents=True, exist_ok=True)
    videos = [make_h264(out / f"h264_240p_{args.seconds:g}s.mp4", args.seconds, 320, 240),
              make_h264(out / f"h264_720p_{args.seconds:g}s.mp4", args.seconds, 1280, 720)]
    if SHARED.is_file() and os.access(SHARED, os.R_OK):
        videos.append(SHARED)
    videos += args.video

    backends = ["pyav", "decord", "torchcodec"]
    raw: dict[str, Callable[[str, int], int]] = {"pyav": raw_pyav, "decord": raw_decord,
                                                 "torchcodec": raw_torchcodec}
    try:
        import torch

        if torch.cuda.is_available():
            backends.append("torchcodec-cuda")
            raw["torchcodec-cuda"] = lambda p, t: raw_torchcodec(p, t, device="cuda")
    except ImportError:  # pragma: no cover
        pass

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {versions()}")
    print(f"# best of {args.repeat} whole-video passes, RGB uint8 to host memory, opening included; "
          f"vadpipe chunk_size {args.chunk}, raw batches of {RAW_BATCH}; "
          f"f/cpu-s = frames per CPU second of this process, all threads; {load()}")
    header = f"{'video':<22} {'size':>9} {'frames':>6} {'backend':<15} {'threads':>7} " \
             f"{'vadpipe f/s':>11} {'raw f/s':>8} {'vadpipe f/cpu-s':>15} {'raw f/cpu-s':>11}  decoded by"
    print(header)
    print("-" * len(header))
    for video in videos:
        with av.open(str(video)) as c:
            ctx = c.streams.video[0].codec_context
            size = f"{ctx.width}x{ctx.height}"
        for backend in backends:
            for threads in (1, 0):
                used = ""

                def through_vadpipe() -> int:
                    nonlocal used
                    n, used = vadpipe_pass(str(video), backend, threads, args.chunk)
                    return n

                rate, cpu_rate, frames = best_rate(through_vadpipe, args.repeat)
                raw_rate, raw_cpu_rate, _ = best_rate(lambda: raw[backend](str(video), threads), args.repeat)
                print(f"{video.name:<22} {size:>9} {frames:>6} {backend:<15} {'1' if threads == 1 else 'auto':>7} "
                      f"{rate:>11.1f} {raw_rate:>8.1f} {cpu_rate:>15.1f} {raw_cpu_rate:>11.1f}  {used}", flush=True)
    print(f"# {load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
