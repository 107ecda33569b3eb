"""Tests of the SA-CRF head (vadpipe.heads.sacrf): clique masks, banded attention against a
dense reference, mean-field convergence and halting, loss terms on hand-computed inputs, and
learning a planted anomaly through the training loop."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.synthetic import heldout_frame_auc, make_split
from vadpipe.errors import ConfigError
from vadpipe.heads.base import get_head, list_heads
from vadpipe.heads.sacrf import (
    SACRFConfig,
    SACRFHead,
    clique_mask,
    sacrf_contrastive,
    sacrf_mil_bce,
    sacrf_smoothness,
    sacrf_sparsity,
)
from vadpipe.pipeline.train import TrainConfig, load_checkpoint, train

SMALL = {"feature_dim": 32, "attn_dim": 16, "embed_dim": 16, "unary_hidden": 32}


def _head(**kw) -> SACRFHead:
    torch.manual_seed(0)
    return SACRFHead(SACRFConfig(**{**SMALL, **kw})).eval()


def test_registered_and_config_validation() -> None:
    assert "sacrf" in list_heads() and get_head("sacrf").build is SACRFHead
    cfg = SACRFConfig()
    assert cfg.localities == (1, 2, 4, 6, 8) and cfg.alpha1 == cfg.alpha2 == 8e-5
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size) == (1e-4, 1e-5, 32)
    for bad in ({"localities": ()}, {"localities": (1, 1)}, {"halting_tol": 0.0}, {"node_pool": "sum"},
                {"mf_iterations": 0}, {"feature_dim": 0}, {"dropout": 1.0}):
        with pytest.raises(ConfigError):
            SACRFConfig(**bad)


@pytest.mark.parametrize("g", [14, 1])
def test_shapes_and_score_range(g: int, one_thread) -> None:
    head = _head()
    x = torch.rand(2, g, 9, 32)
    out = head(x)
    assert out["marginals"].shape == (2, 9, g, 2) and out["embeddings"].shape == (2, 9, g, 16)
    scores = head.snippet_scores(x)
    assert scores.shape == (2, 9) and bool(((scores >= 0) & (scores <= 1)).all())
    assert torch.allclose(scores, out["marginals"][..., 1].amax(dim=2))
    mean_head = _head(node_pool="mean")
    assert torch.allclose(mean_head.snippet_scores(x), mean_head(x)["marginals"][..., 1].mean(dim=2))
    loss, parts = head.train().loss(x, x + 1.0)
    loss.backward()
    assert math.isfinite(loss.item()) and set(parts) == {"bce", "sparse", "smooth", "contrastive", "total"}
    with pytest.raises(ValueError, match="feature_dim"):
        head.snippet_scores(torch.rand(1, g, 4, 31))


def test_clique_mask_is_temporal_locality_by_brute_force() -> None:
    t, g = 10, 3
    for loc in (0, 1, 2, 4, 6, 8, 12):
        mask = clique_mask(t, g, loc)
        assert mask.shape == (t * g, t * g)
        for i in range(t * g):
            for j in range(t * g):
                assert bool(mask[i, j]) == (abs(i // g - j // g) <= loc), (loc, i, j)
    # locality 1 at an inner clip admits exactly 3 clips = 3G nodes, at an end 2 clips
    m = clique_mask(t, g, 1)
    assert int(m[5 * g].sum()) == 3 * g and int(m[0].sum()) == 2 * g


def test_banded_attention_matches_dense_masked_attention(one_thread) -> None:
    head = _head(localities=(0, 1, 3))
    with torch.no_grad():
        head.clique_logits.copy_(torch.tensor([0.3, -0.2, 0.5]))
    b, g, t, d = 2, 3, 10, 32
    x = torch.rand(b, g, t, d)
    nodes = x.transpose(1, 2)  # [B, T, G, D]
    flat = nodes.reshape(b, t * g, d)
    scores = head.theta1(flat) @ head.theta2(flat).transpose(1, 2) / math.sqrt(16)
    w = torch.softmax(head.clique_logits, 0)
    dense = sum(w[i] * torch.softmax(scores.masked_fill(~clique_mask(t, g, loc), float("-inf")), -1)
                for i, loc in enumerate((0, 1, 3)))
    h_dense = dense @ head.theta3(flat)
    out = head(x)
    assert torch.allclose(out["embeddings"].reshape(b, t * g, -1), h_dense, atol=1e-5)
    # the banded weights, scattered back into a dense matrix, are zero outside the widest clique
    attn = head.attention(nodes)  # [B, T, G, O, G]
    rebuilt = torch.zeros(b, t * g, t * g)
    for tt in range(t):
        for oi, off in enumerate(range(-3, 4)):
            if 0 <= tt + off < t:
                rebuilt[:, tt * g:(tt + 1) * g, (tt + off) * g:(tt + off + 1) * g] = attn[:, tt, :, oi]
    assert torch.allclose(rebuilt, dense, atol=1e-6)
    assert torch.allclose(attn.sum(dim=(3, 4)), torch.ones(b, t, g), atol=1e-5)


def test_mean_field_normalised_converges_and_halts_early(one_thread) -> None:
    x = torch.rand(2, 4, 12, 32) * 3
    fixed = _head(mf_iterations=40, halting_tol=None)
    with torch.no_grad():
        q_ref = fixed(x)["marginals"]
        deltas = fixed.last_deltas
    assert fixed.last_iterations == 40
    assert torch.allclose(q_ref.sum(-1), torch.ones(2, 12, 4), atol=1e-6)
    assert all(d1 <= d0 + 1e-7 for d0, d1 in zip(deltas[:12], deltas[1:13]))  # change shrinks
    assert deltas[8] < 0.1 * deltas[0] and deltas[-1] < 1e-5
    tol = 1e-3
    halting = _head(mf_iterations=40, halting_tol=tol)
    with torch.no_grad():
        q_halt = halting(x)["marginals"]
    assert halting.last_iterations < 40
    assert halting.last_deltas[-1] < tol
    assert torch.allclose(q_halt.sum(-1), torch.ones(2, 12, 4), atol=1e-6)
    assert float((q_halt - q_ref).abs().max()) < tol


def test_compatibility_starts_as_symmetric_potts() -> None:
    head = _head()
    assert torch.equal(head.compatibility, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    with torch.no_grad():
        head.compat.copy_(torch.tensor([[0.0, 2.0], [0.0, 1.0]]))
    assert torch.equal(head.compatibility, head.compatibility.t())
    assert torch.allclose(head.clique_weights, torch.full((5,), 0.2))


def test_loss_terms_by_hand() -> None:
    s = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.5]])
    assert sacrf_sparsity(s).item() == pytest.approx((0.6 + 1.0) / 2)
    assert sacrf_smoothness(s).item() == pytest.approx((0.01 + 0.01 + 0.25 + 0.25) / 2)
    normal = torch.tensor([[0.1, 0.2, 0.3]])  # top-2 mean 0.25 -> target 0
    abnormal = torch.tensor([[0.6, 0.9, 0.1]])  # top-2 mean 0.75 -> target 1
    assert sacrf_mil_bce(normal, abnormal, 2).item() == pytest.approx(-math.log(0.75), rel=1e-5)
    # contrastive: top-1 node embeddings; normal picks [1, 0], abnormal picks [0, 2] -> unit
    # centroids e1 and e2, squared distance 2; margin 3 -> hinge 1; margin 1 -> 0
    h_n = torch.tensor([[[1.0, 0.0], [0.0, 5.0]]])
    s_n = torch.tensor([[0.9, 0.1]])
    h_a = torch.tensor([[[3.0, 3.0], [0.0, 2.0]]])
    s_a = torch.tensor([[0.2, 0.8]])
    assert sacrf_contrastive(h_n, s_n, h_a, s_a, 1, 3.0).item() == pytest.approx(1.0)
    assert sacrf_contrastive(h_n, s_n, h_a, s_a, 1, 1.0).item() == pytest.approx(0.0)
    # top-2 = all nodes: centroids [1.5, 2.5] / 2.91548 = [0.51450, 0.85749] (abnormal) and
    # [0.5, 2.5] / 2.54951 = [0.19612, 0.98058] (normal); d = 0.31838^2 + 0.12309^2 = 0.11652
    assert sacrf_contrastive(h_n, s_n, h_a, s_a, 2, 3.0).item() == pytest.approx(3.0 - 0.11652, abs=1e-4)


def test_total_loss_is_weighted_sum(one_thread) -> None:
    head = _head(alpha1=0.5, alpha2=0.25, lambda_cs=2.0)
    torch.manual_seed(1)
    n, a = torch.rand(2, 2, 8, 32), torch.rand(2, 2, 8, 32) + 0.5
    loss, parts = head.loss(n, a)
    out = head(torch.cat((n, a)))
    s = out["scores"]
    bce = sacrf_mil_bce(s[:2], s[2:], 3)
    h, q = out["embeddings"].flatten(1, 2), out["marginals"][..., 1].flatten(1, 2)
    expected = (bce + 0.5 * sacrf_sparsity(s[2:]) + 0.25 * sacrf_smoothness(s[2:])
                + 2.0 * sacrf_contrastive(h[:2], q[:2], h[2:], q[2:], 3, 1.0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert parts["total"] == pytest.approx(loss.item())


def test_sacrf_learns_planted_anomaly(tmp_path: Path) -> None:
    data = make_split(tmp_path / "feats", crops=2)  # G = 2 nodes per clip
    overrides = {"batch_size": 4, "attn_dim": 16, "embed_dim": 16, "unary_hidden": 32, "lr": 1e-3}
    cfg = TrainConfig(head="sacrf", overrides=overrides, steps=150, eval_every=50, device="cpu", seed=0)
    result = train(data["train"], data["val"], tmp_path / "out", cfg, root=data["train_root"], progress=False)
    assert [h["step"] for h in result.history] == [50, 100, 150]
    assert result.best_metric > 0.9  # video-level AUC on held-out validation videos
    ckpt = load_checkpoint(result.best_path)
    assert ckpt["head_config"]["feature_dim"] == 32 and ckpt["feature_spec"]["crops"] == 2
    assert heldout_frame_auc(result.best_path, data) > 0.9  # frame-level on unseen test videos
