"""Events from per-clip scores: thresholding, merging, times, tables, events.json, threshold choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vadpipe.errors import ConfigError
from vadpipe.pipeline.score.events import (
    Event,
    EventTracker,
    find_events,
    format_events_table,
    format_time,
    uniform_clip_times,
    write_events_json,
)
from vadpipe.pipeline.train.metrics import validation_threshold

FPS = 30.0
CLIP = 16 / FPS  # 16-frame clips at 30 fps: 0.5333 s


def times(n: int) -> np.ndarray:
    return uniform_clip_times(n, FPS, clip_len=16)


def test_clip_times_are_16_frames_at_30fps():
    t = times(4)
    assert t.shape == (4, 2)
    for i in range(4):
        assert t[i, 0] == pytest.approx(i * 16 / 30)
        assert t[i, 1] == pytest.approx((i + 1) * 16 / 30)
    overlapping = uniform_clip_times(3, 25.0, clip_len=16, stride=8)
    np.testing.assert_allclose(overlapping, [[0, 0.64], [0.32, 0.96], [0.64, 1.28]])


def test_single_run_exact_values():
    s = np.array([0.1, 0.2, 0.6, 0.9, 0.7, 0.3, 0.1])
    (e,) = find_events(s, times(7), threshold=0.5)
    assert (e.start_clip, e.end_clip, e.peak_clip) == (2, 4, 3)
    assert e.start_time == pytest.approx(2 * CLIP)
    assert e.end_time == pytest.approx(5 * CLIP)
    assert e.duration == pytest.approx(3 * CLIP)
    assert e.n_clips == 3
    assert e.peak_score == 0.9
    assert e.peak_time == pytest.approx(3.5 * CLIP)  # centre of the peak clip
    assert e.mean_score == pytest.approx((0.6 + 0.9 + 0.7) / 3)


def test_two_runs_merged_by_min_gap_mean_includes_gap_clips():
    s = np.array([0.0, 0.8, 0.9, 0.2, 0.6, 0.0])
    # the gap is one clip (0.533 s): separate without min_gap ...
    assert [(e.start_clip, e.end_clip) for e in find_events(s, times(6), 0.5)] == [(1, 2), (4, 4)]
    # ... one event when min_gap covers it; the gap clip (0.2) counts in the mean
    (e,) = find_events(s, times(6), 0.5, min_gap=0.6)
    assert (e.start_clip, e.end_clip, e.peak_clip) == (1, 4, 2)
    assert e.start_time == pytest.approx(CLIP) and e.end_time == pytest.approx(5 * CLIP)
    assert e.peak_score == 0.9
    assert e.mean_score == pytest.approx((0.8 + 0.9 + 0.2 + 0.6) / 4)


def test_gap_equal_to_min_gap_merges_longer_does_not():
    s = np.array([0.9, 0.1, 0.1, 0.9])
    t = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0], [3.0, 4.0]])  # exact binary floats
    assert len(find_events(s, t, 0.5, min_gap=2.0)) == 1  # gap 2.0 <= 2.0
    assert len(find_events(s, t, 0.5, min_gap=1.999)) == 2
    assert len(find_events(s, times(4), 0.5, min_gap=1.5 * CLIP)) == 2  # gap is 2 clips


def test_threshold_equality_counts_as_anomalous():
    s = np.array([0.25, 0.5, 0.75, 0.5, 0.25])
    (e,) = find_events(s, times(5), threshold=0.5)
    assert (e.start_clip, e.end_clip) == (1, 3)
    assert find_events(s, times(5), threshold=np.nextafter(0.75, 1.0)) == []


def test_all_below_and_all_above():
    s = np.full(5, 0.3)
    assert find_events(s, times(5), 0.5) == []
    (e,) = find_events(s, times(5), 0.3)
    assert (e.start_clip, e.end_clip, e.peak_clip) == (0, 4, 0)  # ties: earliest peak
    assert e.start_time == 0.0 and e.end_time == pytest.approx(5 * CLIP)
    assert e.mean_score == pytest.approx(0.3)


def test_empty_video_has_no_events():
    assert find_events(np.zeros(0), np.zeros((0, 2)), 0.5) == []


def test_min_duration_drops_short_events_after_merging():
    s = np.array([0.9, 0.0, 0.0, 0.9, 0.9, 0.9])
    evs = find_events(s, times(6), 0.5, min_duration=2 * CLIP)
    assert [(e.start_clip, e.end_clip) for e in evs] == [(3, 5)]
    merged = find_events(s, times(6), 0.5, min_gap=3 * CLIP, min_duration=5 * CLIP)
    assert [(e.start_clip, e.end_clip) for e in merged] == [(0, 5)]


def test_overlapping_clips_merge_even_without_min_gap():
    t = uniform_clip_times(5, 25.0, clip_len=16, stride=8)  # clip i+2 starts where clip i ends
    s = np.array([0.9, 0.1, 0.9, 0.1, 0.1])
    (e,) = find_events(s, t, 0.5)
    assert (e.start_clip, e.end_clip) == (0, 2)


@pytest.mark.parametrize("scores, clip_t, match", [
    (np.array([0.1, np.nan]), times(2), "NaN"),
    (np.array([0.1, 0.2, 0.3]), times(2), "3 scores but 2 clip times"),
    (np.zeros((2, 1)), times(2), "1-D"),
    (np.zeros(2), np.zeros((2, 3)), r"\[T, 2\]"),
    (np.zeros(2), np.array([[0.0, 1.0], [2.0, 1.5]]), "ends"),
    (np.zeros(2), np.array([[1.0, 2.0], [0.0, 1.0]]), "non-decreasing"),
])
def test_bad_arrays_raise_value_error(scores, clip_t, match):
    with pytest.raises(ValueError, match=match):
        find_events(scores, clip_t, 0.5)


@pytest.mark.parametrize("kwargs, match", [
    ({"min_gap": -0.1}, "min_gap"),
    ({"min_duration": -1}, "min_duration"),
    ({"threshold": float("nan")}, "threshold"),
    ({"threshold": "high"}, "threshold"),
])
def test_bad_options_raise_config_error(kwargs, match):
    args = {"threshold": 0.5, **kwargs}
    with pytest.raises(ConfigError, match=match):
        find_events(np.zeros(3), times(3), **args)


def test_validation_threshold_youden_hand_example():
    # thresholds (>=): 0.9 → TPR 1/3 FPR 0 (J .33); 0.8 → 2/3, 0 (J .67); 0.7 → 2/3, 1/3;
    # 0.6 → 1, 1/3 (J .67); 0.4 → 1, 2/3; 0.2 → 1, 1. Best J 0.67 at 0.8 and 0.6: higher wins.
    scores = [0.9, 0.8, 0.7, 0.6, 0.4, 0.2]
    labels = [1, 1, 0, 1, 0, 0]
    assert validation_threshold(scores, labels) == 0.8
    # a perfectly separable set: the lowest anomalous score
    assert validation_threshold([0.1, 0.2, 0.7, 0.9], [0, 0, 1, 1]) == 0.7
    with pytest.raises(ValueError, match="both"):
        validation_threshold([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="length"):
        validation_threshold([0.1, 0.2], [1])


def test_event_to_dict_and_events_json(tmp_path):
    s = np.array([0.1, 0.8, 0.9, 0.1])
    evs = find_events(s, times(4), 0.5)
    d = evs[0].to_dict()
    assert d["start_clip"] == 1 and d["end_clip"] == 2 and d["n_clips"] == 2
    assert d["duration"] == pytest.approx(2 * CLIP)
    out = tmp_path / "out" / "events.json"
    write_events_json(out, {"a.mp4": evs, "b.mp4": []}, threshold=0.5, threshold_source="fixed",
                      min_gap=0.0, extra={"checkpoint": tmp_path / "best.pt", "val_auc": float("nan")})
    doc = json.loads(out.read_text())
    assert doc["rule"] == "score >= threshold" and doc["threshold"] == 0.5
    assert doc["threshold_source"] == "fixed" and doc["min_gap_s"] == 0.0
    assert doc["checkpoint"].endswith("best.pt") and doc["val_auc"] is None
    assert doc["videos"]["a.mp4"]["n_events"] == 1
    assert Event(**{k: v for k, v in doc["videos"]["a.mp4"]["events"][0].items()
                    if k not in ("duration", "n_clips")}) == evs[0]
    assert doc["videos"]["b.mp4"] == {"n_events": 0, "events": []}
    assert [p.name for p in out.parent.iterdir()] == ["events.json"]  # no temporary left
    with pytest.raises(ValueError, match="overwrite"):
        write_events_json(out, {}, threshold=0.5, threshold_source="x", extra={"threshold": 1})


def test_format_time_and_table():
    assert format_time(0) == "0:00:00.00"
    assert format_time(3723.456) == "1:02:03.46"
    assert format_time(59.999) == "0:01:00.00"
    assert format_time(12.25, "s") == "12.25"
    assert format_time(-1.5) == "-0:00:01.50"
    s = np.array([0.1, 0.8, 0.9, 0.1, 0.7])
    table = format_events_table("clip.mp4", find_events(s, times(5), 0.5))
    lines = table.splitlines()
    assert lines[0] == "clip.mp4: 2 events"
    assert lines[1].split() == ["#", "start", "end", "duration", "peak", "mean"]
    assert lines[2].split() == ["1", "0:00:00.53", "0:00:01.60", "1.07s", "0.900", "0.850"]
    assert lines[3].split() == ["2", "0:00:02.13", "0:00:02.67", "0.53s", "0.700", "0.700"]
    assert len({len(ln) for ln in lines[1:]}) == 1  # fixed width
    assert format_events_table("x", []) == "x: 0 events"
    secs = format_events_table("x", find_events(s, times(5), 0.5), style="s").splitlines()
    assert secs[2].split()[:3] == ["1", "0.53", "1.60"]


# ----------------------------------------------------------------------------- incremental tracker


def random_clips(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scores and strictly increasing clip starts with random lengths: overlaps, touching
    clips and gaps (as a live stream with drops and reconnects gives)."""
    starts = np.cumsum(rng.choice([0.1, 0.25, 0.5, 0.53, 1.0, 3.0], size=n)) - 0.1
    lengths = rng.choice([0.25, 0.5, 0.53, 1.0], size=n)
    scores = rng.random(n).round(rng.integers(1, 4))  # rounding: ties with the threshold happen
    return scores, np.stack([starts, starts + lengths], axis=1)


