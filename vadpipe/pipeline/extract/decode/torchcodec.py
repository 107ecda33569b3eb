"""torchcodec (CPU, NVDEC), on request: used where checked to decode this file like PyAV, else PyAV."""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any

import numpy as np

from vadpipe.errors import ConfigError
from vadpipe.pipeline.extract.decode.info import (
    DECODERS,
    DECORD_PIXEL_FORMATS,
    TORCHCODEC_BACKENDS,
    TORCHCODEC_CODECS,
    TORCHCODEC_CONTAINERS,
    _brief,
    _first_picture,
    _Probe,
)

# ----------------------------------------------------------------------------- torchcodec side

#: NVDEC's colour conversion is not FFmpeg's: torchcodec's own CUDA tolerance (atol 3)
#: for at least this fraction of the values, and at most this mean abs difference.
_CUDA_ATOL = 3
_CUDA_WITHIN_ATOL = 0.99
_CUDA_MEAN_TOLERANCE = 1.0

#: Largest allowed difference between torchcodec's frame times and the container's (s).
_TORCHCODEC_PTS_TOLERANCE_S = 1e-6


class _BackendFailed(Exception):
    """A torchcodec backend cannot go on with this file: PyAV takes over (the message says why)."""


_TORCHCODEC_FIX = ("it needs torchcodec (`pip install torchcodec`, the release that matches the installed torch) "
                   "and FFmpeg's shared libraries (Debian/Ubuntu: `apt-get install ffmpeg`, conda: "
                   "`conda install ffmpeg`); or use --decoder auto")


@functools.lru_cache(maxsize=None)
def _torchcodec_problem() -> str | None:
    """Why torchcodec cannot decode videos here, or ``None`` when it can (checked once)."""
    try:
        import torchcodec

        importlib.import_module("torchcodec.decoders")  # loads the video decoder's libraries
    except ImportError as e:
        return f"torchcodec cannot be imported ({_brief(e)})"
    except Exception as e:  # e.g. RuntimeError "Could not load libtorchcodec" (no FFmpeg, or a torch mismatch)
        first = (str(e).strip().splitlines() or [""])[0][:300]  # the rest is a traceback per FFmpeg version
        return f"torchcodec cannot be loaded ({type(e).__name__}: {first})"
    # newer torchcodec imports without FFmpeg (its image decoders do not need it) and says
    # so here; its video decoder would raise "Could not load libtorchcodec" when called
    if getattr(torchcodec, "ffmpeg_major_version", 0) is None:
        return "torchcodec found no FFmpeg libraries it can load (libavcodec, libavformat, ...)"
    return None


def _cuda_problem() -> str | None:
    """Why ``torchcodec-cuda`` cannot run here, or ``None``."""
    import torch
    import torchcodec

    if not torch.cuda.is_available():
        return (f"CUDA is not available to torch {torch.__version__} "
                f"(built for CUDA {torch.version.cuda or 'none: a CPU-only build'})")
    version = str(getattr(torchcodec, "__version__", ""))
    if version.endswith("+cpu"):
        return f"torchcodec {version} is a CPU-only build (install a CUDA build of torchcodec)"
    return None


def check_backend(backend: str) -> None:
    """Raise :class:`ConfigError` if ``backend`` is unknown or cannot run on this machine.

    ``torchcodec`` needs torchcodec and FFmpeg's shared libraries, ``torchcodec-cuda``
    also a CUDA GPU; the other backends are always available here (decord is checked per
    file: ``"auto"`` falls back to PyAV without it). Cheap after the first call: a run can
    call it once before its first video.
    """
    if backend not in DECODERS:
        raise ConfigError(f"unknown decoder backend {backend!r}; choose one of {', '.join(DECODERS)}")
    if backend not in TORCHCODEC_BACKENDS:
        return
    problem = _torchcodec_problem()
    if problem is not None:
        raise ConfigError(f"decoder {backend!r} is not available: {problem}; {_TORCHCODEC_FIX}")
    if backend == "torchcodec-cuda":
        problem = _cuda_problem()
        if problem is not None:
            raise ConfigError(f"decoder 'torchcodec-cuda' decodes on a CUDA GPU (NVDEC), but {problem}; "
                              "use --decoder torchcodec (CPU) or auto")


def _torchcodec_device(backend: str) -> str:
    if backend != "torchcodec-cuda":
        return "cpu"
    import torch

    return f"cuda:{torch.cuda.current_device()}"  # the device a worker selected, as the model's


def _open_torchcodec(path: str, backend: str, threads: int) -> Any:
    from torchcodec.decoders import VideoDecoder

    return VideoDecoder(os.path.abspath(path), dimension_order="NHWC", seek_mode="exact",
                        num_ffmpeg_threads=threads, device=_torchcodec_device(backend))


def _tensor_to_numpy(t: Any) -> np.ndarray:
    """A torchcodec frame tensor (CPU or CUDA) as a C-contiguous uint8 numpy array."""
    return np.ascontiguousarray(t.cpu().numpy(), dtype=np.uint8)


