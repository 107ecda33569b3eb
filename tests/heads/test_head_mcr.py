"""MCR refinement head: moving averages, scale attention, losses, training, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.synthetic import heldout_frame_auc, make_split, rank_auc
from vadpipe.errors import ConfigError
from vadpipe.heads.base import get_head, list_heads
from vadpipe.heads.data import FeatureDataset, pad_bags, resample_segments
from vadpipe.heads.mcr import (
    MCRConfig,
    MCRHead,
    center_loss,
    dmil_loss,
    mcr_sampling,
    moving_average,
    multiscale_moving_averages,
    squeeze_features,
    unpad,
)
from vadpipe.manifests.datasets import DatasetRow
from vadpipe.pipeline.train.apply import load_head
from vadpipe.pipeline.train.loop import TrainConfig, build_head, load_checkpoint, train

SMALL_BASE = {
    "rtfm": {"fc_dims": (32, 16), "dropout": 0.3},
    "rtfm0": {"fc_dims": (32, 16), "dropout": 0.0},  # deterministic RTFM (no dropout anywhere)
    "sultani": {"hidden_dims": (32, 16), "dropout": 0.3},
}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend


def _head(base: str = "sultani", **kw) -> MCRHead:
    cfg = MCRConfig(base_head=base.rstrip("0"), base_overrides=SMALL_BASE[base], feature_dim=16, **kw)
    return MCRHead(cfg)


def test_registered_and_shapes() -> None:
    assert "mcr" in list_heads()
    torch.manual_seed(0)
    for base in ("sultani", "rtfm"):
        head = _head(base, batch_size=2).eval()
        x = torch.rand(3, 2, 20, 16)
        parts = head.refined_parts(x)
        assert parts["base"].shape == (3, 20) and parts["scores"].shape == (3, 20)
        assert parts["attention"].shape == (3, 3)
        assert 0.0 <= float(parts["scores"].detach().min()) <= float(parts["scores"].detach().max()) <= 1.0
        loss, lp = head.train().loss(torch.rand(2, 2, 32, 16), torch.rand(2, 2, 32, 16))
        assert loss.dim() == 0 and torch.isfinite(loss) and set(lp) >= {"dmil", "center", "total"}
    with pytest.raises(ValueError, match="feature_dim"):
        _head().snippet_scores(torch.rand(1, 1, 8, 15))


def test_identity_window_and_uniform_attention_give_base_scores() -> None:
    torch.manual_seed(1)
    x = torch.rand(2, 2, 11, 16)
    head = _head(windows=(1,)).eval()
    torch.nn.init.normal_(head.attention.weight)  # a single scale: softmax is 1 whatever the FC
    assert torch.equal(head.snippet_scores(x), head.base.snippet_scores(x))
    head = _head(windows=(1, 1, 1)).eval()  # FC at zero init: uniform 1/3
    assert torch.allclose(head.scale_attention(x), torch.full((2, 3), 1 / 3))
    assert torch.allclose(head.snippet_scores(x), head.base.snippet_scores(x), atol=1e-7)


def _naive(s: np.ndarray, w: int, alignment: str, padding: str) -> np.ndarray:
    t = len(s)
    left = {"forward": 0, "causal": w - 1, "centered": (w - 1) // 2}[alignment]
    out = np.zeros(t)
    for j in range(t):
        idx = list(range(j - left, j - left + w))
        if padding == "replicate":
            out[j] = sum(s[min(max(i, 0), t - 1)] for i in idx) / w
        else:
            inside = [s[i] for i in idx if 0 <= i < t]
            out[j] = sum(inside) / len(inside)
    return out


@pytest.mark.parametrize("alignment", ["forward", "centered", "causal"])
@pytest.mark.parametrize("padding", ["replicate", "shrink"])
def test_moving_average_matches_naive_loop(alignment: str, padding: str) -> None:
    rng = np.random.default_rng(0)
    for t in (1, 2, 7, 13):
        s = rng.random((2, t))
        for w in (1, 2, 3, 5, 8):
            got = moving_average(torch.from_numpy(s), w, alignment, padding).numpy()
            want = np.stack([_naive(row, w, alignment, padding) for row in s])
            np.testing.assert_allclose(got, want, atol=1e-12, err_msg=f"T={t} w={w}")
    ms = multiscale_moving_averages(torch.from_numpy(s), (1, 3, 5), alignment, padding)
    assert ms.shape == (2, 3, 13) and torch.equal(ms[:, 0], torch.from_numpy(s))


def test_paper_forward_window_by_hand() -> None:
    s = torch.tensor([[0.0, 3.0, 6.0, 9.0]])
    # forward window j..j+2, last score repeated past the end
    assert torch.allclose(moving_average(s, 3), torch.tensor([[3.0, 6.0, 8.0, 9.0]], dtype=s.dtype))
    assert torch.allclose(moving_average(s, 3, padding="shrink"), torch.tensor([[3.0, 6.0, 7.5, 9.0]]))


def test_scale_attention_is_a_softmax_per_video() -> None:
    torch.manual_seed(2)
    for pool in ("mean", "flatten"):
        head = _head(attention_pool=pool, segments_k=4).eval()
        torch.nn.init.normal_(head.attention.weight, std=0.5)
        torch.nn.init.normal_(head.attention.bias)
        x = torch.rand(5, 2, 9, 16)
        a = head.scale_attention(x)
        assert a.shape == (5, 3) and (a > 0).all()
        assert torch.allclose(a.sum(dim=1), torch.ones(5), atol=1e-6)
        assert not torch.allclose(a[0], a[1])  # video-dependent
        # per video: a video's weights do not depend on the others in the batch
        assert torch.allclose(head.scale_attention(x[2:3]), a[2:3], atol=1e-6)
    # mean pooling: FC on each of the K squeezed segments, logits averaged, softmax over scales
    sq = squeeze_features(x, 4)
    assert sq.shape == (5, 4, 16)
    head = _head(segments_k=4).eval()
    torch.nn.init.normal_(head.attention.weight, std=0.5)
    want = torch.softmax((sq @ head.attention.weight.T + head.attention.bias).mean(1), dim=1)
    assert torch.allclose(head.scale_attention(x), want, atol=1e-6)


def test_fusion_forms() -> None:
    torch.manual_seed(3)
    x = torch.rand(2, 1, 10, 16)
    head = _head().eval()
    torch.nn.init.normal_(head.attention.weight, std=0.5)
    p = head.refined_parts(x)
    ms = multiscale_moving_averages(p["base"], (1, 3, 5))
    assert torch.allclose(p["scores"], (p["attention"][:, :, None] * ms).sum(1), atol=1e-6)
    head.config.fusion = "paper_mean"
    assert torch.allclose(head.snippet_scores(x), p["scores"] / 3, atol=1e-6)


def test_dmil_and_center_loss_by_hand() -> None:
    s = torch.tensor([[0.1, 0.2, 0.4, 0.3, 0.1], [0.9, 0.5, 0.2, 0.8, 0.7]])
    y = torch.tensor([0.0, 1.0])
    # T = 5, k = ceil(5/4) = 2: normal top-2 {0.4, 0.3}, abnormal top-2 {0.9, 0.8}
    want = -(math.log(0.6) + math.log(0.7) + math.log(0.9) + math.log(0.8)) / 4
    assert math.isclose(float(dmil_loss(s, y, 4)), want, rel_tol=1e-6)
    # divisor 1: every clip
    want_all = -(sum(math.log(1 - v) for v in s[0].tolist()) + sum(math.log(v) for v in s[1].tolist())) / 10
    assert math.isclose(float(dmil_loss(s, y, 1)), want_all, rel_tol=1e-6)
    # center of video 0 = 0.22: |-.12|+|-.02|+|.18|+|.08|+|-.12| = 0.52 -> /5
    assert math.isclose(float(center_loss(s[:1])), 0.52 / 5, rel_tol=1e-5)
    two = torch.tensor([[0.0, 1.0], [0.5, 0.5]])  # 0.5 and 0 -> mean 0.25
    assert math.isclose(float(center_loss(two)), 0.25, rel_tol=1e-6)


def test_loss_combines_terms_and_freeze_base() -> None:
    """The default loss is DMIL + lambda * center + the base head's own loss on its own view
    (Sultani: 32 segments of each video). Catches: the base term dropped or its weight
    ignored (``base_loss_weight`` default 0, the earlier default), the base loss computed on
    the MCR bags instead of the base's view."""
    torch.manual_seed(4)
    head = _head(lambda_center=2.0)
    head.eval()  # deterministic: no dropout
    n, a = torch.rand(2, 1, 8, 16), torch.rand(2, 1, 8, 16) + 0.5
    loss, parts = head.loss(n, a)
    s = head.snippet_scores(torch.cat((n, a)))
    base_loss, _ = head.base.loss(resample_segments(n, 32), resample_segments(a, 32))
    mcr = dmil_loss(s, torch.tensor([0.0, 0, 1, 1])) + 2.0 * center_loss(s[:2])
    assert torch.allclose(loss, mcr + base_loss)
    assert math.isclose(parts["base"], float(base_loss.detach()), rel_tol=1e-6)
    assert math.isclose(parts["total"], float((mcr + base_loss).detach()), rel_tol=1e-6)
    half = _head(lambda_center=2.0, base_loss_weight=0.5)
    half.load_state_dict(head.state_dict())
    assert torch.allclose(half.eval().loss(n, a)[0], mcr + 0.5 * base_loss)
    alone = _head(lambda_center=2.0, base_loss_weight=0.0)
    alone.load_state_dict(head.state_dict())
    loss0, parts0 = alone.eval().loss(n, a)
    assert torch.allclose(loss0, mcr) and "base" not in parts0

    frozen = _head(freeze_base=True)
    frozen.train()
    assert not frozen.base.training and frozen.attention.training
    before = {k: v.clone() for k, v in frozen.base.state_dict().items()}
    opt = get_head("mcr").optimizer(frozen.parameters(), frozen.config)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in frozen.attention.parameters()}
    for _ in range(3):
        loss, parts = frozen.loss(n, a)
        assert "base" not in parts
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in frozen.base.state_dict().items())
    assert frozen.attention.weight.abs().sum() > 0


