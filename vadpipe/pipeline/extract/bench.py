"""Throughput benchmarks of stage one, stage by stage (``vadpipe bench extract``).

Timing lives here, never in pass/fail tests. Each stage is measured on its own:

* decode: frames/s of each decoder backend over the video;
* preprocess: clips/s of the workers' resize (uint8, one process);
* model: clips/s of crop + normalise + backbone on resized clips already in (pinned)
  memory (all crops of a clip count as one clip), after warm-up, synchronised;
* end to end: clips/s of ``vadpipe extract`` on the video (workers, batching, writing).

Every stage's line also gives the peak resident memory (RSS) of this process during that
stage, everything it holds included (Linux: the peak is reset before each stage through
``/proc/self/clear_refs``;
elsewhere it is the process's peak so far), and for the end-to-end stage with decoding
workers the largest peak of a child process (the workers; a forked child counts the pages
it shares with this process). Extraction keeps memory bounded whatever a video's
length, so the end-to-end peak of a long video stays within a constant of a short one's
(``tests/pipeline/extract/test_memory.py`` checks that).
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from vadpipe.errors import VideoDecodeError
from vadpipe.pipeline.benchmark import StageResult, make_synthetic_video, repeat_until
from vadpipe.pipeline.extract.config import ExtractConfig


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux ``/proc/self/clear_refs``);
    ``False`` where the system cannot (the peak then counts from the process start)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib(children: bool = False) -> float:
    """Peak resident memory in MiB: this process's since its start or the last
    :func:`reset_peak_rss` (``VmHWM``, else ``ru_maxrss``); with ``children``, the largest
    peak of the child processes waited for so far (e.g. decoding workers)."""
    if not children:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere


def bench_decode(video: str, backend: str) -> StageResult:
    """Frames/s of whole-video decoding passes with ``backend`` (opening included)."""
    from vadpipe.pipeline.extract.decode import open_video

    used = backend

    def one_pass() -> int:
        nonlocal used
        with open_video(video, backend=backend) as reader:
            n = sum(len(chunk) for chunk in reader.iter_chunks())
            used = reader.info.backend
        return n

    frames, seconds = repeat_until(one_pass)
    return StageResult(f"decode ({used})", frames, "frames", seconds)


def bench_preprocess(video: str, config: ExtractConfig, n_clips: int = 32) -> StageResult:
    """Clips/s of the workers' uint8 resize, in batches of ``config.batch_clips``."""
    from vadpipe.pipeline.extract.clips import iter_clips
    from vadpipe.pipeline.extract.decode import open_video
    from vadpipe.pipeline.extract.transforms import resize_clips

    clips = []
    with open_video(video) as reader:
        for clip in iter_clips(reader.iter_chunks(), config.clip):
            clips.append(clip)
            if len(clips) == n_clips:
                break
    batches = [torch.from_numpy(np.stack(clips[i:i + config.batch_clips]))
               for i in range(0, len(clips), config.batch_clips)]

    def one_pass() -> int:
        for batch in batches:
            resize_clips(batch, config.preset)
        return len(clips)

    n, seconds = repeat_until(one_pass)
    return StageResult("preprocess (resize)", n, "clips", seconds)


def bench_model(config: ExtractConfig, iters: int = 5, warmup: int = 2) -> StageResult:
    from vadpipe.extractors import get_backbone
    from vadpipe.pipeline.device import resolve_device
    from vadpipe.pipeline.extract.model import FeatureModel

    spec = get_backbone(config.backbone)
    config = config.with_preset(spec.preset)
    device = resolve_device(config.device)
    model = FeatureModel(spec, config, device)
    # resized 320x240 clips, as the workers deliver them: [n, 3, T, 256, 341]
    h, w = config.preset.resized_size(240, 320)
    x = torch.randint(0, 256, (config.batch_clips, 3, config.clip.length, h, w), dtype=torch.uint8)
    if device.type == "cuda":
        x = x.pin_memory()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        model([x])
    sync()
    t = time.perf_counter()
    for _ in range(iters):
        model([x])
    sync()
    return StageResult(f"model ({config.precision})", iters * config.batch_clips, "clips", time.perf_counter() - t)


def bench_end_to_end(video: str, config: ExtractConfig) -> StageResult:
    from vadpipe.pipeline.extract.runner import extract
    from vadpipe.pipeline.extract.sources import discover

    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        summary = extract(discover([video]), out, config, progress=False)
        dt = time.perf_counter() - t
    if summary.failed:
        raise RuntimeError(f"end-to-end run failed: {summary.failures}")
    return StageResult("end to end", summary.clips, "clips", dt)


