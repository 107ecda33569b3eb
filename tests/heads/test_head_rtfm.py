"""Tests of the RTFM head (vadpipe.heads.rtfm) and official-checkpoint import (checkpoints.py).

The reference forward below is an independent, literal transcription of ``Model.forward``
in github.com/tianyu0207/RTFM ``model.py`` (and ``Aggregate``/``_NonLocalBlockND``), written
with functional ops on a plain state dict, so it shares no code with the head.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.synthetic import fit_on_fresh_batches, planted_videos, rank_auc
from vadpipe.errors import ConfigError, WeightsIntegrityError, WeightsNotFoundError
from vadpipe.heads.base import get_head
from vadpipe.heads.checkpoints import CheckpointMismatchError, load_official_state_dict, read_state_dict
from vadpipe.heads.rtfm import (
    RTFM_PAPER_SETTINGS,
    RTFMConfig,
    RTFMHead,
    rtfm_magnitude_loss,
    rtfm_smoothness,
    rtfm_snippet_bce,
    rtfm_sparsity,
    rtfm_video_bce,
)

# Keys and shapes of the official RTFM ``Model(n_features=2048, batch_size)`` state dict, in
# registration order (Aggregate: conv_1..conv_5, non_local{g, W, theta, phi}; fc1..fc3).
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _bn(prefix: str, c: int) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}.{n}", () if n == "num_batches_tracked" else (c,)) for n in BN]


OFFICIAL_KEYS: list[tuple[str, tuple[int, ...]]] = [
    ("Aggregate.conv_1.0.weight", (512, 2048, 3)),
    ("Aggregate.conv_1.0.bias", (512,)),
    *_bn("Aggregate.conv_1.2", 512),
    ("Aggregate.conv_2.0.weight", (512, 2048, 3)),
    ("Aggregate.conv_2.0.bias", (512,)),
    *_bn("Aggregate.conv_2.2", 512),
    ("Aggregate.conv_3.0.weight", (512, 2048, 3)),
    ("Aggregate.conv_3.0.bias", (512,)),
    *_bn("Aggregate.conv_3.2", 512),
    ("Aggregate.conv_4.0.weight", (512, 2048, 1)),
    ("Aggregate.conv_5.0.weight", (2048, 2048, 3)),
    *_bn("Aggregate.conv_5.2", 2048),
    ("Aggregate.non_local.g.weight", (256, 512, 1)),
    ("Aggregate.non_local.g.bias", (256,)),
    ("Aggregate.non_local.W.0.weight", (512, 256, 1)),
    ("Aggregate.non_local.W.0.bias", (512,)),
    *_bn("Aggregate.non_local.W.1", 512),
    ("Aggregate.non_local.theta.weight", (256, 512, 1)),
    ("Aggregate.non_local.theta.bias", (256,)),
    ("Aggregate.non_local.phi.weight", (256, 512, 1)),
    ("Aggregate.non_local.phi.bias", (256,)),
    ("fc1.weight", (512, 2048)),
    ("fc1.bias", (512,)),
    ("fc2.weight", (128, 512)),
    ("fc2.bias", (128,)),
    ("fc3.weight", (1, 128)),
    ("fc3.bias", (1,)),
]

SMALL = dict(feature_dim=64, fc_dims=(32, 16))


# ----------------------------------------------------------------------------------------
# Independent reference of the official forward
# ----------------------------------------------------------------------------------------


def _ref_bn(x, p, prefix, training):
    return F.batch_norm(
        x, p[prefix + "running_mean"], p[prefix + "running_var"], p[prefix + "weight"], p[prefix + "bias"],
        training, 0.1, 1e-5,
    )


def _ref_aggregate(x, p, training):
    out = x.permute(0, 2, 1)  # x: (B, T, F)
    residual = out

    def branch(i, dilation):
        y = F.conv1d(out, p[f"Aggregate.conv_{i}.0.weight"], p[f"Aggregate.conv_{i}.0.bias"],
                     stride=1, padding=dilation, dilation=dilation)
        return _ref_bn(F.relu(y), p, f"Aggregate.conv_{i}.2.", training)

    out1, out2, out3 = branch(1, 1), branch(2, 2), branch(3, 4)
    out_d = torch.cat((out1, out2, out3), dim=1)
    h = F.relu(F.conv1d(out, p["Aggregate.conv_4.0.weight"]))

    # _NonLocalBlockND.forward, dimension 1, sub_sample=False, bn_layer=True
    nl = "Aggregate.non_local."
    b = h.size(0)
    inter = p[nl + "g.weight"].shape[0]
    g_x = F.conv1d(h, p[nl + "g.weight"], p[nl + "g.bias"]).view(b, inter, -1).permute(0, 2, 1)
    theta_x = F.conv1d(h, p[nl + "theta.weight"], p[nl + "theta.bias"]).view(b, inter, -1).permute(0, 2, 1)
    phi_x = F.conv1d(h, p[nl + "phi.weight"], p[nl + "phi.bias"]).view(b, inter, -1)
    f = torch.matmul(theta_x, phi_x)
    f_div_c = f / f.size(-1)
    y = torch.matmul(f_div_c, g_x).permute(0, 2, 1).contiguous().view(b, inter, *h.size()[2:])
    w_y = _ref_bn(F.conv1d(y, p[nl + "W.0.weight"], p[nl + "W.0.bias"]), p, nl + "W.1.", training)
    h = w_y + h

    out = torch.cat((out_d, h), dim=1)
    out = F.relu(F.conv1d(out, p["Aggregate.conv_5.0.weight"], padding=1))
    out = _ref_bn(out, p, "Aggregate.conv_5.2.", training)
    out = out + residual
    return out.permute(0, 2, 1)


def reference_forward(inputs, p, batch_size, training=False, drop=0.7, k=3):
    """model.py ``Model.forward`` (num_segments = 32 -> k = 3; 10 crops hard-coded)."""
    bs, ncrops, t, f = inputs.size()
    out = inputs.view(-1, t, f)
    out = _ref_aggregate(out, p, training)
    out = F.dropout(out, drop, training)
    features = out
    scores = F.relu(F.linear(features, p["fc1.weight"], p["fc1.bias"]))
    scores = F.dropout(scores, drop, training)
    scores = F.relu(F.linear(scores, p["fc2.weight"], p["fc2.bias"]))
    scores = F.dropout(scores, drop, training)
    scores = torch.sigmoid(F.linear(scores, p["fc3.weight"], p["fc3.bias"]))
    scores = scores.view(bs, ncrops, -1).mean(1)
    scores = scores.unsqueeze(dim=2)

    normal_features = features[0:batch_size * 10]
    normal_scores = scores[0:batch_size]
    abnormal_features = features[batch_size * 10:]
    abnormal_scores = scores[batch_size:]

    feat_magnitudes = torch.norm(features, p=2, dim=2)
    feat_magnitudes = feat_magnitudes.view(bs, ncrops, -1).mean(1)
    nfea_magnitudes = feat_magnitudes[0:batch_size]
    afea_magnitudes = feat_magnitudes[batch_size:]
    n_size = nfea_magnitudes.shape[0]
    if nfea_magnitudes.shape[0] == 1:
        afea_magnitudes = nfea_magnitudes
        abnormal_scores = normal_scores
        abnormal_features = normal_features

    select_idx = F.dropout(torch.ones_like(nfea_magnitudes), drop, training)
    afea_magnitudes_drop = afea_magnitudes * select_idx
    idx_abn = torch.topk(afea_magnitudes_drop, k, dim=1)[1]
    idx_abn_feat = idx_abn.unsqueeze(2).expand([-1, -1, abnormal_features.shape[2]])
    abnormal_features = abnormal_features.view(n_size, ncrops, t, f).permute(1, 0, 2, 3)
    total_select_abn_feature = torch.zeros(0, dtype=inputs.dtype)
    for abnormal_feature in abnormal_features:
        feat_select_abn = torch.gather(abnormal_feature, 1, idx_abn_feat)
        total_select_abn_feature = torch.cat((total_select_abn_feature, feat_select_abn))
    idx_abn_score = idx_abn.unsqueeze(2).expand([-1, -1, abnormal_scores.shape[2]])
    score_abnormal = torch.mean(torch.gather(abnormal_scores, 1, idx_abn_score), dim=1)

    select_idx_normal = F.dropout(torch.ones_like(nfea_magnitudes), drop, training)
    nfea_magnitudes_drop = nfea_magnitudes * select_idx_normal
    idx_normal = torch.topk(nfea_magnitudes_drop, k, dim=1)[1]
    idx_normal_feat = idx_normal.unsqueeze(2).expand([-1, -1, normal_features.shape[2]])
    normal_features = normal_features.view(n_size, ncrops, t, f).permute(1, 0, 2, 3)
    total_select_nor_feature = torch.zeros(0, dtype=inputs.dtype)
    for nor_fea in normal_features:
        feat_select_normal = torch.gather(nor_fea, 1, idx_normal_feat)
        total_select_nor_feature = torch.cat((total_select_nor_feature, feat_select_normal))
    idx_normal_score = idx_normal.unsqueeze(2).expand([-1, -1, normal_scores.shape[2]])
    score_normal = torch.mean(torch.gather(normal_scores, 1, idx_normal_score), dim=1)

    fa, fn = total_select_abn_feature, total_select_nor_feature
    return score_abnormal, score_normal, fa, fn, fa, fa, scores, fa, fa, feat_magnitudes


def reference_loss(out, batch_size, t):
    """train.py: RTFM_loss(0.0001, 100) + sparsity(abn, bs, 8e-3) + smooth(abn, 8e-4)."""
    score_abnormal, score_normal, feat_a, feat_n, scores = out[0], out[1], out[2], out[3], out[6]
    scores = scores.view(batch_size * t * 2, -1).squeeze()
    abn_scores = scores[batch_size * t:]
    label = torch.cat((torch.zeros(batch_size), torch.ones(batch_size))).to(scores)
    score = torch.cat((score_normal, score_abnormal), 0).squeeze()
    loss_cls = torch.nn.BCELoss()(score, label)
    loss_abn = torch.abs(100 - torch.norm(torch.mean(feat_a, dim=1), p=2, dim=1))
    loss_nor = torch.norm(torch.mean(feat_n, dim=1), p=2, dim=1)
    loss_um = torch.mean((loss_abn + loss_nor) ** 2)
    sparse = 8e-3 * torch.mean(torch.norm(abn_scores, dim=0))
    arr2 = torch.zeros_like(abn_scores)
    arr2[:-1] = abn_scores[1:]
    arr2[-1] = abn_scores[-1]
    smooth = 8e-4 * torch.sum((arr2 - abn_scores) ** 2)
    return loss_cls + 1e-4 * loss_um + smooth + sparse


def _perturbed_state(model: RTFMHead, seed: int = 0) -> OrderedDict:
    """The model's own (official) init, with BatchNorm and biases moved off their defaults
    so that every path (including the zero-initialised non-local W) is exercised."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for key, v in model.state_dict().items():
        v = v.clone()
        if key.endswith("num_batches_tracked"):
            pass
        elif key.endswith("running_var"):
            v = 0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype)
        elif key.endswith("running_mean") or key.endswith("bias"):
            v = 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        elif v.dim() == 1:  # BatchNorm weight
            v = 1.0 + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        sd[key] = v
    return sd