def test_masked_dmil_and_center_by_hand() -> None:
    """k_i from the true length; padded clips are never selected and never enter a center.
    Catches: k from the padded length, padding selected by the top-k (it holds the highest
    values here), padding inside the center or the mean, the pooled/per-video reductions
    swapped."""
    s = torch.tensor([[0.1, 0.2, 0.4, 0.3, 0.1, 0.9, 0.9, 0.9],   # normal, T=5 + 3 padded
                      [0.9, 0.5, 0.2, 0.8, 0.7, 0.6, 0.3, 0.1]])  # abnormal, T=8
    mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    y = torch.tensor([0.0, 1.0])
    # k = ceil(5/4) = 2 -> {0.4, 0.3};  k = ceil(8/4) = 2 -> {0.9, 0.8}
    normal = -(math.log(0.6) + math.log(0.7)) / 2
    abnormal = -(math.log(0.9) + math.log(0.8)) / 2
    assert math.isclose(float(dmil_loss(s, y, 4, mask)), (normal + abnormal) / 2, rel_tol=1e-6)
    # divisor 3: k = 2 and 3 -> video means differ from the pooled mean
    abn3 = -(math.log(0.9) + math.log(0.8) + math.log(0.7)) / 3
    assert math.isclose(float(dmil_loss(s, y, 3, mask)), (normal + abn3) / 2, rel_tol=1e-6)
    pooled = -(math.log(0.6) + math.log(0.7) + math.log(0.9) + math.log(0.8) + math.log(0.7)) / 5
    assert math.isclose(float(dmil_loss(s, y, 3, mask, "pooled")), pooled, rel_tol=1e-6)
    # center of the 5 real clips = 0.22 -> 0.52 / 5, the padding's 0.9s ignored
    assert math.isclose(float(center_loss(s[:1], mask[:1])), 0.52 / 5, rel_tol=1e-5)
    with pytest.raises(ValueError, match="real clip"):
        dmil_loss(s, y, 4, torch.zeros_like(mask))


