"""ResNet-50 + patch nodes + TRN relation module (vadpipe.extractors.resnet_trn)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from vadpipe.errors import WeightsIntegrityError, WeightsNotFoundError
from vadpipe.extractors import resnet_trn as rt
from vadpipe.extractors.weights import sha256_file

SMALL = dict(num_frames=4, out_dim=32)


@pytest.fixture(autouse=True)
def _no_env(monkeypatch, tmp_path):
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    for name in (rt.RESNET50_ENV, rt.RELATION_ENV, rt.RELATION_ALLOW_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    """A random torchvision ResNet-50 (non-trivial BN stats) saved in torchvision's key format."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet50(weights=None)
    g = torch.Generator().manual_seed(1)
    for m in tv.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    path = tmp_path_factory.mktemp("w") / "resnet50-random.pth"
    sd = tv.state_dict()
    assert "fc.weight" in sd and "fc.bias" in sd
    torch.save(sd, path)
    return tv.eval(), path


def _ref_cells(n: int, k: int) -> list[tuple[int, int]]:
    return [(math.floor(i * n / k), math.ceil((i + 1) * n / k)) for i in range(k)]


def _reference_patches(fmap: torch.Tensor, scales=(1, 2, 3)) -> torch.Tensor:
    n, c, h, w = fmap.shape
    out = []
    for k in scales:
        for r0, r1 in _ref_cells(h, k):
            for c0, c1 in _ref_cells(w, k):
                out.append(fmap[:, :, r0:r1, c0:c1].amax(dim=(2, 3)))
    return torch.stack(out, dim=1)


# ------------------------------------------------------------------------ patch split


def test_patch_split_7x7_matches_hand_written_reference():
    torch.manual_seed(0)
    fmap = torch.randn(3, 16, 7, 7)
    got = rt.patch_max_pool(fmap)
    assert got.shape == (3, 14, 16)
    torch.testing.assert_close(got, _reference_patches(fmap), rtol=0, atol=0)
    # the whole-map node is the global max; 7x7 cells overlap (rows 0-3 / 3-6 for k=2)
    torch.testing.assert_close(got[:, 0], fmap.amax(dim=(2, 3)))
    assert _ref_cells(7, 2) == [(0, 4), (3, 7)] and _ref_cells(7, 3) == [(0, 3), (2, 5), (4, 7)]


def test_patch_split_2x2_map_overlapping_cells():
    fmap = torch.arange(4.0).reshape(1, 1, 2, 2)  # [[0, 1], [2, 3]]
    got = rt.patch_max_pool(fmap)[0, :, 0]
    torch.testing.assert_close(got, _reference_patches(fmap)[0, :, 0], rtol=0, atol=0)
    # k=3 on 2 rows: cells rows {0}, {0,1}, {1} -> overlapping 3x3 grid
    expected_k3 = torch.tensor([0.0, 1, 1, 2, 3, 3, 2, 3, 3])
    assert got.tolist() == [3.0, 0, 1, 2, 3] + expected_k3.tolist()


# ------------------------------------------------------------------------ model shapes


def test_shapes_small_clip():
    torch.manual_seed(0)
    model = rt.resnet50_trn(weights=None, **SMALL)
    x = torch.randn(2, 3, 4, 64, 64)
    with torch.no_grad():
        fmap = model.feature_map(x)
        patches = model.patch_features(x)
        out = model(x)
    assert fmap.shape == (8, 2048, 2, 2)
    assert patches.shape == (2, 4, 14, 2048)
    assert out.shape == (2, 14, 32) and out.dtype == torch.float32
    assert model.nodes == 14 and not model.training
    # patch_features is the patch split of each frame's map (clip-major, frame-minor)
    torch.testing.assert_close(patches.reshape(8, 14, 2048), rt.patch_max_pool(fmap))
    with pytest.raises(ValueError):
        model(torch.randn(1, 3, 5, 64, 64))


# ------------------------------------------------------------------------ weights