def _official_random_state(seed: int = 0) -> OrderedDict:
    """A state dict with exactly the official key names and shapes (OFFICIAL_KEYS)."""
    g = torch.Generator().manual_seed(seed)
    sd = OrderedDict()
    for key, shape in OFFICIAL_KEYS:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(1234, dtype=torch.long)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) >= 2:
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith(".2.weight") or key.endswith("W.1.weight"):
            sd[key] = 1.0 + 0.2 * torch.randn(shape, generator=g)
        else:
            sd[key] = 0.1 * torch.randn(shape, generator=g)
    return sd


def _inputs(bs, ncrops=10, t=32, d=64, seed=0, dtype=torch.float32):
    return torch.randn(bs, ncrops, t, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _assert_outputs_close(a, b, atol):
    assert len(a) == len(b) == 10
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.shape == y.shape, (i, x.shape, y.shape)
        assert (x - y).abs().max().item() < atol, (i, (x - y).abs().max().item())


# ----------------------------------------------------------------------------------------
# Structure and shapes
# ----------------------------------------------------------------------------------------


def test_state_dict_has_exactly_the_official_keys_and_shapes():
    sd = RTFMHead().state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == OFFICIAL_KEYS
    assert len(sd) == 47


def test_official_init_non_local_w_batchnorm_is_zero_and_biases_zero():
    torch.manual_seed(0)
    m = RTFMHead(RTFMConfig(**SMALL))
    assert torch.all(m.Aggregate.non_local.W[1].weight == 0)
    assert torch.all(m.Aggregate.non_local.W[1].bias == 0)
    assert torch.all(m.fc1.bias == 0) and torch.all(m.Aggregate.conv_1[0].bias == 0)
    assert m.Aggregate.conv_4[0].bias is None and m.Aggregate.conv_5[0].bias is None
    # the non-local block is the identity at init
    x = torch.randn(2, 16, 32)
    m.eval()
    assert torch.equal(m.Aggregate.non_local(x), x)


def test_defaults_match_official_code():
    c = RTFMConfig()
    assert (c.feature_dim, c.batch_size, c.n_crops, c.segments, c.k) == (2048, 32, 10, 32, 3)
    assert (c.dropout, c.margin, c.magnitude_weight, c.lambda_smooth, c.lambda_sparse) == (0.7, 100.0, 1e-4, 8e-4, 8e-3)
    assert (c.lr, c.weight_decay, c.max_steps) == (1e-3, 5e-3, 15000)
    spec = get_head("rtfm")
    assert spec.config_cls is RTFMConfig
    model = spec.build(RTFMConfig(**SMALL))
    opt = spec.optimizer(model.parameters(), model.config)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 5e-3


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(feature_dim=60),
        dict(k=0),
        dict(dropout=1.0),
        dict(sparsity="l1"),
        dict(magnitude_loss="hinge"),
        dict(alpha=-1.0),
        dict(alpha=float("nan")),
        dict(eligibility_dropout="no"),
    ],
)
def test_bad_config_raises(kwargs):
    with pytest.raises(ConfigError):
        RTFMConfig(**kwargs)


