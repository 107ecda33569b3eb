"""``vadpipe score``: raw videos → features → clip scores → events, plots and a report.

The head's checkpoint decides stage one: it records the extraction recipe of the features
it was trained on (:mod:`vadpipe.manifests.provenance`), and scoring re-creates exactly those
features (backbone, weights, clip length and stride, resize, crops, normalisation). When the
checkpoint does not record a recipe (trained on features from elsewhere, or an imported
official head) the user names the backbone, and the backbone's own preset is used; a
backbone whose feature size or crop count differs from the head's is refused before any
video is decoded.

Output folder::

    OUT/features/                  stage one (features.csv, .npy files); reused on re-runs
    OUT/<video>/scores.csv         clip, start_frame, end_frame, start_time, end_time, score
    OUT/<video>/scores.png         the score curve (with --plots, the default)
    OUT/events.json                every video's events, threshold and its source
    OUT/scores_manifest.csv        one row per video: status, error, paths, max score, events
    report.html                    with ``report=``: one self-contained page for the batch

One run reads the checkpoint once (or is given the loaded head) and scores each video as
soon as stage one has written its features, from the array in memory
(stage one's ``on_video`` callback, :func:`~vadpipe.pipeline.extract.runner.extract`); only videos stage one skips, because an earlier
run extracted them, are read from their files.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vadpipe.errors import ConfigError, VadpipeError
from vadpipe.extractors.registry import get_backbone
from vadpipe.heads.data import load_features
from vadpipe.manifests.atomic import ensure_writable_dir, folder_lock
from vadpipe.manifests.datasets import video_key
from vadpipe.manifests.features import MANIFEST_NAME, FeatureRow, read_manifest
from vadpipe.pipeline.extract.config import PRECISIONS, ExtractConfig
from vadpipe.pipeline.extract.runner import extract
from vadpipe.pipeline.extract.sources import VideoJob
from vadpipe.pipeline.extract.writer import ExtractSummary
from vadpipe.pipeline.score import events as ev
from vadpipe.pipeline.score.outputs import (  # noqa: F401  (CLIP_SCORE_COLUMNS: imported from here too)
    CLIP_SCORE_COLUMNS,
    EVENTS_NAME,
    MANIFEST_COLUMNS,
    SCORES_MANIFEST_NAME,
    write_clip_scores,
    write_manifest,
)
from vadpipe.pipeline.train.apply import LoadedHead, build_gt, evaluate_scores, load_head, score_features

log = logging.getLogger(__name__)

#: Threshold used when neither the user nor the checkpoint gives one.
DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class ScoreOptions:
    """What ``vadpipe score`` does after the head has scored the clips.

    Attributes:
        threshold: event threshold; ``None``: the checkpoint's validation-optimal value
            when it has one, else :data:`DEFAULT_THRESHOLD`.
        min_gap: merge events separated by at most this many seconds.
        min_duration: drop events shorter than this many seconds.
        gt: ground truth ``KIND:PATH`` (see ``vadpipe eval``) for plots and AUC/AP.
        gt_convention: how the GT file's frame numbers are read.
        plots: write a PNG per video.
        report: path of a self-contained HTML report for the batch.
        report_title: its title [default: "vadpipe score: N video(s)"].
        report_info: extra ``(label, text)`` rows for its run card.
    """

    threshold: float | None = None
    min_gap: float = 0.0
    min_duration: float = 0.0
    gt: str | None = None
    gt_convention: str | None = None
    plots: bool = True
    report: str | None = None
    report_title: str | None = None
    report_info: tuple[tuple[str, str], ...] = ()


@dataclass
class ScoredVideo:
    """One video's result. ``status`` is ``ok`` or ``failed`` (with ``error``)."""

    video: str
    status: str
    error: str = ""
    name: str = ""
    feature_path: str = ""
    fps: float = 0.0
    n_frames: int = 0
    times: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    events: list[ev.Event] = field(default_factory=list)
    scores_csv: str = ""
    plot: str = ""


