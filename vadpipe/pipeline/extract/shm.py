"""Shared memory for the clip batches that decoding processes hand to the model process.

A DataLoader worker sends each :class:`~vadpipe.pipeline.extract.stream.ClipBatch` tensor through
a file in ``/dev/shm`` (torch's ``file_descriptor`` strategy), held until the model process is done
with it. Docker gives a container 64 MB there by default; when that fills, torch's queue thread
used to print a traceback and drop the batch (its video then had clips missing, or the loader
waited forever for it). Two things prevent that:

* :func:`plan_transfer`, before the workers start, sizes what is in flight at once (each worker's
  prefetched batches, plus the ones the model holds) to fit in the free space, with fewer
  prefetched batches or fewer workers, else decodes in the model's process (``workers=0``: no
  shared memory at all), with one warning;
* :func:`share_batch`, in the worker, moves each batch into shared memory itself, waiting a bounded
  time for space to be freed, and otherwise raises :class:`~vadpipe.errors.SharedMemoryError`: the
  video fails with the reason (never the run, never a hang), and a re-run retries it.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

from vadpipe.errors import SharedMemoryError
from vadpipe.extractors.presets import ClipPreset
from vadpipe.pipeline.extract.config import ExtractConfig

__all__ = ["PREFETCH", "SHM_PATH", "Transfer", "batch_bytes", "plan_transfer", "share_batch", "shm_free_bytes"]

log = logging.getLogger(__name__)

#: Where torch puts the shared memory of tensors sent between processes (Linux).
SHM_PATH = "/dev/shm"
#: Batches each decoding process prefetches when shared memory allows (the DataLoader's ``prefetch_factor``).
PREFETCH = 4
#: Batches held outside the workers' queues: the model's pending batch and the one being sent.
HELD_BATCHES = 2
#: Fraction of the free shared memory a run plans to use (other processes share it too).
BUDGET = 0.75
#: Frame shape a batch is sized for when the preset keeps the aspect ratio (16:9, the common case).
ASSUMED_FRAME = (1080, 1920)
#: Seconds a worker waits for shared memory to be freed before it fails the video; poll interval.
SHARE_WAIT_S = 30.0
SHARE_POLL_S = 0.05

MB = 1 << 20


@dataclass(frozen=True)
class Transfer:
    """How batches travel from the decoding processes to the model.

    Attributes:
        workers: decoding processes (0: decode in the model's process).
        prefetch: batches each one prefetches (``None`` with no workers).
        warning: the one warning to show when the requested settings did not fit (``""``: they did).
    """

    workers: int
    prefetch: int | None
    warning: str = ""


def shm_free_bytes(path: str = SHM_PATH) -> int | None:
    """Bytes free for an unprivileged writer in ``path`` (``None`` where there is no such folder)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def batch_bytes(config: ExtractConfig) -> int:
    """Bytes of one ``[batch_clips, 3, T, h, w]`` uint8 batch (frames assumed :data:`ASSUMED_FRAME`
    when the preset keeps the aspect ratio: a wider video's batches are larger)."""
    preset = config.preset or ClipPreset()  # before ExtractConfig.with_preset: the I3D default
    h, w = preset.resized_size(*ASSUMED_FRAME)
    return config.batch_clips * 3 * config.clip.length * h * w


def plan_transfer(config: ExtractConfig, workers: int | None = None, free: int | None = None,
                  processes: int = 1) -> Transfer:
    """The workers and prefetch that fit the free shared memory.

    Args:
        config: the run's settings (``batch_clips``, clip length, preset).
        workers: decoding processes asked for (default ``config.workers``), per model process.
        free: free bytes in ``/dev/shm`` (default: :func:`shm_free_bytes`; ``None``: unknown, no limit).
        processes: model processes sharing that space (the multi-device engine's workers).

    Returns:
        The requested ``workers`` with :data:`PREFETCH` when that fits; else a smaller prefetch,
        then fewer workers; else ``workers=0``. A :attr:`Transfer.warning` says what changed.
    """
    workers = config.workers if workers is None else workers
    if workers == 0:
        return Transfer(0, None)
    free = shm_free_bytes() if free is None else free
    if free is None:
        return Transfer(workers, PREFETCH)
    one = batch_bytes(config)
    budget = BUDGET * free / max(1, processes)

    def need(w: int, p: int) -> int:
        return (w * p + HELD_BATCHES) * one

    for p in range(PREFETCH, 0, -1):
        if need(workers, p) <= budget:
            return Transfer(workers, p)
    fits = max((w for w in range(1, workers) if need(w, 1) <= budget), default=0)
    what = (f"{SHM_PATH} has {free / MB:.0f} MB free and {workers} decoding worker(s) with --batch-clips "
            f"{config.batch_clips} need about {need(workers, 1) / MB:.0f} MB there "
            f"({one / MB:.1f} MB a batch at 1080p)")
    fix = ("give it more (docker run --shm-size=1g, or --ipc=host) or lower --batch-clips for parallel "
           "decoding")
    if fits:
        return Transfer(fits, 1, f"{what}; using {fits} worker(s); {fix}")
    return Transfer(0, None, f"{what}; decoding in the main process (--workers 0, slower); {fix}")


def share_batch(tensor, wait_s: float | None = None):
    """Move ``tensor`` into shared memory in this (worker) process, so sending it cannot fail
    later in the queue's thread (where a failure loses the batch). Waits up to ``wait_s``
    (default :data:`SHARE_WAIT_S`) for the model process to free space.

    Raises:
        SharedMemoryError: still no space after the wait.
    """
    wait_s = SHARE_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return tensor.share_memory_()
        except RuntimeError as e:
            if "shared memory" not in str(e) and "No space" not in str(e):
                raise
            if time.monotonic() >= deadline:
                free = shm_free_bytes()
                left = f"{free / MB:.1f} MB free" if free is not None else "free space unknown"
                raise SharedMemoryError(
                    f"could not put a {tensor.nbytes / MB:.1f} MB clip batch in shared memory ({SHM_PATH}: "
                    f"{left}) for {wait_s:.0f} s; give it more (docker run --shm-size=1g, or --ipc=host), "
                    "or use --workers 0 or a smaller --batch-clips") from None
            time.sleep(SHARE_POLL_S)
