"""ShanghaiTech GT: RTFM's concatenated ``gt-sh.npy`` as a ``--gt sh-npy:`` kind, and the
``test_frame_mask/`` masks padded with their last label to ``T = ceil(n / 16)`` snippets
(features extracted with ``--tail pad``), both on the real RTFM files."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.shared_data import shared_fixture
from vadpipe.errors import EvaluationError
from vadpipe.manifests.datasets import import_rtfm_list
from vadpipe.pipeline.train.apply import build_gt, evaluate_scores, parse_gt
from vadpipe.pipeline.train.metrics import shanghaitech_gt

CLIP = 16
GT_SH_FRAMES = 142912  # fixtures README: gt-sh.npy shape (142912,)


def _test_videos() -> tuple[list[str], list[str]]:
    rows = import_rtfm_list(shared_fixture("rtfm_lists/shanghai-i3d-test-10crop.list"), dataset="shanghai")
    return [r.name for r in rows if r.is_anomalous], [r.name for r in rows if not r.is_anomalous]


def _snippets() -> dict[str, int]:
    """T of every test video in test-list order: ``ceil(len(mask) / 16)`` for the 44 abnormal
    videos; the normal videos' lengths are not in the fixtures, so STAND-INS that add up to
    the rest of gt-sh.npy (all zeros, so any split of it is the same GT)."""
    masks = shared_fixture("rtfm_lists/test_frame_mask")
    abnormal, normal = _test_videos()
    t = {v: math.ceil(len(np.load(masks / f"{v}.npy")) / CLIP) for v in abnormal}
    rest = GT_SH_FRAMES // CLIP - sum(t.values())
    for i, v in enumerate(normal):
        t[v] = rest // len(normal) + (i < rest % len(normal))
    return t


def _padded(mask: np.ndarray, n: int) -> np.ndarray:
    return np.concatenate([mask, np.full(n - len(mask), mask[-1])]).astype(np.uint8)


def test_sh_npy_kind_splits_gt_sh_into_the_padded_masks() -> None:
    gt_sh = shared_fixture("rtfm_lists/gt-sh.npy")
    masks = shared_fixture("rtfm_lists/test_frame_mask")
    t = _snippets()
    assert parse_gt(f"sh-npy:{gt_sh}") == ("sh-npy", str(gt_sh))
    n_frames = {v: n * CLIP for v, n in t.items()}
    gt, classes = build_gt("sh-npy", gt_sh, n_frames)
    assert classes is None and sum(map(len, gt.values())) == GT_SH_FRAMES
    abnormal, normal = _test_videos()
    for v in abnormal:
        m = np.load(masks / f"{v}.npy")
        assert len(m) % CLIP != 0
        np.testing.assert_array_equal(gt[v], _padded(m, t[v] * CLIP), err_msg=v)
    assert not any(gt[v].any() for v in normal)
    # the order is the list's beside gt-sh.npy, not the order the scores come in
    shuffled = dict(sorted(n_frames.items(), reverse=True))
    again, _ = build_gt("sh-npy", gt_sh, shuffled)
    assert all(np.array_equal(again[v], gt[v]) for v in gt)


def test_sh_npy_without_the_list_follows_the_scores_order(tmp_path: Path) -> None:
    gt_sh = shutil.copy(shared_fixture("rtfm_lists/gt-sh.npy"), tmp_path / "gt-sh.npy")
    n_frames = {v: n * CLIP for v, n in _snippets().items()}
    alone, _ = build_gt("sh-npy", gt_sh, n_frames)
    beside, _ = build_gt("sh-npy", shared_fixture("rtfm_lists/gt-sh.npy"), n_frames)
    assert all(np.array_equal(alone[v], beside[v]) for v in beside)


def test_sh_npy_lengths_that_do_not_add_up_are_an_error() -> None:
    gt_sh = shared_fixture("rtfm_lists/gt-sh.npy")
    n_frames = {v: n * CLIP for v, n in _snippets().items()}
    first = next(iter(n_frames))
    with pytest.raises(EvaluationError, match=f"has {GT_SH_FRAMES} frames but the 199 videos' frame counts add up "
                                              f"to {GT_SH_FRAMES + CLIP}"):
        build_gt("sh-npy", gt_sh, {**n_frames, first: n_frames[first] + CLIP})
    with pytest.raises(EvaluationError, match=r"holds 199 videos; no frame count \(no scores\) for 01_0015"):
        build_gt("sh-npy", gt_sh, {v: n for v, n in n_frames.items() if v != "01_0015"})


def test_sh_npy_and_padded_masks_give_the_same_evaluation() -> None:
    gt_sh = shared_fixture("rtfm_lists/gt-sh.npy")
    masks = shared_fixture("rtfm_lists/test_frame_mask")
    rng = np.random.default_rng(0)
    scores = {v: rng.random(n) for v, n in _snippets().items()}
    a = evaluate_scores(scores, f"sh-npy:{gt_sh}")
    b = evaluate_scores(scores, f"sh-masks:{masks}", strict_gt=True)  # padded tails: nothing to report
    assert a.warnings == b.warnings == [] and a.n_frames == b.n_frames == GT_SH_FRAMES
    assert (a.auc, a.ap, a.pr_auc, a.far) == (b.auc, b.ap, b.pr_auc, b.far)


def test_masks_pad_with_the_last_label_to_ceil_snippets() -> None:
    masks = shared_fixture("rtfm_lists/test_frame_mask")
    ends_anomalous = [v for v in _test_videos()[0] if np.load(masks / f"{v}.npy")[-1]]
    assert "01_0055" in ends_anomalous  # 313 frames, last label 1
    lengths = {v: len(np.load(masks / f"{v}.npy")) for v in ends_anomalous}
    pad = {v: math.ceil(n / CLIP) * CLIP for v, n in lengths.items()}
    gt = shanghaitech_gt(masks, pad)
    for v in ends_anomalous:
        assert gt[v][lengths[v]:].all() and len(gt[v]) == pad[v]
        np.testing.assert_array_equal(gt[v], _padded(np.load(masks / f"{v}.npy"), pad[v]))
    # a dropped tail (T = floor(n / 16)) cuts anomalous frames: reported like interval GT
    drop = {v: (n // CLIP) for v, n in lengths.items()}
    rng = np.random.default_rng(1)
    result = evaluate_scores({**{v: rng.random(t) for v, t in drop.items()}, "01_001": rng.random(20)},
                             f"sh-masks:{masks}")
    (warning,) = result.warnings
    assert warning.startswith(f"the GT of {len(ends_anomalous)} video(s) reaches past their scored T × 16 frames")
    assert "01_0055 (9 of 245 frames)" in warning
    with pytest.raises(EvaluationError, match=r"01_0055: 336 frames to evaluate but its mask .* has 313: padding 23"):
        shanghaitech_gt(masks, {"01_0055": 336})
