"""Dataset CSVs for stage two: which feature files make up a training or test set.

Schema (column, meaning):

=============  =====================================================================
video          video name (``Abuse001_x264``) or path; :func:`video_key` turns either
               into the key that ground truth and score files use
feature_path   feature file, relative to the CSV's folder or absolute; a pattern with
               ``{k}`` for per-crop files (``clip__{k}.npy`` → ``clip__0.npy`` …; only the
               last ``{k}`` is replaced, see :func:`~vadpipe.manifests.features.crop_file`)
label          ``normal`` or ``anomalous`` (the video-level weak label)
split          optional: ``train``, ``val`` or ``test`` (empty = not assigned)
class          optional: the anomaly class (``Abuse``, ``Normal``, XD's ``B1-B2`` …)
=============  =====================================================================

Builders:

* :func:`from_features_manifest` joins stage one's ``features.csv`` with labels;
* :func:`import_rtfm_list` reads RTFM's community ``*.list`` files (UCF-Crime,
  ShanghaiTech), labelling by the index rule the RTFM/MGFN code uses and
  cross-checking it against the video name where that is possible;
* :func:`import_xd_list` reads XD-Violence's ``rgb.list`` / ``rgb_test.list``;
* :func:`import_ucf_video_list` reads UCF-Crime's ``Anomaly_Train.txt`` / ``Anomaly_Test.txt``;
* :func:`split_train_val` makes a deterministic, stratified validation split.

Pure data: pandas and numpy only, no torch.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path, PureWindowsPath
from typing import Iterable, Mapping

import numpy as np
import pandas as pd

from vadpipe.errors import ManifestError
from vadpipe.manifests.atomic import atomic_write_text
from vadpipe.manifests.features import CROP_TOKEN, crop_file, read_manifest
from vadpipe.manifests.tables import read_string_csv

LABELS = ("normal", "anomalous")
SPLITS = ("", "train", "val", "test")
REQUIRED_COLUMNS = ("video", "feature_path", "label")
OPTIONAL_COLUMNS = ("split", "class")
COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

#: Datasets whose RTFM-style lists :func:`import_rtfm_list` reads (index-based labels).
RTFM_LIST_DATASETS = ("ucf", "shanghai")

#: Video file extensions: the ones a folder scan (``vadpipe extract DIR``) takes, case-insensitive,
#: and the only ones :func:`video_key` strips (XD-Violence names contain dots,
#: ``Bad.Boys.1995__#01-11-55_...``, so ``Path.stem`` would cut them).
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv", ".ts")

#: Index rule of the RTFM/MGFN code: the first ``n`` lines of a list are anomalous.
#: UCF-Crime train 810 (MGFN ``dataset.py`` ``self.list[:810]``, RTFM issue #20),
#: UCF-Crime test 140, ShanghaiTech train 63 (RTFM ``dataset.py`` ``self.list[:63]``),
#: ShanghaiTech test 44 (RTFM ``list/make_gt_sh.py``: ``index > 43`` is normal).
RTFM_ANOMALOUS_FIRST = {
    ("ucf", "train"): 810,
    ("ucf", "test"): 140,
    ("shanghai", "train"): 63,
    ("shanghai", "test"): 44,
}


@dataclass(frozen=True)
class DatasetRow:
    """One row of a dataset CSV (see the module docstring).

    ``class_name`` is the CSV column ``class`` (a Python keyword).
    """

    video: str
    feature_path: str
    label: str
    split: str = ""
    class_name: str = ""

    @property
    def name(self) -> str:
        """The video's key: base name without a video extension (see :func:`video_key`)."""
        return video_key(self.video)

    @property
    def is_anomalous(self) -> bool:
        return self.label == "anomalous"

    @property
    def target(self) -> int:
        """The weak label as 0 (normal) / 1 (anomalous)."""
        return int(self.label == "anomalous")

    @property
    def per_crop(self) -> bool:
        """Whether ``feature_path`` is a ``{k}`` pattern of per-crop files."""
        return CROP_TOKEN in self.feature_path

    def crop_path(self, k: int, root: str | os.PathLike | None = None) -> str:
        """The file of crop ``k`` (:func:`~vadpipe.manifests.features.crop_file`), resolved
        against ``root``; ``feature_path`` itself (resolved) when it is not a pattern, or names
        an existing file (a single file whose name holds ``{k}``, as the loaders read it)."""
        path = self.resolve(root)
        if not self.per_crop or os.path.isfile(path):
            return path
        return crop_file(path, k)  # the last {k} is in feature_path, never in root

    def resolve(self, root: str | os.PathLike | None) -> str:
        """``feature_path`` made absolute against ``root`` (kept as is when absolute).

        The ``{k}`` placeholder, if any, is kept.
        """
        p = self.feature_path
        if root is None or _is_absolute(p):
            return p
        return str(Path(root) / p)


