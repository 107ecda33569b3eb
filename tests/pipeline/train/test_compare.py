"""Comparing two score sets on one GT: the paired bootstrap of the AUC difference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vadpipe.errors import EvaluationError
from vadpipe.pipeline.train.metrics import paired_bootstrap_auc


def _test_set(seed: int = 0, n: int = 12):
    """``n`` videos of 40-80 frames, half anomalous (one event each); scores ``a`` follow
    the GT better than scores ``b``."""
    rng = np.random.default_rng(seed)
    gt, a, b = {}, {}, {}
    for i in range(n):
        t = int(rng.integers(40, 80))
        g = np.zeros(t, np.uint8)
        if i % 2:
            s = int(rng.integers(0, t - 10))
            g[s:s + 10] = 1
        gt[f"v{i:02d}"] = g
        a[f"v{i:02d}"] = g * 0.6 + rng.random(t) * 0.7
        b[f"v{i:02d}"] = g * 0.2 + rng.random(t) * 0.7
    return gt, a, b


def _reference(a, b, gt, resamples, seed, level):
    """The documented procedure, written again with sklearn's AUC."""
    names = sorted(gt)
    rng = np.random.default_rng(seed)
    diffs = []
    while len(diffs) < resamples:
        idx = rng.integers(0, len(names), len(names))
        y = np.concatenate([gt[names[i]] for i in idx])
        if y.min() == y.max():
            continue
        diffs.append(roc_auc_score(y, np.concatenate([a[names[i]] for i in idx]))
                     - roc_auc_score(y, np.concatenate([b[names[i]] for i in idx])))
    y = np.concatenate([gt[n] for n in names])
    full = (roc_auc_score(y, np.concatenate([a[n] for n in names]))
            - roc_auc_score(y, np.concatenate([b[n] for n in names])))
    tail = (1 - level) / 2
    return full, *np.quantile(diffs, [tail, 1 - tail]), float(np.mean(np.asarray(diffs) <= 0))


def test_the_bootstrap_equals_an_independent_implementation() -> None:
    gt, a, b = _test_set()
    got = paired_bootstrap_auc(a, b, gt, resamples=200, seed=3, level=0.9)
    want = _reference(a, b, gt, 200, 3, 0.9)
    np.testing.assert_allclose([got.diff, got.low, got.high, got.p_not_better], want, rtol=0, atol=1e-12)
    assert got.low > 0 and got.p_not_better < 0.05 and (got.n_videos, got.resamples) == (12, 200)


def test_a_set_compared_with_itself_differs_by_nothing() -> None:
    gt, a, _ = _test_set(seed=1)
    got = paired_bootstrap_auc(a, a, gt, resamples=50)
    assert (got.diff, got.low, got.high, got.p_not_better) == (0.0, 0.0, 0.0, 1.0)
    assert "difference +0.0000" in got.line("this", "other")


def test_sets_of_other_videos_are_refused() -> None:
    gt, a, b = _test_set(seed=2)
    del b["v03"]
    with pytest.raises(EvaluationError, match=r"cover different videos \(1 in one only: v03\)"):
        paired_bootstrap_auc(a, b, gt, resamples=10)


def test_draws_without_both_classes_are_drawn_again() -> None:
    """Three videos, one anomalous: about a third of the draws hold no anomalous frame."""
    gt, a, b = _test_set(seed=4, n=3)
    got = paired_bootstrap_auc(a, b, gt, resamples=100, seed=5)
    want = _reference(a, b, gt, 100, 5, 0.95)
    np.testing.assert_allclose([got.diff, got.low, got.high, got.p_not_better], want, rtol=0, atol=1e-12)


def test_scores_csv_keeps_every_float32_score_exactly(tmp_path) -> None:
    from vadpipe.manifests.datasets import DatasetRow
    from vadpipe.pipeline.train.apply import read_scores_csv, write_scores_csv

    rng = np.random.default_rng(0)
    scores = {"v1": rng.random(500).astype(np.float32), "v2": (0.5 + rng.random(300) * 1e-6).astype(np.float32)}
    rows = [DatasetRow(video=v, feature_path=f"{v}.npy", label="normal") for v in scores]
    write_scores_csv(tmp_path / "scores.csv", rows, scores)
    back = read_scores_csv(tmp_path / "scores.csv")
    for v, s in scores.items():
        np.testing.assert_array_equal(back[v].astype(np.float32), s)
