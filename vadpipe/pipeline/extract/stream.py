"""Decoding side of extraction: videos to typed stream items, :class:`ClipBatch` and :class:`VideoDone`.

:class:`ClipStream` runs in the DataLoader's worker processes of every engine (local,
multi-device, Ray); the model side is :mod:`vadpipe.pipeline.extract.model`.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Iterator, Union

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vadpipe.errors import VadpipeError, VideoTooShortError
from vadpipe.pipeline.extract.clips import ClipSpec, count_clips, iter_clips
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.decode import open_video
from vadpipe.pipeline.extract.shm import share_batch
from vadpipe.pipeline.extract.sources import VideoJob
from vadpipe.pipeline.extract.transforms import resize_chunk, stack_resized

__all__ = ["ClipBatch", "ClipStream", "VideoDone", "lost_clips_reason", "worker_init"]

log = logging.getLogger(__name__)


@dataclass
class ClipBatch:
    """Consecutive clips of one video, resized, uint8.

    Attributes:
        job: index of the video in the run's list of jobs.
        start: index of the first clip in the video.
        data: ``[n, 3, T, h, w]`` uint8 (a tensor; the Ray engine ships it as a NumPy array).
        n_clips_hint: the clips the whole video is expected to give (from the container's
            frame count; ``0``: unknown), for the consumer to size the video's feature
            array once (:class:`~vadpipe.pipeline.extract.model.FeatureBuffer`). An
            estimate: a decoder may deliver fewer frames.
    """

    job: int
    start: int
    data: torch.Tensor
    n_clips_hint: int = 0


@dataclass
class VideoDone:
    """The end of one video's stream: what the writer records in its manifest row.

    Attributes:
        job: index of the video in the run's list of jobs.
        video: the video (a consumer that did not hand out the jobs, e.g. a multi-device
            worker, knows from it which video finished).
        started: when decoding started (``time.time()``).
        n_frames: frames decoded; ``fps``: the stream's (or the resampled) frame rate.
        n_clips: clips yielded; ``n_batches``: :class:`ClipBatch` items yielded.
        decoder: the backend that decoded, with the fallback reason and what else was done
            to the frames (:attr:`~vadpipe.pipeline.extract.decode.VideoInfo.notes`), if any.
        rotation: degrees the frames were turned to show them upright (display matrix).
        error: why the video failed (``""``: it did not).
    """

    job: int
    video: VideoJob
    started: float
    n_frames: int = 0
    fps: float = 0.0
    n_clips: int = 0
    n_batches: int = 0
    decoder: str = ""
    rotation: int = 0
    error: str = ""


#: What a clip stream yields.
StreamItem = Union[ClipBatch, VideoDone]


def lost_clips_reason(done: VideoDone, received: int, spec: ClipSpec | None, *, gap: bool = False) -> str:
    """Why the ``received`` clip features of the video that ``done`` ends cannot be its
    features (a :class:`~vadpipe.errors.LostClipsError` row); ``""`` when they can.

    They can when the decoder's record agrees with itself and with what arrived: ``received``
    equals ``done.n_clips`` (the clips its worker yielded), which equals the clips its
    ``done.n_frames`` decoded frames give under ``spec`` (:func:`count_clips`), and no clip
    below the last one received is missing or came twice (``gap``; ``spec`` may then be
    ``None``: the count under the clip rule is not checked). A batch lost between a decoding
    process and the model (a full ``/dev/shm``, a broken queue) fails here, so its video is
    never recorded ``ok`` with part of its clips, and a re-run does it again.
    """
    expected = done.n_clips if spec is None else count_clips(done.n_frames, spec)
    if received == done.n_clips == expected and not gap:
        return ""
    if done.n_clips != expected and spec is not None:
        return (f"LostClipsError: the decoder reported {done.n_clips} clip(s) from {done.n_frames} frame(s), "
                f"which give {expected} under the clip rule (length {spec.length}, stride {spec.stride}, "
                f"tail {spec.tail}, drop_last {spec.drop_last}); nothing was kept (please report this); "
                "re-run to retry")
    missing = " (clip indices do not line up: some are missing or came twice)" if gap else ""
    return (f"LostClipsError: {received} of the {done.n_clips} clip(s) decoded reached the model{missing}: "
            "a clip batch was lost between the decoding worker and the model (shared memory full? see "
            "docker/README.md: --shm-size), so nothing was kept; re-run to retry")


class ClipStream(IterableDataset):
    """Yields, per video, :class:`ClipBatch` items in clip order, then its :class:`VideoDone`.

    With several workers, worker ``w`` takes the videos ``w, w + W, w + 2W, ...``.
    """

    def __init__(self, jobs: list[VideoJob], config: ExtractConfig):
        self.jobs = jobs
        self.config = config

    def __iter__(self) -> Iterator[StreamItem]:
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        for index in range(wid, len(self.jobs), nworkers):
            yield from self._video(index, self.jobs[index])

    def _video(self, index: int, job: VideoJob) -> Iterator[StreamItem]:
        cfg = self.config
        done = VideoDone(job=index, video=job, started=time.time())
        try:
            with open_video(job.path, backend=cfg.decoder, fps=cfg.fps) as reader:
                done.fps = float(reader.info.fps)
                hint = count_clips(reader.expected_frames, cfg.clip)
                pending: list[np.ndarray] = []  # resized clips [T, h, w, 3]
                start = 0
                # Frames are resized once, as they are decoded: full-size frames are held for
                # one chunk only (a 4K clip would be 400 MB), and overlapping clips share them.
                chunks = (resize_chunk(c, cfg.preset) for c in reader.iter_chunks())
                for clip in iter_clips(chunks, cfg.clip):
                    pending.append(clip)
                    if len(pending) == cfg.batch_clips:
                        yield self._batch(index, start, pending, hint)
                        done.n_batches += 1
                        start += len(pending)
                        pending = []
                if pending:
                    yield self._batch(index, start, pending, hint)
                    done.n_batches += 1
                    start += len(pending)
                done.n_frames = reader.frames_read
                done.n_clips = start
                info = reader.info  # after decoding: auto may have switched backend part-way
                done.decoder = (info.backend + (f" (fallback: {info.fallback_reason})" if info.fallback_reason else "")
                                + (f"; {info.notes}" if info.notes else ""))
                done.rotation = info.rotation
            if start == 0:
                raise VideoTooShortError(
                    f"{job.path}: {done.n_frames} frame(s) decoded, fewer than one "
                    f"{cfg.clip.length}-frame clip; use --tail pad to keep short videos"
                )
        except VadpipeError as e:
            done.error = f"{type(e).__name__}: {e}"
        except Exception as e:  # a bug or an unexpected library failure: keep the batch going
            log.debug("unexpected failure on %s\n%s", job.path, traceback.format_exc())
            done.error = f"unexpected {type(e).__name__}: {e} (please report this)"
        yield done

    def _batch(self, index: int, start: int, clips: list[np.ndarray], hint: int = 0) -> ClipBatch:
        data = stack_resized(clips)  # [n, 3, T, h, w]
        if get_worker_info() is not None:  # sent to the model's process: in shared memory now, or a clear error
            data = share_batch(data)
        return ClipBatch(job=index, start=start, data=data, n_clips_hint=hint)


def worker_init(_: int) -> None:
    torch.set_num_threads(1)