def run_tracker(tracker: EventTracker, scores: np.ndarray, t: np.ndarray) -> list[tuple[int, Event]]:
    """``(clip index that closed it, event)``; ``len(scores)`` for the events closed at the end."""
    closed = [(i, e) for i in range(scores.size) for e in tracker.push(scores[i], t[i, 0], t[i, 1])]
    return closed + [(scores.size, e) for e in tracker.finish()]


def test_tracker_gives_the_events_of_find_events_on_random_sequences():
    rng = np.random.default_rng(0)
    n_events = 0
    for trial in range(400):
        n = int(rng.integers(0, 60))
        scores, t = random_clips(rng, n)
        thr = float(rng.choice([0.3, 0.5, 0.7]))
        gap = float(rng.choice([0.0, 0.0, 0.3, 0.53, 1.0, 2.5]))
        min_dur = float(rng.choice([0.0, 0.0, 0.5, 1.2]))
        want = find_events(scores, t, thr, gap, min_dur) if n else []
        got = run_tracker(EventTracker(thr, gap, min_dur), scores, t)
        assert [e for _, e in got] == want, (trial, thr, gap, min_dur)
        n_events += len(want)
        for at, e in got:  # closed at the first clip after which it cannot change, not later
            b_end = t[e.end_clip, 1]
            first = next((k for k in range(e.end_clip + 1, n)
                          if (scores[k] < thr and t[k, 0] - b_end >= gap)
                          or (scores[k] >= thr and k > e.end_clip + 1 and t[k, 0] - b_end > gap)), n)
            assert at == first, (trial, e)
    assert n_events > 300  # the sequences do have events