def test_padding_never_reaches_a_score_or_a_loss() -> None:
    """A zero-padded batch trains exactly like its videos one by one: the refined training
    scores of each video equal its test-time scores on the unpadded video, and the loss
    equals the losses built from those. Catches: base/refinement run on the padded bag
    (RTFM's temporal convolutions and non-local block see the zeros, the forward window and
    the squeeze average them in), the mask ignored by DMIL or the center loss."""
    torch.manual_seed(5)
    head = _head("rtfm0").eval()
    torch.nn.init.normal_(head.attention.weight, std=0.5)
    lengths_n, lengths_a = [7, 12], [12, 9]
    videos = [torch.rand(2, t, 16) for t in lengths_n + lengths_a]
    feats, mask = pad_bags(videos)
    n, a, mn, ma = feats[:2], feats[2:], mask[:2], mask[2:]
    assert [v.shape[1] for v in unpad(n, mn)] == lengths_n
    loss, parts = head.loss(n, a, normal_mask=mn, abnormal_mask=ma)
    one_by_one = [head.snippet_scores(v[None])[0] for v in videos]
    for got, want in zip(head.refine_videos(videos), one_by_one):
        assert torch.allclose(got, want, atol=1e-6)
    scores, real = pad_bags([s[None, :, None] for s in one_by_one])
    scores = scores[:, 0, :, 0]
    y = torch.tensor([0.0, 0, 1, 1])
    want_mcr = dmil_loss(scores, y, 4, real) + center_loss(scores[:2], real[:2])
    assert math.isclose(parts["dmil"] + parts["center"], float(want_mcr.detach()), rel_tol=1e-5)
    # the same videos padded to a longer T give the same loss
    longer = [torch.cat((feats, torch.zeros(4, 2, 5, 16)), 2), torch.cat((mask, torch.zeros(4, 5, dtype=torch.bool)), 1)]
    loss2, _ = head.loss(longer[0][:2], longer[0][2:], normal_mask=longer[1][:2], abnormal_mask=longer[1][2:])
    assert torch.allclose(loss, loss2, atol=1e-6)


