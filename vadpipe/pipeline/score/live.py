"""Live sources for ``vadpipe score --stream``: network URLs and capture devices.

A **live source** is a URL whose scheme is one of :data:`LIVE_SCHEMES` (``rtsp://``,
``http://``, ``udp://``, ...), a capture device (``/dev/video*``, opened with PyAV's
``v4l2`` input), or anything opened with an explicit input format (``--input-format FMT``,
``--input-option KEY=VALUE`` passed to :func:`av.open`). It is read by a
:class:`LiveReader` thread that decodes frames with PyAV into a bounded
:class:`FrameBuffer`; the scorer takes frames from the buffer and a :class:`ClipAssembler`
cuts them into clips.

Rules
-----
* **Drops.** The buffer holds at most ``buffer`` decoded frames. When the scorer falls
  behind and the buffer is full, the *oldest* frame is dropped to make room for the new one
  (the freshest frames are kept: a live score is about now), and the drop is counted. The
  frame that becomes the oldest is marked as following a gap. Memory is bounded:
  ``buffer × H × W × 3`` bytes of frames plus the clip being assembled.
* **Clip assembly after a gap.** Frames lost between two frames (dropped, or lost while
  reconnecting) are a *gap*. Clips never join frames across a gap: the frames of the
  partial clip being assembled are discarded (counted) and the clip grid restarts at the
  first frame after the gap (clip ``k`` of a run covers the run's frames
  ``[k·stride, k·stride + length)``). Clips that were complete but held back only by
  ``ClipSpec.drop_last`` are emitted first; ``drop_last`` and the ``pad`` tail policy apply
  to the end of the stream only. Without gaps the clips are exactly those of
  :func:`~vadpipe.pipeline.extract.clips.clip_frame_ranges`. A change of frame size within
  a connection, and a packet the decoder rejects as invalid data (skipped and counted, the
  connection kept), are gaps too.
* **Times** come from the frames' timestamps (``pts × time_base``), in seconds from the
  first frame, as exact fractions; a clip spans its first frame's time to its last frame's
  time plus one nominal frame period (``1 / average_rate``). With drops and reconnects they
  are not uniform. When the timestamps go backwards or repeat (a restarted stream after a
  reconnect, a wrapped clock), the time line is re-based: the frame is placed after the
  previous one by the wall-clock time between their arrivals (at least one frame period), so
  times always increase; a frame without a timestamp is placed the same way.
* **Reconnect.** When the connection fails or ends, the source is opened again, up to
  ``reconnect`` consecutive attempts, waiting ``reconnect_delay · 2^(k-1)`` seconds before
  attempt ``k`` (at most :data:`MAX_RECONNECT_DELAY`). The attempts start again from zero
  once a re-opened connection has delivered a frame. A successful re-open counts as one
  reconnect; its first frame follows a gap. After ``reconnect`` failed attempts the reader
  gives up with a :class:`~vadpipe.errors.VideoDecodeError`. The first open is not retried
  (a wrong URL fails at once). FFmpeg cannot always tell a live source that ended from a
  lost connection (an HTTP stream without a length reports an I/O error at its end), so
  with ``reconnect > 0`` a live source is read until it cannot be re-opened; for a finite
  file on a web server pass ``reconnect=0`` (``--reconnect 0``): its end is then the end of
  the run.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np

from vadpipe.errors import ConfigError, VideoDecodeError
from vadpipe.pipeline.extract.clips import ClipSpec

#: URL schemes read as live sources (FFmpeg protocols).
LIVE_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "rtp", "http", "https", "udp", "tcp", "srt")
#: Paths read as capture devices, with :data:`DEVICE_FORMAT`.
DEVICE_PREFIX = "/dev/video"
#: PyAV input format of :data:`DEVICE_PREFIX` devices (Video4Linux2).
DEVICE_FORMAT = "v4l2"
#: Decoded frames the buffer holds by default (about 2 s at 30 fps).
DEFAULT_BUFFER = 64
#: Consecutive re-open attempts by default.
DEFAULT_RECONNECT = 3
#: Seconds before the first re-open attempt by default (doubled for each further one).
DEFAULT_RECONNECT_DELAY = 1.0
#: Longest wait between two re-open attempts, seconds.
MAX_RECONNECT_DELAY = 30.0
#: Seconds FFmpeg waits to open the source, and for data once open, before it fails.
DEFAULT_IO_TIMEOUT = 10.0
#: Frame rate assumed when the stream does not give one.
FALLBACK_FPS = Fraction(30)
#: Seconds :meth:`FrameBuffer.get` waits at a time (so that Ctrl-C is seen promptly).
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class LiveOptions:
    """How a live source is read (module docstring).

    Attributes:
        buffer: most decoded frames held between the reader and the scorer (>= 1).
        reconnect: consecutive re-open attempts after the connection fails or ends (>= 0).
        reconnect_delay: seconds before the first attempt, doubled for each further one.
        input_format: PyAV/FFmpeg input format (``v4l2``, ``mpegts``, ...); ``None``: guessed
            (``v4l2`` for ``/dev/video*``).
        input_options: FFmpeg options for :func:`av.open` (e.g. ``rtsp_transport=tcp``,
            ``video_size=640x480``; ``rtsp_flags=listen`` waits for a sender to push RTSP,
            up to ``io_timeout`` unless ``listen_timeout`` is given).
        io_timeout: seconds to wait for the source to open, and for data once open.

    Raises:
        ConfigError: a value out of range.
    """

    buffer: int = DEFAULT_BUFFER
    reconnect: int = DEFAULT_RECONNECT
    reconnect_delay: float = DEFAULT_RECONNECT_DELAY
    input_format: str | None = None
    input_options: Mapping[str, str] = field(default_factory=dict)
    io_timeout: float = DEFAULT_IO_TIMEOUT

    def __post_init__(self) -> None:
        if isinstance(self.buffer, bool) or not isinstance(self.buffer, int) or self.buffer < 1:
            raise ConfigError(f"--buffer must be an integer >= 1 (frames), got {self.buffer!r}")
        if isinstance(self.reconnect, bool) or not isinstance(self.reconnect, int) or self.reconnect < 0:
            raise ConfigError(f"--reconnect must be an integer >= 0 (attempts), got {self.reconnect!r}")
        for name in ("reconnect_delay", "io_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a number of seconds >= 0, got {value!r}")
        if self.io_timeout == 0:
            raise ConfigError("--io-timeout must be > 0 seconds (a live read must not wait forever)")
        object.__setattr__(self, "input_options", {str(k): str(v) for k, v in dict(self.input_options).items()})


def parse_input_options(items: Iterable[str]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` (``--input-option``) as a dict.

    Raises:
        ConfigError: an item without ``=`` or with an empty key.
    """
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--input-option takes KEY=VALUE (an FFmpeg option, e.g. rtsp_transport=tcp), "
                              f"got {item!r}")
        options[key.strip()] = value
    return options


