"""`vadpipe score`: raw videos → recorded recipe → scores.csv, events, plots, report; streaming."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers import media
from tests.helpers.paths import REPO
from tests.helpers.tiny_heads import FPS, train_tiny_sultani
from tests.helpers.tiny_heads import cli as _cli
from vadpipe.errors import ConfigError
from vadpipe.manifests.datasets import DatasetRow
from vadpipe.pipeline.extract.sources import discover
from vadpipe.pipeline.score.batch import ScoreOptions, checkpoint_recipe, score_videos
from vadpipe.pipeline.score.stream import stream_score
from vadpipe.pipeline.train.apply import load_head, score_rows
from vadpipe.pipeline.train.loop import load_checkpoint

SPEED = {"device": "cpu", "random_weights": True, "workers": 0, "batch_clips": 2}





@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A Sultani head trained with `vadpipe train` on tiny-backbone features of 8 videos."""
    return train_tiny_sultani(tmp_path_factory.mktemp("score"))


def test_checkpoint_records_the_extraction_recipe_and_a_threshold(trained) -> None:
    ckpt = load_checkpoint(trained["ckpt"])
    recipe = ckpt["feature_spec"]["extract"]
    assert recipe["backbone"] == "tiny" and recipe["config"]["crops"] == 1
    assert recipe["config"]["preset"]["crop_size"] == 32
    assert ckpt["threshold"] is not None and 0 <= ckpt["threshold"] <= 1


