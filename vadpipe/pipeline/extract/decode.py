"""Reading a video as RGB frames: decord when it is safe, PyAV (FFmpeg) otherwise; torchcodec on request.

Reference semantics
-------------------
The reference for *which* frames a video has, in which order and with which pixels, is
what FFmpeg presents through PyAV: iterating ``container.decode(stream)`` over the best
video stream and converting each frame with ``frame.to_ndarray(format="rgb24")``. That is
what every player shows: MP4 edit lists are applied (pre-roll frames of a stream-copy cut
are decoded but not shown), B-frames come out in presentation order.

decord is faster on some files but disagrees with FFmpeg on others (measured with
decord2 3.4.0):

* MP4 with an edit list that hides frames (a cut by stream copy, ``ffmpeg -ss T -c copy``):
  ``len(vr)`` counts the hidden pre-roll packets too, so decord returns the visible frames
  followed by copies of the last frame, and its timestamps / seeks are off by the pre-roll.
  An edit list that only shifts the time line (the B-frame delay every x264 MP4 has) is
  harmless.
* MPEG-TS: decord's index starts at a wrong keyframe: leading frames are dropped and the
  end is padded with copies of the last frame.
* AVI with B-frames: decord has no valid frame timestamps (it reports ~-3.7e17 s).
* High bit depth (e.g. ``yuv420p10le``): decord's RGB conversion differs from FFmpeg's
  (mean abs difference ~0.4-0.7, max ~20 levels). 8-bit 4:2:0/4:2:2/4:4:4 is bit-exact.

So ``backend="auto"`` uses decord only when a cheap check, done once when the reader is
opened (PyAV demuxes the packets without decoding them; decord indexes the file without
decoding it), finds all of the following; otherwise it uses PyAV and says why in
:attr:`VideoInfo.fallback_reason`:

1. the container is MP4/MOV, Matroska/WebM or AVI (:data:`DECORD_CONTAINERS`);
2. the decoded pixel format is 8-bit YUV (:data:`DECORD_PIXEL_FORMATS`);
3. no packet is flagged *discard* by the demuxer (an edit list hides none), and every
   packet has a timestamp;
4. decord opens the file, its frame count equals the number of packets FFmpeg will show,
   and its frame timestamps equal the packets' presentation timestamps (within 2 ms).

With those, decord's frames are bit-identical to PyAV's on every video of
``tests/pipeline/extract/test_decode.py`` (real H.264 and MS-MPEG4v3 fixtures; synthetic H.264, MPEG-4
Part 2, VP9 and MJPEG in MP4/MOV/MKV/WebM/AVI, with and without B-frames, odd frame
sizes, 4:4:4, non-zero start times, variable frame rate); HEVC, VP8, AV1 and MPEG-2 in
MKV/MP4 were checked the same way by hand. Opening costs one demux pass over the file
(about 25 us per packet with PyAV, plus decord's own index under ``"auto"``).

Truncated and corrupt files
---------------------------
Opening demuxes the whole video stream once (cheap: no decoding). A file is declared
*truncated* (:class:`~vadpipe.errors.VideoDecodeError` at open time) when its container
states a frame count (MP4/MOV sample table, AVI header) or a track duration (Matroska
``DURATION`` tag, or the segment duration of a single-stream Matroska file) and the packets
actually present fall short of it by more than ``max(2 frames, 1 %)``. An MP4 whose index
(``moov`` box) is missing, which is what cutting an ordinary MP4 short gives, cannot be
opened at all and is reported as truncated too. Containers that state neither (MPEG-TS,
MPEG-PS, raw streams) cannot be checked: a truncated one decodes its first part. Damage
in the middle of a Matroska file that the demuxer skips over (lost blocks) is not
detected either.

While decoding (PyAV), a decoder error raises :class:`VideoDecodeError`, and so does
ending with fewer frames than packets by more than ``max(2 frames, 5 %)`` (the margin
allows for the few frames a decoder may legitimately drop, e.g. leading frames that
reference a missing keyframe). decord cannot report such losses (it pads with copies of
the last good frame); it raises on hard decoder errors, which are wrapped the same way.

torchcodec
----------
``backend="torchcodec"`` decodes with torchcodec's FFmpeg CPU decoder and
``backend="torchcodec-cuda"`` with NVDEC on the current CUDA device
(``VideoDecoder(path, device="cuda:N")``); both hand back host uint8 ``[t, H, W, 3]``
chunks like the other backends, so the rest of the pipeline is unchanged (NVDEC frames are
copied to the host; a later step could keep them on the GPU and resize/crop there). They
are only used when asked for: ``"auto"`` never picks them. torchcodec loads the FFmpeg
shared libraries of the system, which are usually another FFmpeg version than the one
bundled with PyAV (measured: torchcodec 0.17.0 on Debian's FFmpeg 5.1 against PyAV 18.1.0
with its FFmpeg 8), so the same bytes can decode to different pixels. Measured on the
videos of ``tests/pipeline/extract/test_decode.py`` and ``tests/pipeline/extract/test_decode_torchcodec.py``:

* bit-identical to PyAV: H.264 (with and without B-frames, 4:2:0/4:2:2/4:4:4, full range,
  BT.709 tags, odd sizes, variable frame rate, non-zero start, MP4 edit lists that hide
  pre-roll frames), HEVC, VP8, VP9, AV1, FFV1, HuffYUV, in MP4/MOV, Matroska/WebM, AVI
  and FLV; the real fixtures bikes, carphone and bigbuckbunny;
* different pixels: MS-MPEG4v3 (``vtest.avi``: ±2 levels in a few pixels from the third
  frame on, spreading over the next frames: the two FFmpeg versions' decoders differ;
  a synthetic MS-MPEG4v3 file happened to match). MPEG-1/2/4 Part 2, H.263,
  WMV and MJPEG decoded alike on the synthetic files, but their inverse DCT is not
  bit-exact by specification (only its accuracy is), so decoder versions may differ on
  them the same way;
* 10-bit ``yuv420p10le`` H.264: different RGB from the first frame on (max 48-63 levels,
  mean ~0.6);
* wrong frames: MPEG-TS and MPEG-PS (torchcodec's index starts at the wrong frame, and it
  raises part-way), AVI with B-frames (frame times are not the packet times);
* torchcodec applies a rotation stored in the container (phone videos); PyAV does not.

So a torchcodec backend decodes a file only when all of these hold, and otherwise uses
PyAV and says why in :attr:`VideoInfo.fallback_reason` (as ``"auto"`` does for decord):

1. the container is MP4/MOV, Matroska/WebM, AVI or FLV (:data:`TORCHCODEC_CONTAINERS`);
2. the codec decodes bit-exactly by specification (:data:`TORCHCODEC_CODECS`);
3. the decoded pixel format is 8-bit YUV (:data:`DECORD_PIXEL_FORMATS`), every shown
   packet has a timestamp, and the container stores no rotation;
4. torchcodec opens the file (a demux pass of its own, ``seek_mode="exact"``), counts the
   packets FFmpeg will show, reports the probed frame size, and its first frame has the
   first packet's timestamp and PyAV's pixels: bit-identical on the CPU; for NVDEC, whose
   colour conversion runs on the GPU, a mean abs difference <= 1 with at least 99 % of the
   values within ±3 (torchcodec's own CUDA tolerance). This costs one frame decoded by
   each library when the reader is opened;
5. while decoding, every frame's timestamp equals the container's, in order. A mismatch,
   or any torchcodec error, switches to PyAV at that frame (the frames already returned
   were checked) and says so in ``info``. A corrupt file thus ends with PyAV's
   :class:`~vadpipe.errors.VideoDecodeError`, as with ``backend="pyav"``.

Only the first frame's pixels are compared: a file that passes the checks but decodes to
different pixels later (as MS-MPEG4v3 does) is kept out by rule 2, not detected.
``torchcodec-cuda`` also falls back when torchcodec would decode the file on the CPU
itself (a codec or format NVDEC lacks). A missing torchcodec or FFmpeg library, or no CUDA
for ``torchcodec-cuda``, is a :class:`~vadpipe.errors.ConfigError` (:func:`check_backend`),
never a fallback.
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import os
import re
import weakref
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Iterator

import av
import numpy as np

from vadpipe.errors import ConfigError, VideoDecodeError

__all__ = [
    "BACKENDS",
    "DECODERS",
    "DECORD_CONTAINERS",
    "DECORD_PIXEL_FORMATS",
    "TORCHCODEC_BACKENDS",
    "TORCHCODEC_CODECS",
    "TORCHCODEC_CONTAINERS",
    "VideoInfo",
    "VideoReader",
    "check_backend",
    "open_video",
    "probe",
]

#: The backends that always work here (PyAV and decord are dependencies).
BACKENDS = ("auto", "decord", "pyav")

#: The torchcodec backends (CPU, NVDEC): optional (torchcodec, FFmpeg's shared libraries,
#: a GPU for NVDEC), only used when asked for by name.
TORCHCODEC_BACKENDS = ("torchcodec", "torchcodec-cuda")

#: Accepted values of ``backend``.
DECODERS = BACKENDS + TORCHCODEC_BACKENDS

#: FFmpeg demuxer names of the containers torchcodec is trusted with.
TORCHCODEC_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi", "flv"})

#: Codecs (FFmpeg codec ids) whose decoding is bit-exact by specification and measured
#: equal to PyAV's: integer transforms (H.264, HEVC, VP8, VP9, AV1) or lossless.
TORCHCODEC_CODECS = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "ffv1", "huffyuv"})

#: NVDEC's colour conversion is not FFmpeg's: torchcodec's own CUDA tolerance (atol 3)
#: for at least this fraction of the values, and at most this mean abs difference.
_CUDA_ATOL = 3
_CUDA_WITHIN_ATOL = 0.99
_CUDA_MEAN_TOLERANCE = 1.0

#: Largest allowed difference between torchcodec's frame times and the container's (s).
_TORCHCODEC_PTS_TOLERANCE_S = 1e-6

#: FFmpeg demuxer names of the containers decord is trusted with under ``"auto"``.
DECORD_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"})

#: Decoded pixel formats whose RGB conversion is bit-identical in decord and PyAV.
DECORD_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})

#: Largest allowed difference between decord's and the container's frame times (seconds),
#: plus float32 rounding.
_TIMESTAMP_TOLERANCE_S = 2e-3


@dataclass(frozen=True)
class VideoInfo:
    """What is known about a video before decoding it.

    Attributes:
        path: the video file, as given.
        width: frame width in pixels (of the decoded RGB frames).
        height: frame height in pixels.
        fps: the stream's average frame rate, or the requested output rate when the
            reader resamples (``fps=``).
        n_frames_hint: the number of frames the container states: the MP4/MOV sample
            count or the AVI header count, else ``round(duration * fps)`` from a stated
            duration; ``None`` when it states neither. May be wrong (an MP4 edit list hides
            some of the counted frames; headers can lie): the exact count is
            :attr:`VideoReader.frames_read` after a full iteration.
        backend: ``"decord"``, ``"pyav"``, ``"torchcodec"`` or ``"torchcodec-cuda"``:
            what actually decodes.
        fallback_reason: why ``backend="auto"`` did not use decord, or why a torchcodec
            backend handed the file to PyAV; ``None`` when the chosen backend decodes
            (or ``"decord"``/``"pyav"`` was forced).
    """

    path: str
    width: int
    height: int
    fps: float
    n_frames_hint: int | None
    backend: str
    fallback_reason: str | None


@dataclass
class _Probe:
    """Facts gathered by demuxing the video stream once (no decoding)."""

    path: str
    container: str
    codec: str
    codec_id: str           # FFmpeg codec id name ("av1" where the decoder is "libdav1d")
    pix_fmt: str | None
    width: int
    height: int
    native_fps: Fraction
    time_base: Fraction
    claimed_frames: int | None
    claimed_duration: float | None
    n_packets: int          # non-empty video packets, including discarded ones
    n_empty: int            # empty packets with a timestamp (dropped frames in AVI)
    n_discarded: int        # packets the demuxer flags as discard (hidden by an edit list)
    n_missing_pts: int      # shown packets without a presentation timestamp
    pts: np.ndarray         # int64, sorted presentation timestamps of the shown packets

    @property
    def n_shown(self) -> int:
        return self.n_packets - self.n_discarded

    @property
    def n_frames_hint(self) -> int | None:
        if self.claimed_frames:
            return self.claimed_frames
        if self.claimed_duration:
            return int(round(self.claimed_duration * float(self.native_fps)))
        return None


# ----------------------------------------------------------------------------- errors


def _fail(path: str, message: str) -> VideoDecodeError:
    return VideoDecodeError(f"{path}: {message}")


def _check_file(path: str) -> None:
    """Errors a plain ``os.stat`` can tell, with a message that says what to do."""
    try:
        _check_file_unguarded(path)
    except OSError as e:
        raise _fail(path, f"cannot be accessed ({e})") from e


def _check_file_unguarded(path: str) -> None:
    if not os.path.lexists(path):
        raise _fail(path, "no such file; check the path (and the working directory for relative paths)")
    if not os.path.exists(path):
        raise _fail(path, "broken symbolic link; its target does not exist")
    if os.path.isdir(path):
        raise _fail(path, "is a directory, not a video file; pass the video files (or the folder as a run input)")
    if not os.path.isfile(path):
        raise _fail(path, "is not a regular file (device, socket or pipe); pass a video file")
    size = os.path.getsize(path)
    if size == 0:
        raise _fail(path, "is empty (0 bytes); the download or copy probably failed: fetch the video again")
    if not os.access(path, os.R_OK):
        raise _fail(path, "cannot be read: permission denied; fix the file's permissions")


def _mp4_boxes(path: str, size: int) -> list[tuple[bytes, int, int]] | None:
    """Top-level ISO-BMFF boxes ``(type, offset, size)``, or ``None`` if not an MP4/MOV."""
    boxes: list[tuple[bytes, int, int]] = []
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 8 or head[4:8] not in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
            return None
        offset = 0
        while offset + 8 <= size and len(boxes) < 10000:
            f.seek(offset)
            header = f.read(16)
            box_size = int.from_bytes(header[0:4], "big")
            kind = header[4:8]
            if box_size == 1 and len(header) >= 16:
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:
                box_size = size - offset
            if box_size < 8:
                break
            boxes.append((kind, offset, box_size))
            offset += box_size
    return boxes


def _diagnose_unopenable(path: str, err: Exception) -> str:
    """A specific message for a file FFmpeg cannot open."""
    size = os.path.getsize(path)
    try:
        boxes = _mp4_boxes(path, size)
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:  # pragma: no cover - raced with deletion
        return f"cannot be read ({e})"
    if boxes is not None:
        kinds = [k for k, _, _ in boxes]
        cut = [(k, o, s) for k, o, s in boxes if o + s > size]
        if b"moov" not in kinds:
            where = ""
            if cut:
                k, o, s = cut[0]
                where = (f"; its '{k.decode('latin-1')}' box needs {s} bytes from offset {o} "
                         f"but the file ends after {size} bytes")
            return ("MP4/MOV file without its index ('moov' box): the file is truncated "
                    f"(incomplete download or copy, or a recording that was not finalised){where}; "
                    "fetch the video again (a recording can sometimes be repaired with untrunc)")
        if cut:
            k, o, s = cut[0]
            return (f"MP4/MOV file is truncated: its '{k.decode('latin-1')}' box needs {s} bytes from "
                    f"offset {o} but the file ends after {size} bytes; fetch the video again")
        return f"MP4/MOV file FFmpeg cannot open: its structure is corrupt ({err}); re-encode or fetch it again"
    if head and _looks_like_text(head):
        snippet = head[:40].decode("utf-8", "replace").split("\n")[0]
        return (f"not a video: the file contains text ({snippet!r}...), and FFmpeg recognises "
                "no video format in it; check that the right file was given")
    return (f"not a video or an unknown/corrupt format: FFmpeg cannot open it ({err}); "
            "check the file type (e.g. with `file`) or re-encode it")


def _looks_like_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    printable = sum(ch.isprintable() or ch in "\r\n\t" for ch in text)
    return printable >= 0.95 * len(text)


# ----------------------------------------------------------------------------- PyAV side


def _open_container(path: str) -> Any:
    """Open ``path`` with PyAV; errors become :class:`VideoDecodeError`."""
    _check_file(path)
    try:
        # absolute path: a name like "cam:01.mp4" must not be read as an FFmpeg protocol
        return av.open(os.path.abspath(path), mode="r", metadata_errors="replace")
    except MemoryError:
        raise
    except Exception as e:
        raise _fail(path, _diagnose_unopenable(path, e)) from e


def _video_stream(container: Any, path: str) -> Any:
    """The video stream FFmpeg would pick, skipping cover pictures."""
    video = [s for s in container.streams.video
             if not (s.disposition & av.stream.Disposition.attached_pic)]
    if not video:
        kinds = [f"{s.type} ({s.codec_context.name if s.codec_context else '?'})" for s in container.streams]
        if container.streams.video:
            kinds.append("a cover picture only")
        found = ", ".join(kinds) if kinds else "no streams at all"
        raise _fail(path, f"contains no video stream (found: {found}); is it an audio file?")
    try:
        best = container.streams.best("video")
    except Exception:  # pragma: no cover - defensive
        best = None
    return best if best in video else video[0]


def _parse_duration_tag(value: str | None) -> float | None:
    """``HH:MM:SS.fffffffff`` (Matroska ``DURATION`` tag) to seconds."""
    if not value:
        return None
    m = re.fullmatch(r"\s*(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)\s*", value)
    if not m:
        return None
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3))


def _codec_id(ctx: Any) -> str:
    codec = getattr(ctx, "codec", None)
    return str(getattr(codec, "canonical_name", None) or ctx.name)


def _native_fps(stream: Any, pts: np.ndarray) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    if len(pts) > 1 and pts[-1] > pts[0]:
        return Fraction(len(pts) - 1) / (Fraction(int(pts[-1] - pts[0])) * Fraction(stream.time_base))
    return Fraction(25)


def _probe(path: str) -> _Probe:
    """Open with PyAV, demux the video packets (no decoding), check for truncation."""
    try:
        return _probe_unguarded(path)
    except (VideoDecodeError, MemoryError):
        raise
    except Exception as e:  # anything unforeseen from PyAV: still a decode error of this file
        raise _fail(path, f"cannot read the container ({type(e).__name__}: {_brief(e)})") from e


def _probe_unguarded(path: str) -> _Probe:
    container = _open_container(path)
    try:
        stream = _video_stream(container, path)
        ctx = stream.codec_context
        width, height = int(ctx.width), int(ctx.height)
        if width <= 0 or height <= 0:
            raise _fail(path, f"video stream has no usable frame size ({width}x{height}); the file is corrupt")
        time_base = Fraction(stream.time_base) if stream.time_base else Fraction(1, 1_000_000)
        n_packets = n_empty = n_discarded = n_missing = 0
        pts: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:
                    # the final flush packet has no timestamp; a timestamped empty packet is a
                    # dropped frame (AVI) that headers count but that decodes to nothing
                    n_empty += packet.pts is not None
                    continue
                n_packets += 1
                if packet.is_discard:
                    n_discarded += 1
                elif packet.pts is None:
                    n_missing += 1
                else:
                    pts.append(int(packet.pts))
        except MemoryError:
            raise
        except Exception as e:
            raise _fail(path, f"the container data is corrupt: reading packets failed after {n_packets} "
                              f"video packet(s) ({e}); re-encode or fetch the video again") from e
        pts_arr = np.sort(np.asarray(pts, dtype=np.int64))
        fmt = container.format.name
        claimed_frames = int(stream.frames) if stream.frames and stream.frames > 0 else None
        claimed_duration = None
        if claimed_frames is None and fmt == "matroska,webm":
            claimed_duration = _parse_duration_tag(stream.metadata.get("DURATION"))
            if claimed_duration is None and len(container.streams) == 1 and container.duration:
                claimed_duration = container.duration / 1_000_000
        info = _Probe(
            path=path, container=fmt, codec=ctx.name, codec_id=_codec_id(ctx), pix_fmt=ctx.pix_fmt,
            width=width, height=height,
            native_fps=_native_fps(stream, pts_arr), time_base=time_base,
            claimed_frames=claimed_frames, claimed_duration=claimed_duration,
            n_packets=n_packets, n_empty=n_empty, n_discarded=n_discarded, n_missing_pts=n_missing,
            pts=pts_arr,
        )
    finally:
        container.close()
    if info.n_shown == 0:
        raise _fail(path, "the video stream contains no frames (no video packets); the file is empty or truncated")
    _check_truncation(info)
    return info


def _short_by(claimed: float, found: float, margin: float) -> bool:
    return claimed - found > max(2.0, margin * claimed)


def _check_truncation(info: _Probe) -> None:
    """Raise if the packets present fall clearly short of what the container states."""
    if info.claimed_frames is not None:
        if _short_by(info.claimed_frames, info.n_packets + info.n_empty, 0.01):
            raise _fail(info.path, (
                f"truncated: the container declares {info.claimed_frames} frames but only "
                f"{info.n_packets + info.n_empty} are present in the file (incomplete download or copy?); "
                "fetch the video again"))
        return
    if info.claimed_duration is not None and len(info.pts):
        # Matroska's DURATION is the end time of the track's last frame on its time line
        fps = float(info.native_fps)
        end = float(int(info.pts[-1]) * info.time_base) + 1.0 / fps
        if _short_by(info.claimed_duration * fps, end * fps, 0.01):
            raise _fail(info.path, (
                f"truncated: the container declares a {info.claimed_duration:.2f} s video track but "
                f"its frames end at {end:.2f} s (incomplete download or copy?); fetch the video again"))


# ----------------------------------------------------------------------------- decord side


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


# ----------------------------------------------------------------------------- torchcodec side


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


def _pyav_first_frame(path: str) -> np.ndarray | None:
    """PyAV's first presented frame (RGB), or ``None`` when it cannot decode one."""
    try:
        container = _open_container(path)
    except VideoDecodeError:
        return None
    try:
        stream = _video_stream(container, path)
        for frame in container.decode(stream):
            return frame.to_ndarray(format="rgb24")
    except MemoryError:
        raise
    except Exception:
        return None
    finally:
        container.close()
    return None


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
    rotation = getattr(meta, "rotation", None)
    if rotation:
        return None, f"the container stores a {rotation:g} degree rotation: torchcodec applies it, PyAV does not"
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
    ref = _pyav_first_frame(info.path)
    if ref is None:
        return None, "PyAV cannot decode the first frame to compare with"
    reason = _pixels_differ(got, ref, cuda)
    if reason is not None:
        return None, reason
    return dec, None


