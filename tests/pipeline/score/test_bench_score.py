"""`vadpipe bench score`: cold start (a fresh `score --stream` process to its first clip score)
and throughput of `score_videos`, on the tiny test backbone and on the real demo head."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny_heads import cli as _cli
from tests.helpers.tiny_heads import train_tiny_sultani
from vadpipe.errors import WeightsNotFoundError
from vadpipe.pipeline.score.bench import bench_checkpoint, run_score_bench
from vadpipe.pipeline.train.loop import load_checkpoint


@pytest.fixture(scope="module")
def tiny_head(tmp_path_factory) -> Path:
    """A Sultani head trained with `vadpipe train` on tiny-backbone features (recipe recorded)."""
    return train_tiny_sultani(tmp_path_factory.mktemp("bench_score"), n_videos=6, steps=4)["ckpt"]


def test_cold_start_and_throughput_on_the_tiny_backbone(tiny_head: Path, monkeypatch) -> None:
    monkeypatch.setenv("VADPIPE_PLUGINS", "tests.helpers.tiny_backbone")  # the cold-start process registers "tiny" too
    lines: list[str] = []
    result = run_score_bench(head=tiny_head, seconds=2, device="cpu", runs=2, random_weights=True, echo=lines.append)
    cs = result.cold_start
    assert cs is not None and 0 < cs.ready_s <= cs.first_score_s < 120
    assert cs.first_line.startswith("clip     0")
    assert result.video_seconds == pytest.approx(2.0) and len(result.runs) == 2
    for run in result.runs:
        assert run.clips == 60 // 16 and 0 < run.stage_one_s <= run.total_s and run.head_s >= 0
    assert result.per_minute(result.runs[0].total_s) == pytest.approx(result.runs[0].total_s * 30)
    text = "\n".join(lines)
    assert "generated 320x240 H.264, 2 s at 30 fps" in text and "device: cpu" in text
    assert "cold start: first clip score" in text and "per minute of video" in text


def test_precision_is_set_in_a_copy_of_the_checkpoint(tiny_head: Path, tmp_path: Path) -> None:
    with bench_checkpoint(tiny_head, "bf16", tmp_path) as path:
        assert path != tiny_head
        assert load_checkpoint(path)["feature_spec"]["extract"]["config"]["precision"] == "bf16"
    assert load_checkpoint(tiny_head)["feature_spec"]["extract"]["config"]["precision"] == "fp32"
    with bench_checkpoint(tiny_head, None, tmp_path) as path:
        assert path == tiny_head


def test_bench_score_cli(tiny_head: Path, monkeypatch) -> None:
    res = _cli(["bench", "score", "--head", tiny_head, "--seconds", 1, "--device", "cpu", "--runs", 1,
                "--stages", "throughput", "--random-weights"])
    assert res.exit_code == 0, res.output
    assert "run 1:" in res.output and "cold start" not in res.output
    res = _cli(["bench", "score", "--stages", "decode"])
    assert res.exit_code == 2 and "unknown stage" in res.output


def test_bench_score_with_the_bundled_demo_head(tmp_path: Path) -> None:
    """The default head: the real Kinetics-400 I3D, 1 crop (skipped without its weights)."""
    from vadpipe.extractors.i3d import i3d_kinetics400

    try:
        i3d_kinetics400(pretrained=True)
    except WeightsNotFoundError as e:
        pytest.skip(f"Kinetics-400 I3D weights not installed: {e}")
    lines: list[str] = []
    result = run_score_bench(seconds=1.1, device="cpu", runs=1, echo=lines.append)
    assert result.cold_start is not None and result.cold_start.first_score_s > 0
    assert result.runs[0].clips == 2  # 33 frames: two 16-frame clips
    assert "bundled demo head (i3d, 1 crop(s), precision fp32)" in "\n".join(lines)