def is_live_source(source: str, input_format: str | None = None) -> bool:
    """Whether ``score --stream`` reads ``source`` as a live source: a URL with a scheme in
    :data:`LIVE_SCHEMES`, a ``/dev/video*`` device, or any source with an ``input_format``."""
    if input_format:
        return True
    if source.startswith(DEVICE_PREFIX):
        return True
    return urlsplit(source).scheme.lower() in LIVE_SCHEMES


def source_format(source: str, input_format: str | None = None) -> str | None:
    """The PyAV input format to open ``source`` with: ``input_format``, ``v4l2`` for
    ``/dev/video*``, else ``None`` (FFmpeg guesses from the URL and the data).

    Raises:
        ConfigError: the format is not in this PyAV build (e.g. ``v4l2`` on a PyAV wheel
            built without it).
    """
    fmt = input_format or (DEVICE_FORMAT if source.startswith(DEVICE_PREFIX) else None)
    if fmt is not None:
        import av

        if fmt not in av.formats_available:
            raise ConfigError(
                f"{source}: input format {fmt!r} is not in this PyAV build (FFmpeg {av.ffmpeg_version_info}); "
                f"use a PyAV built with it, or pipe the source in: ffmpeg -f {fmt} -i {source} -f mpegts - | "
                "vadpipe score --stream - ...")
    return fmt


def describe_error(e: BaseException) -> str:
    """A short reason for a PyAV/OS error (its message, without the Python class noise)."""
    text = str(e).strip() or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# ----------------------------------------------------------------------------- frames and buffer


@dataclass(slots=True)
class TimedFrame:
    """One decoded frame of a live source.

    Attributes:
        image: uint8 ``[H, W, 3]`` RGB.
        time: seconds from the first frame of the run (exact; see the module docstring).
        duration: the frame's nominal display time, seconds (one frame period).
        index: frames received before this one (0-based), dropped frames included.
        arrived: ``time.perf_counter()`` when the reader put the frame in the buffer.
        gap: frames are missing right before this one (dropped, or lost to a reconnect).
    """

    image: np.ndarray
    time: Fraction
    duration: Fraction
    index: int
    arrived: float = 0.0
    gap: bool = False