def _brief(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]


# ----------------------------------------------------------------------------- resampling


class _Resampler:
    """Picks frames at times ``k / fps`` (k = 0, 1, ...) from a stream of timed frames.

    Output ``k`` is the source frame with the largest time ``<= k / fps`` (ties: the later
    frame); times are relative to the first frame, so output 0 is always source frame 0.
    Targets run while ``k / fps`` is before the end of the last frame (its time plus one
    source frame period), so a 10 s video gives ``ceil(10 * fps)`` frames. Exact
    rational arithmetic: the choice does not depend on float rounding.
    """

    def __init__(self, fps: Fraction, last_duration: Fraction):
        self._step = 1 / fps
        self._last_duration = last_duration
        self._k = 0
        self._prev: np.ndarray | None = None
        self._prev_t = Fraction(0)

    def push(self, frame: np.ndarray, t: Fraction) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        if self._prev is not None:
            while self._k * self._step < t:
                out.append(self._prev)
                self._k += 1
        self._prev, self._prev_t = frame, t
        return out

    def finish(self) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        if self._prev is not None:
            end = self._prev_t + self._last_duration
            while self._k * self._step < end:
                out.append(self._prev)
                self._k += 1
            self._prev = None
        return out


def _stack(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    buf: list[np.ndarray] = []
    for frame in frames:
        buf.append(frame)
        if len(buf) == size:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


# ----------------------------------------------------------------------------- reader


#: Most bytes of RGB frames in one chunk of :meth:`VideoReader.iter_chunks` (24 MiB: nine 720p
#: frames; measured on Big Buck Bunny 720p, 132 frames, PyAV with one thread: 64-frame chunks
#: 0.38 CPU-s per pass, 9-frame chunks 0.24).
MAX_CHUNK_BYTES = 24 << 20
#: Fewest frames per chunk, however large the frames.
MIN_CHUNK_FRAMES = 4


class VideoReader:
    """Sequential RGB reader of one video, in bounded chunks.

    Args:
        path: the video file.
        backend: ``"auto"`` (decord when safe for this file, else PyAV; see the module
            docstring), ``"decord"`` or ``"pyav"`` (forced, no checks), ``"torchcodec"``
            (CPU) or ``"torchcodec-cuda"`` (NVDEC): torchcodec where it is checked to
            decode this file like PyAV, else PyAV (see the module docstring).
        fps: ``None``: every frame. A rate: resample on the presentation time line, output
            ``k`` being the source frame with the largest timestamp ``<= k / fps`` (times
            relative to the first frame; ``ceil(duration * fps)`` frames). The choice uses
            exact container timestamps, so all backends pick the same frames.
        chunk_size: most frames per chunk of :meth:`iter_chunks` (lowered for large frames
            so that a chunk holds at most :data:`MAX_CHUNK_BYTES`).
        threads: decoder threads (0: the library's automatic choice).

    Raises:
        VideoDecodeError: the file is missing, empty, a directory, not a video, has no
            video stream, or is truncated (see the module docstring); or
            ``backend="decord"`` was forced and decord cannot open it.
        ConfigError: an invalid ``backend``, ``fps`` or ``chunk_size``; a torchcodec
            backend that cannot run here (:func:`check_backend`).

    Attributes:
        info: :class:`VideoInfo` of the video.
        frames_read: frames yielded by the current / last iteration (the exact output
            count after a full one).
    """

    def __init__(self, path: str | os.PathLike, *, backend: str = "auto", fps: float | None = None,
                 chunk_size: int = 64, threads: int = 0):
        check_backend(backend)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ConfigError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if fps is not None and (isinstance(fps, bool) or not isinstance(fps, numbers.Real)
                                or not math.isfinite(fps) or fps <= 0):
            raise ConfigError(f"fps must be a positive number or None, got {fps!r}")
        self.path = os.fspath(path)
        self.chunk_size = chunk_size
        self.frames_read = 0
        self._threads = int(threads)
        self._fps = None if fps is None else Fraction(fps).limit_denominator(1_000_000)
        self._closed = False
        self._iterators: weakref.WeakSet = weakref.WeakSet()
        self._probe = _probe(self.path)
        # Large frames: cap a chunk's bytes. A 64-frame 720p chunk (177 MB) is fresh memory each
        # time (above glibc's mmap threshold) and its page faults cost about as much as decoding.
        frame_bytes = max(1, self._probe.width * self._probe.height * 3)
        self.chunk_size = min(chunk_size, max(MIN_CHUNK_FRAMES, MAX_CHUNK_BYTES // frame_bytes))
        self._auto = backend == "auto"
        self._vr: Any | None = None
        self._tc: Any | None = None  # torchcodec decoder opened by the check, for the first iteration
        reason: str | None = None
        if backend == "pyav":
            chosen = "pyav"
        elif backend == "decord":
            self._vr = self._new_decord()
            chosen = "decord"
        elif backend in TORCHCODEC_BACKENDS:
            self._tc, reason = _torchcodec_verdict(self._probe, backend, self._threads)
            chosen = backend if self._tc is not None else "pyav"
        else:
            self._vr, reason = _decord_verdict(self._probe, self._threads)
            chosen = "decord" if self._vr is not None else "pyav"
        self.info = VideoInfo(
            path=self.path,
            width=self._probe.width,
            height=self._probe.height,
            fps=float(self._fps if self._fps is not None else self._probe.native_fps),
            n_frames_hint=self._probe.n_frames_hint,
            backend=chosen,
            fallback_reason=reason,
        )

    # -- public -------------------------------------------------------------------

    def iter_chunks(self) -> Iterator[np.ndarray]:
        """Decode from the start, yielding consecutive frames in presentation order.

        Yields:
            uint8 arrays ``[t, H, W, 3]`` (RGB, C-contiguous, host memory also for
            ``torchcodec-cuda``), ``1 <= t <= chunk_size``; all chunks but the last have
            ``t == chunk_size``, except where ``auto`` had to switch from decord, or a
            torchcodec backend from torchcodec, to PyAV part-way (``info`` then says so).

        Raises:
            VideoDecodeError: decoding fails (corrupt data) or ends clearly short of the
                packets present (see the module docstring).
        """
        if self._closed:
            raise ValueError(f"{self.path}: the reader is closed")
        gen = self._iterate()
        self._iterators.add(gen)
        return gen

    def read_all(self) -> np.ndarray:
        """All frames at once, uint8 ``[N, H, W, 3]``: for tests and short videos only."""
        return np.concatenate(list(self.iter_chunks()), axis=0)

    def close(self) -> None:
        """Release the decoders; iterations in progress are stopped."""
        self._closed = True
        for gen in list(self._iterators):
            gen.close()
        self._vr = None
        self._tc = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"VideoReader({self.path!r}, backend={self.info.backend!r}, "
                f"{self.info.width}x{self.info.height}, fps={self.info.fps:g})")

    # -- internals ----------------------------------------------------------------

    def _iterate(self) -> Iterator[np.ndarray]:
        self.frames_read = 0
        try:
            for chunk in self._chunks(self.info.backend):
                self.frames_read += len(chunk)
                yield chunk
            return
        except _BackendFailed as e:
            # torchcodec disagreed with the container part-way, or raised (a corrupt file
            # raises again in PyAV, with PyAV's message): the frames returned so far were
            # checked, PyAV goes on from there.
            reason = f"PyAV took over after {self.frames_read} frames: {e}"
        except VideoDecodeError as e:
            if not (self._auto and self.info.backend == "decord"):
                raise
            # decord passed the safety check but broke while decoding (it rejects some
            # frame sizes, for one): PyAV decodes the same frames, so go on from there.
            reason = f"decord failed after {self.frames_read} frames: {e}"
        self.info = replace(self.info, backend="pyav", fallback_reason=reason)
        skip = self.frames_read
        for chunk in self._chunks("pyav"):
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            chunk, skip = chunk[skip:], 0
            self.frames_read += len(chunk)
            yield chunk

    def _chunks(self, backend: str) -> Iterator[np.ndarray]:
        if backend == "decord" and self._fps is None:
            return self._decord_chunks()
        if backend in TORCHCODEC_BACKENDS and self._fps is None:
            return (chunk for chunk, _ in self._torchcodec_chunks(backend))
        if backend == "decord":
            frames = self._decord_frames()
        elif backend in TORCHCODEC_BACKENDS:
            frames = self._torchcodec_frames(backend)
        else:
            frames = self._pyav_frames()
        return _stack(self._resampled(frames) if self._fps is not None else (f for f, _ in frames),
                      self.chunk_size)

    def _resampled(self, frames: Iterator[tuple[np.ndarray, Fraction]]) -> Iterator[np.ndarray]:
        assert self._fps is not None
        resampler = _Resampler(self._fps, 1 / self._probe.native_fps)
        for frame, t in frames:
            yield from resampler.push(frame, t)
        yield from resampler.finish()

    def _new_decord(self) -> Any:
        try:
            return _open_decord(self.path, self._threads)
        except MemoryError:
            raise
        except Exception as e:
            raise _fail(self.path, f"decord cannot open it ({_brief(e)}); try backend 'pyav'") from e

    def _take_decord(self) -> Any:
        """The reader opened by the safety check (first iteration), else a fresh one."""
        vr, self._vr = self._vr, None
        return vr if vr is not None else self._new_decord()

    def _decord_chunks(self, vr: Any | None = None) -> Iterator[np.ndarray]:
        """Consecutive ``get_batch`` calls over 0..n-1: sequential decoding, no seeks."""
        vr = vr if vr is not None else self._take_decord()
        n = len(vr)
        for start in range(0, n, self.chunk_size):
            stop = min(n, start + self.chunk_size)
            try:
                chunk = _to_numpy(vr.get_batch(list(range(start, stop))))
            except MemoryError:
                raise
            except Exception as e:
                raise _fail(self.path, f"decord failed to decode frames {start}..{stop - 1} of {n} "
                                       f"({_brief(e)}); the file is corrupt: re-encode it or fetch it "
                                       "again") from e
            yield chunk

    def _decord_frames(self) -> Iterator[tuple[np.ndarray, Fraction]]:
        vr = self._take_decord()
        n = len(vr)
        info = self._probe
        if n == len(info.pts):  # exact container timestamps, as PyAV reports them
            base = int(info.pts[0])
            times: Iterator[Fraction] = (Fraction(int(p) - base) * info.time_base for p in info.pts)
        else:  # forced decord on a file it counts differently: its own (float) times
            try:
                raw = np.asarray(vr.get_frame_timestamp(list(range(n))), dtype=np.float64)[:, 0]
            except MemoryError:
                raise
            except Exception as e:
                raise _fail(self.path, f"decord cannot list frame timestamps ({_brief(e)})") from e
            times = (Fraction(float(x - raw[0])) for x in raw)
        for chunk in self._decord_chunks(vr):
            for frame in chunk:
                yield frame, next(times)

    def _take_torchcodec(self, backend: str) -> Any:
        """The decoder opened by the check (first iteration), else a fresh one."""
        dec, self._tc = self._tc, None
        if dec is not None:
            return dec
        try:
            return _open_torchcodec(self.path, backend, self._threads)
        except MemoryError:
            raise
        except Exception as e:
            raise _BackendFailed(f"torchcodec cannot open the file again ({_brief(e)})") from e

    def _torchcodec_chunks(self, backend: str) -> Iterator[tuple[np.ndarray, int]]:
        """``(chunk, index of its first frame)``: consecutive ``get_frames_in_range`` calls
        over 0..n-1 (sequential decoding, no seeks), each frame's time checked against the
        container's."""
        dec = self._take_torchcodec(backend)
        expected = _expected_seconds(self._probe)
        n = len(expected)
        for start in range(0, n, self.chunk_size):
            stop = min(n, start + self.chunk_size)
            try:
                batch = dec.get_frames_in_range(start, stop)
                chunk = _tensor_to_numpy(batch.data)
                times = batch.pts_seconds.cpu().numpy().astype(np.float64)
            except MemoryError:
                raise
            except Exception as e:
                raise _BackendFailed(f"torchcodec failed to decode frames {start}..{stop - 1} of {n} "
                                     f"({_brief(e)})") from e
            if chunk.shape[0] != stop - start or len(times) != stop - start:
                raise _BackendFailed(f"torchcodec returned {chunk.shape[0]} frames for {start}..{stop - 1}")
            if chunk.shape[1:] != (self._probe.height, self._probe.width, 3):
                raise _BackendFailed(f"torchcodec frame shape {chunk.shape[1:]} at frame {start} != "
                                     f"{(self._probe.height, self._probe.width, 3)}")
            off = np.abs(times - expected[start:stop]) > _TORCHCODEC_PTS_TOLERANCE_S
            if off.any():
                i = start + int(np.argmax(off))
                raise _BackendFailed(f"torchcodec frame {i} is at {times[i - start]:.6f} s, the container's "
                                     f"frame {i} at {expected[i]:.6f} s")
            yield chunk, start

    def _torchcodec_frames(self, backend: str) -> Iterator[tuple[np.ndarray, Fraction]]:
        info = self._probe  # the frame times were checked equal to these: use them exactly
        base = int(info.pts[0])
        for chunk, start in self._torchcodec_chunks(backend):
            for i, frame in enumerate(chunk, start):
                yield frame, Fraction(int(info.pts[i]) - base) * info.time_base

    def _pyav_frames(self) -> Iterator[tuple[np.ndarray, Fraction]]:
        container = _open_container(self.path)
        expected = self._probe.n_shown
        decoded = 0
        try:
            stream = _video_stream(container, self.path)
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = self._threads
            time_base = Fraction(stream.time_base) if stream.time_base else self._probe.time_base
            period = 1 / self._probe.native_fps
            frames = container.decode(stream)
            origin: int | None = None
            t = -period
            while True:
                try:
                    frame = next(frames)
                    rgb = frame.to_ndarray(format="rgb24")
                except StopIteration:
                    break
                except MemoryError:
                    raise
                except Exception as e:
                    raise _fail(self.path, (
                        f"decoding failed after {decoded} of {expected} frames ({_brief(e)}); "
                        "the video data is corrupt: re-encode it or fetch it again")) from e
                if frame.pts is None:  # no timestamp: one frame period after the previous frame
                    t = t + period
                else:
                    if origin is None:  # times are relative to the first frame
                        origin = int(frame.pts) - int((t + period) / time_base)
                    t = Fraction(int(frame.pts) - origin) * time_base
                decoded += 1
                yield rgb, t
        finally:
            container.close()
        if decoded == 0:
            raise _fail(self.path, f"no frame could be decoded out of {expected} video packets; "
                                   "the video data is corrupt: re-encode it or fetch it again")
        if _short_by(expected, decoded, 0.05):
            raise _fail(self.path, f"only {decoded} of {expected} frames could be decoded; the video data is "
                                   "corrupt or truncated: re-encode it or fetch it again")


def open_video(path: str | os.PathLike, *, backend: str = "auto", fps: float | None = None,
               chunk_size: int = 64, threads: int = 0) -> VideoReader:
    """Open a video for sequential RGB reading: ``VideoReader(path, ...)`` (see there).

    Use as a context manager::

        with open_video(path, fps=10) as reader:
            for chunk in reader.iter_chunks():   # uint8 [t, H, W, 3]
                ...
    """
    return VideoReader(path, backend=backend, fps=fps, chunk_size=chunk_size, threads=threads)


def probe(path: str | os.PathLike, *, backend: str = "auto") -> VideoInfo:
    """:class:`VideoInfo` of a video without decoding it (demuxes the packets once).

    Raises the same errors as opening a :class:`VideoReader`.
    """
    with VideoReader(path, backend=backend) as reader:
        return reader.info