def test_forward_shapes_training_layout():
    torch.manual_seed(0)
    b = 2
    m = RTFMHead(RTFMConfig(batch_size=b, **SMALL)).train()
    out = m.forward_official(_inputs(2 * b))  # [2B, 10, 32, 64] -> folded to [2B*10, 32, 64]
    score_abn, score_nor, fa, fn, *_rest = out
    assert score_abn.shape == (b, 1) and score_nor.shape == (b, 1)
    assert fa.shape == (10 * b, 3, 64) and fn.shape == (10 * b, 3, 64)
    assert out[6].shape == (2 * b, 32, 1) and out[9].shape == (2 * b, 32)
    assert out[4] is fa and out[5] is fa and out[7] is fa and out[8] is fa
    assert torch.all((out[6] >= 0) & (out[6] <= 1))


def test_forward_shapes_eval_one_video_ten_crops_full_size():
    torch.manual_seed(0)
    m = RTFMHead().eval()  # batch_size 32, as the official test script constructs it
    with torch.no_grad():
        out = m.forward_official(_inputs(1, d=2048))
        scores = m.snippet_scores(_inputs(1, d=2048))
    assert out[0].shape == (1, 1) and out[2].shape == (10, 3, 2048) and out[6].shape == (1, 32, 1)
    # inference: the "abnormal" half is a copy of the single video
    assert torch.equal(out[0], out[1]) and torch.equal(out[2], out[3])
    assert torch.allclose(scores, out[6][..., 0], atol=1e-6)


