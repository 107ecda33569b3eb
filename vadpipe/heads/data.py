"""Stage two's input path: load feature files, resample them to 32 segments, batch them.

Layouts :func:`load_features` understands (all returned as float32 ``[N, T, D]``, ``N``
crops, ``T`` snippets, ``D`` feature size — the ``[B, N, T, D]`` convention of
:mod:`vadpipe.heads.base` without the batch axis):

* one ``.npy`` ``[T, N, D]`` — RTFM/MGFN's published I3D features and stage one's
  ``single`` layout (``[n_clips, crops, D]``); transposed to ``[N, T, D]``;
* one ``.npy`` ``[T, D]`` — a single crop, ``N = 1``;
* per-crop ``.npy`` files ``[T, D]`` named by a ``{k}`` pattern (XD-Violence's
  ``<name>__<k>.npy``, stage one's ``per-crop`` layout), stacked in ``k`` order;
* Sultani's text files (``.txt``: 32 lines × 4096 floats, C3D fc6 already averaged into
  32 L2-normalised segments) → ``[1, 32, 4096]``.

Training bags are built lazily, item by item, the way the head's
:class:`~vadpipe.heads.base.TrainSampling` says: resampled to 32 segments
(:func:`resample_segments`, RTFM and most heads), uniformly index-sampled to at most
``L`` snippets (:func:`uniform_extract`, Wu et al. / LA-Net) or at full length; the last
two are zero-padded per batch with a length mask (:func:`pad_bags`). Resampled, a UCF-Crime training set held resampled in memory is 1610 × 10 × 32 × 2048 × 4 B
≈ 4.2 GB, so :class:`FeatureDataset` keeps nothing unless ``cache=True``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from vadpipe.errors import ConfigError, FeatureLoadError
from vadpipe.heads.base import TrainSampling
from vadpipe.manifests.datasets import DatasetRow
from vadpipe.manifests.features import CROP_TOKEN, crop_file

#: Most crops a ``{k}`` pattern is probed for (stops at the first missing index).
MAX_CROPS = 64


# ----------------------------------------------------------------------------- loading


def _resolve(row: DatasetRow | str | os.PathLike, root: str | os.PathLike | None) -> str:
    if isinstance(row, DatasetRow):
        return row.resolve(root)
    p = str(row)
    if root is not None and not os.path.isabs(p):
        p = str(Path(root) / p)
    return p


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FeatureLoadError(f"feature file not found: {path}") from None
    except (OSError, ValueError) as e:  # truncated, pickled object arrays, not an npy
        raise FeatureLoadError(f"cannot read feature file {path}: {e}") from e


def _load_txt(path: str) -> np.ndarray:
    try:
        arr = np.loadtxt(path, dtype=np.float32, ndmin=2)
    except FileNotFoundError:
        raise FeatureLoadError(f"feature file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise FeatureLoadError(f"cannot read text feature file {path}: {e}") from e
    return arr


def _open_arrays(path: str) -> tuple[list[np.ndarray], str]:
    """The raw arrays behind a feature path (``.npy`` memory-mapped) and their layout:
    ``"crops"`` (per-crop ``[T, D]`` files of a ``{k}`` pattern, same shape), ``"tnd"`` (one
    ``[T, N, D]`` file), ``"td"`` (one ``[T, D]`` file or Sultani text file).

    Only the last ``{k}`` of a pattern is replaced (:func:`~vadpipe.manifests.features.crop_file`);
    a path holding ``{k}`` that names an existing file is that single file."""
    if CROP_TOKEN in path and not os.path.isfile(path):
        files = []
        for k in range(MAX_CROPS):
            f = crop_file(path, k)
            if not os.path.exists(f):
                break
            files.append(f)
        if not files:
            raise FeatureLoadError(f"no per-crop feature files for pattern {path} (looked for {crop_file(path, 0)})")
        crops = []
        for f in files:
            a = _load_txt(f) if f.lower().endswith(".txt") else _load_npy(f)
            if a.ndim != 2:
                raise FeatureLoadError(f"per-crop feature file {f} has shape {a.shape}; expected [T, D]")
            if crops and a.shape != crops[0].shape:
                raise FeatureLoadError(
                    f"per-crop feature files of {path} disagree: {files[0]} is {crops[0].shape}, {f} is {a.shape}"
                )
            crops.append(a)
        return crops, "crops"
    if path.lower().endswith(".txt"):
        return [_load_txt(path)], "td"
    a = _load_npy(path)
    if a.ndim == 3:
        return [a], "tnd"
    if a.ndim == 2:
        return [a], "td"
    raise FeatureLoadError(f"feature file {path} has shape {a.shape}; expected [T, N, D] or [T, D]")


def _layout_shape(arrays: list[np.ndarray], layout: str) -> tuple[int, int, int]:
    """``(N, T, D)`` of :func:`_open_arrays`' result."""
    if layout == "crops":
        return (len(arrays), *arrays[0].shape)
    if layout == "tnd":
        t, n, d = arrays[0].shape
        return n, t, d
    return (1, *arrays[0].shape)


