"""LA-Net + DDL head: shapes, location prior, causal scorer, hand-computed losses, presets,
optimizer schedule, and learning a planted anomaly through the training loop."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.synthetic import make_split
from vadpipe.errors import ConfigError
from vadpipe.heads.base import get_head, list_heads
from vadpipe.heads.data import FeatureDataset
from vadpipe.heads.lanet import (
    CausalConv1d,
    CosineAdam,
    LANetConfig,
    LANetHead,
    LocalityAwareAttention,
    dynamics_accumulation,
    dynamics_alignment_loss,
    dynamics_ranking_loss,
    feature_dynamics,
    lanet_optimizer,
    location_prior,
    mil_loss,
    score_dynamics,
    topk_k,
)
from vadpipe.pipeline.evaluate import roc_auc
from vadpipe.pipeline.train import TrainConfig, build_head, load_checkpoint, train, video_scores

TINY = dict(feature_dim=12, hidden_dim=8, heads=4, mlp_dims=(16, 8), kernel_size=3, sigma=4.0)


def tiny_head(seed: int = 0, **overrides) -> LANetHead:
    torch.manual_seed(seed)
    return LANetHead(LANetConfig(**{**TINY, **overrides}))


# --------------------------------------------------------------------------- registry, config


def test_registered_and_built_through_registry() -> None:
    assert "lanet" in list_heads()
    spec = get_head("lanet")
    head, cfg = build_head(spec, {"hidden_dim": 8, "mlp_dims": (16, 8)}, feature_dim=12)
    assert isinstance(head, LANetHead) and cfg.feature_dim == 12


def test_presets_hold_the_paper_constants() -> None:
    ucf, xd = LANetConfig.preset("ucf"), LANetConfig.preset("XD")
    assert (ucf.hidden_dim, ucf.sigma, ucf.kernel_size, ucf.lambda1) == (512, 16.0, 10, 1.0)
    assert (xd.hidden_dim, xd.sigma, xd.kernel_size, xd.lambda1) == (128, 6.0, 5, 2.0)
    for c in (ucf, xd):
        assert (c.feature_dim, c.heads, c.mlp_dims, c.dropout) == (1024, 4, (512, 128), 0.1)
        assert (c.lambda2, c.margin, c.eps, c.k_divisor) == (1.0, 0.0, 1e-7, 16)
        assert (c.lr, c.weight_decay, c.lr_schedule, c.batch_size, c.segments) == (5e-4, 0.0, "cosine", 64, 200)
        assert (c.prior, c.alignment) == ("paper", "paper")
    assert (ucf.max_steps, xd.max_steps) == (650, 1650)
    assert LANetConfig() == ucf  # defaults are the UCF-Crime settings
    assert LANetConfig.preset("xd", feature_dim=32).feature_dim == 32
    with pytest.raises(ConfigError, match="unknown LA-Net preset"):
        LANetConfig.preset("shanghai")
    with pytest.raises(ConfigError, match="no setting"):
        LANetConfig.preset("ucf", sigmaa=1.0)


@pytest.mark.parametrize("bad", [dict(hidden_dim=10), dict(sigma=0.0), dict(dropout=1.0), dict(prior="add"),
                                 dict(alignment="mse"), dict(mlp_dims=(8,)), dict(kernel_size=0)])
def test_config_validation(bad) -> None:
    with pytest.raises(ConfigError):
        LANetConfig(**{**TINY, **bad})


# --------------------------------------------------------------------------- model


def test_shapes_range_and_crop_averaging() -> None:
    head = tiny_head().eval()
    x = torch.rand(3, 2, 7, 12)
    s = head.snippet_scores(x)
    assert s.shape == (3, 7) and bool(((s >= 0) & (s <= 1)).all())
    per_crop = [head.snippet_scores(x[:, c : c + 1]) for c in range(2)]
    torch.testing.assert_close(s, (per_crop[0] + per_crop[1]) / 2)
    scores, xf = head.forward_bags(x[:, 0])
    assert scores.shape == (3, 7) and xf.shape == (3, 7, 8)
    with pytest.raises(ValueError, match="feature_dim"):
        head.snippet_scores(torch.rand(1, 1, 5, 11))


def test_location_prior_values() -> None:
    g = location_prior(6, 16.0)  # eq. (2): exp(-|i-j|^2 / (2 sigma))
    assert g.shape == (6, 6)
    assert g[0, 4].item() == pytest.approx(math.exp(-16 / 32))
    assert g[5, 2].item() == pytest.approx(math.exp(-9 / 32))
    assert location_prior(6, 3.0, "gaussian")[0, 4].item() == pytest.approx(math.exp(-16 / 18))
    assert torch.count_nonzero(location_prior(6, 3.0, "none")) == 0


def test_location_prior_decays_attention_with_distance() -> None:
    t = 12

    def attention(sigma: float, prior: str = "paper") -> torch.Tensor:
        att = LocalityAwareAttention(feature_dim=8, hidden_dim=8, heads=4, sigma=sigma, prior=prior)
        with torch.no_grad():  # identical queries and keys everywhere: softmax map is uniform
            for lin in (att.phi, att.psi):
                lin.weight.zero_()
                lin.bias.fill_(0.3)
        return att.attention(torch.randn(2, t, 8))

    for sigma in (2.0, 6.0, 16.0):
        a = attention(sigma)
        assert a.shape == (2, 4, t, t)
        for i in (0, 5):  # row i: attention to snippets at distance d to the right
            row = a[0, 1, i, i:]
            assert bool((row[1:] <= row[:-1]).all()), (sigma, i)  # monotone (float32 flattens the tail)
            assert bool((row[1:5] < row[:4]).all()), (sigma, i)  # strictly, where the prior is resolvable
            torch.testing.assert_close(row, 1 / t + torch.exp(-torch.arange(t - i) ** 2 / (2 * sigma)))
    # a larger sigma decays more slowly (more weight at distance 3, same at distance 0)
    far = [attention(s)[0, 0, 0, 3].item() for s in (2.0, 6.0, 16.0)]
    assert far[0] < far[1] < far[2]
    torch.testing.assert_close(attention(2.0)[0, 0, 0, 0], attention(16.0)[0, 0, 0, 0])
    # without the prior the rows are the plain softmax (sum to one, uniform here)
    torch.testing.assert_close(attention(4.0, "none"), torch.full((2, 4, t, t), 1 / t))


def test_causal_scorer_ignores_the_future() -> None:
    torch.manual_seed(0)
    conv = CausalConv1d(5, 1, kernel_size=4)
    x = torch.randn(2, 5, 20)
    y = conv(x)
    assert y.shape == (2, 1, 20)
    for t in (0, 7, 19):
        x2 = x.clone()
        x2[..., t + 1 :] += torch.randn_like(x2[..., t + 1 :]) * 10
        torch.testing.assert_close(conv(x2)[..., : t + 1], y[..., : t + 1])
        if t >= 3:  # the window is t-K+1..t: the input at t-3 matters, at t-4 does not
            x3 = x.clone()
            x3[..., t - 3] += 5.0
            assert not torch.allclose(conv(x3)[..., t], y[..., t])
            x4 = x.clone()
            x4[..., t - 4] += 5.0
            torch.testing.assert_close(conv(x4)[..., t], y[..., t])
    # inside the head: scores at t do not depend on MLP features after t
    head = tiny_head().eval()
    xf = torch.randn(1, 8, 10)
    s = torch.sigmoid(head.scorer(xf))
    xf2 = xf.clone()
    xf2[..., 6:] = 3.0
    torch.testing.assert_close(torch.sigmoid(head.scorer(xf2))[..., :6], s[..., :6])


# --------------------------------------------------------------------------- losses


def test_topk_rule() -> None:
    assert [topk_k(t) for t in (1, 15, 16, 31, 32, 200)] == [1, 1, 2, 2, 3, 13]


def test_mil_loss_hand_computed() -> None:
    s_n = torch.tensor([[0.2, 0.5, 0.1] + [0.0] * 13])
    s_a = torch.tensor([[0.9, 0.1, 0.7] + [0.05] * 13])  # T = 16 -> k = 2 -> p = 0.8
    expected = (-math.log(1 - 0.5) - math.log(0.8)) / 2
    assert mil_loss(s_n, s_a, topk_k(16)).item() == pytest.approx(expected, rel=1e-6)


def test_dynamics_hand_computed() -> None:
    torch.testing.assert_close(score_dynamics(torch.tensor([[0.1, 0.4, 0.2]])), torch.tensor([[0.3, 0.2]]))
    xf = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]])
    torch.testing.assert_close(feature_dynamics(xf), torch.tensor([[1.0, 0.0]]))
    e_a = dynamics_accumulation(torch.tensor([[0.1, 0.5, 0.3]]), 2)  # (0.25 + 0.09) / 2
    e_n = dynamics_accumulation(torch.tensor([[0.2, 0.1, 0.0]]), 1)  # 0.04
    assert e_a.item() == pytest.approx(0.17) and e_n.item() == pytest.approx(0.04)
    assert dynamics_ranking_loss(e_a, e_n, 0.0).item() == 0.0
    assert dynamics_ranking_loss(e_a, e_n, 0.5).item() == pytest.approx(0.5 - 0.17 + 0.04)
    # pairs averaged: (max(0, 0.1 - 0.3 + 0.1), max(0, 0.1 - 0.0 + 0.2)) -> (0, 0.3)
    assert dynamics_ranking_loss(torch.tensor([0.3, 0.0]), torch.tensor([0.1, 0.2]), 0.1).item() == pytest.approx(0.15)


def test_alignment_loss_hand_computed() -> None:
    ds, df = torch.tensor([[0.5, 0.0], [0.2, 0.4]]), torch.tensor([[0.1, 1.0], [1.0, 0.5]])
    expected = (-0.5 * math.log(0.1 + 1e-7) - 0.0 - 0.2 * math.log(1.0 + 1e-7) - 0.4 * math.log(0.5 + 1e-7)) / 4
    assert dynamics_alignment_loss(ds, df, 1e-7).item() == pytest.approx(expected, rel=1e-6)
    kl = dynamics_alignment_loss(torch.tensor([[1.0, 3.0]]), torch.tensor([[1.0, 1.0]]), 1e-9, "kl")
    assert kl.item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-5)
    assert dynamics_alignment_loss(df, df, 1e-9, "kl").item() == pytest.approx(0.0, abs=1e-6)


def test_head_loss_combines_the_parts() -> None:
    head = tiny_head(dropout=0.0, lambda1=2.0, lambda2=0.5, margin=0.1)
    torch.manual_seed(1)
    normal, abnormal = torch.rand(2, 2, 16, 12), torch.rand(2, 2, 16, 12)
    loss, parts = head.loss(normal, abnormal)
    assert set(parts) == {"mil", "dr", "da", "total"}
    assert parts["total"] == pytest.approx(parts["mil"] + 2.0 * parts["dr"] + 0.5 * parts["da"], rel=1e-5)
    # recompute from the pieces: crops are separate bags (video-major), k = 2 for T = 16
    scores, xf = head.forward_bags(torch.cat((normal, abnormal)).reshape(8, 16, 12))
    assert parts["mil"] == pytest.approx(mil_loss(scores[:4], scores[4:], 2).item(), rel=1e-5)
    ds = score_dynamics(scores)
    dr = dynamics_ranking_loss(dynamics_accumulation(ds[4:], 2), dynamics_accumulation(ds[:4], 1), 0.1)
    assert parts["dr"] == pytest.approx(dr.item(), rel=1e-5, abs=1e-8)
    assert parts["da"] == pytest.approx(dynamics_alignment_loss(ds, feature_dynamics(xf)).item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in head.parameters())


# --------------------------------------------------------------------------- optimizer


def test_cosine_schedule_and_resume() -> None:
    cfg = LANetConfig(**TINY, lr=1e-2, max_steps=4)
    head = tiny_head()
    opt = lanet_optimizer(head.parameters(), cfg)
    assert isinstance(opt, CosineAdam)
    lrs = []
    for _ in range(5):
        head.loss(torch.rand(1, 1, 8, 12), torch.rand(1, 1, 8, 12))[0].backward()
        opt.step()
        opt.zero_grad()
        lrs.append(opt.param_groups[0]["lr"])
    expected = [1e-2 * 0.5 * (1 + math.cos(math.pi * min(i, 4) / 4)) for i in range(5)]
    assert lrs == pytest.approx(expected)
    fresh = lanet_optimizer(tiny_head().parameters(), cfg)
    fresh.load_state_dict(opt.state_dict())
    assert fresh.param_groups[0]["sched_step"] == 5
    assert type(lanet_optimizer(head.parameters(), LANetConfig(**TINY, lr_schedule="constant"))) is torch.optim.Adam


# --------------------------------------------------------------------------- training


def test_lanet_learns_planted_anomaly(tmp_path: Path, one_thread) -> None:
    data = make_split(tmp_path)
    overrides = {"batch_size": 4, "hidden_dim": 32, "mlp_dims": (32, 16), "kernel_size": 3, "sigma": 4.0,
                 "segments": 32, "max_steps": 100, "lr": 1e-3}
    cfg = TrainConfig(head="lanet", overrides=overrides, eval_every=50, device="cpu", seed=2)
    result = train(data["train"], data["val"], tmp_path / "out", cfg, root=data["train_root"], progress=False)
    assert [h["step"] for h in result.history] == [50, 100]
    assert result.best_metric > 0.9  # video-level AUC on held-out validation videos

    ckpt = load_checkpoint(result.best_path)
    assert ckpt["feature_spec"]["dim"] == 32 and ckpt["head_config"]["feature_dim"] == 32
    head, _ = build_head(get_head("lanet"), {k: tuple(v) if isinstance(v, list) else v
                                             for k, v in ckpt["head_config"].items()})
    test_set = FeatureDataset(data["test"], data["test_root"], mode="eval")
    labels = np.concatenate([data["truth"][r.video] for r in data["test"]])

    def frame_auc() -> float:
        return roc_auc(labels, np.concatenate(video_scores(head, test_set, torch.device("cpu"))))

    torch.manual_seed(2)  # an untrained head, seeded like the run
    head.load_state_dict(build_head(get_head("lanet"), overrides, feature_dim=32)[0].state_dict())
    untrained = frame_auc()
    head.load_state_dict(ckpt["state_dict"])
    trained = frame_auc()
    assert trained > 0.9 and trained > untrained + 0.3  # frame-level AUC on unseen videos, learned
