"""The files a scoring run writes, shared by the PyTorch path and the exported-model runtime
(:mod:`vadpipe.pipeline.export.runtime`); no torch here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vadpipe.manifests.atomic import atomic_write_text
from vadpipe.manifests.tables import FLOAT32_FORMAT

SCORES_MANIFEST_NAME = "scores_manifest.csv"
EVENTS_NAME = "events.json"
CLIP_SCORE_COLUMNS = ("clip", "start_frame", "end_frame", "start_time", "end_time", "score")
MANIFEST_COLUMNS = ("video", "status", "error", "scores_csv", "plot", "feature_path", "n_clips", "fps",
                    "duration_s", "max_score", "n_events", "threshold", "checkpoint", "seconds")


def write_clip_scores(path: Path, scores: np.ndarray, times: np.ndarray, clip_len: int = 0, stride: int = 0, *,
                      frame_ranges: np.ndarray | None = None) -> None:
    """Per-video ``scores.csv`` (:data:`CLIP_SCORE_COLUMNS`): clip, start/end frame (0-based,
    end exclusive: clip ``i`` of a file is ``i * stride .. i * stride + clip_len``, or the
    given ``frame_ranges [n, 2]`` of a live stream, indices of received frames), start/end
    time in seconds, score. Written atomically."""
    i = np.arange(scores.size)
    if frame_ranges is None:
        frame_ranges = np.stack([i * stride, i * stride + clip_len], axis=1)
    df = pd.DataFrame({"clip": i, "start_frame": frame_ranges[:, 0], "end_frame": frame_ranges[:, 1],
                       "start_time": times[:, 0], "end_time": times[:, 1], "score": scores},
                      columns=list(CLIP_SCORE_COLUMNS))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, df.to_csv(index=False, float_format=FLOAT32_FORMAT))


def write_manifest(path: Path, records: list[dict]) -> None:
    """``scores_manifest.csv``: one row per video in :data:`MANIFEST_COLUMNS`."""
    atomic_write_text(path, pd.DataFrame(records, columns=MANIFEST_COLUMNS).to_csv(index=False, float_format="%.6g"))