def video_key(video: str | os.PathLike) -> str:
    """Key of a video for ground truth and scores: its base name without a video extension.

    ``/data/UCF/Abuse/Abuse028_x264.mp4`` → ``Abuse028_x264``; Windows separators are
    understood; only the extensions in :data:`VIDEO_EXTENSIONS` are stripped
    (case-insensitive), so dotted names such as XD-Violence's survive.
    """
    s = str(video).strip()
    base = re.split(r"[\\/]", s)[-1]
    low = base.lower()
    for ext in VIDEO_EXTENSIONS:
        if low.endswith(ext) and len(base) > len(ext):
            return base[: -len(ext)]
    return base


def normalize_label(value: object) -> str:
    """``normal``/``anomalous`` from common spellings (``abnormal``, ``0``/``1``, booleans).

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, (bool, np.bool_)):
        return "anomalous" if value else "normal"
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return LABELS[int(value)]
    s = str(value).strip().lower()
    if s in ("normal", "0"):
        return "normal"
    if s in ("anomalous", "abnormal", "anomaly", "1"):
        return "anomalous"
    raise ValueError(f"label {value!r} is neither normal nor anomalous")


def _is_absolute(p: str) -> bool:
    return os.path.isabs(p) or PureWindowsPath(p).is_absolute()


# ----------------------------------------------------------------------------- CSV I/O


def read_dataset(path: str | os.PathLike) -> list[DatasetRow]:
    """Read and validate a dataset CSV.

    ``feature_path`` values are returned as written; resolve relative ones against the
    CSV's folder (:func:`dataset_root`, :meth:`DatasetRow.resolve`).

    Raises:
        ManifestError: unreadable file, missing columns, empty video or feature path,
            label not ``normal``/``anomalous``, unknown split, duplicate video — with
            ``file:line`` (the header is line 1).
    """
    path = Path(path)
    df = read_string_csv(path, "dataset")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{path} is not a vadpipe dataset CSV: missing column(s) {', '.join(missing)} "
            f"(expected {', '.join(REQUIRED_COLUMNS)}[, {', '.join(OPTIONAL_COLUMNS)}])"
        )
    rows: list[DatasetRow] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2
        video = rec["video"].strip()
        fpath = rec["feature_path"].strip()
        label = rec["label"].strip()
        split = rec.get("split", "").strip()
        cls = rec.get("class", "").strip()
        if not video:
            raise ManifestError(f"{path}:{line}: empty video")
        if not fpath:
            raise ManifestError(f"{path}:{line}: empty feature_path for video {video!r}")
        if label not in LABELS:
            raise ManifestError(f"{path}:{line}: label {label!r} not in {LABELS}")
        if split not in SPLITS:
            raise ManifestError(f"{path}:{line}: split {split!r} not in {SPLITS[1:]} (or empty)")
        if video in seen:
            raise ManifestError(f"{path}:{line}: video {video!r} already listed on line {seen[video]}")
        seen[video] = line
        rows.append(DatasetRow(video=video, feature_path=fpath, label=label, split=split, class_name=cls))
    return rows


def write_dataset(path: str | os.PathLike, rows: Iterable[DatasetRow]) -> None:
    """Write ``rows`` to ``path`` atomically, in the given order.

    Raises:
        ManifestError: a row that :func:`read_dataset` would reject (bad label or split,
            empty fields, duplicate video).
    """
    rows = list(rows)
    seen: set[str] = set()
    for r in rows:
        if not r.video or not r.feature_path:
            raise ManifestError(f"dataset row with empty video or feature_path: {r}")
        if r.label not in LABELS:
            raise ManifestError(f"video {r.video!r}: label {r.label!r} not in {LABELS}")
        if r.split not in SPLITS:
            raise ManifestError(f"video {r.video!r}: split {r.split!r} not in {SPLITS[1:]}")
        if r.video in seen:
            raise ManifestError(f"video {r.video!r} listed twice")
        seen.add(r.video)
    df = pd.DataFrame(
        [(r.video, r.feature_path, r.label, r.split, r.class_name) for r in rows], columns=list(COLUMNS)
    )
    atomic_write_text(path, df.to_csv(index=False))


def check_labels(rows: Iterable[DatasetRow], what: str = "training set", *, both_classes: bool = True) -> None:
    """Refuse a set of videos that weakly-supervised training (or validation) cannot use.

    Args:
        rows: the set's rows.
        what: how messages name the set (``"training set"``, ``"data.csv"``).
        both_classes: also require normal and anomalous videos (training, validation).

    Raises:
        ManifestError: no rows (e.g. a CSV with only its header), or only one label.
    """
    rows = list(rows)
    if not rows:
        raise ManifestError(f"the {what} has no videos (a dataset CSV with only its header?); "
                            "list videos with `vadpipe manifest from-features` or `vadpipe manifest import`")
    if both_classes:
        labels = {r.label for r in rows}
        if len(labels) == 1:
            (label,), other = labels, next(x for x in LABELS if x not in labels)
            shown = ", ".join(r.video for r in rows[:3]) + (", ..." if len(rows) > 3 else "")
            raise ManifestError(f"the {what} has only {label} videos ({len(rows)}: {shown}); weakly-supervised "
                                f"training needs normal and anomalous ones: label some videos {other!r}")


def dataset_root(path: str | os.PathLike) -> Path:
    """The folder relative ``feature_path`` values of the dataset CSV ``path`` refer to."""
    return Path(path).resolve().parent


# ----------------------------------------------------------------------------- builders


def read_labels_csv(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
    """Read a labels CSV ``video,label[,class]`` into ``{video: (label, class)}``.

    Labels may be spelled as :func:`normalize_label` accepts.

    Raises:
        ManifestError: missing columns, bad label, duplicate video (with ``file:line``).
    """
    path = Path(path)
    df = read_string_csv(path, "labels")
    if "video" not in df.columns or "label" not in df.columns:
        raise ManifestError(f"{path}: a labels CSV needs columns video,label[,class]")
    out: dict[str, tuple[str, str]] = {}
    for i, rec in enumerate(df.to_dict("records")):
        line = i + 2
        video = rec["video"].strip()
        try:
            label = normalize_label(rec["label"])
        except ValueError as e:
            raise ManifestError(f"{path}:{line}: {e}") from None
        if video in out:
            raise ManifestError(f"{path}:{line}: video {video!r} listed twice")
        out[video] = (label, rec.get("class", "").strip())
    return out


def _labels_lookup(labels: Mapping | str | os.PathLike) -> dict[str, tuple[str, str]]:
    if isinstance(labels, (str, os.PathLike)):
        return read_labels_csv(labels)
    out: dict[str, tuple[str, str]] = {}
    for video, value in labels.items():
        if isinstance(value, tuple):
            label, cls = value[0], (value[1] if len(value) > 1 else "")
        else:
            label, cls = value, ""
        try:
            out[str(video)] = (normalize_label(label), str(cls or ""))
        except ValueError as e:
            raise ManifestError(f"labels[{video!r}]: {e}") from None
    return out


def from_features_manifest(
    features_csv: str | os.PathLike,
    labels: Mapping | str | os.PathLike,
    *,
    split: str = "",
    relative_to: str | os.PathLike | None = None,
    missing: str = "error",
) -> list[DatasetRow]:
    """Dataset rows for the ``ok`` rows of a stage-one ``features.csv``.

    Args:
        features_csv: the manifest; ``failed``/``skipped`` rows are left out.
        labels: ``{video: label}`` or ``{video: (label, class)}``, or the path of a labels
            CSV (``video,label[,class]``). A manifest row is matched by its exact
            ``video`` value first, then by :func:`video_key` (so ``Abuse001_x264`` labels
            ``/data/Abuse001_x264.mp4``).
        split: value of the ``split`` column for every row.
        relative_to: write ``feature_path`` relative to this folder (the folder the dataset
            CSV will be saved in); by default paths are absolute. Per-crop rows keep
            their ``{k}`` pattern.
        missing: ``"error"`` (default) raises when a manifest video has no label;
            ``"skip"`` leaves it out.

    Returns:
        Rows in the manifest's order (sorted by video).

    Raises:
        ManifestError: unlabelled videos (with ``missing="error"``), ambiguous keys.
    """
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    if split not in SPLITS:
        raise ManifestError(f"split {split!r} not in {SPLITS[1:]}")
    features_csv = Path(features_csv)
    manifest_dir = features_csv.resolve().parent
    lookup = _labels_lookup(labels)
    by_key: dict[str, tuple[str, str] | None] = {}
    for video, value in lookup.items():
        k = video_key(video)
        by_key[k] = None if (k in by_key and by_key[k] != value) else value  # None = ambiguous
    rows: list[DatasetRow] = []
    unlabelled: list[str] = []
    for fr in read_manifest(features_csv):
        if fr.status != "ok":
            continue
        value = lookup.get(fr.video)
        if value is None:
            k = video_key(fr.video)
            if k in by_key and by_key[k] is None:
                raise ManifestError(f"labels give conflicting values for videos named {k!r}")
            value = by_key.get(k)
        if value is None:
            unlabelled.append(fr.video)
            continue
        fpath = str(manifest_dir / fr.feature_path) if not _is_absolute(fr.feature_path) else fr.feature_path
        if relative_to is not None:
            fpath = os.path.relpath(fpath, Path(relative_to).resolve())
        rows.append(
            DatasetRow(video=fr.video, feature_path=fpath, label=value[0], split=split, class_name=value[1])
        )
    if unlabelled and missing == "error":
        shown = ", ".join(unlabelled[:5]) + (f" … ({len(unlabelled)} in all)" if len(unlabelled) > 5 else "")
        raise ManifestError(f"{features_csv}: no label for {shown}; add them or pass missing='skip'")
    return rows


def _list_lines(list_path: Path) -> list[tuple[int, str]]:
    """Non-empty lines of a community list with their 1-based line numbers; CRLF-safe."""
    try:
        text = list_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read list {list_path}: {e}") from e
    out = []
    for i, line in enumerate(text.splitlines(), start=1):  # splitlines handles \r\n and \r
        s = line.strip()
        if s:
            out.append((i, s))
    return out


def _basename(p: str) -> str:
    """File name of a path written on Windows (``G:\\a\\b.npy``) or POSIX."""
    return re.split(r"[\\/]", p)[-1]


def _placed(file_name: str, feature_root: str | os.PathLike | None) -> str:
    return file_name if feature_root is None else str(Path(feature_root) / file_name)


def _infer_split(list_path: Path, split: str | None) -> str:
    if split is not None:
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return split
    return "test" if "test" in list_path.name.lower() else "train"


_UCF_CLASS = re.compile(r"^([A-Za-z]+)")


def import_rtfm_list(
    list_path: str | os.PathLike,
    *,
    dataset: str,
    feature_root: str | os.PathLike | None = None,
    split: str | None = None,
    n_anomalous: int | None = None,
    mask_dir: str | os.PathLike | None = None,
) -> list[DatasetRow]:
    """Rows for one of RTFM's ``*.list`` files (one ``*_i3d.npy`` path a line).

    The authors' directories (``G:\\UCF_Train_ten_crop_i3d\\``, ``/home/yu/...``) are
    stripped; the file name is kept and placed under ``feature_root`` when given (the
    ``feature_path`` is then ``<feature_root>/<file>``, else just ``<file>``, i.e. relative
    to the folder of the dataset CSV you write). CRLF line ends are handled.

    Labels follow the index rule of the RTFM/MGFN code (:data:`RTFM_ANOMALOUS_FIRST`): the
    first 810 (UCF train), 140 (UCF test), 63 (ShanghaiTech train) or 44 (ShanghaiTech
    test) lines are anomalous, the rest normal. The rule is cross-checked:

    * UCF-Crime: a name starting with ``Normal`` (``Normal_Videos001_x264``) must be
      normal, any other name anomalous;
    * ShanghaiTech: names carry no label; if ``mask_dir`` (RTFM's ``test_frame_mask/``,
      which has a mask for every anomalous video, train and test) is given, a video must
      be anomalous exactly when ``<mask_dir>/<id>.npy`` exists.

    Args:
        list_path: the list file.
        dataset: ``"ucf"`` or ``"shanghai"``.
        feature_root: folder to place the file names under.
        split: ``"train"`` or ``"test"``; by default ``test`` when the file name contains
            ``test``, else ``train``.
        n_anomalous: override the number of leading anomalous lines (for edited lists).
        mask_dir: ShanghaiTech masks for the cross-check (ignored for UCF).

    Returns:
        Rows in list order; ``video`` is the file name without ``_i3d.npy`` (``.npy``);
        ``class`` is the UCF class parsed from the name (``Normal`` for normal videos)
        and empty for ShanghaiTech.

    Raises:
        ManifestError: the index rule and the name (or mask) disagree, fewer lines than
            the rule needs, duplicate videos — with ``file:line``.
    """
    list_path = Path(list_path)
    if dataset not in RTFM_LIST_DATASETS:
        raise ValueError(f"dataset must be one of {RTFM_LIST_DATASETS}, got {dataset!r}")
    split = _infer_split(list_path, split)
    n_abn = RTFM_ANOMALOUS_FIRST[(dataset, split)] if n_anomalous is None else int(n_anomalous)
    lines = _list_lines(list_path)
    if len(lines) < n_abn:
        raise ManifestError(
            f"{list_path}: {len(lines)} entries, but the {dataset} {split} rule makes the first {n_abn} "
            "anomalous; pass n_anomalous= for an edited list"
        )
    rows: list[DatasetRow] = []
    seen: dict[str, int] = {}
    for idx, (lineno, entry) in enumerate(lines):
        fname = _basename(entry)
        if not fname.lower().endswith(".npy"):
            raise ManifestError(f"{list_path}:{lineno}: {entry!r} is not a .npy path")
        video = fname[: -len("_i3d.npy")] if fname.endswith("_i3d.npy") else fname[: -len(".npy")]
        label = "anomalous" if idx < n_abn else "normal"
        cls = ""
        if dataset == "ucf":
            m = _UCF_CLASS.match(video)
            cls = m.group(1) if m else ""
            by_name = "normal" if video.startswith("Normal") else "anomalous"
            if by_name != label:
                raise ManifestError(
                    f"{list_path}:{lineno}: {video!r} is entry {idx + 1}, which the index rule "
                    f"(first {n_abn} anomalous) labels {label}, but its name says {by_name}"
                )
        elif mask_dir is not None:
            has_mask = (Path(mask_dir) / f"{video}.npy").is_file()
            if has_mask != (label == "anomalous"):
                raise ManifestError(
                    f"{list_path}:{lineno}: {video!r} is entry {idx + 1}, which the index rule "
                    f"(first {n_abn} anomalous) labels {label}, but it "
                    f"{'has' if has_mask else 'has no'} frame mask in {mask_dir}"
                )
        if video in seen:
            raise ManifestError(f"{list_path}:{lineno}: video {video!r} already on line {seen[video]}")
        seen[video] = lineno
        rows.append(
            DatasetRow(
                video=video, feature_path=_placed(fname, feature_root), label=label, split=split, class_name=cls
            )
        )
    return rows


_XD_CROP = re.compile(r"^(?P<name>.+)__(?P<k>\d+)\.npy$")


def xd_class(name: str) -> str:
    """XD-Violence class tag of a video name: the part after ``label_`` without ``-0`` fillers.

    ``..._label_B2-0-0`` → ``B2``; ``..._label_G-B2-B6`` → ``G-B2-B6``; ``..._label_A`` → ``A``
    (A = non-violent; B1 fighting, B2 shooting, B4 riot, B5 abuse, B6 car accident,
    G explosion). Empty when the name has no ``label_`` tag.
    """
    i = name.rfind("label_")
    if i < 0:
        return ""
    parts = [p for p in name[i + len("label_"):].split("-") if p and p != "0"]
    return "-".join(parts)


def import_xd_list(
    list_path: str | os.PathLike,
    feature_root: str | os.PathLike | None = None,
    *,
    split: str | None = None,
) -> list[DatasetRow]:
    """Rows for XD-Violence's ``rgb.list`` / ``rgb_test.list`` (per-crop I3D files).

    Each video has one line per crop, ``<dir>/<name>__<k>.npy`` with ``k = 0..K-1`` (K = 5
    in the published lists), on consecutive lines; they collapse to one row whose
    ``feature_path`` is ``<name>__{k}.npy`` (under ``feature_root`` when given). A name
    containing ``label_A`` is normal, any other anomalous (violent); ``class`` is
    :func:`xd_class`. ``split`` defaults to ``test`` when the file name contains ``test``.

    Raises:
        ManifestError: a line that is not ``<name>__<k>.npy``, a video whose lines are not
            consecutive or whose crops are not exactly ``0..K-1`` — with ``file:line``.
    """
    list_path = Path(list_path)
    split = _infer_split(list_path, split)
    groups: list[tuple[str, int, list[int]]] = []  # (name, first line, crops)
    done: set[str] = set()
    for lineno, entry in _list_lines(list_path):
        fname = _basename(entry)
        m = _XD_CROP.match(fname)
        if not m:
            raise ManifestError(f"{list_path}:{lineno}: {entry!r} is not <name>__<k>.npy")
        name, k = m.group("name"), int(m.group("k"))
        if groups and groups[-1][0] == name:
            groups[-1][2].append(k)
            continue
        if name in done:
            raise ManifestError(f"{list_path}:{lineno}: crops of {name!r} are not on consecutive lines")
        if groups:
            done.add(groups[-1][0])
        groups.append((name, lineno, [k]))
    rows = []
    for name, lineno, crops in groups:
        if sorted(crops) != list(range(len(crops))):
            raise ManifestError(f"{list_path}:{lineno}: {name!r} has crops {crops}, expected 0..{len(crops) - 1}")
        label = "normal" if "label_A" in name else "anomalous"
        rows.append(
            DatasetRow(
                video=name,
                feature_path=_placed(f"{name}__{{k}}.npy", feature_root),
                label=label,
                split=split,
                class_name=xd_class(name),
            )
        )
    return rows


# ----------------------------------------------------------------------------- splits


def split_train_val(
    rows: Iterable[DatasetRow], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[DatasetRow], list[DatasetRow]]:
    """Split ``rows`` into train and validation rows, stratified by label.

    For each label separately: the rows are ordered by :attr:`DatasetRow.video` (so the
    result does not depend on the input order), permuted with
    ``numpy.random.default_rng(seed)`` (one generator, normal label first, then
    anomalous), and the first ``floor(val_fraction * n + 0.5)`` (rounded half up) go to
    validation — but at least one when ``val_fraction > 0`` and the label has two or more
    rows, and never all of them. Returned rows keep the input order and get ``split`` set to ``train``/``val``.

    Raises:
        ValueError: ``val_fraction`` outside ``[0, 1)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rows = list(rows)
    rng = np.random.default_rng(seed)
    val_ids: set[int] = set()
    for label in LABELS:
        idx = sorted((i for i, r in enumerate(rows) if r.label == label), key=lambda i: (rows[i].video, i))
        n = len(idx)
        if n == 0:
            continue
        n_val = int(math.floor(val_fraction * n + 0.5))
        if val_fraction > 0 and n >= 2:
            n_val = max(n_val, 1)
        n_val = min(n_val, n - 1)
        perm = rng.permutation(n)
        val_ids.update(idx[j] for j in perm[:n_val])
    train = [replace(r, split="train") for i, r in enumerate(rows) if i not in val_ids]
    val = [replace(r, split="val") for i, r in enumerate(rows) if i in val_ids]
    return train, val


