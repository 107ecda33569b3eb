"""Decoding side of extraction: videos -> resized uint8 clip batches and ``done`` records.

:class:`ClipStream` runs in the DataLoader's worker processes of every engine (local,
multi-device, Ray); the model side is :mod:`vadpipe.pipeline.extract.model`.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from vadpipe.errors import VadpipeError, VideoTooShortError
from vadpipe.pipeline.extract.clips import iter_clips
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.decode import open_video
from vadpipe.pipeline.extract.sources import VideoJob
from vadpipe.pipeline.extract.transforms import resize_clips

__all__ = ["ClipStream", "worker_init"]

log = logging.getLogger(__name__)


class ClipStream(IterableDataset):
    """Yields, per video, resized uint8 clip batches ``[n, 3, T, h, w]`` then a ``done`` record.

    With several workers, worker ``w`` takes the videos ``w, w + W, w + 2W, ...``. The
    ``done`` record carries the video's :class:`VideoJob` (``"video"``), so a consumer that
    did not hand out the jobs itself (a multi-device worker) knows which video finished.
    """

    def __init__(self, jobs: list[VideoJob], config: ExtractConfig):
        self.jobs = jobs
        self.config = config

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        wid, nworkers = (info.id, info.num_workers) if info else (0, 1)
        for index in range(wid, len(self.jobs), nworkers):
            yield from self._video(index, self.jobs[index])

    def _video(self, index: int, job: VideoJob) -> Iterator[dict]:
        cfg = self.config
        started = time.time()
        done = {"kind": "done", "job": index, "video": job, "started": started, "n_frames": 0, "fps": 0.0,
                "n_clips": 0, "decoder": "", "error": ""}
        try:
            with open_video(job.path, backend=cfg.decoder, fps=cfg.fps) as reader:
                done["fps"] = float(reader.info.fps)
                pending: list[np.ndarray] = []
                start = 0
                for clip in iter_clips(reader.iter_chunks(), cfg.clip):
                    pending.append(clip)
                    if len(pending) == cfg.batch_clips:
                        yield self._batch(index, start, pending)
                        start += len(pending)
                        pending = []
                if pending:
                    yield self._batch(index, start, pending)
                    start += len(pending)
                done["n_frames"] = reader.frames_read
                done["n_clips"] = start
                info = reader.info  # after decoding: auto may have switched backend part-way
                done["decoder"] = info.backend + (f" (fallback: {info.fallback_reason})" if info.fallback_reason else "")
            if start == 0:
                raise VideoTooShortError(
                    f"{job.path}: {done['n_frames']} frame(s) decoded, fewer than one "
                    f"{cfg.clip.length}-frame clip; use --tail pad to keep short videos"
                )
        except VadpipeError as e:
            done["error"] = f"{type(e).__name__}: {e}"
        except Exception as e:  # a bug or an unexpected library failure: keep the batch going
            log.debug("unexpected failure on %s\n%s", job.path, traceback.format_exc())
            done["error"] = f"unexpected {type(e).__name__}: {e} (please report this)"
        yield done

    def _batch(self, index: int, start: int, clips: list[np.ndarray]) -> dict:
        frames = torch.from_numpy(np.stack(clips))  # [n, T, H, W, 3]
        data = resize_clips(frames, self.config.preset)  # [n, 3, T, h, w]
        return {"kind": "clips", "job": index, "start": start, "data": data}


def worker_init(_: int) -> None:
    torch.set_num_threads(1)
