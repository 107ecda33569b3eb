"""Tiny synthetic test videos, written deterministically with PyAV (no ``ffmpeg`` CLI).

Every helper returns the path it wrote (a :class:`pathlib.Path`) and creates missing
parent folders. Frames carry their own index so that a decoded frame can be traced
back to the frame that was encoded (:func:`read_index`): the top third of the picture
is a row of 8 black/white cells holding the index in binary (least significant bit on
the left, index modulo 256); the rest is a colour gradient that moves with the index
plus a square that walks across the picture, both seeded by ``seed``.

Helpers:
    make_video            a clean video; codec by suffix, B-frames on/off, GOP size
    make_bframes_mp4      H.264 MP4 with B-frames (alone gives an MP4 with an edit list)
    make_delayed_start    a stream copy whose first frame is at a time > 0
    make_edit_list_mp4    a stream-copy cut that starts between keyframes: the muxer
                          writes an edit list hiding the pre-roll frames
    make_audio_only       an AAC ``.m4a`` (or any audio container) without video
    make_truncated        the first ``fraction`` of another file's bytes
    make_zero_byte        an empty file
    make_text_as_video    a text file with a video extension
    make_corrupt          a copy with the middle of the media data overwritten
    read_elst             the edit-list entries of each track of an MP4/MOV file
"""

from __future__ import annotations

import os
import struct
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

#: Codec used when ``codec=None``, by file suffix.
DEFAULT_CODECS = {
    ".mp4": "libx264",
    ".m4v": "libx264",
    ".mov": "libx264",
    ".mkv": "libx264",
    ".ts": "libx264",
    ".avi": "mpeg4",
    ".webm": "libvpx-vp9",
}

_BITS = 8