def test_wrong_batch_layout_and_dims_raise():
    m = RTFMHead(RTFMConfig(batch_size=2, **SMALL))
    with pytest.raises(ValueError, match="2 normal then 2 abnormal"):
        m.forward_official(_inputs(3))
    with pytest.raises(ValueError, match="feature_dim=64"):
        m.snippet_scores(_inputs(1, d=32))
    with pytest.raises(ValueError, match=r"\[B, N, T, D\]"):
        m.snippet_scores(torch.zeros(1, 32, 64))


# ----------------------------------------------------------------------------------------
# Parity with the independent reference
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("bs,batch_size", [(4, 2), (1, 2)])
def test_forward_matches_reference_eval(bs, batch_size):
    torch.manual_seed(0)
    m = RTFMHead(RTFMConfig(batch_size=batch_size, **SMALL)).double()
    sd = _perturbed_state(m)
    m.load_state_dict(sd)
    m.eval()
    x = _inputs(bs, dtype=torch.float64, seed=3)
    with torch.no_grad():
        ours = m.forward_official(x)
        ref = reference_forward(x, {k: v.clone() for k, v in sd.items()}, batch_size, training=False)
    _assert_outputs_close(ours, ref, 1e-6)
    # float32 as well, looser
    m32 = RTFMHead(RTFMConfig(batch_size=batch_size, **SMALL))
    m32.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()})
    m32.eval()
    with torch.no_grad():
        ours32 = m32.forward_official(x.float())
    _assert_outputs_close(ours32, [r.float() for r in ref], 1e-4)


def test_forward_matches_reference_training_with_same_seed():
    """Same random draws in the same order: dropout masks and eligibility masks agree,
    BatchNorm uses batch statistics and updates its running stats identically."""
    torch.manual_seed(0)
    b = 2
    m = RTFMHead(RTFMConfig(batch_size=b, **SMALL)).double()
    sd = _perturbed_state(m, seed=1)
    m.load_state_dict(sd)
    m.train()
    x = _inputs(2 * b, dtype=torch.float64, seed=5)
    p = {k: v.clone() for k, v in sd.items()}
    torch.manual_seed(123)
    ours = m.forward_official(x)
    torch.manual_seed(123)
    ref = reference_forward(x, p, b, training=True)
    _assert_outputs_close(ours, ref, 1e-6)
    for key, value in m.state_dict().items():
        if "running" in key:
            assert torch.allclose(value, p[key], atol=1e-9), key
    # and the loss, as train.py computes it
    torch.manual_seed(7)
    loss, parts = m.loss(x[:b], x[b:])
    torch.manual_seed(7)
    ref_loss = reference_loss(reference_forward(x, {k: v.clone() for k, v in sd.items()}, b, training=True), b, 32)
    assert abs(loss.item() - ref_loss.item()) < 1e-6
    assert abs(parts["total"] - ref_loss.item()) < 1e-6


def test_selected_features_are_crop_major_and_follow_magnitude_topk():
    torch.manual_seed(0)
    b, n = 2, 10
    m = RTFMHead(RTFMConfig(batch_size=b, **SMALL)).double().eval()
    x = _inputs(2 * b, dtype=torch.float64)
    with torch.no_grad():
        out = m.forward_official(x)
        feats = m.Aggregate(x.reshape(2 * b * n, 32, 64)).reshape(2 * b, n, 32, 64)
    mags = feats.norm(dim=-1).mean(1)  # [2B, T], crop-averaged
    assert torch.allclose(out[9], mags)
    for half, sel in ((slice(b, None), out[2]), (slice(0, b), out[3])):
        idx = mags[half].topk(3, dim=1).indices
        for c in range(n):
            for v in range(b):
                assert torch.equal(sel[c * b + v], feats[half][v, c, idx[v]])
    idx_abn = mags[b:].topk(3, dim=1).indices
    assert torch.allclose(out[0][:, 0], torch.gather(out[6][b:, :, 0], 1, idx_abn).mean(1))


def test_snippet_scores_are_crop_averaged_and_batch_independent_in_eval():
    torch.manual_seed(0)
    m = RTFMHead(RTFMConfig(**SMALL)).eval()
    x = _inputs(3, ncrops=4)
    with torch.no_grad():
        batched = m.snippet_scores(x)
        single = torch.cat([m.forward_official(x[i : i + 1])[6][..., 0] for i in range(3)])
        per_crop = torch.stack([m.snippet_scores(x[:, c : c + 1]) for c in range(4)], 1).mean(1)
    assert batched.shape == (3, 32)
    assert torch.allclose(batched, single, atol=1e-6)
    assert torch.allclose(batched, per_crop, atol=1e-6)


# ----------------------------------------------------------------------------------------
# Loss terms on hand-made inputs
# ----------------------------------------------------------------------------------------


def test_magnitude_loss_by_hand():
    # row 0: top-k abnormal features average to [3, 4] (norm 5), normal to [0, 1] (norm 1)
    # row 1: abnormal features [+10, 0] and [-10, 0] cancel: norm of the mean is 0
    feat_abn = torch.tensor([[[3.0, 4.0], [3.0, 4.0]], [[10.0, 0.0], [-10.0, 0.0]]])
    feat_nor = torch.tensor([[[0.0, 1.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 0.0]]])
    official = rtfm_magnitude_loss(feat_abn, feat_nor, 100.0)
    assert official.item() == pytest.approx(((100 - 5 + 1) ** 2 + (100 - 0 + 0) ** 2) / 2)
    # absolute value, not a hinge: a magnitude above the margin is penalised too
    big = torch.tensor([[[120.0, 0.0]]])
    assert rtfm_magnitude_loss(big, torch.zeros(1, 1, 2), 100.0).item() == pytest.approx(400.0)


