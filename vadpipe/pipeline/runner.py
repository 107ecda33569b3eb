"""Run a backbone over many videos: decode and preprocess in worker processes, batch the
crops of many clips (across videos) for the model, write atomic outputs and manifest rows.

Data flow::

    VideoJob ─ worker: decode → clips → resize (uint8) ─┐  (pinned memory, prefetch)
                                                       ├→ main, on the model's device: crop → normalise
    VideoJob ─ worker: ...                             ─┘    → model → [n, crops, D] → .npy (atomic) + row

A video that fails (corrupt, empty, too short, not a video ...) becomes a ``failed`` row with
the reason; the run goes on. Re-running skips videos whose ``ok`` rows match the current
settings and whose files are intact, unless ``force`` is set.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vadpipe import __version__
from vadpipe.errors import ConfigError, VadpipeError, VideoTooShortError
from vadpipe.extractors.registry import BackboneSpec, get_backbone
from vadpipe.manifests.atomic import TMP_MARKER, atomic_save_npy, atomic_write_text
from vadpipe.manifests.features import MANIFEST_NAME, FeatureRow, read_manifest, write_manifest
from vadpipe.pipeline.clips import iter_clips
from vadpipe.pipeline.config import ExtractConfig
from vadpipe.pipeline.decode import check_backend, open_video
from vadpipe.pipeline.sources import VideoJob
from vadpipe.pipeline.transforms import crop_clips, normalize_clips, resize_clips

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_TAG = "random"
#: Seed of ``--random-weights`` backbones, so that every engine and worker builds the same model.
RANDOM_WEIGHTS_SEED = 0


@dataclass
class ExtractSummary:
    """What a run did. ``exit_code`` is non-zero when any video failed.

    ``per_device`` is filled by the multi-device engine: for each worker (by label, e.g.
    ``cuda:1``) its ``videos``, ``clips``, ``startup_s`` (process start to model ready),
    ``active_s`` (model ready to the end of its work, or its death) and, when it stopped
    abnormally, ``exit`` (its exit code or error).
    """

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    clips: int = 0
    seconds: float = 0.0
    manifest: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)
    per_device: dict[str, dict] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def line(self) -> str:
        """One-line summary for the terminal."""
        rate = self.clips / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.ok} extracted, {self.skipped} already done, {self.failed} failed; "
            f"{self.clips} clips in {self.seconds:.1f} s ({rate:.1f} clips/s); manifest: {self.manifest}"
        )


# ----------------------------------------------------------------------------- workers


class _ClipStream(IterableDataset):
    """Yields, per video, resized uint8 clip batches ``[n, 3, T, h, w]`` then a ``done`` record.

    With several workers, worker ``w`` takes the videos ``w, w + W, w + 2W, ...``. The
    ``done`` record carries the video's :class:`VideoJob` (``"video"``), so a consumer that
    did not hand out the jobs itself (a multi-device worker) knows which video finished.
    """

    def __init__(self, jobs: list[VideoJob], config: ExtractConfig):
        self.jobs = jobs
        self.config = config

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        for index in range(wid, len(self.jobs), nworkers):
            yield from self._video(index, self.jobs[index])

    def _video(self, index: int, job: VideoJob) -> Iterator[dict]:
        cfg = self.config
        started = time.time()
        done = {"kind": "done", "job": index, "video": job, "started": started, "n_frames": 0, "fps": 0.0,
                "n_clips": 0, "decoder": "", "error": ""}
        try:
            with open_video(job.path, backend=cfg.decoder, fps=cfg.fps) as reader:
                done["fps"] = float(reader.info.fps)
                pending: list[np.ndarray] = []
                start = 0
                for clip in iter_clips(reader.iter_chunks(), cfg.clip):
                    pending.append(clip)
                    if len(pending) == cfg.batch_clips:
                        yield self._batch(index, start, pending)
                        start += len(pending)
                        pending = []
                if pending:
                    yield self._batch(index, start, pending)
                    start += len(pending)
                done["n_frames"] = reader.frames_read
                done["n_clips"] = start
                info = reader.info  # after decoding: auto may have switched backend part-way
                done["decoder"] = info.backend + (f" (fallback: {info.fallback_reason})" if info.fallback_reason else "")
            if start == 0:
                raise VideoTooShortError(
                    f"{job.path}: {done['n_frames']} frame(s) decoded, fewer than one "
                    f"{cfg.clip.length}-frame clip; use --tail pad to keep short videos"
                )
        except VadpipeError as e:
            done["error"] = f"{type(e).__name__}: {e}"
        except Exception as e:  # a bug or an unexpected library failure: keep the batch going
            log.debug("unexpected failure on %s\n%s", job.path, traceback.format_exc())
            done["error"] = f"unexpected {type(e).__name__}: {e} (please report this)"
        yield done

    def _batch(self, index: int, start: int, clips: list[np.ndarray]) -> dict:
        frames = torch.from_numpy(np.stack(clips))  # [n, T, H, W, 3]
        data = resize_clips(frames, self.config.preset)  # [n, 3, T, h, w]
        return {"kind": "clips", "job": index, "start": start, "data": data}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------- model side


def resolve_device(name: str) -> torch.device:
    """``auto`` → ``cuda`` when available, else ``cpu``; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev


def default_workers(device: torch.device, per_device: int = 1) -> int:
    """Decoding worker processes per model: one on CPU (the model needs the cores); on CUDA
    up to 8, sharing the machine's cores among ``per_device`` models."""
    if device.type == "cuda":
        return min(8, max(1, ((os.cpu_count() or 2) - per_device) // per_device))
    return 1


def default_batch_clips(device: torch.device) -> int:
    """Clips per forward pass: 16 on CUDA; 2 on CPU, where larger batches only add memory
    traffic (measured on 2 cores: 3.7 s/clip at 1-2 clips, 4.1 s/clip at 8, 10 crops)."""
    return 16 if device.type == "cuda" else 2


class FeatureModel:
    """A backbone on a device with a precision policy: resized uint8 clips in, float32 features out."""

    def __init__(self, spec: BackboneSpec, config: ExtractConfig, device: torch.device):
        self.spec = spec
        self.config = config
        self.device = device
        if config.random_weights:  # the same random weights in every process and engine
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = spec.build(False)
        else:
            model = spec.build(True)
        self.weights_sha256 = (
            RANDOM_WEIGHTS_TAG if config.random_weights else str(getattr(model, "weights_sha256", "") or "")
        )
        self.channels_last = config.channels_last and device.type == "cuda"
        model = model.eval().to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model
        precision = config.precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if device.type == "cuda":
            tf32 = precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cudnn.benchmark = True

    @torch.inference_mode()
    def __call__(self, resized: list[torch.Tensor]) -> torch.Tensor:
        """Features of resized uint8 clips.

        Args:
            resized: batches ``[n_i, 3, T, h_i, w_i]`` from :func:`resize_clips` (frame
                sizes may differ between batches: they can come from different videos).

        Returns:
            float32 ``[sum n_i, crops, D]`` (``[sum n_i, nodes, D]`` for node backbones), in
            order, on the model's device. Nothing here
            waits for the device: the caller copies features to the host only when a video
            is complete, so decoding, transfers and kernel launches of the next batch
            overlap the model's work.
        """
        crops = torch.cat([
            crop_clips(r.to(self.device, non_blocking=True), self.config.preset, self.config.crops) for r in resized
        ])  # [N, crops, 3, T, S, S]
        n, k = crops.shape[:2]
        x = crops.flatten(0, 1)  # [N*crops, 3, T, S, S]
        x = normalize_clips(x, self.config.preset, dtype=self.autocast_dtype or torch.float32)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        ctx = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            feats = self.model(x)
        feats = feats.float().reshape(n, k, *feats.shape[1:])  # [N, crops, D] or [N, crops, nodes, D]
        return feats[:, 0] if self.spec.nodes > 1 else feats  # node backbones run one crop


# ----------------------------------------------------------------------------- the run


def output_path(job: VideoJob, config: ExtractConfig, spec: BackboneSpec) -> str:
    """Manifest ``feature_path`` (relative to the output folder) for ``job``."""
    if config.layout == "per-crop":
        return f"{job.rel_name}__{{k}}.npy"
    return f"{job.rel_name}_{spec.file_suffix or spec.name}.npy"


def _is_intact(row: FeatureRow, root: Path) -> bool:
    """True when every feature file of an ``ok`` row exists and has the recorded shape."""
    want = (row.n_clips, row.crops, row.dim) if row.layout == "single" else (row.n_clips, row.dim)
    for f in row.feature_files(root):
        try:
            arr = np.load(f, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError):
            return False
        if arr.shape != want or arr.dtype != np.float32:
            return False
    return True


def _remove_leftovers(root: Path) -> None:
    """Delete temporary files a killed run left behind (never complete outputs)."""
    if root.is_dir():
        for f in root.rglob(f"*{TMP_MARKER}*"):
            with contextlib.suppress(OSError):
                f.unlink()


@dataclass
class RunContext:
    """What every engine needs to turn finished videos into files and manifest rows.

    Only the process that owns the context writes ``features.csv``: engines send each
    finished video's row to :meth:`record` (in the driver), so rows are never lost or
    duplicated however many workers produce them.
    """

    root: Path
    config: ExtractConfig
    spec: BackboneSpec
    config_hash: str
    weights_sha256: str
    rows: dict[str, FeatureRow]
    manifest: Path
    summary: ExtractSummary

    def record(self, row: FeatureRow) -> None:
        """Store ``row`` (keyed by its video), count it, and rewrite the manifest atomically."""
        self.rows[row.video] = row
        if row.status == "ok":
            self.summary.ok += 1
        else:
            self.summary.failed += 1
            self.summary.failures.append((row.video, row.error))
        self.write()

    def write(self) -> None:
        """Rewrite ``features.csv`` from the rows held now (atomic)."""
        write_manifest(self.manifest, list(self.rows.values()))

    def writer(self) -> WriteContext:
        """The picklable part of this context, for :func:`finish_video` in worker processes."""
        return WriteContext(root=self.root, config=self.config, spec=self.spec,
                            config_hash=self.config_hash, weights_sha256=self.weights_sha256)


@dataclass
class WriteContext:
    """The part of a :class:`RunContext` that :func:`finish_video` needs, and that a worker
    process can receive: where and how to write one video's features.

    It pickles the backbone by name (with the module that registered it, so plugin
    backbones such as the tests' are registered again in a spawned process), never the
    builder itself.
    """

    root: Path
    config: ExtractConfig
    spec: BackboneSpec
    config_hash: str
    weights_sha256: str

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        spec = state.pop("spec")
        state["spec_ref"] = (spec.name, getattr(spec.build, "__module__", None))
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        name, module = state.pop("spec_ref")
        self.__dict__.update(state)
        self.spec = backbone_by_name(name, module)


def backbone_by_name(name: str, module: str | None = None) -> BackboneSpec:
    """The registered backbone ``name``, importing ``module`` first when it is not loaded yet
    (the module that registers it, for backbones outside vadpipe).

    Raises:
        ConfigError: ``module`` cannot be imported or ``name`` is not registered.
    """
    if module and module not in sys.modules and module != "__main__":
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"backbone {name!r} is registered by {module!r}, which cannot be imported: {e}") from e
    return get_backbone(name)


ENGINES = ("local", "ray")


def extract(
    jobs: list[VideoJob],
    out_dir: str | os.PathLike,
    config: ExtractConfig = ExtractConfig(),
    *,
    force: bool = False,
    progress: bool = True,
) -> ExtractSummary:
    """Extract features of ``jobs`` into ``out_dir`` and record them in ``features.csv``.

    Args:
        jobs: videos to process (see :func:`vadpipe.pipeline.sources.discover`).
        out_dir: output folder; holds the feature files, ``features.csv`` and one
            ``extract-<time>.json`` per run with the full configuration.
        config: extraction settings. ``config.devices`` with more than one entry runs one
            worker process per device (:mod:`vadpipe.pipeline.multi`); ``config.engine ==
            "ray"`` runs the job on Ray (:mod:`vadpipe.pipeline.ray_engine`).
        force: recompute videos that an earlier run already finished.
        progress: show a progress bar on stderr.

    Returns:
        An :class:`ExtractSummary`; its ``exit_code`` is 1 when any video failed.

    Raises:
        WeightsNotFoundError: the backbone's weights are not installed.
        ConfigError: invalid settings or device.
    """
    t0 = time.time()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    spec = get_backbone(config.backbone)
    if spec.nodes > 1 and config.crops != 1:
        raise ConfigError(f"backbone {spec.name!r} yields {spec.nodes} patch nodes per clip from one view; use --crops 1")
    if config.engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {config.engine!r}")
    if config.engine == "local":  # Ray decodes on the cluster's nodes, which may differ from this one
        check_backend(config.decoder)
    config = config.with_preset(spec.preset)
    distributed = config.engine != "local" or len(config.devices) > 1
    # Distributed engines build their models in their workers; the driver only needs the
    # weights' sha256 (for the config hash), which a CPU build gives without a GPU.
    device = torch.device("cpu") if distributed else resolve_device(config.device)
    model = FeatureModel(spec, config, device)
    if distributed:
        weights_sha256 = model.weights_sha256
        del model
        model = None
    else:
        weights_sha256 = model.weights_sha256
    config_hash = config.feature_hash(weights_sha256)
    manifest = root / MANIFEST_NAME
    _remove_leftovers(root)

    rows: dict[str, FeatureRow] = {}
    if manifest.exists():
        rows = {r.video: r for r in read_manifest(manifest)}
    summary = ExtractSummary(manifest=str(manifest))
    todo: list[VideoJob] = []
    for job in jobs:
        old = rows.get(job.path)
        if (not force and old is not None and old.status == "ok"
                and old.config_hash == config_hash and _is_intact(old, root)):
            summary.skipped += 1
            continue
        todo.append(job)
        rows[job.path] = FeatureRow(video=job.path, backbone=spec.name, status="skipped",
                                    error="not processed yet (run interrupted)")

    run_record = {
        "vadpipe_version": __version__,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "config_hash": config_hash,
        "weights_sha256": weights_sha256,
        "weights": {"name": spec.weights.name, "source": spec.weights.source, "license": spec.weights.license},
        "device": str(device) if model is not None else ",".join(config.devices) or config.device,
        "engine": config.engine,
        "torch": torch.__version__,
        "inputs": len(jobs),
        "to_process": len(todo),
    }
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    run_file = root / f"extract-{stamp}.json"
    atomic_write_text(run_file, json.dumps(run_record, indent=2))

    ctx = RunContext(root=root, config=config, spec=spec, config_hash=config_hash, weights_sha256=weights_sha256,
                     rows=rows, manifest=manifest, summary=summary)
    if todo:
        ctx.write()
        try:
            if config.engine == "ray":
                from vadpipe.pipeline.ray_engine import run_ray

                run_ray(ctx, todo, progress=progress)
            elif model is None:
                from vadpipe.pipeline.multi import run_multi

                run_multi(ctx, todo, progress=progress)
            else:
                _run(ctx, todo, model, progress)
        finally:
            ctx.write()
    summary.seconds = time.time() - t0
    run_record.update(finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                      ok=summary.ok, failed=summary.failed, skipped=summary.skipped,
                      clips=summary.clips, seconds=round(summary.seconds, 3))
    if summary.per_device:
        run_record["per_device"] = summary.per_device
    atomic_write_text(run_file, json.dumps(run_record, indent=2))
    return summary


def _run(ctx: RunContext, todo: list[VideoJob], model: FeatureModel, progress: bool) -> None:
    """The single-process engine: one model, ``config.workers`` decoding processes."""
    from tqdm.auto import tqdm

    config, summary = ctx.config, ctx.summary
    loader = DataLoader(
        _ClipStream(todo, config),
        batch_size=None,
        num_workers=config.workers,
        pin_memory=model.device.type == "cuda",
        worker_init_fn=_worker_init if config.workers else None,
        prefetch_factor=4 if config.workers else None,
        multiprocessing_context="spawn" if config.workers and model.device.type == "cuda" else None,
    )
    t_start = time.time()
    bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True)
    try:
        for item, parts in finished_videos(loader, model, config.batch_clips):
            summary.clips += sum(len(f) for _, f in parts)
            ctx.record(finish_video(ctx, todo[item["job"]], item, parts))
            bar.update(1)
            elapsed = time.time() - t_start
            bar.set_postfix(clips_per_s=f"{summary.clips / max(elapsed, 1e-9):.1f}", failed=summary.failed)
    finally:
        bar.close()


