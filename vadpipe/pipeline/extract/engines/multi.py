"""``vadpipe extract --gpus 0,1,...``: one worker process per device on this machine.

Data flow::

    driver (this process)                              worker process per device (spawn)
    ─────────────────────                              ─────────────────────────────────
    todo, longest file first ─ (index, job) ─► task queue[d] ─► decode processes of d
      at most LOOKAHEAD × decoders assigned                     (DataLoader over a queue-fed
      to a device at a time; refilled as each                    ClipStream) → resized clips
      of its videos finishes                                  → batches across videos → model
                                                               → .npy written atomically
    ctx.record(row) → features.csv ◄── result pipe[d] ◄────── ("row", index, row, clips)
    process sentinels: a dead worker's assigned, unfinished videos become ``failed`` rows

* **Sharding**: videos go out longest first (file size as the proxy: an ``os.stat`` costs
  about 2 µs a file, a container probe of the frame count about 3.5 ms, i.e. seconds for a
  dataset, before any work starts), one at a time to the least-loaded ready worker. A worker
  never holds more than ``LOOKAHEAD × decoders`` unfinished videos, and gets the next one
  only when one of its own finishes: a fast device takes more videos (dynamic, not round
  robin), and the driver always knows which videos each worker has.
* **Decoding**: each worker's ``config.workers`` DataLoader processes (or the worker itself
  with ``workers=0``) pull videos from that worker's task queue; their clips are batched
  across videos exactly as in the single-process engine
  (:func:`~vadpipe.pipeline.extract.model.finished_videos`). A decoder with nothing to do yields
  an ``idle`` heartbeat rather than block, so the DataLoader's in-order delivery never waits
  on it while another decoder's finished video is queued behind it.
* **Writing**: workers write their feature files atomically
  (:func:`~vadpipe.pipeline.extract.writer.finish_video` with the picklable
  :class:`~vadpipe.pipeline.extract.writer.WriteContext`) and send each finished row on their own
  pipe (synchronous sends of small messages: whole or not at all, even if the worker is
  killed). Only the driver calls :meth:`RunContext.record`: ``features.csv`` has a single
  writer and is rewritten atomically.
* **Failures**: a bad video fails its own row, as in the single-process engine. A worker
  that dies (SIGKILL, OOM, a CUDA error) fails the videos it held, with the reason, and the
  other workers go on with the queue; when every worker has stopped, the videos never
  started fail too. A re-run retries all of them. An exception while a worker starts (bad
  device, weights) is raised again in the driver, same type and message, and so is a full
  disk in any worker (:class:`~vadpipe.errors.DiskFullError`: the run stops as it does in
  one process, rather than failing every video one worker after the other). On Ctrl-C or any
  driver exception the workers are terminated and the manifest keeps its ``skipped`` rows;
  workers whose driver was killed exit by themselves (they watch their parent).
"""

from __future__ import annotations

import logging
import os
import pickle
import queue
import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from typing import Any, Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from vadpipe.errors import ConfigError, DiskFullError, WeightsIntegrityError, WorkerError
from vadpipe.manifests.features import FeatureRow
from vadpipe.pipeline.device import resolve_device
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.model import FeatureModel, finished_videos
from vadpipe.pipeline.extract.shm import PREFETCH, plan_transfer
from vadpipe.pipeline.extract.sources import VideoJob
from vadpipe.pipeline.extract.stream import ClipStream, worker_init
from vadpipe.pipeline.extract.writer import RunContext, WriteContext, finish_video, remove_leftovers

log = logging.getLogger(__name__)

#: Unfinished videos a worker may hold per decoding process: one being decoded, one waiting.
LOOKAHEAD = 2
#: Seconds a decoder waits on an empty task queue before it yields an idle heartbeat.
IDLE_POLL_S = 0.1
#: Seconds the driver gives terminated workers before it kills them.
TERMINATE_GRACE_S = 10.0
#: The heartbeat :class:`_QueueClipStream` yields while its queue is empty (not a clip batch: skipped).
IDLE = "idle"


# ----------------------------------------------------------------------------- worker side


class _QueueClipStream(ClipStream):
    """A :class:`ClipStream` over ``(index, job)`` tasks taken from a shared queue until a
    ``None`` sentinel: every decoding process of a worker pulls from the same queue.

    Yields :data:`IDLE` whenever the queue stays empty for ``poll_s`` seconds (consumers skip it).
    """

    def __init__(self, config: ExtractConfig, tasks: Any, poll_s: float = IDLE_POLL_S):
        super().__init__([], config)
        self.tasks = tasks
        self.poll_s = poll_s

    def __iter__(self) -> Iterator[object]:
        while True:
            try:
                task = self.tasks.get(timeout=self.poll_s)
            except queue.Empty:
                yield IDLE
                continue
            if task is None:
                return
            index, job = task
            yield from self._video(index, job)