def run_extract_bench(video: str | None, config: ExtractConfig, *, seconds: float, model_iters: int,
                      stages: tuple[str, ...] = ("decode", "preprocess", "model", "e2e"), echo=print) -> list[StageResult]:
    """Run the selected stages and print one line each; returns the results."""
    from vadpipe.extractors import get_backbone

    config = config.with_preset(get_backbone(config.backbone).preset)
    results: list[StageResult] = []
    with tempfile.TemporaryDirectory() as tmp:
        if video is None:
            video = str(make_synthetic_video(Path(tmp) / "synthetic_320x240.mp4", seconds=seconds))
            echo(f"video: generated 320x240 H.264, {seconds:g} s at 30 fps")
        else:
            echo(f"video: {video}")
        echo(f"device: {config.device}, precision {config.precision}, crops {config.crops}, "
             f"batch {config.batch_clips} clips, workers {config.workers}, torch threads {torch.get_num_threads()}")
        per_stage = reset_peak_rss()
        if not per_stage:
            echo("peak RSS: this system cannot reset it per stage; each value is the process's peak so far")

        def line(result: StageResult) -> str:
            text = f"{result.line()}   peak RSS {peak_rss_mib():.0f} MiB"
            if result.stage == "end to end" and config.workers:
                text += f" (largest child process, e.g. a worker: {peak_rss_mib(children=True):.0f} MiB)"
            return text

        for stage in stages:
            if stage == "decode":
                for backend in _decode_backends():
                    reset_peak_rss()
                    try:
                        results.append(bench_decode(video, backend))
                    except VideoDecodeError as e:
                        echo(f"decode ({backend}) failed: {e}")
                        continue
                    echo(line(results[-1]))
                continue
            reset_peak_rss()
            if stage == "preprocess":
                results.append(bench_preprocess(video, config))
            elif stage == "model":
                results.append(bench_model(config, iters=model_iters))
            elif stage == "e2e":
                results.append(bench_end_to_end(video, config))
            echo(line(results[-1]))
    return results


def _decode_backends() -> tuple[str, ...]:
    """decord and PyAV, and torchcodec's CPU decoder where it can run here."""
    from vadpipe.errors import ConfigError
    from vadpipe.pipeline.extract.decode import check_backend

    try:
        check_backend("torchcodec")
    except ConfigError:
        return ("decord", "pyav")
    return ("decord", "pyav", "torchcodec")


# ----------------------------------------------------------------------------- multi-device scaling


@dataclass
class ScalingResult:
    """One device against ``len(devices)`` devices on the same videos (``vadpipe bench
    extract --gpus``). Rates are end to end (clips / wall seconds of ``extract``, worker
    start-up and model builds included); per-device rates are clips over the seconds from
    that worker's model being ready to its exit."""

    devices: tuple[str, ...]
    clips: int
    single_seconds: float
    multi_seconds: float
    per_device: dict[str, dict]
    gpu_util: dict[str, dict[str, float | None]]

    @property
    def single_rate(self) -> float:
        return self.clips / self.single_seconds if self.single_seconds > 0 else float("nan")

    @property
    def multi_rate(self) -> float:
        return self.clips / self.multi_seconds if self.multi_seconds > 0 else float("nan")

    @property
    def efficiency(self) -> float:
        """N-device rate / (N × one-device rate): 1.0 is perfect scaling."""
        return self.multi_rate / (len(self.devices) * self.single_rate)


