"""Applying a trained head to a dataset: snippet scores, ``scores.csv``, frame-level evaluation.

``scores.csv`` has one row per snippet: ``video, feature_path, clip, start_frame,
end_frame, score``. Frames are 0-based and ``end_frame`` is exclusive; snippet ``i`` covers
``[i * clip_len, (i + 1) * clip_len)``, the clips stage one cut with its default stride.
With the default ``drop`` tail policy, frames after the last complete clip have no snippet:
:func:`vadpipe.pipeline.train.metrics.expand_scores` gives them the last snippet's score when
the GT is longer.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from vadpipe.errors import ConfigError
from vadpipe.heads.base import AnomalyHead, get_head
from vadpipe.heads.data import FeatureDataset
from vadpipe.manifests.atomic import atomic_write_text
from vadpipe.manifests.datasets import DatasetRow, video_key
from vadpipe.pipeline.train import metrics as ev
from vadpipe.pipeline.train.loop import build_head, load_checkpoint, video_scores

GT_KINDS = ("ucf", "xd", "sh-masks", "csv")
SCORE_COLUMNS = ("video", "feature_path", "clip", "start_frame", "end_frame", "score")


@dataclass
class LoadedHead:
    """A head restored from a vadpipe checkpoint, with what it was trained on."""

    head: AnomalyHead
    name: str
    feature_spec: dict[str, Any]
    selection: str
    #: the validation-optimal threshold the training run stored (``None``: none, or not finite)
    threshold: float | None = None


def load_head(checkpoint: str | os.PathLike, device: torch.device) -> LoadedHead:
    """Rebuild a head from a checkpoint written by :func:`vadpipe.pipeline.train.loop.train`
    (or ``vadpipe weights import rtfm|mgfn``), in eval mode on ``device``."""
    ckpt = load_checkpoint(checkpoint)
    spec = get_head(ckpt["head"])
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["head_config"].items()}
    head, _ = build_head(spec, cfg)
    head.load_state_dict(ckpt["state_dict"])
    threshold = ckpt.get("threshold")
    threshold = None if threshold is None or not math.isfinite(float(threshold)) else float(threshold)
    return LoadedHead(head.to(device).eval(), spec.name, dict(ckpt["feature_spec"]), str(ckpt["selection"]), threshold)


def check_features(loaded: LoadedHead, dataset: FeatureDataset) -> None:
    """Refuse features whose size or crop count differ from what the head was trained on."""
    n, _, d = dataset.features(0).shape
    want = loaded.feature_spec
    if int(want.get("dim", d)) != d:
        raise ConfigError(
            f"the {loaded.name} head was trained on {want['dim']}-D features "
            f"({want.get('backbone', 'unknown backbone')}); these are {d}-D: extract them with the same backbone"
        )
    if "crops" in want and int(want["crops"]) != n:
        raise ConfigError(f"the {loaded.name} head was trained on {want['crops']}-crop features; these have {n} crops")


def score_rows(loaded: LoadedHead, rows: list[DatasetRow], root: str | os.PathLike | None,
               device: torch.device) -> dict[str, np.ndarray]:
    """Snippet scores ``{video: [T]}`` of every row (full length, crop-averaged)."""
    dataset = FeatureDataset(rows, root, mode="eval", l2_normalize=bool(getattr(loaded.head.config, "l2_normalize", False)))
    check_features(loaded, dataset)
    return {r.video: s for r, s in zip(rows, video_scores(loaded.head, dataset, device))}


def write_scores_csv(path: str | os.PathLike, rows: list[DatasetRow], scores: dict[str, np.ndarray],
                     clip_len: int = ev.CLIP_LEN) -> None:
    """Write ``scores.csv`` (see the module docstring) atomically."""
    frames = []
    for r in rows:
        s = np.asarray(scores[r.video], dtype=np.float64)
        i = np.arange(s.size)
        frames.append(pd.DataFrame({"video": r.video, "feature_path": r.feature_path, "clip": i,
                                    "start_frame": i * clip_len, "end_frame": (i + 1) * clip_len, "score": s}))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=SCORE_COLUMNS)
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))


def build_gt(kind: str, source: str | os.PathLike, n_frames: dict[str, int], convention: str | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, str] | None]:
    """Frame masks (and classes when the source has them) for ``n_frames`` videos.

    ``kind``: ``ucf`` (``Temporal_Anomaly_Annotation.txt``; convention ``rtfm`` by default,
    or ``sultani``/``vadclip``), ``xd`` (``annotations.txt``), ``sh-masks`` (folder of
    ``test_frame_mask/<id>.npy``) or ``csv`` (``video,start,end``).
    """
    if kind == "ucf":
        gt = ev.ucf_crime_gt(source, n_frames, convention=convention or "rtfm")
        classes = {video_key(k): v for k, v in ev.ucf_crime_classes(source).items()}
        return gt, classes
    if kind == "xd":
        return ev.xd_violence_gt(source, n_frames, convention=convention or "vadclip"), None
    if kind == "sh-masks":
        return ev.shanghaitech_gt(source, n_frames), None
    if kind == "csv":
        return ev.intervals_csv_gt(source, n_frames), None
    raise ConfigError(f"unknown ground-truth kind {kind!r}; choose one of {', '.join(GT_KINDS)}")


def parse_gt(spec: str) -> tuple[str, str]:
    """``"KIND:PATH"`` → ``(kind, path)``, checking the kind."""
    kind, sep, source = spec.partition(":")
    if not sep or kind not in GT_KINDS:
        raise ConfigError(f"--gt takes KIND:PATH with KIND one of {', '.join(GT_KINDS)}, got {spec!r}")
    return kind, source


def evaluate_scores(scores: dict[str, np.ndarray], gt: str, *, clip_len: int = ev.CLIP_LEN,
                    convention: str | None = None,
                    frame_scores_csv: str | os.PathLike | None = None) -> ev.EvalResult:
    """Frame-level metrics of snippet ``scores`` against a GT source ``"KIND:PATH"``.

    Each video is evaluated on ``T × clip_len`` frames (RTFM's protocol: GT built from the
    snippet count), snippet scores repeated ``clip_len`` times.
    """
    kind, source = parse_gt(gt)
    n_frames = {video_key(v): int(s.size) * clip_len for v, s in scores.items()}
    gt_masks, classes = build_gt(kind, source, n_frames, convention)
    frame_scores = {video_key(v): ev.expand_scores(s, clip_len) for v, s in scores.items()}
    if classes is not None:
        classes = {k: c for k, c in classes.items() if k in frame_scores}
    result = ev.evaluate(frame_scores, gt_masks, classes)
    if frame_scores_csv is not None:
        ev.write_frame_scores_csv(frame_scores_csv, frame_scores, gt_masks)
    return result


def test_set_auc(test_csv: str | os.PathLike, gt: str, device: torch.device) -> Callable[[AnomalyHead], float]:
    """``head -> frame-level test AUC``, for the published code's (optimistic) test-set
    model selection; the data and GT are read once."""
    from vadpipe.manifests.datasets import dataset_root, read_dataset

    parse_gt(gt)
    rows, root = read_dataset(test_csv), dataset_root(test_csv)

    def metric(head: AnomalyHead) -> float:
        loaded = LoadedHead(head, "test", {}, "test")
        return evaluate_scores(score_rows(loaded, rows, root, device), gt).auc

    return metric


def result_lines(result: ev.EvalResult, selection: str = "val") -> list[str]:
    """Human-readable report lines of an evaluation."""
    lines = []
    if selection != "val":
        lines.append(f"WARNING: {selection}")
    lines.append(f"videos {result.n_videos}, frames {result.n_frames}")
    lines.append(f"ROC-AUC  {result.auc:.4f}")
    lines.append(f"AP       {result.ap:.4f}   (sklearn average_precision)")
    lines.append(f"PR-AUC   {result.pr_auc:.4f}   (auc(recall, precision), the RTFM/MGFN 'AP')")
    lines.append(f"FAR@0.5  {result.far:.4f}   (normal videos' frames)")
    for cls, auc in sorted(result.per_class.items()):
        lines.append(f"  AUC {cls:<14} {auc:.4f}")
    return lines

