"""``vadpipe bench score``: how fast ``vadpipe score`` answers, end to end.

Two numbers, both on a generated 320×240, 30 fps H.264 video (the same generator as
``vadpipe bench extract``) unless a video is given:

* **cold start**: wall time from starting a fresh process (``python -m vadpipe.cli score
  --stream VIDEO --head CKPT``) to its first printed clip score, with the backbone's weights
  already converted in ``$VADPIPE_HOME`` (this process builds the backbone once first, so
  conversion never counts). The time at which the process printed its ``streaming ...``
  line (imports done, head and backbone loaded, video opened) is reported too.
* **throughput**: :func:`vadpipe.pipeline.score.batch.score_videos` on the whole video (stage one,
  head, events, plot, outputs), split into stage one (decode + backbone, including building
  the model) and the rest; the head's own time in the run (it scores the features stage one
  hands over in memory) is reported too. Reported as seconds per minute of video. Each run
  recomputes the features (``force``); the first run in a process also pays CUDA (and the
  head's first call) initialisation, so more than one run is made by default.

With ``stream`` (``vadpipe bench score --stream``) it measures instead the **live latency**
of ``score --stream``: the video is served as MPEG-TS over a loopback HTTP server at its
real-time pace (:mod:`~vadpipe.pipeline.score.paced`) and scored as a live source; the
latency of a clip is the time from its last frame being put in the frame buffer by the
reader thread to its score being produced (p50, p99 and max; the first clip, which pays the
model's one-time start-up, is reported apart), with the frames received and dropped.

The head is the bundled demo head (``vadpipe demo``; I3D, 1 crop) unless ``--head`` is given.
Its checkpoint is read once; every throughput run gets the loaded head. ``--precision``
changes the precision of the head's recorded extraction recipe in memory
(:func:`~vadpipe.pipeline.score.batch.with_recipe_precision`; the cold-start process is told
with ``score --recipe-precision``), never in a file: scoring otherwise always uses the
recipe's precision, since bf16/fp16 features differ slightly from the fp32 ones the head was
trained on.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch

from vadpipe.errors import ConfigError, VadpipeError

if TYPE_CHECKING:  # the score pipeline's imports are made where a measurement runs
    from vadpipe.pipeline.extract.config import ExtractConfig
    from vadpipe.pipeline.train.apply import LoadedHead

#: Seconds to wait for the first clip score of the cold-start process.
COLD_START_TIMEOUT = 600.0


@dataclass
class ColdStart:
    """``ready_s``: process start → its ``streaming ...`` line; ``first_score_s``: → its first clip score."""

    ready_s: float
    first_score_s: float
    first_line: str


@dataclass
class ThroughputRun:
    """One :func:`score_videos` run on the video."""

    total_s: float
    #: stage one without the head's time (the head scores each video inside stage one)
    stage_one_s: float
    head_s: float
    clips: int

    @property
    def rest_s(self) -> float:
        """Head, events, plot, report files: everything after stage one."""
        return self.total_s - self.stage_one_s


@dataclass
class StreamLatency:
    """One live ``score --stream`` run on the paced video: per-clip latencies (seconds, in
    order), how many of those clips were scored while the source was still sending (the
    rest came from the frames left in the buffer at its end), and the frame counts."""

    latencies: list[float]
    live_clips: int
    frames: int
    dropped: int
    restarts: int
    buffer: int
    wall_s: float

    @property
    def steady(self) -> list[float]:
        """Latencies of the clips scored while the source was live, less the first clip (which
        pays the model's start-up) when there are others."""
        live = self.latencies[:self.live_clips] or self.latencies
        return live[1:] or live

    def percentiles(self) -> dict[str, float]:
        """``{"p50", "p99", "max"}`` of :attr:`steady`, seconds."""
        lat = np.asarray(self.steady, dtype=np.float64)
        return {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)), "max": float(lat.max())}


@dataclass
class ScoreBench:
    """Everything :func:`run_score_bench` measured."""

    device: str
    video: str
    video_seconds: float
    cold_start: ColdStart | None = None
    runs: list[ThroughputRun] = field(default_factory=list)
    stream: StreamLatency | None = None

    def per_minute(self, seconds: float) -> float:
        """``seconds`` of processing scaled to one minute of video."""
        return seconds * 60.0 / self.video_seconds


