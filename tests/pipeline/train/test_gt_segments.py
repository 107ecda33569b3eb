"""Segment scores (Sultani's 32 a video) evaluated on the video's real frame count, as his
``Evaluate_Anomaly_Detector.m`` maps them, checked against a literal re-implementation of the
MATLAB loop and on the real UCF-Crime GT and C3D segment features."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from tests.helpers.shared_data import shared_fixture
from vadpipe.cli import main
from vadpipe.errors import ConfigError, EvaluationError
from vadpipe.heads.sultani import SultaniConfig, SultaniHead
from vadpipe.manifests.datasets import DatasetRow, write_dataset
from vadpipe.manifests.features import FeatureRow, write_manifest
from vadpipe.pipeline.train.apply import (
    evaluate_scores,
    frame_counts_for,
    read_frame_counts,
    scores_are_segments,
)
from vadpipe.pipeline.train.metrics import FrameCount, segment_scores_to_frames, ucf_crime_gt
from vadpipe.pipeline.train.segments import segments_for_manifest

CLIP = 16

#: The three sample videos whose GT lies past 32 × 16 = 512 frames, with STAND-IN frame counts
#: (the real ones are not in the fixtures): a little past each annotated end
#: (Explosion 1005-1245, Shooting 1680-2000, Shoplifting 570-840).
LATE = {"Explosion008_x264": 1400, "Shooting033_x264": 2210, "Shoplifting028_x264": 1000}
#: Stand-in frame counts of the other sample videos (again only consistent with their GT).
OTHERS = {"Explosion025_x264": 600, "Normal_Videos_006_x264": 900, "Normal_Videos_024_x264": 750,
          "RoadAccidents002_x264": 480, "RoadAccidents022_x264": 390, "RoadAccidents123_x264": 420,
          "Shooting008_x264": 460}


def _matlab_round(x: Fraction) -> int:
    """MATLAB ``round`` of a positive number: halves away from zero."""
    return int(x + Fraction(1, 2)) if x >= 0 else -int(-x + Fraction(1, 2))


def _matlab_reference(predictions: list[float], actual_frames: int, n_files: int) -> np.ndarray:
    """Evaluate_Anomaly_Detector.m lines 47-75, 1-based, with exact arithmetic for linspace.

    Written from the MATLAB text, independently of vadpipe: ``Detection_score_32shots`` of
    ``nFrames_C3D`` zeros, the ``for ishots`` loop with its (never true) last-shot branch and
    its ``ee < ss`` branch, then ``Final_score`` padded with ``repmat(D(end), ...)``.
    """
    n = len(predictions)
    n_frames_c3d = n_files * 16
    d = [0.0] * (n_frames_c3d + 1)  # index 0 unused: MATLAB is 1-based
    shots = [_matlab_round(1 + Fraction(k * (n_files - 1), n)) for k in range(n + 1)]
    p_c = 0
    for ishots in range(1, len(shots)):  # 1 .. length(Thirty2_shots) - 1
        p_c += 1
        ss = shots[ishots - 1]
        ee = shots[ishots] - 1
        if ishots == len(shots):
            ee = shots[ishots]
        lo, hi = ((ss - 1) * 16 + 1, (ss - 1) * 16 + 1 + 15) if ee < ss else ((ss - 1) * 16 + 1, (ee - 1) * 16 + 16)
        for f in range(lo, hi + 1):
            d[f] = predictions[p_c - 1]
    det = d[1:]
    final = det + [det[-1]] * max(actual_frames - len(det), 0)
    return np.array(final)


@pytest.mark.parametrize("n_segments", [32, 5, 10])
def test_mapping_equals_the_matlab_loop(n_segments: int) -> None:
    rng = np.random.default_rng(n_segments)
    for n_clips in list(range(1, 80)) + [100, 257, 1000]:
        for extra in (0, 1, 9, 15, 47):
            scores = rng.random(n_segments)
            n_frames = n_clips * CLIP + extra
            ours = segment_scores_to_frames(scores, n_frames, n_clips=n_clips)
            ref = _matlab_reference(scores.tolist(), n_frames, n_clips)
            np.testing.assert_array_equal(ours, ref, err_msg=f"N={n_segments} clips={n_clips} frames={n_frames}")
            if extra < CLIP:  # without n_clips, the clips a dropped tail leaves: frames // 16
                np.testing.assert_array_equal(segment_scores_to_frames(scores, n_frames), ref)


def test_the_last_clip_and_tail_keep_zero_unless_told() -> None:
    scores = np.linspace(0.1, 1.0, 32)
    zero = segment_scores_to_frames(scores, 100 * CLIP + 7)  # 100 clips: no segment covers clip 100
    assert zero.shape == (1607,) and not zero[99 * CLIP:].any() and zero[99 * CLIP - 1] == scores[-1]
    last = segment_scores_to_frames(scores, 100 * CLIP + 7, uncovered="last")
    assert (last[99 * CLIP:] == scores[-1]).all() and np.array_equal(last[:99 * CLIP], zero[:99 * CLIP])
    small = segment_scores_to_frames(scores, 17 * CLIP)  # 17 clips: the last (empty) segment covers the last clip
    assert small[-1] == scores[-1]
    with pytest.raises(EvaluationError, match="hold no 16-frame clip"):
        segment_scores_to_frames(scores, 15)
    with pytest.raises(EvaluationError, match="do not fit in 100 frames"):
        segment_scores_to_frames(scores, 100, n_clips=20)


def test_real_gt_of_late_videos_is_kept_on_their_frame_counts() -> None:
    ann = shared_fixture("ucf_crime/Temporal_Anomaly_Annotation.txt")
    rng = np.random.default_rng(0)
    scores = {v: rng.random(32) for v in {**LATE, **OTHERS}}
    gt = f"ucf:{ann}"
    snippet = evaluate_scores(scores, gt)  # each segment read as one 16-frame snippet: 512 frames a video
    (warning,) = snippet.warnings
    assert "3 lose all of it and count as normal" in warning
    assert all(v in warning for v in LATE) and snippet.n_frames == 10 * 512
    counts = {v: FrameCount(n) for v, n in {**LATE, **OTHERS}.items()}
    seg = evaluate_scores(scores, gt, segments=counts, convention="sultani")
    assert seg.warnings == [] and seg.n_frames == sum(LATE.values()) + sum(OTHERS.values())
    masks = ucf_crime_gt(ann, {v: n for v, n in LATE.items()}, convention="sultani")
    assert [int(masks[v].sum()) for v in LATE] == [1245 - 1005 + 1, 2000 - 1680 + 1, 840 - 570 + 1]
    # the metric is the one of the MATLAB frame scores on that GT
    from vadpipe.pipeline.train.metrics import evaluate

    allgt = ucf_crime_gt(ann, {v: n for v, n in {**LATE, **OTHERS}.items()}, convention="sultani")
    ref = {v: _matlab_reference(scores[v].tolist(), n, n // CLIP) for v, n in {**LATE, **OTHERS}.items()}
    assert evaluate(ref, allgt).auc == seg.auc
    with pytest.raises(EvaluationError, match=r"2 of 10 video\(s\) have segment scores but no frame count: "
                                              r"Explosion008_x264, Shooting033_x264;"):
        evaluate_scores(scores, gt, segments={v: c for v, c in counts.items() if v not in
                                              ("Explosion008_x264", "Shooting033_x264")})


def test_frame_counts_from_a_csv_or_features_csv(tmp_path: Path) -> None:
    (tmp_path / "f.csv").write_text("video,frames\n/data/a.mp4,400\nb,0\n")
    assert read_frame_counts(tmp_path / "f.csv") == {"a": FrameCount(400)}
    write_manifest(tmp_path / "features.csv", [FeatureRow(video="/v/a.mp4", n_frames=410, n_clips=25, status="ok")])
    assert read_frame_counts(tmp_path / "features.csv") == {"a": FrameCount(410, 25)}


def test_segments_csv_marks_segment_features_and_gives_frame_counts(tmp_path: Path) -> None:
    root = tmp_path / "feats"
    root.mkdir()
    rng = np.random.default_rng(3)
    np.save(root / "a.npy", rng.random((50, 1, 8)).astype(np.float32))
    np.save(root / "b.npy", rng.random((20, 1, 8)).astype(np.float32))
    write_manifest(root / "features.csv", [
        FeatureRow(video="/v/a.mp4", feature_path="a.npy", n_frames=807, n_clips=50, crops=1, dim=8, status="ok"),
        FeatureRow(video="/v/b.mp4", feature_path="b.npy", n_frames=330, n_clips=20, crops=1, dim=8, status="ok")])
    segments_for_manifest(root / "features.csv", tmp_path / "seg", fmt="npy")
    rows = [DatasetRow(video=v, feature_path=f"seg/{v}.npy", label="normal") for v in ("a", "b")]
    assert scores_are_segments(rows, tmp_path)
    assert frame_counts_for(rows, tmp_path) == {"a": FrameCount(807, 50), "b": FrameCount(330, 20)}
    snippets = [DatasetRow(video="a", feature_path="feats/a.npy", label="normal")]
    assert not scores_are_segments(snippets, tmp_path)
    assert scores_are_segments(snippets, tmp_path, "segment")
    with pytest.raises(ConfigError, match="mixes segment features"):
        scores_are_segments(rows + [DatasetRow(video="c", feature_path="feats/b.npy", label="normal")], tmp_path)


def _run(args: list) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def test_eval_of_the_real_sultani_features_uses_the_frame_counts(tmp_path: Path) -> None:
    samples = shared_fixture("ucf_crime/SampleVideos")
    ann = shared_fixture("ucf_crime/Temporal_Anomaly_Annotation.txt")
    rows = [DatasetRow(video=p.stem, feature_path=str(p),
                       label="normal" if p.name.startswith("Normal") else "anomalous")
            for p in sorted(samples.glob("*.txt"))]
    write_dataset(tmp_path / "samples.csv", rows)
    torch.manual_seed(0)
    torch.save(SultaniHead(SultaniConfig()).state_dict(), tmp_path / "sultani.pt")
    assert _run(["weights", "import", "sultani", tmp_path / "sultani.pt", "-o", tmp_path / "s.pt"]).exit_code == 0
    counts = {**LATE, **OTHERS}
    pd.DataFrame({"video": list(counts), "frames": list(counts.values())}).to_csv(tmp_path / "frames.csv", index=False)
    base = ["eval", "--checkpoint", tmp_path / "s.pt", "--data", tmp_path / "samples.csv", "--gt", f"ucf:{ann}",
            "--device", "cpu"]
    res = _run(base + ["--frames", tmp_path / "frames.csv", "-o", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    assert "GT of" not in res.output and f"frames {sum(counts.values())}" in res.output, res.output
    frames = pd.read_csv(tmp_path / "ev" / "frame_scores.csv")
    assert frames.groupby("video").size().to_dict() == counts
    assert frames[frames.video.isin(list(LATE))].groupby("video").label.sum().gt(0).all()
    scores = pd.read_csv(tmp_path / "ev" / "scores.csv")
    exp = scores[scores.video == "Explosion008_x264"]
    assert exp.start_frame.iloc[0] == 0 and exp.end_frame.iloc[-1] == 86 * CLIP  # 87 clips: the last is in no segment
    missing = _run(base + ["-o", tmp_path / "ev2"])
    assert missing.exit_code == 2 and "10 of 10 video(s) have segment scores but no frame count" in missing.output
    old = _run(base + ["--scores-per", "snippet", "-o", tmp_path / "ev3"])
    assert old.exit_code == 0 and "3 lose all of it" in old.output, old.output
