"""decord: opened only when the probe says it decodes this file like FFmpeg (see the package docstring)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from vadpipe.pipeline.extract.decode.info import DECORD_CONTAINERS, DECORD_PIXEL_FORMATS, _brief, _Probe

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


def _decord_verdict(info: _Probe, threads: int) -> tuple[Any | None, str | None]:
    """``(decord reader, None)`` when decord is safe for this file, else ``(None, reason)``."""
    if info.container == "mpegts":
        return None, "MPEG-TS container: decord's frame index drops leading frames on MPEG-TS"
    if info.container not in DECORD_CONTAINERS:
        return None, (f"container {info.container!r}: decord is only trusted with MP4/MOV, "
                      "Matroska/WebM and AVI")
    if info.pix_fmt not in DECORD_PIXEL_FORMATS:
        return None, f"pixel format {info.pix_fmt}: decord's RGB conversion differs from FFmpeg's"
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