def test_score_writes_times_events_plots_and_fails_bad_input_alone(trained, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    video = trained["vids"] / "v3.mp4"
    out = tmp_path / "out"
    res = _cli(["score", video, bad, "--head", trained["ckpt"], "-o", out, "--device", "cpu", "--random-weights",
                "--threshold", "0.0", "--report", out / "report.html", "-q"])
    assert res.exit_code == 1, res.output  # one video failed; the other was scored
    manifest = pd.read_csv(out / "scores_manifest.csv", keep_default_na=False)
    by_name = {Path(v).name: r for v, r in zip(manifest.video, manifest.to_dict("records"))}
    assert by_name["bad.mp4"]["status"] == "failed" and "not a video" in by_name["bad.mp4"]["error"]
    assert by_name["v3.mp4"]["status"] == "ok"

    clips = pd.read_csv(out / "v3" / "scores.csv")
    n = (48 + 16 * 3) // 16
    assert list(clips.columns) == ["clip", "start_frame", "end_frame", "start_time", "end_time", "score"]
    assert len(clips) == n
    np.testing.assert_array_equal(clips.start_frame, np.arange(n) * 16)
    np.testing.assert_allclose(clips.start_time, clips.start_frame / FPS, atol=1e-6)
    np.testing.assert_allclose(clips.end_time, clips.end_frame / FPS, atol=1e-6)

    # the scores are the head's on the features stage one wrote (the `apply` path)
    loaded = load_head(trained["ckpt"], "cpu")
    feats = pd.read_csv(out / "features" / "features.csv")
    row = feats[feats.video == str(video)].iloc[0]
    want = score_rows(loaded, [DatasetRow(str(video), row.feature_path, "normal")], out / "features", "cpu")[str(video)]
    np.testing.assert_allclose(clips.score, want, rtol=1e-5)

    # threshold 0: every clip is anomalous, so one event spans the whole video
    events = json.loads((out / "events.json").read_text())
    assert events["threshold"] == 0.0 and events["threshold_source"] == "--threshold"
    (ev,) = events["videos"]["v3"]["events"]
    assert ev["start_time"] == 0.0 and ev["end_time"] == pytest.approx(n * 16 / FPS)
    assert (out / "v3" / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert "v3" in html and "data:image/png;base64" in html


def test_features_are_reused_and_default_threshold_is_the_checkpoints(trained, tmp_path: Path) -> None:
    jobs = discover([trained["vids"] / "v2.mp4", trained["vids"] / "v5.mp4"])
    first = score_videos(jobs, trained["ckpt"], tmp_path, options=ScoreOptions(plots=False), speed=SPEED,
                         progress=False)
    again = score_videos(jobs, trained["ckpt"], tmp_path, options=ScoreOptions(plots=False), speed=SPEED,
                         progress=False)
    assert first.extraction.ok == 2 and again.extraction.ok == 0 and again.extraction.skipped == 2
    assert first.threshold == pytest.approx(load_checkpoint(trained["ckpt"])["threshold"])
    assert first.threshold_source.startswith("checkpoint")
    for a, b in zip(first.videos, again.videos):
        np.testing.assert_array_equal(a.scores, b.scores)


def test_mismatched_backbone_is_refused_before_decoding(trained, tmp_path: Path) -> None:
    res = _cli(["score", trained["vids"] / "v1.mp4", "--head", trained["ckpt"], "-o", tmp_path, "--backbone", "i3d",
                "--device", "cpu"])
    assert res.exit_code == 2 and "trained on tiny features" in res.output
    assert not (tmp_path / "features").exists()

    # a checkpoint without a recorded recipe: the named backbone must give the head's feature size
    loaded = load_head(trained["ckpt"], "cpu")
    loaded.feature_spec.pop("extract")
    with pytest.raises(ConfigError, match="takes 8-D features; backbone 'i3d' gives 1024-D"):
        checkpoint_recipe(loaded, backbone="i3d")
    with pytest.raises(ConfigError, match="pass --backbone"):
        loaded.feature_spec["backbone"] = "unknown"
        checkpoint_recipe(loaded)
    assert checkpoint_recipe(loaded, backbone="tiny").backbone == "tiny"


def test_stream_gives_the_batch_scores_for_a_causal_head(trained, tmp_path: Path) -> None:
    video = trained["vids"] / "v6.mp4"
    batch = score_videos(discover([video]), trained["ckpt"], tmp_path / "batch", options=ScoreOptions(plots=False),
                         speed=SPEED, progress=False)
    lines: list[str] = []
    streamed = stream_score(str(video), trained["ckpt"], tmp_path / "stream", speed=SPEED, echo=lines.append)
    assert streamed.causal and streamed.exit_code == 0
    np.testing.assert_array_equal(streamed.scores, batch.videos[0].scores)
    clip_lines = [ln for ln in lines if ln.startswith("clip ")]
    assert len(clip_lines) == streamed.scores.size and "provisional" not in clip_lines[0]
    assert len(streamed.latencies) == streamed.scores.size and all(t >= 0 for t in streamed.latencies)
    assert pd.read_csv(tmp_path / "stream" / "v6" / "scores.csv").score.size == streamed.scores.size
    # the same file: clips, frames and times to the byte (the stream's clip times are its own)
    assert (tmp_path / "stream" / "v6" / "scores.csv").read_bytes() == (tmp_path / "batch" / "v6" /
                                                                         "scores.csv").read_bytes()


def test_stream_from_a_pipe(trained, tmp_path: Path) -> None:
    """MPEG-TS on standard input, clip by clip, through the CLI in a subprocess."""
    ts = tmp_path / "v.ts"
    media.make_video(ts, n_frames=64, fps=FPS, codec="mpeg2video", seed=3)
    env = {**os.environ, "VADPIPE_PLUGINS": "tests.helpers.tiny_backbone", "PYTHONPATH": str(REPO)}
    with open(ts, "rb") as stdin:
        proc = subprocess.run([sys.executable, "-m", "vadpipe.cli", "score", "--stream", "-", "--head",
                               str(trained["ckpt"]), "-o", str(tmp_path / "o"), "--device", "cpu", "--random-weights"],
                              stdin=stdin, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sum(ln.startswith("clip ") for ln in proc.stdout.splitlines()) == 4
    assert (tmp_path / "o" / "stdin" / "scores.csv").exists()


def test_stream_of_garbage_fails_with_the_reason(trained, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    result = stream_score(str(bad), trained["ckpt"], tmp_path, speed=SPEED, echo=None)
    assert result.exit_code == 1 and "VideoDecodeError" in result.error


def test_score_prints_the_gt_warnings_of_eval(trained, tmp_path: Path) -> None:
    """GT past a video's scored frames is a WARNING line in `vadpipe score`, as in `vadpipe eval`."""
    videos = [trained["vids"] / "v1.mp4", trained["vids"] / "v2.mp4"]  # 64 and 80 frames: 4 and 5 clips
    gt = tmp_path / "gt.csv"
    gt.write_text("video,start,end\nv1,10,30\nv2,70,400\n")  # v2's interval runs past its 80 frames
    res = _cli(["score", *videos, "--head", trained["ckpt"], "-o", tmp_path / "out", "--device", "cpu",
                "--random-weights", "--gt", f"csv:{gt}", "--no-plots", "-q"])
    assert res.exit_code == 0, res.output
    assert "WARNING: the GT of 1 video(s) reaches past their scored" in res.output and "v2" in res.output