def test_tracker_closes_an_event_at_the_first_clip_below_the_threshold():
    tracker = EventTracker(0.5)
    t = times(6)
    assert tracker.push(0.9, *t[0]) == [] and tracker.push(0.8, *t[1]) == []
    (e,) = tracker.push(0.1, *t[2])  # min_gap 0: closed here, two clips before the stream ends
    assert (e.start_clip, e.end_clip) == (0, 1)
    gap = EventTracker(0.5, min_gap=0.6)  # clips of 0.533 s: one below-threshold clip between runs merges them
    assert [gap.push(s, *t[i]) for i, s in enumerate([0.9, 0.1, 0.9, 0.1, 0.1])] == [[]] * 5
    (e,) = gap.push(0.1, *t[5])  # clip 5 starts 1.07 s after the event's end (>= 0.6): nothing can merge now
    assert (e.start_clip, e.end_clip) == (0, 2) and gap.finish() == []


def test_tracker_refuses_clips_out_of_order():
    tracker = EventTracker(0.5)
    tracker.push(0.9, 1.0, 1.5)
    with pytest.raises(ValueError, match="not after the previous clip"):
        tracker.push(0.9, 1.0, 1.6)
    with pytest.raises(ValueError, match="ends"):
        tracker.push(0.9, 2.0, 1.6)
    with pytest.raises(ValueError, match="non-finite"):
        tracker.push(float("nan"), 3.0, 3.5)
    with pytest.raises(ConfigError, match="min_gap"):
        EventTracker(0.5, min_gap=-1)
