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
--stream -``); or, with ``follow``, a file that is still being written (reading waits at its
end until it stops growing for ``follow`` seconds). Pipes and growing files are read with
PyAV from a stream (no seeking), so they must be in a streamable container (MPEG-TS,
Matroska, fragmented MP4); regular files use the same decoder as the batch path.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import numpy as np
import torch

from vadpipe.errors import VadpipeError, VideoDecodeError
from vadpipe.extractors.registry import get_backbone
from vadpipe.manifests.atomic import ensure_writable_dir, folder_lock
from vadpipe.pipeline.device import resolve_device
from vadpipe.pipeline.extract.clips import iter_clips
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.decode import open_video
from vadpipe.pipeline.extract.model import FeatureBuffer, FeatureModel
from vadpipe.pipeline.extract.transforms import resize_clips
from vadpipe.pipeline.score import events as ev
from vadpipe.pipeline.score.batch import (
    EVENTS_NAME,
    ScoreOptions,
    checkpoint_recipe,
    head_for_run,
    resolve_threshold,
    score_clip_features,
    write_clip_scores,
)
from vadpipe.pipeline.train.apply import LoadedHead

#: Frames decoded per chunk when streaming (small: a clip is scored as soon as it is complete).
STREAM_CHUNK = 8


@dataclass
class StreamResult:
    """What a streamed run produced. ``latencies``: seconds from a clip's last frame being
    decoded to its score being printed."""

    name: str
    scores: np.ndarray
    times: np.ndarray
    events: list[ev.Event]
    latencies: list[float] = field(default_factory=list)
    causal: bool = False
    error: str = ""
    out_dir: Path | None = None

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
    echo: Callable[[str], None] | None = print,
) -> StreamResult:
    """Score ``source`` clip by clip (module docstring), printing one line per clip.

    Writes ``OUT/<name>/scores.csv`` and ``OUT/events.json`` at the end, like the batch path.
    A decoding failure stops the stream with ``error`` set; the clips scored before it are
    kept and written. ``checkpoint`` is a head checkpoint file or the head already loaded
    from one (not read again).

    Raises:
        ConfigError: another run is writing to ``out_dir``
            (:func:`~vadpipe.manifests.atomic.folder_lock`), or a checkpoint/backbone mismatch.
    """
    out = ensure_writable_dir(out_dir)  # before the video is opened: a clear error, not a traceback
    with folder_lock(out, "vadpipe score --stream"):  # one run per output folder at a time
        return _stream_score(source, checkpoint, out, options=options, backbone=backbone, speed=speed,
                             follow=follow, window=window, echo=echo)


def _stream_score(source: str, checkpoint: str | os.PathLike | LoadedHead, out: Path, *, options: ScoreOptions,
                  backbone: str | None, speed: dict[str, Any] | None, follow: float, window: int,
                  echo: Callable[[str], None] | None) -> StreamResult:
    speed = dict(speed or {})
    device = resolve_device(speed.get("device", "auto"))
    loaded = head_for_run(checkpoint, device)
    config, model = recipe_model(loaded, device, backbone=backbone, speed=speed)
    head = loaded.head
    context = head.causal_context
    causal = context is not None
    keep = context if causal else window
    threshold, threshold_source = resolve_threshold(options, loaded)

    name = "stdin" if source == "-" else Path(source).stem
    recent: deque[np.ndarray] = deque(maxlen=keep)  # [crops, D] per clip
    all_feats = FeatureBuffer()  # [n_clips, crops, D] in one growing array, for the final pass
    streamed: list[float] = []
    latencies: list[float] = []
    error = ""
    stride, length = config.clip.stride, config.clip.length

    def head_scores(feats: list[np.ndarray] | deque) -> np.ndarray:
        """Scores ``[T]`` of ``T`` clips' features ``[crops, D]``, as the batch path computes them."""
        return score_clip_features(loaded, np.stack(list(feats)), device)

    fps = 0.0
    try:
        if source == "-":
            chunks, fps = _stream_chunks(sys.stdin.buffer, "standard input")
            reader_ctx = None
        elif follow > 0:
            chunks, fps = _stream_chunks(FollowFile(source, follow), source)
            reader_ctx = None
        else:
            reader_ctx = open_video(source, backend=config.decoder, fps=config.fps, chunk_size=STREAM_CHUNK)
            fps = float(reader_ctx.info.fps)
            chunks = reader_ctx.iter_chunks()
        if echo:
            mode = (f"causal head ({loaded.name}): final scores" if causal else
                    f"non-causal head ({loaded.name}): provisional scores over the last {window} clips")
            echo(f"streaming {source} at {fps:.3f} fps; {mode}")
        try:
            for i, clip in enumerate(iter_clips(chunks, config.clip)):
                ready = time.perf_counter()
                f = clip_features(model, clip)  # [crops, D]
                recent.append(f)
                all_feats.add(i, f[None])
                score = float(head_scores(recent)[-1])
                streamed.append(score)
                latencies.append(time.perf_counter() - ready)
                if echo:
                    t0, t1 = i * stride / fps, (i * stride + length) / fps
                    echo(f"clip {i:5d}  {t0:8.2f}-{t1:8.2f} s  score {score:.4f}  latency {latencies[-1] * 1e3:6.0f} ms"
                         + ("" if causal else "  provisional"))
        finally:
            if reader_ctx is not None:
                reader_ctx.close()
    except VadpipeError as e:
        error = f"{type(e).__name__}: {e}"

    scores = np.asarray(streamed, dtype=np.float64)
    if all_feats.end and not causal:
        scores = score_clip_features(loaded, all_feats.array(), device).astype(np.float64)
    times = ev.uniform_clip_times(scores.size, fps, length, stride) if fps > 0 else np.zeros((0, 2))
    events = ev.find_events(scores, times, threshold, options.min_gap, options.min_duration) if scores.size else []
    if scores.size:
        write_clip_scores(out / name / "scores.csv", scores, times, length, stride)
        ev.write_events_json(out / EVENTS_NAME, {name: events}, threshold=threshold, threshold_source=threshold_source,
                             min_gap=options.min_gap, min_duration=options.min_duration,
                             extra={"checkpoint": loaded.source or str(checkpoint), "head": loaded.name,
                                    "causal": causal})
    if not error and not scores.size:
        error = f"{source}: no complete {length}-frame clip was decoded"
    if echo:
        if latencies:
            lat = np.asarray(latencies) * 1e3
            echo(f"{scores.size} clips; latency per clip: median {np.median(lat):.0f} ms, max {lat.max():.0f} ms")
        echo(ev.format_events_table(name, events))
        if error:
            echo(f"failed: {error}")
    return StreamResult(name=name, scores=scores, times=times, events=events, latencies=latencies, causal=causal,
                        error=error, out_dir=out)
