"""vadpipe's public Python API: the functions the command line runs, for notebooks and services.

>>> import vadpipe
>>> summary = vadpipe.extract(["videos/"], "features", recipe="rtfm-i3d-r50-10crop")   # doctest: +SKIP
>>> run = vadpipe.train("train.csv", head="rtfm", out="runs/rtfm")                       # doctest: +SKIP
>>> metrics = vadpipe.evaluate(run.best_path, "test.csv", gt="ucf:Temporal_Anomaly_Annotation.txt")  # doctest: +SKIP
>>> detector = vadpipe.Detector(run.best_path)                                           # doctest: +SKIP
>>> scores = detector.score(frames)        # frames: uint8 [T, H, W, 3]                  # doctest: +SKIP

Every ``vadpipe extract`` / ``train`` / ``eval`` / ``score`` / ``export`` command calls exactly one of these
functions; its options are the keyword arguments (``docs/api.md`` lists them with runnable
examples). Errors are the typed :mod:`vadpipe.errors` exceptions the command line prints in
one line.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np

from vadpipe.errors import ConfigError, VadpipeError
from vadpipe.pipeline.export.runtime import OnnxDetector  # noqa: F401  (public; needs no torch)

if TYPE_CHECKING:  # torch and the pipelines are imported when a function runs
    import torch
    from torch import nn

    from vadpipe.pipeline.export.build import ExportResult
    from vadpipe.pipeline.extract.runner import ExtractSummary
    from vadpipe.pipeline.score.batch import ScoreSummary
    from vadpipe.pipeline.train.apply import LoadedHead
    from vadpipe.pipeline.train.loop import TrainResult
    from vadpipe.pipeline.train.metrics import EvalResult

__all__ = ["extract", "load_backbone", "train", "evaluate", "score", "export", "Detector", "OnnxDetector", "EvalRun",
           "DEFAULT_WEIGHTS"]

PathLike = str | os.PathLike
#: ``load_backbone(name, weights=DEFAULT_WEIGHTS)``: the backbone's published weights.
DEFAULT_WEIGHTS = "DEFAULT"


def extract(
    inputs: PathLike | Sequence[PathLike],
    out: PathLike = "features",
    *,
    recipe: str | None = None,
    backbone: str | None = None,
    crops: int | None = None,
    crop_order: str | None = None,
    resize: int | tuple[int, int] | None = None,
    clip_len: int | None = None,
    stride: int | None = None,
    tail: str | None = None,
    fps: float | None = None,
    layout: str | None = None,
    precision: str = "fp32",
    device: str = "auto",
    batch_clips: int | None = None,
    workers: int | None = None,
    decoder: str = "auto",
    channels_last: bool = True,
    devices: Sequence[str] = (),
    engine: str = "local",
    ray_address: str | None = None,
    random_weights: bool = False,
    force: bool = False,
    progress: bool = False,
) -> ExtractSummary:
    """Extract features of videos (folders, files or CSV lists) into ``out`` (``vadpipe extract``).

    Writes one ``.npy`` per video (``[n_clips, crops, D]``, or per-crop ``[n_clips, D]``) and
    ``out/features.csv``; finished videos are skipped unless ``force``. ``recipe`` names a
    public feature set's recipe (``docs/recipes.md``); the other settings override it.
    ``batch_clips`` / ``workers`` default to the device's (16 / up to 8 on CUDA, 2 / 1 on CPU).

    Returns:
        The run's summary (``ok``, ``failures``, ``exit_code``, ``line()``).

    Raises:
        ConfigError: bad settings; VadpipeError: no videos found.
    """
    import torch

    from vadpipe.extractors import get_backbone
    from vadpipe.extractors.presets import recipe_backbone
    from vadpipe.pipeline.device import default_batch_clips, default_workers, resolve_device
    from vadpipe.pipeline.extract.config import recipe_config
    from vadpipe.pipeline.extract.runner import extract as run_extract
    from vadpipe.pipeline.extract.sources import discover

    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    backbone = recipe_backbone(recipe, backbone)
    spec = get_backbone(backbone)
    devices = tuple(devices)
    if engine == "ray":  # the cluster's devices, not the driver's: no local CUDA check
        dev = torch.device("cuda" if (devices or (device,))[0].startswith("cuda") else "cpu")
    else:
        dev = resolve_device(devices[0] if devices else device)
    workers = default_workers(dev, per_device=len(devices) or 1) if workers is None else workers
    batch_clips = default_batch_clips(dev) if batch_clips is None else batch_clips
    config = recipe_config(
        recipe, backbone=backbone, backbone_preset=spec.preset, backbone_clip_len=spec.clip_len,
        crops=int(crops) if crops else None, crop_order=crop_order, resize=resize, clip_len=clip_len, stride=stride,
        tail=tail, layout=layout, fps=fps, precision=precision, device=device, batch_clips=batch_clips,
        workers=workers, decoder=decoder, channels_last=channels_last, random_weights=random_weights,
        devices=devices, engine=engine, ray_address=ray_address,
    )
    jobs = discover([str(i) for i in inputs])
    if not jobs:
        raise VadpipeError(f"no videos found in {', '.join(map(str, inputs))}")
    return run_extract(jobs, out, config, force=force, progress=progress)


def load_backbone(name: str, *, weights: str | None = DEFAULT_WEIGHTS) -> nn.Module:
    """A registered backbone (torchvision style): ``weights=DEFAULT_WEIGHTS`` loads its published
    weights (installed with ``vadpipe weights``; a missing file is a clear error), ``weights=None``
    builds it with random weights. In eval mode; ``model.preset`` is the
    :class:`~vadpipe.extractors.presets.ClipPreset` its weights expect, and the module maps float
    ``[B, 3, T, S, S]`` clips to ``[B, D]`` (``[B, nodes, D]`` for patch-node backbones).

    Raises:
        ConfigError: an unknown backbone or ``weights`` value; WeightsNotFoundError: not installed.
    """
    from vadpipe.extractors import get_backbone

    spec = get_backbone(name)
    if weights not in (DEFAULT_WEIGHTS, None):
        raise ConfigError(f"weights must be {DEFAULT_WEIGHTS!r} (the published weights) or None (random), "
                          f"got {weights!r}")
    model = spec.build(weights=spec.weights if weights == DEFAULT_WEIGHTS else None)
    model.preset = spec.preset
    return model.eval()


def train(
    dataset: PathLike,
    *,
    head: str = "rtfm",
    out: PathLike = "runs/train",
    val: PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
    preset: str | None = None,
    protocol: str | None = None,
    refine: str | None = None,
    refine_settings: Mapping[str, Any] | None = None,
    steps: int | None = None,
    eval_every: int = 50,
    patience: int | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: PathLike | None = None,
    cache: bool = False,
    backbone: str | None = None,
    clip_len: int = 16,
    select_on_test: PathLike | None = None,
    gt: str | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train an anomaly head on a dataset CSV (``vadpipe train``).

    ``protocol="holdout"`` (default without ``preset``): validation videos (``val``, the rows
    with ``split=val``, or 10 % held out) choose ``best.pt``; ``"paper"`` (default with a
    ``preset``): the full training split, the last step kept. ``select_on_test`` (with ``gt``)
    chooses the checkpoint on that TEST set, as the published code does (optimistic).
    ``settings`` are head settings (``{"lr": 1e-4}``); ``refine`` wraps the head in a refinement
    head (MCR) whose own settings are ``refine_settings``.

    Returns:
        ``best_path``, ``last_path``, ``best_step``, ``best_metric``, ``history`` …

    Raises:
        ConfigError / ManifestError / FeatureLoadError: bad settings or data, before training.
    """
    from vadpipe.manifests.atomic import ensure_writable_dir
    from vadpipe.manifests.datasets import check_labels, dataset_root, read_dataset, split_train_val
    from vadpipe.pipeline.device import resolve_device
    from vadpipe.pipeline.train import apply as scoring
    from vadpipe.pipeline.train.loop import PROTOCOLS, TrainConfig
    from vadpipe.pipeline.train.loop import train as run_train

    protocol = protocol or ("paper" if preset else "holdout")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {sorted(PROTOCOLS)}, got {protocol!r}")
    ensure_writable_dir(out)
    rows = read_dataset(dataset)
    check_labels(rows, f"dataset {dataset}")
    root = dataset_root(dataset)
    if protocol == "paper":
        if val:
            raise VadpipeError("--protocol paper trains on the full training split: drop --val "
                               "(or use --protocol holdout)")
        train_rows, val_rows = rows, []
    elif val:
        train_rows, val_rows = [r for r in rows if r.split != "val"], read_dataset(val)
        if dataset_root(val) != root:
            raise VadpipeError("--train and --val must sit in the same folder (feature paths are relative to it)")
    elif any(r.split == "val" for r in rows):
        train_rows, val_rows = [r for r in rows if r.split != "val"], [r for r in rows if r.split == "val"]
    else:
        train_rows, val_rows = split_train_val(rows, val_fraction=0.1, seed=seed)
    test_metric = None
    if select_on_test:
        if not gt:
            raise VadpipeError("--select-on-test needs --gt KIND:PATH")
        test_metric = scoring.test_set_auc(select_on_test, gt, resolve_device(device))
    from vadpipe.heads.base import get_head

    head_settings = {**get_head(head).preset(preset), **dict(settings or {})}
    if refine:  # the refinement module is the trained head; the base head's settings go inside it
        head_settings = {"base_head": head, "base_overrides": head_settings, **dict(refine_settings or {})}
        head = refine
    config = TrainConfig(head=head, overrides=head_settings, steps=steps, eval_every=eval_every, patience=patience,
                         seed=seed, device=device, selection="test" if select_on_test else "val", cache=cache,
                         train_split=PROTOCOLS[protocol])
    meta = _feature_meta(train_rows + val_rows, root, backbone, clip_len)
    return run_train(train_rows, val_rows, out, config, root=root, resume=resume, test_metric=test_metric,
                     feature_meta=meta, progress=progress)


