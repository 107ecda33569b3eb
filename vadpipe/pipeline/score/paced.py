"""A video played as a live source: MPEG-TS over loopback HTTP at real-time pace (benchmarks).

:func:`ts_timeline` remuxes a video's packets (no re-encoding) into MPEG-TS in memory and
notes when each piece is due (the packet's decode time, from the first packet's);
:class:`PacedServer` serves that to every ``GET`` on ``127.0.0.1`` with chunked transfer
encoding, each piece sent when it is due, so a client sees the video arrive as a camera
would send it.
"""

from __future__ import annotations

import http.server
import io
import os
import threading
import time
from fractions import Fraction
from types import TracebackType

from vadpipe.errors import VideoDecodeError

#: Bytes of MPEG-TS the muxer writes out at a time (7 TS packets: what a UDP datagram carries).
TS_WRITE_SIZE = 7 * 188


def ts_timeline(video: str | os.PathLike) -> list[tuple[float, bytes]]:
    """``[(due seconds, bytes), ...]``: the video track of ``video`` remuxed into MPEG-TS.

    Raises:
        VideoDecodeError: the file cannot be read or has no video track.
    """
    import av

    buf = io.BytesIO()
    pieces: list[tuple[float, bytes]] = []
    try:
        with av.open(os.fspath(video)) as src:
            if not src.streams.video:
                raise VideoDecodeError(f"{video}: no video track to serve")
            ist = src.streams.video[0]
            with av.open(buf, "w", format="mpegts", buffer_size=TS_WRITE_SIZE,
                         container_options={"flush_packets": "1"}) as out:
                ost = out.add_stream_from_template(ist)
                first: Fraction | None = None
                sent = 0
                for packet in src.demux(ist):
                    if packet.dts is None or packet.size == 0:
                        continue
                    t = packet.dts * Fraction(packet.time_base)
                    first = t if first is None else first
                    packet.stream = ost
                    out.mux(packet)
                    data = buf.getvalue()
                    if len(data) > sent:
                        pieces.append((float(t - first), data[sent:]))
                        sent = len(data)
            data = buf.getvalue()
            if len(data) > sent:
                pieces.append((pieces[-1][0] if pieces else 0.0, data[sent:]))
    except av.FFmpegError as e:
        raise VideoDecodeError(f"{video}: cannot remux it into MPEG-TS ({e})") from e
    return pieces


class PacedServer:
    """Serves ``pieces`` (:func:`ts_timeline`) at their due times to each ``GET`` on
    ``127.0.0.1`` (a free port); a context manager. ``url`` is the address to open."""

    def __init__(self, pieces: list[tuple[float, bytes]]) -> None:
        outer = self
        self.pieces = pieces
        self.started: list[float] = []  # perf_counter() at each GET

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (the http.server name)
                t0 = time.perf_counter()
                outer.started.append(t0)
                self.send_response(200)
                self.send_header("Content-Type", "video/mp2t")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                try:
                    for due, data in outer.pieces:
                        wait = t0 + due - time.perf_counter()
                        if wait > 0:
                            time.sleep(wait)
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="vadpipe-paced-server",
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/live.ts"

    def __enter__(self) -> PacedServer:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
