"""The one weights contract: every backbone's entry, keyword-only builders, the one lookup,
the one state-dict reader and checker, the sha256 of what a backbone loads without building it,
and the named feature recipes."""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import replace

import pytest
import torch
from torch import nn

from tests.helpers import tiny_backbone
from vadpipe.errors import ConfigError, WeightsIntegrityError, WeightsNotFoundError
from vadpipe.extractors import weights as W
from vadpipe.extractors.presets import PRESETS, RECIPES, ClipPreset, recipe_backbone, recipe_preset
from vadpipe.extractors.registry import BACKBONES, Weights, get_backbone
from vadpipe.loading import CheckpointMismatchError, check_state_dict, load_checked, read_state_dict

BUILTIN = ("c3d", "i3d", "i3d-r50", "i3d-r50-caffe2", "resnet50-trn")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "weights").mkdir(parents=True)
    return tmp_path / "home" / "weights"


@pytest.mark.parametrize("name", BUILTIN)
def test_every_backbone_has_one_complete_weights_entry(name):
    spec = get_backbone(name)
    w = spec.weights
    assert isinstance(w, Weights) and w.name and w.file_name and w.env.startswith("VADPIPE_")
    assert w.source and w.license and w.how_to_get and w.meta
    assert isinstance(w.preset, ClipPreset) and w.feature_dim > 0
    assert spec.preset is w.preset and spec.feature_dim == w.feature_dim
    # builders take the entry keyword-only; weights=None is the random init
    param = inspect.signature(spec.build).parameters["weights"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY and param.default is w
    with pytest.raises(TypeError):
        spec.build(w)


def test_the_registry_loads_every_backbone_module_and_names_them_on_a_typo():
    assert set(BUILTIN) <= set(BACKBONES)
    with pytest.raises(ConfigError, match=r"unknown backbone 'i3dd'; registered backbones: c3d, i3d, "):
        get_backbone("i3dd")


# ------------------------------------------------------------------ the one lookup


def _entry(**kw) -> Weights:
    base = dict(name="toy", source="s", license="l", how_to_get="Get it from the toy shop.", file_name="toy.pt",
                env="VADPIPE_TOY_CKPT", preset=tiny_backbone.TINY_PRESET, feature_dim=8)
    return Weights(**{**base, **kw})


def test_lookup_order_argument_env_cache_alternative_installed(home, tmp_path, monkeypatch):
    monkeypatch.delenv("VADPIPE_TOY_CKPT", raising=False)
    installed = tmp_path / "site" / "toy.pt"
    installed.parent.mkdir()
    installed.write_bytes(b"x")
    entry = _entry(alt_file_names=("toy-v1.pt",), find_installed=lambda: installed)
    assert W.locate_weight_file(entry) == installed
    (home / "toy-v1.pt").write_bytes(b"x")
    assert W.locate_weight_file(entry) == home / "toy-v1.pt"
    (home / "toy.pt").write_bytes(b"x")
    assert W.locate_weight_file(entry) == home / "toy.pt"
    env_file = tmp_path / "env.pt"
    env_file.write_bytes(b"x")
    monkeypatch.setenv("VADPIPE_TOY_CKPT", str(env_file))
    assert W.locate_weight_file(entry) == env_file
    arg = tmp_path / "arg.pt"
    arg.write_bytes(b"x")
    assert W.locate_weight_file(entry, arg) == arg


def test_lookup_errors_name_the_places_and_how_to_get_the_file(home, tmp_path, monkeypatch):
    monkeypatch.delenv("VADPIPE_TOY_CKPT", raising=False)
    with pytest.raises(WeightsNotFoundError) as e:
        W.locate_weight_file(_entry())
    assert "Get it from the toy shop." in str(e.value) and "$VADPIPE_TOY_CKPT" in str(e.value)
    assert str(home / "toy.pt") in str(e.value)
    # an explicit path or variable that names nothing is an error, not skipped
    (home / "toy.pt").write_bytes(b"x")
    with pytest.raises(WeightsNotFoundError, match=r"nope\.pt \(from checkpoint argument\) does not exist"):
        W.locate_weight_file(_entry(), tmp_path / "nope.pt")
    monkeypatch.setenv("VADPIPE_TOY_CKPT", str(tmp_path / "gone.pt"))
    with pytest.raises(WeightsNotFoundError, match=r"gone\.pt \(from \$VADPIPE_TOY_CKPT\)"):
        W.locate_weight_file(_entry())


def test_a_pinned_sha256_is_checked_on_lookup(home):
    (home / "toy.pt").write_bytes(b"genuine")
    good = hashlib.sha256(b"genuine").hexdigest()
    assert W.locate_weight_file(_entry(sha256=good)) == home / "toy.pt"
    with pytest.raises(WeightsIntegrityError, match=good):
        W.locate_weight_file(_entry(sha256="0" * 64))
    with pytest.raises(WeightsIntegrityError):
        W.import_weights(_entry(sha256="0" * 64, file_name="other.pt"), home / "toy.pt")
    assert not (home / "other.pt").exists()


# ------------------------------------------------------- sha256 without building a model


def test_loaded_sha256_comes_from_the_file_not_from_a_model(home, monkeypatch):
    sha = tiny_backbone.save_tiny_weights(home / "tiny-file.pt")
    monkeypatch.delenv("VADPIPE_TINY_FILE_CKPT", raising=False)
    built = tiny_backbone.FILE_SPEC.build(weights=tiny_backbone.TINY_FILE_WEIGHTS)
    assert built.weights_sha256 == sha

    def no_model(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(tiny_backbone.TinyBackbone, "__init__", no_model)
    assert W.loaded_weights_sha256(tiny_backbone.TINY_FILE_WEIGHTS) == sha


def test_loaded_sha256_of_converted_weights_is_the_converted_file(home, tmp_path):
    target = tmp_path / "converted.safetensors"
    target.write_bytes(b"converted bytes")
    entry = _entry(loaded_file=lambda checkpoint: target)
    assert W.loaded_weights_sha256(entry) == hashlib.sha256(b"converted bytes").hexdigest()


# ------------------------------------------------- the one reader and the one checker


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)


def test_reader_unwraps_and_strips_prefixes_for_every_layout(tmp_path):
    sd = _Net().state_dict()
    layouts = {
        "bare.pt": sd,
        "pyth.pyth": {"model_state": sd, "epoch": 3},  # pytorchvideo
        "wrapped.pth": {"state_dict": {f"module.{k}": v for k, v in sd.items()}},
        "compiled.pt": {f"_orig_mod.{k}": v for k, v in sd.items()},
    }
    for name, obj in layouts.items():
        torch.save(obj, tmp_path / name)
        assert list(read_state_dict(tmp_path / name)) == list(sd), name
    from safetensors.torch import save_file

    save_file(dict(sd), str(tmp_path / "w.safetensors"))
    assert set(read_state_dict(tmp_path / "w.safetensors")) == set(sd)


def test_reader_refuses_objects_without_running_them_and_names_garbage(tmp_path):
    torch.save(_Net(), tmp_path / "model.pt")  # a whole pickled module
    with pytest.raises(WeightsIntegrityError, match="refused to unpickle.*Unsupported global"):
        read_state_dict(tmp_path / "model.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(WeightsIntegrityError, match="not a readable PyTorch checkpoint"):
        read_state_dict(tmp_path / "text.pt")
    with pytest.raises(WeightsNotFoundError):
        read_state_dict(tmp_path / "missing.pt")


def test_checker_names_every_problem_and_fills_batchnorm_counters():
    net = _Net()
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    checked = check_state_dict(sd, net)
    assert int(checked["bn.num_batches_tracked"]) == 0
    load_checked(_Net(), sd)  # strict load succeeds
    bad = dict(sd)
    bad["fc.weightX"] = bad.pop("fc.weight")
    bad["bn.bias"] = torch.zeros(5)
    with pytest.raises(CheckpointMismatchError) as e:
        check_state_dict(bad, net, source="f.pt")
    assert e.value.missing == ["fc.weight"] and e.value.unexpected == ["fc.weightX"]
    assert "bn.bias: checkpoint (5,) vs model (2,)" in str(e.value)
    # against a published name -> shape table as well
    with pytest.raises(CheckpointMismatchError, match="1 missing keys: extra"):
        check_state_dict(sd, {**{k: tuple(v.shape) for k, v in sd.items()}, "extra": (1,)})


# ------------------------------------------------------------------ named recipes


def test_a_recipe_names_its_backbone_and_refuses_another():
    assert recipe_backbone(None, None) == "i3d"
    assert recipe_backbone("rtfm-i3d-r50-10crop", None) == "i3d-r50-caffe2"
    assert recipe_backbone("rtfm-ucf", None) == "i3d-r50-caffe2"  # the old name, an alias
    assert recipe_backbone("sultani-c3d", None) == recipe_backbone("sultani", None) == "c3d"
    assert recipe_backbone("kinetics", "c3d") == "c3d"  # geometry-only recipes take any backbone
    with pytest.raises(ConfigError, match="made with --backbone i3d-r50-caffe2, not c3d"):
        recipe_backbone("rtfm-i3d-r50-10crop", "c3d")
    with pytest.raises(ConfigError, match="unknown feature recipe"):
        recipe_backbone("nope", None)


def test_a_recipe_changes_geometry_and_keeps_the_weights_normalisation():
    c3d = get_backbone("c3d").preset
    got = recipe_preset(c3d, "gowtham-rtfm")
    want = PRESETS["gowtham-rtfm"]
    assert (got.resize, got.crop_order, got.interpolation, got.antialias) == (
        want.resize, want.crop_order, want.interpolation, want.antialias)
    assert (got.crop_size, got.mean, got.std, got.bgr) == (c3d.crop_size, c3d.mean, c3d.std, c3d.bgr)
    # C3D v1.0 resizes with cv::resize (bilinear, no antialiasing) and centres with integer division
    assert recipe_preset(c3d, "sultani-c3d") == replace(c3d, antialias=False, crop_order="caffe")
    assert recipe_preset(c3d, "gowtham-rtfm", crop_order="torchvision", resize=300) == replace(
        got, crop_order="torchvision", resize=300)
    assert set(RECIPES) == {"kinetics", "gowtham-rtfm", "rtfm-i3d-r50-10crop", "wu-i3d-10crop", "xd-i3d-5crop",
                            "sultani-c3d"}
