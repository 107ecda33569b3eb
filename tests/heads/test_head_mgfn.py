"""MGFN head: blocks, official forward parity, official key names, loss values, training sanity.

The reference forward below is written from a reading of the official code
(carolchenyx/MGFN. ``models/mgfn.py``, ``utils/utils.py``), with loops instead of the
reshapes the module uses, and reads its weights by the official key names only.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.synthetic import fit_on_fresh_batches, rank_auc
from vadpipe.errors import ConfigError, WeightsIntegrityError
from vadpipe.heads.base import get_head, list_heads
from vadpipe.heads.mgfn import (
    MGFN,
    ChannelLayerNorm,
    FocusBlock,
    MGFNConfig,
    add_magnitude,
    contrastive_loss,
    load_official_checkpoint,
    official_forward,
    official_loss,
)

SMALL = dict(feature_dim=12, dims=(8, 16, 32), depths=(2, 1, 2), dim_head=8, batch_size=2, ncrops=4)


def small_config(**overrides) -> MGFNConfig:
    return MGFNConfig(**{**SMALL, **overrides})


def random_state_dict(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of ``model`` replaced by seeded random values (variances positive)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(value.shape, generator=g) + 0.5
        else:
            fan_in = value[0].numel() if value.dim() > 1 else 1
            out[key] = torch.randn(value.shape, generator=g) / math.sqrt(fan_in)
    return out


# --------------------------------------------------------------------------- reference


def ref_channel_ln(x, g, b, eps=1e-5):
    mean = x.mean(dim=1, keepdim=True)
    std = ((x - mean) ** 2).mean(dim=1, keepdim=True).sqrt()
    return (x - mean) / (std + eps) * g + b


def ref_glance(x, P, pre, heads, dim_head):
    x = ref_channel_ln(x, P[pre + "norm.g"], P[pre + "norm.b"])
    qkv = F.conv1d(x, P[pre + "to_qkv.weight"])
    inner = heads * dim_head
    outs = []
    for h in range(heads):
        sl = slice(h * dim_head, (h + 1) * dim_head)
        q = qkv[:, :inner][:, sl].transpose(1, 2)  # [b, t, d]
        k = qkv[:, inner : 2 * inner][:, sl].transpose(1, 2)
        v = qkv[:, 2 * inner :][:, sl].transpose(1, 2)
        attn = torch.softmax(q * dim_head**-0.5 @ k.transpose(1, 2), dim=-1)
        outs.append((attn @ v).transpose(1, 2))
    return F.conv1d(torch.cat(outs, dim=1), P[pre + "to_out.weight"], P[pre + "to_out.bias"])


def ref_focus(x, P, pre, heads, kernel, training):
    x = F.batch_norm(
        x,
        None if training else P[pre + "norm.running_mean"],
        None if training else P[pre + "norm.running_var"],
        P[pre + "norm.weight"],
        P[pre + "norm.bias"],
        training=training,
    )
    v = F.conv1d(x, P[pre + "to_v.weight"])
    w, b = P[pre + "rel_pos.weight"], P[pre + "rel_pos.bias"]
    out = torch.stack(
        [
            F.conv1d(v[:, j : j + 1], w[j % heads][None], b[j % heads][None], padding=kernel // 2)[:, 0]
            for j in range(v.shape[1])
        ],
        dim=1,
    )
    return F.conv1d(out, P[pre + "to_out.weight"], P[pre + "to_out.bias"])


def ref_ff(x, P, pre):
    x = ref_channel_ln(x, P[pre + "0.g"], P[pre + "0.b"])
    x = F.gelu(F.conv1d(x, P[pre + "1.weight"], P[pre + "1.bias"]))
    return F.conv1d(x, P[pre + "4.weight"], P[pre + "4.bias"])


def ref_forward(P, cfg, video, batch_size, training=False):
    """Official ``mgfn.forward`` + ``MSNSD``, readably, from a state dict with official keys."""
    bs, ncrops, t, c = video.shape
    x = video.reshape(bs * ncrops, t, c).transpose(1, 2)
    d = cfg.feature_dim
    x = F.conv1d(x[:, :d], P["to_tokens.weight"], P["to_tokens.bias"], padding=1) + cfg.mag_ratio * F.conv1d(
        x[:, d:], P["to_mag.weight"], P["to_mag.bias"], padding=1
    )
    for i, (depth, kind) in enumerate(zip(cfg.depths, cfg.mgfn_types)):
        heads = cfg.dims[i] // cfg.dim_head
        for j in range(depth):
            pre = f"stages.{i}.0.layers.{j}."
            x = F.conv1d(x, P[pre + "0.weight"], P[pre + "0.bias"], padding=1) + x
            if kind == "gb":
                x = ref_glance(x, P, pre + "1.", heads, cfg.dim_head) + x
            else:
                x = ref_focus(x, P, pre + "1.", heads, cfg.local_aggr_kernel, training) + x
            x = ref_ff(x, P, pre + "2.") + x
        if i < len(cfg.dims) - 1:
            x = ref_channel_ln(x, P[f"stages.{i}.1.0.g"], P[f"stages.{i}.1.0.b"])
            x = F.conv1d(x, P[f"stages.{i}.1.1.weight"], P[f"stages.{i}.1.1.bias"])
    feats = F.layer_norm(x.transpose(1, 2), (cfg.dims[-1],), P["to_logits.0.weight"], P["to_logits.0.bias"])
    snippet = torch.sigmoid(feats @ P["fc.weight"].T + P["fc.bias"])  # [bs*N, T, 1]

    # MSNSD: crop-average scores and magnitudes, video v's crop c is row v * ncrops + c
    scores = torch.stack([snippet[v * ncrops : (v + 1) * ncrops].mean(0) for v in range(bs)])  # [bs, T, 1]
    mags = torch.stack([feats[v * ncrops : (v + 1) * ncrops].norm(dim=2).mean(0) for v in range(bs)])
    if bs == 1:
        normal = abnormal = [0]
    else:
        normal, abnormal = list(range(batch_size)), list(range(batch_size, bs))
    results = []
    for videos in (abnormal, normal):  # official order: abnormal mask drawn first
        mask = F.dropout(torch.ones(len(videos), t), p=cfg.dropout_rate, training=training)
        idx = [torch.topk(mags[v] * mask[n], cfg.k).indices for n, v in enumerate(videos)]
        selected = torch.stack(
            [feats[v * ncrops + crop][idx[n]] for crop in range(ncrops) for n, v in enumerate(videos)]
        )  # crop-major
        video_score = torch.stack([scores[v][idx[n]].mean(0) for n, v in enumerate(videos)])
        results.append((video_score, selected))
    (score_abn, abn_sel), (score_nor, nor_sel) = results
    return score_abn, score_nor, abn_sel, nor_sel, scores


# --------------------------------------------------------------------------- official key names


def official_keys(depths=(3, 3, 2), types=("gb", "fb", "fb"), dims=(64, 128, 1024), feature_dim=2048,
                  dim_head=64, kernel=5, ff_repe=4):
    """Official key names and shapes, from ``mgfn.__init__`` / ``Backbone`` / ``GLANCE`` / ``FOCUS`` / ``FeedForward``."""
    keys = {
        "to_tokens.weight": (dims[0], feature_dim, 3),
        "to_tokens.bias": (dims[0],),
    }
    for i, (depth, kind, dim) in enumerate(zip(depths, types, dims)):
        heads = dim // dim_head
        inner = heads * dim_head
        for j in range(depth):
            p = f"stages.{i}.0.layers.{j}."
            keys[p + "0.weight"] = (dim, dim, 3)  # scc
            keys[p + "0.bias"] = (dim,)
            if kind == "gb":
                keys[p + "1.norm.g"] = (1, dim, 1)
                keys[p + "1.norm.b"] = (1, dim, 1)
                keys[p + "1.to_qkv.weight"] = (3 * inner, dim, 1)
            else:
                keys[p + "1.norm.weight"] = (dim,)
                keys[p + "1.norm.bias"] = (dim,)
                keys[p + "1.norm.running_mean"] = (dim,)
                keys[p + "1.norm.running_var"] = (dim,)
                keys[p + "1.norm.num_batches_tracked"] = ()
                keys[p + "1.to_v.weight"] = (inner, dim, 1)
                keys[p + "1.rel_pos.weight"] = (heads, 1, kernel)
                keys[p + "1.rel_pos.bias"] = (heads,)
            keys[p + "1.to_out.weight"] = (dim, inner, 1)
            keys[p + "1.to_out.bias"] = (dim,)
            keys[p + "2.0.g"] = (1, dim, 1)
            keys[p + "2.0.b"] = (1, dim, 1)
            keys[p + "2.1.weight"] = (dim * ff_repe, dim, 1)
            keys[p + "2.1.bias"] = (dim * ff_repe,)
            keys[p + "2.4.weight"] = (dim, dim * ff_repe, 1)
            keys[p + "2.4.bias"] = (dim,)
        if i < len(dims) - 1:
            keys[f"stages.{i}.1.0.g"] = (1, dim, 1)
            keys[f"stages.{i}.1.0.b"] = (1, dim, 1)
            keys[f"stages.{i}.1.1.weight"] = (dims[i + 1], dim, 1)
            keys[f"stages.{i}.1.1.bias"] = (dims[i + 1],)
    keys.update({
        "to_logits.0.weight": (dims[-1],),
        "to_logits.0.bias": (dims[-1],),
        "fc.weight": (1, dims[-1]),
        "fc.bias": (1,),
        "to_mag.weight": (dims[0], 1, 3),
        "to_mag.bias": (dims[0],),
    })
    return keys


def test_official_key_names_and_shapes_default_config():
    model = MGFN()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = official_keys()
    assert list(got) == list(expected)  # same names, same order as the official module
    assert got == expected
    assert len(expected) == 145
    assert model.config.heads == (1, 2, 16)


def test_official_key_round_trip(tmp_path):
    cfg = MGFNConfig()
    shapes = official_keys()
    g = torch.Generator().manual_seed(3)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(11)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[key] = torch.randn(shape, generator=g) * 0.05
    path = tmp_path / "mgfn_official.pkl"
    torch.save(state, path)
    model = load_official_checkpoint(path, cfg).eval()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key

    torch.manual_seed(0)
    video = add_magnitude(torch.randn(1, 10, 6, 2048))
    with torch.no_grad():
        got = official_forward(model, video)
        ref = ref_forward(state, cfg, video, batch_size=cfg.batch_size)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() < 1e-4


def test_checkpoint_prefixes_wrappers_and_mismatch(tmp_path):
    cfg = small_config()
    model = MGFN(cfg)
    state = random_state_dict(model, seed=5)
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, tmp_path / "wrapped.pt")
    loaded = load_official_checkpoint(tmp_path / "wrapped.pt", cfg).eval()
    model.load_state_dict(state)
    model.eval()
    x = torch.randn(1, cfg.ncrops, 5, cfg.feature_dim)
    with torch.no_grad():
        assert torch.equal(loaded.snippet_scores(x), model.snippet_scores(x))

    broken = dict(state)
    broken.pop("fc.bias")
    broken["fc.extra"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(WeightsIntegrityError):
        load_official_checkpoint(tmp_path / "broken.pt", cfg)


# --------------------------------------------------------------------------- forward parity


@pytest.mark.parametrize("bs_mode", ["inference", "training_batch"])
def test_forward_matches_reference_eval(bs_mode):
    cfg = small_config(mgfn_types=("gb", "fb", "fb"))
    model = MGFN(cfg)
    state = random_state_dict(model, seed=1)
    model.load_state_dict(state)
    model.eval()
    torch.manual_seed(2)
    bs = 1 if bs_mode == "inference" else 2 * cfg.batch_size
    video = add_magnitude(torch.randn(bs, cfg.ncrops, 9, cfg.feature_dim) * 2)
    with torch.no_grad():
        got = official_forward(model, video)
        ref = ref_forward(state, cfg, video, batch_size=cfg.batch_size)
    names = ["score_abnormal", "score_normal", "abn_feamagnitude", "nor_feamagnitude", "scores"]
    for name, a, b in zip(names, got, ref):
        assert a.shape == b.shape, name
        assert (a - b).abs().max().item() < 1e-5, name


def test_forward_matches_reference_training_mode():
    """Training mode: BatchNorm batch statistics and the dropped-out selection masks (same RNG order)."""
    cfg = small_config(mgfn_types=("fb", "gb", "fb"))
    model = MGFN(cfg)
    state = random_state_dict(model, seed=4)
    model.load_state_dict(state)
    model.train()
    video = add_magnitude(torch.randn(2 * cfg.batch_size, cfg.ncrops, 10, cfg.feature_dim))
    torch.manual_seed(9)
    got = model(video)
    torch.manual_seed(9)
    ref = ref_forward(state, cfg, video, batch_size=cfg.batch_size, training=True)
    for a, b in zip(got, ref):
        assert (a - b).abs().max().item() < 1e-5


def test_forward_shapes_default_size():
    model = MGFN().eval()
    x = torch.randn(1, 10, 7, 2048)
    with torch.no_grad():
        sa, sn, abn, nor, scores = model(add_magnitude(x))
        snippet = model.snippet_scores(x)
    assert sa.shape == sn.shape == (1, 1)
    assert abn.shape == nor.shape == (10, 3, 1024)
    assert scores.shape == (1, 7, 1)
    assert snippet.shape == (1, 7)
    assert torch.allclose(snippet, scores[..., 0])
    assert torch.equal(sa, sn)  # inference: the abnormal half is a copy


def test_training_batch_shapes_and_crop_major_selection():
    cfg = small_config()
    model = MGFN(cfg).train()
    b, n = cfg.batch_size, cfg.ncrops
    video = add_magnitude(torch.randn(2 * b, n, 8, cfg.feature_dim))
    sa, sn, abn, nor, scores = model(video)
    assert sa.shape == sn.shape == (b, 1)
    assert abn.shape == nor.shape == (n * b, cfg.k, cfg.dims[-1])
    assert scores.shape == (2 * b, 8, 1)
    with pytest.raises(ConfigError):
        model(video[:3])


# --------------------------------------------------------------------------- blocks


def test_channel_layernorm_adds_eps_to_std():
    ln = ChannelLayerNorm(3, eps=0.5)
    with torch.no_grad():
        ln.g.copy_(torch.tensor([2.0, -1.0, 0.5]).view(1, 3, 1))
        ln.b.copy_(torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1))
    x = torch.tensor([[[1.0, 0.0], [2.0, 0.0], [6.0, 3.0]]])  # [1, C=3, T=2]
    # column t=0: mean 3, biased var (4 + 1 + 9) / 3, std = sqrt(14/3)
    std0 = math.sqrt(14 / 3)
    expected0 = [(1 - 3) / (std0 + 0.5) * 2 + 0.1, (2 - 3) / (std0 + 0.5) * -1 + 0.2, (6 - 3) / (std0 + 0.5) * 0.5 + 0.3]
    # column t=1: mean 1, var (1 + 1 + 4) / 3
    std1 = math.sqrt(2.0)
    expected1 = [(0 - 1) / (std1 + 0.5) * 2 + 0.1, (0 - 1) / (std1 + 0.5) * -1 + 0.2, (3 - 1) / (std1 + 0.5) * 0.5 + 0.3]
    out = ln(x)
    assert torch.allclose(out[0, :, 0], torch.tensor(expected0), atol=1e-6)
    assert torch.allclose(out[0, :, 1], torch.tensor(expected1), atol=1e-6)
    var_eps = (x - x.mean(1, keepdim=True)) / (x.var(1, unbiased=False, keepdim=True) + 0.5).sqrt()
    assert not torch.allclose(out, var_eps * ln.g + ln.b, atol=1e-3)


def test_focus_block_heads_are_the_fast_channel_index():
    torch.manual_seed(0)
    heads, dim_head, dim = 3, 4, 12
    block = FocusBlock(dim, heads=heads, dim_head=dim_head, local_aggr_kernel=5).eval()
    with torch.no_grad():
        block.norm.running_mean.normal_()
        block.norm.running_var.uniform_(0.5, 2.0)
        block.rel_pos.weight.normal_()
        block.rel_pos.bias.normal_()
    x = torch.randn(2, dim, 9)
    with torch.no_grad():
        got = block(x)
        v = block.to_v(block.norm(x))
        w, b = block.rel_pos.weight, block.rel_pos.bias
        naive = torch.zeros_like(v)
        for batch in range(v.shape[0]):
            for j in range(v.shape[1]):  # channel j uses kernel j mod heads
                h = j % heads
                padded = F.pad(v[batch, j], (2, 2))
                for t in range(v.shape[2]):
                    naive[batch, j, t] = (padded[t : t + 5] * w[h, 0]).sum() + b[h]
        expected = block.to_out(naive)
    assert torch.allclose(got, expected, atol=1e-5)


def test_add_magnitude():
    x = torch.tensor([[[3.0, 4.0], [0.0, 1.0]]])
    y = add_magnitude(x)
    assert y.shape == (1, 2, 3)
    assert torch.allclose(y[..., -1], torch.tensor([[5.0, 1.0]]))
    assert torch.equal(y[..., :2], x)


# --------------------------------------------------------------------------- losses


def test_contrastive_loss_values_and_margin():
    a = torch.tensor([[3.0, 0.0]])
    b = torch.tensor([[0.0, 4.0]])
    assert contrastive_loss(a, b, 0).item() == pytest.approx(25.0, rel=1e-5)
    assert contrastive_loss(a, b, 1, margin=200.0).item() == pytest.approx(195.0**2, rel=1e-5)
    assert contrastive_loss(a, b, 1, margin=5.0).item() == pytest.approx(0.0, abs=1e-4)  # d >= margin
    assert contrastive_loss(a, b, 1, margin=4.0).item() == 0.0
    # mean over rows
    two = contrastive_loss(torch.tensor([[1.0], [0.0]]), torch.tensor([[0.0], [0.0]]), 0)
    assert two.item() == pytest.approx(0.5, rel=1e-4)


def _outputs(abn_l1, nor_l1, s_normal, s_abnormal, score_n, score_a):
    """Hand-made forward outputs; the selected features carry their L1 norm in channel 0."""
    abn = torch.zeros(len(abn_l1), len(abn_l1[0]), 3)
    nor = torch.zeros(len(nor_l1), len(nor_l1[0]), 3)
    abn[..., 0] = torch.tensor(abn_l1)
    nor[..., 0] = -torch.tensor(nor_l1)  # L1 norm is sign-blind
    scores = torch.tensor(s_normal + s_abnormal).unsqueeze(2)
    return torch.tensor(score_a), torch.tensor(score_n), abn, nor, scores


def test_official_loss_hand_values():
    cfg = MGFNConfig()
    # B = 1 video per class, N = 2 crops, k = 1
    out = _outputs(
        abn_l1=[[2.0], [4.0]], nor_l1=[[1.0], [1.0]],
        s_normal=[[0.1, 0.2, 0.4]], s_abnormal=[[0.9, 0.5, 0.5]],
        score_n=[[0.2]], score_a=[[0.8]],
    )
    total, parts = official_loss(out, batch_size=1, config=cfg)
    bce = -math.log(0.8)
    con = ((200 - 1) ** 2 + (200 - 3) ** 2) / 2  # abnormal row i vs normal row i, hinge at 200
    con_a = (4 - 2) ** 2  # crop 1 vs crop 0 of the same abnormal video
    con_n = 0.0
    smooth = 8e-4 * (0.1**2 + 0.2**2 + 0.4**2 + 0 + 0)  # within videos, both halves
    sparsity = 8e-3 * math.sqrt(0.1**2 + 0.2**2 + 0.4**2)  # L2 norm of the normal half
    expected = bce + 1e-3 * (1e-3 * con + con_a + con_n) + smooth + sparsity
    assert parts["bce"] == pytest.approx(bce, rel=1e-5)
    assert parts["con"] == pytest.approx(con, rel=1e-4)
    assert parts["con_a"] == pytest.approx(con_a, rel=1e-4)
    assert parts["con_n"] == pytest.approx(con_n, abs=1e-8)
    assert parts["smooth"] == pytest.approx(smooth, rel=1e-5)
    assert parts["sparsity"] == pytest.approx(sparsity, rel=1e-5)
    assert total.item() == pytest.approx(expected, rel=1e-5)


def test_official_loss_crop_pairing_with_ten_crops():
    """L_con_a / L_con_n compare crops 5-9 with crops 0-4 of the same video (rows are crop-major)."""
    cfg = MGFNConfig()
    b, n = 2, 10
    l1 = lambda crop, video: float(1 + crop * 2 + video * 7 + (crop % 3) * video)  # noqa: E731
    rows = [[l1(c, v)] for c in range(n) for v in range(b)]  # crop-major: row c * b + v
    far = [[r[0] + 500.0] for r in rows]  # beyond the margin: no inter-class loss
    out = _outputs(abn_l1=far, nor_l1=rows, s_normal=[[0.5, 0.5]] * b, s_abnormal=[[0.5, 0.5]] * b,
                   score_n=[[0.5]] * b, score_a=[[0.5]] * b)
    _, parts = official_loss(out, batch_size=b, config=cfg)
    expected = sum((l1(c + 5, v) - l1(c, v)) ** 2 for c in range(5) for v in range(b)) / (5 * b)
    assert parts["con_n"] == pytest.approx(expected, rel=1e-4)
    assert parts["con_a"] == pytest.approx(expected, rel=1e-4)
    assert parts["con"] == pytest.approx(0.0, abs=1e-6)


def _random_outputs(b: int, ncrops: int, k: int, t: int, f: int, seed: int):
    """Seeded forward outputs: selected features ``[N*B, k, F]`` (dense, so L1 != L2),
    snippet scores ``[2B, T, 1]`` in (0.05, 0.95), video scores ``[B, 1]``."""
    g = torch.Generator().manual_seed(seed)
    abn = torch.randn(ncrops * b, k, f, generator=g, dtype=torch.float64) * 1.5
    nor = torch.randn(ncrops * b, k, f, generator=g, dtype=torch.float64)
    scores = 0.05 + 0.9 * torch.rand(2 * b, t, 1, generator=g, dtype=torch.float64)
    score_n = 0.05 + 0.9 * torch.rand(b, 1, generator=g, dtype=torch.float64)
    score_a = 0.05 + 0.9 * torch.rand(b, 1, generator=g, dtype=torch.float64)
    return score_a, score_n, abn, nor, scores


def _hand_magnitudes(selected: torch.Tensor, n_videos: int, ncrops: int) -> list[list[float]]:
    """``M[v][t]``: L2 norm of selected snippet t of video v, averaged over crops (rows crop-major)."""
    rows = selected.tolist()
    k = len(rows[0])
    def norm(row: list[float]) -> float:
        return math.sqrt(sum(x * x for x in row))

    return [
        [sum(norm(rows[c * n_videos + v][t]) for c in range(ncrops)) / ncrops for t in range(k)]
        for v in range(n_videos)
    ]


def _hand_mc(m_n, m_a, margin, hinge=False):
    """Eq. (8)-(10) with loops: sums over ordered pairs, unsquared |gaps|, min (eq. 9) inside
    a class, max (eq. 10) across classes, ``Margin - D`` (clamped only if ``hinge``)."""

    def gaps(x, y):
        return [abs(a - b) for a in x for b in y]

    intra_n = sum(min(gaps(mp, mq)) for mp in m_n for mq in m_n)
    intra_a = sum(min(gaps(mu, mv)) for mu in m_a for mv in m_a)
    inter_terms = [margin - max(gaps(mp, mu)) for mp in m_n for mu in m_a]
    if hinge:
        inter_terms = [max(0.0, x) for x in inter_terms]
    return sum(inter_terms), intra_a, intra_n, inter_terms


@pytest.mark.parametrize("hinge", [False, True])
def test_paper_mc_loss_follows_eqs_8_to_10_by_hand(hinge):
    """``MGFNConfig.paper()`` MC terms against loops over the printed eq. (8)-(10).

    The margin is the median of the inter-class max-gaps, so some ``Margin - D`` terms are
    negative. Catches: squared distances (official), min and max swapped between eq. (9)
    and (10), a signed difference instead of the gap, the Euclidean distance between whole
    top-k vectors (the former ``"videos"`` form), means instead of the printed sums, a clamp
    on ``Margin - D`` when not asked for (or none when ``mc_inter_hinge``), and L1 (code)
    magnitudes in ``paper()`` instead of L2."""
    b, ncrops, k = 3, 2, 3
    out = _random_outputs(b, ncrops, k, t=5, f=4, seed=3)
    m_a = _hand_magnitudes(out[2], b, ncrops)
    m_n = _hand_magnitudes(out[3], b, ncrops)
    d_max = sorted(max(abs(x - y) for x in mp for y in mu) for mp in m_n for mu in m_a)
    margin = d_max[len(d_max) // 2]
    inter, intra_a, intra_n, terms = _hand_mc(m_n, m_a, margin, hinge)
    assert any(t_ < 0 for t_ in _hand_mc(m_n, m_a, margin)[3])  # the data exercises the margin
    cfg = MGFNConfig.paper(margin=margin, mc_inter_hinge=hinge)
    _, parts = official_loss(out, batch_size=b, config=cfg)
    assert parts["con"] == pytest.approx(inter, rel=1e-9, abs=1e-12)
    assert parts["con_a"] == pytest.approx(intra_a, rel=1e-9)
    assert parts["con_n"] == pytest.approx(intra_n, rel=1e-9)
    assert intra_a > 0 and intra_n > 0


def test_paper_total_loss_with_per_clip_bce_by_hand():
    """``MGFNConfig.paper()``: L = L_sce + 1 * L_sp + 1 * L_ts + 0.001 * L_mc, each by hand.

    L_sce is the BCE of every clip score against its video's label, averaged over the 2B * T
    clips; sparsity and smoothness are per abnormal video, averaged over videos. Catches:
    the video-level (top-k mean) BCE of the code, clip labels taken from the wrong half,
    the extra 0.001 on the inter-class MC term, the code's 8e-3 / 8e-4 weights, the
    normal-half L2 sparsity or all-video smoothness of the code, and ``paper()`` missing
    ``classification="paper_clip"``."""
    b, ncrops, k, t = 2, 2, 3, 6
    out = _random_outputs(b, ncrops, k, t=t, f=4, seed=8)
    cfg = MGFNConfig.paper()
    total, parts = official_loss(out, batch_size=b, config=cfg)
    s = out[4][..., 0].tolist()  # [2B][T]
    clip_terms = [-math.log(1 - p) for row in s[:b] for p in row] + [-math.log(p) for row in s[b:] for p in row]
    bce = sum(clip_terms) / len(clip_terms)
    sparsity = sum(sum(row) for row in s[b:]) / b
    smooth = sum(sum((row[j] - row[j + 1]) ** 2 for j in range(t - 1)) for row in s[b:]) / b
    m_n, m_a = _hand_magnitudes(out[3], b, ncrops), _hand_magnitudes(out[2], b, ncrops)
    inter, intra_a, intra_n, _ = _hand_mc(m_n, m_a, 200.0)
    expected = bce + sparsity + smooth + 1e-3 * (inter + intra_a + intra_n)
    assert parts["bce"] == pytest.approx(bce, rel=1e-9)
    assert parts["sparsity"] == pytest.approx(sparsity, rel=1e-9)
    assert parts["smooth"] == pytest.approx(smooth, rel=1e-9)
    assert total.item() == pytest.approx(expected, rel=1e-9)


def test_paper_preset_is_registered_for_the_cli():
    """``vadpipe train --head mgfn --preset paper`` (the registry's preset) builds the same
    config as ``MGFNConfig.paper()``. Catches a missing or stale ``presets`` entry."""
    assert MGFNConfig(**get_head("mgfn").presets["paper"]) == MGFNConfig.paper()
    assert MGFNConfig.paper() != MGFNConfig()


def test_paper_config_selects_the_exact_top_k_in_training():
    """``MGFNConfig.paper()`` in training picks the k largest crop-averaged magnitudes (the
    paper's "top-k-largest-feature-magnitude clips"); the official Dropout(0.7) eligibility
    mask changes the choice under the same seed. Catches ``paper()`` keeping the mask."""
    picked = {}
    for name, cfg in (("paper", MGFNConfig.paper(**SMALL)), ("official", small_config())):
        model = MGFN(cfg)
        # random LayerNorm gains: with the default ones every final magnitude is about sqrt(C)
        model.load_state_dict(random_state_dict(model, seed=12))
        model = model.double().train()
        b, n, t = cfg.batch_size, cfg.ncrops, 16
        g = torch.Generator().manual_seed(2)
        video = add_magnitude(torch.randn(2 * b, n, t, cfg.feature_dim, generator=g, dtype=torch.float64))
        with torch.no_grad():
            feats, _ = model.embed(video)  # training-mode BatchNorm: batch statistics, deterministic
            torch.manual_seed(6)
            _, _, abn_sel, nor_sel, _ = model(video)
        mags = [[sum(feats[v * n + c, j].norm().item() for c in range(n)) / n for j in range(t)] for v in range(2 * b)]
        exact = [sorted(range(t), key=lambda j, v=v: -mags[v][j])[: cfg.k] for v in range(2 * b)]
        expected_nor = torch.stack([feats[v * n + c, exact[v]] for c in range(n) for v in range(b)])
        expected_abn = torch.stack([feats[(b + v) * n + c, exact[b + v]] for c in range(n) for v in range(b)])
        picked[name] = torch.allclose(nor_sel, expected_nor) and torch.allclose(abn_sel, expected_abn)
    assert picked["paper"]
    assert not picked["official"]  # the check can fail: the seeded mask does move the top-k


def test_paper_config_head_loss_backpropagates():
    """``MGFN.loss`` with ``MGFNConfig.paper()`` end to end: finite, gradients reach FAM's
    ``to_mag`` and the classifier (the MC and per-clip BCE terms are wired to the model)."""
    torch.manual_seed(0)
    cfg = MGFNConfig.paper(**SMALL)
    head = MGFN(cfg)
    head.load_state_dict(random_state_dict(head, seed=9))  # final LN gains != 1: magnitudes differ
    head.train()
    g = torch.Generator().manual_seed(4)
    normal = torch.randn(cfg.batch_size, cfg.ncrops, 8, cfg.feature_dim, generator=g)
    abnormal = torch.randn(cfg.batch_size, cfg.ncrops, 8, cfg.feature_dim, generator=g) + 0.5
    loss, parts = head.loss(normal, abnormal)
    loss.backward()
    assert math.isfinite(loss.item()) and parts["con_a"] > 0 and parts["con_n"] > 0
    assert head.to_mag.weight.grad.abs().sum() > 0 and head.fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sparsity="other"),
        dict(classification="video"),
        dict(contrastive_pairs="all"),
        dict(mc_inter_hinge=True),  # the official "crops" loss has its own squared hinge
        dict(contrastive_pairs="videos", mc_inter_hinge="yes"),
    ],
)
def test_bad_paper_settings_raise(kwargs):
    with pytest.raises(ConfigError):
        MGFNConfig(**kwargs)


def test_head_loss_and_scores_interface():
    assert "mgfn" in list_heads()
    spec = get_head("mgfn")
    cfg = small_config(batch_size=3)
    head = spec.build(cfg)
    opt = spec.optimizer(head.parameters(), cfg)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 1e-3 and opt.defaults["weight_decay"] == 5e-4
    normal = torch.randn(2, cfg.ncrops, 8, cfg.feature_dim)  # B may differ from config.batch_size
    abnormal = torch.randn(2, cfg.ncrops, 8, cfg.feature_dim)
    head.train()
    loss, parts = head.loss(normal, abnormal)
    loss.backward()
    assert math.isfinite(loss.item()) and set(parts) >= {"bce", "con", "con_a", "con_n", "smooth", "sparsity", "total"}
    assert head.to_mag.weight.grad is not None
    one_loss, _ = head.loss(normal[:1], abnormal[:1])  # B = 1 is trained, not treated as inference
    assert math.isfinite(one_loss.item())
    head.eval()
    with torch.no_grad():
        s = head.snippet_scores(torch.randn(3, cfg.ncrops, 5, cfg.feature_dim))
    assert s.shape == (3, 5) and bool(((s >= 0) & (s <= 1)).all())
    with pytest.raises(ConfigError):
        head.snippet_scores(torch.randn(1, cfg.ncrops, 5, cfg.feature_dim + 1))


# --------------------------------------------------------------------------- training sanity


def synthetic_videos(n_videos, abnormal, g, crops=2, t=32, d=16, min_len=8, max_len=16):
    """Gaussian snippets with a per-video scene offset; abnormal videos get one planted segment
    of ``min_len..max_len`` snippets shifted along a fixed direction. Returns features
    ``[V, crops, T, d]`` and snippet labels ``[V, T]``.

    The segments are long on purpose: MGFN picks its top-k snippets by (nearly constant)
    magnitudes under a 0.7 dropout of the eligibility mask, so with segments of a few
    snippets out of 32 the video-level BCE often learns "abnormal video -> every snippet
    high" through the glance attention instead of the segment (seen on this data with 3-8
    snippets: AUC 0.4-0.99 depending on the seed).
    """
    direction = torch.zeros(d)
    direction[: d // 2] = 1.0
    direction = direction / direction.norm()
    feats = torch.randn(n_videos, 1, t, d, generator=g) + torch.randn(n_videos, 1, 1, d, generator=g)
    feats = feats + 0.2 * torch.randn(n_videos, crops, t, d, generator=g)
    labels = torch.zeros(n_videos, t)
    if abnormal:
        for v in range(n_videos):
            length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
            start = int(torch.randint(0, t - length + 1, (1,), generator=g))
            feats[v, :, start : start + length] += 4.0 * direction
            labels[v, start : start + length] = 1
    return feats, labels


def _sanity_auc(seed: int) -> float:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    cfg = MGFNConfig(feature_dim=16, dims=(16, 32, 32), depths=(1, 1, 1), dim_head=8, batch_size=4, ncrops=2)
    head = MGFN(cfg)
    opt = get_head("mgfn").optimizer(head.parameters(), cfg)
    test_n, lab_n = synthetic_videos(8, False, g)
    test_a, lab_a = synthetic_videos(8, True, g)
    fit_on_fresh_batches(head, opt, lambda n, abn: synthetic_videos(n, abn, g), steps=150, batch=cfg.batch_size)
    with torch.no_grad():
        scores = head.snippet_scores(torch.cat([test_n, test_a]))
    return rank_auc(scores, torch.cat([lab_n, lab_a]))


def test_training_sanity_on_planted_anomalies():
    """The official objective finds the planted segments on most seeds: of seeds 0-2, at
    least two reach snippet AUC > 0.9. One run is not a robust test here: over seeds 0-9
    nine reach 0.90-0.998 while one lands in the "abnormal video -> every snippet high"
    mode (AUC ~0.55), and which seed does depends on the CPU kernels (seed 0 with
    ``ATEN_CPU_CAPABILITY=avx2`` or ``default``, not with AVX-512) -- measured, not assumed."""
    aucs = [_sanity_auc(seed) for seed in range(3)]
    assert sum(a > 0.9 for a in aucs) >= 2, aucs
