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
  the model) and the rest; the head alone is timed again on the written features. Reported as
  seconds per minute of video. Each run recomputes the features (``force``); the first run
  in a process also pays CUDA initialisation, so more than one run is made by default.

The head is the bundled demo head (``vadpipe demo``; I3D, 1 crop) unless ``--head`` is given.
``--precision`` changes the precision of the head's recorded extraction recipe in a temporary
copy of the checkpoint (scoring otherwise always uses the recipe's precision): a benchmark
setting, since bf16/fp16 features differ slightly from the fp32 ones the head was trained on.
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
from typing import Callable, Iterator

import torch

from vadpipe.errors import ConfigError, VadpipeError

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
    stage_one_s: float
    head_s: float
    clips: int

    @property
    def rest_s(self) -> float:
        """Head, events, plot, report files: everything after stage one."""
        return self.total_s - self.stage_one_s


@dataclass
class ScoreBench:
    """Everything :func:`run_score_bench` measured."""

    device: str
    video: str
    video_seconds: float
    cold_start: ColdStart | None = None
    runs: list[ThroughputRun] = field(default_factory=list)

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
def bench_checkpoint(head: str | os.PathLike | None, precision: str | None, tmp: Path) -> Iterator[Path]:
    """The checkpoint to benchmark: ``head`` or the bundled demo head, with the recipe's
    precision replaced by ``precision`` (in a copy under ``tmp``) when given."""
    from vadpipe.pipeline.train.loop import load_checkpoint, save_checkpoint

    with contextlib.ExitStack() as stack:
        if head is None:
            from vadpipe.pipeline.demo import DEMO_HEAD, data_path

            path = stack.enter_context(data_path(DEMO_HEAD))
        else:
            path = Path(head)
        ckpt = load_checkpoint(path)
        recipe = ckpt.get("feature_spec", {}).get("extract")
        if precision is not None and recipe and recipe["config"].get("precision") != precision:
            recipe["config"]["precision"] = precision
            path = tmp / f"bench_{precision}.pt"
            save_checkpoint(path, ckpt)
        elif precision is not None and not recipe:
            raise ConfigError(f"{path} records no extraction recipe whose precision --precision could set")
        yield Path(path)


def warm_weights(checkpoint: Path, speed: dict) -> str:
    """Build the checkpoint's backbone once (weights located, hash-checked, converted if
    needed) so that the cold start measures a run with cached weights; returns its name."""
    from vadpipe.extractors.registry import get_backbone
    from vadpipe.pipeline.score.batch import checkpoint_recipe
    from vadpipe.pipeline.train.apply import load_head

    loaded = load_head(checkpoint, torch.device("cpu"))
    config = checkpoint_recipe(loaded, speed=speed)
    get_backbone(config.backbone).build(not config.random_weights)
    return config.backbone


def measure_cold_start(video: str, checkpoint: Path, out: Path, *, device: str, random_weights: bool = False,
                       timeout: float = COLD_START_TIMEOUT) -> ColdStart:
    """Start ``python -m vadpipe.cli score --stream`` and time its first clip score; the
    process is stopped once it has printed it."""
    import vadpipe

    cmd = [sys.executable, "-m", "vadpipe.cli", "score", "--stream", video, "--head", str(checkpoint), "-o", str(out),
           "--device", device] + (["--random-weights"] if random_weights else [])
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


def measure_throughput(video: str, checkpoint: Path, out: Path, *, speed: dict, plots: bool = True) -> ThroughputRun:
    """One :func:`score_videos` run on ``video`` (features recomputed), and the head alone."""
    from vadpipe.manifests.datasets import DatasetRow
    from vadpipe.manifests.features import MANIFEST_NAME, read_manifest
    from vadpipe.pipeline.device import resolve_device
    from vadpipe.pipeline.extract.sources import discover
    from vadpipe.pipeline.score.batch import ScoreOptions, score_videos
    from vadpipe.pipeline.train.apply import load_head, score_rows

    t = time.perf_counter()
    summary = score_videos(discover([video]), checkpoint, out, options=ScoreOptions(plots=plots), speed=speed,
                           force=True, progress=False)
    total = time.perf_counter() - t
    if summary.failed:
        raise VadpipeError(f"scoring the benchmark video failed: {summary.failed[0].error}")
    device = resolve_device(speed.get("device", "auto"))
    loaded = load_head(checkpoint, device)
    (row,) = read_manifest(out / "features" / MANIFEST_NAME)
    rows = [DatasetRow(video=row.video, feature_path=row.feature_path, label="normal")]
    score_rows(loaded, rows, out / "features", device)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    score_rows(loaded, rows, out / "features", device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    head_s = time.perf_counter() - t
    return ThroughputRun(total_s=total, stage_one_s=summary.extraction.seconds, head_s=head_s, clips=row.n_clips)


def run_score_bench(video: str | None = None, *, head: str | os.PathLike | None = None, seconds: float = 60.0,
                    device: str = "auto", precision: str | None = None, runs: int = 2, cold_start: bool = True,
                    throughput: bool = True, random_weights: bool = False,
                    echo: Callable[[str], None] = print) -> ScoreBench:
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
    """
    from vadpipe.pipeline.benchmark import make_synthetic_video
    from vadpipe.pipeline.device import default_batch_clips, default_workers, resolve_device
    from vadpipe.pipeline.extract.decode import open_video

    if seconds <= 0:
        raise ConfigError(f"--seconds must be positive, got {seconds}")
    dev = resolve_device(device)
    speed = {"device": device, "workers": default_workers(dev), "batch_clips": default_batch_clips(dev),
             "random_weights": random_weights}
    with tempfile.TemporaryDirectory(prefix="vadpipe-bench-score-") as tmp_name:
        tmp = Path(tmp_name)
        with bench_checkpoint(head, precision, tmp) as checkpoint:
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
            backbone = warm_weights(checkpoint, speed)
            from vadpipe.pipeline.score.batch import checkpoint_recipe
            from vadpipe.pipeline.train.apply import load_head

            recipe = checkpoint_recipe(load_head(checkpoint, torch.device("cpu")), speed=speed)
            echo(f"video: {label} ({video_seconds:.1f} s)")
            echo(f"head: {head or 'bundled demo head'} ({backbone}, {recipe.crops} crop(s), precision "
                 f"{recipe.precision}); device: {result.device}")
            if cold_start:
                result.cold_start = measure_cold_start(video, checkpoint, tmp / "cold", device=device,
                                                       random_weights=random_weights)
                cs = result.cold_start
                echo(f"cold start: first clip score {cs.first_score_s:.2f} s after process start "
                     f"(imports + head + backbone loaded, video open: {cs.ready_s:.2f} s)")
            if throughput:
                for k in range(runs):
                    run = measure_throughput(video, checkpoint, tmp / f"run{k}", speed=speed)
                    result.runs.append(run)
                    echo(f"run {k + 1}: {run.total_s:.2f} s for {video_seconds:.1f} s of video ({run.clips} clips) = "
                         f"{result.per_minute(run.total_s):.2f} s per minute of video; stage one (decode + "
                         f"{backbone}, model build included) {run.stage_one_s:.2f} s, head + events + plot + files "
                         f"{run.rest_s:.2f} s (head alone {run.head_s * 1e3:.1f} ms)")
    return result