class FrameBuffer:
    """A bounded, thread-safe FIFO of :class:`TimedFrame` that drops its oldest frame when full.

    :meth:`put` never blocks (the reader must keep up with the source); :meth:`get` blocks
    until a frame is there or the buffer is closed and empty.

    Attributes:
        capacity: most frames held.
        dropped: frames dropped so far (oldest first).
        peak: most frames held at once so far (``<= capacity``).
        received: frames put so far.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError(f"the frame buffer needs a capacity >= 1, got {capacity}")
        self.capacity = capacity
        self.dropped = 0
        self.peak = 0
        self.received = 0
        self._frames: deque[TimedFrame] = deque()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return len(self._frames)

    def put(self, frame: TimedFrame) -> bool:
        """Append ``frame``; when the buffer is full, first drop the oldest frame and mark
        the frame that becomes the oldest (or ``frame``) as following a gap. ``False``: the
        buffer is closed and did not take it."""
        with self._cond:
            if self._closed:
                return False
            if len(self._frames) >= self.capacity:
                self._frames.popleft()
                self.dropped += 1
                (self._frames[0] if self._frames else frame).gap = True
            self._frames.append(frame)
            self.received += 1
            self.peak = max(self.peak, len(self._frames))
            self._cond.notify()
            return True

    def get(self, timeout: float | None = None) -> TimedFrame | None:
        """The oldest frame; ``None`` once the buffer is closed and empty (or after
        ``timeout`` seconds without a frame, when given)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._frames:
                if self._closed:
                    return None
                wait = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
                if wait <= 0:
                    return None
                self._cond.wait(wait)
            return self._frames.popleft()

    def close(self) -> None:
        """No more frames: :meth:`get` returns the frames left, then ``None``."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Timeline:
    """Frame timestamps → strictly increasing seconds from the first frame (module docstring)."""

    def __init__(self) -> None:
        self._started = False
        self._offset: Fraction | None = None  # run time minus source time; None: no timestamp seen yet
        self._last = Fraction(0)
        self._last_wall = 0.0
        self.rebased = 0

    def map(self, source_time: Fraction | None, wall: float, period: Fraction) -> Fraction:
        """The time of a frame whose timestamp is ``source_time`` (seconds, any origin; ``None``:
        it has none) and that arrived at ``wall`` (``perf_counter``) seconds.

        A frame without a timestamp, and one whose timestamp is not after the previous frame's
        (a clock that restarted or repeats), is placed after the previous frame by the
        wall-clock time between their arrivals, at least one ``period``; frames after it count
        on from there by their timestamps.
        """
        if not self._started:
            self._started = True
            t = Fraction(0)
            if source_time is not None:
                self._offset = -source_time
        elif source_time is None or self._offset is None:
            t = self._after(wall, period)
            if source_time is not None:
                self._offset = t - source_time
        else:
            t = source_time + self._offset
            if t <= self._last:  # backwards or repeated: re-base after the previous frame
                t = self._after(wall, period)
                self._offset = t - source_time
                self.rebased += 1
        self._last, self._last_wall = t, wall
        return t

    def _after(self, wall: float, period: Fraction) -> Fraction:
        """The previous frame's time plus the wall-clock time since it arrived (>= ``period``)."""
        return self._last + max(period, Fraction(max(0.0, wall - self._last_wall)).limit_denominator(1_000_000))


# ----------------------------------------------------------------------------- clips


@dataclass
class TimedClip:
    """One clip, with where and when it comes from.

    Attributes:
        frames: uint8 ``[length, H, W, 3]``.
        start_time, end_time: seconds from the first frame: the first frame's time, and the
            last real frame's time plus its duration.
        start_frame, end_frame: received-frame indices of the first frame and one past the
            last real one (``end_frame - start_frame == length`` except for a padded clip).
        ready: ``perf_counter()`` when the clip's last frame arrived (latency origin).
    """

    frames: np.ndarray
    start_time: float
    end_time: float
    start_frame: int
    end_frame: int
    ready: float