class _GpuSampler:
    """Samples the utilisation (%) of CUDA devices in a thread while a run goes on.

    Uses ``torch.cuda.utilization`` (needs the ``nvidia-ml-py`` package), else ``nvidia-smi``.
    :meth:`result` gives the mean per device, or ``None`` per device with :attr:`why` when
    nothing could be sampled (no CUDA device: CPU runs).
    """

    def __init__(self, devices: tuple[str, ...], interval_s: float = 0.25):
        indices = sorted({torch.device(d).index or 0 for d in devices if d.startswith("cuda")})
        self.indices = indices if torch.cuda.is_available() else []
        self.interval_s = interval_s
        self.samples: dict[int, list[float]] = {i: [] for i in self.indices}
        self.why = "" if self.indices else "n/a (no CUDA device)"
        self._stop = None
        self._thread = None

    def _read(self) -> dict[int, float]:
        try:
            return {i: float(torch.cuda.utilization(i)) for i in self.indices}
        except Exception as torch_error:  # pynvml missing, or NVML unusable
            import os
            import shutil
            import subprocess

            if not shutil.which("nvidia-smi"):
                raise RuntimeError(f"torch.cuda.utilization failed ({torch_error}) and nvidia-smi is not installed")
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            physical = [int(v) for v in visible.split(",") if v.strip().isdigit()] if visible else []
            out = subprocess.run(["nvidia-smi", "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
            by_index = {int(a): float(b) for a, b in (line.split(",") for line in out.strip().splitlines())}
            return {i: by_index[physical[i] if i < len(physical) else i] for i in self.indices}

    def __enter__(self) -> "_GpuSampler":
        import threading

        if not self.indices:
            return self
        self._stop = threading.Event()

        def loop() -> None:
            while not self._stop.is_set():
                try:
                    for i, v in self._read().items():
                        self.samples[i].append(v)
                except Exception as e:
                    self.why = f"n/a ({e})"
                    return
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, name="gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def result(self) -> dict[str, float | None]:
        return {f"cuda:{i}": (sum(v) / len(v) if v else None) for i, v in self.samples.items()}

    def text(self) -> str:
        means = self.result()
        if not means or all(v is None for v in means.values()):
            return self.why or "n/a"
        return ", ".join(f"{d} {v:.0f}%" if v is not None else f"{d} n/a" for d, v in means.items())


def _scaling_inputs(video_or_folder: str | None, tmp: Path, seconds: float, n_videos: int, echo) -> list:
    """The bench's videos: a folder's videos; ``n_videos`` links to one video; or
    ``n_videos`` generated 320x240 videos from 0.5× to 1.5× ``seconds`` long."""
    from vadpipe.pipeline.extract.sources import discover

    folder = tmp / "videos"
    folder.mkdir()
    if video_or_folder is not None and Path(video_or_folder).is_dir():
        jobs = discover([video_or_folder])
        echo(f"videos: {len(jobs)} from {video_or_folder}")
        return jobs
    if video_or_folder is not None:
        src = Path(video_or_folder).resolve()
        for k in range(n_videos):
            (folder / f"copy{k:03d}{src.suffix}").symlink_to(src)
        echo(f"videos: {n_videos} links to {video_or_folder}")
        return discover([folder])
    lengths = [seconds * (0.5 + k / max(1, n_videos - 1)) for k in range(n_videos)]
    for k, length in enumerate(lengths):
        make_synthetic_video(folder / f"synthetic{k:03d}.mp4", seconds=length, seed=k)
    echo(f"videos: {n_videos} generated 320x240 H.264 at 30 fps, {min(lengths):g}-{max(lengths):g} s "
         f"({sum(lengths):g} s in all)")
    return discover([folder])


def run_scaling_bench(video_or_folder: str | None, config: ExtractConfig, devices: tuple[str, ...], *,
                      seconds: float = 10.0, n_videos: int | None = None, echo=print) -> ScalingResult:
    """Time ``vadpipe extract`` on one device, then on all ``devices``, on the same videos.

    Args:
        video_or_folder: a folder of videos, one video (linked ``n_videos`` times), or
            ``None`` to generate ``n_videos`` videos around ``seconds`` long.
        config: extraction settings; ``workers`` and ``batch_clips`` are per device, the
            same in both runs. The one-device run uses ``devices[0]``.
        devices: the devices of the multi-device run (at least two).
        seconds: mean length of generated videos.
        n_videos: videos to generate or links to make (default ``4 × len(devices)``).

    Prints clips/s of both runs, per-device clips/s, the scaling efficiency (N-device
    rate / (N × one-device rate)) and the GPU utilisation ("n/a" without CUDA).
    """
    from vadpipe.errors import ConfigError
    from vadpipe.extractors import get_backbone
    from vadpipe.pipeline.extract.runner import extract

    devices = tuple(devices)
    if len(devices) < 2:
        raise ConfigError(f"the scaling bench needs at least two devices, got {devices}")
    config = config.with_preset(get_backbone(config.backbone).preset)
    n_videos = n_videos or 4 * len(devices)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        jobs = _scaling_inputs(video_or_folder, Path(tmp), seconds, n_videos, echo)
        echo(f"per device: precision {config.precision}, crops {config.crops}, batch {config.batch_clips} clips, "
             f"{config.workers} decoding worker(s); torch threads {torch.get_num_threads()} in this process")
        for name, cfg, used in (("1 device", replace(config, device=devices[0], devices=()), devices[:1]),
                                (f"{len(devices)} devices", replace(config, devices=devices), devices)):
            with _GpuSampler(used) as gpu:
                t = time.perf_counter()
                summary = extract(jobs, Path(tmp) / name.replace(" ", "_"), cfg, progress=False)
                dt = time.perf_counter() - t
            if summary.failed:
                raise RuntimeError(f"bench run on {name} failed: {summary.failures}")
            runs.append((summary, dt, gpu))
    (one, t1, gpu1), (many, tn, gpun) = runs
    if one.clips != many.clips:
        raise RuntimeError(f"the runs disagree: {one.clips} clips on one device, {many.clips} on {len(devices)}")
    result = ScalingResult(devices=devices, clips=many.clips, single_seconds=t1, multi_seconds=tn,
                           per_device=many.per_device, gpu_util={"single": gpu1.result(), "multi": gpun.result()})
    names = (f"1 device ({devices[0]}):", f"{len(devices)} devices ({','.join(devices)}):")
    width = max(len(n) for n in names)
    for name, rate, dt, gpu in ((names[0], result.single_rate, t1, gpu1), (names[1], result.multi_rate, tn, gpun)):
        echo(f"{name:<{width}} {rate:8.2f} clips/s   ({result.clips} clips in {dt:.2f} s)   GPU util {gpu.text()}")
    for label, st in many.per_device.items():
        rate = st["clips"] / st["active_s"] if st.get("active_s") else float("nan")
        echo(f"  {label:<12} {rate:8.2f} clips/s   ({st['clips']} clips, {st['videos']} videos in "
             f"{st['active_s']:.2f} s after a {st['startup_s']:.2f} s start-up)")
    echo(f"scaling efficiency {result.efficiency:.2f}  (= {result.multi_rate:.2f} / ({len(devices)} × "
         f"{result.single_rate:.2f}); 1.00 is perfect)")
    return result
