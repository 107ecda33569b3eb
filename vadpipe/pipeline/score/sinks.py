"""Where ``score --stream`` sends each event as it closes: ``OUT/events.jsonl`` and a webhook.

A **record** is one JSON object per closed event: :func:`event_record` (the
:class:`~vadpipe.pipeline.score.events.Event` fields plus the video, the threshold and
``provisional``). Sinks take records with :meth:`EventSink.emit`, which never blocks the
scorer for long, and report what they did with :meth:`EventSink.close`.

* :class:`JsonlSink` appends one line per record to a file, flushed per line, so that
  ``tail -f OUT/events.jsonl`` sees each event when it closes. A run starts the file afresh
  (like ``events.json``).
* :class:`WebhookSink` POSTs each record (``Content-Type: application/json``) from a
  background thread with the standard library's :mod:`urllib`. Records wait in a bounded
  queue; when it is full a new record is **dropped** and counted (scoring never waits for
  the network). A POST is tried up to ``attempts`` times, ``backoff · 2^(k-1)`` seconds
  before retry ``k``; any 2xx answer is success, anything else (an HTTP error status, a
  redirect — which would turn the POST into a GET without the record — a refused
  connection, a timeout) is retried; after the last attempt the record is **failed**. At
  :meth:`WebhookSink.close` the queue is drained for at most ``drain`` seconds; every
  record accepted then that was neither sent nor failed (still queued, or being POSTed) is
  counted as dropped, so ``sent + failed + dropped`` is the number of records emitted (a
  POST already under way then may still reach the server: dropped means not confirmed).
"""

from __future__ import annotations

import json
import math
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Protocol
from urllib.parse import urlsplit

from vadpipe.errors import ConfigError
from vadpipe.pipeline.score.events import Event, _json_safe

#: The per-event log of a streamed run, in the output folder.
EVENTS_JSONL_NAME = "events.jsonl"
#: Records the webhook queue holds by default.
WEBHOOK_QUEUE = 256
#: POST attempts per record by default.
WEBHOOK_ATTEMPTS = 3
#: Seconds before the first retry by default (doubled for each further one).
WEBHOOK_BACKOFF = 0.5
#: Seconds one POST may take by default.
WEBHOOK_TIMEOUT = 5.0
#: Seconds :meth:`WebhookSink.close` waits for the queue to drain by default.
WEBHOOK_DRAIN = 10.0


def event_record(video: str, event: Event, *, provisional: bool, threshold: float,
                 source: str | None = None) -> dict[str, Any]:
    """The JSON-ready record of one closed event: ``{"video", "source", "provisional",
    "threshold", **event.to_dict(), "closed_at"}`` (``closed_at``: Unix time, seconds)."""
    record: dict[str, Any] = {"video": video, "source": source if source is not None else video,
                              "provisional": bool(provisional), "threshold": float(threshold)}
    record.update(event.to_dict())
    record["closed_at"] = round(time.time(), 3)
    return _json_safe(record)


class EventSink(Protocol):
    """Takes event records; :meth:`close` returns a one-line summary (or ``None``)."""

    def emit(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> str | None: ...


class JsonlSink:
    """Appends records to ``path`` as JSON lines, flushed per line (module docstring)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "w", encoding="utf-8")
        self.written = 0

    def emit(self, record: Mapping[str, Any]) -> None:
        """Write one line and flush it."""
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        self._fh.flush()
        self.written += 1

    def close(self) -> str | None:
        self._fh.close()
        return None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answers, not deliveries: urllib would re-send a POST as a body-less GET."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        return None  # urllib then raises HTTPError with the 3xx status


_OPENER = urllib.request.build_opener(_NoRedirect)


def check_webhook_url(url: str) -> str:
    """``url`` when it is an ``http://`` or ``https://`` URL with a host.

    Raises:
        ConfigError: any other URL.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"--webhook takes an http:// or https:// URL, got {url!r}")
    return url