class ClipAssembler:
    """Cuts :class:`TimedFrame` s into clips of ``spec``, restarting after gaps (module docstring).

    Attributes:
        restarts: gaps at which a run of frames ended.
        discarded: frames of partial clips thrown away at gaps.
    """

    def __init__(self, spec: ClipSpec) -> None:
        self.spec = spec
        self.restarts = 0
        self.discarded = 0
        self._shape: tuple[int, ...] = ()
        self._reset()

    def _reset(self) -> None:
        self._frames: deque[TimedFrame] = deque()  # frames of the run from run index self._base
        self._base = 0
        self._n = 0  # frames of the run so far
        self._next = 0  # run index of the next clip's first frame
        self._covered = 0  # run index one past the last complete clip

    def push(self, frame: TimedFrame) -> list[TimedClip]:
        """Add the next frame; returns the clips it completes."""
        out: list[TimedClip] = []
        if self._n and frame.image.shape != self._shape:  # the source changed its frame size
            frame.gap = True
        self._shape = frame.image.shape
        if frame.gap and self._n:
            out += self._emit(hold=0)  # complete clips held back only by drop_last
            self.restarts += 1
            self.discarded += max(0, self._n - self._next)
            self._reset()
        index = self._n
        self._n += 1
        if index >= self._next:  # else it lies between two clips (stride > length)
            if not self._frames:
                self._base = index
            self._frames.append(frame)
        out += self._emit(hold=self.spec.drop_last)
        return out

    def finish(self) -> list[TimedClip]:
        """The end of the stream: the padded tail clip when ``spec.tail == "pad"`` (the last
        ``spec.drop_last`` frames left out)."""
        used = self._n - self.spec.drop_last
        out: list[TimedClip] = []
        if self.spec.tail == "pad" and self._next < used and self._covered < used:
            i = self._next - self._base
            real = list(self._frames)[i:i + used - self._next]
            out.append(self._clip(real, pad_to=self.spec.length))
        self._reset()
        return out

    def _emit(self, hold: int) -> list[TimedClip]:
        length, stride = self.spec.length, self.spec.stride
        out: list[TimedClip] = []
        while self._next + length + hold <= self._n:
            i = self._next - self._base
            out.append(self._clip([self._frames[i + j] for j in range(length)]))
            self._covered = self._next + length
            self._next += stride
            while self._frames and self._base < self._next:
                self._frames.popleft()
                self._base += 1
        return out

    @staticmethod
    def _clip(frames: Sequence[TimedFrame], pad_to: int = 0) -> TimedClip:
        images = [f.image for f in frames]
        images += [images[-1]] * max(0, pad_to - len(images))
        first, last = frames[0], frames[-1]
        return TimedClip(frames=np.stack(images), start_time=float(first.time),
                         end_time=float(last.time + last.duration), start_frame=first.index,
                         end_frame=last.index + 1, ready=last.arrived)


# ----------------------------------------------------------------------------- reader


