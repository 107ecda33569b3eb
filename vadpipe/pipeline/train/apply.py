"""Applying a trained head to a dataset: snippet scores, ``scores.csv``, frame-level evaluation.

Two ways in: :func:`score_rows` reads a dataset's feature files (``vadpipe eval``,
``vadpipe apply``); :func:`score_features` takes one video's features already in memory
(``vadpipe score`` hands stage one's output over without reading it back). Both give the
head the same input: float32 ``[N, T, D]``, L2-normalised per snippet when the head's config
asks for it (:func:`head_input`).

``scores.csv`` has one row per snippet: ``video, feature_path, clip, start_frame,
end_frame, score``. Frames are 0-based and ``end_frame`` is exclusive; snippet ``i`` covers
``[i * clip_len, (i + 1) * clip_len)``, the clips stage one cut with its default stride.
With the default ``drop`` tail policy, frames after the last complete clip have no snippet:
:func:`vadpipe.pipeline.train.metrics.expand_scores` gives them the last snippet's score when
the GT is longer.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from vadpipe.errors import ConfigError, EvaluationError, FeatureLoadError
from vadpipe.heads.base import AnomalyHead, get_head
from vadpipe.heads.data import FeatureDataset, l2_normalize_segments
from vadpipe.manifests.atomic import atomic_write_text
from vadpipe.manifests.datasets import DatasetRow, video_key
from vadpipe.manifests.tables import FLOAT32_FORMAT, read_string_csv
from vadpipe.pipeline.train import metrics as ev
from vadpipe.pipeline.train.loop import build_head, load_checkpoint, video_scores
from vadpipe.registry import Registry

log = logging.getLogger(__name__)

GtBuilder = Callable[[str, dict[str, int], "str | None"],
                     "tuple[dict[str, np.ndarray], dict[str, str | tuple[str, ...]] | None]"]


def _ucf_gt(source: str, n_frames: dict[str, int], convention: str | None):
    gt = ev.ucf_crime_gt(source, n_frames, convention=convention or "rtfm")
    return gt, {video_key(k): v for k, v in ev.ucf_crime_classes(source).items()}


def _xd_gt(source: str, n_frames: dict[str, int], convention: str | None):
    gt = ev.xd_violence_gt(source, n_frames, convention=convention or "vadclip")
    try:  # classes from the names (multi-label); names without XD's label part get no per-class AUC
        classes = ev.xd_violence_classes(n_frames)
    except EvaluationError as e:
        log.warning("no per-class AUC: %s", e)
        classes = None
    return gt, classes


#: Ground-truth kinds of ``--gt KIND:PATH``: ``build(source, n_frames, convention) -> (masks, classes)``.
GT_KINDS: Registry[GtBuilder] = Registry("ground-truth kind")
GT_KINDS.register("ucf", _ucf_gt)  # Temporal_Anomaly_Annotation.txt; convention rtfm (sultani, vadclip)
GT_KINDS.register("xd", _xd_gt)  # annotations.txt
GT_KINDS.register("sh-masks", lambda source, n_frames, convention: (
    ev.shanghaitech_gt(source, n_frames), None))  # folder of test_frame_mask/<id>.npy
GT_KINDS.register("csv", lambda source, n_frames, convention: (
    ev.intervals_csv_gt(source, n_frames), None))  # video,start,end
SCORE_COLUMNS = ("video", "feature_path", "clip", "start_frame", "end_frame", "score")


def _ucf_intervals(source: str, convention: str | None):
    return {v: [ev._interval_slice(a, b, convention or "rtfm") for a, b in pairs]
            for v, (_, pairs) in ev.read_ucf_crime_annotations(source).items()}


def _xd_intervals(source: str, convention: str | None):
    return {v: [ev._interval_slice(a, b, convention or "vadclip") for a, b in pairs]
            for v, pairs in ev.read_xd_violence_annotations(source).items()}


def _csv_intervals(source: str, convention: str | None):
    out: dict[str, list[tuple[int, int]]] = {}
    for r in read_string_csv(source, "intervals").to_dict("records"):
        pairs = out.setdefault(video_key(r["video"]), [])
        if str(r.get("start", "")).strip():
            pairs.append((int(r["start"]), int(r["end"])))
    return out


#: GT kinds stated as intervals: ``intervals(source, convention) -> {video: [(start, end)]}``
#: (0-based, end exclusive), to find annotations that reach past the scored frames.
GT_INTERVALS = {"ucf": _ucf_intervals, "xd": _xd_intervals, "csv": _csv_intervals}


@dataclass
class LoadedHead:
    """A head restored from a vadpipe checkpoint, with what it was trained on."""

    head: AnomalyHead
    name: str
    feature_spec: dict[str, Any]
    selection: str
    #: the validation-optimal threshold the training run stored (``None``: none, or not finite)
    threshold: float | None = None
    #: the checkpoint file it was loaded from ("" when built in memory)
    source: str = ""

    @property
    def l2_normalize(self) -> bool:
        """True when the head takes every snippet L2-normalised (Sultani's protocol)."""
        return bool(getattr(self.head.config, "l2_normalize", False))


def load_head(checkpoint: str | os.PathLike, device: torch.device) -> LoadedHead:
    """Rebuild a head from a checkpoint written by :func:`vadpipe.pipeline.train.loop.train`
    (or ``vadpipe weights import rtfm|mgfn``), in eval mode on ``device``.

    The file is read once here; callers that apply the head several times (a ``score`` run,
    a benchmark) pass the returned object on instead of loading the checkpoint again.
    """
    ckpt = load_checkpoint(checkpoint)
    spec = get_head(ckpt["head"])
    cfg = {k: tuple(v) if isinstance(v, list) else v for k, v in ckpt["head_config"].items()}
    head, _ = build_head(spec, cfg)
    head.load_state_dict(ckpt["state_dict"])
    threshold = ckpt.get("threshold")
    threshold = None if threshold is None or not math.isfinite(float(threshold)) else float(threshold)
    return LoadedHead(head.to(device).eval(), spec.name, dict(ckpt["feature_spec"]), str(ckpt["selection"]), threshold,
                      source=str(checkpoint))


def check_features(loaded: LoadedHead, dataset: FeatureDataset) -> None:
    """Refuse features whose size or crop count differ from what the head was trained on."""
    n, _, d = dataset.features(0).shape
    check_feature_shape(loaded, n, d)


def check_feature_shape(loaded: LoadedHead, n: int, d: int) -> None:
    """Refuse ``n`` crops of ``d``-D features when the head was trained on another crop
    count or feature size.

    Raises:
        ConfigError: naming what the head was trained on.
    """
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
    dataset = FeatureDataset(rows, root, mode="eval", l2_normalize=loaded.l2_normalize)
    check_features(loaded, dataset)
    return {r.video: s for r, s in zip(rows, video_scores(loaded.head, dataset, device))}


def head_input(loaded: LoadedHead, feats: np.ndarray) -> np.ndarray:
    """What the head takes for one video: ``feats [N, T, D]`` as contiguous float32,
    L2-normalised per snippet when the head asks for it (the eval-mode
    :class:`~vadpipe.heads.data.FeatureDataset` item, without a dataset).

    Raises:
        FeatureLoadError: ``feats`` is not ``[N, T, D]`` with ``T >= 1``.
    """
    if feats.ndim != 3 or feats.shape[1] == 0:
        raise FeatureLoadError(f"a video's features must be [N, T, D] with T >= 1, got shape {tuple(feats.shape)}")
    x = np.ascontiguousarray(feats, dtype=np.float32)
    if loaded.l2_normalize:
        x = l2_normalize_segments(x)
    return np.ascontiguousarray(x, dtype=np.float32)


@torch.no_grad()
def score_features(loaded: LoadedHead, feats: np.ndarray, device: torch.device | str) -> np.ndarray:
    """Snippet scores ``[T]`` (float32, crop-averaged) of one video's features ``[N, T, D]``.

    The numbers are :func:`score_rows`' for the same features: the same checks, the same
    input (:func:`head_input`), one ``[1, N, T, D]`` forward pass.

    Raises:
        ConfigError: the crop count or feature size is not the head's.
        FeatureLoadError: ``feats`` is not ``[N, T, D]``.
    """
    x = head_input(loaded, feats)
    check_feature_shape(loaded, x.shape[0], x.shape[2])
    head = loaded.head.eval()
    return head.snippet_scores(torch.from_numpy(x).to(device)[None])[0].float().cpu().numpy()


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
    atomic_write_text(path, df.to_csv(index=False, float_format=FLOAT32_FORMAT))


def read_scores_csv(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{video: snippet scores [T]}`` from a ``scores.csv`` written by ``vadpipe eval`` or
    ``vadpipe apply`` (clips in order).

    Raises:
        ManifestError: not such a file, bad numbers, or a video whose clips are not
            ``0 .. T-1`` once each.
    """
    from vadpipe.errors import ManifestError
    from vadpipe.manifests.tables import read_string_csv

    df = read_string_csv(path, "scores file")
    missing = [c for c in ("video", "clip", "score") if c not in df.columns]
    if missing:
        raise ManifestError(f"{path} is not a vadpipe scores.csv: missing column(s) {', '.join(missing)}")
    try:
        clips = df["clip"].astype(int).to_numpy()
        values = df["score"].astype(float).to_numpy()
    except ValueError as e:
        raise ManifestError(f"{path}: bad number ({e})") from e
    out: dict[str, np.ndarray] = {}
    for video, idx in df.groupby("video", sort=True).indices.items():
        order = np.argsort(clips[idx], kind="stable")
        if not np.array_equal(clips[idx][order], np.arange(idx.size)):
            raise ManifestError(f"{path}: the clips of {video} are not 0..{idx.size - 1} once each")
        out[str(video)] = values[idx][order]
    return out


def compare_scores(scores: dict[str, np.ndarray], other: dict[str, np.ndarray], gt: str, *,
                   clip_len: int = ev.CLIP_LEN, convention: str | None = None,
                   resamples: int = ev.BOOTSTRAP_RESAMPLES, seed: int = 0) -> ev.PairedComparison:
    """:func:`~vadpipe.pipeline.train.metrics.paired_bootstrap_auc` of two snippet score sets
    on the GT source ``"KIND:PATH"``, both evaluated as :func:`evaluate_scores` does
    (``T × clip_len`` frames per video); the two must have the same videos and snippet counts.

    Raises:
        EvaluationError: different videos or snippet counts.
    """
    a = {video_key(v): s for v, s in scores.items()}
    b = {video_key(v): s for v, s in other.items()}
    differ = sorted(v for v in set(a) & set(b) if a[v].size != b[v].size)
    if differ:
        raise EvaluationError(f"{len(differ)} video(s) have other snippet counts in the two score sets "
                              f"(first: {differ[0]}: {a[differ[0]].size} vs {b[differ[0]].size}); compare scores "
                              "of the same features")
    kind, source = parse_gt(gt)
    gt_masks, _ = build_gt(kind, source, {v: s.size * clip_len for v, s in a.items()}, convention)
    return ev.paired_bootstrap_auc({v: ev.expand_scores(s, clip_len) for v, s in a.items()},
                                   {v: ev.expand_scores(s, clip_len) for v, s in b.items()},
                                   gt_masks, resamples=resamples, seed=seed)


def build_gt(kind: str, source: str | os.PathLike, n_frames: dict[str, int], convention: str | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, str] | None]:
    """Frame masks (and classes when the source has them) for ``n_frames`` videos.

    ``kind``: ``ucf`` (``Temporal_Anomaly_Annotation.txt``; convention ``rtfm`` by default,
    or ``sultani``/``vadclip``), ``xd`` (``annotations.txt``), ``sh-masks`` (folder of
    ``test_frame_mask/<id>.npy``) or ``csv`` (``video,start,end``).
    """
    return GT_KINDS.get(kind)(str(source), n_frames, convention)


def parse_gt(spec: str) -> tuple[str, str]:
    """``"KIND:PATH"`` → ``(kind, path)``, checking the kind."""
    kind, sep, source = spec.partition(":")
    if not sep or kind not in GT_KINDS:
        raise ConfigError(f"--gt takes KIND:PATH with KIND one of {', '.join(GT_KINDS)}, got {spec!r}")
    return kind, source


def evaluate_scores(scores: dict[str, np.ndarray], gt: str, *, clip_len: int = ev.CLIP_LEN,
                    convention: str | None = None,
                    frame_scores_csv: str | os.PathLike | None = None, strict_gt: bool = False) -> ev.EvalResult:
    """Frame-level metrics of snippet ``scores`` against a GT source ``"KIND:PATH"``.

    Each video is evaluated on ``T × clip_len`` frames (RTFM's protocol: GT built from the
    snippet count), snippet scores repeated ``clip_len`` times. Annotated frames past that
    length are cut; for interval GT (``ucf``, ``xd``, ``csv``) the result's ``warnings``
    say which videos lost GT that way (:func:`~vadpipe.pipeline.train.metrics.gt_cut_warning`),
    and ``strict_gt`` makes it an error (RTFM's own script stops on such a mismatch).

    Raises:
        EvaluationError: with ``strict_gt``, annotated frames past a video's scored length.
    """
    kind, source = parse_gt(gt)
    n_frames = {video_key(v): int(s.size) * clip_len for v, s in scores.items()}
    gt_masks, classes = build_gt(kind, source, n_frames, convention)
    warnings = []
    if kind in GT_INTERVALS:
        cuts = ev.annotated_cut(GT_INTERVALS[kind](source, convention), n_frames)
        if cuts:
            if strict_gt:
                raise EvaluationError(ev.gt_cut_warning(cuts, clip_len) + " (--strict-gt)")
            warnings.append(ev.gt_cut_warning(cuts, clip_len))
    frame_scores = {video_key(v): ev.expand_scores(s, clip_len) for v, s in scores.items()}
    if classes is not None:
        classes = {k: c for k, c in classes.items() if k in frame_scores}
    result = ev.evaluate(frame_scores, gt_masks, classes)
    result.warnings.extend(warnings)
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
    lines = [f"WARNING: {w}" for w in result.warnings]
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

