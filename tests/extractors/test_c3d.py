"""C3D backbone, c3d.pickle loading and Sultani 32-segment features."""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import pytest
import torch

from tests.helpers.shared_data import shared_fixture
from vadpipe.errors import FeatureLoadError, WeightsIntegrityError, WeightsNotFoundError
from vadpipe.extractors.c3d import (
    C3D,
    C3D_ENV,
    C3D_KEYS,
    SPORTS1M_BGR_MEAN,
    c3d_sports1m,
    load_c3d_state_dict,
)
from vadpipe.extractors.registry import get_backbone
from vadpipe.extractors.weights import sha256_file
from vadpipe.manifests.features import FeatureRow, write_manifest
from vadpipe.pipeline.train.segments import (
    format_sultani_txt,
    segments_for_manifest,
    sultani_segments,
    write_sultani_txt,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(C3D_ENV, raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="module")
def clip():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 16, 112, 112, generator=g) * 50


_SD_CACHE: dict[int, OrderedDict] = {}


def _random_state_dict(seed: int = 0) -> OrderedDict:
    """Random tensors with exactly the c3d.pickle names/shapes (cached; copy before editing)."""
    if seed not in _SD_CACHE:
        _SD_CACHE[seed] = _make_state_dict(seed)
    return OrderedDict(_SD_CACHE[seed])


def _make_state_dict(seed: int) -> OrderedDict:
    g = torch.Generator().manual_seed(seed)
    return OrderedDict(
        (k, torch.randn(shape, generator=g) * (0.02 if len(shape) > 1 else 0.1))
        for k, shape in C3D_KEYS.items()
    )


# ------------------------------------------------------------------ model


def test_keys_match_pytorch_port_names():
    names = ["conv1", "conv2", "conv3a", "conv3b", "conv4a", "conv4b", "conv5a", "conv5b", "fc6", "fc7", "fc8"]
    assert list(C3D_KEYS) == [f"{n}.{p}" for n in names for p in ("weight", "bias")]
    assert {k: tuple(v.shape) for k, v in C3D().state_dict().items()} == C3D_KEYS
    assert C3D_KEYS["fc6.weight"] == (4096, 8192) and C3D_KEYS["fc8.weight"] == (487, 4096)


def test_forward_shapes_and_layers(clip):
    torch.manual_seed(0)
    m = C3D().eval()
    with torch.no_grad():
        fc6 = m(clip)
        fc6b, fc7 = m.fc6_fc7(clip)
        assert m.trunk(clip).shape == (1, 8192)
        assert m.logits(clip).shape == (1, 487)
    assert fc6.shape == (1, 4096) and fc7.shape == (1, 4096)
    assert (fc6 >= 0).all() and (fc7 >= 0).all()  # post-ReLU
    torch.testing.assert_close(fc6, fc6b)
    m.layer = "fc7"
    with torch.no_grad():
        torch.testing.assert_close(m(clip), fc7)
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 112, 112\]"):
        m(torch.zeros(1, 3, 8, 112, 112))


def test_pool5_caffe_vs_port_windows():
    x = torch.arange(2 * 7 * 7, dtype=torch.float32).reshape(1, 1, 2, 7, 7)
    caffe, port = C3D(pool5="caffe"), C3D(pool5="port")
    a, b = caffe.pool5(x), port.pool5(x)
    assert a.shape == b.shape == (1, 1, 1, 4, 4)
    # Caffe: windows start at 0, 2, 4, 6 -> max at rows/cols 1, 3, 5, 6 of frame 1.
    idx = [1, 3, 5, 6]
    assert a[0, 0, 0].tolist() == [[49 + 7 * r + c for c in idx] for r in idx]
    # Port (padding 1): windows start at -1, 1, 3, 5 -> max at 0, 2, 4, 6.
    idx = [0, 2, 4, 6]
    assert b[0, 0, 0].tolist() == [[49 + 7 * r + c for c in idx] for r in idx]


