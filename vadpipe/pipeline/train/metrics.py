"""Frame-level evaluation: ground-truth builders, snippet→frame expansion, metrics.

Ground truth (GT) is a ``dict[video key → uint8 frame mask]`` (1 = anomalous frame); keys
are :func:`vadpipe.manifests.datasets.video_key` of the names (``Abuse028_x264``, no
``.mp4``). The public annotation files do not say how to read their numbers and the
community's readers disagree, so every builder names its convention:

* ``rtfm`` — 0-based, end inclusive: ``s e`` marks ``mask[s:e + 1]``; RTFM
  ``list/make_gt_ucf.py`` (``range(s, e + 1)``);
* ``sultani`` — 1-based, end inclusive: ``mask[s - 1:e]``; Sultani's
  ``Evaluate_Anomaly_Detector.m`` (MATLAB ``GT(s:e) = 1``);
* ``vadclip`` — 0-based, end exclusive: ``mask[s:e]``; VadCLIP ``list/make_gt_ucf.py`` and
  ``make_gt_xd.py`` (``gt[s:e] = 1``).

Intervals are clipped to the video's ``n_frames``. ``n_frames`` usually comes from the
features (:func:`frames_from_clips`: ``n_clips × 16``, the frames the snippets cover; this is
how RTFM/MGFN build their GT, so frames of a dropped tail are not evaluated). Segment scores
(Sultani's 32 segments a video) are evaluated on the video's real frame count instead
(:class:`FrameCount`, :func:`segment_scores_to_frames`, as his MATLAB does).

Metrics are implemented here in numpy (no scikit-learn) and equal scikit-learn's,
ties included: :func:`roc_auc` = ``roc_auc_score``, :func:`average_precision` =
``average_precision_score`` (step-wise), :func:`pr_auc` = ``auc(recall, precision)`` on
``precision_recall_curve`` — what RTFM/MGFN/UR-DMU print as "AP"/"pr_auc"; it is
trapezoidal and differs from ``average_precision_score`` (VadCLIP reports the latter for
XD-Violence).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from vadpipe.errors import EvaluationError, ManifestError
from vadpipe.manifests.atomic import atomic_open
from vadpipe.manifests.datasets import video_key
from vadpipe.manifests.tables import read_string_csv

CONVENTIONS = ("rtfm", "sultani", "vadclip")
#: Frames per snippet of the community's I3D/C3D features.
CLIP_LEN = 16


# ----------------------------------------------------------------------------- helpers


def frames_from_clips(n_clips, clip_len: int = CLIP_LEN):
    """Frames covered by ``n_clips`` non-overlapping clips: ``n_clips * clip_len``.

    ``n_clips`` may be an int or a ``dict[name, int]`` (returns a dict).
    """
    if isinstance(n_clips, Mapping):
        return {k: int(v) * clip_len for k, v in n_clips.items()}
    return int(n_clips) * clip_len


def _keyed(d: Mapping[str, object], what: str) -> dict[str, object]:
    out: dict[str, object] = {}
    origin: dict[str, str] = {}
    for name, v in d.items():
        k = video_key(name)
        if k in out:
            raise EvaluationError(f"{what}: {origin[k]!r} and {name!r} are the same video {k!r}")
        out[k], origin[k] = v, name
    return out


def _interval_slice(s: int, e: int, convention: str) -> tuple[int, int]:
    if convention == "rtfm":
        return s, e + 1
    if convention == "sultani":
        return s - 1, e
    if convention == "vadclip":
        return s, e
    raise ValueError(f"unknown GT convention {convention!r}; use one of {CONVENTIONS}")


def _mask(n: int, intervals: Iterable[tuple[int, int]]) -> np.ndarray:
    m = np.zeros(int(n), dtype=np.uint8)
    for a, b in intervals:
        a, b = max(int(a), 0), min(int(b), int(n))
        if b > a:
            m[a:b] = 1
    return m


def annotated_cut(intervals: Mapping[str, Iterable[tuple[int, int]]],
                  n_frames: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """``{video: (annotated frames past its length, annotated frames)}`` for the videos of
    ``n_frames`` whose anomalous intervals (0-based, end exclusive) reach past the
    ``n_frames`` that are evaluated: the frames GT builders clip away silently."""
    keyed = _keyed(intervals, "intervals")
    out = {}
    for name, n in _keyed(n_frames, "n_frames").items():
        mask_all = _mask(max([int(b) for _, b in keyed.get(name, ())] + [int(n)]), keyed.get(name, ()))
        cut = int(mask_all[int(n):].sum())
        if cut:
            out[name] = (cut, int(mask_all.sum()))
    return out


def gt_cut_warning(cuts: Mapping[str, tuple[int, int]], clip_len: int, *, frame_counts: bool = False) -> str:
    """One line about :func:`annotated_cut`'s videos: how many, how many lose all their GT
    (and so count as normal videos), the first names, and the likely cause.

    ``frame_counts``: the videos were evaluated on given frame counts (segment scores, see
    :func:`segment_scores_to_frames`) rather than on their scored ``T × clip_len`` frames.
    """
    lost = sorted(v for v, (cut, total) in cuts.items() if cut == total)
    first = ", ".join(f"{v} ({cuts[v][0]} of {cuts[v][1]} frames)" for v in sorted(cuts)[:3])
    scored = "given frame counts" if frame_counts else f"scored T × {clip_len} frames"
    cause = ("The frame counts are shorter than the annotated videos: check that they are those of the GT's videos"
             if frame_counts else
             "The features are shorter than the annotated videos: check that they were extracted from "
             "the same videos (and clip length) as the GT")
    return (f"the GT of {len(cuts)} video(s) reaches past their {scored} and is cut "
            f"({len(lost)} lose all of it and count as normal{': ' + ', '.join(lost[:3]) if lost else ''}); first: "
            f"{first}. {cause}")


def _no_line(source: str | os.PathLike, what: str, missing: list[str]) -> EvaluationError:
    """The error for videos an annotation file has no line for (first five named)."""
    more = f" … ({len(missing)} in all)" if len(missing) > 5 else ""
    return EvaluationError(f"{source} has no line for {what}{', '.join(sorted(missing)[:5])}{more}")


def _read_lines(path: str | os.PathLike) -> list[tuple[int, str]]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read annotations {path}: {e}") from e
    return [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip()]


# ----------------------------------------------------------------------------- GT builders


def read_ucf_crime_annotations(annotation_txt: str | os.PathLike) -> dict[str, tuple[str, list[tuple[int, int]]]]:
    """Parse ``Temporal_Anomaly_Annotation.txt``: ``{name: (class, [(s, e), ...])}``.

    Lines are ``name.mp4  Class  s1  e1  s2  e2`` (whitespace-separated); a ``-1 -1`` pair
    means no interval. Numbers are kept as written (see the conventions table).
    """
    out: dict[str, tuple[str, list[tuple[int, int]]]] = {}
    for lineno, line in _read_lines(annotation_txt):
        parts = line.split()
        if len(parts) != 6:
            raise ManifestError(f"{annotation_txt}:{lineno}: expected 6 fields 'name class s1 e1 s2 e2', got {line!r}")
        try:
            nums = [int(x) for x in parts[2:]]
        except ValueError:
            raise ManifestError(f"{annotation_txt}:{lineno}: non-integer frame number in {line!r}") from None
        pairs = []
        for s, e in ((nums[0], nums[1]), (nums[2], nums[3])):
            if s == -1 and e == -1:
                continue
            if s < 0 or e < s:
                raise ManifestError(f"{annotation_txt}:{lineno}: bad interval {s} {e}")
            pairs.append((s, e))
        name = video_key(parts[0])
        if name in out:
            raise ManifestError(f"{annotation_txt}:{lineno}: {name!r} annotated twice")
        out[name] = (parts[1], pairs)
    return out


def ucf_crime_gt(
    annotation_txt: str | os.PathLike,
    n_frames: Mapping[str, int],
    convention: str = "rtfm",
) -> dict[str, np.ndarray]:
    """Frame masks of the UCF-Crime test videos in ``n_frames``.

    Args:
        annotation_txt: Sultani's ``Temporal_Anomaly_Annotation.txt`` (the ``.mp4``-less
            VadCLIP copy works too).
        n_frames: frames per video (keys are normalised with ``video_key``); only these
            videos get a mask.
        convention: ``rtfm`` (default; 0-based, end inclusive), ``sultani`` (1-based, end
            inclusive) or ``vadclip`` (0-based, end exclusive).

    ``Normal`` videos (all ``-1``) get all zeros. Intervals are clipped to ``n_frames``.

    Raises:
        EvaluationError: a video of ``n_frames`` has no line in the file.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown GT convention {convention!r}; use one of {CONVENTIONS}")
    ann = read_ucf_crime_annotations(annotation_txt)
    out = {}
    missing = []
    for name, n in _keyed(n_frames, "n_frames").items():
        if name not in ann:
            missing.append(name)
            continue
        out[name] = _mask(int(n), (_interval_slice(s, e, convention) for s, e in ann[name][1]))
    if missing:
        raise _no_line(annotation_txt, "", missing)
    return out


