"""MCR refinement head: moving averages, scale attention, losses, training, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.synthetic import heldout_frame_auc, make_split
from vadpipe.errors import ConfigError
from vadpipe.heads.base import get_head, list_heads
from vadpipe.heads.mcr import (
    MCRConfig,
    MCRHead,
    center_loss,
    dmil_loss,
    moving_average,
    multiscale_moving_averages,
    squeeze_features,
)
from vadpipe.pipeline.scoring import load_head
from vadpipe.pipeline.train import TrainConfig, build_head, load_checkpoint, train

SMALL_BASE = {
    "rtfm": {"fc_dims": (32, 16), "dropout": 0.3},
    "sultani": {"hidden_dims": (32, 16), "dropout": 0.3},
}

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: threads only contend


def _head(base: str = "sultani", **kw) -> MCRHead:
    cfg = MCRConfig(base_head=base, base_overrides=SMALL_BASE[base], feature_dim=16, **kw)
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
    torch.manual_seed(4)
    head = _head(lambda_center=2.0)
    head.eval()  # deterministic: no dropout
    n, a = torch.rand(2, 1, 8, 16), torch.rand(2, 1, 8, 16) + 0.5
    loss, parts = head.loss(n, a)
    s = head.snippet_scores(torch.cat((n, a)))
    want = dmil_loss(s, torch.tensor([0.0, 0, 1, 1])) + 2.0 * center_loss(s[:2])
    assert torch.allclose(loss, want) and math.isclose(parts["total"], float(want.detach()), rel_tol=1e-6)

    frozen = _head(freeze_base=True)
    frozen.train()
    assert not frozen.base.training and frozen.attention.training
    before = {k: v.clone() for k, v in frozen.base.state_dict().items()}
    opt = get_head("mcr").optimizer(frozen.parameters(), frozen.config)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in frozen.attention.parameters()}
    for _ in range(3):
        loss, _ = frozen.loss(n, a)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in frozen.base.state_dict().items())
    assert frozen.attention.weight.abs().sum() > 0


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


@pytest.mark.parametrize("base", ["sultani", "rtfm"])
def test_mcr_learns_planted_anomaly_and_round_trips(base: str, data: dict, tmp_path: Path) -> None:
    overrides = {"base_head": base, "base_overrides": SMALL_BASE[base], "batch_size": 4}
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