@dataclass(frozen=True)
class _WorkerArgs:
    """What a worker process needs besides its queue and pipe (all picklable)."""

    slot: int
    label: str
    device: str
    threads: int
    driver_pid: int
    writer: bytes  # a pickled WriteContext, unpickled where a failure can be reported
    prefetch: int | None = PREFETCH  # batches each decoding process prefetches (what fits in /dev/shm)


def _worker_device(name: str) -> torch.device:
    """The worker's device; a CUDA index that does not exist is a :class:`ConfigError`."""
    device = resolve_device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r} requested but only {count} CUDA device(s) are visible "
                              f"(indices 0-{count - 1}); check --gpus and CUDA_VISIBLE_DEVICES")
    return device


def _decoder_start_method(device: torch.device) -> str:
    """How a worker starts its decoding processes: ``spawn`` next to CUDA (which does not
    survive a fork), else ``fork`` where there is one, as the single-process engine does.
    (A spawned process defaults to ``spawn`` itself, which re-imports everything: seconds
    per decoder.)"""
    import multiprocessing

    if device.type != "cuda" and "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "spawn"


def _watch_driver(items: Iterable[object], driver_pid: int) -> Iterator[object]:
    """Pass ``items`` through; exit the process at once if the driver has died (the worker was
    re-parented), so that a killed run leaves no orphan workers behind."""
    for item in items:
        if os.getppid() != driver_pid:
            os._exit(3)
        yield item


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _startup_error(e: Exception) -> tuple:
    """The ``startup_error`` message for ``e``: the exception itself when the driver can
    rebuild it from a pickle, its text in any case."""
    try:
        payload: bytes | None = pickle.dumps(e)
        pickle.loads(payload)
    except Exception:
        payload = None
    return ("startup_error", payload, f"{type(e).__name__}: {e}", traceback.format_exc())


def _worker_main(args: _WorkerArgs, tasks: Any, conn: Connection) -> None:
    """Entry point of a worker process (see :func:`_worker_body`).

    Ctrl-C is left to the driver. SIGTERM (the driver stopping the run) raises
    ``SystemExit``, so the stack unwinds and removes any half-written temporary file. Once
    the body has finished or unwound, the process exits at once: every output is written and
    fsync'd, and the interpreter's teardown (seconds with torch loaded) would only keep the
    driver waiting.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    code = 0
    try:
        _worker_body(args, tasks, conn)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _worker_body(args: _WorkerArgs, tasks: Any, conn: Connection) -> None:
    """Build the model, then turn queued videos into feature files and rows until the
    ``None`` sentinel.

    Messages on ``conn``: ``("ready", pid)``, ``("row", index, FeatureRow, clips)``,
    ``("startup_error", pickled exception | None, text, traceback)``, ``("crash", text)``,
    ``("bye",)``.
    """
    try:
        writer: WriteContext = pickle.loads(args.writer)  # imports the backbone's module
        torch.set_num_threads(args.threads)
        device = _worker_device(args.device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        config = replace(writer.config, device=args.device)
        model = FeatureModel(writer.spec, config, device)
        if model.weights_sha256 != writer.weights_sha256:
            raise WeightsIntegrityError(
                f"the worker for {args.label} loaded weights with sha256 {model.weights_sha256}, but the run "
                f"started with {writer.weights_sha256}: the weight file changed during the run; run again")
    except Exception as e:
        conn.send(_startup_error(e))
        conn.close()
        sys.exit(1)
    conn.send(("ready", os.getpid()))

    loader = DataLoader(
        _QueueClipStream(config, tasks),
        batch_size=None,
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=worker_init if config.workers else None,
        prefetch_factor=args.prefetch if config.workers else None,
        multiprocessing_context=_decoder_start_method(device) if config.workers else None,
    )
    try:
        for done, parts in finished_videos(_watch_driver(loader, args.driver_pid), model, config.batch_clips):
            row = finish_video(writer, done.video, done, parts)
            conn.send(("row", done.job, row, sum(len(f) for _, f in parts)))
    except Exception as e:  # a CUDA error, a full disk, a dead decoder ...: this worker stops
        text = f"{type(e).__name__}: {e}".strip()
        log.debug("worker for %s failed\n%s", args.label, traceback.format_exc())
        try:
            conn.send(("crash", text, isinstance(e, DiskFullError)))
        except OSError:
            pass
        sys.exit(1)
    conn.send(("bye",))
    conn.close()


# ----------------------------------------------------------------------------- driver side


@dataclass
class _Worker:
    """The driver's view of one worker process."""

    slot: int
    label: str
    process: Any  # multiprocessing.context.SpawnProcess
    conn: Connection
    tasks: Any  # multiprocessing.Queue of (index, VideoJob) | None
    decoders: int
    started: float
    assigned: set[int] = field(default_factory=set)
    pid: int | None = None
    ready_at: float | None = None
    ended_at: float | None = None  # "bye" received, or the process seen dead
    stopping: bool = False  # sentinels sent
    eof: bool = False  # pipe closed by every writer
    alive: bool = True  # process not yet seen exiting
    crash: str = ""
    bye: bool = False
    videos: int = 0
    clips: int = 0

    def stats(self) -> dict:
        """This worker's entry of :attr:`ExtractSummary.per_device`."""
        end = self.ended_at or time.time()
        out: dict[str, Any] = {
            "videos": self.videos, "clips": self.clips,
            "startup_s": round((self.ready_at or end) - self.started, 3),
            "active_s": round(end - self.ready_at, 3) if self.ready_at else 0.0,
        }
        code = self.process.exitcode
        if code not in (None, 0) or self.crash:
            out["exit"] = self.crash or code
        return out