def _hand_g(row: torch.Tensor) -> float:
    """Eq. (2) on one selected row ``[k, D]``: the mean of the k L2 norms, with plain loops."""
    norms = [math.sqrt(sum(x * x for x in snippet)) for snippet in row.tolist()]
    return sum(norms) / len(norms)


def _hand_paper_hinge(feat_abn, feat_nor, margin, ncrops):
    """Eq. (6) summed over every abnormal x normal pair of each crop (eq. 1), as a mean."""
    n_a, n_n = feat_abn.shape[0] // ncrops, feat_nor.shape[0] // ncrops
    terms = [
        max(0.0, margin - (_hand_g(feat_abn[c * n_a + i]) - _hand_g(feat_nor[c * n_n + j])))
        for c in range(ncrops)
        for i in range(n_a)
        for j in range(n_n)
    ]
    return sum(terms) / len(terms), terms


def test_paper_hinge_pairs_every_abnormal_with_every_normal_video():
    """Eq. (6) + eq. (1) against loops on seeded tensors, with a margin that clamps some pairs.

    Catches: pairing abnormal row r with normal row r only (the official pairing), pairing
    across crops, squaring the hinge or dropping its clamp, and the norm of the mean
    feature (official) in place of eq. (2)'s mean of norms."""
    g = torch.Generator().manual_seed(11)
    ncrops, n_a, n_n, k, d = 2, 3, 2, 3, 4
    feat_abn = torch.randn(ncrops * n_a, k, d, generator=g, dtype=torch.float64) * 2.0
    feat_nor = torch.randn(ncrops * n_n, k, d, generator=g, dtype=torch.float64)
    separabilities = sorted(
        _hand_g(feat_abn[c * n_a + i]) - _hand_g(feat_nor[c * n_n + j])
        for c in range(ncrops)
        for i in range(n_a)
        for j in range(n_n)
    )
    margin = separabilities[len(separabilities) // 2]  # about half the pairs are clamped to 0
    expected, terms = _hand_paper_hinge(feat_abn, feat_nor, margin, ncrops)
    assert 0 < sum(t == 0.0 for t in terms) < len(terms)  # the data exercises the clamp
    got = rtfm_magnitude_loss(feat_abn, feat_nor, margin, "paper_hinge", ncrops=ncrops)
    assert got.item() == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="ncrops=4"):
        rtfm_magnitude_loss(feat_abn, feat_nor, margin, "paper_hinge", ncrops=4)


def test_smoothness_and_sparsity_by_hand():
    s = torch.tensor([0.1, 0.5, 0.2, 0.9])  # two abnormal videos of T = 2, flattened
    # official: consecutive pairs over the flattened vector, including 0.5 -> 0.2 across videos
    assert rtfm_smoothness(s, 1.0).item() == pytest.approx(0.4**2 + 0.3**2 + 0.7**2)
    assert rtfm_smoothness(s, 8e-4).item() == pytest.approx(8e-4 * 0.74)
    assert rtfm_smoothness(s, 1.0, "per_video", t=2).item() == pytest.approx((0.4**2 + 0.7**2) / 2)
    # official sparsity: L2 norm of the flattened scores
    assert rtfm_sparsity(s, 8e-3).item() == pytest.approx(8e-3 * math.sqrt(0.01 + 0.25 + 0.04 + 0.81))
    assert rtfm_sparsity(s, 1.0, "paper_l1", t=2).item() == pytest.approx((0.6 + 1.1) / 2)


def test_video_bce_by_hand():
    sn, sa = torch.tensor([[0.2], [0.4]]), torch.tensor([[0.9], [0.5]])
    expected = -(math.log(0.8) + math.log(0.6) + math.log(0.9) + math.log(0.5)) / 4
    assert rtfm_video_bce(sn, sa).item() == pytest.approx(expected, rel=1e-6)


def test_paper_snippet_bce_sums_over_the_top_k_snippets():
    """Eq. (7): BCE summed over the k top snippets of a video, then averaged over videos.

    Catches: a mean over the k snippets (the former ``paper_snippet``: k times smaller),
    BCE of the video score (mean of the k scores) instead of per snippet, swapped labels."""
    sn = torch.tensor([[0.2, 0.1, 0.3], [0.4, 0.05, 0.6]], dtype=torch.float64)  # normal, y = 0
    sa = torch.tensor([[0.9, 0.7, 0.2], [0.5, 0.99, 0.8]], dtype=torch.float64)  # abnormal, y = 1
    per_video = [sum(-math.log(1 - p) for p in row) for row in sn.tolist()]
    per_video += [sum(-math.log(p) for p in row) for row in sa.tolist()]
    assert rtfm_snippet_bce(sn, sa).item() == pytest.approx(sum(per_video) / 4, rel=1e-12)


