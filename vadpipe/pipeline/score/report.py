"""Score plots, event thumbnails and a self-contained HTML report of scored videos.

* :func:`render_scores_png` / :func:`plot_scores` — the score curve of one video (a step
  over each clip's span), the threshold, predicted events and GT intervals, rendered with
  matplotlib's Agg canvas (``matplotlib.figure.Figure``; pyplot's global state is never
  touched, so this is safe in threads and on machines without a display).
* :func:`extract_thumbnail` — one frame near a time, as JPEG bytes (PyAV + PIL), or
  ``None`` when the video cannot be read (the report still renders).
* :func:`write_html_report` — one HTML file with everything inline: CSS in a ``<style>``,
  images as base64 ``data:`` URIs, a Content-Security-Policy that forbids loading anything
  else, no JavaScript needed (one inline line marks the ``<body>`` once every image has
  decoded — used by the headless-browser test).
* :func:`find_chromium`, :func:`chromium_screenshot`, :func:`chromium_dump_dom` — look at a
  report with headless Chromium (tests and ``scripts/report_screenshot.py``).

Times are seconds from the video's first frame; GT intervals are ``(start_s, end_s)``
seconds, end exclusive.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from vadpipe.manifests.atomic import atomic_write_bytes, atomic_write_text
from vadpipe.pipeline.score.events import Event, check_scores_times, format_time
from vadpipe.pipeline.train import metrics as ev

log = logging.getLogger(__name__)

Interval = tuple[float, float]

_EVENT_COLOUR = "#f28e2b"
_GT_COLOUR = "#59a14f"
_CURVE_COLOUR = "#1f4e79"
_THRESHOLD_COLOUR = "#d62728"


# ----------------------------------------------------------------------------- plot


def render_scores_png(
    times: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    events: Sequence[Event] = (),
    gt_intervals: Sequence[Interval] | None = None,
    title: str = "",
    *,
    size_in: tuple[float, float] = (10.0, 3.2),
    dpi: int = 150,
) -> bytes:
    """The score plot as PNG bytes.

    Args:
        times: ``[T, 2]`` clip start/end seconds.
        scores: ``[T]`` clip scores; drawn as a step holding each score from its clip's
            start to the next clip's start (the last to its end).
        threshold: drawn as a dashed horizontal line.
        events: shaded (orange) over ``start_time..end_time``.
        gt_intervals: shaded differently (green, hatched) when given.
        title: the plot title.

    The y axis is ``[0, 1]`` when the scores and threshold are in ``[0, 1]``
    (probabilities), else fitted to the data.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    s, t = check_scores_times(scores, times)
    fig = Figure(figsize=size_in, dpi=dpi)
    # fixed margins (not constrained layout): every video's axes get the same box
    fig.subplots_adjust(left=0.07, right=0.845, bottom=0.15, top=0.9)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles = []
    for e in events:  # predicted: filled, full height
        ax.axvspan(e.start_time, e.end_time, facecolor=_EVENT_COLOUR, alpha=0.25, linewidth=0)
    if events:
        handles.append(Patch(facecolor=_EVENT_COLOUR, alpha=0.4, label="predicted event"))
    for a, b in gt_intervals or ():  # GT: hatched, unfilled, plus a solid strip on top
        ax.axvspan(a, b, facecolor="none", hatch="///", edgecolor=_GT_COLOUR, alpha=0.55, linewidth=0)
        ax.axvspan(a, b, ymin=0.965, ymax=1.0, facecolor=_GT_COLOUR, alpha=0.9, linewidth=0)
    if gt_intervals is not None:
        handles.append(Patch(facecolor="none", hatch="///", edgecolor=_GT_COLOUR, label="ground truth"))
    if s.size:
        x = np.r_[t[:, 0], t[-1, 1]]
        y = np.r_[s, s[-1]]
        (curve,) = ax.step(x, y, where="post", color=_CURVE_COLOUR, linewidth=1.6, label="anomaly score")
        handles.insert(0, curve)
        ax.set_xlim(float(t[0, 0]), float(t[-1, 1]) if t[-1, 1] > t[0, 0] else float(t[0, 0]) + 1.0)
    thr_line = ax.axhline(threshold, color=_THRESHOLD_COLOUR, linestyle="--", linewidth=1.2,
                          label=f"threshold {threshold:.3g}")
    handles.insert(1 if s.size else 0, thr_line)
    lo = min(float(s.min()) if s.size else 0.0, threshold)
    hi = max(float(s.max()) if s.size else 1.0, threshold)
    if lo >= 0.0 and hi <= 1.0:
        ax.set_ylim(0.0, 1.04)  # room for a score of exactly 1
        ax.set_yticks(np.linspace(0.0, 1.0, 6))
    else:
        pad = 0.05 * (hi - lo or 1.0)
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("anomaly score")
    if title:
        ax.set_title(title, loc="left", fontsize=11)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8.5, frameon=False)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def plot_scores(
    path_png: str | os.PathLike,
    times: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    events: Sequence[Event] = (),
    gt_intervals: Sequence[Interval] | None = None,
    title: str = "",
) -> Path:
    """Write :func:`render_scores_png` to ``path_png`` atomically; returns the path."""
    png = render_scores_png(times, scores, threshold, events, gt_intervals, title)
    atomic_write_bytes(path_png, png)
    return Path(path_png)