def describe_device(device: torch.device) -> str:
    """The device in words: GPU name, or CPU with its core and torch thread counts."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    cpu = platform.processor() or platform.machine()
    return f"cpu ({cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


@contextlib.contextmanager
def bench_checkpoint(head: str | os.PathLike | None) -> Iterator[Path]:
    """The checkpoint file to benchmark: ``head``, or the bundled demo head."""
    if head is not None:
        yield Path(head)
        return
    from vadpipe.pipeline.demo import DEMO_HEAD, data_path

    with data_path(DEMO_HEAD) as path:
        yield Path(path)


def bench_head(checkpoint: Path, precision: str | None, device: torch.device) -> LoadedHead:
    """The benchmark's head, read from ``checkpoint`` once, with the recipe's precision
    replaced by ``precision`` in memory when given (the file is left as it is).

    Raises:
        ConfigError: ``precision`` is given but the checkpoint records no recipe.
    """
    from vadpipe.pipeline.score.batch import with_recipe_precision
    from vadpipe.pipeline.train.apply import load_head

    loaded = load_head(checkpoint, device)
    return loaded if precision is None else with_recipe_precision(loaded, precision)


def warm_weights(recipe: ExtractConfig) -> str:
    """Locate, hash-check and (once) convert the recipe's weights, without building a model, so
    that the cold start measures a run with cached weights; returns the backbone's name."""
    from vadpipe.extractors.registry import get_backbone
    from vadpipe.extractors.weights import loaded_weights_sha256

    if not recipe.random_weights:
        loaded_weights_sha256(get_backbone(recipe.backbone).weights)
    return recipe.backbone


def measure_cold_start(video: str, checkpoint: Path, out: Path, *, device: str, random_weights: bool = False,
                       precision: str | None = None, timeout: float = COLD_START_TIMEOUT) -> ColdStart:
    """Start ``python -m vadpipe.cli score --stream`` and time its first clip score; the
    process is stopped once it has printed it. ``precision`` replaces the recipe's there
    (``--recipe-precision``)."""
    import vadpipe

    cmd = [sys.executable, "-m", "vadpipe.cli", "score", "--stream", video, "--head", str(checkpoint), "-o", str(out),
           "--device", device] + (["--random-weights"] if random_weights else [])
    if precision is not None:
        cmd += ["--recipe-precision", precision]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    package_root = str(Path(vadpipe.__file__).resolve().parents[1])  # the same vadpipe as this process
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    ready = None
    lines: list[str] = []
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.perf_counter() - t0
            lines.append(line.rstrip())
            if line.startswith("streaming ") and ready is None:
                ready = now
            if line.startswith("clip "):
                return ColdStart(ready_s=ready if ready is not None else now, first_score_s=now,
                                 first_line=line.strip())
            if now > timeout:
                break
        raise VadpipeError("the cold-start process printed no clip score:\n" + "\n".join(lines[-15:]))
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def measure_throughput(video: str, loaded: LoadedHead, out: Path, *, speed: dict, plots: bool = True) -> ThroughputRun:
    """One :func:`score_videos` run on ``video`` (features recomputed) with the loaded head."""
    from vadpipe.pipeline.extract.sources import discover
    from vadpipe.pipeline.score.batch import ScoreOptions, score_videos

    t = time.perf_counter()
    summary = score_videos(discover([video]), loaded, out, options=ScoreOptions(plots=plots), speed=speed,
                           force=True, progress=False)
    total = time.perf_counter() - t
    if summary.failed:
        raise VadpipeError(f"scoring the benchmark video failed: {summary.failed[0].error}")
    (scored,) = summary.videos
    return ThroughputRun(total_s=total, stage_one_s=summary.extraction.seconds - summary.head_seconds,
                         head_s=summary.head_seconds, clips=int(scored.scores.size))


def measure_stream_latency(video: str, loaded: LoadedHead, out: Path, *, speed: dict, buffer: int) -> StreamLatency:
    """Serve ``video`` at real-time pace over loopback HTTP and score it live with the loaded
    head (module docstring)."""
    from vadpipe.pipeline.score.live import LiveOptions
    from vadpipe.pipeline.score.paced import PacedServer, ts_timeline
    from vadpipe.pipeline.score.stream import stream_score

    pieces = ts_timeline(video)
    with PacedServer(pieces) as server:
        t = time.perf_counter()
        result = stream_score(server.url, loaded, out, speed={**speed, "workers": 0, "batch_clips": 1},
                              live=LiveOptions(buffer=buffer, reconnect=0), echo=None)
        wall = time.perf_counter() - t
    if result.error or not result.latencies:
        raise VadpipeError(f"the live stream of the benchmark video failed: {result.error or 'no clip scored'}")
    st = result.stats
    end = result.source_ended_at
    live_clips = sum(1 for at in result.scored_at if end is None or at <= end)
    return StreamLatency(latencies=list(result.latencies), live_clips=live_clips, frames=st.frames,
                         dropped=st.dropped, restarts=st.restarts, buffer=buffer, wall_s=wall)


