"""Synthetic features laid out exactly like the public feature sets, named by the REAL lists.

For each dataset the real community lists and GT files from ``../shared/fixtures`` are copied
into ``lists/`` and one small synthetic feature file per list entry is written into
``features/`` under the file name the list gives, in the public layout:

* RTFM UCF-Crime / ShanghaiTech: ``<video>_i3d.npy`` ``[T, 10, D]``;
* XD-Violence: ``<name>__<k>.npy`` ``[T, D]``, ``k = 0..4``;
* Sultani UCF-Crime: ``<video>.txt``, 32 lines of D non-negative, L2-normalised values.

Test videos get as many snippets as their GT needs (annotated end / 16, plus a margin; for
ShanghaiTech, the counts that ``gt-sh.npy`` implies); snippets inside an annotated interval
(test) or a random 30 % stretch (train anomalous videos) are shifted by :data:`SIGNAL`, so a
head trained on them beats chance only if lists, labels and GT line up. The GT is parsed
here independently of vadpipe's readers.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.helpers.shared_data import shared_fixture

#: Feature size of the synthetic sets (the public ones are 1024/2048/4096-D).
DIM = 8
#: Shift of anomalous snippets (in units of the noise's standard deviation).
SIGNAL = 2.0
SEGMENTS = 32

#: (train list, test list, GT) fixtures of each layout.
UCF_GT = "ucf_crime/Temporal_Anomaly_Annotation.txt"
UCF_VIDEO_LISTS = ("ucf_crime/Anomaly_Train.txt", "ucf_crime/vadclip_list/Anomaly_Test.txt", UCF_GT)
RTFM_UCF = ("rtfm_lists/ucf-i3d.list", "rtfm_lists/ucf-i3d-test.list", UCF_GT)
RTFM_SH = ("rtfm_lists/shanghai-i3d-train-10crop.list", "rtfm_lists/shanghai-i3d-test-10crop.list",
           "rtfm_lists/gt-sh.npy")
XD = ("xd_violence/rgb.list", "xd_violence/rgb_test.list", "xd_violence/annotations.txt")


@dataclass(frozen=True)
class PublicSet:
    """Where a synthetic public set was written."""

    features: Path
    lists: Path
    gt: Path
    frames_csv: Path | None = None


def _lines(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _base(entry: str) -> str:
    return re.split(r"[\\/]", entry)[-1]


def ucf_intervals(path: Path) -> dict[str, list[tuple[int, int]]]:
    """``name -> [(s, e)]`` of Temporal_Anomaly_Annotation.txt (``-1`` pairs dropped)."""
    out = {}
    for ln in _lines(path):
        f = ln.split()
        nums = [int(x) for x in f[2:6]]
        out[f[0].replace(".mp4", "")] = [(s, e) for s, e in zip(nums[::2], nums[1::2]) if s >= 0]
    return out


def xd_intervals(path: Path) -> dict[str, list[tuple[int, int]]]:
    out = {}
    for ln in _lines(path):
        f = ln.split()
        nums = [int(x) for x in f[1:]]
        out[f[0].replace(".mp4", "")] = list(zip(nums[::2], nums[1::2]))
    return out


def _snippet_mask(t: int, intervals: list[tuple[int, int]], clip: int = 16) -> np.ndarray:
    m = np.zeros(t, bool)
    for s, e in intervals:
        m[max(0, s // clip): min(t, e // clip + 1)] = True
    return m


def _train_mask(t: int, rng: np.random.Generator) -> np.ndarray:
    m = np.zeros(t, bool)
    n = max(1, int(0.3 * t))
    start = int(rng.integers(0, t - n + 1))
    m[start:start + n] = True
    return m


def _features(mask: np.ndarray, crops: int, rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(0.0, 1.0, (mask.size, crops, DIM)).astype(np.float32)
    x[mask] += SIGNAL
    return x


def _folders(root: Path, *fixtures: str) -> tuple[Path, Path, list[Path]]:
    """``root/lists`` with copies of the fixtures (returned in order) and an empty ``root/features``."""
    lists, feats = root / "lists", root / "features"
    lists.mkdir(parents=True)
    feats.mkdir()
    return lists, feats, [_copy(shared_fixture(f), lists) for f in fixtures]


def _copy(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    return dst


def write_trn(root: Path, dataset: str, seed: int = 0) -> PublicSet:
    """SA-CRF's rows: vadpipe's own ``<video>_trn.npy`` ``[T, 14, D]`` patch-node features,
    named by UCF-Crime's video lists (``ucf``) or RTFM's ShanghaiTech lists (``shanghai``)."""
    if dataset == "shanghai":
        return write_rtfm_shanghai(root, seed, crops=14, suffix="_trn.npy")
    lists, feats, (train, test, gt) = _folders(root, *UCF_VIDEO_LISTS)
    ann = ucf_intervals(gt)
    rng = np.random.default_rng(seed)
    for path, is_test in ((train, False), (test, True)):
        for entry in _lines(path):
            video = _base(entry)[: -len(".mp4")]
            iv = ann[video] if is_test else []
            if iv:
                t = max(e for _, e in iv) // 16 + int(rng.integers(2, 12))
                mask = _snippet_mask(t, [(s - 1, e - 1) for s, e in iv])  # 1-based inclusive (Sultani)
            else:
                t = int(rng.integers(12, 40))
                mask = _train_mask(t, rng) if not is_test and "Normal" not in entry else np.zeros(t, bool)
            np.save(feats / f"{video}_trn.npy", _features(mask, 14, rng))
    return PublicSet(feats, lists, gt)


def write_rtfm_ucf(root: Path, seed: int = 0) -> PublicSet:
    """RTFM's UCF-Crime lists + ``Temporal_Anomaly_Annotation.txt`` and ``[T, 10, D]`` files."""
    lists, feats, (train, test, gt) = _folders(root, *RTFM_UCF)
    ann = ucf_intervals(gt)
    rng = np.random.default_rng(seed)
    for i, entry in enumerate(_lines(train)):
        name = _base(entry)
        t = int(rng.integers(12, 40))
        mask = _train_mask(t, rng) if i < 810 else np.zeros(t, bool)
        np.save(feats / name, _features(mask, 10, rng))
    for entry in _lines(test):
        name = _base(entry)
        video = name[: -len("_i3d.npy")]
        iv = ann[video]
        t = (max(e for _, e in iv) // 16 + int(rng.integers(2, 12))) if iv else int(rng.integers(12, 60))
        np.save(feats / name, _features(_snippet_mask(t, iv), 10, rng))
    return PublicSet(feats, lists, gt)


def write_rtfm_shanghai(root: Path, seed: int = 0, *, crops: int = 10, suffix: str = "_i3d.npy") -> PublicSet:
    """RTFM's ShanghaiTech lists + ``gt-sh.npy``; test videos get the snippet counts the GT implies
    (files ``<id><suffix>``, ``[T, crops, D]``)."""
    lists, feats, (train, test, gt) = _folders(root, *RTFM_SH)
    _copy(shared_fixture("rtfm_lists/test_frame_mask"), lists)
    masks = lists / "test_frame_mask"
    rng = np.random.default_rng(seed)
    for i, entry in enumerate(_lines(train)):
        t = int(rng.integers(12, 40))
        np.save(feats / _name(entry, suffix), _features(_train_mask(t, rng) if i < 63 else np.zeros(t, bool), crops,
                                                         rng))
    entries = _lines(test)
    abnormal = [np.load(masks / (_base(e)[: -len("_i3d.npy")] + ".npy")) for e in entries[:44]]
    total = np.load(gt).size // 16
    left = total - sum(math.ceil(m.size / 16) for m in abnormal)
    n_normal = len(entries) - 44
    normal_t = [left // n_normal + (1 if j < left % n_normal else 0) for j in range(n_normal)]
    for i, entry in enumerate(entries):
        if i < 44:
            m = abnormal[i]
            t = math.ceil(m.size / 16)
            padded = np.concatenate([m, np.full(t * 16 - m.size, m[-1])]).reshape(t, 16)
            mask = padded.any(axis=1)
        else:
            mask = np.zeros(normal_t[i - 44], bool)
        np.save(feats / _name(entry, suffix), _features(mask, crops, rng))
    return PublicSet(feats, lists, gt)


def _name(entry: str, suffix: str) -> str:
    return _base(entry)[: -len("_i3d.npy")] + suffix


def write_xd(root: Path, seed: int = 0) -> PublicSet:
    """XD-Violence's ``rgb.list`` / ``rgb_test.list`` + ``annotations.txt``, per-crop ``[T, D]`` files."""
    lists, feats, (train, test, gt) = _folders(root, *XD)
    ann = xd_intervals(gt)
    rng = np.random.default_rng(seed)
    for path, is_test in ((train, False), (test, True)):
        videos: dict[str, int] = {}
        for entry in _lines(path):
            name = _base(entry)[: -len(".npy")]
            videos.setdefault(name.rsplit("__", 1)[0], 0)
            videos[name.rsplit("__", 1)[0]] += 1
        for video, crops in videos.items():
            violent = "label_A" not in video
            iv = ann.get(video, []) if is_test else []
            if is_test and iv:
                t = max(e for _, e in iv) // 16 + int(rng.integers(2, 8))
                mask = _snippet_mask(t, iv)
            else:
                t = int(rng.integers(12, 40))
                mask = _train_mask(t, rng) if violent and not is_test else np.zeros(t, bool)
            x = _features(mask, crops, rng)
            for k in range(crops):
                np.save(feats / f"{video}__{k}.npy", np.ascontiguousarray(x[:, k]))
    return PublicSet(feats, lists, gt)


def write_sultani_ucf(root: Path, seed: int = 0) -> PublicSet:
    """UCF-Crime's ``Anomaly_Train.txt`` / ``Anomaly_Test.txt`` + GT, Sultani-style 32-segment
    text files, and a ``frames.csv`` of (stand-in) frame counts for the test videos."""
    lists, feats, (train, test, gt) = _folders(root, *UCF_VIDEO_LISTS)
    ann = ucf_intervals(gt)
    rng = np.random.default_rng(seed)
    frames_rows = ["video,frames"]

    def write(video: str, mask: np.ndarray) -> None:
        x = np.abs(rng.normal(0.0, 1.0, (SEGMENTS, DIM))) + SIGNAL * mask[:, None] * (np.arange(DIM) < DIM // 2)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        np.savetxt(feats / f"{video}.txt", x, fmt="%f", delimiter=" ")

    for entry in _lines(train):
        video = _base(entry)[: -len(".mp4")]
        write(video, _train_mask(SEGMENTS, rng) if "Normal" not in entry else np.zeros(SEGMENTS, bool))
    for entry in _lines(test):
        video = _base(entry)[: -len(".mp4")]
        iv = ann[video]
        n = (max(e for _, e in iv) + int(rng.integers(40, 400))) if iv else int(rng.integers(500, 3000))
        frames_rows.append(f"{video},{n}")
        edges = np.linspace(0, n, SEGMENTS + 1)
        mask = np.array([any(s < edges[j + 1] and e >= edges[j] for s, e in iv) for j in range(SEGMENTS)])
        write(video, mask)
    frames = root / "frames.csv"
    frames.write_text("\n".join(frames_rows) + "\n")
    return PublicSet(feats, lists, gt, frames)