def ucf_crime_classes(annotation_txt: str | os.PathLike) -> dict[str, str]:
    """``{video: class}`` from the UCF-Crime annotation file (``Normal`` for normal videos)."""
    return {name: cls for name, (cls, _) in read_ucf_crime_annotations(annotation_txt).items()}


def read_xd_violence_annotations(annotations_txt: str | os.PathLike) -> dict[str, list[tuple[int, int]]]:
    """Parse XD-Violence ``annotations.txt``: ``{name: [(s, e), ...]}`` (``.mp4`` stripped)."""
    out: dict[str, list[tuple[int, int]]] = {}
    for lineno, line in _read_lines(annotations_txt):
        parts = line.split()
        if len(parts) < 3 or len(parts) % 2 == 0:
            raise ManifestError(f"{annotations_txt}:{lineno}: expected 'name s1 e1 [s2 e2 ...]', got {line[:80]!r}")
        try:
            nums = [int(x) for x in parts[1:]]
        except ValueError:
            raise ManifestError(f"{annotations_txt}:{lineno}: non-integer frame number") from None
        pairs = list(zip(nums[0::2], nums[1::2]))
        if any(s < 0 or e < s for s, e in pairs):
            raise ManifestError(f"{annotations_txt}:{lineno}: bad interval in {pairs}")
        name = video_key(parts[0])
        if name in out:
            raise ManifestError(f"{annotations_txt}:{lineno}: {name!r} annotated twice")
        out[name] = pairs
    return out


#: XD-Violence's class codes, as they appear in its file names (``..._label_B2-G-0``; ``A``
#: is normal, ``0`` an empty slot), from the dataset's page.
XD_CLASSES = {"B1": "Fighting", "B2": "Shooting", "B4": "Riot", "B5": "Abuse", "B6": "Car accident",
              "G": "Explosion"}