# ----------------------------------------------------------------------------- thumbnails


def extract_thumbnail(video_path: str | os.PathLike, time_s: float, max_width: int = 320) -> bytes | None:
    """JPEG bytes of the frame shown at ``time_s`` seconds from the first frame.

    That is the first frame whose timestamp is at most half a frame before ``time_s``, or
    later — frame ``round(time_s · fps)`` of a constant-rate video (ties: the earlier
    frame); the last frame when ``time_s`` is past the end. The image is scaled down to at
    most ``max_width`` pixels wide. ``None`` (with a warning logged) when the file cannot
    be opened or decoded.
    """
    import av
    from PIL import Image

    try:
        with av.open(os.fspath(video_path)) as container:
            if not container.streams.video:
                log.warning("no thumbnail: %s has no video stream", video_path)
                return None
            stream = container.streams.video[0]
            tb = stream.time_base
            origin = stream.start_time or 0
            target = origin + int(max(float(time_s), 0.0) / tb) if tb else 0
            half = int(1 / (2 * stream.average_rate * tb)) if stream.average_rate and tb else 0
            try:
                container.seek(target, stream=stream, backward=True)
            except av.FFmpegError:
                pass  # not seekable: decode from the start
            chosen = None
            for frame in container.decode(stream):
                chosen = frame
                if frame.pts is None or frame.pts >= target - half:
                    break
            if chosen is None:
                log.warning("no thumbnail: no frame decoded from %s", video_path)
                return None
            img = chosen.to_image()
        if img.width > max_width:
            img = img.resize((max_width, max(1, round(img.height * max_width / img.width))), Image.BILINEAR)
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="JPEG", quality=85)
        return buf.getvalue()
    except (av.FFmpegError, OSError, ValueError, ZeroDivisionError) as e:
        log.warning("no thumbnail from %s at %.2f s: %s", video_path, time_s, e)
        return None


# ----------------------------------------------------------------------------- per-video data


@dataclass
class VideoReport:
    """What the report shows for one video.

    ``times`` ``[T, 2]`` and ``scores`` ``[T]`` as for :func:`render_scores_png`.
    ``plot_png``: PNG bytes or a PNG file; ``None`` renders it. ``thumbnails``: one image
    (bytes or ``None``) per event, aligned with ``events``; ``None`` extracts them from
    ``path`` at each event's ``peak_time``. ``auc``: the video's frame-level AUC; ``None``
    computes it from ``gt_intervals`` (see :func:`video_auc`).
    """

    name: str
    path: str | os.PathLike | None
    fps: float
    n_frames: int
    times: np.ndarray
    scores: np.ndarray
    events: list[Event]
    threshold: float
    gt_intervals: list[Interval] | None = None
    plot_png: bytes | str | os.PathLike | None = None
    thumbnails: list[bytes | None] | None = None
    auc: float | None = None

    @property
    def duration(self) -> float:
        """``n_frames / fps`` seconds (NaN without a frame rate)."""
        return self.n_frames / self.fps if self.fps > 0 else math.nan