def _feature_meta(rows, root, backbone: str | None, clip_len: int) -> dict:
    """What made the training features: the recorded extraction recipe when the files come
    from `vadpipe extract` (so `vadpipe score` can re-create them), else what the user says."""
    from vadpipe.manifests.provenance import extraction_of

    files = [Path(r.crop_path(0, root or ".")) for r in rows]
    recipe = extraction_of(files)
    if recipe is None:
        return {"backbone": backbone or "unknown", "clip_len": clip_len}
    if backbone and backbone != recipe["backbone"]:
        raise VadpipeError(f"--backbone {backbone}, but the features were extracted with {recipe['backbone']} "
                           "(features.csv beside them says so)")
    return {"backbone": recipe["backbone"], "clip_len": recipe["config"]["clip"]["length"], "extract": recipe}


@dataclass
class EvalRun:
    """Outcome of :func:`evaluate`: where the scores went and, with GT, the metrics."""

    scores_csv: Path
    n_videos: int
    n_scores: int
    segments: bool
    metrics: EvalResult | None
    selection: str
    comparison: Any = None


def evaluate(
    checkpoint: PathLike,
    dataset: PathLike,
    *,
    gt: str | None = None,
    out: PathLike = "runs/eval",
    convention: str | None = None,
    device: str = "auto",
    compare: PathLike | None = None,
    resamples: int = 1000,
    strict_gt: bool = False,
    scores_per: str = "auto",
    frames: PathLike | None = None,
) -> EvalRun:
    """Score a dataset CSV with a trained head and, with ``gt`` (``"KIND:PATH"``), report
    frame-level ROC-AUC, both APs, FAR and per-class AUC (``vadpipe eval``; without ``gt``:
    ``vadpipe apply``). Writes ``out/scores.csv`` (and ``frame_scores.csv``, ``compare.json``).

    Raises:
        CheckpointError, FeatureLoadError, EvaluationError: with what to do.
    """
    from vadpipe.heads.data import check_dataset_features
    from vadpipe.manifests.atomic import ensure_writable_dir
    from vadpipe.manifests.datasets import dataset_root, read_dataset
    from vadpipe.pipeline.device import resolve_device
    from vadpipe.pipeline.train import apply as scoring

    out = ensure_writable_dir(out)
    dev = resolve_device(device)
    loaded = scoring.load_head(checkpoint, dev)
    rows = read_dataset(dataset)
    root = dataset_root(dataset)
    check_dataset_features(rows, root, what=f"dataset {dataset}")
    segments = None
    if scoring.scores_are_segments(rows, root, scores_per):
        segments = scoring.frame_counts_for(rows, root, frames)
        if gt:
            scoring.require_frame_counts([r.name for r in rows], segments)
    scores = scoring.score_rows(loaded, rows, root, dev)
    scoring.write_scores_csv(out / "scores.csv", rows, scores, segments=segments)
    result = EvalRun(out / "scores.csv", len(rows), sum(s.size for s in scores.values()), segments is not None,
                     None, loaded.selection)
    if gt:
        result.metrics = scoring.evaluate_scores(scores, gt, convention=convention,
                                                 frame_scores_csv=out / "frame_scores.csv", strict_gt=strict_gt,
                                                 segments=segments)
    if compare:
        import dataclasses
        import json

        from vadpipe.manifests.atomic import atomic_write_text

        other = scoring.read_scores_csv(compare)
        result.comparison = scoring.compare_scores(scores, other, gt, convention=convention, resamples=resamples,
                                                   segments=segments)
        atomic_write_text(out / "compare.json", json.dumps({"this": str(checkpoint), "other": str(compare),
                                                           **dataclasses.asdict(result.comparison)}, indent=2) + "\n")
    return result


