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
        rotation: degrees (counterclockwise: 0, 90, 180 or 270) the frames are turned by to
            show them upright, as the container's display matrix asks (phone videos);
            ``width``/``height`` are the turned frames' size.
        notes: what else was done to the frames (set after decoding: frames scaled to the
            first frame's size where the size changes mid-stream, a rotation that is not a
            multiple of 90 degrees and was not applied); ``None`` when nothing.
    """

    path: str
    width: int
    height: int
    fps: float
    n_frames_hint: int | None
    backend: str
    fallback_reason: str | None
    rotation: int = 0
    notes: str | None = None


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
    rotation: int = 0       # display rotation applied to every frame (degrees counterclockwise)
    sps_changes: int = 0    # H.264/HEVC: times a keyframe carries other sequence parameters than the first
    odd_rotation: float = 0.0  # a display rotation that is not a multiple of 90 degrees (not applied)

    @property
    def display_size(self) -> tuple[int, int]:
        """``(width, height)`` of the frames as handed out, after :attr:`rotation`."""
        return (self.height, self.width) if self.rotation in (90, 270) else (self.width, self.height)

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


#: NAL unit type of a sequence parameter set, by codec: ``type(first byte of the NAL unit)``.
_SPS_NAL_TYPE = {"h264": lambda b: b & 0x1F == 7, "hevc": lambda b: (b >> 1) & 0x3F == 33}


class _ParameterSets:
    """Counts the keyframes whose in-band sequence parameter sets (SPS) differ from the
    stream's first ones: where they do, the frame size may change mid-stream (a camera that
    switched resolution), which decord and torchcodec hide by scaling the frames their own
    way. Reads only NAL unit headers of keyframe packets, no decoding."""

    def __init__(self, codec: str | None, extradata: bytes | None):
        self.codec = codec
        self.changes = 0
        self._is_sps = _SPS_NAL_TYPE.get(codec or "")
        self._length_size: int | None = None  # NAL length prefix of MP4/Matroska packets; None: Annex B
        self._first: bytes | None = None
        ex = bytes(extradata or b"")
        if codec == "h264" and len(ex) > 6 and ex[0] == 1:  # avcC
            self._length_size = (ex[4] & 3) + 1
            if ex[5] & 0x1F:
                n = int.from_bytes(ex[6:8], "big")
                self._first = ex[8:8 + n] or None
        elif codec == "hevc" and len(ex) > 22 and ex[0] == 1:  # hvcC
            self._length_size = (ex[21] & 3) + 1
            self._first = _hvcc_sps(ex)

    def scan(self, data: bytes) -> None:
        for nal in _nal_units(data, self._length_size):
            if nal and self._is_sps(nal[0]):
                if self._first is None:
                    self._first = nal
                elif nal != self._first:
                    self.changes += 1
                return


def _nal_units(data: bytes, length_size: int | None) -> list[bytes]:
    """The NAL units of one packet: length-prefixed (MP4/Matroska) or Annex B (start codes)."""
    if length_size is None:
        return [part.rstrip(b"\x00") for part in data.split(b"\x00\x00\x01")[1:]]
    out, i = [], 0
    while i + length_size <= len(data):
        n = int.from_bytes(data[i:i + length_size], "big")
        i += length_size
        if n <= 0 or i + n > len(data):
            break
        out.append(data[i:i + n])
        i += n
    return out


def _hvcc_sps(ex: bytes) -> bytes | None:
    """The first SPS stored in an HEVC ``hvcC`` record, if any."""
    i, arrays = 23, ex[22]
    for _ in range(arrays):
        if i + 3 > len(ex):
            return None
        kind, count = ex[i] & 0x3F, int.from_bytes(ex[i + 1:i + 3], "big")
        i += 3
        for _ in range(count):
            n = int.from_bytes(ex[i:i + 2], "big")
            if kind == 33:
                return ex[i + 2:i + 2 + n]
            i += 2 + n
    return None


def quarter_turns(angle: float) -> tuple[int, float]:
    """``(rotation applied, angle not applied)`` for a display rotation of ``angle`` degrees
    (counterclockwise, FFmpeg's convention): a multiple of 90 degrees (within 1) is applied
    as 0/90/180/270; any other angle is left alone and returned second."""
    turns = round(angle / 90.0)
    if abs(angle - 90.0 * turns) <= 1.0:
        return int(turns % 4) * 90, 0.0
    return 0, float(angle)


def _first_picture(path: str) -> tuple[np.ndarray, float] | None:
    """PyAV's first presented frame (RGB ``[H, W, 3]`` as stored, not rotated) and its
    display rotation (degrees counterclockwise; FFmpeg >= 7 hands the container's display
    matrix to every decoded frame); ``None`` when no frame can be decoded."""
    try:
        container = _open_container(path)
    except VideoDecodeError:
        return None
    try:
        stream = _video_stream(container, path)
        for frame in container.decode(stream):
            return frame.to_ndarray(format="rgb24"), float(frame.rotation or 0.0)
    except MemoryError:
        raise
    except Exception:
        return None
    finally:
        container.close()
    return None


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
        params = _ParameterSets(ctx.name if ctx.name in _SPS_NAL_TYPE else None, ctx.extradata)
        try:
            for packet in container.demux(stream):
                if packet.is_keyframe and params.codec:
                    params.scan(bytes(packet))
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
        first = _first_picture(path)
        if first is not None:  # the first decoded frame's size is the output size (as with ffmpeg)
            width, height = first[0].shape[1], first[0].shape[0]
        rotation, odd = quarter_turns(first[1] if first is not None else 0.0)
        info = _Probe(
            path=path, container=fmt, codec=ctx.name, codec_id=_codec_id(ctx), pix_fmt=ctx.pix_fmt,
            width=width, height=height, rotation=rotation, odd_rotation=odd, sps_changes=params.changes,
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