def frame_labels_scores(
    times: np.ndarray, scores: np.ndarray, gt_intervals: Sequence[Interval], fps: float, n_frames: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame GT labels ``[n_frames]`` (0/1) and scores ``[n_frames]``.

    Frame ``f`` is judged at its centre ``(f + 0.5) / fps``: it is anomalous when a GT
    interval ``[a, b)`` contains that time, and takes the score of the last clip starting
    at or before it (frames after the last clip keep its score, as
    :func:`vadpipe.pipeline.train.metrics.expand_scores` does).
    """
    s, t = check_scores_times(scores, times)
    if s.size == 0:
        raise ValueError("no clip scores")
    centre = (np.arange(int(n_frames)) + 0.5) / fps
    idx = np.clip(np.searchsorted(t[:, 0], centre, side="right") - 1, 0, s.size - 1)
    labels = np.zeros(centre.size, dtype=np.uint8)
    for a, b in gt_intervals:
        labels[(centre >= a) & (centre < b)] = 1
    return labels, s[idx]


def video_auc(report: VideoReport) -> float | None:
    """Frame-level ROC-AUC of one video against its GT intervals (``report.auc`` when
    set); ``None`` without GT, NaN when the video has only one class of frames."""
    if report.auc is not None:
        return report.auc
    if report.gt_intervals is None:
        return None
    labels, frame_scores = frame_labels_scores(report.times, report.scores, report.gt_intervals,
                                               report.fps, report.n_frames)
    if not 0 < int(labels.sum()) < labels.size:
        return math.nan
    return ev.roc_auc(labels, frame_scores)


# ----------------------------------------------------------------------------- HTML

_CSS = """
:root { --ink:#1d2330; --muted:#5b6475; --line:#d9dde5; --bg:#f4f5f8; --card:#fff; --accent:#1f4e79; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
  font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif; }
main { max-width:1180px; margin:0 auto; padding:24px 28px 48px; }
h1 { font-size:22px; margin:0 0 4px; }
h2 { font-size:17px; margin:0 0 6px; overflow-wrap:anywhere; }
h3 { font-size:13px; margin:16px 0 8px; color:var(--muted); text-transform:uppercase; letter-spacing:.04em; }
.sub { color:var(--muted); margin:0 0 18px; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:16px 20px; margin:0 0 18px; }
.card > h3:first-child { margin-top:0; }
.top { display:grid; grid-template-columns:repeat(auto-fit, minmax(320px, 1fr)); gap:0 18px; }
.note { color:var(--muted); font-size:12px; margin:8px 0 0; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:middle; }
th { font-weight:600; color:var(--muted); font-size:12px; text-transform:uppercase; letter-spacing:.03em; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
tr:last-child td { border-bottom:none; }
a { color:var(--accent); text-decoration:none; }
a:hover { text-decoration:underline; }
dl.kv { display:grid; grid-template-columns:max-content 1fr; gap:4px 18px; margin:0; }
dl.kv dt { color:var(--muted); }
dl.kv dd { margin:0; overflow-wrap:anywhere; font-variant-numeric:tabular-nums; }
.meta { color:var(--muted); margin:0 0 10px; overflow-wrap:anywhere; }
img.plot { display:block; width:100%; height:auto; border:1px solid var(--line); border-radius:4px; }
img.thumb { display:block; width:160px; height:auto; border-radius:4px; border:1px solid var(--line); }
.nothumb { display:inline-block; width:160px; padding:20px 0; text-align:center; color:var(--muted);
  background:var(--bg); border-radius:4px; font-size:12px; }
.badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; }
.badge.hot { background:#fde4cf; color:#9a4a00; }
.badge.calm { background:#e3efe0; color:#2f6b26; }
.empty { color:var(--muted); font-style:italic; margin:8px 0 0; }
footer { color:var(--muted); font-size:12px; text-align:center; margin-top:24px; }
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'")

# Marks <body data-images-ok="true|false"> after load; nothing depends on it.
_SCRIPT = ("window.addEventListener('load',function(){var ok=Array.prototype.every.call(document.images,"
           "function(i){return i.complete&&i.naturalWidth>0;});document.body.setAttribute('data-images-ok',"
           "ok?'true':'false');});")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, (float, np.floating)):
        return "n/a" if not math.isfinite(float(value)) else f"{float(value):.{digits}f}"
    return _e(value)


def image_data_uri(data: bytes) -> str:
    """``data:image/png|jpeg;base64,...`` for PNG or JPEG bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        mime = "image/png"
    elif data[:3] == b"\xff\xd8\xff":
        mime = "image/jpeg"
    else:
        raise ValueError("image bytes are neither PNG nor JPEG")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _plot_bytes(v: VideoReport) -> bytes:
    if v.plot_png is None:
        return render_scores_png(v.times, v.scores, v.threshold, v.events, v.gt_intervals, v.name)
    if isinstance(v.plot_png, bytes):
        return v.plot_png
    return Path(v.plot_png).read_bytes()


def _thumbnails(v: VideoReport) -> list[bytes | None]:
    if v.thumbnails is not None:
        if len(v.thumbnails) != len(v.events):
            raise ValueError(f"{v.name}: {len(v.thumbnails)} thumbnails for {len(v.events)} events")
        return list(v.thumbnails)
    if v.path is None or not Path(v.path).is_file():
        return [None] * len(v.events)
    return [extract_thumbnail(v.path, e.peak_time) for e in v.events]


def _events_html(v: VideoReport, thumbs: list[bytes | None]) -> str:
    if not v.events:
        return f'<p class="empty">No events: no clip scored at or above the threshold {v.threshold:.3g}.</p>'
    rows = []
    for i, (e, th) in enumerate(zip(v.events, thumbs), start=1):
        img = (f'<img class="thumb" alt="frame at {e.peak_time:.2f} s" src="{image_data_uri(th)}">'
               if th else '<span class="nothumb">no frame</span>')
        rows.append(
            f'<tr><td class="num">{i}</td><td class="num">{format_time(e.start_time)}</td>'
            f'<td class="num">{format_time(e.end_time)}</td><td class="num">{e.duration:.2f} s</td>'
            f'<td class="num">{e.peak_score:.3f}</td><td class="num">{format_time(e.peak_time)}</td>'
            f'<td class="num">{e.mean_score:.3f}</td><td>{img}</td></tr>'
        )
    return ('<table class="events"><thead><tr><th class="num">#</th><th class="num">start</th>'
            '<th class="num">end</th><th class="num">duration</th><th class="num">peak</th>'
            '<th class="num">peak at</th><th class="num">mean</th><th>frame at peak</th></tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table>')


def _kv(items: Mapping[str, Any]) -> str:
    body = "".join(f"<dt>{_e(k)}</dt><dd>{_num(v)}</dd>" for k, v in items.items() if v is not None)
    return f'<dl class="kv">{body}</dl>'


def write_html_report(
    path_html: str | os.PathLike,
    videos: Sequence[VideoReport],
    title: str,
    metrics: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    threshold_source: str | None = None,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write one self-contained HTML report atomically; returns its path.

    Args:
        path_html: output file.
        videos: one :class:`VideoReport` per video, shown in this order.
        title: page title.
        metrics: overall metrics (e.g. ``{"ROC-AUC": 0.91, "AP": 0.72}``), shown when given.
        model, checkpoint, threshold_source: shown in the run section with the threshold(s).
        info: further ``{label: value}`` rows for the run section.

    Contents: run section, overall metrics, a summary table (video, duration, clips, max
    score, events, per-video AUC when any video has GT), then per video its plot and
    events table with a thumbnail at each event's peak. All text is HTML-escaped.
    """
    sections = []
    thresholds = sorted({float(v.threshold) for v in videos})
    run: dict[str, Any] = {"model": model, "checkpoint": os.fspath(checkpoint) if checkpoint else None,
                           "threshold": ", ".join(f"{t:.4g}" for t in thresholds) or None,
                           "threshold source": threshold_source, "rule": "score >= threshold",
                           "videos": len(videos)}
    run.update(info or {})
    top = f'<section class="card" id="run"><h3>Run</h3>{_kv(run)}</section>'
    if metrics:
        top += f'<section class="card" id="metrics"><h3>Overall metrics</h3>{_kv(metrics)}</section>'
    sections.append(f'<div class="top">{top}</div>')

    with_gt = any(v.gt_intervals is not None or v.auc is not None for v in videos)
    aucs = [video_auc(v) for v in videos]
    head = ('<tr><th>video</th><th class="num">duration</th><th class="num">clips</th>'
            '<th class="num">max score</th><th class="num">events</th>'
            + ('<th class="num">AUC</th>' if with_gt else "") + "</tr>")
    rows = []
    for k, (v, auc) in enumerate(zip(videos, aucs)):
        n = len(v.events)
        badge = f'<span class="badge {"hot" if n else "calm"}">{n}</span>'
        max_score = float(np.max(v.scores)) if len(v.scores) else math.nan
        rows.append(
            f'<tr><td><a href="#video-{k}">{_e(v.name)}</a></td>'
            f'<td class="num">{format_time(v.duration) if math.isfinite(v.duration) else "—"}</td>'
            f'<td class="num">{len(v.scores)}</td><td class="num">{_num(max_score, 3)}</td>'
            f'<td class="num">{badge}</td>' + (f'<td class="num">{_num(auc)}</td>' if with_gt else "") + "</tr>"
        )
    note = ('<p class="note">AUC: frame-level ROC-AUC of the video against its ground truth; n/a when '
            'the video has only normal (or only anomalous) frames, — without ground truth.</p>' if with_gt else "")
    sections.append(f'<section class="card" id="summary"><h3>Summary</h3><table class="summary">'
                    f'<thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>{note}</section>')

    for k, v in enumerate(videos):
        meta = [f"{v.fps:.3f} fps" if v.fps > 0 else None, f"{v.n_frames} frames",
                f"{len(v.scores)} clips", f"threshold {v.threshold:.3g}"]
        if v.gt_intervals is not None:
            meta.append(f"{len(v.gt_intervals)} GT interval{'s' if len(v.gt_intervals) != 1 else ''}")
        path_line = f'<p class="meta">{_e(os.fspath(v.path))}</p>' if v.path is not None else ""
        sections.append(
            f'<section class="card video" id="video-{k}"><h2>{_e(v.name)}</h2>{path_line}'
            f'<p class="meta">{_e(" · ".join(m for m in meta if m))}</p>'
            f'<img class="plot" alt="anomaly scores of {_e(v.name)}" src="{image_data_uri(_plot_bytes(v))}">'
            f'<h3>Events</h3>{_events_html(v, _thumbnails(v))}</section>'
        )

    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>\n<body><main>"
        f'<h1>{_e(title)}</h1><p class="sub">vadpipe anomaly report · {len(videos)} '
        f'video{"s" if len(videos) != 1 else ""} · generated {stamp}</p>\n'
        + "\n".join(sections)
        + f"\n<footer>made by vadpipe</footer></main><script>{_SCRIPT}</script></body></html>\n"
    )
    atomic_write_text(path_html, page)
    return Path(path_html)


# ----------------------------------------------------------------------------- headless Chromium

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                   "--disable-background-networking", "--disable-component-update", "--disable-sync",
                   "--hide-scrollbars", "--enable-logging=stderr", "--v=0")


