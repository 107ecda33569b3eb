"""Ground-truth builders (against the real annotation files), score expansion and metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers.shared_data import shared_fixture
from vadpipe.errors import ManifestError
from vadpipe.manifests.atomic import TMP_MARKER
from vadpipe.manifests.datasets import import_rtfm_list
from vadpipe.pipeline.train.metrics import (
    EvaluationError,
    average_precision,
    evaluate,
    expand_scores,
    false_alarm_rate,
    frames_from_clips,
    intervals_csv_gt,
    per_class_auc,
    pr_auc,
    read_gt_sh,
    read_ucf_crime_annotations,
    read_xd_violence_annotations,
    roc_auc,
    shanghaitech_gt,
    ucf_crime_classes,
    ucf_crime_gt,
    write_frame_scores_csv,
    xd_violence_gt,
)


def _ones(m: np.ndarray) -> list[tuple[int, int]]:
    """Runs of ones as half-open [start, end) pairs."""
    d = np.diff(np.r_[0, m.astype(int), 0])
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


# ----------------------------------------------------------------------------- UCF-Crime


def test_ucf_annotation_file_parsed() -> None:
    ann = read_ucf_crime_annotations(shared_fixture("ucf_crime/Temporal_Anomaly_Annotation.txt"))
    assert len(ann) == 290
    assert ann["Abuse028_x264"] == ("Abuse", [(165, 240)])
    assert ann["Arson011_x264"] == ("Arson", [(150, 420), (680, 1267)])
    assert ann["Normal_Videos_003_x264"] == ("Normal", [])
    assert sum(len(p) == 2 for _, p in ann.values()) == 16
    classes = ucf_crime_classes(shared_fixture("ucf_crime/Temporal_Anomaly_Annotation.txt"))
    assert sum(c == "Normal" for c in classes.values()) == 150 and len(set(classes.values())) == 14
    vadclip = read_ucf_crime_annotations(shared_fixture("ucf_crime/vadclip_list/Temporal_Anomaly_Annotation.txt"))
    assert vadclip == ann  # the .mp4-less copy reads the same


def test_ucf_gt_conventions_abuse028() -> None:
    path = shared_fixture("ucf_crime/Temporal_Anomaly_Annotation.txt")
    n = {"Abuse028_x264": 400}
    rtfm = ucf_crime_gt(path, n)["Abuse028_x264"]  # "Abuse028_x264.mp4  Abuse  165  240  -1  -1"
    assert rtfm.dtype == np.uint8 and len(rtfm) == 400
    assert rtfm[165:241].all() and rtfm[164] == 0 and rtfm[241] == 0 and rtfm.sum() == 76
    sultani = ucf_crime_gt(path, n, convention="sultani")["Abuse028_x264"]  # MATLAB GT(165:240)
    assert _ones(sultani) == [(164, 240)]
    vadclip = ucf_crime_gt(path, n, convention="vadclip")["Abuse028_x264"]
    assert _ones(vadclip) == [(165, 240)]
    with pytest.raises(ValueError, match="convention"):
        ucf_crime_gt(path, n, convention="matlab")


def test_ucf_gt_second_interval_normal_and_clipping() -> None:
    path = shared_fixture("ucf_crime/Temporal_Anomaly_Annotation.txt")
    gt = ucf_crime_gt(path, {"Arson011_x264.mp4": 1300, "/x/Normal_Videos_003_x264.mp4": 500, "Abuse028_x264": 200})
    assert _ones(gt["Arson011_x264"]) == [(150, 421), (680, 1268)]  # "150  420  680  1267"
    assert gt["Normal_Videos_003_x264"].shape == (500,) and not gt["Normal_Videos_003_x264"].any()
    assert _ones(gt["Abuse028_x264"]) == [(165, 200)]  # clipped to n_frames
    with pytest.raises(EvaluationError, match="no line for NotAVideo"):
        ucf_crime_gt(path, {"NotAVideo": 10})


# ----------------------------------------------------------------------------- XD-Violence


def test_xd_gt_real_lines() -> None:
    path = shared_fixture("xd_violence/annotations.txt")
    ann = read_xd_violence_annotations(path)
    assert len(ann) == 500 and max(len(p) for p in ann.values()) == 22
    name = "v=S-7rRLrxnVQ__#1_label_B4-0-0"  # "... 0 1517 1970 3038": starts at frame 0
    g = xd_violence_gt(path, {name: 3100})[name]
    assert _ones(g) == [(0, 1517), (1970, 3038)]
    assert g[0] == 1 and g[1516] == 1 and g[1517] == 0 and g[3037] == 1 and g[3038] == 0
    incl = xd_violence_gt(path, {name: 3100}, convention="rtfm")[name]
    assert _ones(incl) == [(0, 1518), (1970, 3039)]
    many = "v=38GQ9L2meyE__#1_label_B6-0-0"
    g = xd_violence_gt(path, {many: 5000})[many]
    assert _ones(g)[:3] == [(26, 80), (210, 288), (377, 396)] and len(_ones(g)) == len(ann[many])
    mp4 = "v=U6MC8JJJZSY__#1_label_G-0-0"  # written with .mp4 in the file
    assert _ones(xd_violence_gt(path, {mp4: 800})[mp4]) == [(150, 779)]


def test_xd_gt_normal_and_missing() -> None:
    path = shared_fixture("xd_violence/annotations.txt")
    normal = "wangted.2008__#01-26-25_01-27-00_label_A"
    assert not xd_violence_gt(path, {normal: 50})[normal].any()
    with pytest.raises(EvaluationError, match="violent video"):
        xd_violence_gt(path, {"unknown_label_B1-0-0": 50})


def test_xd_annotation_names_match_test_list() -> None:
    from vadpipe.manifests.datasets import import_xd_list

    ann = read_xd_violence_annotations(shared_fixture("xd_violence/annotations.txt"))
    rows = import_xd_list(shared_fixture("xd_violence/rgb_test.list"))
    assert set(ann) == {r.video for r in rows if r.is_anomalous}


# ----------------------------------------------------------------------------- ShanghaiTech


def test_shanghaitech_gt_pads_with_last_label(tmp_path: Path) -> None:
    np.save(tmp_path / "01_0001.npy", np.array([0, 1, 1], np.uint8))
    gt = shanghaitech_gt(tmp_path, {"01_0001": 5, "01_0002": 4, "01_0003": 2})
    assert gt["01_0001"].tolist() == [0, 1, 1, 1, 1]
    assert gt["01_0002"].tolist() == [0, 0, 0, 0]
    np.save(tmp_path / "01_0003.npy", np.array([1, 0, 0], np.uint8))
    assert shanghaitech_gt(tmp_path, {"01_0003": 2})["01_0003"].tolist() == [1, 0]


def test_read_gt_sh_reproduces_rtfm_array() -> None:
    gt_path = shared_fixture("rtfm_lists/gt-sh.npy")
    masks = shared_fixture("rtfm_lists/test_frame_mask")
    rows = import_rtfm_list(shared_fixture("rtfm_lists/shanghai-i3d-test-10crop.list"), dataset="shanghai")
    abnormal = [r.video for r in rows if r.is_anomalous]
    assert abnormal == [r.video for r in rows[:44]]
    lengths = {v: len(np.load(masks / f"{v}.npy")) for v in abnormal}
    snippets = {v: math.ceil(n / 16) for v, n in lengths.items()}
    # The normal videos' lengths are not in the fixtures and cannot be told apart (their
    # GT is all zeros), so they are read as one block: 142912 frames in all.
    rest = (142912 - 16 * sum(snippets.values())) // 16
    split = read_gt_sh(gt_path, abnormal + ["all_normal"], [snippets[v] for v in abnormal] + [rest])
    assert sum(len(m) for m in split.values()) == 142912
    assert 16 * sum(snippets.values()) == 17968
    built = shanghaitech_gt(masks, {v: 16 * snippets[v] for v in abnormal})
    for v in abnormal:
        np.testing.assert_array_equal(split[v], built[v])
        np.testing.assert_array_equal(split[v][: lengths[v]], np.load(masks / f"{v}.npy"))
    assert not split["all_normal"].any()
    assert sum(int(m.sum()) for m in split.values()) == 8028
    by_dict = read_gt_sh(gt_path, abnormal + ["all_normal"], snippets | {"all_normal": rest})
    assert all(np.array_equal(by_dict[k], split[k]) for k in split)
    with pytest.raises(EvaluationError, match="142912 frames"):
        read_gt_sh(gt_path, abnormal, [snippets[v] for v in abnormal])


# ----------------------------------------------------------------------------- generic CSV


def test_intervals_csv_gt(tmp_path: Path) -> None:
    (tmp_path / "iv.csv").write_text("video,start,end\na.mp4,2,4\na.mp4,6,20\nb,,\n")
    gt = intervals_csv_gt(tmp_path / "iv.csv", {"a": 8, "b": 3, "c": 2})
    assert gt["a"].tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert gt["b"].tolist() == [0, 0, 0] and gt["c"].tolist() == [0, 0]
    (tmp_path / "bad.csv").write_text("video,start,end\na,5,3\n")
    with pytest.raises(ManifestError, match="bad.csv:2"):
        intervals_csv_gt(tmp_path / "bad.csv", {"a": 8})


# ----------------------------------------------------------------------------- expansion


def test_expand_scores() -> None:
    s = [0.1, 0.9]
    assert frames_from_clips(2) == 32 and frames_from_clips({"a": 3}) == {"a": 48}
    np.testing.assert_array_equal(expand_scores(s), np.repeat(s, 16))
    tail = expand_scores(s, n_frames=40)  # 8 dropped frames get the last clip's score
    assert len(tail) == 40 and (tail[16:] == 0.9).all() and (tail[:16] == 0.1).all()
    padded = expand_scores(s, n_frames=25, tail="pad")  # last clip padded by the extractor
    assert len(padded) == 25 and padded[-1] == 0.9
    with pytest.raises(EvaluationError, match="dropped tail"):
        expand_scores(s, n_frames=48)
    with pytest.raises(EvaluationError, match="dropped tail"):
        expand_scores(s, n_frames=31)
    with pytest.raises(EvaluationError, match="padded tail"):
        expand_scores(s, n_frames=40, tail="pad")
    assert len(expand_scores(s, n_frames=100, tail="any")) == 100
    assert len(expand_scores(s, clip_len=8, n_frames=16)) == 16


# ----------------------------------------------------------------------------- metrics


def test_metrics_hand_cases() -> None:
    y, x = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]  # scikit-learn's documented example
    assert roc_auc(y, x) == pytest.approx(0.75)
    assert average_precision(y, x) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)
    # PR points (r, p): (0, 1), (.5, 1), (.5, .5), (1, 2/3), (1, .5) → trapezoids
    assert pr_auc(y, x) == pytest.approx(0.5 * 1.0 + 0.5 * (0.5 + 2 / 3) / 2)
    assert roc_auc([0, 1], [0.2, 0.7]) == 1.0 and roc_auc([1, 0], [0.2, 0.7]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5] * 4) == 0.5  # all tied
    assert average_precision([0, 1, 0, 1], [0.5] * 4) == 0.5
    assert roc_auc([0, 0, 1], [0.3, 0.6, 0.6]) == pytest.approx(0.75)  # one tie counts half
    with pytest.raises(ValueError, match="both"):
        roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([0, 1], [0.1, float("nan")])


def test_metrics_equal_sklearn_with_ties() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(60):
        n = int(rng.integers(2, 400))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            y[0] = 1 - y[0]
        levels = int(rng.integers(1, 12))
        x = rng.integers(0, levels, n) / max(levels - 1, 1)  # heavy ties
        if trial % 3 == 0:
            x = rng.random(n).astype(np.float32)
        p, r, _ = metrics.precision_recall_curve(y, x)
        assert roc_auc(y, x) == pytest.approx(metrics.roc_auc_score(y, x), abs=1e-12)
        assert average_precision(y, x) == pytest.approx(metrics.average_precision_score(y, x), abs=1e-12)
        assert pr_auc(y, x) == pytest.approx(metrics.auc(r, p), abs=1e-12)


def test_false_alarm_rate() -> None:
    s = [0.2, 0.5, 0.7, 0.4]
    assert false_alarm_rate(s) == 0.5  # 0.5 and 0.7 are >= 0.5
    assert false_alarm_rate(s, inclusive=False) == 0.25
    assert false_alarm_rate(s, threshold=0.8) == 0.0
    assert math.isnan(false_alarm_rate([]))


# ----------------------------------------------------------------------------- evaluate


def _toy():
    gt = {
        "Abuse001": np.array([0, 0, 1, 1, 0], np.uint8),
        "Arson001": np.array([0, 1, 1, 0], np.uint8),
        "Normal001": np.zeros(4, np.uint8),
        "Normal002": np.zeros(3, np.uint8),
    }
    scores = {
        "/x/Abuse001.mp4": np.array([0.1, 0.2, 0.9, 0.8, 0.3]),
        "Arson001": np.array([0.2, 0.4, 0.6, 0.7]),
        "Normal001": np.array([0.1, 0.6, 0.2, 0.1]),
        "Normal002": np.array([0.0, 0.1, 0.5]),
    }
    classes = {"Abuse001": "Abuse", "Arson001": "Arson", "Normal001": "Normal", "Normal002": "Normal"}
    return scores, gt, classes


def test_evaluate_end_to_end() -> None:
    scores, gt, classes = _toy()
    res = evaluate(scores, gt, classes)
    names = sorted(gt)
    y = np.concatenate([gt[n] for n in names])
    x = np.concatenate([scores["/x/Abuse001.mp4"], scores["Arson001"], scores["Normal001"], scores["Normal002"]])
    assert res.auc == roc_auc(y, x) and res.ap == average_precision(y, x) and res.pr_auc == pr_auc(y, x)
    assert res.far == pytest.approx(2 / 7)  # 0.6 and 0.5 among 7 normal-video frames
    assert (res.n_videos, res.n_frames) == (4, 16) and res.videos_without_scores == []
    abuse = np.r_[gt["Abuse001"], gt["Normal001"], gt["Normal002"]]
    abuse_x = np.r_[scores["/x/Abuse001.mp4"], scores["Normal001"], scores["Normal002"]]
    arson = np.r_[gt["Arson001"], gt["Normal001"], gt["Normal002"]]
    arson_x = np.r_[scores["Arson001"], scores["Normal001"], scores["Normal002"]]
    assert res.per_class == {"Abuse": roc_auc(abuse, abuse_x), "Arson": roc_auc(arson, arson_x)}
    assert set(per_class_auc(scores, gt, classes)) == {"Abuse", "Arson"}
    assert evaluate(scores, gt).per_class == {}


def test_evaluate_errors() -> None:
    scores, gt, _ = _toy()
    with pytest.raises(EvaluationError, match="scores but no ground truth: Extra"):
        evaluate(scores | {"Extra": np.zeros(3)}, gt)
    bad = dict(scores)
    bad["Arson001"] = np.zeros(5)
    with pytest.raises(EvaluationError, match="Arson001: 5 frame scores but 4 ground-truth frames"):
        evaluate(bad, gt)
    partial = {k: v for k, v in scores.items() if k != "Normal002"}
    assert evaluate(partial, gt).videos_without_scores == ["Normal002"]
    with pytest.raises(EvaluationError, match="both anomalous and normal"):
        evaluate({"Normal001": scores["Normal001"]}, gt)
    with pytest.raises(EvaluationError, match="has no class"):
        evaluate(scores, gt, {"Abuse001": "Abuse"})


def test_write_frame_scores_csv(tmp_path: Path) -> None:
    scores, gt, _ = _toy()
    write_frame_scores_csv(tmp_path / "scores.csv", scores, gt)
    assert not [p for p in tmp_path.iterdir() if TMP_MARKER in p.name]
    df = pd.read_csv(tmp_path / "scores.csv")
    assert list(df.columns) == ["video", "frame", "score", "label"] and len(df) == 16
    assert df["video"].iloc[0] == "Abuse001" and df["frame"].tolist()[:5] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(df["score"].to_numpy()[:5], scores["/x/Abuse001.mp4"])
    assert df["label"].tolist()[:5] == [0, 0, 1, 1, 0]
    write_frame_scores_csv(tmp_path / "nogt.csv", {"a": [0.5, 0.25]})
    assert (tmp_path / "nogt.csv").read_text() == "video,frame,score,label\na,0,0.5,\na,1,0.25,\n"
