"""`vadpipe bench extract` runs every stage and reports what it measured (no timing asserts)."""

from __future__ import annotations

from click.testing import CliRunner

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from vadpipe.cli import main
from vadpipe.pipeline.benchmark import make_synthetic_video
from vadpipe.pipeline.extract.decode import open_video


def test_synthetic_video_is_what_it_claims(tmp_path) -> None:
    path = make_synthetic_video(tmp_path / "s.mp4", seconds=1.0, width=96, height=64, fps=30)
    with open_video(path, backend="pyav") as r:
        frames = r.read_all()
        assert frames.shape == (30, 64, 96, 3) and r.info.fps == 30
    assert frames[0].std() > 0 and not (frames[0] == frames[1]).all()  # textured and moving


def test_bench_extract_prints_each_stage(tmp_path) -> None:
    video = make_synthetic_video(tmp_path / "s.mp4", seconds=2.2, width=128, height=96)
    result = CliRunner().invoke(main, ["bench", "extract", str(video), "--backbone", "tiny", "--random-weights",
                                       "--device", "cpu", "--crops", "5", "--model-iters", "1", "--workers", "0"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for stage in ("decode (decord)", "decode (pyav)", "preprocess (resize)", "model (fp32)", "end to end"):
        (line,) = [ln for ln in lines if ln.startswith(stage)]
        assert "/s" in line
    (e2e,) = [ln for ln in lines if ln.startswith("end to end")]
    assert "(4 clips in" in e2e  # 66 frames -> 4 complete 16-frame clips


def test_bench_train_reports_steps_memory_and_schedule() -> None:
    result = CliRunner().invoke(main, ["bench", "train", "--head", "sultani", "--dim", "64", "--crops", "1",
                                       "--steps", "2", "--device", "cpu", "--set", "batch_size=4"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("head sultani: batch 4 normal + 4 abnormal videos × 1 crops × 32 segments × 64")
    assert lines[1].startswith("train step (sultani)") and "(2 steps in" in lines[1]
    assert lines[2].startswith("peak process memory")
    assert lines[3].startswith("full official schedule: 20000 steps")


def test_bench_extract_scaling_prints_rates_efficiency_and_utilisation(tmp_path) -> None:
    video = make_synthetic_video(tmp_path / "s.mp4", seconds=1.1, width=96, height=64)  # 33 frames: 2 clips
    result = CliRunner().invoke(main, ["bench", "extract", str(video), "--devices", "cpu,cpu", "--videos", "3",
                                       "--backbone", "tiny", "--random-weights", "--crops", "1", "--workers", "0"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"videos: 3 links to {video}"
    (one,) = [ln for ln in lines if ln.startswith("1 device (cpu)")]
    (two,) = [ln for ln in lines if ln.startswith("2 devices (cpu,cpu)")]
    for line in (one, two):
        assert "clips/s" in line and "(6 clips in" in line and "GPU util n/a" in line
    per_device = [ln.split()[0] for ln in lines if ln.startswith("  cpu#")]
    assert per_device == ["cpu#0", "cpu#1"]
    (eff,) = [ln for ln in lines if ln.startswith("scaling efficiency")]
    assert "/ (2 ×" in eff


def test_bench_extract_takes_a_folder_only_for_scaling(tmp_path) -> None:
    result = CliRunner().invoke(main, ["bench", "extract", str(tmp_path), "--backbone", "tiny"])
    assert result.exit_code == 2 and "a folder only with --gpus/--devices" in result.output