def load_features(row: DatasetRow | str | os.PathLike, root: str | os.PathLike | None = None) -> np.ndarray:
    """Features of one video as a float32 ``[N, T, D]`` array (see the module docstring).

    Args:
        row: a dataset row, or a feature path (possibly a ``{k}`` pattern).
        root: folder that relative paths are relative to (the dataset CSV's folder).

    ``.npy`` files are opened with ``mmap_mode="r"``; the result is a fresh contiguous
    float32 array (3-D files are transposed ``[T, N, D]`` → ``[N, T, D]``).

    Raises:
        FeatureLoadError: missing or unreadable files, unexpected shapes, per-crop files
            of different lengths, ``T == 0``.
    """
    path = _resolve(row, root)
    arrays, layout = _open_arrays(path)
    if layout == "crops":
        out = np.stack([np.asarray(a, dtype=np.float32) for a in arrays], axis=0)
    elif layout == "tnd":
        out = np.ascontiguousarray(np.asarray(arrays[0], dtype=np.float32).transpose(1, 0, 2))
    else:
        out = np.array(arrays[0], dtype=np.float32)[None]
    if out.shape[1] == 0:
        raise FeatureLoadError(f"feature file {path} has no snippets (T = 0)")
    return np.ascontiguousarray(out, dtype=np.float32)


@dataclass(frozen=True)
class FeatureInfo:
    """What :func:`feature_info` found in one video's feature files."""

    crops: int
    snippets: int
    dim: int
    #: values that are NaN, +-Inf, or too large for float32 (they load as Inf)
    nonfinite: int = 0


def feature_info(row: DatasetRow | str | os.PathLike, root: str | os.PathLike | None = None, *,
                 values: bool = True) -> FeatureInfo:
    """Shape ``[N, T, D]`` of one video's features (as :func:`load_features` returns them) and,
    with ``values``, how many values are not finite, read in chunks from the memory-mapped
    files (no float32 copy of the whole video).

    Raises:
        FeatureLoadError: as :func:`load_features`.
    """
    path = _resolve(row, root)
    arrays, layout = _open_arrays(path)
    n, t, d = _layout_shape(arrays, layout)
    if t == 0:
        raise FeatureLoadError(f"feature file {path} has no snippets (T = 0)")
    bad = sum(_count_nonfinite(a) for a in arrays) if values else 0
    return FeatureInfo(crops=int(n), snippets=int(t), dim=int(d), nonfinite=int(bad))


