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

Segment features (Sultani's 32 segments a video, ``vadpipe features segments``) give one
score per segment, not per 16 frames: they are evaluated on each video's real frame count
(:func:`scores_are_segments`, :func:`frame_counts_for`, and
:func:`~vadpipe.pipeline.train.metrics.segment_scores_to_frames`), and ``scores.csv``'s
``start_frame``/``end_frame`` are then the frames each segment's score is given (empty when
the video's frame count is unknown).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import torch

from vadpipe.errors import ConfigError, EvaluationError, FeatureLoadError
from vadpipe.heads.base import AnomalyHead, get_head
from vadpipe.heads.data import FeatureDataset, l2_normalize_segments
from vadpipe.manifests.atomic import atomic_write_text
from vadpipe.manifests.datasets import DatasetRow, import_rtfm_list, video_key
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

#: RTFM's ShanghaiTech test list; ``gt-sh.npy`` is concatenated in its order.
SH_TEST_LIST = "shanghai-i3d-test-10crop.list"


def sh_npy_order(gt_sh_npy: str | os.PathLike, scored: list[str]) -> list[str]:
    """The video order of a ``gt-sh.npy``: that of RTFM's ``shanghai-i3d-test-10crop.list``
    when it sits beside the file (as in RTFM's ``list/`` folder), else ``scored`` (the order
    of the dataset CSV, which must then be the test list's)."""
    lst = Path(gt_sh_npy).with_name(SH_TEST_LIST)
    if lst.is_file():
        return [r.name for r in import_rtfm_list(lst, dataset="shanghai", split="test")]
    return list(scored)


def _sh_npy_gt(source: str, n_frames: dict[str, int], convention: str | None):
    try:
        return ev.split_gt_sh(source, sh_npy_order(source, list(n_frames)), n_frames), None
    except EvaluationError as e:
        raise EvaluationError(f"{e} (gt-sh.npy pads every test video to T = ceil(frames / 16) snippets: "
                              "evaluate all of them, with features extracted with --tail pad)") from None


GT_KINDS.register("sh-npy", _sh_npy_gt)  # RTFM's gt-sh.npy (frame counts T x 16 of every test video)
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
GT_INTERVALS = {"ucf": _ucf_intervals, "xd": _xd_intervals, "csv": _csv_intervals,
                "sh-masks": lambda source, convention: ev.shanghaitech_intervals(source)}

#: ``--scores-per``: ``snippet`` (one score per ``clip_len`` frames), ``segment`` (one per
#: segment of the video, Sultani's), or ``auto`` (:func:`scores_are_segments`).
SCORES_PER = ("auto", "snippet", "segment")


def _segments_beside(path: Path, cache: dict[Path, dict[str, ev.FrameCount] | None]) -> ev.FrameCount | None:
    """The ``segments.csv`` entry of a feature file (``None``: not listed, or no such table)."""
    from vadpipe.pipeline.train.segments import SEGMENTS_MANIFEST, read_segments_manifest

    folder = path.parent
    if folder not in cache:
        f = folder / SEGMENTS_MANIFEST
        cache[folder] = read_segments_manifest(f) if f.is_file() else None
    entries = cache[folder]
    return None if entries is None else entries.get(path.name)


def scores_are_segments(rows: list[DatasetRow], root: str | os.PathLike | None, scores_per: str = "auto") -> bool:
    """Whether a dataset's head scores are per segment (see :data:`SCORES_PER`).

    ``auto``: per segment when every row's features are Sultani text files (``.txt``, his
    32-segment format) or are listed in a ``segments.csv`` beside them (written by
    ``vadpipe features segments``); per snippet when none is.

    Raises:
        ConfigError: an unknown ``scores_per``, or a dataset that mixes the two kinds.
    """
    if scores_per not in SCORES_PER:
        raise ConfigError(f"scores_per must be one of {SCORES_PER}, got {scores_per!r}")
    if scores_per != "auto":
        return scores_per == "segment"
    cache: dict[Path, dict[str, ev.FrameCount] | None] = {}
    kinds = {}
    for r in rows:
        path = Path(r.crop_path(0, root))
        kinds[r.name] = path.suffix.lower() == ".txt" or _segments_beside(path, cache) is not None
    if all(kinds.values()):
        return bool(kinds)
    if any(kinds.values()):
        seg = sorted(v for v, s in kinds.items() if s)
        snip = sorted(v for v, s in kinds.items() if not s)
        raise ConfigError(f"the dataset mixes segment features ({len(seg)}, e.g. {seg[0]}) and snippet features "
                          f"({len(snip)}, e.g. {snip[0]}); evaluate them separately or say --scores-per")
    return False


def read_frame_counts(path: str | os.PathLike) -> dict[str, ev.FrameCount]:
    """``{video: FrameCount}`` from a CSV with columns ``video,frames`` (optionally ``clips``),
    or from a ``features.csv`` of ``vadpipe extract`` (its ``n_frames``, ``n_clips``; rows
    with no frame count are left out). Keys through :func:`video_key`.

    Raises:
        ManifestError: neither kind of file, bad numbers, or a video listed twice.
    """
    from vadpipe.errors import ManifestError

    df = read_string_csv(path, "frame counts")
    if {"n_frames", "n_clips"} <= set(df.columns):
        frames_col, clips_col = "n_frames", "n_clips"
    elif "frames" in df.columns:
        frames_col, clips_col = "frames", ("clips" if "clips" in df.columns else None)
    else:
        raise ManifestError(f"{path}: frame counts need columns video,frames (or a features.csv)")
    if "video" not in df.columns:
        raise ManifestError(f"{path}: frame counts need a 'video' column")
    out: dict[str, ev.FrameCount] = {}
    for i, rec in enumerate(df.to_dict("records")):
        try:
            frames = int(rec[frames_col] or 0)
            clips = int(rec[clips_col]) if clips_col and rec[clips_col].strip() else None
        except ValueError as e:
            raise ManifestError(f"{path}:{i + 2}: bad number ({e})") from e
        key = video_key(rec["video"])
        if key in out:
            raise ManifestError(f"{path}:{i + 2}: video {key!r} listed twice")
        if frames > 0:
            out[key] = ev.FrameCount(frames, clips or None)
    return out


def frame_counts_for(rows: list[DatasetRow], root: str | os.PathLike | None,
                     frames_csv: str | os.PathLike | None = None) -> dict[str, ev.FrameCount]:
    """Real frame counts of a dataset's videos: from ``frames_csv`` (:func:`read_frame_counts`)
    when given, else from the ``segments.csv`` beside each row's feature file. Videos
    without a known count are left out (:func:`evaluate_scores` names them)."""
    if frames_csv is not None:
        counts = read_frame_counts(frames_csv)
        return {r.name: counts[r.name] for r in rows if r.name in counts}
    cache: dict[Path, dict[str, ev.FrameCount] | None] = {}
    out = {}
    for r in rows:
        entry = _segments_beside(Path(r.crop_path(0, root)), cache)
        if entry is not None and entry.frames > 0:
            out[r.name] = entry
    return out


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


def _segment_bounds(n_segments: int, count: ev.FrameCount | None, clip_len: int) -> tuple[list, list]:
    """``start_frame``, ``end_frame`` of each segment's frames (empty without a count)."""
    if count is None:
        return [""] * n_segments, [""] * n_segments
    clips = ev.sultani_segment_clips(n_segments, count.n_clips(clip_len))
    return ([min(a * clip_len, count.frames) for a, _ in clips], [min(b * clip_len, count.frames) for _, b in clips])


def write_scores_csv(path: str | os.PathLike, rows: list[DatasetRow], scores: dict[str, np.ndarray],
                     clip_len: int = ev.CLIP_LEN, *, segments: Mapping[str, ev.FrameCount] | None = None) -> None:
    """Write ``scores.csv`` (see the module docstring) atomically.

    ``segments``: the scores are per segment, and these are the videos' real frame counts
    (``start_frame``/``end_frame`` from Sultani's mapping; empty for a video not in it).
    """
    frames = []
    for r in rows:
        s = np.asarray(scores[r.video], dtype=np.float64)
        i = np.arange(s.size)
        if segments is None:
            start, end = i * clip_len, (i + 1) * clip_len
        else:
            start, end = _segment_bounds(s.size, segments.get(r.name), clip_len)
        frames.append(pd.DataFrame({"video": r.video, "feature_path": r.feature_path, "clip": i,
                                    "start_frame": start, "end_frame": end, "score": s}))
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


def require_frame_counts(videos: Iterable[str], segments: Mapping[str, ev.FrameCount]) -> None:
    """Check that every video of segment scores has a frame count.

    Raises:
        EvaluationError: naming the first five videos without one, and how many.
    """
    counts = {video_key(v) for v in segments}
    names = [video_key(v) for v in videos]
    missing = [v for v in names if v not in counts]
    if missing:
        more = " …" if len(missing) > 5 else ""
        raise EvaluationError(
            f"{len(missing)} of {len(names)} video(s) have segment scores but no frame count: "
            f"{', '.join(missing[:5])}{more}; segment scores are evaluated on the video's real frames: give "
            "--frames CSV (video,frames, or stage one's features.csv), or make the segments with "
            "`vadpipe features segments` (its segments.csv records them)")


def frame_view(scores: Mapping[str, np.ndarray], clip_len: int = ev.CLIP_LEN,
               segments: Mapping[str, ev.FrameCount] | None = None
               ) -> tuple[dict[str, int], dict[str, np.ndarray]]:
    """``(n_frames, frame scores)`` by video key: what :func:`evaluate_scores` evaluates.

    Snippet scores ``[T]`` (``segments`` None) cover ``T × clip_len`` frames, each score
    repeated ``clip_len`` times. Segment scores ``[N]`` (``segments`` = the real frame
    counts) cover the video's frames, mapped by
    :func:`~vadpipe.pipeline.train.metrics.segment_scores_to_frames`.

    Raises:
        EvaluationError: segment scores of videos without a frame count (the first five
            are named, with how many).
    """
    keyed = {video_key(v): np.asarray(s) for v, s in scores.items()}
    if segments is None:
        return ({v: int(s.size) * clip_len for v, s in keyed.items()},
                {v: ev.expand_scores(s, clip_len) for v, s in keyed.items()})
    counts = {video_key(v): c for v, c in segments.items()}
    require_frame_counts(keyed, counts)
    return ({v: counts[v].frames for v in keyed},
            {v: ev.segment_scores_to_frames(s, counts[v].frames, n_clips=counts[v].clips, clip_len=clip_len)
             for v, s in keyed.items()})


def compare_scores(scores: dict[str, np.ndarray], other: dict[str, np.ndarray], gt: str, *,
                   clip_len: int = ev.CLIP_LEN, convention: str | None = None,
                   resamples: int = ev.BOOTSTRAP_RESAMPLES, seed: int = 0,
                   segments: Mapping[str, ev.FrameCount] | None = None) -> ev.PairedComparison:
    """:func:`~vadpipe.pipeline.train.metrics.paired_bootstrap_auc` of two score sets
    on the GT source ``"KIND:PATH"``, both evaluated as :func:`evaluate_scores` does
    (:func:`frame_view`: ``T × clip_len`` frames per video, or the real frame counts of
    ``segments``); the two must have the same videos and snippet counts.

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
    n_frames, frames_a = frame_view(a, clip_len, segments)
    _, frames_b = frame_view(b, clip_len, segments)
    gt_masks, _ = build_gt(kind, source, n_frames, convention)
    return ev.paired_bootstrap_auc(frames_a, frames_b, gt_masks, resamples=resamples, seed=seed)


def build_gt(kind: str, source: str | os.PathLike, n_frames: dict[str, int], convention: str | None = None
             ) -> tuple[dict[str, np.ndarray], dict[str, str] | None]:
    """Frame masks (and classes when the source has them) for ``n_frames`` videos.

    ``kind``: ``ucf`` (``Temporal_Anomaly_Annotation.txt``; convention ``rtfm`` by default,
    or ``sultani``/``vadclip``), ``xd`` (``annotations.txt``), ``sh-masks`` (folder of
    ``test_frame_mask/<id>.npy``, :func:`~vadpipe.pipeline.train.metrics.shanghaitech_gt`),
    ``csv`` (``video,start,end``) or ``sh-npy`` (RTFM's ``gt-sh.npy``: ``n_frames`` must hold
    every test video, in the order of :func:`sh_npy_order`, and add up to the array's length).
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
                    frame_scores_csv: str | os.PathLike | None = None, strict_gt: bool = False,
                    segments: Mapping[str, ev.FrameCount] | None = None) -> ev.EvalResult:
    """Frame-level metrics of ``scores`` against a GT source ``"KIND:PATH"``.

    Snippet scores (``segments`` None): each video is evaluated on ``T × clip_len`` frames
    (RTFM's protocol: GT built from the snippet count), snippet scores repeated
    ``clip_len`` times. Segment scores (``segments`` = ``{video: FrameCount}``): each video
    is evaluated on its real frames, the segment scores mapped as Sultani's MATLAB does
    (:func:`frame_view`). Annotated frames past the evaluated length are cut; for interval
    GT (``ucf``, ``xd``, ``csv``) and ShanghaiTech masks the result's ``warnings`` say which
    videos lost GT that way (:func:`~vadpipe.pipeline.train.metrics.gt_cut_warning`), and
    ``strict_gt`` makes it an error (RTFM's own script stops on such a mismatch).

    Raises:
        EvaluationError: with ``strict_gt``, annotated frames past a video's evaluated
            length; segment scores without frame counts (:func:`frame_view`).
    """
    kind, source = parse_gt(gt)
    n_frames, frame_scores = frame_view(scores, clip_len, segments)
    gt_masks, classes = build_gt(kind, source, n_frames, convention)
    warnings = []
    if kind in GT_INTERVALS:
        cuts = ev.annotated_cut(GT_INTERVALS[kind](source, convention), n_frames)
        if cuts:
            message = ev.gt_cut_warning(cuts, clip_len, frame_counts=segments is not None)
            if strict_gt:
                raise EvaluationError(message + " (--strict-gt)")
            warnings.append(message)
    if classes is not None:
        classes = {k: c for k, c in classes.items() if k in frame_scores}
    result = ev.evaluate(frame_scores, gt_masks, classes)
    result.warnings.extend(warnings)
    if frame_scores_csv is not None:
        ev.write_frame_scores_csv(frame_scores_csv, frame_scores, gt_masks)
    return result


def test_set_auc(test_csv: str | os.PathLike, gt: str, device: torch.device, *, scores_per: str = "auto",
                 frames_csv: str | os.PathLike | None = None) -> Callable[[AnomalyHead], float]:
    """``head -> frame-level test AUC``, for the published code's (optimistic) test-set
    model selection; the data and GT are read once. Segment features
    (:func:`scores_are_segments`) are evaluated on their real frame counts
    (:func:`frame_counts_for`).

    Raises:
        EvaluationError: segment features without frame counts (before any training).
    """
    from vadpipe.manifests.datasets import dataset_root, read_dataset

    parse_gt(gt)
    rows, root = read_dataset(test_csv), dataset_root(test_csv)
    segments = frame_counts_for(rows, root, frames_csv) if scores_are_segments(rows, root, scores_per) else None
    if segments is not None:
        require_frame_counts([r.name for r in rows], segments)  # before any training

    def metric(head: AnomalyHead) -> float:
        loaded = LoadedHead(head, "test", {}, "test")
        return evaluate_scores(score_rows(loaded, rows, root, device), gt, segments=segments).auc

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