# ------------------------------------------------------------------ weights


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_loads_strictly_same_output(home, clip, legacy):
    sd = _random_state_dict()
    path = home / "weights" / "c3d.pickle"
    path.parent.mkdir(parents=True)
    torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
    m = c3d_sports1m()
    assert m.weights_sha256 == sha256_file(path)
    assert not m.training
    ref = C3D().eval()
    ref.load_state_dict(sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(m(clip), ref(clip), rtol=0, atol=0)
        assert m(clip).shape == (1, 4096)


def test_env_var_and_explicit_path(home, tmp_path, monkeypatch):
    p = tmp_path / "elsewhere.pickle"
    torch.save(_random_state_dict(1), p)
    monkeypatch.setenv(C3D_ENV, str(p))
    sd, digest = load_c3d_state_dict()
    assert digest == sha256_file(p) and set(sd) == set(C3D_KEYS)
    monkeypatch.setenv(C3D_ENV, str(tmp_path / "nope.pickle"))
    with pytest.raises(WeightsNotFoundError, match="nope.pickle"):
        load_c3d_state_dict()
    assert set(load_c3d_state_dict(p)[0]) == set(C3D_KEYS)


def test_wrong_keys_and_shapes(home, tmp_path):
    sd = _random_state_dict()
    sd["conv1a.weight"] = sd.pop("conv1.weight")
    p = tmp_path / "bad.pickle"
    torch.save(sd, p)
    with pytest.raises(WeightsIntegrityError, match=r"1 missing keys: conv1.weight; 1 unexpected keys: conv1a.weight"):
        load_c3d_state_dict(p)
    sd = _random_state_dict()
    sd["fc8.weight"] = torch.zeros(400, 4096)
    torch.save(sd, p)
    with pytest.raises(WeightsIntegrityError, match=r"fc8.weight: checkpoint \(400, 4096\) vs model \(487, 4096\)"):
        load_c3d_state_dict(p)
    torch.save([1, 2], p)
    with pytest.raises(WeightsIntegrityError, match="expected a dict of tensors, found list"):
        load_c3d_state_dict(p)
    p.write_bytes(b"not a pickle")
    with pytest.raises(WeightsIntegrityError, match="not a readable PyTorch checkpoint .not a file torch.save wrote"):
        load_c3d_state_dict(p)


def test_missing_file_message(home):
    with pytest.raises(WeightsNotFoundError) as e:
        c3d_sports1m()
    msg = str(e.value)
    assert "c3d.pickle" in msg
    assert "vadpipe weights import c3d" in msg
    assert "imagelab.ing.unimore.it/files/c3d_pytorch/c3d.pickle" in msg
    assert str(home / "weights" / "c3d.pickle") in msg


def test_registry_and_preset():
    spec = get_backbone("c3d")
    assert spec.feature_dim == 4096 and spec.clip_len == 16 and spec.file_suffix == "c3d"
    assert spec.weights.file_name == "c3d.pickle" and spec.weights.name == "c3d-sports1m"
    assert "vadpipe weights import c3d" in spec.weights.how_to_get
    p = spec.preset
    assert p.resize == (128, 171) and p.crop_size == 112 and p.bgr is True
    assert p.value_range is None and p.crop_order == "torchvision"
    assert SPORTS1M_BGR_MEAN == (90.25, 97.66, 101.41)
    # (x / 255 - mean) / std == x - mean_pixel, in 0..255 units.
    x = np.array([0.0, 128.0, 255.0])
    for c in range(3):
        got = (x / 255 - p.mean[c]) / p.std[c]
        np.testing.assert_allclose(got, x - SPORTS1M_BGR_MEAN[c], atol=1e-9)
    assert not spec.build(weights=None).training


# ------------------------------------------------------------------ segments


def _matlab_transcription(feat: np.ndarray) -> np.ndarray:
    """Literal transcription of Save_C3DFeatures_32Segments.m's loop (1-based)."""
    T = feat.shape[0]
    shots = [math.floor(v + 0.5) for v in np.linspace(1, T, 33)]  # MATLAB round (> 0)
    out = np.zeros((32, feat.shape[1]))
    count = 0
    for ishots in range(1, len(shots)):  # 1 .. length-1
        ss = shots[ishots - 1]
        ee = shots[ishots] - 1
        if ishots == len(shots):  # never true, as in the original
            ee = shots[ishots]
        if ss == ee:
            temp = feat[ss - 1 : ee]
            temp = temp.reshape(-1)
        elif ee < ss:
            temp = feat[ss - 1]
        else:
            temp = feat[ss - 1 : ee].mean(axis=0)
        temp = temp / np.linalg.norm(temp)
        out[count] = temp
        count += 1
    return out


@pytest.mark.parametrize("T", [1, 5, 31, 32, 33, 100])
def test_sultani_segments_match_matlab(T):
    rng = np.random.default_rng(T)
    feat = np.maximum(rng.standard_normal((T, 64)), 0).astype(np.float32) + 1e-3
    got = sultani_segments(feat)
    want = _matlab_transcription(feat.astype(np.float64))
    assert got.shape == (32, 64) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-12)
    if T > 32:  # the last clip is never used
        feat2 = feat.copy()
        feat2[-1] += 100
        np.testing.assert_array_equal(sultani_segments(feat2), got)