def test_loss_equals_terms_of_forward_outputs_eval():
    torch.manual_seed(0)
    b = 2
    m = RTFMHead(RTFMConfig(batch_size=b, **SMALL)).eval()
    x = _inputs(2 * b, seed=9)
    loss, parts = m.loss(x[:b], x[b:])
    out = m.forward_official(x, b)
    assert loss.item() == pytest.approx(reference_loss(out, b, 32).item(), rel=1e-5)
    summed = parts["cls"] + parts["magnitude"] + parts["smooth"] + parts["sparse"]
    assert parts["total"] == pytest.approx(summed, rel=1e-5)
    assert set(parts) == {"cls", "magnitude", "smooth", "sparse", "total"}


def test_loss_with_one_video_per_class_keeps_the_abnormal_half():
    torch.manual_seed(0)
    m = RTFMHead(RTFMConfig(batch_size=1, **SMALL)).eval()
    xn, xa = _inputs(1, seed=1), _inputs(1, seed=2) + 3.0
    _, parts = m.loss(xn, xa)
    official = m.forward_official(torch.cat((xn, xa)))  # official: copies the normal video
    ours = m._forward_parts(torch.cat((xn, xa)), 1, single_video_is_inference=False)
    assert torch.equal(official[0], official[1])
    assert not torch.equal(ours["score_abnormal"], ours["score_normal"])
    assert math.isfinite(parts["total"])


def _hand_official_magnitude(feat_abn, feat_nor, margin):
    """``RTFM_loss`` without its weight: row r vs row r, norm of the mean feature, squared."""
    terms = []
    for a, n in zip(feat_abn.tolist(), feat_nor.tolist()):
        mean_a = [sum(col) / len(a) for col in zip(*a)]
        mean_n = [sum(col) / len(n) for col in zip(*n)]
        norm_a = math.sqrt(sum(x * x for x in mean_a))
        norm_n = math.sqrt(sum(x * x for x in mean_n))
        terms.append((abs(margin - norm_a) + norm_n) ** 2)
    return sum(terms) / len(terms)


