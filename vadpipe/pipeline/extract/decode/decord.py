"""decord: opened only when the probe says it decodes this file like FFmpeg (see the package docstring)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vadpipe.pipeline.extract.decode.info import (
    DECORD_CONTAINERS,
    DECORD_PIXEL_FORMATS,
    _brief,
    _open_container,
    _Probe,
    _video_stream,
)

# ----------------------------------------------------------------------------- decord side

#: Largest allowed difference between decord's and the container's frame times (seconds),
#: plus float32 rounding.
_TIMESTAMP_TOLERANCE_S = 2e-3


def _to_numpy(arr: Any) -> np.ndarray:
    """decord's output as a C-contiguous uint8 numpy array, whatever bridge is active."""
    if isinstance(arr, np.ndarray):
        out = arr
    elif hasattr(arr, "asnumpy"):          # decord native NDArray (and mxnet)
        out = arr.asnumpy()
    elif hasattr(arr, "numpy"):            # torch / tensorflow bridges
        out = arr.cpu().numpy() if hasattr(arr, "cpu") else arr.numpy()
    else:
        out = np.asarray(arr)
    return np.ascontiguousarray(out, dtype=np.uint8)


def _open_decord(path: str, threads: int) -> Any:
    import decord  # imported lazily: the PyAV path must work without it

    return decord.VideoReader(os.path.abspath(path), ctx=decord.cpu(0), num_threads=threads)


#: Decoded pixel formats of :data:`DECORD_PIXEL_FORMATS` whose chroma planes are subsampled
#: (4:2:0 and 4:2:2): at an odd frame width or height decord's RGB conversion differs from
#: FFmpeg's (see :func:`_format_reason`).
_SUBSAMPLED_CHROMA = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p"})


def _format_reason(container: str, pix_fmt: str | None, width: int, height: int) -> str | None:
    """Why decord cannot be trusted with a file of this container, pixel format and frame size,
    known from the headers alone; ``None`` when these do not rule it out.

    An odd width or height with subsampled chroma is ruled out: decord's RGB then differs from
    PyAV's over the whole picture, whatever the codec (measured with decord2 3.4.0 on random
    pictures: MJPEG yuvj420p/yuvj422p 175x97 up to 22/26 levels, FFV1/VP9 up to 21, MPEG-4
    Part 2 up to 49, H.264 4:2:2 64x47 up to 81; equal at even sizes, with 4:4:4, and at an
    odd width alone, which is ruled out all the same as it was not measured on every codec).
    """
    if container == "mpegts":
        return "MPEG-TS container: decord's frame index drops leading frames on MPEG-TS"
    if container not in DECORD_CONTAINERS:
        return f"container {container!r}: decord is only trusted with MP4/MOV, Matroska/WebM and AVI"
    if pix_fmt not in DECORD_PIXEL_FORMATS:
        return f"pixel format {pix_fmt}: decord's RGB conversion differs from FFmpeg's"
    if pix_fmt in _SUBSAMPLED_CHROMA and (width % 2 or height % 2):
        return (f"odd frame size {width}x{height} with subsampled chroma ({pix_fmt}): decord's RGB conversion "
                "differs from FFmpeg's at odd sizes")
    return None


def decord_header_reason(path: str) -> str | None:
    """Why ``auto`` would not give ``path`` to decord, from its headers alone (container,
    pixel format, frame size; no demuxing, about a millisecond); ``None`` when they allow it,
    or when the file cannot be opened (decoding it reports that).

    Resume uses it to find rows decord decoded under rules that trusted it more than
    :func:`_decord_verdict` does now.
    """
    try:
        container = _open_container(path)
    except Exception:  # gone or unreadable: the run that decodes it says why
        return None
    try:
        ctx = _video_stream(container, path).codec_context
        return _format_reason(container.format.name, ctx.pix_fmt, int(ctx.width), int(ctx.height))
    except Exception:
        return None
    finally:
        container.close()


def _decord_verdict(info: _Probe, threads: int) -> tuple[Any | None, str | None]:
    """``(decord reader, None)`` when decord is safe for this file, else ``(None, reason)``."""
    reason = _format_reason(info.container, info.pix_fmt, info.width, info.height)
    if reason:
        return None, reason
    if info.n_discarded:
        return None, (f"edit list hides {info.n_discarded} pre-roll packet(s): decord would return "
                      f"{info.n_packets} frames, FFmpeg shows {info.n_shown}")
    if info.n_missing_pts:
        return None, f"{info.n_missing_pts} packet(s) without timestamps"
    if info.sps_changes:
        return None, (f"{info.sps_changes} keyframe(s) change the sequence parameters (the frame size may change "
                      "mid-stream): decord would scale such frames its own way")
    if info.rotation or info.odd_rotation:
        return None, (f"display rotation of {info.rotation or info.odd_rotation:g} degrees: decord turns only some "
                      "rotations itself (and fails on 90/270)")
    try:
        vr = _open_decord(info.path, threads)
    except ImportError as e:
        return None, f"decord is not installed ({e})"
    except MemoryError:
        raise
    except Exception as e:
        return None, f"decord cannot open the file ({_brief(e)})"
    n = len(vr)
    if n != info.n_shown:
        return None, f"decord frame count {n} != container {info.n_shown}"
    try:
        ts = np.asarray(vr.get_frame_timestamp(list(range(n))), dtype=np.float64)[:, 0]
    except MemoryError:
        raise
    except Exception as e:
        return None, f"decord cannot list frame timestamps ({_brief(e)})"
    if not np.all(np.isfinite(ts)) or np.any(np.abs(ts) > 1e9):
        return None, "decord has no valid frame timestamps for this file (B-frames in AVI?)"
    expected = (info.pts - info.pts[0]).astype(np.float64) * float(info.time_base)
    # decord's times are float32: allow their rounding on long videos too
    excess = np.abs(ts - expected) - (_TIMESTAMP_TOLERANCE_S + 2.5e-7 * np.abs(expected))
    worst = float(np.max(np.abs(ts - expected))) if n else 0.0
    if n and float(np.max(excess)) > 0:
        return None, f"decord frame times differ from the container's by up to {worst:.3f} s"
    return vr, None