def test_sultani_segments_crops_and_errors():
    rng = np.random.default_rng(0)
    feat = rng.random((40, 10, 16))
    np.testing.assert_allclose(sultani_segments(feat), sultani_segments(feat.mean(axis=1)))
    raw = sultani_segments(feat, l2=False)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0)
    assert sultani_segments(feat, n=4, scheme="rtfm").shape == (4, 16)
    with pytest.raises(FeatureLoadError, match="all zero"):
        sultani_segments(np.zeros((5, 8)))
    with pytest.raises(FeatureLoadError, match="NaN"):
        sultani_segments(np.full((5, 8), np.nan))
    with pytest.raises(FeatureLoadError, match="0 clips"):
        sultani_segments(np.zeros((0, 8)))


def test_txt_format_reproduces_real_sample_bytes():
    sample = shared_fixture("ucf_crime/SampleVideos/Explosion008_x264.txt")
    raw = sample.read_bytes()
    values = np.loadtxt(sample)
    assert values.shape == (32, 4096)
    np.testing.assert_allclose(np.linalg.norm(values, axis=1), 1.0, atol=1e-4)
    assert format_sultani_txt(values).encode() == raw


def test_write_sultani_txt_roundtrip(tmp_path):
    rng = np.random.default_rng(1)
    seg = sultani_segments(rng.random((100, 4096)))
    out = write_sultani_txt(tmp_path / "sub" / "v.txt", seg)
    text = out.read_text()
    lines = text.split("\n")
    assert text.endswith(" \n") and len(lines) == 33 and lines[-1] == ""
    assert all(line.endswith(" ") and "  " not in line for line in lines[:-1])
    back = np.loadtxt(out)
    assert back.shape == (32, 4096)
    np.testing.assert_allclose(back, seg, atol=5e-7)
    assert all(len(t.split(".")[1]) == 6 for t in lines[0].split())
    assert not list(out.parent.glob("*vadpipe-tmp*"))


def test_segments_for_manifest(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "feats"
    root.mkdir()
    a = rng.random((50, 1, 32)).astype(np.float32)
    b = rng.random((7, 3, 32)).astype(np.float32)
    np.save(root / "a_c3d.npy", a)
    np.save(root / "b_c3d.npy", b)
    rows = [
        FeatureRow(video="/v/a.mp4", feature_path="a_c3d.npy", backbone="c3d", n_clips=50, crops=1, dim=32, status="ok"),
        FeatureRow(video="/v/b.mp4", feature_path="b_c3d.npy", backbone="c3d", n_clips=7, crops=3, dim=32, status="ok"),
        FeatureRow(video="/v/c.mp4", status="failed", error="boom"),
    ]
    write_manifest(root / "features.csv", rows)
    out = segments_for_manifest(root / "features.csv", tmp_path / "seg")
    assert set(out) == {"/v/a.mp4", "/v/b.mp4"}
    np.testing.assert_allclose(np.loadtxt(out["/v/a.mp4"]), sultani_segments(a), atol=5e-7)
    np.testing.assert_allclose(np.loadtxt(out["/v/b.mp4"]), sultani_segments(b), atol=5e-7)
    out = segments_for_manifest(root / "features.csv", tmp_path / "npy", fmt="npy", n=8)
    arr = np.load(out["/v/b.mp4"])
    assert arr.shape == (8, 32) and arr.dtype == np.float32
    (root / "a_c3d.npy").unlink()
    with pytest.raises(FeatureLoadError, match="a_c3d.npy"):
        segments_for_manifest(root / "features.csv", tmp_path / "seg2")