def _eval_head_and_batch(config: RTFMConfig, b: int = 2, ncrops: int = 2, t: int = 8):
    """An eval-mode float64 head and a ``[2B, N, T, D]`` batch. The margin is reset to the
    median abnormal-minus-normal separability of the batch (hand-computed), so that about
    half of the eq. (6) hinge terms are clamped: with every term active the hinge is
    linear and any complete pairing of the videos would give the same mean."""
    torch.manual_seed(0)
    m = RTFMHead(config).double()
    m.load_state_dict(_perturbed_state(m, seed=4))
    m.eval()
    x = _inputs(2 * b, ncrops=ncrops, t=t, dtype=torch.float64, seed=13)
    with torch.no_grad():
        out = m.forward_official(x, b)
    separabilities = sorted(
        _hand_g(out[2][c * b + i]) - _hand_g(out[3][c * b + j])
        for c in range(ncrops)
        for i in range(b)
        for j in range(b)
    )
    m.config = dataclasses.replace(m.config, margin=separabilities[len(separabilities) // 2])
    return m, x


@pytest.mark.parametrize(
    "config_kwargs,weight",
    [
        (dict(magnitude_loss="paper_hinge"), 1.0),  # eq. (1): l_s unweighted
        (dict(), 1e-4),  # official RTFM_loss(0.0001, 100)
        (dict(magnitude_loss="paper_hinge", alpha=0.25), 0.25),  # an explicit alpha wins
        (dict(alpha=0.25), 0.25),
    ],
)
def test_magnitude_weight_in_the_loss(config_kwargs, weight):
    """The weighted magnitude part of :meth:`RTFMHead.loss` equals weight x the hand value.

    Catches: the code's 1e-4 ``alpha`` applied to the paper hinge (eq. 1 has weight 1), the
    official loss losing its 1e-4, an explicit ``alpha`` being ignored, and the head not
    passing the crop count to the paper hinge (it would pair across crops)."""
    b, ncrops = 2, 2
    m, x = _eval_head_and_batch(RTFMConfig(batch_size=b, **SMALL, **config_kwargs), b, ncrops)
    cfg = m.config
    with torch.no_grad():
        _, parts = m.loss(x[:b], x[b:])
        out = m.forward_official(x, b)
    if cfg.magnitude_loss == "paper_hinge":
        raw, terms = _hand_paper_hinge(out[2], out[3], cfg.margin, ncrops)
        assert 0 < sum(t == 0.0 for t in terms) < len(terms)  # some pairs clamped, some not
    else:
        raw = _hand_official_magnitude(out[2], out[3], cfg.margin)
    assert raw > 0.0
    assert parts["magnitude"] == pytest.approx(weight * raw, rel=1e-9)


def test_paper_config_total_loss_matches_eqs_1_to_7_by_hand():
    """``RTFMConfig.paper()``: the whole loss, term by term, from loops over the printed equations.

    L = l_f (eq. 7: BCE summed over the top-k snippets, mean over videos) + 1 * l_s (eq. 6,
    every abnormal x normal pair) + 8e-3 * mean_v sum_t |s| + 8e-4 * mean_v sum_t (s_t - s_{t-1})^2
    on the abnormal videos. Catches: the 1e-4 weight on l_s, a mean instead of the sum over
    the k snippets, video-level BCE, the official L2-norm sparsity or cross-video smoothness,
    and ``paper()`` missing any of these choices; the margin clamps about half the pairs, so
    the official row-r-with-row-r pairing or pairing across crops is caught too."""
    b, ncrops, t, k = 2, 2, 8, 3
    m, x = _eval_head_and_batch(RTFMConfig.paper(batch_size=b, **SMALL), b, ncrops, t)
    cfg = m.config
    with torch.no_grad():
        loss, parts = m.loss(x[:b], x[b:])
        out = m.forward_official(x, b)
    scores = out[6][..., 0].tolist()  # [2B][T] crop-averaged snippet scores
    mags = out[9].tolist()  # [2B][T] crop-averaged magnitudes
    top = [sorted(range(t), key=lambda i, v=v: -mags[v][i])[:k] for v in range(2 * b)]

    l_s, terms = _hand_paper_hinge(out[2], out[3], cfg.margin, ncrops)
    assert 0 < sum(term == 0.0 for term in terms) < len(terms)  # the pairing matters
    per_video = []
    for v in range(2 * b):
        y = 0.0 if v < b else 1.0
        per_video.append(sum(-(y * math.log(scores[v][i]) + (1 - y) * math.log(1 - scores[v][i])) for i in top[v]))
    l_f = sum(per_video) / (2 * b)
    abnormal = scores[b:]
    sparse = 8e-3 * sum(sum(abs(p) for p in row) for row in abnormal) / b
    smooth = 8e-4 * sum(sum((row[i] - row[i - 1]) ** 2 for i in range(1, t)) for row in abnormal) / b

    assert parts["cls"] == pytest.approx(l_f, rel=1e-9)
    assert parts["magnitude"] == pytest.approx(l_s, rel=1e-9)
    assert parts["sparse"] == pytest.approx(sparse, rel=1e-9)
    assert parts["smooth"] == pytest.approx(smooth, rel=1e-9)
    assert loss.item() == pytest.approx(l_f + l_s + sparse + smooth, rel=1e-9)
    opt = get_head("rtfm").optimizer(m.parameters(), cfg)
    assert opt.defaults["weight_decay"] == 5e-4  # Sec. 4.2 (code: 5e-3)


def test_paper_preset_is_registered_for_the_cli():
    """``vadpipe train --head rtfm --preset paper`` (the registry's preset) builds the same
    config as ``RTFMConfig.paper()``. Catches a missing or stale ``presets`` entry."""
    assert RTFMConfig(**get_head("rtfm").presets["paper"]) == RTFMConfig.paper()
    assert RTFMConfig.paper() != RTFMConfig()


def test_paper_config_takes_the_exact_top_k_in_training():
    """Eq. (2): with ``eligibility_dropout=False`` (set by ``paper()``) the training forward
    selects the k largest crop-averaged magnitudes; the official mask changes the choice.

    Catches: the dropout mask of ones still multiplying the magnitudes in the paper
    variant, and ``paper()`` leaving ``eligibility_dropout`` on."""
    b, t, k = 2, 32, 3
    x = _inputs(2 * b, ncrops=2, t=t, seed=21)
    chosen = {}
    configs = {"paper": RTFMConfig.paper(batch_size=b, **SMALL), "official": RTFMConfig(batch_size=b, **SMALL)}
    for name, cfg in configs.items():
        torch.manual_seed(0)
        m = RTFMHead(cfg).train()
        torch.manual_seed(5)
        with torch.no_grad():
            p = m._forward_parts(x, b, single_video_is_inference=False)
        mags = p["feat_magnitudes"].tolist()
        exact = [sorted(sorted(range(t), key=lambda i, v=v: -mags[v][i])[:k]) for v in range(2 * b)]
        picked = [sorted(row) for row in torch.cat((p["idx_normal"], p["idx_abn"])).tolist()]
        chosen[name] = picked == exact
    assert chosen["paper"]
    assert not chosen["official"]  # the seeded mask does change the selection: the check can fail


@pytest.mark.parametrize(
    "option",
    [
        dict(magnitude_loss="paper_hinge"),
        dict(sparsity="paper_l1"),
        dict(smoothness="per_video"),
        dict(classification="paper_snippet"),
        dict(eligibility_dropout=False),
        dict(RTFM_PAPER_SETTINGS),
    ],
)
def test_paper_options_run_and_backpropagate(option):
    torch.manual_seed(0)
    m = RTFMHead(RTFMConfig(batch_size=2, **SMALL, **option)).train()
    loss, parts = m.loss(_inputs(2, ncrops=2), _inputs(2, ncrops=2, seed=1))
    loss.backward()
    assert math.isfinite(parts["total"]) and m.fc1.weight.grad is not None


# ----------------------------------------------------------------------------------------
# Official checkpoint import
# ----------------------------------------------------------------------------------------


def test_official_checkpoint_round_trip(tmp_path):
    sd = _official_random_state()
    path = tmp_path / "rtfm_final.pkl"
    torch.save(sd, path)
    model = load_official_state_dict(path, "rtfm", RTFMHead())
    loaded = model.state_dict()
    assert list(loaded) == [k for k, _ in OFFICIAL_KEYS]
    for key, value in sd.items():
        assert torch.equal(loaded[key], value), key
    direct = RTFMHead()
    direct.load_state_dict(sd, strict=True)
    model.eval()
    direct.eval()
    x = _inputs(1, d=2048, seed=4)
    with torch.no_grad():
        a, b_ = model.forward_official(x), direct.forward_official(x)
        ref = reference_forward(x, {k: v.clone() for k, v in sd.items()}, 32)
    for u, v in zip(a, b_):
        assert torch.equal(u, v)
    _assert_outputs_close(a, ref, 1e-4)


def _small_state(seed=0):
    torch.manual_seed(seed)
    return RTFMHead(RTFMConfig(**SMALL)).state_dict()


@pytest.mark.parametrize(
    "wrap", ["state_dict", "model_state_dict", "model", "module_prefix", "dataparallel", "no_nbt"]
)
def test_wrapped_and_prefixed_checkpoints_load(tmp_path, wrap):
    source = RTFMHead(RTFMConfig(**SMALL))
    source.load_state_dict(_perturbed_state(source, seed=2))
    sd = source.state_dict()
    if wrap == "module_prefix":
        obj = OrderedDict(("module." + k, v) for k, v in sd.items())
    elif wrap == "dataparallel":
        obj = {"epoch": 3, "state_dict": torch.nn.DataParallel(source).state_dict()}
    elif wrap == "no_nbt":  # pre-0.4.1 PyTorch files have no num_batches_tracked
        obj = OrderedDict((k, v) for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    else:
        obj = {wrap: sd, "optimizer": {"lr": torch.tensor(0.001)}}
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    model = load_official_state_dict(path, "rtfm", RTFMHead(RTFMConfig(**SMALL)))
    for key, value in model.state_dict().items():
        if wrap == "no_nbt" and key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(value, sd[key]), key


def test_wrong_keys_give_a_clear_error(tmp_path):
    sd = _small_state()
    bad = OrderedDict(sd)
    bad["fc_extra.weight"] = bad.pop("fc1.weight")  # one missing, one unexpected
    bad["fc2.weight"] = torch.zeros(3, 3)  # wrong shape
    path = tmp_path / "bad.pkl"
    torch.save(bad, path)
    with pytest.raises(CheckpointMismatchError) as info:
        load_official_state_dict(path, "rtfm", RTFMHead(RTFMConfig(**SMALL)))
    msg = str(info.value)
    assert "missing keys: fc1.weight" in msg
    assert "unexpected keys: fc_extra.weight" in msg
    assert "fc2.weight: checkpoint (3, 3) vs model (16, 32)" in msg
    assert "tianyu0207/RTFM" in msg and "Aggregate.conv_1.0.weight" in msg
    assert info.value.missing == ["fc1.weight"] and info.value.unexpected == ["fc_extra.weight"]
    assert isinstance(info.value, WeightsIntegrityError)


def test_full_size_checkpoint_into_small_model_names_shape_mismatches(tmp_path):
    path = tmp_path / "rtfm_final.pkl"
    sd = OrderedDict(
        (k, torch.zeros(s) if s else torch.tensor(0)) for k, s in OFFICIAL_KEYS if not k.startswith("Aggregate.conv_5")
    )
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError, match="shape mismatches") as info:
        load_official_state_dict(path, "rtfm", RTFMHead(RTFMConfig(**SMALL)))
    assert "Aggregate.conv_5.0.weight" in str(info.value)


def test_unsafe_or_invalid_files_are_refused(tmp_path):
    whole = tmp_path / "whole_model.pkl"
    torch.save(RTFMHead(RTFMConfig(**SMALL)), whole)  # pickles the class: not weights-only
    with pytest.raises(WeightsIntegrityError, match="state_dict"):
        read_state_dict(whole)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsIntegrityError):
        read_state_dict(junk)
    nodict = tmp_path / "list.pkl"
    torch.save({"epoch": 1, "best_auc": 0.9}, nodict)
    with pytest.raises(WeightsIntegrityError, match="no state dict found"):
        read_state_dict(nodict)
    with pytest.raises(WeightsNotFoundError):
        read_state_dict(tmp_path / "missing.pkl")
    with pytest.raises(ConfigError, match="rtfm"):
        load_official_state_dict(whole, "no_such_head", RTFMHead(RTFMConfig(**SMALL)))
    # a dict of tensors that also pickles an arbitrary object is refused
    evil = tmp_path / "evil.pkl"
    torch.save({"fc1.weight": torch.zeros(1), "extra": _Arbitrary()}, evil)
    with pytest.raises(WeightsIntegrityError, match="refused to unpickle"):
        read_state_dict(evil)


class _Arbitrary:
    pass


# ----------------------------------------------------------------------------------------
# Training sanity on synthetic features
# ----------------------------------------------------------------------------------------


def test_training_separates_planted_anomalies(one_thread):
    torch.manual_seed(0)
    cfg = RTFMConfig(batch_size=8, n_crops=2, **SMALL)
    model = RTFMHead(cfg)
    opt = get_head("rtfm").optimizer(model.parameters(), cfg)
    g = torch.Generator().manual_seed(1)
    parts = fit_on_fresh_batches(model, opt, lambda n, abn: planted_videos(n, abn, g, crops=2), steps=200, batch=8)
    assert math.isfinite(parts["total"])
    xn, ln = planted_videos(16, False, g, crops=2)
    xa, la = planted_videos(16, True, g, crops=2)
    with torch.no_grad():
        scores = model.snippet_scores(torch.cat((xn, xa)))
        mags = model.snippet_magnitudes(torch.cat((xn, xa)))
    labels = torch.cat((ln, la))
    assert rank_auc(scores, labels) > 0.9
    assert rank_auc(mags, labels) > 0.9  # the magnitudes separate too