def frame_pattern(index: int, width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    """The RGB picture of frame ``index``: uint8 ``[height, width, 3]``.

    The top ``height // 3`` rows hold the index in binary (see module docstring).
    """
    if width < 2 * _BITS or height < 12:
        raise ValueError(f"frames must be at least {2 * _BITS}x12 pixels, got {width}x{height}")
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, size=3)
    slope = rng.integers(-60, 60, size=(2, 3))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = (
        base[None, None, :]
        + slope[0][None, None, :] * (xx[..., None] / width)
        + slope[1][None, None, :] * (yy[..., None] / height)
        + ((index * 9) % 60)
    )
    img = np.clip(img, 0, 255).astype(np.uint8)
    band = height // 3
    cell = width // _BITS
    for b in range(_BITS):
        img[:band, b * cell:(b + 1) * cell] = 235 if (index >> b) & 1 else 16
    # a square walking across the lower part
    size = max(4, height // 6)
    x0 = (index * 3 + int(rng.integers(0, width))) % max(1, width - size)
    y0 = band + 2 + (index % max(1, height - band - size - 2))
    img[y0:y0 + size, x0:x0 + size] = (255 - base).astype(np.uint8)
    return img


def read_index(frame: np.ndarray) -> int:
    """Recover the frame index (modulo 256) written by :func:`frame_pattern`.

    Args:
        frame: uint8 ``[H, W, 3]`` RGB, as decoded.
    """
    height, width = frame.shape[:2]
    band = height // 3
    cell = width // _BITS
    value = 0
    for b in range(_BITS):
        # the cell's centre, away from edges blurred by compression
        patch = frame[band // 4: band - band // 4, b * cell + cell // 4:(b + 1) * cell - cell // 4]
        if patch.mean() > 125:
            value |= 1 << b
    return value


def make_video(
    path: str | os.PathLike,
    n_frames: int,
    width: int = 64,
    height: int = 48,
    fps: float | Fraction = 25,
    codec: str | None = None,
    *,
    bframes: bool | None = None,
    gop: int = 12,
    seed: int = 0,
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    frame_ms: list[int] | None = None,
) -> Path:
    """Write ``n_frames`` frames of :func:`frame_pattern` to ``path``.

    Args:
        path: output file; the container follows the suffix (``.mp4``, ``.avi``, ``.mkv``,
            ``.ts``, ``.mov``, ``.webm``).
        codec: encoder name; ``None`` picks :data:`DEFAULT_CODECS` by suffix
            (``libx264``, ``mpeg4`` for AVI).
        bframes: ``True``: up to 2 consecutive B-frames; ``False``: none; ``None``: the
            encoder's default (libx264: B-frames; mpeg4: none).
        gop: keyframe interval in frames.
        seed: changes the colours so that two videos differ.
        options: extra encoder options (strings), applied last.
        frame_ms: variable frame rate: the display duration of each frame in
            milliseconds (``len(frame_ms) == n_frames``); frame ``i`` is then shown at
            ``sum(frame_ms[:i])`` ms. ``fps`` is still the stream's nominal rate.

    Encoding is single-threaded (and x264 runs without mbtree, which is not reproducible
    on tiny frames) so that the bytes are the same on every run.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = codec or DEFAULT_CODECS.get(path.suffix.lower(), "libx264")
    rate = Fraction(fps).limit_denominator(100000)
    opts: dict[str, str] = {"g": str(gop), "threads": "1"}
    if codec == "libx264":
        # mbtree off: with it, x264 output on tiny frames varies from run to run
        opts.update({"preset": "veryfast", "crf": "16", "x264-params": "mbtree=0"})
    elif codec in ("mpeg4", "mpeg2video", "mjpeg"):
        opts.update({"qmin": "2", "qmax": "4"})
    elif codec.startswith("libvpx"):
        opts.update({"crf": "20", "b": "0", "deadline": "realtime", "cpu-used": "8"})
    if bframes is not None:
        opts["bf"] = "2" if bframes else "0"
    opts.update(options or {})
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=rate, options=opts)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        time_base = 1 / rate
        if frame_ms is not None:
            if len(frame_ms) != n_frames:
                raise ValueError(f"frame_ms has {len(frame_ms)} entries for {n_frames} frames")
            time_base = Fraction(1, 1000)
            stream.codec_context.time_base = time_base
        if codec in ("mpeg4", "mpeg2video", "mjpeg"):
            stream.codec_context.qscale = True  # fixed quality: no rate-control drift
            stream.codec_context.global_quality = 3 * 118  # FF_QP2LAMBDA * q
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, width, height, seed), format="rgb24")
            frame.pts = i if frame_ms is None else sum(frame_ms[:i])
            frame.time_base = time_base
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def make_bframes_mp4(path: str | os.PathLike, n_frames: int = 40, **kwargs) -> Path:
    """H.264 MP4 with B-frames. The frame reordering delay alone makes the MP4 muxer
    write an edit list (a media-time shift, nothing hidden)."""
    return make_video(path, n_frames, codec="libx264", bframes=True, **kwargs)


def make_edit_list_mp4(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    cut_frame: int,
    *,
    end_frame: int | None = None,
) -> Path:
    """Stream-copy ``src`` from frame ``cut_frame`` (presentation order) into the MP4 ``dst``.

    As ``ffmpeg -ss T -c copy`` does: the packets are copied without re-encoding,
    starting at the last keyframe at or before the cut, and the timestamps are shifted so
    that the cut frame is at time 0. The pre-roll packets (keyframe .. cut) then have
    negative timestamps; the MP4 muxer keeps them (they are needed to decode the cut
    frame) and writes an edit list (``elst`` box) whose media time starts at the cut, so
    a conforming player / FFmpeg decodes but does not show them. ``cut_frame`` should not
    be a keyframe, else there is nothing to hide. ``end_frame`` (exclusive, presentation
    order) drops packets from there on; default: to the end.

    Returns ``dst``; :func:`read_elst` shows the edit list.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as inp:
        ist = inp.streams.video[0]
        packets = [p for p in inp.demux(ist) if p.size and p.pts is not None]
        order = sorted(p.pts for p in packets)
        if not 0 <= cut_frame < len(order):
            raise ValueError(f"cut_frame {cut_frame} outside 0..{len(order) - 1}")
        cut_pts = order[cut_frame]
        end_pts = order[end_frame] if end_frame is not None and end_frame < len(order) else None
        keys = [i for i, p in enumerate(packets) if p.is_keyframe and p.pts <= cut_pts]
        if not keys:
            raise ValueError(f"no keyframe at or before frame {cut_frame} in {src}")
        with av.open(str(dst), "w", format="mp4") as out:
            ost = out.add_stream_from_template(ist)
            for p in packets[keys[-1]:]:
                if end_pts is not None and p.pts >= end_pts:
                    continue
                p.pts -= cut_pts
                p.dts -= cut_pts
                p.stream = ost
                out.mux(p)
    return dst


def make_delayed_start(src: str | os.PathLike, dst: str | os.PathLike, delay_frames: int) -> Path:
    """Stream-copy ``src`` into ``dst`` (same container type) with every timestamp moved
    ``delay_frames`` frame periods later: the video starts at a non-zero time (an MP4
    gets an empty edit, a Matroska file a first timestamp > 0)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as inp:
        ist = inp.streams.video[0]
        shift = int(Fraction(delay_frames) / Fraction(ist.average_rate) / Fraction(ist.time_base))
        with av.open(str(dst), "w") as out:
            ost = out.add_stream_from_template(ist)
            for p in inp.demux(ist):
                if not p.size:
                    continue
                p.pts += shift
                if p.dts is not None:
                    p.dts += shift
                p.stream = ost
                out.mux(p)
    return dst


def read_elst(path: str | os.PathLike) -> list[list[tuple[int, int, float]]]:
    """Edit lists of an MP4/MOV file, read from the bytes of its ``elst`` boxes.

    Returns one list per track that has an edit list, of entries
    ``(segment_duration, media_time, media_rate)`` (``media_time`` -1 is an empty edit).
    """
    data = Path(path).read_bytes()
    found: list[list[tuple[int, int, float]]] = []
    containers = {b"moov", b"trak", b"edts"}

    def walk(start: int, end: int) -> None:
        off = start
        while off + 8 <= end:
            size, kind = struct.unpack(">I4s", data[off:off + 8])
            header = 8
            if size == 1:
                size = struct.unpack(">Q", data[off + 8:off + 16])[0]
                header = 16
            elif size == 0:
                size = end - off
            if size < header:
                return
            body = data[off + header:off + size]
            if kind in containers:
                walk(off + header, off + size)
            elif kind == b"elst":
                version = body[0]
                (count,) = struct.unpack(">I", body[4:8])
                entries = []
                pos = 8
                for _ in range(count):
                    if version == 1:
                        dur, mtime = struct.unpack(">Qq", body[pos:pos + 16])
                        pos += 16
                    else:
                        dur, mtime = struct.unpack(">Ii", body[pos:pos + 8])
                        pos += 8
                    whole, frac = struct.unpack(">hH", body[pos:pos + 4])
                    pos += 4
                    entries.append((dur, mtime, whole + frac / 65536))
                found.append(entries)
            off += size

    walk(0, len(data))
    return found


def make_audio_only(path: str | os.PathLike, seconds: float = 1.0, rate: int = 16000) -> Path:
    """An audio-only file (AAC in ``.m4a``/``.mp4``; codec by container default otherwise)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec = {".wav": "pcm_s16le", ".mkv": "aac", ".mka": "aac"}.get(path.suffix.lower(), "aac")
    with av.open(str(path), "w", format="mp4" if path.suffix.lower() in (".m4a", ".mp4") else None) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.layout = "mono"
        n = int(seconds * rate)
        t = np.arange(n, dtype=np.float32) / rate
        samples = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        fmt = "s16" if codec.startswith("pcm") else "fltp"
        if fmt == "s16":
            samples = (samples * 32767).astype(np.int16)
        step = 1024
        for start in range(0, n, step):
            chunk = samples[start:start + step]
            frame = av.AudioFrame.from_ndarray(chunk[None, :], format=fmt, layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def make_truncated(src: str | os.PathLike, dst: str | os.PathLike, fraction: float) -> Path:
    """Copy the first ``fraction`` (0..1) of ``src``'s bytes to ``dst``: a download cut short.

    An MP4 with its index (``moov``) at the end then cannot be opened at all; AVI, MKV
    and MPEG-TS still open and decode their first part.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def make_zero_byte(path: str | os.PathLike) -> Path:
    """An empty file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_text_as_video(path: str | os.PathLike) -> Path:
    """A plain text file whose name says it is a video."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not a video, just some text saved with a video extension\n" * 20)
    return path


def make_corrupt(src: str | os.PathLike, dst: str | os.PathLike, start: float = 0.05, end: float = 0.95,
                 seed: int = 0) -> Path:
    """Copy ``src`` with the bytes of every video packet between ``start`` and ``end``
    (fractions of the packets, in file order) overwritten by random bytes.

    The container structure and index stay intact, so the file opens and demuxes; the
    decoder receives garbage.
    """
    data = bytearray(Path(src).read_bytes())
    with av.open(str(src)) as inp:
        ranges = [(p.pos, p.size) for p in inp.demux(inp.streams.video[0]) if p.size and p.pos is not None]
    rng = np.random.default_rng(seed)
    lo, hi = int(len(ranges) * start), max(int(len(ranges) * end), int(len(ranges) * start) + 1)
    for pos, size in ranges[lo:hi]:
        data[pos:pos + size] = rng.integers(0, 256, size=size, dtype=np.uint8).tobytes()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(bytes(data))
    return dst


def make_bad_videos(root: Path) -> dict[str, Path]:
    """The decoder error zoo under ``root``: a missing path, a directory, zero bytes, text,
    audio only, and truncated / corrupted MP4, AVI and MKV files, by name."""
    root = Path(root)
    (root / "a_folder.mp4").mkdir()
    avi = make_video(root / "ok.avi", 40, seed=31)
    mkv = make_video(root / "ok.mkv", 40, seed=32)
    mp4 = make_video(root / "ok.mp4", 40, seed=33)
    return {
        "missing": root / "nope.mp4",
        "directory": root / "a_folder.mp4",
        "zero": make_zero_byte(root / "zero.mp4"),
        "text": make_text_as_video(root / "text.mp4"),
        "audio": make_audio_only(root / "audio.m4a"),
        "truncated_mp4": make_truncated(mp4, root / "trunc.mp4", 0.5),
        "truncated_avi": make_truncated(avi, root / "trunc.avi", 0.5),
        "truncated_mkv": make_truncated(mkv, root / "trunc.mkv", 0.5),
        "corrupt_mp4": make_corrupt(mp4, root / "corrupt.mp4", 0.3, 0.7),
        "corrupt_avi": make_corrupt(avi, root / "corrupt.avi", 0.0, 1.0),
    }
