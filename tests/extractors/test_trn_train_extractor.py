"""SA-CRF's inner-product relation and the trained resnet50-trn weights in the extractor.

The real ResNet-50 trunk is used throughout, with random weights saved in torchvision's
format (tiny frames: 32-64 px, 2 frames).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision

from tests.pipeline.test_trn_train import write_list, write_video
from vadpipe.errors import WeightsNotFoundError
from vadpipe.extractors import resnet_trn as rt
from vadpipe.extractors.weights import sha256_file


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path, one_thread):
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    for name in (rt.RESNET50_ENV, rt.RELATION_ENV, rt.RELATION_ALLOW_ENV, rt.TRAINED_ENV):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def tv_file(tmp_path_factory):
    """A random torchvision ResNet-50 with non-trivial BN statistics, saved as torchvision does."""
    from tests.helpers.random_weights import randomize

    torch.manual_seed(0)
    tv = randomize(torchvision.models.resnet50(weights=None), seed=3)
    path = tmp_path_factory.mktemp("w") / "resnet50-random.pth"
    torch.save(tv.state_dict(), path)
    return path


def reference_attention(att: rt.InnerProductAttention, fmap: torch.Tensor) -> np.ndarray:
    """SA-CRF Sec. 3.2 written out position by position in float64: for every position a,
    gamma(a, a') = psi1(d_a) . psi2(d_a') / sqrt(E) over all K*h*w positions, then
    alpha_a = sigmoid(w . [d_a, gamma(a, 1..N)] + b) and d_a * alpha_a."""
    p = {k: v.detach().double().numpy() for k, v in att.state_dict().items()}
    f = fmap.detach().double().numpy()
    b, k, c, h, w = f.shape
    out = np.empty_like(f)
    for bi in range(b):
        pos = [(t, y, x) for t in range(k) for y in range(h) for x in range(w)]
        feats = [f[bi, t, :, y, x] for t, y, x in pos]
        e1 = [p["psi1.weight"] @ d + p["psi1.bias"] for d in feats]
        e2 = [p["psi2.weight"] @ d + p["psi2.bias"] for d in feats]
        for a, (t, y, x) in enumerate(pos):
            gamma = np.array([e1[a] @ e2[j] / math.sqrt(att.embed_dim) for j in range(len(pos))])
            z = np.concatenate([feats[a], gamma])
            alpha = 1 / (1 + math.exp(-(p["weight.weight"][0] @ z + p["weight.bias"][0])))
            out[bi, t, :, y, x] = feats[a] * alpha
    return out


def test_inner_product_attention_matches_reference():
    torch.manual_seed(0)
    att = rt.InnerProductAttention(channels=6, positions=3 * 2 * 2, embed_dim=4)
    with torch.no_grad():
        att.weight.weight.mul_(8)  # spread the sigmoid away from 0.5
    fmap = torch.randn(2, 3, 6, 2, 2)
    with torch.no_grad():
        out, alpha = att(fmap)
    np.testing.assert_allclose(out.double().numpy(), reference_attention(att, fmap), rtol=1e-5, atol=1e-6)
    assert alpha.shape == (2, 3, 2, 2) and float(alpha.std()) > 0.05
    with pytest.raises(Exception, match="tied to its number of frames"):
        att(torch.randn(1, 2, 6, 2, 2))


def test_inner_product_relation_reweights_resnet50_maps_before_pooling(tv_file):
    cfg = dict(num_frames=2, out_dim=8, relation_type="inner-product", input_size=64, embed_dim=16)
    model = rt.resnet50_trn(weights=None, **cfg)
    assert any(k.startswith("attention.psi1") for k in model.state_dict())  # part of the state dict
    model.load_trunk_state_dict(torch.load(tv_file, weights_only=True))
    x = torch.randn(1, 3, 2, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        raw = model.trunk(x.permute(0, 2, 1, 3, 4).reshape(2, 3, 64, 64))  # [2, 2048, 2, 2]
        got = model.feature_map(x)
        want = reference_attention(model.attention, raw.reshape(1, 2, 2048, 2, 2))
    np.testing.assert_allclose(got.reshape(1, 2, 2048, 2, 2).numpy(), want, rtol=1e-4, atol=1e-5)
    plain = rt.resnet50_trn(weights=None, **{**cfg, "relation_type": "trn"})
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("attention.")})
    with torch.no_grad():
        assert not torch.allclose(plain(x), model(x))
    with pytest.raises(Exception, match="tied to"):
        model(torch.randn(1, 3, 2, 96, 96))


def test_untrained_refusal_names_train_and_import_commands(tv_file, monkeypatch):
    with pytest.raises(WeightsNotFoundError) as e:
        rt.resnet50_trn(checkpoint=tv_file, num_frames=4, out_dim=8)
    msg = str(e.value)
    assert "vadpipe train-backbone resnet50-trn --videos train.csv -o runs/trn" in msg
    assert "vadpipe weights import resnet50-trn runs/trn/best.pt" in msg
    from vadpipe.extractors.registry import get_backbone

    monkeypatch.setenv(rt.RESNET50_ENV, str(tv_file))
    spec = get_backbone("resnet50-trn")
    with pytest.raises(WeightsNotFoundError, match="vadpipe weights import resnet50-trn runs/trn/best.pt"):
        spec.build(weights=spec.weights)


def test_real_resnet50_training_partial_bn_and_trained_extractor(tv_file, tmp_path, monkeypatch):
    from vadpipe.pipeline.trn.data import read_video_list
    from vadpipe.pipeline.trn.export import export_trained
    from vadpipe.pipeline.trn.train import TrainBackboneConfig, train_backbone

    items = []
    for i, bright in enumerate((False, True)):
        write_video(tmp_path / f"v{i}.mp4", bright, seed=i, n_frames=6)
        items.append((f"v{i}.mp4", "anomalous" if bright else "normal"))
    lst = write_list(tmp_path / "train.csv", items)
    cfg = TrainBackboneConfig(segments=2, size=32, batch_size=2, epochs=1, warmup_epochs=0, lr=0.01, out_dim=8,
                              bottleneck=8, embed_dim=8, pretrained=str(tv_file), device="cpu", workers=0,
                              log_every=0)
    res = train_backbone(read_video_list(lst), [], tmp_path / "run", cfg, echo=lambda s: None)
    ckpt = torch.load(res.best_path, weights_only=True)
    assert ckpt["pretrained_sha256"] == sha256_file(tv_file)
    src = torch.load(tv_file, weights_only=True)
    sd = {k.removeprefix("backbone.trunk."): v for k, v in ckpt["state_dict"].items()
          if k.startswith("backbone.trunk.")}
    # TSN's partial BN: later BatchNorms keep the file's statistics and affine; the first one adapts
    for key in ("layer1.0.bn1", "layer4.2.bn3"):
        for part in ("running_mean", "running_var", "weight", "bias"):
            assert torch.equal(sd[f"{key}.{part}"], src[f"{key}.{part}"]), (key, part)
    assert not torch.equal(sd["bn1.running_mean"], src["bn1.running_mean"])
    assert not torch.equal(sd["conv1.weight"], src["conv1.weight"])  # the trunk trains

    converted = export_trained(res.best_path, tmp_path / "trained.safetensors", check=False, record=False)
    trained = rt.resnet50_trn(trained=converted)
    assert trained.weights_sha256 == sha256_file(converted) and trained.relation_trained
    with pytest.warns(UserWarning, match="UNTRAINED"):
        random_relation = rt.resnet50_trn(checkpoint=tv_file, allow_untrained_relation=True, **trained.config())
    x = torch.randn(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f_trained, f_random = trained(x), random_relation(x)
    assert f_trained.shape == (1, 14, 8)
    assert (f_trained - f_random).abs().max() > 1e-4
    # best.pt directly, and the converted file named by the environment (the registered build's path)
    with torch.no_grad():
        torch.testing.assert_close(rt.resnet50_trn(trained=res.best_path)(x), f_trained, rtol=0, atol=0)
        monkeypatch.setenv(rt.TRAINED_ENV, str(converted))
        torch.testing.assert_close(rt.resnet50_trn()(x), f_trained, rtol=0, atol=0)