def xd_violence_classes(names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """``{video: (class, ...)}`` of XD-Violence videos from the ``label_…`` part of their
    names, in the order written (the first is the main one); normal videos (``label_A``) get
    ``("Normal",)``.

    Raises:
        EvaluationError: a name without a ``label_`` part or with an unknown code.
    """
    out = {}
    for name in names:
        key = video_key(name)
        m = re.search(r"_label_([A-Z0-9-]+)", key)
        if m is None:
            raise EvaluationError(f"{key!r} is not an XD-Violence name (no '_label_' part)")
        codes = [c for c in m.group(1).split("-") if c != "0"]
        if codes == ["A"]:
            out[key] = ("Normal",)
            continue
        unknown = [c for c in codes if c not in XD_CLASSES]
        if unknown or not codes:
            raise EvaluationError(f"{key!r}: unknown XD-Violence class code(s) {unknown or codes}; known: "
                                  f"{', '.join(XD_CLASSES)}, A (normal)")
        out[key] = tuple(XD_CLASSES[c] for c in codes)
    return out


def xd_violence_gt(
    annotations_txt: str | os.PathLike,
    n_frames: Mapping[str, int],
    convention: str = "vadclip",
) -> dict[str, np.ndarray]:
    """Frame masks of the XD-Violence test videos in ``n_frames``.

    Pairs are read as ``gt[s:e] = 1`` (``vadclip``, the default, as VadCLIP's
    ``make_gt_xd.py``); ``rtfm`` (end inclusive) and ``sultani`` are accepted for
    comparison. Non-violent videos (``label_A`` in the name) have no line and get zeros.

    Raises:
        EvaluationError: a video without ``label_A`` has no line in the file.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown GT convention {convention!r}; use one of {CONVENTIONS}")
    ann = read_xd_violence_annotations(annotations_txt)
    out = {}
    missing = []
    for name, n in _keyed(n_frames, "n_frames").items():
        if name in ann:
            out[name] = _mask(int(n), (_interval_slice(s, e, convention) for s, e in ann[name]))
        elif "label_A" in name:
            out[name] = np.zeros(int(n), dtype=np.uint8)
        else:
            missing.append(name)
    if missing:
        raise _no_line(annotations_txt, "violent video(s) ", missing)
    return out


#: Most frames :func:`shanghaitech_gt` pads a mask with by default: less than one clip, the
#: partial last clip an extractor with ``--tail pad`` completes (``T = ceil(n / 16)``).
SH_MAX_PAD = CLIP_LEN - 1


def _read_sh_mask(f: Path) -> np.ndarray:
    try:
        m = (np.load(f, allow_pickle=False).reshape(-1) != 0).astype(np.uint8)
    except (OSError, ValueError) as e:
        raise ManifestError(f"cannot read mask {f}: {e}") from e
    if len(m) == 0:
        raise EvaluationError(f"{f} is an empty mask")
    return m


def shanghaitech_gt(mask_dir: str | os.PathLike, n_frames: Mapping[str, int], *,
                    max_pad: int | None = SH_MAX_PAD) -> dict[str, np.ndarray]:
    """Frame masks of ShanghaiTech videos from RTFM's ``test_frame_mask/<id>.npy`` files.

    A video with a mask file (``[n]`` 0/1, ``n`` = the video's frames) is anomalous; a video
    without one is normal (all zeros). The mask is fitted to ``n_frames`` (usually the
    scored ``T × 16``):

    * shorter (features extracted with ``--tail pad``, ``T = ceil(n / 16)``; no ShanghaiTech
      length is a multiple of 16): padded with its **last label**, exactly as RTFM's
      ``gt-sh.npy`` is (``make_gt_sh.py``), so the padded tail is evaluated like the frame
      before it. This is expected and not reported;
    * longer (``--tail drop``, ``T = floor(n / 16)``): cut to ``n_frames``; anomalous frames
      cut away are reported by ``vadpipe eval`` like those of interval GT
      (:func:`shanghaitech_intervals`, :func:`annotated_cut`).

    Args:
        mask_dir: folder of ``<video id>.npy`` masks.
        n_frames: ``{video: frames to evaluate}`` (keys through ``video_key``).
        max_pad: most frames a mask may be padded with (default: less than one 16-frame
            clip); ``None``: no limit.

    Returns:
        ``{video: uint8 [n_frames[video]]}``.

    Raises:
        EvaluationError: an empty mask, or one that would need more than ``max_pad``
            frames of padding (the features are not of that video, or of another clip length).
        ManifestError: an unreadable mask file.
    """
    mask_dir = Path(mask_dir)
    out = {}
    for name, n in _keyed(n_frames, "n_frames").items():
        f = mask_dir / f"{name}.npy"
        n = int(n)
        if f.is_file():
            m = _read_sh_mask(f)
            if max_pad is not None and n - len(m) > max_pad:
                raise EvaluationError(
                    f"{name}: {n} frames to evaluate but its mask {f} has {len(m)}: padding {n - len(m)} frames "
                    f"is more than {max_pad}; the features do not belong to this video (or use another clip length)"
                )
            out[name] = np.concatenate([m, np.full(max(n - len(m), 0), m[-1], np.uint8)])[:n]
        else:
            out[name] = np.zeros(n, dtype=np.uint8)
    return out


def shanghaitech_intervals(mask_dir: str | os.PathLike) -> dict[str, list[tuple[int, int]]]:
    """``{video: [(start, end), ...]}``: the runs of anomalous frames (0-based, end
    exclusive) of every mask in ``mask_dir``, for :func:`annotated_cut`."""
    out = {}
    for f in sorted(Path(mask_dir).glob("*.npy")):
        d = np.diff(np.r_[0, _read_sh_mask(f).astype(np.int8), 0])
        out[video_key(f.stem)] = list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))
    return out


def split_gt_sh(
    gt_sh_npy: str | os.PathLike,
    names_in_order: Sequence[str],
    n_frames: Mapping[str, int],
) -> dict[str, np.ndarray]:
    """Split RTFM's concatenated ShanghaiTech ``gt-sh.npy`` into per-video masks by frame
    counts.

    ``gt-sh.npy`` (``[F]`` float 0/1) is every test video's mask concatenated in test-list
    order (``shanghai-i3d-test-10crop.list``), each padded with its last label up to a
    multiple of 16 frames, i.e. ``T × 16`` with ``T = ceil(n / 16)`` snippets.

    Args:
        gt_sh_npy: the array file.
        names_in_order: the videos in the array's (test-list) order; all of them.
        n_frames: ``{video: frames}`` of every video of ``names_in_order`` (``T × 16``).

    Returns:
        ``{video: uint8 [n_frames[video]]}`` in ``names_in_order`` order.

    Raises:
        EvaluationError: a video without a frame count, or frame counts that do not add up
            to ``F`` (both lengths are named).
        ManifestError: an unreadable file.
    """
    try:
        gt = np.load(gt_sh_npy, allow_pickle=False).reshape(-1)
    except (OSError, ValueError) as e:
        raise ManifestError(f"cannot read {gt_sh_npy}: {e}") from e
    names = [video_key(n) for n in names_in_order]
    keyed = _keyed(n_frames, "n_frames")
    missing = [n for n in names if n not in keyed]
    if missing:
        more = f" … ({len(missing)} in all)" if len(missing) > 5 else ""
        raise EvaluationError(f"{gt_sh_npy} holds {len(names)} videos; no frame count (no scores) for "
                              f"{', '.join(missing[:5])}{more}")
    lengths = [int(keyed[n]) for n in names]
    if sum(lengths) != len(gt):
        raise EvaluationError(f"{gt_sh_npy} has {len(gt)} frames but the {len(names)} videos' frame counts add up "
                              f"to {sum(lengths)}")
    out = {}
    start = 0
    for name, n in zip(names, lengths):
        out[name] = (gt[start:start + n] != 0).astype(np.uint8)
        start += n
    return out


def read_gt_sh(
    gt_sh_npy: str | os.PathLike,
    names_in_order: Sequence[str],
    n_snippets: Mapping[str, int] | Sequence[int],
    clip_len: int = CLIP_LEN,
) -> dict[str, np.ndarray]:
    """Split RTFM's concatenated ``gt-sh.npy`` into per-video masks by snippet counts
    (:func:`split_gt_sh` with ``n_frames = n_snippets × clip_len``).

    ``names_in_order`` is the test-list order; ``n_snippets`` gives each video's snippet
    count (dict by name or a sequence aligned with the names).

    Raises:
        EvaluationError: the lengths do not add up to the array's length.
    """
    names = [video_key(n) for n in names_in_order]
    if isinstance(n_snippets, Mapping):
        keyed = _keyed(n_snippets, "n_snippets")
        try:
            counts = [int(keyed[n]) for n in names]
        except KeyError as e:
            raise EvaluationError(f"no snippet count for {e.args[0]!r}") from None
    else:
        counts = [int(c) for c in n_snippets]
        if len(counts) != len(names):
            raise EvaluationError(f"{len(names)} names but {len(counts)} snippet counts")
    try:
        return split_gt_sh(gt_sh_npy, names, {n: c * clip_len for n, c in zip(names, counts)})
    except EvaluationError as e:
        raise EvaluationError(f"{e} ({clip_len} frames per snippet)") from None


def intervals_csv_gt(csv: str | os.PathLike, n_frames: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Frame masks from a generic CSV with columns ``video,start,end``.

    One row per anomalous interval, frames 0-based and ``end`` exclusive (``mask[start:end]
    = 1``, the Python-slice/VadCLIP convention); a video may have several rows; a row with
    empty ``start``/``end`` lists a video as normal. Videos of ``n_frames`` without rows
    are normal (all zeros). Intervals are clipped to ``n_frames``.

    Raises:
        ManifestError: missing columns, non-integer or negative numbers, ``end < start``.
    """
    df = read_string_csv(csv, "intervals")
    if not {"video", "start", "end"} <= set(df.columns):
        raise ManifestError(f"{csv}: an intervals CSV needs columns video,start,end")
    intervals: dict[str, list[tuple[int, int]]] = {}
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2
        name = video_key(rec["video"])
        s, e = rec["start"].strip(), rec["end"].strip()
        intervals.setdefault(name, [])
        if not s and not e:
            continue
        try:
            s_i, e_i = int(s), int(e)
        except ValueError:
            raise ManifestError(f"{csv}:{line}: start/end must be integers, got {s!r}, {e!r}") from None
        if s_i < 0 or e_i < s_i:
            raise ManifestError(f"{csv}:{line}: bad interval [{s_i}, {e_i})")
        intervals[name].append((s_i, e_i))
    return {name: _mask(int(n), intervals.get(name, ())) for name, n in _keyed(n_frames, "n_frames").items()}


# ----------------------------------------------------------------------------- scores


def expand_scores(
    snippet_scores,
    clip_len: int = CLIP_LEN,
    n_frames: int | None = None,
    tail: str = "drop",
) -> np.ndarray:
    """Snippet scores ``[T]`` → frame scores: each score repeated ``clip_len`` times.

    That is RTFM/MGFN's ``np.repeat(scores, 16)``. With ``n_frames``:

    * ``n_frames > T × clip_len`` (the extractor dropped a partial last clip): the trailing
      frames get the **last** snippet's score — what Sultani's
      ``Evaluate_Anomaly_Detector.m`` does (``repmat(score(end), ...)``) — so every frame of
      the video is evaluated. The alternative, RTFM's, is to evaluate only the first
      ``T × clip_len`` frames: its GT is built from snippet counts (``n_frames =
      n_clips × 16``, :func:`frames_from_clips`), so nothing needs filling.
    * ``n_frames < T × clip_len`` (the extractor padded the last clip, e.g. UR-DMU): cut.

    ``tail`` says what the extractor did, and checks that ``n_frames`` fits it:
    ``"drop"`` (default; stage one drops the tail) requires ``0 <= n_frames - T × clip_len
    < clip_len``; ``"pad"`` requires ``0 <= T × clip_len - n_frames < clip_len``;
    ``"any"`` checks nothing. A larger gap means the frame count belongs to other
    features (e.g. another frame rate).

    Raises:
        EvaluationError: empty scores, or ``n_frames`` that does not fit ``tail``.
    """
    s = np.asarray(snippet_scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise EvaluationError("no snippet scores to expand")
    if tail not in ("drop", "pad", "any"):
        raise ValueError(f"tail must be 'drop', 'pad' or 'any', got {tail!r}")
    frames = np.repeat(s, clip_len)
    if n_frames is None:
        return frames
    n_frames = int(n_frames)
    covered = len(frames)
    if tail == "drop" and not 0 <= n_frames - covered < clip_len:
        raise EvaluationError(
            f"{n_frames} frames do not fit {s.size} snippets × {clip_len} with a dropped tail "
            f"(expected {covered}..{covered + clip_len - 1}); pass tail='any' to force"
        )
    if tail == "pad" and not 0 <= covered - n_frames < clip_len:
        raise EvaluationError(
            f"{n_frames} frames do not fit {s.size} snippets × {clip_len} with a padded tail "
            f"(expected {covered - clip_len + 1}..{covered}); pass tail='any' to force"
        )
    if n_frames <= covered:
        return frames[:n_frames]
    return np.concatenate([frames, np.full(n_frames - covered, s[-1])])


#: What :func:`segment_scores_to_frames` gives the clip no segment covers: ``"zero"`` (the
#: MATLAB's initial 0, kept) or ``"last"`` (the last segment's score).
UNCOVERED = ("zero", "last")


@dataclass(frozen=True)
class FrameCount:
    """A video's real length, for evaluating segment scores (:func:`segment_scores_to_frames`).

    ``frames``: the video's frames, those its GT is annotated on. ``clips``: the
    ``clip_len``-frame clips of the per-clip features the segments were averaged from
    (``features.csv``'s ``n_clips``); ``None``: ``frames // clip_len``, what a
    dropped-tail extractor (C3D's, stage one's default) cuts.
    """

    frames: int
    clips: int | None = None

    def n_clips(self, clip_len: int = CLIP_LEN) -> int:
        """The clip count (``clips``, else ``frames // clip_len``)."""
        return int(self.clips) if self.clips is not None else int(self.frames) // clip_len


def sultani_segment_clips(n_segments: int, n_clips: int) -> list[tuple[int, int]]:
    """0-based half-open clip ranges ``[a, b)`` whose frames get each segment's score in
    Sultani's ``Evaluate_Anomaly_Detector.m`` (lines 52-72).

    With ``s = round(linspace(1, n_clips, n_segments + 1))`` (MATLAB rounds halves away
    from zero; its ``linspace`` is ``d1 + (0:n) * (d2 - d1) / n``), segment ``i`` covers the
    1-based clips ``s(i) .. s(i+1) - 1``, or clip ``s(i)`` alone when that range is empty
    (lines 66-67). Ranges are written in order, and an empty segment's clip ``s(i) =
    s(i+1)`` is the first clip of the next segment, which overwrites it: an empty segment's
    score survives only when it is the last segment. The ``ishots == length(Thirty2_shots)``
    branch (line 62) never runs, so once ``n_clips > n_segments / 2 + 1`` (17 for 32
    segments) the last clip is in no range.

    Raises:
        ValueError: ``n_segments < 1`` or ``n_clips < 1``.
    """
    if n_segments < 1 or n_clips < 1:
        raise ValueError(f"need n_segments >= 1 and n_clips >= 1, got {n_segments}, {n_clips}")
    k = np.arange(n_segments + 1, dtype=np.float64)
    edges = np.floor(1.0 + k * (n_clips - 1) / n_segments + 0.5).astype(np.int64)  # MATLAB round (positives)
    out = []
    for ss, nxt in zip(edges[:-1].tolist(), edges[1:].tolist()):
        ee = nxt - 1
        out.append((ss - 1, ss) if ee < ss else (ss - 1, ee))
    return out


def segment_scores_to_frames(
    segment_scores,
    n_frames: int,
    *,
    n_clips: int | None = None,
    clip_len: int = CLIP_LEN,
    uncovered: str = "zero",
) -> np.ndarray:
    """Segment scores ``[N]`` (e.g. Sultani's 32) → frame scores ``[n_frames]`` of the real
    video, as Sultani's ``Evaluate_Anomaly_Detector.m`` maps them.

    The MATLAB (commit 8aa957c) takes the number of 16-frame C3D clips of the video
    (``nFrames_C3D = nFileNumbers * 16``, lines 45-47), starts from zeros over those
    clips' frames (line 51), gives each segment's score to the frames of its clips
    (:func:`sultani_segment_clips`, lines 52-72), then fills the frames after the last
    clip up to the video's frame count with the **last frame's** score (``repmat(
    Detection_score_32shots(end), ...)``, line 75). As no segment covers the last clip
    once ``n_clips > 17`` (32 segments), that clip and the tail keep score 0 there: ``uncovered="zero"``
    (the default) reproduces this; ``"last"`` gives them the last segment's score instead.

    Args:
        segment_scores: ``[N]`` scores, one per segment in time order.
        n_frames: the video's frames (the MATLAB: ``round(duration * 30)``, line 42).
        n_clips: the clips the segments were averaged from; default ``n_frames // clip_len``.
            Clips may cover up to ``clip_len - 1`` frames more than ``n_frames`` (a padded
            last clip); those are cut.
        clip_len: frames per clip (16).
        uncovered: see above, one of :data:`UNCOVERED`.

    Returns:
        float64 ``[n_frames]``.

    Raises:
        EvaluationError: no scores, fewer frames than one clip, or more clips than the
            frames hold.
    """
    s = np.asarray(segment_scores, dtype=np.float64).reshape(-1)
    if s.size == 0:
        raise EvaluationError("no segment scores to expand")
    if uncovered not in UNCOVERED:
        raise ValueError(f"uncovered must be one of {UNCOVERED}, got {uncovered!r}")
    n_frames = int(n_frames)
    n_clips = n_frames // clip_len if n_clips is None else int(n_clips)
    if n_clips < 1:
        raise EvaluationError(f"{n_frames} frames hold no {clip_len}-frame clip to map segment scores onto")
    if n_clips * clip_len - n_frames >= clip_len:
        raise EvaluationError(f"{n_clips} clips of {clip_len} frames do not fit in {n_frames} frames; "
                              "the frame count belongs to another video")
    clip_scores = np.zeros(n_clips)
    covered = np.zeros(n_clips, dtype=bool)
    for score, (a, b) in zip(s.tolist(), sultani_segment_clips(s.size, n_clips)):
        clip_scores[a:b] = score
        covered[a:b] = True
    if uncovered == "last":
        clip_scores[~covered] = s[-1]
    frames = np.repeat(clip_scores, clip_len)
    if n_frames <= frames.size:
        return frames[:n_frames]
    return np.concatenate([frames, np.full(n_frames - frames.size, frames[-1])])


# ----------------------------------------------------------------------------- metrics


def _binary_inputs(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).reshape(-1)
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    if y.shape != x.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {x.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1")
    if np.isnan(x).any():
        raise ValueError("scores contain NaN")
    return y.astype(bool), x


def _curve(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true/false positives at each distinct threshold, scores descending."""
    y, x = _binary_inputs(labels, scores)
    order = np.argsort(-x, kind="mergesort")
    x, y = x[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(x)), x.size - 1]  # last index of each tie group
    tps = np.cumsum(y, dtype=np.int64)[last]
    fps = (last + 1) - tps
    return tps, fps


def _need_both(tps: np.ndarray, fps: np.ndarray, what: str) -> None:
    if tps.size == 0 or tps[-1] == 0 or fps[-1] == 0:
        raise ValueError(f"{what} needs both positive and negative frames")


def roc_auc(labels, scores) -> float:
    """Area under the ROC curve, trapezoidal over distinct thresholds (ties count ½).

    Equals ``sklearn.metrics.roc_auc_score`` and the Mann–Whitney U statistic / (P·N).

    Raises:
        ValueError: only one class present, lengths differ, NaN scores.
    """
    tps, fps = _curve(labels, scores)
    _need_both(tps, fps, "ROC-AUC")
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))


def precision_recall(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct threshold, scores descending (no end point)."""
    tps, fps = _curve(labels, scores)
    if tps.size == 0 or tps[-1] == 0:
        raise ValueError("precision/recall need at least one positive frame")
    return tps / (tps + fps), tps / tps[-1]


def average_precision(labels, scores) -> float:
    """Step-wise average precision ``Σ (R_k − R_{k−1}) · P_k`` over distinct thresholds.

    Equals ``sklearn.metrics.average_precision_score``.
    """
    precision, recall = precision_recall(labels, scores)
    return float(max(0.0, np.sum(np.diff(np.r_[0.0, recall]) * precision)))


def pr_auc(labels, scores) -> float:
    """Trapezoidal area under the precision–recall curve (RTFM/MGFN's "AP").

    Equals ``sklearn.metrics.auc(recall, precision)`` on ``precision_recall_curve``
    output, whose curve starts at (recall 0, precision 1). Points after full recall have
    recall 1, so scikit-learn versions that stop the curve at full recall give the same
    value.
    """
    precision, recall = precision_recall(labels, scores)
    r = np.r_[0.0, recall]
    p = np.r_[1.0, precision]
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) / 2.0))


def false_alarm_rate(normal_scores, threshold: float = 0.5, inclusive: bool = True) -> float:
    """Fraction of frames of normal videos flagged anomalous: ``score >= threshold``.

    Neither RTFM, MGFN nor UR-DMU publish FAR code (UR-DMU issue #11: "count the output
    results of all normal videos"); Sultani et al. report it at a 50 % threshold. ``>=``
    is the convention of scikit-learn's ``roc_curve`` (a frame whose score equals the
    threshold is predicted positive); ``inclusive=False`` gives ``>``. NaN when there are
    no frames.
    """
    x = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return float("nan")
    flagged = x >= threshold if inclusive else x > threshold
    return float(np.count_nonzero(flagged) / x.size)


def _aligned(frame_scores: Mapping[str, object], gt: Mapping[str, np.ndarray]):
    scores = _keyed(frame_scores, "frame_scores")
    truth = _keyed(gt, "gt")
    no_gt = sorted(set(scores) - set(truth))
    if no_gt:
        raise EvaluationError(
            f"{len(no_gt)} video(s) have scores but no ground truth: {', '.join(no_gt[:5])}"
            + (" …" if len(no_gt) > 5 else "")
        )
    names = sorted(scores)
    out = []
    for name in names:
        s = np.asarray(scores[name], dtype=np.float64).reshape(-1)
        g = np.asarray(truth[name]).reshape(-1)
        if s.shape != g.shape:
            raise EvaluationError(
                f"{name}: {s.size} frame scores but {g.size} ground-truth frames "
                "(expand snippet scores with expand_scores(..., n_frames=len(gt)))"
            )
        out.append((name, s, (g != 0).astype(np.uint8)))
    return out, sorted(set(truth) - set(scores))


def per_class_auc(
    frame_scores: Mapping[str, object],
    gt: Mapping[str, np.ndarray],
    classes: Mapping[str, str | Sequence[str]],
) -> dict[str, float]:
    """ROC-AUC per anomaly class.

    For class ``c``: the frames of the anomalous videos of class ``c`` plus the frames of
    **all** normal videos (the common per-class protocol on UCF-Crime / XD-Violence).
    A video may have several classes (XD-Violence's multi-label videos): it then counts in
    each of them. A video is normal when its GT mask has no anomalous frame; normal videos'
    classes are ignored. Only videos with scores are used.

    Raises:
        EvaluationError: an anomalous video without a class, or the checks of
            :func:`evaluate`.
    """
    videos, _ = _aligned(frame_scores, gt)
    cls = {video_key(k): v for k, v in classes.items()}
    normal = [(s, g) for _, s, g in videos if not g.any()]
    by_class: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for name, s, g in videos:
        if g.any():
            if name not in cls:
                raise EvaluationError(f"anomalous video {name!r} has no class")
            for c in ([cls[name]] if isinstance(cls[name], str) else cls[name]):
                by_class.setdefault(str(c), []).append((s, g))
    out = {}
    for c in sorted(by_class):
        parts = by_class[c] + normal
        y = np.concatenate([g for _, g in parts])
        x = np.concatenate([s for s, _ in parts])
        out[c] = roc_auc(y, x) if 0 < y.sum() < y.size else float("nan")
    return out


@dataclass
class EvalResult:
    """Frame-level results over the concatenation of the videos (sorted by name).

    ``far`` is over the frames of normal videos (GT without anomalous frames), NaN when
    there are none; ``per_class`` is empty unless classes were given;
    ``videos_without_scores`` lists GT videos that were not evaluated.
    """

    auc: float
    ap: float
    pr_auc: float
    far: float
    per_class: dict[str, float] = field(default_factory=dict)
    n_videos: int = 0
    n_frames: int = 0
    videos_without_scores: list[str] = field(default_factory=list)
    #: problems with the GT worth a user's attention (see :func:`gt_cut_warning`)
    warnings: list[str] = field(default_factory=list)


def evaluate(
    frame_scores: Mapping[str, object],
    gt: Mapping[str, np.ndarray],
    classes: Mapping[str, str] | None = None,
    *,
    far_threshold: float = 0.5,
) -> EvalResult:
    """Frame-level ROC-AUC, AP, PR-AUC, FAR (and per-class AUC) of ``frame_scores``.

    Args:
        frame_scores: ``{video: frame scores}`` (see :func:`expand_scores`); keys are
            matched to GT keys through ``video_key`` (paths and ``.mp4`` are fine).
        gt: ``{video: frame mask}`` from a GT builder.
        classes: ``{video: class}`` for :func:`per_class_auc`.
        far_threshold: threshold of :func:`false_alarm_rate`.

    Videos are concatenated in sorted-name order. Every video with scores must have GT of
    the same length; GT videos without scores are left out and listed in the result.

    Raises:
        EvaluationError: scores without GT, length mismatches, no video, or a test set
            without both anomalous and normal frames.
    """
    videos, unscored = _aligned(frame_scores, gt)
    if not videos:
        raise EvaluationError("no videos to evaluate")
    y = np.concatenate([g for _, _, g in videos])
    x = np.concatenate([s for _, s, _ in videos])
    if not 0 < int(y.sum()) < y.size:
        raise EvaluationError("the ground truth needs both anomalous and normal frames to compute AUC/AP")
    normal_scores = [s for _, s, g in videos if not g.any()]
    far = false_alarm_rate(np.concatenate(normal_scores), far_threshold) if normal_scores else math.nan
    return EvalResult(
        auc=roc_auc(y, x),
        ap=average_precision(y, x),
        pr_auc=pr_auc(y, x),
        far=far,
        per_class=per_class_auc(frame_scores, gt, classes) if classes is not None else {},
        n_videos=len(videos),
        n_frames=int(y.size),
        videos_without_scores=unscored,
    )


def write_frame_scores_csv(
    path: str | os.PathLike,
    frame_scores: Mapping[str, object],
    gt: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write ``video,frame,score,label`` rows (frames 0-based, videos sorted) atomically.

    ``label`` is the GT frame label (0/1); empty when ``gt`` is None. With ``gt``, the
    checks of :func:`evaluate` apply (every video needs GT of the same length).
    """
    if gt is not None:
        videos = [(n, s, g) for n, s, g in _aligned(frame_scores, gt)[0]]
    else:
        keyed = _keyed(frame_scores, "frame_scores")
        videos = [(n, np.asarray(keyed[n], dtype=np.float64).reshape(-1), None) for n in sorted(keyed)]
    with atomic_open(path, "w") as fh:
        fh.write("video,frame,score,label\n")
        for name, s, g in videos:
            df = pd.DataFrame(
                {
                    "video": name,
                    "frame": np.arange(s.size),
                    "score": s,
                    "label": g if g is not None else np.full(s.size, "", dtype=object),
                }
            )
            df.to_csv(fh, header=False, index=False, lineterminator="\n")


def validation_threshold(scores: Sequence[float] | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Threshold maximising Youden's J = TPR − FPR on labelled validation scores.

    Args:
        scores: ``[N]`` video-level scores (e.g. the max clip score of each video).
        labels: ``[N]`` 0 (normal) / 1 (anomalous).

    The candidates are the distinct scores, with the rule ``score >= threshold``; of
    thresholds with the same (maximal) J the **highest** is returned (fewer alarms for
    the same separation).

    Raises:
        ValueError: lengths differ, NaN scores, labels not 0/1, or not both classes.
    """
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"scores and labels differ in length: {x.size} vs {y.size}")
    if not np.isfinite(x).all():
        raise ValueError("validation scores contain NaN or inf")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("validation labels must be 0/1")
    pos, neg = np.sort(x[y == 1]), np.sort(x[y == 0])
    if pos.size == 0 or neg.size == 0:
        raise ValueError("choosing a threshold needs both normal and anomalous validation videos")
    cand = np.unique(x)[::-1]  # descending: argmax takes the first, i.e. highest, on ties
    tp = pos.size - np.searchsorted(pos, cand, side="left")
    fp = neg.size - np.searchsorted(neg, cand, side="left")
    # J · P · N in integers, so that equal J values tie exactly (no float rounding)
    j = tp.astype(np.int64) * neg.size - fp.astype(np.int64) * pos.size
    return float(cand[int(np.argmax(j))])


#: Resamples of :func:`paired_bootstrap_auc` unless told otherwise.
BOOTSTRAP_RESAMPLES = 1000


@dataclass
class PairedComparison:
    """Two score sets on the same ground truth (see :func:`paired_bootstrap_auc`).

    ``diff = auc_a - auc_b`` on the full test set; ``low``/``high`` the percentile
    confidence interval of the difference at ``level``; ``p_not_better`` the fraction of
    resamples where ``a`` is not better than ``b`` (difference ``<= 0``), a one-sided
    bootstrap p-value for "a beats b".
    """

    auc_a: float
    auc_b: float
    diff: float
    low: float
    high: float
    p_not_better: float
    level: float
    resamples: int
    n_videos: int

    def line(self, name_a: str = "a", name_b: str = "b") -> str:
        pct = f"{100 * self.level:g}%"
        return (f"AUC {name_a} {self.auc_a:.4f}, {name_b} {self.auc_b:.4f}: difference {self.diff:+.4f}, "
                f"{pct} CI [{self.low:+.4f}, {self.high:+.4f}] (paired bootstrap over {self.n_videos} videos, "
                f"{self.resamples} resamples); P(difference <= 0) = {self.p_not_better:.3f}")


def paired_bootstrap_auc(
    frame_scores_a: Mapping[str, object],
    frame_scores_b: Mapping[str, object],
    gt: Mapping[str, np.ndarray],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Frame-level ROC-AUC of two score sets on the same GT, with a paired bootstrap of
    their difference.

    The unit resampled is the **video** (frames of one video are not independent): each
    resample draws as many videos as the test set has, with replacement, and computes both
    AUCs on the concatenated frames of the same draw. Draws: ``rng =
    np.random.default_rng(seed)``, then per resample ``rng.integers(0, n, n)`` indexing the
    videos in sorted-name order; a draw without both anomalous and normal frames is drawn
    again (it has no AUC). The interval is the ``(1 ± level) / 2`` percentiles of the
    resampled differences.

    Raises:
        EvaluationError: the two sets do not score the same videos with the same number of
            frames, or :func:`evaluate`'s checks fail.
    """
    if not 0 < level < 1 or resamples < 1:
        raise ValueError(f"level must be in (0, 1) and resamples >= 1, got {level}, {resamples}")
    videos_a, _ = _aligned(frame_scores_a, gt)
    videos_b, _ = _aligned(frame_scores_b, gt)
    names_a, names_b = [v[0] for v in videos_a], [v[0] for v in videos_b]
    if names_a != names_b:
        only = sorted(set(names_a) ^ set(names_b))
        more = " …" if len(only) > 5 else ""
        raise EvaluationError(f"the two score sets cover different videos ({len(only)} in one only: "
                              f"{', '.join(only[:5])}{more}); compare scores of one test set")
    if not videos_a:
        raise EvaluationError("no videos to evaluate")
    gts = [g for _, _, g in videos_a]
    xa = [s for _, s, _ in videos_a]
    xb = [s for _, s, _ in videos_b]
    y = np.concatenate(gts)
    if not 0 < int(y.sum()) < y.size:
        raise EvaluationError("the ground truth needs both anomalous and normal frames to compute AUC")
    auc_a, auc_b = roc_auc(y, np.concatenate(xa)), roc_auc(y, np.concatenate(xb))
    has_pos = np.array([bool(g.any()) for g in gts])
    has_neg = np.array([not bool(g.all()) for g in gts])
    rng = np.random.default_rng(seed)
    n = len(gts)
    diffs = np.empty(resamples)
    k = 0
    while k < resamples:
        idx = rng.integers(0, n, n)
        if not (has_pos[idx].any() and has_neg[idx].any()):
            continue
        yy = np.concatenate([gts[i] for i in idx])
        diffs[k] = roc_auc(yy, np.concatenate([xa[i] for i in idx])) - roc_auc(yy, np.concatenate([xb[i] for i in idx]))
        k += 1
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return PairedComparison(auc_a=auc_a, auc_b=auc_b, diff=auc_a - auc_b, low=float(low), high=float(high),
                            p_not_better=float(np.mean(diffs <= 0)), level=level, resamples=resamples, n_videos=n)
