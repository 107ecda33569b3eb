"""The reader: one video, sequentially, in bounded RGB chunks, on the backend the probe allows;
optional resampling to a frame rate on the presentation time line."""

from __future__ import annotations

import math
import numbers
import os
import weakref
from dataclasses import replace
from fractions import Fraction
from typing import Any, Iterator

import numpy as np

from vadpipe.errors import ConfigError, VideoDecodeError
from vadpipe.pipeline.extract.decode import torchcodec
from vadpipe.pipeline.extract.decode.decord import _decord_verdict, _open_decord, _to_numpy
from vadpipe.pipeline.extract.decode.info import (
    TORCHCODEC_BACKENDS,
    VideoInfo,
    _brief,
    _fail,
    _open_container,
    _probe,
    _short_by,
    _video_stream,
)
from vadpipe.pipeline.extract.decode.torchcodec import (
    _TORCHCODEC_PTS_TOLERANCE_S,
    _BackendFailed,
    _open_torchcodec,
    _tensor_to_numpy,
    _torchcodec_verdict,
    check_backend,
)

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
            decode this file like PyAV, else PyAV (see the package docstring).
        fps: ``None``: every frame. A rate: resample on the presentation time line, output
            ``k`` being the source frame with the largest timestamp ``<= k / fps`` (times
            relative to the first frame; ``ceil(duration * fps)`` frames). The choice uses
            exact container timestamps, so all backends pick the same frames.
        chunk_size: most frames per chunk of :meth:`iter_chunks` (lowered for large frames
            so that a chunk holds at most :data:`MAX_CHUNK_BYTES`).
        threads: decoder threads (0: the library's automatic choice).

    Raises:
        VideoDecodeError: the file is missing, empty, a directory, not a video, has no
            video stream, or is truncated (see the package docstring); or
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
        width, height = self._probe.display_size
        self.info = VideoInfo(
            path=self.path,
            width=width,
            height=height,
            fps=float(self._fps if self._fps is not None else self._probe.native_fps),
            n_frames_hint=self._probe.n_frames_hint,
            backend=chosen,
            fallback_reason=reason,
            rotation=self._probe.rotation,
        )
        self._scaled: dict[tuple[int, int], int] = {}  # PyAV: frame size -> frames scaled from it

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
                packets present (see the package docstring).
        """
        if self._closed:
            raise ValueError(f"{self.path}: the reader is closed")
        gen = self._iterate()
        self._iterators.add(gen)
        return gen

    @property
    def expected_frames(self) -> int:
        """Frames a full iteration is expected to yield, known before decoding: the packets
        FFmpeg will show, or with ``fps`` the resampled count from their timestamps. An
        estimate (a decoder may drop frames, see the package docstring); the exact count
        is :attr:`frames_read` after a full iteration."""
        p = self._probe
        if self._fps is None:
            return p.n_shown
        if not len(p.pts):
            return 0
        end = Fraction(int(p.pts[-1]) - int(p.pts[0])) * p.time_base + 1 / p.native_fps
        return math.ceil(end * self._fps)

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
        self._scaled.clear()
        try:
            for chunk in self._chunks(self.info.backend):
                self.frames_read += len(chunk)
                yield chunk
            self._note_changes()
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
        self._note_changes()

    def _note_changes(self) -> None:
        """Record in ``info.notes`` what was done to the frames besides decoding them."""
        notes = []
        w, h = self._probe.width, self._probe.height
        for (fw, fh), n in sorted(self._scaled.items()):
            notes.append(f"{n} frame(s) scaled from {fw}x{fh} to {w}x{h} (the frame size changes mid-stream; "
                         "the first frame's size is kept, as ffmpeg does)")
        if self._probe.odd_rotation:
            notes.append(f"display rotation of {self._probe.odd_rotation:g} degrees not applied (not a multiple of 90)")
        self.info = replace(self.info, notes="; ".join(notes) or None)

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
        want = (self._probe.height, self._probe.width, 3)
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
            if chunk.shape[1:] != want:  # the frame size changed mid-stream: PyAV scales such frames
                raise _fail(self.path, f"decord returned frames of {chunk.shape[1:]} at frame {start}, "
                                       f"the stream starts at {want}")
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
        expected = torchcodec._expected_seconds(self._probe)  # looked up at call time (tests replace it)
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
            width, height = self._probe.width, self._probe.height  # of the first frame: kept throughout
            turns = self._probe.rotation // 90
            frames = container.decode(stream)
            origin: int | None = None
            t = -period
            while True:
                try:
                    frame = next(frames)
                    if (frame.width, frame.height) == (width, height):
                        rgb = frame.to_ndarray(format="rgb24")
                    else:  # a size change mid-stream: scale to the first frame's size, as ffmpeg does
                        rgb = frame.to_ndarray(width=width, height=height, format="rgb24",
                                               interpolation="BICUBIC")
                        size = (frame.width, frame.height)
                        self._scaled[size] = self._scaled.get(size, 0) + 1
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
                yield (np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb), t
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