_UCF_NORMAL_FOLDERS = ("Training_Normal_Videos_Anomaly", "Testing_Normal_Videos_Anomaly", "Normal_Videos_event")


def import_ucf_video_list(
    list_path: str | os.PathLike,
    feature_root: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    suffix: str = ".txt",
) -> list[DatasetRow]:
    """Rows for UCF-Crime's video lists ``Anomaly_Train.txt`` / ``Anomaly_Test.txt``
    (Sultani et al.'s release, one ``Class/Name_x264.mp4`` a line).

    The label comes from the folder: ``Training_Normal_Videos_Anomaly/`` and
    ``Testing_Normal_Videos_Anomaly/`` (and ``Normal_Videos_event/``) are normal, every
    class folder anomalous; it is cross-checked against the name (normal videos are
    ``Normal_Videos…``). ``class`` is the folder (``Normal`` for normal videos) and
    ``feature_path`` is ``<Name_x264><suffix>`` (Sultani's ``Name_x264.txt``, 32 lines of
    C3D fc6 features), under ``feature_root`` when given.

    Raises:
        ManifestError: a line that is not ``Folder/Name.mp4``, a folder/name disagreement
            or a duplicate video — with ``file:line``.
    """
    list_path = Path(list_path)
    split = _infer_split(list_path, split)
    rows: list[DatasetRow] = []
    seen: dict[str, int] = {}
    for lineno, entry in _list_lines(list_path):
        parts = [p for p in re.split(r"[\\/]", entry) if p]
        if len(parts) < 2 or video_key(parts[-1]) == parts[-1]:
            raise ManifestError(f"{list_path}:{lineno}: {entry!r} is not Folder/Name.mp4")
        folder, video = parts[-2], video_key(parts[-1])
        normal = folder in _UCF_NORMAL_FOLDERS
        if normal != video.startswith("Normal"):
            raise ManifestError(f"{list_path}:{lineno}: {video!r} sits in folder {folder!r}, "
                                f"which says {'normal' if normal else 'anomalous'}, but its name says otherwise")
        if video in seen:
            raise ManifestError(f"{list_path}:{lineno}: video {video!r} already on line {seen[video]}")
        seen[video] = lineno
        rows.append(DatasetRow(video=video, feature_path=_placed(video + suffix, feature_root),
                               label="normal" if normal else "anomalous", split=split,
                               class_name="Normal" if normal else folder))
    return rows


#: Community list formats ``vadpipe manifest import KIND`` reads.
LIST_KINDS = ("rtfm-list", "xd-list", "ucf-video-list")


def import_list(kind: str, list_path: str | os.PathLike, *, dataset: str = "ucf",
                feature_root: str | os.PathLike | None = None) -> list[DatasetRow]:
    """Rows of a community list of kind ``kind`` (:data:`LIST_KINDS`): :func:`import_rtfm_list`
    (``dataset`` picks its labelling rule), :func:`import_xd_list` or :func:`import_ucf_video_list`.

    Raises:
        ManifestError: an unknown kind (naming the known ones), or a malformed list.
    """
    if kind == "rtfm-list":
        return import_rtfm_list(list_path, dataset=dataset, feature_root=feature_root)
    if kind == "xd-list":
        return import_xd_list(list_path, feature_root=feature_root)
    if kind == "ucf-video-list":
        return import_ucf_video_list(list_path, feature_root=feature_root)
    raise ManifestError(f"unknown list kind {kind!r}; known: {', '.join(LIST_KINDS)}")