def finished_videos(items: Iterable[dict], model: FeatureModel,
                    batch_clips: int) -> Iterator[tuple[dict, list[tuple[int, torch.Tensor]]]]:
    """Run ``model`` on the clip batches of :class:`_ClipStream` items, batching clips across
    videos, and yield each video as soon as its features are complete.

    A forward pass runs when ``batch_clips`` clips are pending, or early when a video's
    ``done`` record arrives while some of its clips are still pending. Items of other kinds
    (e.g. the idle heartbeats of a queue-fed stream) are skipped.

    Yields:
        ``(done record, parts)``: ``parts`` are ``(first clip index, features [n, crops, D])``
        chunks on the model's device, in any order (empty when decoding failed early).
    """
    parts: dict[int, list[tuple[int, torch.Tensor]]] = {}
    pending: list[dict] = []
    n_pending = 0

    def flush() -> None:
        nonlocal pending, n_pending
        feats = model([p["data"] for p in pending])
        offset = 0
        for p in pending:
            n = p["data"].shape[0]
            parts.setdefault(p["job"], []).append((p["start"], feats[offset:offset + n]))
            offset += n
        pending, n_pending = [], 0

    for item in items:
        kind = item["kind"]
        if kind == "clips":
            pending.append(item)
            n_pending += item["data"].shape[0]
            if n_pending >= batch_clips:
                flush()
            continue
        if kind != "done":
            continue
        if any(p["job"] == item["job"] for p in pending):
            flush()
        yield item, parts.pop(item["job"], [])


