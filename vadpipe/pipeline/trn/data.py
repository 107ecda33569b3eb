"""Videos for ``vadpipe train-backbone``: the list CSV, TRN's segment sampling, frame-exact decoding.

List CSV (columns ``video,label[,class]``; paths relative to the CSV's folder):
``label`` is ``normal``/``anomalous`` (or ``0``/``1``, ``abnormal``); ``class`` (optional)
the anomaly class (``Abuse``, ...), empty or ``Normal`` for normal videos.

Segment sampling (TSN/TRN ``TSNDataSet._sample_indices`` / ``_get_val_indices``, 0-based here):
a video of ``n`` frames is cut into ``K`` equal segments of ``L = n // K`` frames;

* training: one uniformly random frame per segment, ``k*L + randint(L)``; when ``L == 0``
  (fewer frames than segments) ``K`` sorted random frames with repetition (TSN then takes
  frame 0 ``K`` times; a repeated in-order sample keeps the relation module's input ordered);
* evaluation: the centre of each segment, ``floor(n/K * (k + 0.5))`` (repeats when ``n < K``).

Decoding goes through stage one's reader (:func:`vadpipe.pipeline.extract.decode.reader.open_video`):
frames are counted as the reader presents them (``expected_frames``), decoded sequentially,
and only the sampled ones are kept. If the decoder yields fewer frames than expected, the
indices are drawn again on the real count and the video decoded again, so an index always
names a frame that exists. A video that cannot be read raises
:class:`~vadpipe.errors.VideoDecodeError`; :class:`VideoSegments` turns it into a failed item.

Preprocessing (the extractor's preset at ``size``: TSN's ``scale_size = size * 256 // 224``):
each kept frame is resized (bilinear, antialiased) so its short side is ``scale_size``; then
training takes one random ``size x size`` crop and a random horizontal flip for the whole video
(TSN's multi-scale corner crops are not reproduced), evaluation the centre crop; values are
ImageNet-normalised. Randomness comes from ``numpy.random.default_rng([seed, epoch, index])``,
so an item does not depend on which worker loads it (exact resume).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from vadpipe.errors import ManifestError, VadpipeError, VideoDecodeError
from vadpipe.extractors.resnet_trn import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "NORMAL_CLASS",
    "EpochBatches",
    "VideoItem",
    "VideoRow",
    "VideoSegments",
    "class_names",
    "collate_items",
    "decode_frames",
    "read_video_list",
    "scale_size",
    "segment_indices",
]

#: Class of the normal videos when the list has a ``class`` column.
NORMAL_CLASS = "Normal"


@dataclass(frozen=True)
class VideoRow:
    """One line of a training list: the video's path (resolved), its weak label and class."""

    video: str
    label: str
    class_name: str = ""

    @property
    def target_name(self) -> str:
        """The class this video is trained as (``class`` if the list has one, else the label)."""
        return self.class_name or self.label


def read_video_list(path: str | os.PathLike) -> list[VideoRow]:
    """Read a ``video,label[,class]`` CSV; relative video paths are resolved against its folder.

    Raises:
        ManifestError: missing columns, an empty video, a bad label, an anomalous video
            without a class (when the column exists), a normal one with an anomaly class,
            a duplicate video — with ``file:line``.
    """
    from vadpipe.manifests.datasets import normalize_label
    from vadpipe.manifests.tables import read_string_csv

    path = Path(path)
    df = read_string_csv(path, "video list")
    missing = [c for c in ("video", "label") if c not in df.columns]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)} (expected video,label[,class])")
    has_class = "class" in df.columns
    rows: list[VideoRow] = []
    seen: set[str] = set()
    for i, rec in enumerate(df.to_dict("records")):
        where = f"{path}:{i + 2}"
        video = rec["video"].strip()
        if not video:
            raise ManifestError(f"{where}: empty video")
        try:
            label = normalize_label(rec["label"])
        except ValueError as e:
            raise ManifestError(f"{where}: {e}") from None
        cls = rec.get("class", "").strip() if has_class else ""
        if has_class:
            if label == "normal":
                if cls and cls.lower() != NORMAL_CLASS.lower():
                    raise ManifestError(f"{where}: normal video {video!r} has anomaly class {cls!r}")
                cls = NORMAL_CLASS
            elif not cls or cls.lower() == NORMAL_CLASS.lower():
                raise ManifestError(f"{where}: anomalous video {video!r} needs its anomaly class")
        full = video if os.path.isabs(video) else str(path.parent / video)
        if full in seen:
            raise ManifestError(f"{where}: duplicate video {video!r}")
        seen.add(full)
        rows.append(VideoRow(full, label, cls))
    if not rows:
        raise ManifestError(f"{path}: no videos")
    return rows


