"""Tests of the Sultani MIL head (vadpipe.heads.sultani).

``keras_custom_objective`` below is a literal numpy transcription of ``custom_objective`` in
github.com/WaqasSultani/AnomalyDetectionCVPR2018 ``TrainingAnomalyDetector_public.py``
(abnormal videos first in the batch, 32 segments), independent of the head's code.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from tests.helpers.synthetic import fit_on_fresh_batches, planted_videos, rank_auc
from vadpipe.errors import ConfigError
from vadpipe.heads.base import get_head, list_heads
from vadpipe.heads.checkpoints import CheckpointMismatchError, load_official_state_dict
from vadpipe.heads.sultani import SultaniConfig, SultaniHead, state_dict_from_keras_layers, sultani_mil_loss


def keras_custom_objective(y_pred: np.ndarray, n_exp: int, n_seg: int = 32) -> float:
    """custom_objective(y_true, y_pred) for a batch of n_exp abnormal then n_exp normal videos."""
    nvid = 2 * n_exp
    y_true = np.zeros(n_seg * nvid)
    y_true[n_exp * n_seg :] = 1  # load_dataset_Train_batch labels normal segments 1
    sub_max, sub_sum_labels, sub_sum_l1, sub_l2 = [], [], [], []
    for ii in range(nvid):
        mm = y_true[ii * n_seg : ii * n_seg + n_seg]
        sub_sum_labels.append(mm.sum())
        feat_score = y_pred[ii * n_seg : ii * n_seg + n_seg]
        sub_max.append(feat_score.max())
        sub_sum_l1.append(feat_score.sum())
        z1 = np.ones_like(feat_score)
        z2 = np.concatenate([z1, feat_score])
        z3 = np.concatenate([feat_score, z1])
        z = (z2[31:] - z3[:33])[1:32]
        sub_l2.append(np.sum(z**2))
    sub_score = np.array(sub_max)
    f_labels = np.array(sub_sum_labels)
    sub_sum_l1 = np.array(sub_sum_l1)[:n_exp]
    sub_l2 = np.array(sub_l2)[:n_exp]
    sub_nor = sub_score[f_labels == 32]
    sub_abn = sub_score[f_labels == 0]
    z = [np.sum(np.maximum(1 - sub_abn + sub_nor[ii], 0)) for ii in range(n_exp)]
    return float(np.mean(z) + 0.00008 * np.sum(sub_sum_l1) + 0.00008 * np.sum(sub_l2))


def test_defaults_match_original_code():
    c = SultaniConfig()
    assert (c.in_dim, c.hidden_dims, c.dropout, c.segments, c.batch_size) == (4096, (512, 32), 0.6, 32, 30)
    assert (c.lambda_smooth, c.lambda_sparse, c.weight_l2, c.margin) == (8e-5, 8e-5, 1e-3, 1.0)
    assert (c.lr, c.adagrad_eps, c.max_steps, c.reduction) == (0.01, 1e-8, 20000, "official")
    assert "sultani" in list_heads()
    spec = get_head("sultani")
    model = spec.build(SultaniConfig(in_dim=8))
    opt = spec.optimizer(model.parameters(), model.config)
    assert isinstance(opt, torch.optim.Adagrad)
    assert opt.defaults["lr"] == 0.01 and opt.defaults["eps"] == 1e-8 and opt.defaults["weight_decay"] == 0.0


@pytest.mark.parametrize("kwargs", [dict(in_dim=0), dict(dropout=1.5), dict(reduction="sum")])
def test_bad_config_raises(kwargs):
    with pytest.raises(ConfigError):
        SultaniConfig(**kwargs)


def test_architecture_relu_linear_sigmoid_and_keys():
    torch.manual_seed(0)
    m = SultaniHead(SultaniConfig(in_dim=16)).eval()
    assert list(m.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"]
    assert m.fc1.weight.shape == (512, 16) and m.fc2.weight.shape == (32, 512) and m.fc3.weight.shape == (1, 32)
    assert all(torch.all(fc.bias == 0) for fc in (m.fc1, m.fc2, m.fc3))
    for fc in (m.fc1, m.fc2, m.fc3):  # give the biases values so the check is meaningful
        torch.nn.init.normal_(fc.bias, std=0.5)
    x = torch.randn(5, 16)
    h = torch.relu(x @ m.fc1.weight.T + m.fc1.bias)
    h = h @ m.fc2.weight.T + m.fc2.bias  # linear: no activation after the 32-unit layer
    expected = torch.sigmoid(h @ m.fc3.weight.T + m.fc3.bias)
    assert torch.allclose(m(x), expected, atol=1e-6)


def test_dropout_positions_in_training():
    m = SultaniHead(SultaniConfig(in_dim=8)).train()
    names = [type(mod).__name__ for mod in m.children()]
    assert names == ["Linear", "ReLU", "Dropout", "Linear", "Dropout", "Linear", "Sigmoid"]
    assert m.dropout1.p == 0.6 and m.dropout2.p == 0.6
    x = torch.randn(4, 8)
    assert not torch.equal(m(x), m(x))  # stochastic in training
    m.eval()
    assert torch.equal(m(x), m(x))


def test_mil_loss_by_hand():
    normal = torch.tensor([[0.1, 0.3], [0.2, 0.6]])
    abnormal = torch.tensor([[0.9, 0.4], [0.5, 0.2]])
    cfg = SultaniConfig(in_dim=1)
    terms = sultani_mil_loss(normal, abnormal, cfg)
    # maxima: abnormal 0.9, 0.5; normal 0.3, 0.6. Every normal bag vs every abnormal bag:
    # n=0.3: (1-0.9+0.3) + (1-0.5+0.3) = 1.2; n=0.6: 0.7 + 1.1 = 1.8; mean over normal bags
    assert terms["rank"].item() == pytest.approx(1.5)
    assert terms["smooth"].item() == pytest.approx(8e-5 * ((0.9 - 0.4) ** 2 + (0.5 - 0.2) ** 2))
    assert terms["sparse"].item() == pytest.approx(8e-5 * (0.9 + 0.4 + 0.5 + 0.2))
    paired = sultani_mil_loss(normal, abnormal, SultaniConfig(in_dim=1, reduction="paired_mean"))
    assert paired["rank"].item() == pytest.approx((0.4 + 1.1) / 2)
    assert paired["smooth"].item() == pytest.approx(8e-5 * 0.34 / 2)
    assert paired["sparse"].item() == pytest.approx(8e-5 * 2.0 / 2)
    # hinge is zero once the margin is met
    far = sultani_mil_loss(torch.zeros(2, 2), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), cfg)
    assert far["rank"].item() == 0.0


def test_mil_loss_matches_keras_transcription():
    g = torch.Generator().manual_seed(0)
    n_exp = 5
    abnormal = torch.rand(n_exp, 32, generator=g, dtype=torch.float64)
    normal = torch.rand(n_exp, 32, generator=g, dtype=torch.float64) * 0.8
    terms = sultani_mil_loss(normal, abnormal, SultaniConfig(in_dim=1))
    ours = sum(t.item() for t in terms.values())
    y_pred = torch.cat((abnormal, normal)).flatten().numpy()  # abnormal videos first
    assert ours == pytest.approx(keras_custom_objective(y_pred, n_exp), rel=1e-12)


def test_head_loss_crop_average_and_l2_penalty():
    torch.manual_seed(0)
    m = SultaniHead(SultaniConfig(in_dim=16)).eval()
    normal, abnormal = torch.randn(3, 4, 32, 16), torch.randn(3, 4, 32, 16) + 0.5
    total, parts = m.loss(normal, abnormal)
    with torch.no_grad():
        per_crop = m(abnormal).squeeze(-1)  # [B, N, T]
    assert torch.allclose(m.snippet_scores(abnormal), per_crop.mean(1))
    terms = sultani_mil_loss(m.snippet_scores(normal), m.snippet_scores(abnormal), m.config)
    l2 = 1e-3 * sum((fc.weight**2).sum() for fc in (m.fc1, m.fc2, m.fc3))  # kernels only
    expected = terms["rank"] + terms["smooth"] + terms["sparse"] + l2
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert parts["l2"] == pytest.approx(l2.item(), rel=1e-6)
    assert set(parts) == {"rank", "smooth", "sparse", "l2", "total"}
    with pytest.raises(ValueError, match="in_dim=16"):
        m.loss(torch.zeros(1, 1, 32, 8), torch.zeros(1, 1, 32, 8))


def test_adagrad_step_matches_keras_update():
    m = SultaniHead(SultaniConfig(in_dim=4))
    opt = get_head("sultani").optimizer(m.parameters(), m.config)
    before = m.fc3.weight.detach().clone()
    grad = torch.tensor([[0.5, -2.0] + [0.1] * 30])
    m.fc3.weight.grad = grad.clone()
    opt.step()
    # Keras 1 Adagrad: a = a + g^2; p = p - lr * g / (sqrt(a) + eps)
    expected = before - 0.01 * grad / (grad.abs() + 1e-8)
    assert torch.allclose(m.fc3.weight.detach(), expected, atol=1e-7)


def test_keras_weight_conversion_and_checkpoint_loading(tmp_path):
    rng = np.random.default_rng(0)
    layers = [
        [rng.standard_normal((8, 512)).astype(np.float32), rng.standard_normal((1, 512)).astype(np.float32)],
        [],  # Dropout layer entry of weights.mat is empty
        [rng.standard_normal((512, 32)).astype(np.float32), rng.standard_normal(32).astype(np.float32)],
        [],
        [rng.standard_normal((32, 1)).astype(np.float32), rng.standard_normal(1).astype(np.float32)],
    ]
    sd = state_dict_from_keras_layers(layers)
    path = tmp_path / "sultani.pth"
    torch.save({"state_dict": OrderedDict(("module." + k, v) for k, v in sd.items())}, path)
    m = load_official_state_dict(path, "sultani", SultaniHead(SultaniConfig(in_dim=8))).eval()
    x = rng.standard_normal((6, 8)).astype(np.float32)
    h = np.maximum(x @ layers[0][0] + layers[0][1], 0)  # Keras Dense: x . W + b
    h = h @ layers[2][0] + layers[2][1]
    expected = 1 / (1 + np.exp(-(h @ layers[4][0] + layers[4][1])))
    with torch.no_grad():
        assert np.allclose(m(torch.from_numpy(x)).numpy(), expected, atol=1e-5)
    torch.save({"fc1.weight": torch.zeros(512, 8)}, path)
    with pytest.raises(CheckpointMismatchError, match="missing keys: fc1.bias"):
        load_official_state_dict(path, "sultani", SultaniHead(SultaniConfig(in_dim=8)))


# ----------------------------------------------------------------------------------------
# Training sanity on synthetic features
# ----------------------------------------------------------------------------------------


def test_training_separates_planted_anomalies(one_thread):
    torch.manual_seed(0)
    cfg = SultaniConfig(in_dim=64, batch_size=8)
    model = SultaniHead(cfg)
    opt = get_head("sultani").optimizer(model.parameters(), cfg)
    g = torch.Generator().manual_seed(1)
    parts = fit_on_fresh_batches(model, opt, lambda n, abn: planted_videos(n, abn, g, crops=1), steps=200, batch=8)
    assert math.isfinite(parts["total"])
    xn, ln = planted_videos(16, False, g, crops=1)
    xa, la = planted_videos(16, True, g, crops=1)
    with torch.no_grad():
        scores = model.snippet_scores(torch.cat((xn, xa)))
    assert rank_auc(scores, torch.cat((ln, la))) > 0.9