def score(
    videos: PathLike | Sequence[PathLike] | np.ndarray,
    checkpoint: PathLike | LoadedHead,
    out: PathLike = "runs/score",
    **options: Any,
) -> ScoreSummary | np.ndarray:
    """Anomaly scores of raw videos with a trained head (``vadpipe score``).

    ``videos``: files, folders or CSV lists → the batch path (per-video ``scores.csv``, events,
    plots under ``out``; options: ``threshold``, ``min_gap``, ``min_duration``, ``gt``,
    ``gt_convention``, ``plots``, ``report``, ``backbone``, ``features_dir``, ``device``,
    ``batch_clips``, ``workers``, ``decoder``, ``force``, ``progress``) and its
    :class:`~vadpipe.pipeline.score.batch.ScoreSummary`. An in-memory uint8 array
    ``[T, H, W, 3]`` (RGB) → its clip scores ``[n_clips]`` (:meth:`Detector.score`; options:
    ``device``, ``backbone``, ``threshold``, ``window``, ``random_weights``).
    """
    if isinstance(videos, np.ndarray):
        return Detector(checkpoint, device=options.pop("device", "auto"), **options).score(videos)
    from vadpipe.pipeline.device import default_batch_clips, default_workers, resolve_device
    from vadpipe.pipeline.extract.sources import discover
    from vadpipe.pipeline.score.batch import ScoreOptions, head_for_run, score_videos

    inputs = [videos] if isinstance(videos, (str, os.PathLike)) else list(videos)
    jobs = discover([str(v) for v in inputs])
    if not jobs:
        raise VadpipeError(f"no videos found in {', '.join(map(str, inputs))}")
    device = options.pop("device", "auto")
    dev = resolve_device(device)
    loaded = head_for_run(checkpoint, dev)
    workers, batch_clips = options.pop("workers", None), options.pop("batch_clips", None)
    speed = {"device": device, "decoder": options.pop("decoder", "auto"),
             "random_weights": options.pop("random_weights", False),
             "workers": default_workers(dev) if workers is None else workers,
             "batch_clips": default_batch_clips(dev) if batch_clips is None else batch_clips}
    run = {k: options.pop(k) for k in ("backbone", "features_dir", "force", "progress", "echo") if k in options}
    return score_videos(jobs, loaded, out, options=ScoreOptions(**options), speed=speed, **run)