def run_score_bench(video: str | None = None, *, head: str | os.PathLike | None = None, seconds: float = 60.0,
                    device: str = "auto", precision: str | None = None, runs: int = 2, cold_start: bool = True,
                    throughput: bool = True, random_weights: bool = False, stream: bool = False,
                    buffer: int = 64, echo: Callable[[str], None] = print) -> ScoreBench:
    """Measure the cold start and the throughput of ``vadpipe score`` (module docstring) and
    print them; returns the numbers.

    Args:
        video: a video to score; default: a generated 320×240 30 fps H.264 video of ``seconds``.
        head: checkpoint; default: the bundled demo head.
        seconds: length of the generated video.
        device: ``auto``, ``cpu``, ``cuda``, ...
        precision: replaces the recipe's precision (``fp32``, ``tf32``, ``bf16``, ``fp16``).
        runs: throughput runs (the first one in a process pays one-time costs).
        cold_start, throughput: which measurements to make.
        random_weights: backbone with random weights (same speed; no weights needed).
        stream: measure the live latency instead (module docstring); ``cold_start`` and
            ``throughput`` are then not measured. Takes the video's length in real time.
        buffer: frames of the live frame buffer (``score --stream --buffer``).
    """
    from vadpipe.pipeline.benchmark import make_synthetic_video
    from vadpipe.pipeline.device import default_batch_clips, default_workers, resolve_device
    from vadpipe.pipeline.extract.decode import open_video
    from vadpipe.pipeline.score.batch import checkpoint_recipe

    if seconds <= 0:
        raise ConfigError(f"--seconds must be positive, got {seconds}")
    dev = resolve_device(device)
    speed = {"device": device, "workers": default_workers(dev), "batch_clips": default_batch_clips(dev),
             "random_weights": random_weights}
    with tempfile.TemporaryDirectory(prefix="vadpipe-bench-score-") as tmp_name:
        tmp = Path(tmp_name)
        with bench_checkpoint(head) as checkpoint:
            loaded = bench_head(checkpoint, precision, dev)  # the bench's one read of the checkpoint
            recipe = checkpoint_recipe(loaded, speed=speed)
            if video is None:
                video = str(make_synthetic_video(tmp / "bench_320x240.mp4", seconds=seconds, width=320, height=240,
                                                 fps=30))
                label = f"generated 320x240 H.264, {seconds:g} s at 30 fps"
            else:
                label = str(video)
            with open_video(video) as reader:
                n = sum(len(chunk) for chunk in reader.iter_chunks())  # exact, not the container's hint
                video_seconds = n / reader.info.fps
            result = ScoreBench(device=describe_device(dev), video=label, video_seconds=video_seconds)
            backbone = warm_weights(recipe)
            echo(f"video: {label} ({video_seconds:.1f} s)")
            echo(f"head: {head or 'bundled demo head'} ({backbone}, {recipe.crops} crop(s), precision "
                 f"{recipe.precision}); device: {result.device}")
            if stream:
                cold_start = throughput = False
                echo(f"live: served as MPEG-TS over loopback HTTP at real-time pace ({video_seconds:.1f} s); "
                     f"buffer {buffer} frames")
                lat = result.stream = measure_stream_latency(video, loaded, tmp / "stream", speed=speed,
                                                             buffer=buffer)
                pct = {k: v * 1e3 for k, v in lat.percentiles().items()}
                echo(f"stream latency (clip's last frame in the buffer -> its score) over {len(lat.steady)} clips "
                     f"scored while the source was live: p50 {pct['p50']:.0f} ms, p99 {pct['p99']:.0f} ms, max "
                     f"{pct['max']:.0f} ms (first clip, with start-up: {lat.latencies[0] * 1e3:.0f} ms)")
                rest = lat.latencies[lat.live_clips:]
                if rest:
                    echo(f"after the source ended: {len(rest)} more clip(s) scored from the frames left in the buffer "
                         f"(latency up to {max(rest) * 1e3:.0f} ms)")
                behind = "; the scorer fell behind" if lat.dropped else ""
                echo(f"frames: {lat.frames} received, {lat.dropped} dropped ({100 * lat.dropped / max(1, lat.frames):.1f}"
                     f"%{behind}), {lat.restarts} gap(s) in the frames; run {lat.wall_s:.1f} s")
                echo(f"on a GPU: vadpipe bench score --stream --device cuda --seconds {seconds:g}"
                     + (f" {video}" if label == str(video) else "") + (f" --head {head}" if head else ""))
            if cold_start:
                result.cold_start = measure_cold_start(video, checkpoint, tmp / "cold", device=device,
                                                       random_weights=random_weights, precision=precision)
                cs = result.cold_start
                echo(f"cold start: first clip score {cs.first_score_s:.2f} s after process start "
                     f"(imports + head + backbone loaded, video open: {cs.ready_s:.2f} s)")
            if throughput:
                for k in range(runs):
                    run = measure_throughput(video, loaded, tmp / f"run{k}", speed=speed)
                    result.runs.append(run)
                    echo(f"run {k + 1}: {run.total_s:.2f} s for {video_seconds:.1f} s of video ({run.clips} clips) = "
                         f"{result.per_minute(run.total_s):.2f} s per minute of video; stage one (decode + "
                         f"{backbone}, model build included) {run.stage_one_s:.2f} s, head + events + plot + files "
                         f"{run.rest_s:.2f} s (head {run.head_s * 1e3:.1f} ms)")
    return result