def _count_nonfinite(a: np.ndarray, chunk_bytes: int = 64 << 20) -> int:
    if not np.issubdtype(a.dtype, np.floating):
        return 0  # integers are finite; other dtypes fail when loaded as float32
    step = max(1, chunk_bytes // max(1, a[:1].nbytes))
    total = 0
    for s in range(0, a.shape[0], step):
        chunk = np.asarray(a[s : s + step])
        if chunk.dtype.itemsize > 4:
            with np.errstate(over="ignore"):
                chunk = chunk.astype(np.float32)  # what load_features makes of it
        total += int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
    return total


#: Offending videos named in a dataset error (the count of all of them is given too).
MAX_NAMED = 5


def check_dataset_features(rows: Sequence[DatasetRow], root: str | os.PathLike | None = None, *,
                           what: str = "dataset", values: bool = True) -> dict[str, int]:
    """Check every video's feature files before any training or scoring: they exist and
    read, all videos have the same crop count and feature size, and (with ``values``) no
    value is NaN or Inf. Each error names the first :data:`MAX_NAMED` offending rows
    (video and feature path) and how many there are.

    Returns:
        ``{"crops": N, "dim": D}`` shared by the videos.

    Raises:
        ManifestError: no rows.
        FeatureLoadError: missing/unreadable files, mixed shapes, non-finite values.
    """
    from vadpipe.errors import ManifestError

    rows = list(rows)
    if not rows:
        raise ManifestError(f"the {what} has no videos (a dataset CSV with only its header?)")
    infos: list[FeatureInfo | None] = []
    unreadable: list[str] = []
    for r in rows:
        try:
            infos.append(feature_info(r, root, values=values))
        except FeatureLoadError as e:
            infos.append(None)
            unreadable.append(f"{r.video}: {e}")
    if unreadable:
        raise FeatureLoadError(f"{len(unreadable)} of {len(rows)} videos of the {what} have missing or unreadable "
                               f"feature files: {_named(unreadable)}; fix the paths or drop those rows")
    shapes: dict[tuple[int, int], list[int]] = {}
    for i, info in enumerate(infos):
        shapes.setdefault((info.crops, info.dim), []).append(i)
    if len(shapes) > 1:
        (crops, dim), common = max(shapes.items(), key=lambda kv: len(kv[1]))
        odd = [f"{rows[i].video} ({rows[i].feature_path}: {infos[i].crops} crops x {infos[i].dim}-D)"
               for i in range(len(rows)) if (infos[i].crops, infos[i].dim) != (crops, dim)]
        kinds = "feature sizes" if len({d for _, d in shapes}) > 1 else "crop counts"
        raise FeatureLoadError(f"the videos of the {what} mix {kinds}: {len(common)} of {len(rows)} have {crops} "
                               f"crops x {dim}-D features, {len(odd)} other(s) not: {_named(odd)}; extract every "
                               "video with the same backbone and --crops, or drop those rows")
    bad = [f"{r.video} ({r.feature_path}: {info.nonfinite} NaN/Inf value(s))"
           for r, info in zip(rows, infos) if info.nonfinite]
    if bad:
        raise FeatureLoadError(f"{len(bad)} of {len(rows)} videos of the {what} have NaN or Inf feature values: "
                               f"{_named(bad)}; re-extract them or drop those rows")
    (crops, dim), = shapes
    return {"crops": crops, "dim": dim}


def _named(items: list[str]) -> str:
    return "; ".join(items[:MAX_NAMED]) + (f"; and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


# ----------------------------------------------------------------------------- resampling


def segment_bounds(t: int, n: int = 32, scheme: str = "rtfm") -> list[tuple[int, int]]:
    """Half-open snippet ranges ``[a, b)`` averaged into each of the ``n`` segments.

    ``scheme="rtfm"`` — RTFM ``utils.py`` ``process_feat`` (copied by MGFN and most
    later heads): ``r = np.linspace(0, t, n + 1, dtype=int)`` (truncation); segment ``i``
    is the mean of ``feat[r[i]:r[i+1]]``, or the single feature ``feat[r[i]]`` when
    ``r[i] == r[i+1]`` (returned here as ``[r[i], r[i] + 1)``). ``r[n] == t`` and
    ``r[n-1] < t``, so that index is always valid. For ``t <= n`` every bin is 0 or 1
    snippets wide: each segment is one original snippet, snippets are repeated
    (``t = 5``: each snippet 6 or 7 times), nothing is averaged; ``t == n`` is the
    identity; ``t > n`` averages ``floor(t/n)`` or ``ceil(t/n)`` snippets per segment.

    ``scheme="sultani"`` — Sultani's ``Save_C3DFeatures_32Segments.m`` in 0-based form:
    ``s = round(linspace(1, t, n + 1))`` (MATLAB rounds halves away from zero); segment
    ``i`` is the mean of 1-based snippets ``s[i] .. s[i+1] - 1``, or snippet ``s[i]``
    alone when that range is empty. The last snippet is never used when ``t > n``
    (as in the original); Sultani then L2-normalises each segment
    (:func:`l2_normalize_segments`).

    Raises:
        ValueError: ``t < 1`` (a video without snippets cannot be resampled), ``n < 1``
            or an unknown scheme.
    """
    if n < 1:
        raise ValueError(f"number of segments must be >= 1, got {n}")
    if t < 1:
        raise ValueError(f"cannot resample a video with {t} snippets into {n} segments (T must be >= 1)")
    if scheme == "rtfm":
        r = np.linspace(0, t, n + 1).astype(np.int64)
        return [(int(a), int(b)) if b > a else (int(a), int(a) + 1) for a, b in zip(r[:-1], r[1:])]
    if scheme == "sultani":
        s = np.floor(np.linspace(1, t, n + 1) + 0.5).astype(np.int64)  # MATLAB round, positives
        out = []
        for a, b in zip(s[:-1], s[1:]):
            lo, hi = int(a) - 1, int(b) - 1  # 0-based [lo, hi) = 1-based a .. b-1
            out.append((lo, hi) if hi > lo else (lo, lo + 1))
        return out
    raise ValueError(f"unknown resampling scheme {scheme!r}; use 'rtfm' or 'sultani'")


def resample_segments(feat, n: int = 32, scheme: str = "rtfm"):
    """Resample ``feat [..., T, D]`` to ``[..., n, D]`` (see :func:`segment_bounds`).

    Works on numpy arrays and torch tensors (returns the same kind, same float dtype).
    Each segment is ``mean`` over its snippet range along axis ``-2``, computed the way
    RTFM does (``np.mean`` of the slice), so float32 results match RTFM bit for bit.

    Raises:
        ValueError: fewer than 2 dimensions, ``T == 0`` (see :func:`segment_bounds`).
    """
    if feat.ndim < 2:
        raise ValueError(f"features must be [..., T, D], got shape {tuple(feat.shape)}")
    bounds = segment_bounds(int(feat.shape[-2]), n, scheme)
    if isinstance(feat, torch.Tensor):
        return torch.stack([feat[..., a:b, :].mean(dim=-2) for a, b in bounds], dim=-2)
    feat = np.asarray(feat)
    return np.stack([np.mean(feat[..., a:b, :], axis=-2) for a, b in bounds], axis=-2).astype(feat.dtype, copy=False)


def l2_normalize_segments(feat, eps: float = 1e-12):
    """Divide every feature vector (last axis) by its L2 norm (Sultani's per-segment step).

    Vectors with norm below ``eps`` are left as they are (divided by ``eps`` would blow
    them up; Sultani's MATLAB code raises on an all-zero segment instead). Works on numpy
    arrays and torch tensors.
    """
    if isinstance(feat, torch.Tensor):
        norm = feat.norm(dim=-1, keepdim=True)
        return feat / torch.where(norm < eps, torch.ones_like(norm), norm)
    feat = np.asarray(feat)
    norm = np.linalg.norm(feat, axis=-1, keepdims=True)
    return (feat / np.where(norm < eps, 1.0, norm)).astype(feat.dtype, copy=False)


def uniform_extract_indices(t: int, length: int) -> np.ndarray:
    """Snippet indices ``[min(t, length)]`` of Wu et al.'s ``uniform_extract`` (XDVioDet
    ``utils.py``): for ``t > length``, ``linspace(0, t - 1, length)`` truncated to integers
    (``dtype=np.uint16`` there, the same for ``t < 65536``), so the first and last snippets
    are kept and no snippet is averaged or repeated; for ``t <= length`` every snippet, in order.
    """
    if t < 1 or length < 1:
        raise ValueError(f"cannot sample {length} snippets from a video with {t}")
    if t <= length:
        return np.arange(t, dtype=np.int64)
    return np.linspace(0, t - 1, length).astype(np.int64)


def uniform_extract(feat: np.ndarray, length: int) -> np.ndarray:
    """``feat [..., T, D] -> [..., min(T, length), D]`` at :func:`uniform_extract_indices`."""
    return np.take(feat, uniform_extract_indices(int(feat.shape[-2]), length), axis=-2)


def temporal_view(feat, temporal: str, length: int, scheme: str = "rtfm"):
    """What a training bag holds along time (:class:`~vadpipe.heads.base.TrainSampling`):
    ``feat [..., T, D]`` resampled to ``length`` segments (``"segments"``), at most
    ``length`` snippets by :func:`uniform_extract_indices` (``"uniform"``), or as it is
    (``"full"``). Works on numpy arrays and torch tensors (returns the same kind).
    """
    if temporal == "segments":
        return resample_segments(feat, length, scheme)
    if temporal == "uniform":
        if isinstance(feat, torch.Tensor):
            idx = torch.from_numpy(uniform_extract_indices(int(feat.shape[-2]), length)).to(feat.device)
            return feat.index_select(-2, idx)
        return uniform_extract(feat, length)
    if temporal == "full":
        return feat
    raise ValueError(f"temporal must be 'segments', 'uniform' or 'full', got {temporal!r}")


def pad_bags(bags: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad bags ``[N, T_i, D]`` at the end of time to the longest.

    Returns:
        ``features [B, N, T_max, D]`` and ``mask [B, T_max]`` (True on real snippets).
    """
    if not bags:
        raise ValueError("pad_bags needs at least one bag")
    n, _, d = bags[0].shape
    t_max = max(int(b.shape[1]) for b in bags)
    out = bags[0].new_zeros((len(bags), n, t_max, d))
    mask = torch.zeros((len(bags), t_max), dtype=torch.bool)
    for i, b in enumerate(bags):
        if b.shape[0] != n or b.shape[2] != d:
            raise FeatureLoadError(f"bags in one batch have different crops/sizes: {tuple(bags[0].shape)} vs {tuple(b.shape)}")
        out[i, :, : b.shape[1]] = b
        mask[i, : b.shape[1]] = True
    return out, mask


# ----------------------------------------------------------------------------- dataset


class FeatureDataset(Dataset):
    """A torch ``Dataset`` over dataset rows.

    Modes:

    * ``"train"``: item ``i`` is ``(features [N, T', D], label)`` with the time axis made
      by ``temporal``: ``"segments"`` — resampled to ``T' = n_segments`` (32) segments;
      ``"uniform"`` — ``T' = min(T, n_segments)`` snippets at :func:`uniform_extract_indices`;
      ``"full"`` — ``T' = T``. Label a float tensor (0. normal, 1. anomalous);
    * ``"eval"``: item ``i`` is ``(features [N, T, D], label)`` at full length.

    Args:
        rows: dataset rows (:func:`vadpipe.manifests.datasets.read_dataset`).
        root: folder relative feature paths are relative to (the dataset CSV's folder).
        mode: ``"train"`` or ``"eval"``.
        n_segments: segments (``"segments"``) or the most snippets (``"uniform"``) per
            training item.
        scheme: resampling scheme (:func:`segment_bounds`).
        temporal: ``"segments"``, ``"uniform"`` or ``"full"`` (see above; train mode only).
        l2_normalize: L2-normalise every segment/snippet (Sultani) after resampling.
        cache: keep each item in memory after its first load (off by default: a full
            UCF-Crime training set is ~4.2 GB resampled).
        transform: optional ``f(np.ndarray [N, T, D]) -> np.ndarray`` applied last.
    """

    def __init__(
        self,
        rows: Sequence[DatasetRow],
        root: str | os.PathLike | None = None,
        *,
        mode: str = "train",
        n_segments: int = 32,
        scheme: str = "rtfm",
        l2_normalize: bool = False,
        cache: bool = False,
        transform: Callable[[np.ndarray], np.ndarray] | None = None,
        temporal: str = "segments",
    ) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode must be 'train' or 'eval', got {mode!r}")
        if temporal not in ("segments", "uniform", "full"):
            raise ValueError(f"temporal must be 'segments', 'uniform' or 'full', got {temporal!r}")
        self.temporal = temporal
        self.rows = list(rows)
        self.root = root
        self.mode = mode
        self.n_segments = n_segments
        self.scheme = scheme
        self.l2_normalize = l2_normalize
        self.transform = transform
        self.cache = cache
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> list[int]:
        """Weak labels of the rows, 0 normal / 1 anomalous."""
        return [r.target for r in self.rows]

    @property
    def names(self) -> list[str]:
        """Video keys of the rows (:attr:`DatasetRow.name`)."""
        return [r.name for r in self.rows]

    def features(self, index: int) -> np.ndarray:
        """Item ``index``'s features as a float32 numpy array (see the class docstring)."""
        if index in self._cache:
            return self._cache[index]
        feat = load_features(self.rows[index], self.root)
        if self.mode == "train":
            feat = temporal_view(feat, self.temporal, self.n_segments, self.scheme)
        if self.l2_normalize:
            feat = l2_normalize_segments(feat)
        if self.transform is not None:
            feat = self.transform(feat)
        feat = np.ascontiguousarray(feat, dtype=np.float32)
        if self.cache:
            self._cache[index] = feat
        return feat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.features(index)
        return torch.from_numpy(feat.copy() if self.cache else feat), torch.tensor(float(self.rows[index].target))


# ----------------------------------------------------------------------------- batching


class BalancedBatchSampler(Sampler[list[int]]):
    """Index batches of ``batch_size`` normal followed by ``batch_size`` anomalous videos.

    Mirrors RTFM/MGFN training (two ``DataLoader``\\ s, ``shuffle=True, drop_last=True``,
    each re-created when it runs out): each class draws indices from its own
    permutation without replacement; when fewer than ``batch_size`` remain, the rest are
    dropped and a new permutation (``torch.randperm`` with the sampler's generator) starts.
    The two classes cycle independently, so the smaller class is reshuffled more often.
    The class streams persist across iterations (epochs continue where the last stopped).

    Determinism: the same labels, ``batch_size`` and seed (or a generator in the same
    state) give the same batches. Permutations are drawn normal first, then anomalous.

    Args:
        labels: 0/1 per dataset index.
        batch_size: videos per class per batch (``B``).
        seed: seed of a fresh ``torch.Generator`` (ignored when ``generator`` is given).
        generator: a ``torch.Generator`` to draw from.
        num_batches: batches per iteration; default ``max(n_normal, n_anomalous) //
            batch_size`` (one pass over the larger class).

    Raises:
        ValueError: a class with fewer than ``batch_size`` videos.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        generator: torch.Generator | None = None,
        num_batches: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        labels = [int(x) for x in labels]
        self.normal = [i for i, x in enumerate(labels) if x == 0]
        self.abnormal = [i for i, x in enumerate(labels) if x == 1]
        if len(labels) != len(self.normal) + len(self.abnormal):
            raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
        for what, idx in (("normal", self.normal), ("anomalous", self.abnormal)):
            if len(idx) < batch_size:
                raise ConfigError(f"{len(idx)} {what} training videos, fewer than batch_size={batch_size} (a batch "
                                  f"takes that many of each); add videos or lower it, e.g. --set batch_size={len(idx)}")
        self.batch_size = batch_size
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)
        self.num_batches = (
            num_batches if num_batches is not None else max(len(self.normal), len(self.abnormal)) // batch_size
        )
        self._perm: list[list[int] | None] = [None, None]
        self._pos = [0, 0]

    def _take(self, c: int) -> list[int]:
        pool = self.normal if c == 0 else self.abnormal
        perm = self._perm[c]
        if perm is None or self._pos[c] + self.batch_size > len(perm):
            perm = torch.randperm(len(pool), generator=self.generator).tolist()
            self._perm[c], self._pos[c] = perm, 0
        out = [pool[j] for j in perm[self._pos[c] : self._pos[c] + self.batch_size]]
        self._pos[c] += self.batch_size
        return out

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.num_batches):
            normal = self._take(0)
            abnormal = self._take(1)
            yield normal + abnormal


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of ``batch_size`` indices out of ``range(n)``, one shuffled pass per epoch.

    Mirrors ``DataLoader(dataset, batch_size, shuffle=True)`` (Wu et al.'s XD-Violence
    loader, which LA-Net follows): each epoch is a fresh ``torch.randperm(n)`` cut into
    batches; the last batch of an epoch holds the remainder (no ``drop_last``), so an
    epoch is ``ceil(n / batch_size)`` batches. Batches mix the classes at random.
    Iteration yields ``num_batches`` batches, continuing across epochs; the same ``n``,
    ``batch_size`` and seed give the same batches.
    """

    def __init__(self, n: int, batch_size: int, *, seed: int = 0, num_batches: int | None = None) -> None:
        if n < 1 or batch_size < 1:
            raise ValueError(f"need n >= 1 and batch_size >= 1, got {n}, {batch_size}")
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.per_epoch = -(-n // batch_size)
        self.num_batches = self.per_epoch if num_batches is None else num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        done = 0
        while done < self.num_batches:
            perm = torch.randperm(self.n, generator=self.generator).tolist()
            for start in range(0, self.n, self.batch_size):
                if done == self.num_batches:
                    return
                yield perm[start : start + self.batch_size]
                done += 1


#: A training instance: ``(video index, crop index or None for all crops)``.
Instance = tuple[int, "int | None"]


def training_instances(dataset: FeatureDataset, sampling: TrainSampling, n_crops: int) -> list[Instance]:
    """The units the sampler draws: ``(video, None)`` (all crops) or ``(video, crop)``."""
    if sampling.instances == "video":
        return [(v, None) for v in range(len(dataset))]
    if sampling.batching == "balanced":
        raise ConfigError("crop instances are drawn with random batches (batching='random'), not balanced ones")
    return [(v, c) for v in range(len(dataset)) for c in range(n_crops)]


def training_batch(
    dataset: FeatureDataset, items: list[Instance], sampling: TrainSampling
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Features of the drawn instances, split by label.

    Returns:
        ``normal [B, N, T, D]``, ``abnormal [B', N, T, D]`` (``N = 1`` for crop instances)
        and, for masked sampling, ``{"normal_mask": [B, T], "abnormal_mask": [B', T]}``
        (all bags zero-padded to the longest of the batch); ``{}`` otherwise.
    """
    bags, labels = [], []
    for v, c in items:
        feat, label = dataset[v]
        if c is not None:
            if c >= feat.shape[0]:
                raise ConfigError(f"{dataset.rows[v].feature_path} has {feat.shape[0]} crops; crop {c} was "
                                  "expected (all training videos must have the same number of crops)")
            feat = feat[c : c + 1]
        bags.append(feat)
        labels.append(bool(label))
    is_abn = torch.tensor(labels, dtype=torch.bool)
    if sampling.masked:
        feats, mask = pad_bags(bags)
        return feats[~is_abn], feats[is_abn], {"normal_mask": mask[~is_abn], "abnormal_mask": mask[is_abn]}
    shapes = {tuple(b.shape) for b in bags}
    if len(shapes) != 1:
        raise ConfigError(f"training videos of one batch have different feature shapes {sorted(shapes)}")
    feats = torch.stack(bags)
    return feats[~is_abn], feats[is_abn], {}


class BalancedBatcher:
    """Iterate ``(normal [B, N, 32, D], abnormal [B, N, 32, D])`` training pairs.

    The batches of a :class:`BalancedBatchSampler` (see it for the sampling rule and
    determinism) over a ``"train"`` :class:`FeatureDataset`, built by :func:`training_batch`
    as the training loop builds them. ``len()`` is the number of pairs per iteration.
    """

    def __init__(
        self,
        dataset: FeatureDataset,
        batch_size: int,
        *,
        seed: int = 0,
        generator: torch.Generator | None = None,
        num_batches: int | None = None,
    ) -> None:
        if dataset.mode != "train" or dataset.temporal != "segments":
            raise ValueError("BalancedBatcher needs a FeatureDataset in 'train' mode with temporal='segments' "
                             "(fixed-length items; masked bags come from training_batch with their masks)")
        self.dataset = dataset
        self.sampler = BalancedBatchSampler(
            dataset.labels, batch_size, seed=seed, generator=generator, num_batches=num_batches
        )
        self.sampling = TrainSampling(temporal=dataset.temporal, length=dataset.n_segments, batch_size=batch_size)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices in self.sampler:
            normal, abnormal, _ = training_batch(self.dataset, [(i, None) for i in indices], self.sampling)
            yield normal, abnormal