def export(checkpoint: PathLike | LoadedHead, out: PathLike, *, format: str = "onnx", **options: Any) -> ExportResult:
    """Write a trained detector (backbone + preprocessing + head + threshold) to one ONNX or
    TorchScript file, checked against PyTorch (``vadpipe export``; ``docs/export.md``).
    Options: ``threshold``, ``backbone``, ``random_weights``. Run an ONNX file with
    :class:`OnnxDetector` (onnxruntime, no torch) or ``vadpipe score --model``.

    Raises:
        ExportError: an unknown format, SA-CRF (not exportable), or a failed parity check.
    """
    from vadpipe.pipeline.export.build import export_detector

    return export_detector(checkpoint, out, format=format, **options)


class Detector:
    """Backbone + head + threshold in one object, for in-memory frames and streams.

    The backbone and preprocessing are those the checkpoint records (the features it was
    trained on), as ``vadpipe score`` uses them::

        detector = Detector("runs/rtfm/best.pt")
        scores = detector.score(frames)            # uint8 [T, H, W, 3] -> [n_clips]
        for clip in clips:                         # uint8 [clip_len, H, W, 3] each
            s = detector.score_clip(clip)          # one score a clip (streaming)

    ``score_clip`` keeps the last ``window`` clips' features: a causal head's score is final,
    another head's is provisional (it would change with later clips), as ``score --stream``.

    Raises:
        CheckpointError, WeightsNotFoundError, ConfigError: from the checkpoint or backbone.
    """

    def __init__(self, checkpoint: PathLike | LoadedHead, *, device: str = "auto", backbone: str | None = None,
                 threshold: float | None = None, window: int = 64, random_weights: bool = False) -> None:
        from vadpipe.pipeline.device import resolve_device
        from vadpipe.pipeline.score.batch import ScoreOptions, head_for_run, resolve_threshold
        from vadpipe.pipeline.score.stream import recipe_model

        self.device: torch.device = resolve_device(device)
        self.loaded = head_for_run(checkpoint, self.device)
        self.config, self.model = recipe_model(self.loaded, self.device, backbone=backbone,
                                               speed={"device": device, "random_weights": random_weights})
        self.threshold, self.threshold_source = resolve_threshold(ScoreOptions(threshold=threshold), self.loaded)
        context = self.loaded.head.causal_context
        self.causal = context is not None
        self._recent: deque[np.ndarray] = deque(maxlen=context if self.causal else window)

    @property
    def clip_len(self) -> int:
        return self.config.clip.length

    def features(self, clips: Iterable[np.ndarray]) -> np.ndarray:
        """Features ``[n_clips, crops, D]`` of uint8 clips ``[clip_len, H, W, 3]``."""
        from vadpipe.pipeline.score.stream import clip_features

        out = []
        for clip in clips:
            clip = _frames(clip, "clip")
            if clip.shape[0] != self.clip_len:
                raise ConfigError(f"a clip has {self.clip_len} frames, got {clip.shape[0]}")
            out.append(clip_features(self.model, clip))
        return np.stack(out) if out else np.zeros((0, self.config.crops, 0), np.float32)

    def score(self, frames: np.ndarray) -> np.ndarray:
        """Clip scores ``[n_clips]`` (float64) of a whole video in memory, uint8 ``[T, H, W, 3]`` RGB,
        cut into clips by the checkpoint's clip rule (length, stride, tail)."""
        from vadpipe.pipeline.extract.clips import iter_clips
        from vadpipe.pipeline.score.batch import score_clip_features

        frames = _frames(frames, "frames")
        feats = self.features(iter_clips(iter([frames]), self.config.clip))
        if not feats.shape[0]:
            raise ConfigError(f"{frames.shape[0]} frames make no complete {self.clip_len}-frame clip")
        return score_clip_features(self.loaded, feats, self.device)

    def score_clip(self, clip: np.ndarray) -> float:
        """Score of the newest clip (uint8 ``[clip_len, H, W, 3]``) given the clips before it."""
        from vadpipe.pipeline.score.batch import score_clip_features

        self._recent.append(self.features([clip])[0])
        return float(score_clip_features(self.loaded, np.stack(list(self._recent)), self.device)[-1])

    def reset(self) -> None:
        """Forget the clips :meth:`score_clip` has seen (a new stream)."""
        self._recent.clear()

    def is_anomalous(self, score: float) -> bool:
        return score >= self.threshold


def _frames(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or x.shape[-1] != 3 or x.dtype != np.uint8:
        raise ConfigError(f"{what} must be uint8 [T, H, W, 3] (RGB), got {x.dtype} {list(x.shape)}")
    return x
