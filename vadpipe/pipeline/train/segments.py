"""Sultani-style 32-segment video features (``Save_C3DFeatures_32Segments.m``).

Sultani et al. (CVPR 2018, WaqasSultani/AnomalyDetectionCVPR2018) average the per-clip C3D
fc6 features of a video (one 4096-d vector per 16 frames, ``T`` of them) into 32 segments:

* ``s = round(linspace(1, T, 33))`` (1-based); segment ``i`` is the mean of clips
  ``s(i) .. s(i+1)-1``, or clip ``s(i)`` alone when that range is empty (``T <= 32``).
  The ``ishots == length(thirty2_shots)`` branch never runs inside the loop, so the last
  clip ``T`` is never used when ``T > 32``; :func:`vadpipe.heads.data.segment_bounds`
  (``scheme="sultani"``) implements exactly this;
* every segment is divided by its L2 norm (the script raises on an all-zero segment);
* the 32 x 4096 matrix is written with ``fprintf(fid, '%f ', row); fprintf(fid, '\\n')``:
  6 decimals, each value followed by one space, every line ending in ``" \\n"``.

The MATLAB computation is in double precision, and so is ours.

Beside the segment files, :func:`segments_for_manifest` writes ``segments.csv``
(:data:`SEGMENTS_MANIFEST`): per file the source video, its frame and clip counts (from
``features.csv``) and the segment count. ``vadpipe eval`` reads it to know that a dataset's
scores are per segment and to map them onto each video's real frames
(:func:`vadpipe.pipeline.train.metrics.segment_scores_to_frames`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from vadpipe.errors import ConfigError, FeatureLoadError, ManifestError
from vadpipe.heads.data import l2_normalize_segments, resample_segments
from vadpipe.manifests.atomic import atomic_save_npy, atomic_write_text
from vadpipe.manifests.features import read_manifest
from vadpipe.manifests.tables import read_string_csv
from vadpipe.pipeline.train.metrics import FrameCount

__all__ = ["format_sultani_txt", "read_segments_manifest", "segments_for_manifest", "sultani_segments",
           "write_sultani_txt"]

FORMATS = ("txt", "npy")
#: The table :func:`segments_for_manifest` writes beside the segment files.
SEGMENTS_MANIFEST = "segments.csv"
#: Its columns: segment file name (in that folder), source video, frames and clips of the
#: source video (``features.csv``'s ``n_frames``, ``n_clips``), segments per file.
SEGMENTS_COLUMNS = ("file", "video", "n_frames", "n_clips", "n_segments")


def sultani_segments(features, n: int = 32, l2: bool = True, scheme: str = "sultani") -> np.ndarray:
    """Average per-clip features ``[T, D]`` (or ``[T, N, D]``) into ``[n, D]`` float64.

    With ``N`` crops per clip the crops are averaged first (Sultani used a single centre
    crop; averaging crops is our extension). ``scheme`` is passed to
    :func:`vadpipe.heads.data.resample_segments` (``"sultani"`` reproduces the MATLAB bins,
    ``"rtfm"`` uses RTFM's). With ``l2`` each segment is divided by its L2 norm.

    Raises:
        FeatureLoadError: wrong number of dimensions, ``T == 0``, non-finite values, or an
            all-zero segment when ``l2`` (the MATLAB script stops there too).
    """
    feat = np.asarray(features, dtype=np.float64)
    if feat.ndim == 3:
        feat = feat.mean(axis=1)
    if feat.ndim != 2:
        raise FeatureLoadError(f"features must be [T, D] or [T, crops, D], got shape {feat.shape}")
    if feat.shape[0] == 0:
        raise FeatureLoadError("cannot make segments of a video with 0 clips")
    if not np.isfinite(feat).all():
        raise FeatureLoadError("features contain NaN or Inf")
    seg = resample_segments(feat, n, scheme)
    if l2:
        norms = np.linalg.norm(seg, axis=-1)
        zero = np.flatnonzero(norms == 0)
        if zero.size:
            raise FeatureLoadError(
                f"segment(s) {zero.tolist()} are all zero and cannot be L2-normalised"
            )
        seg = l2_normalize_segments(seg)
    return np.ascontiguousarray(seg, dtype=np.float64)


def format_sultani_txt(seg) -> str:
    """Text of Sultani's feature files: per row ``'%f '`` for each value, then ``'\\n'``."""
    seg = np.asarray(seg, dtype=np.float64)
    if seg.ndim != 2:
        raise FeatureLoadError(f"segments must be [n, D], got shape {seg.shape}")
    if not np.isfinite(seg).all():
        raise FeatureLoadError("segments contain NaN or Inf")
    return "".join("".join(f"{v:f} " for v in row.tolist()) + "\n" for row in seg)


def write_sultani_txt(path: str | os.PathLike, seg) -> Path:
    """Write ``seg [n, D]`` to ``path`` in Sultani's text format, atomically."""
    atomic_write_text(path, format_sultani_txt(seg))
    return Path(path)


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise FeatureLoadError(f"cannot read features {path}: {e}") from e


def segments_for_manifest(
    features_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    n: int = 32,
    l2: bool = True,
    fmt: str = "txt",
    scheme: str = "sultani",
) -> dict[str, Path]:
    """Make ``n``-segment files for every ``ok`` row of a ``features.csv``.

    ``single`` rows hold ``[T, crops, D]`` (or ``[T, D]``); ``per-crop`` rows one ``[T, D]``
    file per crop, stacked to ``[T, crops, D]``. Crops are averaged, then
    :func:`sultani_segments`. Output: ``out_dir/<video stem>.txt`` (Sultani's text format,
    :func:`write_sultani_txt`) or ``.npy`` (float32), written atomically, and
    ``out_dir/segments.csv`` (:data:`SEGMENTS_COLUMNS`; see :func:`read_segments_manifest`).

    Returns:
        ``{video: written path}``.

    Raises:
        ConfigError: unknown ``fmt``. FeatureLoadError: two videos with the same stem.
        FeatureLoadError: a feature file is missing/unreadable or cannot be segmented.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    features_csv = Path(features_csv)
    root = features_csv.parent
    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    stems: dict[str, str] = {}
    records: list[tuple[str, str, int, int, int]] = []
    for row in read_manifest(features_csv):
        if row.status != "ok":
            continue
        stem = Path(row.video).stem
        if stem in stems:
            raise FeatureLoadError(
                f"videos {stems[stem]!r} and {row.video!r} have the same name {stem!r}; "
                "segment files would overwrite each other"
            )
        stems[stem] = row.video
        files = row.feature_files(root)
        for f in files:
            if not f.is_file():
                raise FeatureLoadError(f"feature file {f} of {row.video} does not exist")
        arrays = [_load(f) for f in files]
        feat = arrays[0] if len(arrays) == 1 else np.stack(arrays, axis=1)
        try:
            seg = sultani_segments(feat, n=n, l2=l2, scheme=scheme)
        except (FeatureLoadError, ValueError) as e:
            raise FeatureLoadError(f"cannot segment {files[0]} ({row.video}): {e}") from e
        target = out_dir / f"{stem}.{fmt}"
        if fmt == "txt":
            write_sultani_txt(target, seg)
        else:
            atomic_save_npy(target, seg.astype(np.float32))
        written[row.video] = target
        records.append((target.name, row.video, row.n_frames, row.n_clips, n))
    atomic_write_text(out_dir / SEGMENTS_MANIFEST,
                      pd.DataFrame(records, columns=SEGMENTS_COLUMNS).to_csv(index=False, lineterminator="\n"))
    return written


def read_segments_manifest(path: str | os.PathLike) -> dict[str, FrameCount]:
    """``{segment file name: FrameCount(frames, clips) of its video}`` from a
    ``segments.csv`` written by :func:`segments_for_manifest`.

    Raises:
        ManifestError: missing columns or bad numbers.
    """
    df = read_string_csv(path, "segments manifest")
    missing = [c for c in SEGMENTS_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(f"{path} is not a vadpipe segments.csv: missing column(s) {', '.join(missing)}")
    out = {}
    for i, rec in enumerate(df.to_dict("records")):
        try:
            out[rec["file"]] = FrameCount(int(rec["n_frames"]), int(rec["n_clips"]))
        except ValueError as e:
            raise ManifestError(f"{path}:{i + 2}: bad number ({e})") from e
    return out
