"""I3D-ResNet-50 (pytorchvideo I3D 8x8 R50) backbone: architecture, loader, registry."""

from __future__ import annotations

import pytest
import torch

from tests.helpers.random_weights import randomize
from vadpipe.errors import WeightsIntegrityError, WeightsNotFoundError
from vadpipe.extractors import i3d_r50 as m
from vadpipe.extractors.weights import sha256_file


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(m.CKPT_ENV, raising=False)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return randomize(m.i3d_r50_kinetics400(weights=None))


@pytest.fixture(scope="module")
def small_clip():
    return torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1))


def _save_pyth(path, sd):
    # Same layout as the published pytorchvideo/PySlowFast checkpoint.
    torch.save({"model_epoch": 196, "model_state": sd}, path)


def test_shape_and_random_init(model, small_clip):
    assert model.weights_sha256 is None
    with torch.no_grad():
        out = model(small_clip)
    assert out.shape == (2, m.FEATURE_DIM) and out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_architecture_is_pytorchvideo_hub_i3d_r50_and_features_match(model):
    m._import_pytorchvideo_resnet()
    from pytorchvideo.models.hub.resnet import i3d_r50

    ref = i3d_r50(pretrained=False).eval()
    ref_sd = ref.state_dict()
    ours = model.state_dict()
    assert list(ref_sd) == list(ours)
    assert all(ref_sd[k].shape == ours[k].shape for k in ours)
    assert ref.blocks[0].conv.kernel_size == (5, 7, 7)
    ref.load_state_dict(ours)

    pooled = {}
    hook = ref.blocks[-1].pool.register_forward_hook(
        lambda mod, inp, out: pooled.__setitem__("x", out)
    )
    x = torch.randn(1, 3, 8, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref_logits = ref(x)
        res5 = model.res5(x)
        feats = model.pool(res5)
        logits = torch.nn.functional.linear(
            feats, model.head.proj.weight, model.head.proj.bias
        )
    hook.remove()
    assert res5.shape == (1, 2048, 4, 7, 7)
    ref_feats = pooled["x"].mean(dim=(2, 3, 4))
    assert torch.allclose(feats, ref_feats, atol=1e-5, rtol=1e-5)
    assert torch.allclose(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_pyth_checkpoint_roundtrip(model, small_clip, tmp_path, monkeypatch):
    path = tmp_path / m.CKPT_NAME
    _save_pyth(path, model.state_dict())

    loaded = m.i3d_r50_kinetics400(checkpoint=path)
    assert loaded.weights_sha256 == sha256_file(path)
    sd = m.load_i3d_r50_state_dict(path)
    assert set(sd) == set(model.state_dict())
    assert "blocks.6.proj.weight" in sd  # projection kept (used by logits)
    with torch.no_grad():
        assert torch.equal(loaded(small_clip), model(small_clip))

    # Found through $VADPIPE_I3D_R50_CKPT ...
    monkeypatch.setenv(m.CKPT_ENV, str(path))
    assert m.locate_i3d_r50_checkpoint() == path
    monkeypatch.delenv(m.CKPT_ENV)
    # ... and in weights_dir() after `vadpipe weights import`.
    from vadpipe.extractors.weights import import_weight_file

    dst = import_weight_file(m.CKPT_NAME, path)
    assert m.locate_i3d_r50_checkpoint() == dst


def test_num_batches_tracked_may_be_absent(model, tmp_path):
    sd = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "nbt.pyth"
    _save_pyth(path, sd)
    checked = m.load_i3d_r50_state_dict(path, model)
    assert set(checked) == set(model.state_dict()) and set(sd) < set(checked)
    assert all(int(checked[k]) == 0 for k in set(checked) - set(sd))


def test_wrong_keys_and_shapes_fail_clearly(model, tmp_path):
    sd = dict(model.state_dict())
    sd["blocks.0.conv.weightX"] = sd.pop("blocks.0.conv.weight")
    path = tmp_path / "bad.pyth"
    _save_pyth(path, sd)
    with pytest.raises(WeightsIntegrityError, match=r"missing keys: blocks\.0\.conv\.weight") as e:
        m.i3d_r50_kinetics400(checkpoint=path)
    assert "unexpected keys: blocks.0.conv.weightX" in str(e.value)

    sd = dict(model.state_dict())
    sd["blocks.6.proj.weight"] = torch.zeros(10, 2048)
    _save_pyth(path, sd)
    with pytest.raises(WeightsIntegrityError, match="shape mismatches"):
        m.load_i3d_r50_state_dict(path, model)

    # A Caffe2-converted I3Res50 state dict (Gowtham/RTFM) is refused, not mis-loaded.
    torch.save({"conv1.weight": torch.zeros(64, 3, 5, 7, 7)}, path)
    with pytest.raises(WeightsIntegrityError, match="i3d_r50_kinetics.pth is not supported"):
        m.load_i3d_r50_state_dict(path, model)

    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsIntegrityError, match="not a readable"):
        m.load_i3d_r50_state_dict(path, model)


def test_missing_weights_raise_with_import_command(tmp_path, monkeypatch):
    with pytest.raises(WeightsNotFoundError) as e:
        m.i3d_r50_kinetics400()
    msg = str(e.value)
    assert m.CKPT_NAME in msg
    assert "vadpipe weights import i3d-r50" in msg
    assert m.CKPT_URL in msg and "Apache-2.0" in msg

    monkeypatch.setenv(m.CKPT_ENV, str(tmp_path / "nope.pyth"))
    with pytest.raises(WeightsNotFoundError, match="vadpipe weights import i3d-r50"):
        m.locate_i3d_r50_checkpoint()


def test_registry_lookup():
    from vadpipe.extractors.registry import get_backbone

    spec = get_backbone("i3d-r50")
    assert spec is m.SPEC
    assert spec.feature_dim == 2048 and spec.clip_len == 16 and spec.file_suffix == "i3d"
    assert spec.preset.value_range is None
    assert spec.preset.mean == (0.45, 0.45, 0.45) and spec.preset.std == (0.225, 0.225, 0.225)
    assert spec.weights.file_name == "I3D_8x8_R50.pyth"
    assert "vadpipe weights import i3d-r50" in spec.weights.how_to_get
    with pytest.raises(WeightsNotFoundError):
        spec.build(weights=spec.weights)


def test_rtfm_preset_matches_gowtham_recipe():
    from vadpipe.extractors.presets import GOWTHAM_RTFM_PRESET

    p = m.RTFM_UCF_PRESET
    assert p.resize == (256, 340) and p.crop_order == "gowtham"
    assert p.value_range == (-1.0, 1.0) and p.interpolation == "lanczos"
    assert p == GOWTHAM_RTFM_PRESET
