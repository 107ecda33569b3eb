"""Caffe2-converted I3D-ResNet-50 (RTFM features' backbone): architecture, loader, registry.

The golden test re-implements the published network (Tushar-N/pytorch-resnet3d
``models/resnet.py``, ``I3Res50``) with plain ``torch.nn.functional`` calls driven by the
state dict, so a mistake in the module (a stride, a padding, a temporal kernel, the pool
order) shows up as a feature mismatch.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from tests.helpers.random_weights import randomize
from vadpipe.errors import WeightsIntegrityError, WeightsNotFoundError
from vadpipe.extractors import i3d_r50_caffe2 as m
from vadpipe.extractors.weights import sha256_file

# Facts written down from Tushar-N/pytorch-resnet3d models/resnet.py (I3Res50) and
# utils/convert_weights.py, independently of vadpipe's module.
PUBLISHED_LAYERS = [3, 4, 6, 3]
PUBLISHED_PLANES = [64, 128, 256, 512]
PUBLISHED_TEMP_CONV = [[1, 1, 1], [1, 0, 1, 0], [1, 0, 1, 0, 1, 0], [0, 1, 0]]
BN_LEAVES = ("weight", "bias", "running_mean", "running_var")  # convert_weights: s, b, rm, riv


def published_keys() -> list[str]:
    """Keys of ``i3d_r50_kinetics.pth`` as convert_weights.py writes them."""
    keys = ["conv1.weight"] + [f"bn1.{leaf}" for leaf in BN_LEAVES] + ["fc.weight", "fc.bias"]
    for i, n in enumerate(PUBLISHED_LAYERS):
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            for c in (1, 2, 3):
                keys.append(f"{p}.conv{c}.weight")
                keys += [f"{p}.bn{c}.{leaf}" for leaf in BN_LEAVES]
            if b == 0:
                keys.append(f"{p}.downsample.0.weight")
                keys += [f"{p}.downsample.1.{leaf}" for leaf in BN_LEAVES]
    return keys


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(m.CKPT_ENV, raising=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize(m.i3d_r50_caffe2_kinetics400(weights=None))


@pytest.fixture(scope="module")
def published_sd(model):
    """The model's weights in the published file's exact layout (no num_batches_tracked)."""
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


@pytest.fixture(scope="module")
def small_clip():
    return torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1))


def test_shape_and_random_init(model, small_clip, one_thread):
    assert model.weights_sha256 is None
    with torch.no_grad():
        out = model(small_clip)
        logits = model.logits(small_clip)
    assert out.shape == (2, m.FEATURE_DIM) and out.dtype == torch.float32
    assert logits.shape == (2, 400)
    assert torch.isfinite(out).all() and out.std() > 0


def test_too_short_or_misshapen_input_is_a_clear_error(model):
    with pytest.raises(ValueError, match="at least 7 frames"):
        model(torch.zeros(1, 3, 6, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        model(torch.zeros(1, 8, 32, 32))


def test_key_layout_is_the_published_one(published_sd):
    expected = published_keys()
    assert len(expected) == len(set(expected)) == 267
    assert set(published_sd) == set(expected)
    shapes = {k: tuple(v.shape) for k, v in published_sd.items()}
    assert shapes["conv1.weight"] == (64, 3, 5, 7, 7)
    assert shapes["layer1.0.conv1.weight"] == (64, 64, 3, 1, 1)
    assert shapes["layer1.0.downsample.0.weight"] == (256, 64, 1, 1, 1)
    assert shapes["layer2.1.conv1.weight"] == (128, 512, 1, 1, 1)  # temp_conv 0
    assert shapes["layer2.0.conv2.weight"] == (128, 128, 1, 3, 3)
    assert shapes["layer3.4.conv1.weight"] == (256, 1024, 3, 1, 1)
    assert shapes["layer4.0.conv1.weight"] == (512, 1024, 1, 1, 1)
    assert shapes["layer4.1.conv1.weight"] == (512, 2048, 3, 1, 1)
    assert shapes["layer4.2.conv3.weight"] == (2048, 512, 1, 1, 1)
    assert shapes["layer4.0.downsample.1.running_var"] == (2048,)
    assert shapes["fc.weight"] == (400, 2048) and shapes["fc.bias"] == (400,)


def test_published_file_loads_without_missing_or_unexpected_keys(model, published_sd, small_clip, tmp_path,
                                                                 monkeypatch, one_thread):
    path = tmp_path / m.CKPT_NAME
    torch.save(published_sd, path)  # convert_weights.py saves a bare dict
    # the published keys, and the BatchNorm counters the file lacks filled with 0
    checked = m.load_i3d_r50_caffe2_state_dict(path)
    assert set(published_keys()) < set(checked) == set(model.state_dict())
    assert all(int(checked[k]) == 0 for k in set(checked) - set(published_keys()))
    loaded = m.i3d_r50_caffe2_kinetics400(checkpoint=path)
    assert loaded.weights_sha256 == sha256_file(path)
    with torch.no_grad():
        assert torch.equal(loaded(small_clip), model(small_clip))

    # DataParallel prefixes and a {"state_dict": ...} wrapper are removed.
    torch.save({"state_dict": {f"module.{k}": v for k, v in published_sd.items()}}, tmp_path / "wrapped.pth")
    assert set(m.load_i3d_r50_caffe2_state_dict(tmp_path / "wrapped.pth")) == set(model.state_dict())

    # Found through the environment variable and in the cache after an import.
    monkeypatch.setenv(m.CKPT_ENV, str(path))
    assert m.locate_i3d_r50_caffe2_checkpoint() == path
    monkeypatch.delenv(m.CKPT_ENV)
    from vadpipe.extractors.weights import import_weight_file

    dst = import_weight_file(m.CKPT_NAME, path)
    assert m.locate_i3d_r50_caffe2_checkpoint() == dst
    assert m.SPEC.build(weights=m.SPEC.weights).weights_sha256 == sha256_file(path)


def test_wrong_keys_and_shapes_fail_clearly(published_sd, tmp_path):
    path = tmp_path / "bad.pth"
    sd = dict(published_sd)
    sd["layer1.0.conv1.weightX"] = sd.pop("layer1.0.conv1.weight")
    torch.save(sd, path)
    with pytest.raises(WeightsIntegrityError, match=r"missing keys: layer1\.0\.conv1\.weight") as e:
        m.i3d_r50_caffe2_kinetics400(checkpoint=path)
    assert "unexpected keys: layer1.0.conv1.weightX" in str(e.value)
    assert m.CKPT_NAME in str(e.value)

    sd = dict(published_sd)
    sd["fc.weight"] = torch.zeros(10, 2048)
    torch.save(sd, path)
    with pytest.raises(WeightsIntegrityError, match=r"shape mismatches: fc\.weight: checkpoint \(10, 2048\) vs model \(400, 2048\)"):
        m.load_i3d_r50_caffe2_state_dict(path)

    # A non-local (i3d_nonlocal) or otherwise larger file is not silently accepted.
    sd = dict(published_sd)
    sd["layer2.1.nl.theta.weight"] = torch.zeros(256, 512, 1, 1, 1)
    torch.save(sd, path)
    with pytest.raises(WeightsIntegrityError, match=r"unexpected keys: layer2\.1\.nl\.theta\.weight"):
        m.load_i3d_r50_caffe2_state_dict(path)

    # A pytorchvideo checkpoint gets a pointer to the right backbone.
    torch.save({"model_state": {"blocks.0.conv.weight": torch.zeros(64, 3, 5, 7, 7)}}, path)
    with pytest.raises(WeightsIntegrityError, match="use --backbone i3d-r50"):
        m.load_i3d_r50_caffe2_state_dict(path)

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsIntegrityError, match="not a readable PyTorch checkpoint"):
        m.load_i3d_r50_caffe2_state_dict(path)


def test_missing_weights_raise_with_import_command(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError) as e:
        m.i3d_r50_caffe2_kinetics400()
    msg = str(e.value)
    assert m.CKPT_NAME in msg and str(tmp_path / "home" / "weights" / m.CKPT_NAME) in msg
    assert "vadpipe weights import i3d-r50-caffe2 i3d_r50_kinetics.pth" in msg
    assert m.CAFFE2_URL in msg and "Tushar-N/pytorch-resnet3d" in msg and "non-commercial" in msg

    monkeypatch.setenv(m.CKPT_ENV, str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsNotFoundError, match="vadpipe weights import i3d-r50-caffe2"):
        m.locate_i3d_r50_caffe2_checkpoint()
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        m.i3d_r50_caffe2_kinetics400(checkpoint=tmp_path / "nope.pth")


def _reference_features(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """I3Res50.forward_single up to avgpool, from the published definition, functionally."""

    def bn(t, p):
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], training=False, eps=1e-5)

    def conv(t, name, kernel, stride, padding):
        w = sd[name]
        assert tuple(w.shape[2:]) == kernel, name
        return F.conv3d(t, w, stride=stride, padding=padding)

    x = F.relu(bn(conv(x, "conv1.weight", (5, 7, 7), (2, 2, 2), (2, 3, 3)), "bn1"))
    x = F.max_pool3d(x, (2, 3, 3), stride=(2, 2, 2), padding=0)
    for i, (n, temp) in enumerate(zip(PUBLISHED_LAYERS, PUBLISHED_TEMP_CONV)):
        for b in range(n):
            p = f"layer{i + 1}.{b}"
            s = 2 if (i > 0 and b == 0) else 1
            tc = temp[b]
            out = F.relu(bn(conv(x, f"{p}.conv1.weight", (1 + 2 * tc, 1, 1), 1, (tc, 0, 0)), f"{p}.bn1"))
            out = F.relu(bn(conv(out, f"{p}.conv2.weight", (1, 3, 3), (1, s, s), (0, 1, 1)), f"{p}.bn2"))
            out = bn(conv(out, f"{p}.conv3.weight", (1, 1, 1), 1, 0), f"{p}.bn3")
            if b == 0:  # every stage's first block projects (stride or width change)
                short = bn(conv(x, f"{p}.downsample.0.weight", (1, 1, 1), (1, s, s), 0), f"{p}.downsample.1")
            else:
                short = x
            x = F.relu(out + short)
        if i == 0:
            x = F.max_pool3d(x, (2, 1, 1), stride=(2, 1, 1))
    return F.adaptive_avg_pool3d(x, (1, 1, 1)).flatten(1)


def test_golden_features_match_an_independent_implementation(model, published_sd, one_thread):
    x = torch.randn(2, 3, 16, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = model(x)
        ref = _reference_features(published_sd, x)
        res5 = model.res5(x)
    assert res5.shape == (2, 2048, 2, 2, 2)  # 16 frames -> 2 temporal positions
    assert ref.shape == ours.shape == (2, 2048)
    assert ref.abs().max() > 0.1  # not a degenerate all-zero comparison
    assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-5), (ours - ref).abs().max()


def test_registry_spec_records_recipe_and_licence():
    from vadpipe.extractors.presets import GOWTHAM_RTFM_PRESET
    from vadpipe.extractors.registry import get_backbone, list_backbones

    assert "i3d-r50-caffe2" in list_backbones()
    spec = get_backbone("i3d-r50-caffe2")
    assert spec is m.SPEC
    assert spec.feature_dim == 2048 and spec.clip_len == 16 and spec.file_suffix == "i3d"
    assert spec.preset == GOWTHAM_RTFM_PRESET  # the RTFM feature recipe: 340x256 Lanczos, [-1, 1], gowtham order
    assert m.KINETICS_PRESET.mean == (0.45, 0.45, 0.45)  # 114.75 / 255
    assert m.KINETICS_PRESET.std == (0.225, 0.225, 0.225)  # 57.375 / 255
    assert spec.weights.file_name == "i3d_r50_kinetics.pth"
    assert "CC-BY-NC 4.0" in spec.weights.license and "non-commercial" in spec.weights.license
    assert "Tushar-N/pytorch-resnet3d" in spec.weights.source
    assert "vadpipe weights import i3d-r50-caffe2" in spec.weights.how_to_get
    with pytest.raises(WeightsNotFoundError):
        spec.build(weights=spec.weights)


def test_extract_runs_with_random_weights(tmp_path):
    from click.testing import CliRunner

    from tests.helpers import media
    from vadpipe.cli import main

    media.make_video(tmp_path / "v.mp4", n_frames=20, seed=1)
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mp4"), "--backbone", "i3d-r50-caffe2",
                                    "--random-weights", "--crops", "1", "--device", "cpu", "--workers", "0",
                                    "-q", "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    import numpy as np

    assert np.load(tmp_path / "o" / "v_i3d.npy").shape == (1, 1, 2048)
    (run,) = (tmp_path / "o").glob("extract-*.json")
    cfg = json.loads(run.read_text())["config"]
    assert cfg["backbone"] == "i3d-r50-caffe2"
    assert (cfg["preset"]["resize"], cfg["preset"]["crop_order"], cfg["preset"]["value_range"]) == (
        [256, 340], "gowtham", [-1.0, 1.0])
