"""``vadpipe train-backbone resnet50-trn`` (vadpipe.pipeline.trn): learning, resume, failures, registration.

Tiny on purpose: 80x80 H.264 videos of 8-16 frames made with PyAV, a 5-conv stand-in trunk
(``tiny16``, 16 channels, stride 32 like ResNet-50), 64 px crops. The real ResNet-50 path is
tested in tests/extractors/test_trn_train_extractor.py with random torchvision-format weights.
"""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from tests.helpers.media import make_text_as_video, make_zero_byte
from vadpipe.extractors import resnet_trn as rt
from vadpipe.pipeline.trn.data import VideoRow, class_names, read_video_list, segment_indices
from vadpipe.pipeline.trn.train import TrainBackboneConfig, learning_rate, optimizer_groups, train_backbone

TINY = "tiny16"


class TinyTrunk(nn.Module):
    """Five stride-2 3x3 convs with BatchNorm: ``[N, 3, S, S]`` -> ``[N, 16, ceil(S/32), ceil(S/32)]``."""

    def __init__(self) -> None:
        super().__init__()
        layers, c = [], 3
        for width in (8, 8, 16, 16, 16):
            layers += [nn.Conv2d(c, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
            c = width
        self.net = nn.Sequential(*layers)
        for m in self.modules():  # torchvision's ResNet init, so that features keep their scale
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _ceil32(size: int) -> int:
    return -(-size // 32)


rt.register_trunk(TINY, rt.TrunkSpec(build=TinyTrunk, dim=16, map_size=_ceil32))

SMALL = dict(segments=4, size=64, batch_size=4, epochs=7, lr=0.1, warmup_epochs=2, dropout=0.5, out_dim=16,
             bottleneck=16, embed_dim=8, trunk=TINY, device="cpu", workers=0, log_every=0, pretrained="none")


@pytest.fixture(autouse=True)
def _env(monkeypatch, tmp_path, one_thread):
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    for name in (rt.RESNET50_ENV, rt.RELATION_ENV, rt.RELATION_ALLOW_ENV, rt.TRAINED_ENV):
        monkeypatch.delenv(name, raising=False)


def write_video(path: Path, bright: bool, seed: int, n_frames: int = 8, size: int = 80) -> Path:
    """A textured video, bright (levels ~170-230) or dark (~30-90), with a square moving across."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(170, 230) if bright else rng.uniform(30, 90)
    texture = rng.normal(0, 20, size=(size * 2, size * 2, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(25))
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "20"}
        for i in range(n_frames):
            img = level + texture[i * 3:i * 3 + size, i * 2:i * 2 + size]
            y = x = (i * 7) % (size - 16)
            img[y:y + 16, x:x + 16] = 255 - level
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def write_list(path: Path, items: list[tuple[str, str]], classes: list[str] | None = None) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video", "label"] + (["class"] if classes else []))
        for i, (video, label) in enumerate(items):
            w.writerow([video, label] + ([classes[i]] if classes else []))
    return path


def make_split(root: Path, n_per_class: int, offset: int = 0, n_frames: int = 8) -> list[tuple[str, str]]:
    items = []
    for k in range(n_per_class):
        for bright in (False, True):
            name = f"v{offset + k:02d}_{'bright' if bright else 'dark'}.mp4"
            write_video(root / "videos" / name, bright, seed=1000 * bright + offset + k, n_frames=n_frames)
            items.append((f"videos/{name}", "anomalous" if bright else "normal"))
    return items


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """12 training and 8 held-out videos: dark = normal, bright = anomalous."""
    root = tmp_path_factory.mktemp("planted")
    train = write_list(root / "train.csv", make_split(root, 6))
    val = write_list(root / "val.csv", make_split(root, 4, offset=50))
    return root, train, val


# ------------------------------------------------------------------------ data


def test_segment_indices_follow_trn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = segment_indices(100, 8, train=True, rng=rng)
        assert all(12 * k <= i < 12 * (k + 1) for k, i in enumerate(idx))  # one per 12-frame segment
    assert segment_indices(100, 8, train=False).tolist() == [6, 18, 31, 43, 56, 68, 81, 93]
    short = segment_indices(3, 8, train=True, rng=rng)
    assert short.min() >= 0 and short.max() <= 2 and (np.diff(short) >= 0).all()
    assert segment_indices(3, 4, train=False).tolist() == [0, 1, 1, 2]


def test_video_list_and_classes(tmp_path):
    lst = write_list(tmp_path / "l.csv", [("a.mp4", "normal"), ("b.mp4", "1"), ("c.mp4", "anomalous")],
                     classes=["", "Arson", "Abuse"])
    rows = read_video_list(lst)
    assert rows[0] == VideoRow(str(tmp_path / "a.mp4"), "normal", "Normal")
    assert class_names(rows) == ["Normal", "Abuse", "Arson"]
    assert class_names([VideoRow("x", "normal"), VideoRow("y", "anomalous")]) == ["normal", "anomalous"]
    bad = write_list(tmp_path / "bad.csv", [("a.mp4", "anomalous")], classes=[""])
    from vadpipe.errors import ManifestError

    with pytest.raises(ManifestError, match="needs its anomaly class"):
        read_video_list(bad)


def test_optimiser_groups_and_warmup():
    cfg = TrainBackboneConfig(**{**SMALL, "lr": 1e-4, "warmup_epochs": 10})
    assert learning_rate(0, cfg, 5) == pytest.approx(1e-4 / 50)
    assert learning_rate(24, cfg, 5) == pytest.approx(1e-4 / 2)
    assert learning_rate(49, cfg, 5) == learning_rate(1000, cfg, 5) == pytest.approx(1e-4)
    from vadpipe.pipeline.trn.train import _new_classifier

    model = _new_classifier(cfg, 2)
    groups = {g["name"]: g for g in optimizer_groups(model, 5e-4)}
    assert groups["bias"]["lr_mult"] == 2 and groups["bias"]["weight_decay"] == 0
    assert groups["weight"]["weight_decay"] == 5e-4
    bns = [m for m in model.backbone.trunk.modules() if isinstance(m, nn.BatchNorm2d)]
    # partial BN: only the first BN's scale/shift train, and only it updates statistics in train mode
    assert {id(p) for p in groups["norm"]["params"]} == {id(bns[0].weight), id(bns[0].bias)}
    model.train()
    assert bns[0].training and not any(b.training for b in bns[1:])
    assert model.classifier.training


# ------------------------------------------------------------------------ training


def test_training_learns_planted_classes_and_loads_into_extractor(planted, tmp_path):
    root, train_csv, val_csv = planted
    cfg = TrainBackboneConfig(**SMALL)
    lines: list[str] = []
    res = train_backbone(read_video_list(train_csv), read_video_list(val_csv), tmp_path / "run", cfg,
                         echo=lines.append)
    losses = [h["loss"] for h in res.history]
    accs = [h["val_acc"] for h in res.history]
    assert losses[-1] < 0.5 * losses[0], losses
    assert max(accs) >= 0.75, accs  # 8 held-out videos, chance is 0.5
    assert any("val_acc" in line and "videos/s" in line for line in lines)
    ckpt = torch.load(res.best_path, weights_only=True)
    assert ckpt["config"]["relation"] == "inner-product" and ckpt["classes"] == ["normal", "anomalous"]
    assert len(ckpt["history"]) == ckpt["epoch"] or ckpt["kind"] == "best"
    assert any(k.startswith("backbone.attention.psi1") for k in ckpt["state_dict"])

    # the checkpoint loads into the extractor (strictly) and its features differ from the random build
    trained = rt.resnet50_trn(trained=res.best_path)
    assert trained.relation_trained and trained.relation_type == "inner-product"
    random_build = rt.resnet50_trn(weights=None, **trained.config())
    x = torch.randn(1, 3, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f_trained, f_random = trained(x), random_build(x)
        from vadpipe.pipeline.trn.train import build_classifier

        clf = build_classifier(ckpt["model_config"])
        clf.load_state_dict(ckpt["state_dict"])
        f_net = clf.eval().backbone(x)
    assert f_trained.shape == (1, 14, 16)
    torch.testing.assert_close(f_trained, f_net, rtol=0, atol=0)
    assert (f_trained - f_random).abs().max() > 1e-3


def _tiny_run(root: Path, out: Path, epochs: int, resume=None, **kw):
    cfg = TrainBackboneConfig(**{**SMALL, "epochs": epochs, "batch_size": 3, **kw})
    return train_backbone(read_video_list(root / "train.csv"), read_video_list(root / "val.csv"), out, cfg,
                          resume=resume, echo=lambda s: None)


def test_resume_is_exact(planted, tmp_path):
    root, _, _ = planted
    full = _tiny_run(root, tmp_path / "full", epochs=3)
    _tiny_run(root, tmp_path / "part", epochs=1)
    resumed = _tiny_run(root, tmp_path / "part", epochs=3, resume=tmp_path / "part" / "last.pt")
    a = torch.load(full.last_path, weights_only=True)
    b = torch.load(resumed.last_path, weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    assert a["history"] == b["history"]
    with pytest.raises(Exception, match="another run"):
        _tiny_run(root, tmp_path / "part", epochs=4, resume=tmp_path / "part" / "last.pt", lr=0.01)


def test_bad_videos_fail_their_own_rows(planted, tmp_path):
    root, _, _ = planted
    items = list(csv.reader(open(root / "train.csv")))[1:5]
    make_zero_byte(root / "videos" / "empty.mp4")
    make_text_as_video(root / "videos" / "text.mp4")
    items = [tuple(r) for r in items] + [("videos/empty.mp4", "normal"), ("videos/text.mp4", "anomalous"),
                                         ("videos/missing.mp4", "normal")]
    lst = write_list(root / "with_bad.csv", items)
    cfg = TrainBackboneConfig(**{**SMALL, "epochs": 2, "batch_size": 3, "workers": 1})
    lines: list[str] = []
    res = train_backbone(read_video_list(lst), [], tmp_path / "run", cfg, echo=lines.append)
    bad = {Path(f["video"]).name for f in res.failed}
    assert bad == {"empty.mp4", "text.mp4", "missing.mp4"}
    assert all(f["split"] == "train" and "VideoDecodeError" in f["error"] for f in res.failed)
    assert len(res.history) == 2 and res.best_path.is_file()
    saved = list(csv.DictReader(open(res.failed_path)))
    assert {Path(r["video"]).name for r in saved} == bad
    assert any("3 video(s) failed" in line for line in lines)
    ckpt = torch.load(res.last_path, weights_only=True)
    assert len(ckpt["failed"]) == 3


# ------------------------------------------------------------------------ CLI, registration, extraction


def test_cli_train_register_and_extract(tmp_path, monkeypatch):
    from vadpipe.cli import main
    from vadpipe.extractors.registry import get_backbone
    from vadpipe.extractors.weights import loaded_weights_sha256, read_weights_index, sha256_file

    items = make_split(tmp_path, 1, n_frames=16)
    lst = write_list(tmp_path / "train.csv", items)
    run = tmp_path / "runs" / "trn"
    args = ["train-backbone", "resnet50-trn", "--videos", str(lst), "-o", str(run), "--relation", "trn",
            "--epochs", "1", "--batch", "2", "--size", "64", "--pretrained", "none", "--device", "cpu",
            "--workers", "0", "--set", f"trunk={TINY}", "--set", "bottleneck=8"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "epoch 1/1" in res.output and "loss" in res.output and "acc" in res.output

    spec = get_backbone("resnet50-trn")
    with pytest.raises(Exception, match="vadpipe train-backbone resnet50-trn"):
        spec.build(weights=spec.weights)  # nothing registered yet (and no ImageNet file)

    res = CliRunner().invoke(main, ["weights", "import", "resnet50-trn", str(run / "best.pt")])
    assert res.exit_code == 0, res.output
    entry = read_weights_index()[rt.TRAINED_FILE_NAME]
    model = spec.build(weights=spec.weights)  # no opt-in needed now
    assert model.relation_trained and model.weights_sha256 == entry.sha256
    assert loaded_weights_sha256(spec.weights) == entry.sha256 == sha256_file(rt.trained_weights_file())

    video = write_video(tmp_path / "extract" / "clip.mp4", bright=True, seed=5, n_frames=16)
    res = CliRunner().invoke(main, ["extract", str(video.parent), "--backbone", "resnet50-trn", "--crops", "1",
                                    "-o", str(tmp_path / "feats"), "--device", "cpu", "--workers", "0", "-q"])
    assert res.exit_code == 0, res.output
    feats = list((tmp_path / "feats").rglob("*_trn.npy"))
    assert len(feats) == 1 and np.load(feats[0]).shape == (1, 14, 2048)

    # a checkpoint vadpipe extract cannot run is refused with the reason
    small = tmp_path / "small"
    CliRunner().invoke(main, args[:-4] + ["--segments", "4", "-o", str(small), "--set", f"trunk={TINY}",
                                          "--set", "out_dim=16"])
    res = CliRunner().invoke(main, ["weights", "import", "resnet50-trn", str(small / "best.pt")])
    assert res.exit_code == 2 and "--segments 16" in res.output


def test_bench_train_backbone_prints_rates_and_memory():
    from vadpipe.cli import main

    res = CliRunner().invoke(main, ["bench", "train-backbone", "--batch", "1", "--segments", "2", "--size", "32",
                                    "--steps", "1", "--device", "cpu", "--no-decode"])
    assert res.exit_code == 0, res.output
    assert "videos/s" in res.output and "frames/s" in res.output and "peak process memory" in res.output