def _labels(devices: tuple[str, ...]) -> list[str]:
    """Names of the workers in messages: the device, with ``#slot`` where devices repeat."""
    return [d if devices.count(d) == 1 else f"{d}#{i}" for i, d in enumerate(devices)]


def _file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def shard_order(todo: list[VideoJob]) -> list[int]:
    """Indices of ``todo`` in the order they are handed out: largest file first (ties by
    path), so that the longest videos start early and the run ends on short ones. A file
    that cannot be read sorts last (it fails fast)."""
    return sorted(range(len(todo)), key=lambda i: (-_file_size(todo[i].path), todo[i].path))


def _death_reason(w: _Worker) -> str:
    """Why ``w`` stopped, for the rows of the videos it held."""
    if w.crash:
        return f"worker for {w.label} failed ({w.crash}) while processing; re-run to retry"
    code = w.process.exitcode
    if code is not None and code < 0:
        try:
            name = f", {signal.Signals(-code).name}"
        except ValueError:
            name = ""
        return f"worker for {w.label} died (exit {code}{name}) while processing; re-run to retry"
    return f"worker for {w.label} stopped (exit {code}) while processing; re-run to retry"


def _lost_row(ctx: RunContext, job: VideoJob, reason: str) -> FeatureRow:
    config, spec = ctx.config, ctx.spec
    return FeatureRow(video=job.path, backbone=spec.name, weights_sha256=ctx.weights_sha256,
                      crops=max(config.crops, spec.nodes), dim=spec.feature_dim, layout=config.layout,
                      config_hash=ctx.config_hash, status="failed", error=reason)