def class_names(rows: Sequence[VideoRow]) -> list[str]:
    """Classes of a training list: ``["normal", "anomalous"]`` without a ``class`` column;
    with one, ``"Normal"`` then the anomaly classes sorted (UCF-Crime: 1 + 13 = 14)."""
    if not any(r.class_name for r in rows):
        return ["normal", "anomalous"]
    return [NORMAL_CLASS] + sorted({r.class_name for r in rows} - {NORMAL_CLASS})


def segment_indices(n_frames: int, segments: int, *, train: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """TRN's frame indices (module docstring): int64 ``[segments]``, non-decreasing, in ``0 .. n-1``."""
    if n_frames < 1 or segments < 1:
        raise ValueError(f"need frames and segments, got n_frames={n_frames}, segments={segments}")
    if not train:
        return np.floor(n_frames / segments * (np.arange(segments) + 0.5)).astype(np.int64)
    if rng is None:
        raise ValueError("training sampling needs an rng")
    length = n_frames // segments
    if length > 0:
        return np.arange(segments, dtype=np.int64) * length + rng.integers(0, length, size=segments)
    return np.sort(rng.integers(0, n_frames, size=segments)).astype(np.int64)


def scale_size(size: int) -> int:
    """Short side frames are resized to before cropping ``size`` (TSN: ``size * 256 // 224``)."""
    return size * 256 // 224


def _resize_short(frame: np.ndarray, short: int) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float ``[3, h, w]`` (0..255) with ``min(h, w) == short``."""
    h, w = frame.shape[:2]
    if h <= w:
        nh, nw = short, max(short, int(round(w * short / h)))
    else:
        nh, nw = max(short, int(round(h * short / w))), short
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float()
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    return x[0]


def _pick(reader, indices: np.ndarray, short: int) -> tuple[list[torch.Tensor], int]:
    """Decode from the start, keeping the frames at ``indices``; ``([], frames decoded)`` when
    the video ends before the last of them."""
    wanted = set(int(i) for i in indices)
    picked: dict[int, torch.Tensor] = {}
    pos = 0
    for chunk in reader.iter_chunks():
        for j in range(chunk.shape[0]):
            if pos + j in wanted:
                picked[pos + j] = _resize_short(chunk[j], short)
        pos += chunk.shape[0]
        if len(picked) == len(wanted):
            return [picked[int(i)] for i in indices], pos
    return [], pos


def decode_frames(path: str, segments: int, *, train: bool, rng: np.random.Generator | None, short: int,
                  decoder: str = "auto") -> tuple[torch.Tensor, np.ndarray, int]:
    """Sampled frames of one video: float ``[segments, 3, h, w]`` (0..255, short side ``short``),
    the indices used and the frame count they were drawn from.

    Raises:
        VideoDecodeError: unreadable, empty or not a video (stage one's reader says why).
    """
    from vadpipe.pipeline.extract.decode.reader import open_video

    with open_video(path, backend=decoder) as reader:
        n = reader.expected_frames
        for _ in range(2):
            if n < 1:
                raise VideoDecodeError(f"{path}: the video has no frames")
            idx = segment_indices(n, segments, train=train, rng=rng)
            frames, decoded = _pick(reader, idx, short)
            if frames:
                return torch.stack(frames), idx, n
            n = decoded  # fewer frames than the container promised: draw again on the real count
    raise VideoDecodeError(f"{path}: the decoded frame count changes between passes")


@dataclass
class VideoItem:
    """One loaded video: ``frames`` float32 ``[3, K, S, S]`` (ImageNet-normalised) and its class
    index; or ``error`` (frames ``None``) when it could not be read."""

    index: int
    target: int
    frames: torch.Tensor | None = None
    error: str = ""


class VideoSegments(Dataset):
    """Videos as TRN inputs. Indexed by ``(video_index, epoch)`` (see :class:`EpochBatches`).

    Args:
        rows: the videos.
        targets: class index of each row.
        segments: frames ``K`` per video.
        size: crop side ``S``.
        train: random sampling, crop and flip (else centred, deterministic).
        seed: base of the per-item randomness.
        decoder: stage one's decoder backend (``auto``, ``pyav``, ``decord``).
    """

    def __init__(self, rows: Sequence[VideoRow], targets: Sequence[int], *, segments: int, size: int, train: bool,
                 seed: int = 0, decoder: str = "auto") -> None:
        self.rows = list(rows)
        self.targets = list(targets)
        self.segments, self.size, self.train, self.seed, self.decoder = segments, size, train, seed, decoder
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1) * 255
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: tuple[int, int]) -> VideoItem:
        index, epoch = key
        row = self.rows[index]
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        try:
            frames, _, _ = decode_frames(row.video, self.segments, train=self.train, rng=rng,
                                         short=scale_size(self.size), decoder=self.decoder)
        except VadpipeError as e:  # VideoDecodeError and kin: this video fails, training goes on
            return VideoItem(index, self.targets[index], None, f"{type(e).__name__}: {e}")
        return VideoItem(index, self.targets[index], self._crop(frames, rng))

    def _crop(self, frames: torch.Tensor, rng: np.random.Generator | None) -> torch.Tensor:
        """``[K, 3, h, w]`` (0..255) -> normalised ``[3, K, S, S]``."""
        s = self.size
        h, w = frames.shape[-2:]
        if rng is None:
            y, x, flip = (h - s) // 2, (w - s) // 2, False
        else:
            y, x, flip = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1)), bool(rng.random() < 0.5)
        out = frames[:, :, y:y + s, x:x + s]
        if flip:
            out = out.flip(-1)
        return ((out.permute(1, 0, 2, 3) - self._mean) / self._std).contiguous()


def collate_items(items: list[VideoItem]) -> dict:
    """Batch the readable items: ``frames`` ``[B, 3, K, S, S]`` (``None`` if none), ``targets``
    ``[B]``, ``indices`` (their video indices) and ``failed`` (``[(index, error)]``)."""
    ok = [it for it in items if it.frames is not None]
    return {
        "frames": torch.stack([it.frames for it in ok]) if ok else None,
        "targets": torch.tensor([it.target for it in ok], dtype=torch.long),
        "indices": [it.index for it in ok],
        "failed": [(it.index, it.error) for it in items if it.frames is None],
    }


class EpochBatches:
    """Batches of ``(video_index, epoch)`` keys for one epoch: a permutation of ``indices`` from
    ``torch.Generator().manual_seed(seed * 100003 + epoch)`` (shuffle) or in order, cut into
    ``batch_size`` pieces (the last may be smaller)."""

    def __init__(self, indices: Sequence[int], batch_size: int, *, epoch: int, seed: int, shuffle: bool) -> None:
        self.indices, self.batch_size = list(indices), batch_size
        self.epoch, self.seed, self.shuffle = epoch, seed, shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.indices) / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = [self.indices[i] for i in torch.randperm(len(self.indices), generator=g).tolist()]
        for start in range(0, len(order), self.batch_size):
            yield [(i, self.epoch) for i in order[start:start + self.batch_size]]