def test_base_loss_on_the_base_view_of_the_real_snippets() -> None:
    """RTFM + MCR trains RTFM on RTFM's own view: 32 ``process_feat`` segments of each
    video's real snippets. Catches: the base loss fed the padded bags (or their resampling,
    which averages padding into the last segments), or left out."""
    torch.manual_seed(6)
    head = _head("rtfm0").eval()
    videos = [torch.rand(2, t, 16) for t in (40, 20, 33, 50)]
    feats, mask = pad_bags(videos)
    _, parts = head.loss(feats[:2], feats[2:], normal_mask=mask[:2], abnormal_mask=mask[2:])
    view = torch.stack([resample_segments(v, 32) for v in videos])
    want, _ = head.base.loss(view[:2], view[2:])
    assert math.isclose(parts["base"], float(want.detach()), rel_tol=1e-5)
    padded_view = resample_segments(feats, 32)
    wrong, _ = head.base.loss(padded_view[:2], padded_view[2:])
    assert not math.isclose(float(wrong.detach()), float(want.detach()), rel_tol=1e-3)  # the check can tell them apart


def test_window_spans_the_same_snippets_in_training_and_scoring(tmp_path: Path) -> None:
    """The training loop's bags for MCR hold every snippet, so a window of w is w snippets
    in both phases: the scores the loss trains on equal the scores ``vadpipe eval`` gives
    the same video. Catches: training videos resampled to 32 segments first (the earlier
    ``temporal="segments"``: a window of 5 spanned 5 T / 32 snippets in training)."""
    from vadpipe.heads.data import training_batch
    from vadpipe.pipeline.train.loop import _eval_view

    rng = np.random.default_rng(7)
    rows = []
    for i, (t, label) in enumerate([(45, "normal"), (70, "anomalous"), (58, "normal"), (64, "anomalous")]):
        np.save(tmp_path / f"v{i}.npy", rng.random((t, 2, 16), dtype=np.float32))
        rows.append(DatasetRow(video=f"v{i}", feature_path=f"v{i}.npy", label=label))
    torch.manual_seed(8)
    head = _head("rtfm0").eval()
    torch.nn.init.normal_(head.attention.weight, std=0.5)
    sampling = mcr_sampling(head.config)
    dataset = FeatureDataset(rows, tmp_path, n_segments=sampling.length, temporal=sampling.temporal)
    normal, abnormal, masks = training_batch(dataset, [(i, None) for i in range(4)], sampling)
    trained = head.refine_videos(unpad(normal, masks.get("normal_mask")) + unpad(abnormal, masks.get("abnormal_mask")))
    evaluation = _eval_view(dataset)
    for got, i in zip(trained, (0, 2, 1, 3)):
        feat, _ = evaluation[i]
        want = head.snippet_scores(feat[None])[0]
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)


