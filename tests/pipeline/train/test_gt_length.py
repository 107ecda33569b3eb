"""Annotated frames past a video's scored length: a warning naming the videos (those that
lose all their GT count as normal), or an error with ``strict_gt``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vadpipe.errors import EvaluationError
from vadpipe.pipeline.train.apply import evaluate_scores, result_lines


def _ucf_annotations(path: Path) -> Path:
    """Three anomalous videos (0-based inclusive ends, RTFM's reading) and one normal one."""
    path.write_text("Abuse001_x264.mp4  Abuse  20  40  -1  -1\n"       # inside 10 snippets
                    "Arson002_x264.mp4  Arson  150  199  -1  -1\n"     # 10 of 50 frames inside
                    "Fighting003_x264.mp4  Fighting  500  600  -1  -1\n"  # all past the scores
                    "Normal_Videos_004_x264.mp4  Normal  -1  -1  -1  -1\n")
    return path


def _scores() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {v: rng.random(10) for v in ("Abuse001_x264", "Arson002_x264", "Fighting003_x264", "Normal_Videos_004_x264")}


def test_annotations_past_the_scores_are_named_in_a_warning(tmp_path: Path) -> None:
    gt = f"ucf:{_ucf_annotations(tmp_path / 'ann.txt')}"
    result = evaluate_scores(_scores(), gt)  # 10 snippets = 160 frames each
    (warning,) = result.warnings
    assert warning.startswith("the GT of 2 video(s) reaches past their scored T × 16 frames")
    assert "(1 lose all of it and count as normal: Fighting003_x264)" in warning
    assert "Arson002_x264 (40 of 50 frames)" in warning and "Fighting003_x264 (101 of 101 frames)" in warning
    assert result_lines(result)[0] == f"WARNING: {warning}"
    with pytest.raises(EvaluationError, match="the GT of 2 video"):
        evaluate_scores(_scores(), gt, strict_gt=True)


def test_scores_as_long_as_the_annotations_give_no_warning(tmp_path: Path) -> None:
    gt = f"ucf:{_ucf_annotations(tmp_path / 'ann.txt')}"
    scores = {v: np.resize(s, 40) for v, s in _scores().items()}  # 640 frames: every annotation inside
    assert evaluate_scores(scores, gt, strict_gt=True).warnings == []


def test_interval_csv_gt_is_checked_too(tmp_path: Path) -> None:
    csv = tmp_path / "gt.csv"
    csv.write_text("video,start,end\na,0,10\na,150,170\nb,,\n")
    rng = np.random.default_rng(1)
    result = evaluate_scores({"a": rng.random(10), "b": rng.random(10)}, f"csv:{csv}")
    (warning,) = result.warnings
    assert "the GT of 1 video(s)" in warning and "a (10 of 30 frames)" in warning and "0 lose all" in warning