@dataclass
class ChromiumRun:
    """Result of one headless Chromium call; ``console`` holds the page's console lines
    (JavaScript errors, blocked resources), which a clean report does not produce."""

    returncode: int
    stdout: str
    stderr: str
    console: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary (``/usr/bin/chromium`` or one on ``PATH``), or ``None``."""
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_chromium(args: Sequence[str], html_path: str | os.PathLike, timeout: float,
                  chromium: str | None) -> ChromiumRun:
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium or Chrome found (looked for " + ", ".join(CHROMIUM_NAMES) + ")")
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="vadpipe-chromium-") as profile:
        proc = subprocess.run([binary, *_CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url],
                              capture_output=True, text=True, timeout=timeout, check=False)
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln or "Uncaught" in ln]
    return ChromiumRun(proc.returncode, proc.stdout, proc.stderr, console)


def chromium_screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, *,
                        window: tuple[int, int] = (1280, 2000), timeout: float = 60.0,
                        chromium: str | None = None) -> ChromiumRun:
    """Screenshot ``html_path`` (``window`` = width, height in CSS pixels) to ``png_path``."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    return _run_chromium([f"--screenshot={png_path}", f"--window-size={window[0]},{window[1]}"],
                         html_path, timeout, chromium)


def chromium_dump_dom(html_path: str | os.PathLike, *, timeout: float = 60.0,
                      chromium: str | None = None) -> ChromiumRun:
    """Load ``html_path`` and return the DOM after the load event (``stdout``)."""
    return _run_chromium(["--dump-dom"], html_path, timeout, chromium)


__all__ = [
    "ChromiumRun", "VideoReport", "chromium_dump_dom", "chromium_screenshot", "extract_thumbnail",
    "find_chromium", "frame_labels_scores", "image_data_uri", "plot_scores", "render_scores_png",
    "video_auc", "write_html_report",
]