def _probe_head(**kw) -> MCRHead:
    """MCR over a frozen Sultani base wired by hand to read feature 0: base score =
    sigmoid(relu(6 x_0 - 3) - 1.5), i.e. 0.82 on a "hit" snippet (x_0 = 1), 0.18 otherwise."""
    cfg = MCRConfig(base_head="sultani", base_overrides={"hidden_dims": (1, 1), "dropout": 0.0},
                    feature_dim=4, freeze_base=True, lr=0.05, **kw)
    head = MCRHead(cfg)
    with torch.no_grad():
        b = head.base
        b.fc1.weight.zero_()
        b.fc1.weight[0, 0] = 6.0
        b.fc1.bias.fill_(-3.0)
        b.fc2.weight.fill_(1.0)
        b.fc2.bias.zero_()
        b.fc3.weight.fill_(1.0)
        b.fc3.bias.fill_(-1.5)
    return head


def _continuity_videos(n: int, abnormal: bool, g: torch.Generator, t: int = 40):
    """Feature 0 marks base "hits": normal videos have isolated hits (every third snippet,
    random phase), abnormal videos one contiguous event of 10 hits and no others."""
    x = torch.rand(n, 1, t, 4, generator=g) * 0.1
    labels = torch.zeros(n, t)
    for i in range(n):
        if abnormal:
            start = int(torch.randint(0, t - 10, (1,), generator=g))
            x[i, 0, start : start + 10, 0] = 1.0
            labels[i, start : start + 10] = 1
        else:
            phase = int(torch.randint(0, 3, (1,), generator=g))
            x[i, 0, phase::3, 0] = 1.0
    return x, labels


