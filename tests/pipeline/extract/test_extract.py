"""End-to-end stage one on small videos with the tiny test backbone: outputs, manifest
rows, bad inputs, resume, --force, worker processes and a killed run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tests.helpers.tiny_backbone as tiny
from tests.helpers import media
from tests.helpers.paths import REPO
from vadpipe.cli import main
from vadpipe.errors import ConfigError
from vadpipe.manifests.features import read_manifest
from vadpipe.pipeline.extract.clips import ClipSpec
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.decode import open_video
from vadpipe.pipeline.extract.runner import extract
from vadpipe.pipeline.extract.sources import discover
from vadpipe.pipeline.extract.transforms import normalize_clips, preprocess_clips

CFG = ExtractConfig(backbone="tiny", crops=5, random_weights=True, device="cpu", batch_clips=3)


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    media.make_video(root / "a.mp4", n_frames=50, seed=1)            # 3 clips, tail of 2 dropped
    media.make_video(root / "sub" / "b.avi", n_frames=33, seed=2)    # 2 clips
    return root


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory, videos: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    made = {
        "zero": media.make_zero_byte(root / "zero.mp4"),
        "text": media.make_text_as_video(root / "text.mp4"),
        "audio": media.make_audio_only(root / "audio.m4a"),
        "short": media.make_video(root / "short.mp4", n_frames=10, seed=3),
        "truncated": media.make_truncated(videos / "a.mp4", root / "truncated.mp4", 0.5),
    }
    return {k: Path(v) for k, v in made.items()}


def _reference_features(path: Path, cfg: ExtractConfig) -> np.ndarray:
    """Independent path: decode everything with PyAV, slice clips, run the model directly."""
    with open_video(path, backend="pyav") as r:
        frames = r.read_all()
    clips = [frames[s:s + 16] for s in range(0, len(frames) - 15, 16)]
    x = preprocess_clips(torch.from_numpy(np.stack(clips)), tiny.TINY_PRESET, cfg.crops)
    n, k = x.shape[:2]
    model = tiny.TinyBackbone().eval()
    with torch.no_grad():
        return model(normalize_clips(x.flatten(0, 1), tiny.TINY_PRESET)).reshape(n, k, -1).numpy()


def test_features_match_an_independent_computation(videos: Path, tmp_path: Path) -> None:
    summary = extract(discover([videos]), tmp_path, CFG, progress=False)
    assert (summary.ok, summary.failed, summary.exit_code) == (2, 0, 0)
    rows = {Path(r.video).name: r for r in read_manifest(tmp_path / "features.csv")}
    a = np.load(tmp_path / "a_tiny.npy")
    assert a.shape == (3, 5, tiny.TINY_DIM) and a.dtype == np.float32
    np.testing.assert_allclose(a, _reference_features(videos / "a.mp4", CFG), rtol=0, atol=1e-6)
    b = np.load(tmp_path / "sub" / "b_tiny.npy")
    assert b.shape == (2, 5, tiny.TINY_DIM)
    ra = rows["a.mp4"]
    assert (ra.status, ra.n_frames, ra.n_clips, ra.crops, ra.dim, ra.feature_path) == ("ok", 50, 3, 5, 8, "a_tiny.npy")
    assert ra.decoder.split()[0] in ("decord", "pyav") and ra.weights_sha256 == "random"
    run_files = list(tmp_path.glob("extract-*.json"))
    assert len(run_files) == 1 and '"crops": 5' in run_files[0].read_text()


def test_tail_pad_adds_a_clip(videos: Path, tmp_path: Path) -> None:
    cfg = ExtractConfig(**{**CFG.__dict__, "clip": ClipSpec(tail="pad")})
    extract(discover([videos / "a.mp4"]), tmp_path, cfg, progress=False)
    assert np.load(tmp_path / "a_tiny.npy").shape[0] == 4


def test_per_crop_layout(videos: Path, tmp_path: Path) -> None:
    cfg = ExtractConfig(**{**CFG.__dict__, "layout": "per-crop"})
    extract(discover([videos]), tmp_path, cfg, progress=False)
    single = _reference_features(videos / "a.mp4", CFG)
    for k in range(5):
        np.testing.assert_allclose(np.load(tmp_path / f"a__{k}.npy"), single[:, k], atol=1e-6)
    (row,) = [r for r in read_manifest(tmp_path / "features.csv") if r.video.endswith("a.mp4")]
    assert row.feature_path == "a__{k}.npy" and row.layout == "per-crop"


def test_bad_inputs_fail_their_own_rows(videos: Path, bad_videos: dict[str, Path], tmp_path: Path) -> None:
    jobs = discover([videos, *bad_videos.values()])
    summary = extract(jobs, tmp_path, CFG, progress=False)
    assert summary.ok == 2 and summary.failed == len(bad_videos) and summary.exit_code == 1
    rows = {Path(r.video).stem: r for r in read_manifest(tmp_path / "features.csv")}
    for name in ("zero", "text", "audio", "short", "truncated"):
        assert rows[name].status == "failed", name
        assert rows[name].error and rows[name].feature_path == ""
    assert "VideoTooShortError" in rows["short"].error and "--tail pad" in rows["short"].error
    assert "VideoDecodeError" in rows["zero"].error
    assert not list(tmp_path.rglob("*.vadpipe-tmp-*"))
    assert sorted(p.name for p in tmp_path.rglob("*.npy")) == ["a_tiny.npy", "b_tiny.npy"]


def test_resume_skips_done_work_and_force_redoes_it(videos: Path, tmp_path: Path) -> None:
    jobs = discover([videos])
    extract(jobs, tmp_path, CFG, progress=False)
    mtime = (tmp_path / "a_tiny.npy").stat().st_mtime_ns
    again = extract(jobs, tmp_path, CFG, progress=False)
    assert (again.ok, again.skipped, again.clips) == (0, 2, 0)
    assert (tmp_path / "a_tiny.npy").stat().st_mtime_ns == mtime
    # a damaged output is detected and recomputed
    (tmp_path / "sub" / "b_tiny.npy").write_bytes(b"garbage")
    repaired = extract(jobs, tmp_path, CFG, progress=False)
    assert (repaired.ok, repaired.skipped) == (1, 1)
    np.load(tmp_path / "sub" / "b_tiny.npy")
    forced = extract(jobs, tmp_path, CFG, force=True, progress=False)
    assert (forced.ok, forced.skipped) == (2, 0)
    # settings that change the numbers invalidate earlier rows
    changed = extract(jobs, tmp_path, ExtractConfig(**{**CFG.__dict__, "crops": 1}), progress=False)
    assert (changed.ok, changed.skipped) == (2, 0)
    assert np.load(tmp_path / "a_tiny.npy").shape == (3, 1, tiny.TINY_DIM)


def test_worker_processes_give_identical_results(videos: Path, tmp_path: Path) -> None:
    jobs = discover([videos])
    extract(jobs, tmp_path / "w0", CFG, progress=False)
    extract(jobs, tmp_path / "w2", ExtractConfig(**{**CFG.__dict__, "workers": 2}), progress=False)
    for rel in ("a_tiny.npy", "sub/b_tiny.npy"):
        np.testing.assert_array_equal(np.load(tmp_path / "w0" / rel), np.load(tmp_path / "w2" / rel))


def test_cli_exit_codes_and_summary(videos: Path, bad_videos: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    runner = CliRunner()
    args = ["extract", "--backbone", "tiny", "--random-weights", "--crops", "1", "--device", "cpu",
            "--workers", "0", "-q", "-o", str(tmp_path)]
    ok = runner.invoke(main, args + [str(videos)])
    assert ok.exit_code == 0, ok.output
    assert "2 extracted, 0 already done, 0 failed" in ok.output
    bad = runner.invoke(main, args + [str(bad_videos["zero"])])
    assert bad.exit_code == 1 and "failed: " in bad.output and "zero.mp4" in bad.output
    missing = runner.invoke(main, args + [str(tmp_path / "nope.mp4")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
    unknown = runner.invoke(main, ["extract", "--backbone", "nope", str(videos), "-o", str(tmp_path)])
    assert unknown.exit_code == 2 and "registered backbones" in unknown.output


def test_killed_run_resumes_to_the_same_results(tmp_path: Path) -> None:
    src = tmp_path / "videos"
    for i in range(6):
        media.make_video(src / f"v{i}.mp4", n_frames=32, seed=10 + i)
    env = {**os.environ, "VADPIPE_PLUGINS": "tests.helpers.tiny_backbone", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "vadpipe.cli", "extract", str(src), "--backbone", "tiny", "--random-weights",
           "--crops", "1", "--device", "cpu", "--workers", "0", "--batch-clips", "1", "-q"]
    clean = subprocess.run(cmd + ["-o", str(tmp_path / "clean")], env=env, cwd=REPO, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(cmd + ["-o", str(out)], env={**env, "VADPIPE_TINY_SLEEP": "0.3"}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.glob("v*_tiny.npy"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_manifest(out / "features.csv")  # the manifest is whole even after SIGKILL
    done = sum(r.status == "ok" for r in before)
    assert 1 <= done < 6, "the kill should land part-way through the run"
    assert len(before) == 6 and all(r.status in ("ok", "skipped") for r in before)

    resumed = subprocess.run(cmd + ["-o", str(out)], env=env, cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{6 - done} extracted, {done} already done" in resumed.stderr
    rows = {Path(r.video).name: r for r in read_manifest(out / "features.csv")}
    assert len(rows) == 6 and all(r.status == "ok" for r in rows.values())
    for i in range(6):
        np.testing.assert_array_equal(np.load(out / f"v{i}_tiny.npy"), np.load(tmp_path / "clean" / f"v{i}_tiny.npy"))
    assert not list(out.rglob("*.vadpipe-tmp-*"))


def test_cli_preset_and_overrides_reach_the_run_config(videos: Path, tmp_path: Path) -> None:
    import json

    args = ["extract", str(videos / "a.mp4"), "--backbone", "tiny", "--random-weights", "--device", "cpu",
            "--workers", "0", "-q", "--crops", "1"]
    res = CliRunner().invoke(main, args + ["-o", str(tmp_path / "g"), "--preset", "gowtham-rtfm"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "g").glob("extract-*.json")
    preset = json.loads(run.read_text())["config"]["preset"]
    assert (preset["resize"], preset["crop_order"], preset["interpolation"]) == ([256, 340], "gowtham", "lanczos")
    assert (preset["crop_size"], preset["value_range"]) == (32, [-1.0, 1.0])  # the backbone's own
    res = CliRunner().invoke(main, args + ["-o", str(tmp_path / "r"), "--resize", "48x64", "--crop-order", "gowtham"])
    assert res.exit_code == 0, res.output
    (run,) = (tmp_path / "r").glob("extract-*.json")
    preset = json.loads(run.read_text())["config"]["preset"]
    assert (preset["resize"], preset["crop_order"], preset["crop_size"]) == ([48, 64], "gowtham", 32)
    bad = CliRunner().invoke(main, args + ["-o", str(tmp_path / "x"), "--resize", "big"])
    assert bad.exit_code == 2 and "--resize takes N or HxW" in bad.output


def test_node_backbones_write_nodes_per_clip(videos: Path, tmp_path: Path) -> None:
    cfg = ExtractConfig(backbone="tiny-nodes", crops=1, random_weights=True, device="cpu")
    summary = extract(discover([videos / "a.mp4"]), tmp_path, cfg, progress=False)
    assert summary.exit_code == 0, summary.failures
    feats = np.load(tmp_path / "a_nodes.npy")
    assert feats.shape == (3, 3, tiny.TINY_DIM)  # [n_clips, nodes, D]
    (row,) = read_manifest(tmp_path / "features.csv")
    assert (row.crops, row.dim) == (3, tiny.TINY_DIM)
    assert extract(discover([videos / "a.mp4"]), tmp_path, cfg, progress=False).skipped == 1  # intact on resume
    with pytest.raises(ConfigError, match="use --crops 1"):
        extract(discover([videos / "a.mp4"]), tmp_path, ExtractConfig(**{**cfg.__dict__, "crops": 5}), progress=False)


def test_cli_folder_without_videos_is_one_error_line(tmp_path: Path) -> None:
    """An input with no video in it is a usage error (exit 2, one `error:` line, through the
    CLI's single error wrapper), and nothing is written."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a video")
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--backbone",
                                    "tiny", "--random-weights", "--device", "cpu", "-q"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().startswith("error: no videos found in") and "Traceback" not in res.output
    assert not (tmp_path / "out" / "features.csv").exists()
