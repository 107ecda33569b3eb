"""Synthetic stage-one features with planted anomalies, for head and training tests.

Normal videos: |Gaussian| snippets. Anomalous videos: the same, plus a shift of norm
``strength * sqrt(D)`` along a fixed direction (the first quarter of the dimensions) inside
one contiguous event of 3-8 snippets. Features
are written in the RTFM layout ``[T, N, D]`` and listed in a dataset CSV.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vadpipe.manifests.datasets import DatasetRow, write_dataset
from vadpipe.pipeline.train.metrics import roc_auc


def rank_auc(scores, labels) -> float:
    """ROC-AUC of score/label tensors of any shape (``roc_auc`` is tested against sklearn)."""
    return roc_auc(np.asarray(labels).reshape(-1), np.asarray(scores.detach() if hasattr(scores, "detach") else scores).reshape(-1))


def make_video(rng: np.random.Generator, t: int, crops: int, dim: int, anomalous: bool,
               strength: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Features ``[T, N, D]`` and the snippet labels ``[T]`` of one video."""
    direction = np.zeros(dim, dtype=np.float32)  # a fixed direction over the first quarter of the
    direction[: max(1, dim // 4)] = 1.0          # dimensions: visible with or without L2 normalisation
    direction /= np.linalg.norm(direction)
    feats = rng.normal(0.0, 1.0, size=(t, crops, dim)).astype(np.float32)
    labels = np.zeros(t, dtype=np.uint8)
    if anomalous:
        length = int(rng.integers(3, 9))
        start = int(rng.integers(0, t - length))
        labels[start:start + length] = 1
        feats[start:start + length] += strength * np.sqrt(dim) * direction
    return np.abs(feats), labels  # non-negative, like post-ReLU backbone features


def make_dataset(root: Path, n_normal: int, n_anomalous: int, *, crops: int = 2, dim: int = 32,
                 t_range: tuple[int, int] = (24, 48), seed: int = 0, split: str = "") -> tuple[Path, dict]:
    """Write videos and ``<root>/dataset.csv``; returns the CSV and ``{name: snippet labels}``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows, truth = [], {}
    for i in range(n_normal + n_anomalous):
        anomalous = i >= n_normal
        name = f"{'abn' if anomalous else 'nor'}{seed}_{i:03d}"
        feats, labels = make_video(rng, int(rng.integers(*t_range)), crops, dim, anomalous)
        np.save(root / f"{name}_i3d.npy", feats)
        truth[name] = labels
        rows.append(DatasetRow(video=name, feature_path=f"{name}_i3d.npy",
                               label="anomalous" if anomalous else "normal", split=split))
    write_dataset(root / "dataset.csv", rows)
    return root / "dataset.csv", truth


def make_split(root: Path, *, crops: int = 2, dim: int = 32) -> dict:
    """The planted-anomaly benchmark the head tests share: 16 + 16 training videos (a
    stratified quarter held out for validation) and 8 + 8 unseen test videos with snippet
    labels. Keys: ``train``, ``val``, ``test`` (rows), ``train_root``, ``test_root``, ``truth``."""
    from vadpipe.manifests.datasets import read_dataset, split_train_val

    train_csv, _ = make_dataset(root / "train", 16, 16, crops=crops, dim=dim, seed=1)
    test_csv, truth = make_dataset(root / "test", 8, 8, crops=crops, dim=dim, seed=2)
    train_rows, val_rows = split_train_val(read_dataset(train_csv), val_fraction=0.25, seed=0)
    return {"train": train_rows, "val": val_rows, "test": read_dataset(test_csv),
            "train_root": train_csv.parent, "test_root": test_csv.parent, "truth": truth}


def heldout_frame_auc(checkpoint: Path, split: dict) -> float:
    """Frame-level (snippet-level) ROC-AUC on ``split``'s unseen test videos of a checkpoint,
    restored the way ``vadpipe eval`` restores it."""
    import torch

    from vadpipe.pipeline.train.apply import load_head, score_rows

    cpu = torch.device("cpu")
    scores = score_rows(load_head(checkpoint, cpu), split["test"], split["test_root"], cpu)
    rows = split["test"]
    return roc_auc(np.concatenate([split["truth"][r.video] for r in rows]),
                   np.concatenate([scores[r.video] for r in rows]))


def fit_on_fresh_batches(head, optimizer, sample, *, steps: int, batch: int) -> dict:
    """Train ``head`` for ``steps`` steps, each on a fresh ``sample(batch, abnormal)`` pair
    (normal drawn first), and leave it in eval mode; returns the last loss parts."""
    head.train()
    parts: dict = {}
    for _ in range(steps):
        normal, _ = sample(batch, False)
        abnormal, _ = sample(batch, True)
        loss, parts = head.loss(normal, abnormal)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    return parts


def planted_videos(n: int, abnormal: bool, g, *, t: int = 32, d: int = 64, crops: int = 1, shift: float = 1.0):
    """In-memory videos ``[n, crops, T, D]`` and snippet labels ``[n, T]`` drawn from ``g``:
    snippets ~ N(0, 1), extra crops = the video plus 0.1-scale noise; abnormal videos get a
    mean ``shift`` on one contiguous run of 3-6 snippets."""
    import torch

    x = torch.randn(n, 1, t, d, generator=g)
    if crops > 1:
        x = x.expand(n, crops, t, d) + 0.1 * torch.randn(n, crops, t, d, generator=g)
    labels = torch.zeros(n, t)
    if abnormal:
        for i in range(n):
            length = int(torch.randint(3, 7, (1,), generator=g))
            start = int(torch.randint(0, t - length + 1, (1,), generator=g))
            x[i, :, start : start + length] += shift
            labels[i, start : start + length] = 1
    return x, labels
