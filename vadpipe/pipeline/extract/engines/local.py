"""The single-process engine: one model in this process, ``config.workers`` decoding processes."""

from __future__ import annotations

import logging
import time

from torch.utils.data import DataLoader

from vadpipe.pipeline.extract.model import FeatureModel, finished_videos
from vadpipe.pipeline.extract.shm import plan_transfer
from vadpipe.pipeline.extract.sources import VideoJob
from vadpipe.pipeline.extract.stream import ClipStream, worker_init
from vadpipe.pipeline.extract.writer import RunContext, finish_video, video_array

__all__ = ["run_local"]

log = logging.getLogger(__name__)


def run_local(ctx: RunContext, todo: list[VideoJob], model: FeatureModel, progress: bool) -> None:
    """The single-process engine: one model, ``config.workers`` decoding processes."""
    from tqdm.auto import tqdm

    config, summary = ctx.config, ctx.summary
    transfer = plan_transfer(config)  # what fits in /dev/shm
    if transfer.warning:
        log.warning("%s", transfer.warning)
    loader = DataLoader(
        ClipStream(todo, config),
        batch_size=None,
        num_workers=transfer.workers,
        pin_memory=model.device.type == "cuda",
        worker_init_fn=worker_init if transfer.workers else None,
        prefetch_factor=transfer.prefetch,
        multiprocessing_context="spawn" if transfer.workers and model.device.type == "cuda" else None,
    )
    t_start = time.time()
    bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True)
    try:
        # each video's features in one array as they come (memory bounded whatever its length)
        for done, parts in finished_videos(loader, model, config.batch_clips):
            summary.clips += sum(len(f) for _, f in parts)
            row = finish_video(ctx, todo[done.job], done, parts)
            ctx.record(row, video_array(parts) if row.status == "ok" else None)
            bar.update(1)
            elapsed = time.time() - t_start
            bar.set_postfix(clips_per_s=f"{summary.clips / max(elapsed, 1e-9):.1f}", failed=summary.failed)
    finally:
        bar.close()