def test_multiscale_refinement_separates_events_from_isolated_hits() -> None:
    """Where continuity matters -- base hits that are isolated in normal videos and
    contiguous in anomalous ones -- training the refinement moves the attention off the
    identity window (here to w = 3, which makes the period-3 normal videos flat) and lifts
    snippet AUC well above the base's. Catches: refinement switched
    off (fused = base scores), windows that do not smooth (all 1), attention not trained
    or its softmax taken over the wrong axis (weights not per scale)."""
    torch.manual_seed(9)
    g = torch.Generator().manual_seed(9)
    head = _probe_head()
    opt = get_head("mcr").optimizer(head.parameters(), head.config)
    head.train()
    for _ in range(60):
        n, _ = _continuity_videos(8, False, g)
        a, _ = _continuity_videos(8, True, g)
        loss, _ = head.loss(n, a)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()
    tn, ln = _continuity_videos(16, False, g)
    ta, la = _continuity_videos(16, True, g)
    x, labels = torch.cat((tn, ta)), torch.cat((ln, la))
    with torch.no_grad():
        parts = head.refined_parts(x)
    base_auc, refined_auc = rank_auc(parts["base"], labels), rank_auc(parts["scores"], labels)
    assert refined_auc > base_auc + 0.04, (base_auc, refined_auc)  # measured: 0.904 -> 0.970
    assert float(parts["attention"][:, 0].max()) < 0.1  # the identity window loses, in every video


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="no setting"):
        MCRConfig(base_head="sultani", base_overrides={"nope": 1}, feature_dim=16)
    with pytest.raises(ConfigError, match="unknown head"):
        MCRConfig(base_head="nope")
    with pytest.raises(ConfigError, match="contradicts"):
        MCRConfig(base_head="sultani", base_overrides={"in_dim": 8}, feature_dim=16)
    with pytest.raises(ConfigError, match="windows"):
        MCRConfig(windows=(0, 3))
    with pytest.raises(ConfigError, match="alignment"):
        MCRConfig(alignment="left")
    assert MCRConfig(base_head="sultani").l2_normalize is True
    assert MCRConfig(base_head="sultani", base_overrides={"l2_normalize": False}).l2_normalize is False
    assert MCRConfig(base_head="rtfm").l2_normalize is False
    head, cfg = build_head(get_head("mcr"), {"base_head": "sultani"}, 24)
    assert cfg.feature_dim == 24 and head.base.config.in_dim == 24


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return make_split(tmp_path_factory.mktemp("mcr_feats"))


@pytest.mark.parametrize("base,extra", [
    ("rtfm", {}),                          # the default: full-length bags + RTFM's own loss
    ("rtfm", {"temporal": "segments"}),    # the earlier 32-segment bags, still an option
    # Sultani's own objective (Adagrad-tuned, 20k steps) learns too slowly on this toy in 150
    # Adam steps for a pass/fail bound; its loss term is checked by hand above
    ("sultani", {"base_loss_weight": 0.0}),
])
def test_mcr_learns_planted_anomaly_and_round_trips(base: str, extra: dict, data: dict, tmp_path: Path) -> None:
    overrides = {"base_head": base, "base_overrides": SMALL_BASE[base], "batch_size": 4, **extra}
    cfg = TrainConfig(head="mcr", overrides=overrides, steps=150, eval_every=50, device="cpu", seed=0)
    result = train(data["train"], data["val"], tmp_path, cfg, root=data["train_root"], progress=False)
    assert [h["step"] for h in result.history] == [50, 100, 150]
    assert result.best_metric > 0.9  # video-level AUC on held-out validation videos

    ckpt = load_checkpoint(result.best_path)
    assert ckpt["head_config"]["base_overrides"] == {k: list(v) if isinstance(v, tuple) else v
                                                    for k, v in SMALL_BASE[base].items()}
    assert ckpt["head_config"]["feature_dim"] == 32 and ckpt["head_config"]["windows"] == [1, 3, 5]
    loaded = load_head(result.best_path, torch.device("cpu"))  # nested dict config
    assert loaded.name == "mcr" and not loaded.head.training
    assert heldout_frame_auc(result.best_path, data) > 0.9  # frame level, restored like `vadpipe eval`

    # the restored head scores exactly like one rebuilt by hand from the same state dict
    again, _ = build_head(get_head("mcr"), {**overrides, "feature_dim": 32})
    again.load_state_dict(ckpt["state_dict"])
    x = torch.rand(1, 2, 30, 32)
    assert torch.allclose(again.eval().snippet_scores(x), loaded.head.snippet_scores(x))