@dataclass
class ScoreSummary:
    """What a ``score`` run did; ``exit_code`` is 1 when any video failed."""

    videos: list[ScoredVideo]
    threshold: float
    threshold_source: str
    extraction: ExtractSummary
    out_dir: Path
    metrics: dict[str, float] | None = None
    #: problems with the GT (annotations past the scored frames …), as ``vadpipe eval`` prints them
    warnings: list[str] = field(default_factory=list)
    report: Path | None = None
    #: seconds spent in the head (inside ``extraction.seconds`` for the videos stage one
    #: extracted in this run: each is scored as soon as its features are written)
    head_seconds: float = 0.0

    @property
    def failed(self) -> list[ScoredVideo]:
        return [v for v in self.videos if v.status != "ok"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


# ----------------------------------------------------------------------------- recipe


def checkpoint_recipe(
    loaded: LoadedHead,
    *,
    backbone: str | None = None,
    speed: dict[str, Any] | None = None,
) -> ExtractConfig:
    """The :class:`ExtractConfig` that makes the features ``loaded`` was trained on.

    Args:
        loaded: the head and its checkpoint's ``feature_spec``.
        backbone: the user's ``--backbone``; only needed (and only allowed to differ from
            nothing) when the checkpoint records no recipe.
        speed: speed-only settings (device, batch_clips, workers, decoder, precision is
            NOT one of them: it is part of the recipe) to apply on top.

    Raises:
        ConfigError: the checkpoint records no backbone and none is given, or the given
            backbone contradicts the checkpoint, or its features have another size or crop
            count than the head expects.
    """
    spec = loaded.feature_spec
    recorded = spec.get("extract")
    speed = dict(speed or {})
    if recorded:
        config = ExtractConfig.from_dict({**recorded["config"], "devices": (), "engine": "local", "ray_address": None})
        if backbone and backbone != config.backbone:
            raise ConfigError(
                f"the {loaded.name} head was trained on {config.backbone} features (its checkpoint records the "
                f"recipe); --backbone {backbone} would give features it was not trained on"
            )
    else:
        name = backbone or _registered(spec.get("backbone"))
        if not name:
            raise ConfigError(
                f"the checkpoint does not record how its features were extracted (backbone "
                f"{spec.get('backbone', 'unknown')!r}); pass --backbone NAME (see `vadpipe weights list`), or "
                "retrain on features written by `vadpipe extract` so the recipe is recorded"
            )
        bb = get_backbone(name)
        crops = max(1, int(spec.get("crops", 1))) if bb.nodes == 1 else 1
        clip_len = int(spec.get("clip_len", bb.clip_len))
        from vadpipe.pipeline.extract.clips import ClipSpec

        config = ExtractConfig(backbone=name, crops=crops, clip=ClipSpec(length=clip_len, stride=clip_len))
        config = config.with_preset(bb.preset)
    bb = get_backbone(config.backbone)
    got_dim, got_crops = bb.feature_dim, max(config.crops, bb.nodes)
    if "dim" in spec and int(spec["dim"]) != got_dim:
        raise ConfigError(
            f"the {loaded.name} head takes {spec['dim']}-D features; backbone {bb.name!r} gives {got_dim}-D"
        )
    if "crops" in spec and int(spec["crops"]) != got_crops:
        raise ConfigError(
            f"the {loaded.name} head takes {spec['crops']} crops per clip; this recipe gives {got_crops}"
        )
    allowed = {"device", "batch_clips", "workers", "decoder", "channels_last", "random_weights"}
    unknown = set(speed) - allowed
    if unknown:
        raise ConfigError(f"only speed settings may be changed when scoring, not {sorted(unknown)}")
    return replace(config, **speed)


def with_recipe_precision(loaded: LoadedHead, precision: str) -> LoadedHead:
    """``loaded`` with the precision of its recorded extraction recipe replaced, in memory.

    A benchmark setting (``vadpipe bench score --precision``): bf16/fp16 features differ
    slightly from the fp32 ones a head was trained on. The head module is shared with
    ``loaded``; its checkpoint file is neither read nor written.

    Raises:
        ConfigError: an unknown precision, or a checkpoint that records no recipe.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    spec = copy.deepcopy(loaded.feature_spec)
    recipe = spec.get("extract")
    if not recipe:
        where = loaded.source or f"the {loaded.name} head"
        raise ConfigError(f"{where} records no extraction recipe whose precision --precision could set")
    recipe["config"]["precision"] = precision
    return replace(loaded, feature_spec=spec)


def head_for_run(checkpoint: str | os.PathLike | LoadedHead, device: torch.device) -> LoadedHead:
    """The head a run scores with, on ``device``: ``checkpoint`` itself when it is already
    loaded (its file is not read again), else the head read from that file."""
    if isinstance(checkpoint, LoadedHead):
        checkpoint.head.to(device).eval()
        return checkpoint
    return load_head(checkpoint, device)


def _registered(name: Any) -> str | None:
    from vadpipe.extractors.registry import list_backbones

    return name if isinstance(name, str) and name in list_backbones() else None


def resolve_threshold(options: ScoreOptions, loaded: LoadedHead) -> tuple[float, str]:
    """``(threshold, where it came from)``: ``--threshold``, else the stored validation-optimal
    value of the loaded checkpoint, else :data:`DEFAULT_THRESHOLD`."""
    if options.threshold is not None:
        return float(options.threshold), "--threshold"
    if loaded.threshold is not None:
        return loaded.threshold, "checkpoint (validation Youden J)"
    return DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD:g} (the checkpoint records none)"


# ----------------------------------------------------------------------------- the run


def score_videos(
    jobs: list[VideoJob],
    checkpoint: str | os.PathLike | LoadedHead,
    out_dir: str | os.PathLike,
    *,
    options: ScoreOptions = ScoreOptions(),
    backbone: str | None = None,
    speed: dict[str, Any] | None = None,
    features_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
) -> ScoreSummary:
    """Score ``jobs`` with the head in ``checkpoint`` (module docstring: outputs).

    Features already in ``features_dir``'s manifest with the same recipe are reused (read
    from their files); the others are scored from the arrays stage one writes, as each
    video is finished. A video that cannot be decoded fails its own row; the batch goes on.

    Args:
        checkpoint: the head's checkpoint file (read once), or the head already loaded
            from one (:func:`~vadpipe.pipeline.train.apply.load_head`; not read again).

    Raises:
        ConfigError: a checkpoint/backbone mismatch (before any video is decoded); another
            run is writing to ``out_dir`` (:func:`~vadpipe.manifests.atomic.folder_lock`).
        WeightsNotFoundError: the backbone's weights are not installed.
    """
    out = ensure_writable_dir(out_dir)  # before any work: a clear error, not a traceback
    with folder_lock(out, "vadpipe score"):  # one run per output folder at a time
        return _score_videos(jobs, checkpoint, out, options=options, backbone=backbone, speed=speed,
                             features_dir=features_dir, force=force, progress=progress, echo=echo)


def _score_videos(jobs: list[VideoJob], checkpoint: str | os.PathLike | LoadedHead, out: Path, *,
                  options: ScoreOptions, backbone: str | None, speed: dict[str, Any] | None,
                  features_dir: str | os.PathLike | None, force: bool, progress: bool,
                  echo: Callable[[str], None] | None) -> ScoreSummary:
    feats_dir = Path(features_dir) if features_dir else out / "features"
    speed = dict(speed or {})
    from vadpipe.pipeline.device import resolve_device

    device = resolve_device(speed.get("device", "auto"))
    loaded = head_for_run(checkpoint, device)
    source = loaded.source or str(checkpoint)
    config = checkpoint_recipe(loaded, backbone=backbone, speed=speed)
    threshold, threshold_source = resolve_threshold(options, loaded)

    scorer = StageOneScorer(loaded, device)
    extraction = extract(jobs, feats_dir, config, force=force, progress=progress, on_video=scorer)
    rows = _stage_one_rows(jobs, scorer.rows, feats_dir)
    results: list[ScoredVideo] = []
    t0 = time.time()
    for job in jobs:
        row = rows.get(job.path)
        if row is None or row.status != "ok":
            reason = row.error if row is not None else "not extracted"
            results.append(ScoredVideo(video=job.path, status="failed", error=reason, name=job.rel_name))
            continue
        try:
            scores = scorer.scores_of(row, feats_dir)
            results.append(_score_one(job, row, scores, out, config, threshold, options))
        except VadpipeError as e:
            results.append(ScoredVideo(video=job.path, status="failed", error=f"{type(e).__name__}: {e}",
                                       name=job.rel_name))

    summary = ScoreSummary(videos=results, threshold=threshold, threshold_source=threshold_source,
                           extraction=extraction, out_dir=out, head_seconds=scorer.seconds)
    ok = [v for v in results if v.status == "ok"]
    gt_intervals: dict[str, list[tuple[float, float]]] = {}
    if options.gt and ok:
        summary.metrics, gt_intervals, summary.warnings = _ground_truth(ok, options, config)
    for v in ok:
        if options.plots:
            from vadpipe.pipeline.score.report import plot_scores

            png = out / v.name / "scores.png"
            plot_scores(png, v.times, v.scores, threshold, v.events, gt_intervals.get(v.video), title=v.name)
            v.plot = str(png.relative_to(out))
    ev.write_events_json(out / EVENTS_NAME, {v.name: v.events for v in ok}, threshold=threshold,
                         threshold_source=threshold_source, min_gap=options.min_gap,
                         min_duration=options.min_duration,
                         extra={"checkpoint": source, "head": loaded.name, "backbone": config.backbone})
    _write_manifest(out / SCORES_MANIFEST_NAME, results, threshold, source, time.time() - t0)
    if options.report:
        summary.report = _report(Path(options.report), ok, gt_intervals, summary, loaded, source, config, options)
    if echo:
        for v in ok:
            echo(ev.format_events_table(v.name, v.events))
    return summary


def score_clip_features(loaded: LoadedHead, feats: np.ndarray, device: torch.device) -> np.ndarray:
    """Snippet scores ``[n_clips]`` (float64) of one video's features as stage one writes
    them, ``[n_clips, crops, D]``: the head's input is ``[crops, n_clips, D]``
    (:func:`~vadpipe.pipeline.train.apply.score_features`)."""
    return np.asarray(score_features(loaded, feats.transpose(1, 0, 2), device), dtype=np.float64)


class StageOneScorer:
    """The head's side of the hand-over: stage one's ``on_video`` (:func:`~vadpipe.pipeline.extract.runner.extract`).

    Called with each video stage one finishes, it keeps the video's manifest row and scores
    the written array at once, so no video's features stay in memory after it is scored.
    A :class:`~vadpipe.errors.VadpipeError` of one video is kept for that video (raised
    again by :meth:`scores_of`); the extraction goes on.
    """

    def __init__(self, loaded: LoadedHead, device: torch.device) -> None:
        self.loaded = loaded
        self.device = device
        #: manifest rows of the videos stage one finished in this run, by video path
        self.rows: dict[str, FeatureRow] = {}
        self._scores: dict[str, np.ndarray | VadpipeError] = {}
        #: seconds spent in the head
        self.seconds = 0.0

    def __call__(self, row: FeatureRow, feats: np.ndarray | None) -> None:
        self.rows[row.video] = row
        if feats is None:
            return
        try:
            self._scores[row.video] = self._timed(score_clip_features, feats)
        except VadpipeError as e:
            self._scores[row.video] = e

    def scores_of(self, row: FeatureRow, feats_dir: Path) -> np.ndarray:
        """Scores ``[n_clips]`` of an ``ok`` row: those computed when stage one handed its
        features over, else (a video extracted by an earlier run) from its file(s).

        Raises:
            VadpipeError: what scoring this video raised (bad features, a mismatch).
        """
        got = self._scores.get(row.video)
        if isinstance(got, VadpipeError):
            raise got
        if got is not None:
            return got
        feats = load_features(row.feature_path, feats_dir)  # [crops, n_clips, D]
        return np.asarray(self._timed(score_features, feats), dtype=np.float64)

    def _timed(self, fn: Callable[[LoadedHead, np.ndarray, torch.device], np.ndarray],
               feats: np.ndarray) -> np.ndarray:
        t = time.perf_counter()
        try:
            return fn(self.loaded, feats, self.device)
        finally:
            self.seconds += time.perf_counter() - t


def _stage_one_rows(jobs: list[VideoJob], handed: dict[str, FeatureRow], feats_dir: Path) -> dict[str, FeatureRow]:
    """Every job's manifest row: those stage one handed over in this run, and from
    ``features.csv`` (read only when needed) those it did not (skipped, or interrupted)."""
    rows = dict(handed)
    if any(job.path not in rows for job in jobs):
        for row in read_manifest(feats_dir / MANIFEST_NAME):
            rows.setdefault(row.video, row)
    return rows


def _score_one(job: VideoJob, row: FeatureRow, scores: np.ndarray, out: Path, config: ExtractConfig,
               threshold: float, options: ScoreOptions) -> ScoredVideo:
    """One video's clip times, events and ``scores.csv`` from its snippet ``scores [n_clips]``."""
    times = ev.uniform_clip_times(scores.size, row.fps, config.clip.length, config.clip.stride)
    events = ev.find_events(scores, times, threshold, options.min_gap, options.min_duration)
    v = ScoredVideo(video=job.path, status="ok", name=job.rel_name, feature_path=row.feature_path, fps=row.fps,
                    n_frames=row.n_frames, times=times, scores=scores, events=events)
    path = out / job.rel_name / "scores.csv"
    write_clip_scores(path, scores, times, config.clip.length, config.clip.stride)
    v.scores_csv = str(path.relative_to(out))
    return v


