"""`vadpipe bench score`: cold start (a fresh `score --stream` process to its first clip score)
and throughput of `score_videos`, on the tiny test backbone and on the real demo head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import media
from tests.helpers.tiny_heads import cli as _cli
from tests.helpers.tiny_heads import train_tiny_sultani
from vadpipe.errors import WeightsNotFoundError
from vadpipe.pipeline.score import batch, bench, stream
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


def test_precision_is_set_in_memory_and_the_checkpoint_is_read_once(tiny_head: Path, monkeypatch) -> None:
    """`--precision` changes the loaded head's recipe, never a file: the checkpoint keeps its
    bytes, nothing is saved, the file is read once for the whole bench, and stage one runs
    at the new precision (so does the cold-start process, told with --recipe-precision)."""
    before = tiny_head.read_bytes()
    loads: list[Path] = []
    saves: list[object] = []
    precisions: list[str] = []
    cold_starts: list[dict] = []
    real_load, real_save, real_extract = torch.load, torch.save, batch.extract

    def load(f, *args, **kwargs):
        loads.append(Path(f))
        return real_load(f, *args, **kwargs)

    def save(obj, f, *args, **kwargs):
        saves.append(f)
        return real_save(obj, f, *args, **kwargs)

    def extract(jobs, out_dir, config, **kwargs):
        precisions.append(config.precision)
        return real_extract(jobs, out_dir, config, **kwargs)

    def cold_start(*args, **kwargs) -> bench.ColdStart:
        cold_starts.append(kwargs)
        return bench.ColdStart(ready_s=1.0, first_score_s=1.0, first_line="clip     0")

    monkeypatch.setattr(torch, "load", load)
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(batch, "extract", extract)
    monkeypatch.setattr(bench, "measure_cold_start", cold_start)
    lines: list[str] = []
    result = run_score_bench(head=tiny_head, seconds=1, device="cpu", runs=2, precision="bf16", random_weights=True,
                             echo=lines.append)
    assert len(result.runs) == 2 and precisions == ["bf16", "bf16"]
    assert "precision bf16" in "\n".join(lines) and cold_starts[0]["precision"] == "bf16"
    assert loads == [tiny_head] and saves == []
    assert tiny_head.read_bytes() == before
    assert load_checkpoint(tiny_head)["feature_spec"]["extract"]["config"]["precision"] == "fp32"
    with bench_checkpoint(tiny_head) as path:
        assert path == tiny_head


def test_the_cold_start_process_takes_the_precision(tiny_head: Path, tmp_path: Path, monkeypatch) -> None:
    """`score --recipe-precision` (hidden, for the bench): stage one of that run uses it."""
    configs = []
    real_model = stream.FeatureModel

    def model(spec, config, device):
        configs.append(config)
        return real_model(spec, config, device)

    monkeypatch.setattr(stream, "FeatureModel", model)
    video = tmp_path / "v.mp4"
    media.make_video(video, n_frames=32, fps=25, seed=1)
    res = _cli(["score", "--stream", video, "--head", tiny_head, "-o", tmp_path / "o", "--device", "cpu",
                "--random-weights", "--recipe-precision", "bf16"])
    assert res.exit_code == 0, res.output
    assert [c.precision for c in configs] == ["bf16"]


def test_bench_score_cli(tiny_head: Path, monkeypatch) -> None:
    res = _cli(["bench", "score", "--head", tiny_head, "--seconds", 1, "--device", "cpu", "--runs", 1,
                "--stages", "throughput", "--random-weights"])
    assert res.exit_code == 0, res.output
    assert "run 1:" in res.output and "cold start" not in res.output
    res = _cli(["bench", "score", "--stages", "decode"])
    assert res.exit_code == 2 and "unknown stage" in res.output


def test_bench_score_stream_prints_the_live_latency(tiny_head: Path) -> None:
    """`bench score --stream`: the output's lines (no timing is checked)."""
    res = _cli(["bench", "score", "--stream", "--head", tiny_head, "--seconds", 1, "--device", "cpu",
                "--random-weights", "--buffer", 32])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "served as MPEG-TS over loopback HTTP at real-time pace" in out and "buffer 32 frames" in out
    assert "stream latency (clip's last frame in the buffer -> its score) over 1 clips scored while the source was live: p50 " in out
    assert " ms, p99 " in out and " ms, max " in out and "first clip, with start-up" in out
    assert "frames: 30 received, " in out and " dropped (" in out
    assert "on a GPU: vadpipe bench score --stream --device cuda --seconds 1" in out
    assert "cold start" not in out and "run 1:" not in out


@pytest.mark.slow
def test_bench_score_with_the_bundled_demo_head(tmp_path: Path) -> None:
    """The default head: the real Kinetics-400 I3D, 1 crop (skipped without its weights)."""
    from vadpipe.extractors.i3d import i3d_kinetics400

    try:
        i3d_kinetics400()
    except WeightsNotFoundError as e:
        pytest.skip(f"Kinetics-400 I3D weights not installed: {e}")
    lines: list[str] = []
    result = run_score_bench(seconds=1.1, device="cpu", runs=1, echo=lines.append)
    assert result.cold_start is not None and result.cold_start.first_score_s > 0
    assert result.runs[0].clips == 2  # 33 frames: two 16-frame clips
    assert "bundled demo head (i3d, 1 crop(s), precision fp32)" in "\n".join(lines)