def run_multi(ctx: RunContext, todo: list[VideoJob], *, progress: bool) -> None:
    """The multi-device engine: one worker process per entry of ``ctx.config.devices``.

    Args:
        ctx: the planned run (the driver's; only it records rows).
        todo: videos to process; ``ctx.rows`` already holds a ``skipped`` row for each.
        progress: show a progress bar on stderr with per-device counts.

    Fills ``ctx.summary`` (ok, failed, clips, per_device).

    Raises:
        VadpipeError: (the same type and message) when a worker fails to start, e.g.
            :class:`~vadpipe.errors.ConfigError` for a device that does not exist.
    """
    import multiprocessing

    from tqdm.auto import tqdm

    config, summary = ctx.config, ctx.summary
    devices = tuple(config.devices)
    mp = multiprocessing.get_context("spawn")
    pending = deque(shard_order(todo))
    transfer = plan_transfer(config, processes=len(devices))  # every worker's decoders share /dev/shm
    if transfer.warning:
        log.warning("%s", transfer.warning)
    decoders = max(1, transfer.workers)
    lookahead = LOOKAHEAD * decoders
    threads = max(1, torch.get_num_threads() // len(devices))
    write_ctx = ctx.writer()
    write_ctx.config = replace(write_ctx.config, workers=transfer.workers)
    writer = pickle.dumps(write_ctx)
    workers: list[_Worker] = []
    t_start = time.time()
    bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True)

    def show() -> None:
        elapsed = max(time.time() - t_start, 1e-9)
        bar.set_postfix_str(f"clips_per_s={summary.clips / elapsed:.1f}, failed={summary.failed}, "
                            + " ".join(f"{w.label}={w.videos}" for w in workers), refresh=False)

    def handle(w: _Worker, msg: tuple) -> None:
        kind = msg[0]
        if kind == "row":
            _, index, row, clips = msg
            w.assigned.discard(index)
            w.videos += 1
            w.clips += clips
            summary.clips += clips
            ctx.record(row)
            show()
            bar.update(1)
        elif kind == "ready":
            w.pid, w.ready_at = msg[1], time.time()
            log.debug("worker for %s ready (pid %d) after %.1f s", w.label, w.pid, w.ready_at - w.started)
        elif kind == "startup_error":
            _, payload, text, tb = msg
            log.debug("worker for %s failed to start:\n%s", w.label, tb)
            exc = pickle.loads(payload) if payload is not None else None
            if not isinstance(exc, BaseException):
                exc = WorkerError(f"the worker for {w.label} failed to start: {text}")
            elif hasattr(exc, "add_note"):
                exc.add_note(f"(raised in the extraction worker for {w.label})")
            raise exc
        elif kind == "crash":
            w.crash = msg[1]
            if msg[2]:  # a full disk stops the whole run, as in one process: the others would fail too
                raise DiskFullError(f"worker for {w.label}: " + msg[1].removeprefix("DiskFullError: "))
        elif kind == "bye":
            w.bye, w.ended_at = True, time.time()

    def drain(w: _Worker) -> None:
        while not w.eof and w.conn.poll():
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                w.eof = True
                break
            handle(w, msg)

    def bury(w: _Worker) -> None:
        """``w``'s process has exited: take its last messages, fail what it still held."""
        w.process.join()
        w.alive = False
        w.ended_at = w.ended_at or time.time()
        drain(w)
        if w.ready_at is None:  # died while starting, without an exception to report
            raise WorkerError(
                f"the worker for {w.label} exited (exit {w.process.exitcode}) before its model was ready; see its "
                f"messages above. A script that calls vadpipe must guard its entry point with "
                f"`if __name__ == '__main__':` (workers are started with the spawn method)")
        if w.assigned:
            reason = _death_reason(w)
            log.warning("%s (%d video(s) lost)", reason, len(w.assigned))
            show()
            for index in sorted(w.assigned):
                ctx.record(_lost_row(ctx, todo[index], reason))
                bar.update(1)
            w.assigned.clear()
        elif not w.bye:
            log.warning("%s", _death_reason(w).replace(" while processing; re-run to retry", ""))

    def dispatch() -> None:
        ready = [w for w in workers if w.alive and w.ready_at is not None and not w.stopping]
        while pending and ready:
            w = min(ready, key=lambda w: (len(w.assigned), w.slot))
            if len(w.assigned) >= lookahead:
                break
            index = pending.popleft()
            w.assigned.add(index)
            w.tasks.put((index, todo[index]))
        if not pending:
            for w in ready:
                for _ in range(w.decoders):
                    w.tasks.put(None)
                w.stopping = True

    try:
        for slot, (device, label) in enumerate(zip(devices, _labels(devices))):
            tasks = mp.Queue()
            recv, send = mp.Pipe(duplex=False)
            args = _WorkerArgs(slot=slot, label=label, device=device, threads=threads,
                               driver_pid=os.getpid(), writer=writer, prefetch=transfer.prefetch)
            proc = mp.Process(target=_worker_main, args=(args, tasks, send), name=f"vadpipe-extract[{label}]")
            w = _Worker(slot=slot, label=label, process=proc, conn=recv, tasks=tasks, decoders=decoders,
                        started=time.time())
            workers.append(w)
            proc.start()
            send.close()  # the worker holds the only write end: its death closes the pipe
        show()
        while any(w.alive for w in workers):
            live = [w for w in workers if w.alive]
            waitables = [w.conn for w in live if not w.eof] + [w.process.sentinel for w in live]
            ready = set(wait(waitables, timeout=1.0))
            for w in live:
                if w.conn in ready:
                    drain(w)
                if w.process.sentinel in ready:
                    bury(w)
            dispatch()
        if pending:  # every worker stopped before the queue was empty
            last = max((w for w in workers if w.ended_at), key=lambda w: w.ended_at, default=None)
            reason = (f"not processed: every worker stopped (last: {_death_reason(last)})" if last
                      else "not processed: no worker started; re-run to retry")
            for index in pending:
                ctx.record(_lost_row(ctx, todo[index], reason))
                bar.update(1)
            pending.clear()
    finally:
        bar.close()
        summary.per_device = {w.label: w.stats() for w in workers}
        _stop(workers)
        # Every worker has exited: a temporary file left under the output folder is one a worker
        # could not remove (killed mid-write, or stopped while cleaning up after a full disk).
        # The folder lock makes this run its only writer, so such files are removed now rather
        # than at the next run's start.
        remove_leftovers(ctx.root)


def _stop(workers: list[_Worker]) -> None:
    """Terminate workers still running (Ctrl-C, a driver error), then release queues and pipes."""
    for w in workers:
        if w.process.is_alive():
            w.process.terminate()
    deadline = time.time() + TERMINATE_GRACE_S
    for w in workers:
        if w.process.pid is None:
            continue
        w.process.join(max(0.0, deadline - time.time()))
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
    for w in workers:
        w.tasks.cancel_join_thread()  # never block the driver's exit on tasks nobody will read
        w.tasks.close()
        w.conn.close()