class WebhookSink:
    """POSTs records to ``url`` from a background thread (module docstring).

    Attributes:
        sent: records a 2xx answer acknowledged.
        failed: records that failed ``attempts`` times.
        dropped: records dropped because the queue was full, or still queued at close.
        posts: POST attempts made (retries included).
    """

    def __init__(self, url: str, *, queue_size: int = WEBHOOK_QUEUE, attempts: int = WEBHOOK_ATTEMPTS,
                 backoff: float = WEBHOOK_BACKOFF, timeout: float = WEBHOOK_TIMEOUT,
                 drain: float = WEBHOOK_DRAIN) -> None:
        self.url = check_webhook_url(url)
        if queue_size < 1 or attempts < 1:
            raise ConfigError(f"the webhook needs queue_size >= 1 and attempts >= 1, got {queue_size}, {attempts}")
        for name, value in (("backoff", backoff), ("timeout", timeout), ("drain", drain)):
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"webhook {name} must be a number of seconds >= 0, got {value!r}")
        self.attempts, self.backoff, self.timeout, self.drain = attempts, backoff, timeout, drain
        self.sent = self.failed = self.dropped = self.posts = 0
        self.last_error = ""
        self._accepted = 0  # records the queue took
        self._final = False  # close() has taken the counts
        self._summary: str | None = None
        self._queue: queue.Queue[bytes] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._closing = threading.Event()  # no more records: drain, then stop
        self._abandon = threading.Event()  # the drain time is over: stop retrying
        self._thread = threading.Thread(target=self._run, name="vadpipe-webhook", daemon=True)
        self._thread.start()

    def emit(self, record: Mapping[str, Any]) -> None:
        """Queue one record; never blocks (a full queue drops it)."""
        body = json.dumps(record, allow_nan=False).encode("utf-8")
        with self._lock:  # counted before the thread can take it
            self._accepted += 1
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            with self._lock:
                self._accepted -= 1
                self.dropped += 1

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(self.url, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        with _OPENER.open(request, timeout=self.timeout) as response:  # HTTPError for 3xx/4xx/5xx
            response.read()
            if not 200 <= response.status < 300:
                raise urllib.error.HTTPError(self.url, response.status, response.reason, response.headers, None)

    def _deliver(self, body: bytes) -> str:
        """POST one record with retries: ``"sent"``, ``"failed"`` or ``"abandoned"`` (closed meanwhile)."""
        for attempt in range(1, self.attempts + 1):
            with self._lock:
                self.posts += 1
            try:
                self._post(body)
            except (urllib.error.URLError, OSError, ValueError) as e:  # HTTPError is a URLError
                with self._lock:
                    self.last_error = str(e)
                if attempt == self.attempts:
                    return "failed"
                if self._abandon.wait(self.backoff * 2 ** (attempt - 1)):
                    return "abandoned"
                continue
            return "sent"
        return "failed"

    def _run(self) -> None:
        while not self._abandon.is_set():
            try:
                body = self._queue.get(timeout=0.05)
            except queue.Empty:
                if self._closing.is_set():
                    return
                continue
            outcome = self._deliver(body)
            with self._lock:  # after close() the record was counted as dropped already
                if not self._final:
                    if outcome == "sent":
                        self.sent += 1
                    elif outcome == "failed":
                        self.failed += 1

    def close(self) -> str:
        """Wait up to ``drain`` seconds for the queued records, then stop; returns the
        summary line (counts taken now: a record still queued or being POSTed is dropped).
        Calling it again returns the same line."""
        if self._summary is not None:
            return self._summary
        self._closing.set()
        self._thread.join(self.drain)
        self._abandon.set()
        with self._lock:
            self._final = True
            self.dropped += self._accepted - self.sent - self.failed
            line = (f"webhook {self.url}: {self.sent} sent, {self.failed} failed after {self.attempts} attempt(s), "
                    f"{self.dropped} dropped (queue full or not sent in {self.drain:g} s at the end)")
            if self.failed and self.last_error:
                line += f"; last error: {self.last_error}"
        self._summary = line
        return line