def finish_video(ctx: RunContext | WriteContext, job: VideoJob, item: dict,
                 parts: list[tuple[int, torch.Tensor]]) -> FeatureRow:
    """Write one video's features (atomically) and return its manifest row.

    Args:
        ctx: the run, or its picklable :class:`WriteContext` (in a worker process).
        job: the video.
        item: its ``done`` record from :class:`_ClipStream` (frames, fps, decoder, error).
        parts: ``(first clip index, features [n, crops, D])`` chunks in any order.
    """
    config, spec = ctx.config, ctx.spec
    row = FeatureRow(
        video=job.path, backbone=spec.name, weights_sha256=ctx.weights_sha256,
        n_frames=item["n_frames"], fps=round(item["fps"], 6), crops=max(config.crops, spec.nodes),
        dim=spec.feature_dim, layout=config.layout, decoder=item["decoder"], config_hash=ctx.config_hash,
    )
    if item["error"]:
        row.status, row.error = "failed", item["error"]
        row.seconds = round(time.time() - item["started"], 3)
        return row
    parts = sorted(parts, key=lambda p: p[0])
    feats = torch.cat([torch.as_tensor(p[1]) for p in parts]).cpu().numpy()  # float32 [n_clips, crops or nodes, D]
    row.n_clips = feats.shape[0]
    row.feature_path = output_path(job, config, spec)
    if config.layout == "per-crop":
        for k in range(config.crops):
            atomic_save_npy(ctx.root / row.feature_path.format(k=k), np.ascontiguousarray(feats[:, k]))
    else:
        atomic_save_npy(ctx.root / row.feature_path, feats)
    row.status = "ok"
    row.seconds = round(time.time() - item["started"], 3)
    return row
