#!/usr/bin/env python
"""Build a demo anomaly report from synthetic score curves and screenshot it with headless Chromium.

    python scripts/report_screenshot.py [--out DIR] [--width 1280] [--height 2000]

Writes ``DIR/report.html`` (default ``DIR`` = a new temporary folder), ``DIR/scores_*.png``
and ``DIR/report_screenshot.png`` and prints their paths. The videos are small synthetic
clips made with ``tests/helpers/media.py`` (PyAV), so the thumbnails are real decoded frames. Without
Chromium the HTML is still written and the script says so (exit 1).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers.media import make_video  # noqa: E402
from vadpipe.pipeline.score.events import find_events, uniform_clip_times  # noqa: E402
from vadpipe.pipeline.score.report import (  # noqa: E402
    VideoReport,
    chromium_screenshot,
    find_chromium,
    plot_scores,
    write_html_report,
)

FPS = 30.0
CLIP_LEN = 16


def demo_curve(n: int, bumps: list[tuple[float, float, float]], seed: int) -> np.ndarray:
    """A noisy low baseline plus Gaussian bumps ``(centre clip, width clips, height)``: ``[n]`` in [0, 1]."""
    rng = np.random.default_rng(seed)
    x = np.arange(n, dtype=np.float64)
    s = 0.08 + 0.04 * rng.standard_normal(n)
    for c, w, h in bumps:
        s += h * np.exp(-0.5 * ((x - c) / w) ** 2)
    return np.clip(s, 0.0, 1.0)


def build(out: Path) -> Path:
    """Write the demo report under ``out``; returns the HTML path."""
    threshold, min_gap = 0.5, 1.0
    specs = [
        ("Robbery <cam 3> & \"lobby\".mp4", 90, [(20, 3, 0.8), (27, 2, 0.7), (66, 4, 0.6)],
         [(9.0, 16.5), (34.0, 37.5)]),
        ("Normal_Videos_017_x264.mp4", 60, [(40, 2, 0.3)], []),
        ("street_fight.mkv", 45, [(10, 5, 0.9)], None),
    ]
    videos = []
    for k, (name, n, bumps, gt) in enumerate(specs):
        path = make_video(out / "videos" / f"demo{k}.mp4", n * CLIP_LEN, width=160, height=96, fps=FPS, seed=k)
        times = uniform_clip_times(n, FPS, CLIP_LEN)
        scores = demo_curve(n, bumps, seed=k)
        events = find_events(scores, times, threshold, min_gap=min_gap)
        png = plot_scores(out / f"scores_{k}.png", times, scores, threshold, events, gt, title=name)
        videos.append(VideoReport(name=name, path=path, fps=FPS, n_frames=n * CLIP_LEN, times=times,
                                  scores=scores, events=events, threshold=threshold, gt_intervals=gt,
                                  plot_png=png))
    return write_html_report(
        out / "report.html", videos, "Demo anomaly report <synthetic>",
        metrics={"ROC-AUC (frame)": 0.8731, "AP": 0.6412, "PR-AUC": 0.6388},
        model="rtfm", checkpoint="runs/rtfm/best.pt", threshold_source="validation Youden J",
        info={"min gap": f"{min_gap} s", "backbone": "i3d (10 crops)"},
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=2000)
    args = ap.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="vadpipe-report-"))
    html_path = build(out)
    print(f"report:     {html_path}")
    if find_chromium() is None:
        print("no Chromium found: no screenshot", file=sys.stderr)
        return 1
    shot = out / "report_screenshot.png"
    run = chromium_screenshot(html_path, shot, window=(args.width, args.height))
    for line in run.console:
        print(f"console: {line}", file=sys.stderr)
    if run.returncode != 0 or not shot.is_file():
        print(f"chromium failed (exit {run.returncode}):\n{run.stderr[-2000:]}", file=sys.stderr)
        return 1
    print(f"screenshot: {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
