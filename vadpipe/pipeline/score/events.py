"""Anomalous events from per-clip scores: thresholding, merging, tables, ``events.json``.

An **event** is a maximal run of clips whose score is ``>= threshold`` (a clip whose score
equals the threshold is anomalous — the convention of scikit-learn's ``roc_curve`` and of
:func:`vadpipe.pipeline.train.metrics.false_alarm_rate`). Runs separated by a gap of at most
``min_gap`` seconds are merged into one event; the gap between two runs is the next run's
first clip start minus the previous run's last clip end, so with contiguous clips a single
below-threshold clip of 16 frames at 30 fps is a gap of 0.533 s. Clips that overlap or touch
(gap <= 0) are always merged, whatever ``min_gap``. After merging, events shorter than
``min_duration`` seconds (``end_time - start_time``) are dropped.

A merged event covers the below-threshold clips of its gaps: ``start_clip..end_clip`` is
one contiguous range and ``mean_score`` is the mean over **all** of its clips, gap clips
included, so it describes the interval the event reports. ``peak_score`` is the maximum
over the same clips (always in an above-threshold clip); on ties the earliest clip is the
peak. ``peak_time`` is the centre of the peak clip.

:func:`find_events` finds the events of a whole score sequence; :class:`EventTracker` finds
the same ones clip by clip, reporting each as soon as no later clip can change it
(``score --stream``).

:func:`~vadpipe.pipeline.train.metrics.validation_threshold` picks the threshold a checkpoint
carries from labelled validation videos (Youden's J).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from vadpipe.errors import ConfigError
from vadpipe.manifests.atomic import atomic_write_text

#: Schema version written in ``events.json``.
EVENTS_SCHEMA = 1
#: The thresholding rule, written in ``events.json``.
RULE = "score >= threshold"


@dataclass(frozen=True)
class Event:
    """One anomalous interval of a video.

    Clip indices are 0-based, ``end_clip`` inclusive; times are in seconds from the first
    frame: ``start_time`` is the start of ``start_clip``, ``end_time`` the end of
    ``end_clip``.
    """

    start_clip: int
    end_clip: int
    start_time: float
    end_time: float
    peak_score: float
    peak_clip: int
    peak_time: float
    mean_score: float

    @property
    def duration(self) -> float:
        """``end_time - start_time`` in seconds."""
        return self.end_time - self.start_time

    @property
    def n_clips(self) -> int:
        """Clips the event covers (gap clips of a merged event included)."""
        return self.end_clip - self.start_clip + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict: the fields plus ``duration`` and ``n_clips``."""
        d = asdict(self)
        d["duration"] = self.duration
        d["n_clips"] = self.n_clips
        return d


# ----------------------------------------------------------------------------- validation


