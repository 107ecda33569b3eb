"""XD-Violence per-class AUC: classes read from the file names (multi-label videos count in
each of their classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from tests.helpers.shared_data import shared_fixture
from vadpipe.errors import EvaluationError
from vadpipe.manifests.datasets import video_key
from vadpipe.pipeline.train.apply import evaluate_scores
from vadpipe.pipeline.train.metrics import xd_violence_classes


def test_the_real_test_list_parses_into_its_classes() -> None:
    names = {video_key(Path(line.strip()).name.rsplit("__", 1)[0])
             for line in shared_fixture("xd_violence/rgb_test.list").read_text().splitlines() if line.strip()}
    classes = xd_violence_classes(names)
    assert len(classes) == 800 and sum(c == ("Normal",) for c in classes.values()) == 300
    assert classes["Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6"] == ("Explosion", "Shooting", "Car accident")
    assert {c for cs in classes.values() for c in cs} == {"Normal", "Fighting", "Shooting", "Riot", "Abuse",
                                                         "Car accident", "Explosion"}


def test_unknown_codes_and_other_names_are_refused() -> None:
    with pytest.raises(EvaluationError, match=r"unknown XD-Violence class code\(s\) \['B3'\]"):
        xd_violence_classes(["x_label_B3-0-0"])
    with pytest.raises(EvaluationError, match="not an XD-Violence name"):
        xd_violence_classes(["Abuse001_x264"])


def test_eval_reports_per_class_auc_with_multi_label_videos(tmp_path: Path) -> None:
    names = ["m1_label_B1-B2-0", "f1_label_B1-0-0", "n1_label_A", "n2_label_A"]
    ann = tmp_path / "annotations.txt"
    ann.write_text("m1_label_B1-B2-0 16 48\nf1_label_B1-0-0 0 32\n")
    rng = np.random.default_rng(0)
    scores = {n: rng.random(5) for n in names}  # 80 frames each
    result = evaluate_scores(scores, f"xd:{ann}")
    frames = {n: np.repeat(s, 16) for n, s in scores.items()}
    gt = {n: np.zeros(80, np.uint8) for n in names}
    gt["m1_label_B1-B2-0"][16:48] = 1
    gt["f1_label_B1-0-0"][0:32] = 1

    def auc(videos):
        return roc_auc_score(np.concatenate([gt[v] for v in videos]), np.concatenate([frames[v] for v in videos]))

    assert set(result.per_class) == {"Fighting", "Shooting"}
    assert result.per_class["Fighting"] == pytest.approx(auc(["f1_label_B1-0-0", "m1_label_B1-B2-0", "n1_label_A",
                                                               "n2_label_A"]), abs=1e-12)
    shooting = auc(["m1_label_B1-B2-0", "n1_label_A", "n2_label_A"])
    assert result.per_class["Shooting"] == pytest.approx(shooting, abs=1e-12)


def test_names_without_xds_label_part_still_evaluate_without_per_class(tmp_path: Path) -> None:
    ann = tmp_path / "annotations.txt"
    ann.write_text("mine_001 0 32\n")
    rng = np.random.default_rng(1)
    result = evaluate_scores({"mine_001": rng.random(4), "x_label_A": rng.random(4)}, f"xd:{ann}")
    assert result.per_class == {} and 0 <= result.auc <= 1