def test_trunk_loads_torchvision_state_dict_and_matches(tv_file):
    tv, path = tv_file
    with pytest.warns(UserWarning, match="UNTRAINED"):
        model = rt.resnet50_trn(checkpoint=path, allow_untrained_relation=True, **SMALL)
    assert model.weights_sha256 == sha256_file(path)
    assert model.relation_trained is False and model.relation_sha256 is None
    torch.manual_seed(3)
    x = torch.randn(1, 3, 4, 64, 64)
    frames = x.permute(0, 2, 1, 3, 4).reshape(4, 3, 64, 64)
    ref = create_feature_extractor(tv, {"layer4": "f"})
    with torch.no_grad():
        want = ref(frames)["f"]
        got = model.feature_map(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_trunk_loads_via_env_and_cache(tv_file, monkeypatch, tmp_path):
    _, path = tv_file
    monkeypatch.setenv(rt.RESNET50_ENV, str(path))
    assert rt.locate_resnet50_checkpoint() == path
    monkeypatch.delenv(rt.RESNET50_ENV)
    with pytest.raises(WeightsNotFoundError):
        rt.locate_resnet50_checkpoint()
    from vadpipe.extractors.weights import weights_dir

    weights_dir().mkdir(parents=True)
    (weights_dir() / rt.RESNET50_V1_CKPT_NAME).write_bytes(b"x")
    assert rt.locate_resnet50_checkpoint().name == rt.RESNET50_V1_CKPT_NAME


def test_load_rejects_wrong_keys():
    model = rt.ResNetTRN(**SMALL)
    sd = dict(model.trunk.state_dict())
    model.load_trunk_state_dict({**sd, "fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)})
    missing = dict(sd)
    missing.pop("layer4.2.bn3.running_var")
    with pytest.raises(WeightsIntegrityError, match="missing"):
        model.load_trunk_state_dict(missing)
    with pytest.raises(WeightsIntegrityError, match="unexpected"):
        model.load_trunk_state_dict({**sd, "avgpool.foo": torch.zeros(1)})
    with pytest.raises(WeightsIntegrityError, match="shape"):
        model.load_trunk_state_dict({**sd, "conv1.weight": torch.zeros(64, 3, 3, 3)})


def test_torchvision_name_hash_prefix_checked(tmp_path):
    path = tmp_path / "resnet50-00000000.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsIntegrityError, match="00000000"):
        rt.load_resnet50_state_dict(path)


def test_missing_resnet_file_names_file_and_import_command():
    with pytest.raises(WeightsNotFoundError) as e:
        rt.resnet50_trn(allow_untrained_relation=True, **SMALL)
    msg = str(e.value)
    assert rt.RESNET50_CKPT_NAME in msg
    assert "vadpipe weights import resnet50-trn FILE" in msg
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in msg
    assert rt.RESNET50_ENV in msg


def test_untrained_relation_refused_without_opt_in(tv_file, monkeypatch, tmp_path):
    _, path = tv_file
    with pytest.raises(WeightsNotFoundError, match="allow_untrained_relation"):
        rt.resnet50_trn(checkpoint=path, **SMALL)
    # opt-in through the environment works too (the registry's build has no keywords)
    monkeypatch.setenv(rt.RELATION_ALLOW_ENV, "1")
    with pytest.warns(UserWarning):
        rt.resnet50_trn(checkpoint=path, **SMALL)
    monkeypatch.delenv(rt.RELATION_ALLOW_ENV)
    # a trained relation state dict is loaded strictly and recorded
    donor = rt.ResNetTRN(**SMALL, relation_seed=7)
    rel = tmp_path / "relation.pt"
    torch.save(donor.relation.state_dict(), rel)
    model = rt.resnet50_trn(checkpoint=path, relation_weights=rel, **SMALL)
    assert model.relation_trained and model.relation_sha256 == sha256_file(rel)
    for a, b in zip(model.relation.parameters(), donor.relation.parameters()):
        assert torch.equal(a, b)
    monkeypatch.setenv(rt.RELATION_ENV, str(rel))
    assert rt.resnet50_trn(checkpoint=path, **SMALL).relation_trained
    bad = tmp_path / "bad.pt"
    torch.save(rt.ResNetTRN(num_frames=4, out_dim=16).relation.state_dict(), bad)
    with pytest.raises(WeightsIntegrityError):
        rt.resnet50_trn(checkpoint=path, relation_weights=bad, **SMALL)


def test_relation_init_is_seeded():
    torch.manual_seed(5)
    m1 = rt.ResNetTRN(**SMALL, relation_seed=0)
    torch.manual_seed(123)
    m2 = rt.ResNetTRN(**SMALL, relation_seed=0)
    m3 = rt.ResNetTRN(**SMALL, relation_seed=1)
    for p1, p2 in zip(m1.relation.parameters(), m2.relation.parameters()):
        assert torch.equal(p1, p2)
    assert not torch.equal(m1.relation.fc_fusion_scales[0][1].weight, m3.relation.fc_fusion_scales[0][1].weight)


# ------------------------------------------------------------------------ relation module


def _relation(**kw):
    torch.manual_seed(0)
    return rt.RelationModuleMultiScale(8, 6, 5, **kw).eval()


def test_strided_subsets():
    for t in (4, 6, 16):
        for s in range(1, t + 1):
            subs = rt.strided_subsets(t, s, 3)
            assert 1 <= len(subs) <= 3 and len(set(subs)) == len(subs)
            for sub in subs:
                assert len(sub) == s and list(sub) == sorted(set(sub)) and 0 <= sub[0] and sub[-1] < t
    assert rt.strided_subsets(16, 16, 3) == [tuple(range(16))]
    assert rt.strided_subsets(16, 2, 3) == [(1, 9), (4, 12), (6, 14)]


def test_relation_eval_deterministic_and_sum_over_scales():
    rel = _relation()
    assert rel.scales == (6, 5, 4, 3, 2)
    x = torch.randn(7, 6, 8)
    with torch.no_grad():
        y1, y2 = rel(x), rel(x)
        assert torch.equal(y1, y2) and y1.shape == (7, 5)
        want = torch.zeros(7, 5)
        for s, mlp in zip(rel.scales, rel.fc_fusion_scales):
            subs = [tuple(range(6))] if s == 6 else rt.strided_subsets(6, s, min(3, math.comb(6, s)))
            assert rel.subsets(s) == subs
            outs = [mlp(torch.cat([x[:, f] for f in sub], dim=1)) for sub in subs]
            want += torch.stack(outs).mean(0)
    torch.testing.assert_close(y1, want, rtol=1e-5, atol=1e-6)


def test_relation_sum_reduction_and_configured_scales():
    rel = _relation(scales=(3, 2), subset_reduction="sum", subsample_num=2)
    x = torch.randn(2, 6, 8)
    with torch.no_grad():
        want = sum(
            mlp(torch.cat([x[:, f] for f in sub], dim=1))
            for s, mlp in zip((3, 2), rel.fc_fusion_scales)
            for sub in rt.strided_subsets(6, s, 2)
        )
        torch.testing.assert_close(rel(x), want, rtol=1e-5, atol=1e-6)


def test_relation_depends_on_frame_order():
    rel = _relation()
    x = torch.randn(3, 6, 8)
    with torch.no_grad():
        y = rel(x)
        y_rev = rel(x.flip(1))
    assert not torch.allclose(y, y_rev, atol=1e-4)
    # and the whole model: reversing the clip's frames changes the node features
    torch.manual_seed(0)
    model = rt.resnet50_trn(weights=None, **SMALL)
    clip = torch.randn(1, 3, 4, 64, 64)
    with torch.no_grad():
        patches = model.patch_features(clip)
        a = model.relate(patches)
        b = model.relate(patches.flip(1))
        assert torch.equal(model(clip), a)
    assert not torch.allclose(a, b, atol=1e-5)


def test_relation_training_mode_samples_random_ordered_subsets():
    rel = _relation().train()
    seen = set()
    for _ in range(20):
        subs = rel.subsets(3)
        assert len(subs) == 3 and len(set(subs)) == 3
        assert all(list(s) == sorted(s) for s in subs)
        seen.update(subs)
    assert len(seen) > 3
    assert rel.subsets(6) == [tuple(range(6))]


# ------------------------------------------------------------------------ registry


def test_registered_backbone():
    from vadpipe.extractors.registry import get_backbone

    spec = get_backbone("resnet50-trn")
    assert spec.feature_dim == 2048 and spec.nodes == 14 and spec.clip_len == 16
    assert spec.file_suffix == "trn"
    assert spec.preset.value_range is None
    assert spec.preset.mean == rt.IMAGENET_MEAN and spec.preset.std == rt.IMAGENET_STD
    assert "vadpipe weights import resnet50-trn" in spec.weights.how_to_get
