"""What is known before decoding: the decoder names, :class:`VideoInfo`, the PyAV demux probe
(:class:`_Probe`, no decoding) and the checks that turn an unreadable file into a clear error."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import av
import numpy as np

from vadpipe.errors import VideoDecodeError

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


#: FFmpeg demuxer names of the containers decord is trusted with under ``"auto"``.
DECORD_CONTAINERS = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "avi"})

#: Decoded pixel formats whose RGB conversion is bit-identical in decord and PyAV.
DECORD_PIXEL_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p"})


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


def _brief(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (text[-1] if text else type(e).__name__)[:300]


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