def _check_option(name: str, value: float, *, allow_negative: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if v < 0 and not allow_negative:
        raise ConfigError(f"{name} must be >= 0 seconds, got {value!r}")
    return v


def check_scores_times(scores: np.ndarray, clip_times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``scores [T]`` and ``clip_times [T, 2]`` to float64.

    Raises:
        ValueError: wrong shapes, lengths that differ, NaN/inf scores or times, a clip
            ending before it starts, clip starts that go backwards.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(clip_times, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D [T], got shape {s.shape}")
    if t.ndim != 2 or t.shape[1] != 2:
        raise ValueError(f"clip_times must be [T, 2] (start, end seconds), got shape {t.shape}")
    if t.shape[0] != s.shape[0]:
        raise ValueError(f"{s.shape[0]} scores but {t.shape[0]} clip times")
    if not np.isfinite(s).all():
        bad = np.flatnonzero(~np.isfinite(s))
        raise ValueError(f"scores contain NaN or inf (at clip {', '.join(map(str, bad[:5]))}"
                         f"{' …' if bad.size > 5 else ''}); the model output is broken")
    if not np.isfinite(t).all():
        raise ValueError("clip_times contain NaN or inf")
    if (t[:, 1] < t[:, 0]).any():
        i = int(np.flatnonzero(t[:, 1] < t[:, 0])[0])
        raise ValueError(f"clip {i} ends ({t[i, 1]}) before it starts ({t[i, 0]})")
    if (np.diff(t[:, 0]) < 0).any():
        raise ValueError("clip start times must be non-decreasing")
    return s, t


def uniform_clip_times(n_clips: int, fps: float, clip_len: int = 16, stride: int | None = None) -> np.ndarray:
    """Start/end seconds ``[n_clips, 2]`` of clips cut every ``stride`` frames (default
    ``clip_len``): clip ``i`` spans ``[i·stride/fps, (i·stride + clip_len)/fps)``."""
    if fps <= 0 or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps}")
    stride = clip_len if stride is None else stride
    start = np.arange(int(n_clips), dtype=np.float64) * stride
    return np.stack([start / fps, (start + clip_len) / fps], axis=1)


# ----------------------------------------------------------------------------- events


def _runs(above: np.ndarray) -> list[tuple[int, int]]:
    """``(first, last)`` inclusive index pairs of the True runs of a boolean ``[T]``."""
    padded = np.r_[False, above, False].astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return list(zip(starts.tolist(), ends.tolist()))


def find_events(
    scores: np.ndarray,
    clip_times: np.ndarray,
    threshold: float,
    min_gap: float = 0.0,
    min_duration: float = 0.0,
) -> list[Event]:
    """Events of one video (rules in the module docstring), in time order.

    Args:
        scores: ``[T]`` per-clip anomaly scores (any real scale; probabilities usually).
        clip_times: ``[T, 2]`` start and end second of each clip (see :func:`uniform_clip_times`).
        threshold: a clip is anomalous when ``score >= threshold``.
        min_gap: runs whose gap is ``<= min_gap`` seconds are merged (default 0: only
            touching or overlapping runs merge).
        min_duration: merged events shorter than this many seconds are dropped.

    Raises:
        ConfigError: a non-finite threshold, a negative ``min_gap`` or ``min_duration``.
        ValueError: see :func:`check_scores_times`.
    """
    thr = _check_option("threshold", threshold, allow_negative=True)
    gap = _check_option("min_gap", min_gap)
    min_dur = _check_option("min_duration", min_duration)
    s, t = check_scores_times(scores, clip_times)

    merged: list[list[int]] = []
    for a, b in _runs(s >= thr):
        if merged and t[a, 0] - t[merged[-1][1], 1] <= gap:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    return [_event(s, t, a, b) for a, b in merged if t[b, 1] - t[a, 0] >= min_dur]


def _event(s: np.ndarray, t: np.ndarray, a: int, b: int, first_clip: int = 0) -> Event:
    """The event of clips ``a..b`` (inclusive) of ``scores [T]`` and ``clip_times [T, 2]``;
    ``first_clip`` is the index of ``s[0]`` in the whole video."""
    seg = s[a:b + 1]
    peak = a + int(np.argmax(seg))
    return Event(
        start_clip=first_clip + a,
        end_clip=first_clip + b,
        start_time=float(t[a, 0]),
        end_time=float(t[b, 1]),
        peak_score=float(s[peak]),
        peak_clip=first_clip + peak,
        peak_time=float((t[peak, 0] + t[peak, 1]) / 2.0),
        mean_score=float(seg.mean()),
    )


class EventTracker:
    """The events of a growing score sequence, each reported once it is **closed**.

    Feed clips in order with :meth:`push` and call :meth:`finish` at the end of the stream;
    together they return exactly the events :func:`find_events` gives on the whole sequence
    (same rules, same floats), in the same order.

    An event is closed when no later clip can change it: a clip below the threshold starts
    ``>= min_gap`` seconds after the event's last above-threshold clip ends (a later run
    would start even later, since clip starts strictly increase, so it cannot merge), or an
    above-threshold clip that does not continue the event's last run starts more than
    ``min_gap`` after it, or the stream ends. (As in :func:`find_events`, consecutive
    above-threshold clips are one run whatever the time between them.) A closed
    event shorter than ``min_duration`` is dropped, as in :func:`find_events`. Memory: the
    scores and times of the open event (from its first clip) only.

    Raises:
        ConfigError: as :func:`find_events` for the options.
        ValueError: from :meth:`push`: a non-finite score or time, a clip ending before it
            starts, or a clip start that is not after the previous clip's start.
    """

    def __init__(self, threshold: float, min_gap: float = 0.0, min_duration: float = 0.0) -> None:
        self.threshold = _check_option("threshold", threshold, allow_negative=True)
        self.min_gap = _check_option("min_gap", min_gap)
        self.min_duration = _check_option("min_duration", min_duration)
        self.n_clips = 0
        self._prev_start = -math.inf
        self._first = -1  # clip index of the open event's first clip; -1: no open event
        self._last_above = -1  # index (from _first) of the open event's last above-threshold clip
        self._scores: list[float] = []  # of clips _first, _first + 1, ...
        self._times: list[tuple[float, float]] = []

    def push(self, score: float, start: float, end: float) -> list[Event]:
        """Add the next clip (its score and start/end second); returns the events it closes
        (zero or one)."""
        s, t0, t1 = float(score), float(start), float(end)
        if not (math.isfinite(s) and math.isfinite(t0) and math.isfinite(t1)):
            raise ValueError(f"clip {self.n_clips}: non-finite score or time ({s}, {t0}, {t1})")
        if t1 < t0:
            raise ValueError(f"clip {self.n_clips} ends ({t1}) before it starts ({t0})")
        if t0 <= self._prev_start:
            raise ValueError(f"clip {self.n_clips} starts at {t0} s, not after the previous clip ({self._prev_start} s)")
        self._prev_start = t0
        index, self.n_clips = self.n_clips, self.n_clips + 1
        closed: list[Event] = []
        is_open = self._first >= 0
        gap = t0 - self._times[self._last_above][1] if is_open else math.inf
        if s >= self.threshold:
            # the run of the previous clip goes on (whatever the time between them), or runs merge
            if is_open and (self._first + self._last_above == index - 1 or gap <= self.min_gap):
                self._scores.append(s)
                self._times.append((t0, t1))
                self._last_above = len(self._scores) - 1
                return closed
            closed += self._close()
            self._first, self._last_above = index, 0
            self._scores, self._times = [s], [(t0, t1)]
        elif is_open:
            if gap >= self.min_gap:
                closed += self._close()
            else:
                self._scores.append(s)
                self._times.append((t0, t1))
        return closed

    def finish(self) -> list[Event]:
        """The end of the stream: the open event, if any, closes."""
        return self._close()

    def _close(self) -> list[Event]:
        if self._first < 0:
            return []
        b = self._last_above
        s = np.asarray(self._scores[:b + 1], dtype=np.float64)
        t = np.asarray(self._times[:b + 1], dtype=np.float64)
        first = self._first
        self._first, self._last_above, self._scores, self._times = -1, -1, [], []
        if t[b, 1] - t[0, 0] < self.min_duration:
            return []
        return [_event(s, t, 0, b, first_clip=first)]


# ----------------------------------------------------------------------------- output


def _json_safe(value: Any) -> Any:
    """Non-finite floats → None (strict JSON); numpy scalars/arrays → Python values."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_events_json(
    path: str | os.PathLike,
    video_events: Mapping[str, Sequence[Event]],
    *,
    threshold: float,
    threshold_source: str,
    min_gap: float = 0.0,
    min_duration: float = 0.0,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``events.json`` atomically.

    Layout::

        {"schema": 1, "rule": "score >= threshold", "threshold": 0.5,
         "threshold_source": "...", "min_gap_s": 0.0, "min_duration_s": 0.0, ...extra,
         "videos": {"<name>": {"n_events": 1, "events": [Event.to_dict(), ...]}}}

    ``extra`` (e.g. checkpoint, model) is merged at the top level; it may not override the
    fixed keys. Non-finite floats are written as ``null``.
    """
    doc: dict[str, Any] = {
        "schema": EVENTS_SCHEMA,
        "rule": RULE,
        "threshold": float(threshold),
        "threshold_source": str(threshold_source),
        "min_gap_s": float(min_gap),
        "min_duration_s": float(min_duration),
    }
    for k, v in (extra or {}).items():
        if k in doc or k == "videos":
            raise ValueError(f"extra key {k!r} would overwrite a fixed events.json key")
        doc[k] = v
    doc["videos"] = {
        str(name): {"n_events": len(evs), "events": [e.to_dict() for e in evs]}
        for name, evs in video_events.items()
    }
    atomic_write_text(path, json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n")


def format_time(seconds: float, style: str = "hms") -> str:
    """``H:MM:SS.ss`` (``style="hms"``) or ``12.34`` seconds (``style="s"``)."""
    if style == "s":
        return f"{seconds:.2f}"
    if style != "hms":
        raise ValueError(f"style must be 'hms' or 's', got {style!r}")
    sign = "-" if seconds < 0 else ""
    cs = int(round(abs(seconds) * 100))
    h, rest = divmod(cs, 360000)
    m, rest = divmod(rest, 6000)
    return f"{sign}{h}:{m:02d}:{rest // 100:02d}.{rest % 100:02d}"


def format_events_table(video: str, events: Sequence[Event], style: str = "hms") -> str:
    """A fixed-width table of one video's events for the terminal (no trailing newline).

    Columns: ``#`` (1-based), start, end, duration (s), peak score, mean score.
    """
    head = f"{video}: {len(events)} event{'s' if len(events) != 1 else ''}"
    if not events:
        return head
    tw = 11 if style == "hms" else 9
    lines = [head, f"{'#':>3}  {'start':>{tw}}  {'end':>{tw}}  {'duration':>8}  {'peak':>6}  {'mean':>6}"]
    for i, e in enumerate(events, start=1):
        lines.append(
            f"{i:>3}  {format_time(e.start_time, style):>{tw}}  {format_time(e.end_time, style):>{tw}}  "
            f"{e.duration:>7.2f}s  {e.peak_score:>6.3f}  {e.mean_score:>6.3f}"
        )
    return "\n".join(lines)