def _expected_seconds(info: _Probe) -> np.ndarray:
    """The container's presentation times of the shown frames, in seconds, as torchcodec reports them."""
    return info.pts.astype(np.float64) * float(info.time_base)


def _pixels_differ(got: np.ndarray, ref: np.ndarray, cuda: bool) -> str | None:
    """Why ``got`` is not PyAV's ``ref`` (``None`` when it is, within the backend's tolerance)."""
    if got.shape != ref.shape:
        return f"frame shape {got.shape} != PyAV's {ref.shape}"
    diff = np.abs(got.astype(np.int16) - ref.astype(np.int16))
    worst, mean = int(diff.max()), float(diff.mean())
    if not cuda:
        return None if worst == 0 else (f"its first frame differs from PyAV's (max abs difference {worst}, "
                                        f"mean {mean:.3f})")
    within = float(np.mean(diff <= _CUDA_ATOL))
    if mean <= _CUDA_MEAN_TOLERANCE and within >= _CUDA_WITHIN_ATOL:
        return None
    return (f"NVDEC's first frame is further from PyAV's than the CUDA tolerance (mean abs difference "
            f"{mean:.3f}, {100 * within:.1f} % of values within ±{_CUDA_ATOL}, max {worst})")


def _torchcodec_verdict(info: _Probe, backend: str, threads: int) -> tuple[Any | None, str | None]:
    """``(torchcodec decoder, None)`` when it decodes this file like PyAV, else ``(None, reason)``.

    Raises:
        ConfigError: ``torchcodec-cuda`` and NVDEC's library (libnvcuvid) is missing.
    """
    if info.container not in TORCHCODEC_CONTAINERS:
        what = {"mpegts": "MPEG-TS", "mpeg": "MPEG-PS"}.get(info.container, repr(info.container))
        return None, (f"container {what}: torchcodec is only trusted with MP4/MOV, Matroska/WebM, AVI and FLV"
                      + (" (its frame index starts at the wrong frame on MPEG-TS/PS)"
                         if info.container in ("mpegts", "mpeg") else ""))
    if info.codec_id not in TORCHCODEC_CODECS:
        return None, (f"codec {info.codec_id}: its decoding is not bit-exact by specification, and torchcodec's "
                      "FFmpeg version may decode it differently from PyAV's")
    if info.pix_fmt not in DECORD_PIXEL_FORMATS:
        return None, f"pixel format {info.pix_fmt}: torchcodec's RGB conversion differs from PyAV's"
    if info.n_missing_pts:
        return None, f"{info.n_missing_pts} packet(s) without timestamps"
    cuda = backend == "torchcodec-cuda"
    try:
        dec = _open_torchcodec(info.path, backend, threads)
    except MemoryError:
        raise
    except Exception as e:
        return None, f"torchcodec cannot open the file ({_brief(e)})"
    if cuda:
        status = getattr(dec, "cpu_fallback", None)  # torchcodec >= 0.8
        if status:
            if "nvcuvid unavailable" in str(status).lower():
                raise ConfigError("decoder 'torchcodec-cuda': NVDEC's library (libnvcuvid.so, part of the NVIDIA "
                                  "driver) cannot be loaded; install the driver's video decoding library or use "
                                  "--decoder torchcodec")
            return None, f"NVDEC cannot decode this video, torchcodec would decode it on the CPU ({status})"
    meta = dec.metadata
    if info.sps_changes:
        return None, (f"{info.sps_changes} keyframe(s) change the sequence parameters (the frame size may change "
                      "mid-stream): torchcodec would scale such frames its own way")
    rotation = getattr(meta, "rotation", None)
    if rotation or info.rotation or info.odd_rotation:
        angle = info.rotation or info.odd_rotation or rotation
        return None, f"the container stores a {angle:g} degree display rotation: PyAV's frames are turned by vadpipe"
    n = len(dec)
    if n != info.n_shown:
        return None, f"torchcodec frame count {n} != container {info.n_shown}"
    if (meta.width, meta.height) not in ((None, None), (info.width, info.height)):
        return None, f"torchcodec frame size {meta.width}x{meta.height} != container {info.width}x{info.height}"
    try:
        first = dec.get_frame_at(0)
        got = _tensor_to_numpy(first.data)
        t0 = float(first.pts_seconds)
    except MemoryError:
        raise
    except Exception as e:
        return None, f"torchcodec cannot decode the first frame ({_brief(e)})"
    expected = float(_expected_seconds(info)[0])
    if abs(t0 - expected) > _TORCHCODEC_PTS_TOLERANCE_S:
        return None, (f"torchcodec's first frame is at {t0:.6f} s, the container's at {expected:.6f} s "
                      "(its frame index does not follow the presentation order)")
    first = _first_picture(info.path)
    if first is None:
        return None, "PyAV cannot decode the first frame to compare with"
    ref = first[0]
    reason = _pixels_differ(got, ref, cuda)
    if reason is not None:
        return None, reason
    return dec, None

