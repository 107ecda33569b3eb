"""Score plots, thumbnails and the self-contained HTML report (plus a headless-Chromium check)."""

from __future__ import annotations

import base64
import html
import io
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers.media import (
    make_audio_only,
    make_text_as_video,
    make_truncated,
    make_video,
    make_zero_byte,
    read_index,
)
from vadpipe.manifests.atomic import TMP_MARKER
from vadpipe.pipeline.score.events import find_events, uniform_clip_times
from vadpipe.pipeline.score.report import (
    VideoReport,
    chromium_dump_dom,
    chromium_screenshot,
    extract_thumbnail,
    find_chromium,
    frame_labels_scores,
    plot_scores,
    render_scores_png,
    video_auc,
    write_html_report,
)

PNG_SIG = b"\x89PNG\r\n\x1a\n"
FPS = 25.0
WEIRD = 'Robbery <b>cam "3"</b> & \'lobby\'.mp4'


def curve(n: int = 40) -> np.ndarray:
    x = np.arange(n)
    return np.clip(0.1 + 0.8 * np.exp(-0.5 * ((x - n / 3) / 2.5) ** 2), 0, 1)


def n_colours(img: Image.Image) -> int:
    colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
    return len(colours) if colours is not None else 1 << 20


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A 4-second 25 fps video (100 frames, 64x48): frame i shows i in binary."""
    return make_video(tmp_path_factory.mktemp("vid") / "clip.mp4", 100, fps=FPS)


def report_for(name: str, path, n: int = 40, gt=None, **kwargs) -> VideoReport:
    times = uniform_clip_times(n, FPS, 2)  # 2-frame clips: 0.08 s each
    scores = curve(n)
    return VideoReport(name=name, path=path, fps=FPS, n_frames=2 * n, times=times, scores=scores,
                       events=find_events(scores, times, 0.5), threshold=0.5, gt_intervals=gt, **kwargs)


# ----------------------------------------------------------------------------- plot


def test_plot_scores_writes_a_valid_png(tmp_path):
    times = uniform_clip_times(40, 30.0)
    scores = curve()
    events = find_events(scores, times, 0.5)
    out = plot_scores(tmp_path / "plots" / "a.png", times, scores, 0.5, events, [(5.0, 9.0)], title=WEIRD)
    data = out.read_bytes()
    assert data[:8] == PNG_SIG
    img = Image.open(io.BytesIO(data))
    img.verify()
    img = Image.open(io.BytesIO(data))
    assert img.size == (1500, 480)
    assert 10_000 < len(data) < 500_000
    assert n_colours(img) > 20
    assert not [p for p in out.parent.iterdir() if TMP_MARKER in p.name]


@pytest.mark.parametrize("scores", [np.array([0.7]), np.linspace(-3, 4, 10), np.zeros(0)])
def test_render_handles_single_clip_logits_and_empty(scores):
    times = uniform_clip_times(scores.size, 30.0)
    png = render_scores_png(times, scores, threshold=0.5, events=find_events(scores, times, 0.5))
    assert png[:8] == PNG_SIG


def test_render_rejects_mismatched_arrays():
    with pytest.raises(ValueError, match="scores but"):
        render_scores_png(uniform_clip_times(3, 30.0), np.zeros(4), 0.5)


# ----------------------------------------------------------------------------- thumbnails


@pytest.mark.parametrize("time_s, index", [(0.0, 0), (1.0, 25), (1.03, 26), (2.5, 62), (99.0, 99)])
def test_thumbnail_is_the_frame_at_that_time(video, time_s, index):
    data = extract_thumbnail(video, time_s)
    assert data is not None and data[:3] == b"\xff\xd8\xff"
    img = Image.open(io.BytesIO(data))
    assert img.size == (64, 48)
    assert read_index(np.asarray(img.convert("RGB"))) == index


def test_thumbnail_is_scaled_to_max_width(tmp_path):
    path = make_video(tmp_path / "wide.mp4", 10, width=160, height=96, fps=FPS)
    img = Image.open(io.BytesIO(extract_thumbnail(path, 0.2, max_width=80)))
    assert img.size == (80, 48)


@pytest.mark.parametrize("make", ["text", "zero", "truncated", "audio", "missing"])
def test_thumbnail_is_none_on_unreadable_files(tmp_path, video, make):
    path = {
        "text": lambda: make_text_as_video(tmp_path / "notes.mp4"),
        "zero": lambda: make_zero_byte(tmp_path / "empty.mp4"),
        "truncated": lambda: make_truncated(video, tmp_path / "cut.mp4", 0.5),
        "audio": lambda: make_audio_only(tmp_path / "sound.m4a", seconds=0.5),
        "missing": lambda: tmp_path / "nowhere.mp4",
    }[make]()
    assert extract_thumbnail(path, 0.5) is None


# ----------------------------------------------------------------------------- per-video AUC


def test_frame_labels_scores_and_video_auc():
    times = uniform_clip_times(4, 2.0, clip_len=2)  # clips of 1 s, 2 frames each
    scores = np.array([0.1, 0.9, 0.8, 0.2])
    labels, frame_scores = frame_labels_scores(times, scores, [(1.0, 3.0)], fps=2.0, n_frames=9)
    assert labels.tolist() == [0, 0, 1, 1, 1, 1, 0, 0, 0]
    assert frame_scores.tolist() == [0.1, 0.1, 0.9, 0.9, 0.8, 0.8, 0.2, 0.2, 0.2]  # tail frame: last clip
    base = dict(name="v", path=None, fps=2.0, n_frames=8, times=times, scores=scores, events=[], threshold=0.5)
    assert video_auc(VideoReport(**base, gt_intervals=[(1.0, 3.0)])) == 1.0
    assert video_auc(VideoReport(**base, gt_intervals=[(0.0, 1.0)])) == pytest.approx(0.0)
    assert math.isnan(video_auc(VideoReport(**base, gt_intervals=[])))
    assert video_auc(VideoReport(**base)) is None
    assert video_auc(VideoReport(**base, auc=0.7)) == 0.7


# ----------------------------------------------------------------------------- HTML


def _attrs(text: str, name: str) -> list[str]:
    return re.findall(rf'\b{name}\s*=\s*["\']([^"\']*)["\']', text, flags=re.I)


def build_report(tmp_path: Path, video: Path) -> Path:
    videos = [
        report_for(WEIRD, video, gt=[(0.8, 1.4)]),                   # thumbnails from the video file
        report_for("normal_017.mp4", None, gt=[]),                   # no file: no thumbnails
        report_for("given.mkv", None, thumbnails=[None]),            # thumbnails given (one failed)
    ]
    return write_html_report(tmp_path / "out" / "report.html", videos, "Report <&> test",
                             metrics={"ROC-AUC": 0.91234, "AP": float("nan")},
                             model="rtfm", checkpoint=tmp_path / "best.pt", threshold_source="fixed",
                             info={"min gap": "0.5 s"})


def test_html_report_is_self_contained_and_escaped(tmp_path, video):
    path = build_report(tmp_path, video)
    text = path.read_text(encoding="utf-8")
    assert not [p for p in path.parent.iterdir() if TMP_MARKER in p.name]
    # every video, escaped; no raw markup from names or the title
    for name in (WEIRD, "normal_017.mp4", "given.mkv"):
        assert text.count(f">{_escaped(name)}<") >= 2  # summary link and section heading
    assert "<b>" not in text and "Report &lt;&amp;&gt; test" in text
    # nothing loaded from elsewhere
    assert not re.search(r"https?://", text, flags=re.I)
    srcs, hrefs = _attrs(text, "src"), _attrs(text, "href")
    assert srcs and all(s.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for s in srcs)
    assert all(h.startswith("#") for h in hrefs)
    assert "<link" not in text.lower() and "@import" not in text and "url(" not in text
    # 3 plots + 1 thumbnail (one event in the first video; none extracted or given elsewhere)
    pngs = [s for s in srcs if s.startswith("data:image/png")]
    jpegs = [s for s in srcs if s.startswith("data:image/jpeg")]
    assert len(pngs) == 3 and len(jpegs) == 1
    for uri in srcs:
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).verify()
    assert text.count('class="nothumb"') == 2
    # summary, metrics, run information
    assert 'id="summary"' in text and ">AUC<" in text
    assert "0.9123" in text and ">rtfm<" in text and "best.pt" in text and "score &gt;= threshold" in text


def _escaped(s: str) -> str:
    return html.escape(s, quote=True)


def test_thumbnail_count_must_match_events(tmp_path):
    bad = report_for("v.mp4", None, thumbnails=[])
    with pytest.raises(ValueError, match="thumbnails"):
        write_html_report(tmp_path / "r.html", [bad], "t")
    assert not (tmp_path / "r.html").exists()


def test_report_without_gt_has_no_auc_column(tmp_path):
    text = write_html_report(tmp_path / "r.html", [report_for("a.mp4", None)], "t").read_text()
    assert ">AUC<" not in text and 'id="metrics"' not in text


# ----------------------------------------------------------------------------- headless Chromium

CHROMIUM = find_chromium()
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium/Chrome installed (chromium, "
                                    "chromium-browser, google-chrome): headless rendering not checked")


@pytest.mark.browser
@needs_chromium
def test_report_renders_in_headless_chromium(tmp_path, video):
    path = build_report(tmp_path, video)
    dom = chromium_dump_dom(path, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.console == [], dom.console  # no JS errors, no blocked resources
    assert 'id="summary"' in dom.stdout and "<table" in dom.stdout
    assert 'data-images-ok="true"' in dom.stdout  # every data-URI image decoded
    # the name reached the DOM as text, not markup (the DOM serialiser escapes only <, >, &)
    assert f"<h2>{html.escape(WEIRD, quote=False)}</h2>" in dom.stdout

    shot = tmp_path / "report_screenshot.png"
    run = chromium_screenshot(path, shot, window=(1280, 2000), timeout=60)
    print(f"\nreport: {path}\nscreenshot: {shot}")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.console == [], run.console
    data = shot.read_bytes()
    assert data[:8] == PNG_SIG
    img = Image.open(io.BytesIO(data))
    assert img.size == (1280, 2000)
    assert n_colours(img) > 200  # text, plots and thumbnails, not a blank page


@pytest.mark.browser
@needs_chromium
def test_chromium_check_sees_blocked_resources(tmp_path):
    """Control: the console check does catch an external image (blocked by the CSP)."""
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"',
                    write_html_report(tmp_path / "ok.html", [], "t").read_text()).group(1)
    page = tmp_path / "bad.html"
    page.write_text(f'<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="{csp}">'
                    '</head><body><img src="https://example.invalid/x.png"></body></html>')
    dom = chromium_dump_dom(page, timeout=60)
    assert any("example.invalid" in line for line in dom.console), dom.stderr[-2000:]
