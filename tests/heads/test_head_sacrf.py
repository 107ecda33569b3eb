"""Tests of the SA-CRF head (vadpipe.heads.sacrf).

Each test's docstring names the code change ("mutation") it is there to catch: clique
membership (tau clips, which neighbours, the video ends), no self-message, the direction of
the Potts messages, the linear unary classifier, the banded layout against a dense
reference, mean-field convergence and halting, the loss terms, and learning a planted
anomaly through the training loop.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from tests.helpers.synthetic import heldout_frame_auc, make_split
from vadpipe.errors import ConfigError
from vadpipe.heads.base import get_head, list_heads
from vadpipe.heads.sacrf import (
    SACRFConfig,
    SACRFHead,
    banded_to_dense,
    clique_bounds,
    clique_mask,
    sacrf_contrastive,
    sacrf_mil_bce,
    sacrf_smoothness,
    sacrf_sparsity,
)
from vadpipe.pipeline.train.loop import TrainConfig, load_checkpoint, train

SMALL = {"feature_dim": 32, "attn_dim": 16, "embed_dim": 16}
MODES = [(w, e) for w in ("centred", "past", "future") for e in ("shift", "truncate")]

# Cliques of a 6-clip video, written out by hand from the rule in the module docstring (D1):
# per clip t the first and last clip of C_t^tau. Key: (clique_window, clique_edges, tau).
HAND_CLIQUES: dict[tuple[str, str, int], list[tuple[int, int]]] = {
    ("centred", "shift", 4): [(0, 3), (0, 3), (0, 3), (1, 4), (2, 5), (2, 5)],
    ("centred", "truncate", 4): [(0, 1), (0, 2), (0, 3), (1, 4), (2, 5), (3, 5)],
    ("past", "shift", 4): [(0, 3), (0, 3), (0, 3), (0, 3), (1, 4), (2, 5)],
    ("past", "truncate", 4): [(0, 0), (0, 1), (0, 2), (0, 3), (1, 4), (2, 5)],
    ("future", "shift", 4): [(0, 3), (1, 4), (2, 5), (2, 5), (2, 5), (2, 5)],
    ("future", "truncate", 4): [(0, 3), (1, 4), (2, 5), (3, 5), (4, 5), (5, 5)],
    ("centred", "shift", 3): [(0, 2), (0, 2), (1, 3), (2, 4), (3, 5), (3, 5)],
    ("centred", "shift", 2): [(0, 1), (0, 1), (1, 2), (2, 3), (3, 4), (4, 5)],
    ("centred", "shift", 1): [(t, t) for t in range(6)],
    ("centred", "shift", 8): [(0, 5)] * 6,  # video shorter than tau: one clique of all clips
}


def _head(**kw) -> SACRFHead:
    torch.manual_seed(0)
    return SACRFHead(SACRFConfig(**{**SMALL, **kw})).eval()


def test_registered_and_config_validation() -> None:
    """Mutation: a validation check dropped from ``SACRFConfig.__post_init__`` (e.g. tau = 0,
    an unknown clique window) or the head no longer registered as "sacrf"."""
    assert "sacrf" in list_heads() and get_head("sacrf").build is SACRFHead
    for bad in ({"localities": ()}, {"localities": (1, 1)}, {"localities": (0, 2)}, {"halting_tol": 0.0},
                {"node_pool": "sum"}, {"clique_window": "both"}, {"clique_edges": "wrap"},
                {"clique_weighting": "sigmoid"}, {"scaled_attention": 1}, {"mf_iterations": 0},
                {"feature_dim": 0}, {"unary_hidden": -1}, {"dropout": 1.0}):
        with pytest.raises(ConfigError):
            SACRFConfig(**bad)


@pytest.mark.parametrize("g", [14, 1])
def test_shapes_and_score_range(g: int, one_thread) -> None:
    """Mutation: a broken output layout ([B, T, G, .]), pooling over the wrong axis, or a
    loss/backward that no longer runs for G = 14 patch nodes or G = 1."""
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
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in head.parameters())
    with pytest.raises(ValueError, match="feature_dim"):
        head.snippet_scores(torch.rand(1, g, 4, 31))


@pytest.mark.parametrize("key", sorted(HAND_CLIQUES), ids=lambda k: "-".join(map(str, k)))
def test_clique_is_tau_consecutive_clips(key: tuple[str, str, int]) -> None:
    """Mutation: cliques of ``2 l + 1`` clips (``|t - t'| <= l``), the extra clip of an even
    tau on the future side, no shifting at the ends, or past/future swapped: the windows
    differ from the hand-written table. With ``"shift"`` every clique of a video with
    ``T >= tau`` has exactly tau * G nodes (Sec. 3.3.3)."""
    window, edges, tau = key
    t, g = 6, 3
    start, stop = clique_bounds(t, tau, window, edges)
    assert list(zip(start.tolist(), (stop - 1).tolist())) == HAND_CLIQUES[key]
    mask = clique_mask(t, g, tau, window, edges)
    for node in range(t * g):
        first, last = HAND_CLIQUES[key][node // g]
        assert mask[node].nonzero().flatten().tolist() == list(range(first * g, (last + 1) * g))
    if edges == "shift":
        assert mask.sum(dim=1).tolist() == [min(tau, t) * g] * (t * g)


@pytest.mark.parametrize("key", sorted(HAND_CLIQUES), ids=lambda k: "-".join(map(str, k)))
def test_clique_membership_by_autograd(key: tuple[str, str, int], one_thread) -> None:
    """Mutation: the attention reaching outside the clique (e.g. widened to ``2 l + 1``
    clips, or a banded index off by one), or a clique node not reached.

    With one mean-field pass, node (t, g)'s marginal depends on the features of exactly the
    nodes of C_t^tau (itself through its unary and query, the others through the message):
    the support of its gradient must be the tau * G nodes of the hand-written clique."""
    window, edges, tau = key
    t, g = 6, 2
    head = _head(localities=(tau,), clique_window=window, clique_edges=edges, mf_iterations=1,
                 halting_tol=None)
    torch.manual_seed(1)
    x = torch.rand(1, g, t, 32, requires_grad=True)
    marginals = head(x)["marginals"]  # [1, T, G, 2]
    for clip in range(t):
        for node in range(g):
            (grad,) = torch.autograd.grad(marginals[0, clip, node, 1], x, retain_graph=True)
            reached = grad[0].abs().sum(dim=-1) > 0  # [G, T]
            first, last = HAND_CLIQUES[key][clip]
            expected = torch.zeros(g, t, dtype=torch.bool)
            expected[:, first: last + 1] = True
            assert torch.equal(reached, expected), (clip, node, reached)


@pytest.mark.parametrize("window,edges", MODES)
def test_banded_attention_matches_dense_reference(window: str, edges: str, one_thread) -> None:
    """Mutation: a bug in the banded layout (window index, membership or self mask), the
    self-attention output H not using the clique softmax of eq. 3, or the mean-field pass not
    being ``softmax(-E_u - Â (f_p(theta3 B) + Q) U)``: compared with a dense computation from
    :func:`clique_mask`, several localities, rows with an empty message clique (tau = 1,
    G = 1 would be all-empty; here tau = 1 with G = 2 has one neighbour)."""
    locs = (1, 2, 3, 5)
    weighting = "free" if window == "past" else "softmax"  # cover both D4 options
    head = _head(localities=locs, clique_window=window, clique_edges=edges, clique_weighting=weighting,
                 scaled_attention=edges == "shift", mf_iterations=1, halting_tol=None)
    with torch.no_grad():
        head.clique_logits.copy_(torch.tensor([0.3, -0.2, 0.5, 0.1]))
        head.compat.copy_(torch.tensor([[0.2, 1.3], [0.7, -0.1]]))
    b, g, t, d = 2, 2, 9, 32
    torch.manual_seed(2)
    x = torch.rand(b, g, t, d)
    nodes = x.transpose(1, 2)  # [B, T, G, D]
    flat = nodes.reshape(b, t * g, d)
    scores = head.theta1(flat) @ head.theta2(flat).transpose(1, 2)
    if edges == "shift":
        scores = scores / math.sqrt(16)
    w = head.clique_weights

    def dense(include_self: bool) -> torch.Tensor:
        total = torch.zeros(b, t * g, t * g)
        for i, tau in enumerate(locs):
            mask = clique_mask(t, g, tau, window, edges, include_self=include_self)
            total = total + w[i] * torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0)
        return total

    ctx_ref, msg_ref = dense(True), dense(False)
    context, message = head.attention(nodes)
    assert torch.allclose(banded_to_dense(context), ctx_ref, atol=1e-6)
    assert torch.allclose(banded_to_dense(message), msg_ref, atol=1e-6)
    out = head(x)
    values = head.theta3(flat)
    assert torch.allclose(out["embeddings"].reshape(b, t * g, -1), ctx_ref @ values, atol=1e-5)
    unary = head.f_u(flat)
    q0 = torch.softmax(-unary, -1)
    q1 = torch.softmax(-unary - (msg_ref @ (head.f_p(values) + q0)) @ head.compatibility, -1)
    assert torch.allclose(out["marginals"].reshape(b, t * g, 2), q1, atol=1e-5)


def test_no_self_message(one_thread) -> None:
    """Mutation: the node itself kept in the message attention (eq. 6 sums over
    (i', j') != (i, j)), or an empty clique giving NaN / a bias instead of a zero message.

    A node alone in its clique (tau = 1, G = 1) keeps its unary marginal exactly, whatever
    the weights and however many passes; with more nodes the message attention has zero self
    weight while the context attention of eq. 3 (node included) does not."""
    lone = _head(localities=(1,), mf_iterations=5, halting_tol=None)
    with torch.no_grad():
        lone.f_p.bias.copy_(torch.tensor([2.0, -3.0]))
    x = torch.rand(2, 1, 7, 32) * 3
    out = lone(x)
    assert torch.equal(out["marginals"], torch.softmax(-out["unary"], dim=-1))
    head = _head(localities=(1, 2, 4))
    nodes = torch.rand(2, 3, 8, 32).transpose(1, 2)
    with torch.no_grad():
        context, message = head.attention(nodes)
    msg, ctx = banded_to_dense(message), banded_to_dense(context)
    assert float(msg.diagonal(dim1=1, dim2=2).abs().max()) == 0.0
    assert float(ctx.diagonal(dim1=1, dim2=2).min()) > 0.0
    assert torch.allclose(msg.sum(-1), torch.ones(2, 24), atol=1e-5)  # every node has neighbours here


def _potts_target(neighbour_evidence: float, sign: float = 1.0) -> float:
    """Anomaly marginal of the middle clip of a 5-clip video (G = 1, tau = 3) whose unary is
    neutral while its clique neighbours carry ``neighbour_evidence`` (positive: anomalous)."""
    head = _head(feature_dim=4, localities=(3,))
    with torch.no_grad():
        for layer in (head.theta1, head.theta2, head.f_p):  # uniform attention, marginal messages only
            layer.weight.zero_()
            layer.bias.zero_()
        head.f_u.weight.zero_()
        head.f_u.bias.zero_()
        head.f_u.weight[1, 0] = -6.0  # E_u(anomalous) = -6 * feature 0
        head.compat.mul_(sign)
    x = torch.zeros(1, 1, 5, 4)
    x[0, 0, :, 0] = neighbour_evidence
    x[0, 0, 2, 0] = 0.0  # the target: P_unary(anomalous) = 0.5
    with torch.no_grad():
        out = head(x)
    assert float(torch.softmax(-out["unary"], -1)[0, 2, 0, 1]) == pytest.approx(0.5)
    return float(out["marginals"][0, 2, 0, 1])


def test_potts_message_pulls_node_towards_clique_labels(one_thread) -> None:
    """Mutation: the sign of the compatibility ``U`` flipped (or the pairwise energy added
    with the wrong sign): a neutral node among confidently anomalous neighbours must end more
    anomalous (about 0.73 > 0.5) and among confidently normal ones less (about 0.27)."""
    assert _potts_target(+1.0) > 0.7
    assert _potts_target(-1.0) < 0.3
    assert _potts_target(+1.0, sign=-1.0) < 0.3  # an anti-Potts U pushes it away


def test_unary_classifier_is_linear_by_default() -> None:
    """Mutation: f_u with a hidden layer by default (eq. 5: "a linear feed-forward
    classifier"). The default f_u is one ``nn.Linear`` and E_u is affine in the features;
    ``unary_hidden > 0`` gives the MLP option (not affine)."""
    torch.manual_seed(0)
    head = SACRFHead(SACRFConfig(feature_dim=16))
    assert isinstance(head.f_u, nn.Linear) and (head.f_u.in_features, head.f_u.out_features) == (16, 2)
    a, b_ = torch.rand(5, 16), torch.rand(5, 16) - 2.0
    mix = 0.3 * a + 0.7 * b_
    assert torch.allclose(head.f_u(mix), 0.3 * head.f_u(a) + 0.7 * head.f_u(b_), atol=1e-6)
    torch.manual_seed(0)
    mlp = SACRFHead(SACRFConfig(feature_dim=16, unary_hidden=8))
    assert sum(isinstance(m, nn.Linear) for m in mlp.f_u.modules()) == 2
    assert not torch.allclose(mlp.f_u(mix), 0.3 * mlp.f_u(a) + 0.7 * mlp.f_u(b_), atol=1e-4)


def test_mean_field_normalised_converges_and_halts_early(one_thread) -> None:
    """Mutation: a mean-field update that stops contracting (e.g. message attention rows not
    sub-stochastic), marginals not normalised, or halting that stops too early / never."""
    x = torch.rand(2, 4, 12, 32) * 3
    fixed = _head(mf_iterations=40, halting_tol=None)
    with torch.no_grad():
        q_ref = fixed(x)["marginals"]
        deltas = fixed.last_deltas
    assert fixed.last_iterations == 40
    assert torch.allclose(q_ref.sum(-1), torch.ones(2, 12, 4), atol=1e-6)
    assert all(d1 <= 0.5 * d0 + 1e-7 for d0, d1 in zip(deltas[:12], deltas[1:13]))  # factor 0.5 (D6)
    assert deltas[-1] < 1e-5
    tol = 1e-3
    halting = _head(mf_iterations=40, halting_tol=tol)
    with torch.no_grad():
        q_halt = halting(x)["marginals"]
    assert halting.last_iterations < 40
    assert halting.last_deltas[-1] < tol
    assert torch.allclose(q_halt.sum(-1), torch.ones(2, 12, 4), atol=1e-6)
    assert float((q_halt - q_ref).abs().max()) < tol


def test_loss_terms_by_hand() -> None:
    """Mutation: a changed loss term (sparsity/smoothness reduction, top-k BCE, the
    contrastive hinge or its centroid normalisation); values computed by hand."""
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
    """Mutation: ``loss`` mis-wiring eq. 9 (a weight applied to the wrong term, the terms
    on the normal instead of the abnormal videos, embeddings/marginals of the wrong half)."""
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
    """Mutation: anything that stops the head from learning (inverted scores, no gradient to
    the unary or attention, a broken checkpoint round trip): held-out AUC must exceed 0.9."""
    data = make_split(tmp_path / "feats", crops=2)  # G = 2 nodes per clip
    overrides = {"batch_size": 4, "attn_dim": 16, "embed_dim": 16, "lr": 1e-3}
    cfg = TrainConfig(head="sacrf", overrides=overrides, steps=150, eval_every=50, device="cpu", seed=0)
    result = train(data["train"], data["val"], tmp_path / "out", cfg, root=data["train_root"], progress=False)
    assert [h["step"] for h in result.history] == [50, 100, 150]
    assert result.best_metric > 0.9  # video-level AUC on held-out validation videos
    ckpt = load_checkpoint(result.best_path)
    assert ckpt["head_config"]["feature_dim"] == 32 and ckpt["feature_spec"]["crops"] == 2
    assert tuple(ckpt["head_config"]["localities"]) == (1, 2, 4, 6, 8)
    assert heldout_frame_auc(result.best_path, data) > 0.9  # frame-level on unseen test videos
