"""``vadpipe score --stream``: score one video clip by clip as its frames arrive.

Memory is bounded whatever the video's length: frames are decoded in small chunks, a clip
is scored as soon as its last frame is decoded, and only a window of past clip features is
kept.

* **Causal heads** (``head.causal_context`` is not ``None``; among the built-in heads only
  Sultani's MIL regressor, which scores each snippet on its own) see exactly the features
  the batch path gives them, so each streamed score is final and equal to
  ``vadpipe score``'s.
* **Other heads** (RTFM, MGFN, SA-CRF and LA-Net attend over, or convolve across, the whole
  video; MCR's default windows look ahead) give *provisional* scores computed on the last
  ``window`` clips; marked ``provisional`` in the output. When the stream ends, the final
  scores are computed once on all clip features, so ``scores.csv`` equals the batch path's.

Sources: a video file; ``-`` (standard input, e.g. ``ffmpeg ... -f mpegts - | vadpipe score
--stream -``); with ``follow``, a file that is still being written (reading waits at its
end until it stops growing for ``follow`` seconds); or a **live source** (an ``rtsp://``,
``http://``, ``udp://``, ... URL, a ``/dev/video*`` camera, or any source with an input
format), read by a thread into a bounded frame buffer with drops, clip restarts after gaps,
reconnects and timestamp-based clip times (:mod:`vadpipe.pipeline.score.live`). Pipes and
growing files are read with PyAV from a stream (no seeking), so they must be in a
streamable container (MPEG-TS, Matroska, fragmented MP4); regular files use the same decoder
as the batch path.

Events are tracked as the scores arrive (:class:`~vadpipe.pipeline.score.events.EventTracker`):
each one is printed and appended to ``OUT/events.jsonl`` when it closes, and POSTed to a
webhook when one is given (:mod:`vadpipe.pipeline.score.sinks`). With a non-causal head
those events come from the provisional scores (``"provisional": true``); ``OUT/events.json``
is written at the end from the final scores, as the batch path does.

Latency: seconds from a clip's last frame arriving (decoded from a file, or put in the
frame buffer by the live reader) to its score being produced.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence
from urllib.parse import urlsplit

import numpy as np
import torch

from vadpipe.errors import ConfigError, VadpipeError, VideoDecodeError
from vadpipe.extractors.registry import get_backbone
from vadpipe.manifests.atomic import ensure_writable_dir, folder_lock
from vadpipe.pipeline.device import resolve_device
from vadpipe.pipeline.extract.clips import ClipSpec, iter_clips
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.decode import open_video
from vadpipe.pipeline.extract.model import FeatureBuffer, FeatureModel
from vadpipe.pipeline.extract.transforms import resize_clips
from vadpipe.pipeline.score import events as ev
from vadpipe.pipeline.score import live as lv
from vadpipe.pipeline.score import sinks as sk
from vadpipe.pipeline.score.batch import (
    EVENTS_NAME,
    ScoreOptions,
    checkpoint_recipe,
    head_for_run,
    resolve_threshold,
    score_clip_features,
)
from vadpipe.pipeline.score.outputs import write_clip_scores
from vadpipe.pipeline.train.apply import LoadedHead

#: Frames decoded per chunk when streaming (small: a clip is scored as soon as it is complete).
STREAM_CHUNK = 8


#: Clips of features a live run keeps for a non-causal head's final pass over the whole stream
#: (about 36 min at 16-frame clips and 30 fps; 10 crops × 2048 floats each: 80 KiB a clip).
#: Past it the features are let go and ``scores.csv`` holds the provisional scores.
LIVE_FINAL_CLIPS = 4096

#: Percentiles of the per-clip latency in the summary line.
LATENCY_PERCENTILES = (50, 99)


@dataclass
class StreamStats:
    """Counts of one streamed run (all zero but ``frames`` for file sources).

    Attributes:
        frames: frames received (decoded).
        dropped: frames dropped because the scorer fell behind (live sources).
        restarts: gaps (drops, reconnects) at which clip assembly restarted.
        discarded: frames of partial clips thrown away at those gaps.
        reconnects: successful re-opens of a live source.
        buffer_peak: most frames the live buffer held at once (``<= buffer``).
        unscored: frames left in the live buffer when the run was stopped (Ctrl-C, SIGTERM).
        undecodable: packets of a live source the decoder rejected (skipped; a gap follows).
        events_sent: events written to ``events.jsonl``.
    """

    frames: int = 0
    dropped: int = 0
    restarts: int = 0
    discarded: int = 0
    reconnects: int = 0
    buffer_peak: int = 0
    unscored: int = 0
    undecodable: int = 0
    events_sent: int = 0


@dataclass
class StreamResult:
    """What a streamed run produced. ``latencies``: seconds from a clip's last frame arriving
    to its score being produced; ``frame_ranges``: ``[n_clips, 2]`` received-frame index of each
    clip's first frame and one past its last; ``live_events``: the events as they closed
    (provisional for a non-causal head); ``stopped``: ended by Ctrl-C / SIGTERM; ``scored_at``:
    ``perf_counter()`` when each score was produced; ``source_ended_at``: when a live source
    ended (the clips scored later came from the frames left in the buffer); ``final_pass``:
    ``scores`` come from a non-causal head's pass over all clips (false for a causal head, and
    when ``final_clips`` was exceeded: then they are the provisional scores)."""

    name: str
    scores: np.ndarray
    times: np.ndarray
    events: list[ev.Event]
    latencies: list[float] = field(default_factory=list)
    causal: bool = False
    error: str = ""
    out_dir: Path | None = None
    live: bool = False
    frame_ranges: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    live_events: list[ev.Event] = field(default_factory=list)
    stats: StreamStats = field(default_factory=StreamStats)
    sink_summaries: list[str] = field(default_factory=list)
    stopped: bool = False
    scored_at: list[float] = field(default_factory=list)
    source_ended_at: float | None = None
    final_pass: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.error else 0


class FollowFile(io.RawIOBase):
    """A read-only file that, at its current end, waits for more data until the file has
    not grown for ``idle`` seconds (then reports end of file)."""

    def __init__(self, path: str | os.PathLike, idle: float, poll: float = 0.05) -> None:
        self._fh = open(path, "rb")
        self.idle = idle
        self.poll = poll

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        waited = 0.0
        while True:
            n = self._fh.readinto(buffer)
            if n:
                return n
            if waited >= self.idle:
                return 0
            time.sleep(self.poll)
            waited += self.poll

    def close(self) -> None:
        self._fh.close()
        super().close()


def _stream_chunks(fileobj: BinaryIO, what: str) -> tuple[Iterator[np.ndarray], float]:
    """``(chunks of uint8 [t, H, W, 3], fps)`` decoded with PyAV from a non-seekable stream."""
    import av

    try:
        container = av.open(fileobj, mode="r")
    except Exception as e:  # av.error.* (invalid data, ...)
        raise VideoDecodeError(f"{what}: cannot open the stream ({e})") from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{what}: the stream has no video track")
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or Fraction(30)
    fps = float(rate)

    def gen() -> Iterator[np.ndarray]:
        buf: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                buf.append(frame.to_ndarray(format="rgb24"))
                if len(buf) == STREAM_CHUNK:
                    yield np.stack(buf)
                    buf = []
            if buf:
                yield np.stack(buf)
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"{what}: decoding failed part-way ({e})") from e
        finally:
            container.close()

    return gen(), fps


def recipe_model(loaded: LoadedHead, device: torch.device, *, backbone: str | None = None,
                 speed: dict[str, Any] | None = None) -> tuple[ExtractConfig, FeatureModel]:
    """The extraction settings and the backbone on ``device`` that make, one clip at a time,
    the features ``loaded`` was trained on (its recorded recipe, with the backbone's preset;
    ``speed``: :func:`~vadpipe.pipeline.score.batch.checkpoint_recipe`'s speed-only settings).
    Shared by ``score --stream``, :class:`vadpipe.Detector` and ``vadpipe export``."""
    config = checkpoint_recipe(loaded, backbone=backbone, speed={**(speed or {}), "workers": 0, "batch_clips": 1})
    config = config.with_preset(get_backbone(config.backbone).preset)
    return config, FeatureModel(get_backbone(config.backbone), config, device)


def clip_features(model: FeatureModel, clip: np.ndarray) -> np.ndarray:
    """Features ``[crops, D]`` (float32, on the host) of one uint8 clip ``[L, H, W, 3]``,
    resized and cropped as stage one does."""
    feats = model([resize_clips(torch.from_numpy(np.array(clip))[None], model.config.preset)])  # copy: clips may be read-only views
    return feats[0].cpu().numpy().copy()  # not a view pinning the model's output


def _file_clips(chunks: Iterator[np.ndarray], spec: ClipSpec, fps: float,
                stats: StreamStats) -> Iterator[lv.TimedClip]:
    """The clips of a file/pipe as :class:`~vadpipe.pipeline.score.live.TimedClip`: uniform
    times (clip ``i`` spans ``[i·stride, i·stride + length)`` frames at ``fps``, the times
    :func:`~vadpipe.pipeline.score.events.uniform_clip_times` gives the batch path), ``ready`` when
    the clip's last frame was decoded; counts frames in ``stats.frames``."""

    def counted() -> Iterator[np.ndarray]:
        for chunk in chunks:
            stats.frames += len(chunk)
            yield chunk

    stride, length = spec.stride, spec.length
    for i, clip in enumerate(iter_clips(counted(), spec)):
        yield lv.TimedClip(frames=clip, start_time=i * stride / fps, end_time=(i * stride + length) / fps,
                           start_frame=i * stride, end_frame=i * stride + length, ready=time.perf_counter())


def _live_clips(buffer: lv.FrameBuffer, spec: ClipSpec) -> tuple[Iterator[lv.TimedClip], lv.ClipAssembler]:
    """The clips of the frames a :class:`~vadpipe.pipeline.score.live.LiveReader` puts in
    ``buffer`` (restarted after gaps), and the assembler that counts the restarts."""
    assembler = lv.ClipAssembler(spec)

    def gen() -> Iterator[lv.TimedClip]:
        while True:
            frame = buffer.get()
            if frame is None:
                break
            yield from assembler.push(frame)
        yield from assembler.finish()

    return gen(), assembler


class _StopRequested(KeyboardInterrupt):
    """SIGTERM during a streamed run: end it as Ctrl-C does (outputs written)."""


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """In the main thread, turn SIGTERM into :class:`_StopRequested` for the duration."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _StopRequested()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def latency_summary(latencies: Sequence[float]) -> str:
    """``p50 12 ms, p99 40 ms, max 41 ms`` of latencies in seconds (``-`` when there are none)."""
    if not latencies:
        return "-"
    lat = np.asarray(latencies, dtype=np.float64) * 1e3
    parts = [f"p{q} {np.percentile(lat, q):.0f} ms" for q in LATENCY_PERCENTILES]
    return ", ".join(parts + [f"max {lat.max():.0f} ms"])


def _event_line(event: ev.Event, number: int, provisional: bool) -> str:
    return (f"event {number:3d}  {event.start_time:8.2f}-{event.end_time:8.2f} s  peak {event.peak_score:.4f} "
            f"(clip {event.peak_clip})  mean {event.mean_score:.4f}" + ("  provisional" if provisional else ""))


def stream_score(
    source: str,
    checkpoint: str | os.PathLike | LoadedHead,
    out_dir: str | os.PathLike,
    *,
    options: ScoreOptions = ScoreOptions(),
    backbone: str | None = None,
    speed: dict[str, Any] | None = None,
    follow: float = 0.0,
    window: int = 64,
    live: lv.LiveOptions | None = None,
    webhook: str | sk.WebhookSink | None = None,
    final_clips: int | None = None,
    echo: Callable[[str], None] | None = print,
) -> StreamResult:
    """Score ``source`` clip by clip (module docstring), printing one line per clip and one
    per event as it closes.

    Writes ``OUT/<name>/scores.csv``, ``OUT/events.json`` at the end (like the batch path)
    and ``OUT/events.jsonl`` as events close. A decoding failure (or a live source that
    cannot be re-opened) stops the stream with ``error`` set; the clips scored before it are
    kept and written. Ctrl-C (or SIGTERM in the main thread) ends the stream the same way,
    without an error. ``checkpoint`` is a head checkpoint file or the head already loaded
    from one (not read again).

    Args:
        source: a file, ``-`` (standard input) or a live source
            (:func:`~vadpipe.pipeline.score.live.is_live_source`).
        live: how live sources are read (buffer, reconnects, input format and options);
            default :class:`~vadpipe.pipeline.score.live.LiveOptions`. An input format in it
            makes any source live.
        webhook: POST each closed event there (a URL, or a configured
            :class:`~vadpipe.pipeline.score.sinks.WebhookSink`, which this run closes).
        final_clips: most clips whose features are kept for a non-causal head's final pass
            (memory: the features of that many clips); past it the final pass is off and
            ``scores.csv`` holds the provisional scores (``final_pass`` false). Default: no
            limit for files and pipes, :data:`LIVE_FINAL_CLIPS` for live sources, which may
            never end. A causal head keeps no features.

    Raises:
        ConfigError: another run is writing to ``out_dir``
            (:func:`~vadpipe.manifests.atomic.folder_lock`), a checkpoint/backbone
            mismatch, an invalid option, a live source with a recipe that resamples frames.

    A live source that cannot be opened at all ends the run at once with ``error`` set (the
    first open is not retried; reconnects are for connections that were up).
    """
    live = live or lv.LiveOptions()
    if isinstance(webhook, str):
        sk.check_webhook_url(webhook)  # before anything is loaded
    given = webhook if isinstance(webhook, sk.WebhookSink) else None
    try:
        out = ensure_writable_dir(out_dir)  # before the video is opened: a clear error, not a traceback
        with folder_lock(out, "vadpipe score --stream"):  # one run per output folder at a time
            sinks: list[sk.EventSink] = [sk.JsonlSink(out / sk.EVENTS_JSONL_NAME)]
            try:
                if webhook is not None:
                    sinks.append(given or sk.WebhookSink(str(webhook)))
                return _stream_score(source, checkpoint, out, options=options, backbone=backbone, speed=speed,
                                     follow=follow, window=window, live=live, sinks=sinks,
                                     final_clips=final_clips, echo=echo)
            finally:  # on an unexpected error too: no open file, no webhook thread left running
                for sink in sinks:
                    sink.close()  # idempotent: the run closed them already when it ended normally
    finally:
        if given is not None:
            given.close()


def _stream_score(source: str, checkpoint: str | os.PathLike | LoadedHead, out: Path, *, options: ScoreOptions,
                  backbone: str | None, speed: dict[str, Any] | None, follow: float, window: int,
                  live: lv.LiveOptions, sinks: list[sk.EventSink], final_clips: int | None,
                  echo: Callable[[str], None] | None) -> StreamResult:
    speed = dict(speed or {})
    device = resolve_device(speed.get("device", "auto"))
    loaded = head_for_run(checkpoint, device)
    config, model = recipe_model(loaded, device, backbone=backbone, speed=speed)
    is_live = source != "-" and lv.is_live_source(source, live.input_format)
    if is_live and config.fps is not None:
        raise ConfigError(f"the head's recipe resamples videos to {config.fps:g} fps; live sources are scored at "
                          "their own rate: re-encode the source at that rate and pipe it in (--stream -)")
    head = loaded.head
    context = head.causal_context
    causal = context is not None
    keep = context if causal else window
    threshold, threshold_source = resolve_threshold(options, loaded)
    tracker = ev.EventTracker(threshold, options.min_gap, options.min_duration)

    name = "stdin" if source == "-" else (_live_name(source) if is_live else Path(source).stem)
    recent: deque[np.ndarray] = deque(maxlen=keep)  # [crops, D] per clip
    all_feats = FeatureBuffer()  # [n_clips, crops, D] in one growing array, for the final pass
    final_pass = not causal  # features are kept for a final pass over the whole stream
    limit = final_clips if final_clips is not None else (LIVE_FINAL_CLIPS if is_live else None)
    if limit is not None and limit < 1:
        raise ConfigError(f"final_clips must be >= 1, got {limit}")
    # one entry per scored clip, appended in one step (a Ctrl-C never leaves the lists uneven):
    # (score, scored_at, latency, (start_time, end_time), (start_frame, end_frame))
    done: list[tuple[float, float, float, tuple[float, float], tuple[int, int]]] = []
    live_events: list[ev.Event] = []
    stats = StreamStats()
    error = ""
    stopped = False
    length = config.clip.length

    def head_scores(feats: list[np.ndarray] | deque) -> np.ndarray:
        """Scores ``[T]`` of ``T`` clips' features ``[crops, D]``, as the batch path computes them."""
        return score_clip_features(loaded, np.stack(list(feats)), device)

    def publish(closed: list[ev.Event]) -> None:
        for event in closed:
            live_events.append(event)
            record = sk.event_record(name, event, provisional=not causal, threshold=threshold, source=source)
            for sink in sinks:
                sink.emit(record)
            stats.events_sent += 1
            if echo:
                echo(_event_line(event, len(live_events), provisional=not causal))

    fps = 0.0
    source_ended_at: float | None = None
    reader: lv.LiveReader | None = None
    buffer: lv.FrameBuffer | None = None
    assembler: lv.ClipAssembler | None = None
    reader_ctx = None
    try:
        with _stop_on_sigterm():
            try:
                if is_live:
                    buffer = lv.FrameBuffer(live.buffer)
                    reader = lv.LiveReader(source, live, buffer, echo=echo)
                    reader.open()
                    fps = reader.fps
                    clips, assembler = _live_clips(buffer, config.clip)
                else:
                    if source == "-":
                        chunks, fps = _stream_chunks(sys.stdin.buffer, "standard input")
                    elif follow > 0:
                        chunks, fps = _stream_chunks(FollowFile(source, follow), source)
                    else:
                        reader_ctx = open_video(source, backend=config.decoder, fps=config.fps, chunk_size=STREAM_CHUNK)
                        fps = float(reader_ctx.info.fps)
                        chunks = reader_ctx.iter_chunks()
                    clips = _file_clips(chunks, config.clip, fps, stats)
                if echo:
                    mode = (f"causal head ({loaded.name}): final scores" if causal else
                            f"non-causal head ({loaded.name}): provisional scores over the last {window} clips")
                    kind = f"live, buffer {live.buffer} frames, reconnect {live.reconnect}; " if is_live else ""
                    echo(f"streaming {source} at {fps:.3f} fps; {kind}{mode}")
                if reader is not None:
                    reader.start()
                for i, clip in enumerate(clips):
                    f = clip_features(model, clip.frames)  # [crops, D]
                    recent.append(f)
                    score = float(head_scores(recent)[-1])
                    at = time.perf_counter()
                    if final_pass:
                        all_feats.add(i, f[None])  # row i; only the first len(done) rows count
                    done.append((score, at, at - clip.ready, (clip.start_time, clip.end_time),
                                 (clip.start_frame, clip.end_frame)))
                    if final_pass and limit is not None and len(done) > limit:
                        final_pass, all_feats = False, FeatureBuffer()  # let the features go
                        if echo:
                            echo(f"more than {limit} clips: the final pass over the whole stream is off (bounded "
                                 "memory); scores.csv will hold the provisional scores")
                    if echo:
                        echo(f"clip {i:5d}  {clip.start_time:8.2f}-{clip.end_time:8.2f} s  score {score:.4f}  "
                             f"latency {(at - clip.ready) * 1e3:6.0f} ms" + ("" if causal else "  provisional"))
                    publish(tracker.push(score, clip.start_time, clip.end_time))
            except KeyboardInterrupt:
                stopped = True
            finally:
                for close in (reader_ctx.close if reader_ctx is not None else None,
                              reader.stop if reader is not None else None):
                    if close is None:
                        continue
                    try:
                        close()
                    except KeyboardInterrupt:  # a second Ctrl-C while stopping: the reader is a daemon thread
                        stopped = True
    except VadpipeError as e:
        error = f"{type(e).__name__}: {e}"
    streamed = [d[0] for d in done]
    scored_at = [d[1] for d in done]
    latencies = [d[2] for d in done]
    clip_times = [d[3] for d in done]
    frame_ranges = [d[4] for d in done]
    if reader is not None:
        if reader.error is not None and not error and not stopped:
            error = f"{type(reader.error).__name__}: {reader.error}"
        stats.frames, stats.reconnects, stats.undecodable = reader.frames, reader.reconnects, reader.undecodable
        source_ended_at = reader.ended_at
    if buffer is not None:
        stats.dropped, stats.buffer_peak, stats.unscored = buffer.dropped, buffer.peak, len(buffer)
    if assembler is not None:
        stats.restarts, stats.discarded = assembler.restarts, assembler.discarded
    publish(tracker.finish())

    scores = np.asarray(streamed, dtype=np.float64)
    if final_pass and done:
        scores = score_clip_features(loaded, all_feats.array()[:len(done)], device).astype(np.float64)
    times = np.asarray(clip_times, dtype=np.float64).reshape(-1, 2)
    ranges = np.asarray(frame_ranges, dtype=np.int64).reshape(-1, 2)
    events = ev.find_events(scores, times, threshold, options.min_gap, options.min_duration) if scores.size else []
    if scores.size:
        write_clip_scores(out / name / "scores.csv", scores, times, frame_ranges=ranges)
        ev.write_events_json(out / EVENTS_NAME, {name: events}, threshold=threshold, threshold_source=threshold_source,
                             min_gap=options.min_gap, min_duration=options.min_duration,
                             extra={"checkpoint": loaded.source or str(checkpoint), "head": loaded.name,
                                    "causal": causal, "provisional": not causal and not final_pass})
    summaries = [line for line in (sink.close() for sink in sinks) if line]
    if not error and not scores.size and not stopped:
        error = f"{source}: no complete {length}-frame clip was decoded"
    if echo:
        if stopped:
            left = f" ({stats.unscored} frame(s) still in the buffer not scored)" if stats.unscored else ""
            echo(f"stopped: the stream was interrupted; writing what was scored{left}")
        line = f"{scores.size} clips scored; frames: {stats.frames} received"
        if is_live:
            behind = "the scorer fell behind; " if stats.dropped else ""
            line += (f", {stats.dropped} dropped ({behind}buffer {live.buffer} frames), {stats.restarts} gap(s) "
                     f"({stats.discarded} frames of partial clips discarded); reconnects: {stats.reconnects}")
            if stats.undecodable:
                line += f"; {stats.undecodable} undecodable packet(s) skipped"
        echo(f"{line}; latency {latency_summary(latencies)}")
        echo(f"events: {len(live_events)} closed live{' (provisional)' if not causal and live_events else ''}, "
             f"written to {out / sk.EVENTS_JSONL_NAME}")
        for summary in summaries:
            echo(summary)
        echo(ev.format_events_table(name, events))
        if error:
            echo(f"failed: {error}")
    return StreamResult(name=name, scores=scores, times=times, events=events, latencies=latencies, causal=causal,
                        error=error, out_dir=out, live=is_live, frame_ranges=ranges, live_events=live_events,
                        stats=stats, sink_summaries=summaries, stopped=stopped, scored_at=scored_at,
                        source_ended_at=source_ended_at, final_pass=final_pass and bool(done))


def _live_name(source: str) -> str:
    """The output name of a live source: the URL path's or device's last part without its
    suffix (``rtsp://cam/live/main`` → ``main``), else the host, else ``live``."""
    parts = urlsplit(source)
    stem = Path(parts.path).stem if parts.path not in ("", "/") else ""
    name = stem or parts.hostname or "live"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
