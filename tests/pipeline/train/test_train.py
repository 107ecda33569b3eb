"""Training loop: learning a planted anomaly, determinism, resume, selection protocol."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.synthetic import heldout_frame_auc, make_dataset, make_split
from vadpipe.errors import ConfigError
from vadpipe.manifests.datasets import read_dataset, split_train_val
from vadpipe.pipeline.train.loop import TrainConfig, load_checkpoint, train

SMALL = {
    "sultani": {"batch_size": 4},
    "rtfm": {"batch_size": 4, "fc_dims": (32, 16), "dropout": 0.3, "lr": 1e-3, "weight_decay": 0.0},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return make_split(tmp_path_factory.mktemp("feats"))


@pytest.mark.parametrize("head", ["sultani", "rtfm"])
def test_head_learns_planted_anomaly(head: str, data: dict, tmp_path: Path) -> None:
    cfg = TrainConfig(head=head, overrides=SMALL[head], steps=150, eval_every=50, device="cpu", seed=0)
    result = train(data["train"], data["val"], tmp_path, cfg, root=data["train_root"], progress=False)
    assert result.best_path.exists() and result.last_path.exists()
    assert [h["step"] for h in result.history] == [50, 100, 150]
    assert result.best_metric > 0.9  # video-level AUC on the held-out validation videos
    assert heldout_frame_auc(result.best_path, data) > 0.9  # frame-level on unseen test videos
    ckpt = load_checkpoint(result.best_path)
    assert ckpt["feature_spec"]["dim"] == 32 and ckpt["feature_spec"]["crops"] == 2
    assert ckpt["selection"] == "val" and ckpt["step"] == result.best_step


def test_training_is_deterministic_and_resumes_exactly(data: dict, tmp_path: Path) -> None:
    cfg = TrainConfig(head="rtfm", overrides=SMALL["rtfm"], steps=40, eval_every=20, device="cpu", seed=3)
    full = train(data["train"], data["val"], tmp_path / "a", cfg, root=data["train_root"], progress=False)
    again = train(data["train"], data["val"], tmp_path / "b", cfg, root=data["train_root"], progress=False)
    half = TrainConfig(**{**cfg.__dict__, "steps": 20})
    train(data["train"], data["val"], tmp_path / "c", half, root=data["train_root"], progress=False)
    resumed = train(data["train"], data["val"], tmp_path / "c", cfg, root=data["train_root"],
                    resume=tmp_path / "c" / "last.pt", progress=False)
    final = [load_checkpoint(r.last_path)["state_dict"] for r in (full, again, resumed)]
    for key in final[0]:
        assert torch.equal(final[0][key], final[1][key]), key
        assert torch.equal(final[0][key], final[2][key]), key
    assert [h["step"] for h in resumed.history] == [20, 40]


def test_early_stopping_and_test_selection_guard(data: dict, tmp_path: Path) -> None:
    cfg = TrainConfig(head="sultani", overrides={**SMALL["sultani"], "lr": 0.0}, steps=100, eval_every=10,
                      patience=2, device="cpu")
    result = train(data["train"], data["val"], tmp_path, cfg, root=data["train_root"], progress=False)
    assert result.stopped_early and len(result.history) == 3  # lr 0: no improvement after the first pass
    with pytest.raises(ConfigError, match="needs a test set"):
        train(data["train"], data["val"], tmp_path, TrainConfig(head="sultani", selection="test"),
              root=data["train_root"], progress=False)


def test_unknown_override_is_named(data: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no setting"):
        train(data["train"], data["val"], tmp_path, TrainConfig(head="rtfm", overrides={"lrr": 1}),
              root=data["train_root"], progress=False)


def test_mgfn_trains_through_the_same_loop(tmp_path: Path) -> None:
    # MGFN needs several crops (its contrastive terms pair crops 0..N/2-1 with N/2..N-1).
    csv, _ = make_dataset(tmp_path / "d", 8, 8, crops=4, seed=5)
    train_rows, val_rows = split_train_val(read_dataset(csv), val_fraction=0.25)
    cfg = TrainConfig(head="mgfn", overrides={"batch_size": 4, "dims": (16, 32, 64), "dim_head": 8},
                      steps=20, eval_every=10, device="cpu")
    result = train(train_rows, val_rows, tmp_path / "out", cfg, root=csv.parent, progress=False)
    ckpt = load_checkpoint(result.last_path)
    assert ckpt["step"] == 20 and ckpt["feature_spec"]["crops"] == 4 and ckpt["feature_spec"]["segments"] == 32
    assert ckpt["head_config"]["dims"] == [16, 32, 64] and ckpt["head_config"]["feature_dim"] == 32
    assert all(np.isfinite(h["loss"]) and 0.0 <= h["val_auc"] <= 1.0 for h in result.history)


def test_test_selection_on_the_full_split_starts_after_eval_start(data: dict, tmp_path: Path) -> None:
    """The papers' protocol with the published code's selection: no validation videos, the test
    metric evaluated every ``eval_every`` steps only after ``eval_start`` (RTFM: step > 200)."""
    calls = []

    def metric(head) -> float:
        calls.append(1)
        return float(len(calls))  # improves every time: the last candidate is kept

    cfg = TrainConfig(head="sultani", overrides=SMALL["sultani"], steps=30, eval_every=5, eval_start=15,
                      selection="test", train_split="full", device="cpu")
    result = train(data["train"] + data["val"], [], tmp_path, cfg, root=data["train_root"], progress=False,
                   test_metric=metric)
    assert [h["step"] for h in result.history] == [20, 25, 30] and len(calls) == 3
    assert result.best_step == 30 and load_checkpoint(result.best_path)["threshold"] is None
    with pytest.raises(ConfigError, match="eval_start must be >= 0"):
        TrainConfig(eval_start=-1)