def _write_manifest(path: Path, results: list[ScoredVideo], threshold: float, checkpoint: str, seconds: float) -> None:
    records = []
    for v in results:
        records.append({
            "video": v.video, "status": v.status, "error": v.error, "scores_csv": v.scores_csv, "plot": v.plot,
            "feature_path": v.feature_path, "n_clips": int(v.scores.size), "fps": v.fps,
            "duration_s": round(v.n_frames / v.fps, 3) if v.fps else 0.0,
            "max_score": float(v.scores.max()) if v.scores.size else "", "n_events": len(v.events),
            "threshold": threshold, "checkpoint": checkpoint, "seconds": round(seconds, 3),
        })
    write_manifest(path, records)


def _ground_truth(ok: list[ScoredVideo], options: ScoreOptions, config: ExtractConfig
                  ) -> tuple[dict[str, float], dict[str, list[tuple[float, float]]], list[str]]:
    """Overall frame-level metrics, each video's true intervals in seconds, and the GT's warnings."""
    from vadpipe.pipeline.train.apply import parse_gt

    kind, source = parse_gt(options.gt)
    n_frames = {video_key(v.video): v.n_frames for v in ok}
    masks, _ = build_gt(kind, source, n_frames, options.gt_convention)
    intervals = {}
    for v in ok:
        mask = np.asarray(masks.get(video_key(v.video), np.zeros(0)), dtype=bool)
        intervals[v.video] = [(s / v.fps, (e + 1) / v.fps) for s, e in ev._runs(mask)] if v.fps else []
    metrics: dict[str, float] = {}
    warnings: list[str] = []
    try:
        result = evaluate_scores({v.video: v.scores for v in ok}, options.gt, clip_len=config.clip.stride,
                                 convention=options.gt_convention)
        metrics = {"ROC-AUC (frame)": result.auc, "AP": result.ap}
        warnings = list(result.warnings)
    except VadpipeError as e:  # e.g. only normal videos: AUC undefined
        log.warning("no overall metrics: %s", e)
    return metrics, intervals, warnings


def _report(path: Path, ok: list[ScoredVideo], gt_intervals: dict, summary: ScoreSummary, loaded: LoadedHead,
            checkpoint: str, config: ExtractConfig, options: ScoreOptions) -> Path:
    from vadpipe.pipeline.score.report import VideoReport, write_html_report

    videos = []
    for v in ok:
        png = summary.out_dir / v.plot if v.plot else None
        videos.append(VideoReport(name=v.name, path=v.video, fps=v.fps, n_frames=v.n_frames, times=v.times,
                                  scores=v.scores, events=v.events, threshold=summary.threshold,
                                  gt_intervals=gt_intervals.get(v.video) if gt_intervals else None,
                                  plot_png=png))
    return write_html_report(
        path, videos, title=options.report_title or f"vadpipe score: {len(ok)} video(s)", metrics=summary.metrics,
        model=loaded.name,
        checkpoint=checkpoint, threshold_source=summary.threshold_source,
        info={"backbone": f"{config.backbone} ({config.crops} crop(s), {config.clip.length}-frame clips)",
              "min gap": f"{options.min_gap:g} s", "min duration": f"{options.min_duration:g} s",
              "failed videos": len(summary.failed), **dict(options.report_info)},
    )