class LiveReader:
    """Decodes a live source with PyAV into a :class:`FrameBuffer` from a background thread,
    re-opening it when the connection fails or ends (module docstring).

    Use::

        reader = LiveReader(url, options, buffer)
        reader.open()          # the first open, in this thread: raises at once on a bad URL
        reader.start()
        while (frame := buffer.get()) is not None: ...
        reader.stop()

    Attributes:
        fps: the stream's nominal frame rate (after :meth:`open`).
        frames: frames decoded and put in the buffer.
        reconnects: successful re-opens.
        undecodable: packets the decoder rejected as invalid data (skipped, each followed by a gap).
        error: why the reader stopped early (gave up reconnecting, or a failure with
            ``reconnect=0``), else ``None``.
        ended_at: ``clock()`` when the source ended (or the reader gave up); ``None`` while
            it runs or when :meth:`stop` ended it.
    """

    def __init__(self, source: str, options: LiveOptions, buffer: FrameBuffer, *,
                 echo: Callable[[str], None] | None = None, clock: Callable[[], float] = time.perf_counter) -> None:
        self.source = source
        self.options = options
        self.buffer = buffer
        self.echo = echo
        self.clock = clock
        self.format = source_format(source, options.input_format)
        self.fps = 0.0
        self.frames = 0
        self.reconnects = 0
        self.undecodable = 0
        self.ended_at: float | None = None
        self.error: VideoDecodeError | None = None
        self._container: Any = None
        self._stream: Any = None
        self._period = 1 / FALLBACK_FPS
        self._timeline = Timeline()
        self._new_segment = False
        self._attempts = 0  # re-open attempts since frames last flowed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- opening

    def _open(self) -> None:
        import av

        options = dict(self.options.input_options)
        if "listen" in options.get("rtsp_flags", "").split("+") and "listen_timeout" not in options:
            # FFmpeg's RTSP listener fails at once ("Numerical result out of range") without it
            options["listen_timeout"] = str(max(1, math.ceil(self.options.io_timeout)))
        try:
            container = av.open(self.source, format=self.format, options=options,
                                timeout=(self.options.io_timeout, self.options.io_timeout))
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoDecodeError(f"{self.source}: cannot open the live source ({describe_error(e)}); check the "
                                   "URL/device, that it is reachable, and --input-format/--input-option") from e
        if not container.streams.video:
            container.close()
            raise VideoDecodeError(f"{self.source}: the source has no video track")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate or FALLBACK_FPS
        self._period = 1 / Fraction(rate)
        self.fps = float(rate)
        self._container, self._stream = container, stream

    def open(self) -> None:
        """Open the source (once, not retried).

        Raises:
            VideoDecodeError: it cannot be opened or has no video track.
            ConfigError: its input format is not in this PyAV build.
        """
        self._open()

    def start(self) -> None:
        """Start decoding in a background (daemon) thread; :meth:`open` first."""
        if self._container is None:
            raise RuntimeError("LiveReader.open() must be called before start()")
        self._thread = threading.Thread(target=self._run, name="vadpipe-live-reader", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Ask the thread to stop and wait for it (at most ``timeout`` seconds; default: the
        I/O timeout plus one second, the longest a blocked read can take)."""
        self._stop.set()
        self.buffer.close()
        if self._thread is not None:
            self._thread.join(self.options.io_timeout + 1.0 if timeout is None else timeout)
        elif self._container is not None:  # opened, never started
            self._container.close()
            self._container = None

    # -- the thread

    def _put(self, frame: Any) -> None:
        wall = self.clock()
        tb = frame.time_base or self._stream.time_base
        src = frame.pts * Fraction(tb) if frame.pts is not None and tb is not None else None  # None: by arrival
        t = self._timeline.map(src, wall, self._period)
        item = TimedFrame(image=frame.to_ndarray(format="rgb24"), time=t, duration=self._period, index=self.frames,
                          gap=self._new_segment)
        item.arrived = self.clock()
        if self.buffer.put(item):  # refused only once the run is stopping
            self._new_segment = False
            self.frames += 1

    def _decode(self) -> tuple[int, BaseException | None]:
        """Decode the open connection until it ends, fails or :meth:`stop`; ``(frames, error)``."""
        import av

        container, stream = self._container, self._stream
        before = self.frames
        error: BaseException | None = None
        try:
            for packet in container.demux(stream):
                if self._stop.is_set():
                    break
                try:
                    decoded = packet.decode()
                except av.InvalidDataError:  # damaged data, the connection is fine: skip the packet
                    self.undecodable += 1
                    self._new_segment = True  # its frames are missing: the next frame follows a gap
                    continue
                for frame in decoded:
                    self._put(frame)
        except (av.FFmpegError, OSError, ValueError) as e:
            error = e
            try:  # the frames the decoder still holds were received before the failure
                for frame in stream.codec_context.decode(None):
                    self._put(frame)
            except (av.FFmpegError, OSError, ValueError):
                pass
        finally:
            container.close()
            self._container = None
        return self.frames - before, error

    def _reconnect(self, reason: str) -> bool:
        """Re-open after a lost connection (module docstring); ``False``: gave up or stopped."""
        n = self.options.reconnect
        while self._attempts < n:
            self._attempts += 1
            delay = min(MAX_RECONNECT_DELAY, self.options.reconnect_delay * 2 ** (self._attempts - 1))
            if self.echo:
                self.echo(f"{self.source}: {reason}; reconnecting in {delay:.2f} s (attempt {self._attempts}/{n})")
            if self._stop.wait(delay):
                return False
            try:
                self._open()
            except VideoDecodeError as e:
                reason = str(e)
                continue
            self.reconnects += 1
            self._new_segment = True
            if self.echo:
                self.echo(f"{self.source}: reconnected (reconnect {self.reconnects})")
            return True
        self.error = VideoDecodeError(
            f"{self.source}: gave up after {n} reconnect attempt(s) in a row; last: {reason} (raise --reconnect or "
            "--reconnect-delay to wait longer for the source)")
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                n, error = self._decode()
                if self._stop.is_set():
                    break
                if n:
                    self._attempts = 0  # frames flowed: a fresh set of attempts
                reason = (f"connection lost after {self.frames} frame(s) ({describe_error(error)})" if error is not None
                          else f"the stream ended after {self.frames} frame(s)")
                if self.options.reconnect == 0:
                    if error is not None:
                        self.error = VideoDecodeError(f"{self.source}: {reason}; --reconnect 0: not re-opened")
                    break
                if not self._reconnect(reason):
                    break
        except Exception as e:  # a bug: end the stream with the reason rather than hang the scorer
            self.error = VideoDecodeError(f"{self.source}: the reader thread failed ({type(e).__name__}: {e})")
        finally:
            if self._container is not None:
                self._container.close()
                self._container = None
            if not self._stop.is_set():
                self.ended_at = self.clock()
            self.buffer.close()
