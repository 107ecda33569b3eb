"""Model side of extraction: a backbone on a device, fed clip batches across videos.

:class:`FeatureModel` turns resized uint8 clips into float32 features; :func:`finished_videos`
batches the clips of many videos for it and yields each video once its features are complete.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch

from vadpipe.extractors.registry import BackboneSpec
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.stream import ClipBatch, VideoDone
from vadpipe.pipeline.extract.transforms import crop_clips, normalize_clips

__all__ = ["FeatureModel", "finished_videos", "RANDOM_WEIGHTS_TAG", "RANDOM_WEIGHTS_SEED"]

RANDOM_WEIGHTS_TAG = "random"
#: Seed of ``--random-weights`` backbones, so that every engine and worker builds the same model.
RANDOM_WEIGHTS_SEED = 0


class FeatureModel:
    """A backbone on a device with a precision policy: resized uint8 clips in, float32 features out."""

    def __init__(self, spec: BackboneSpec, config: ExtractConfig, device: torch.device):
        self.spec = spec
        self.config = config
        self.device = device
        if config.random_weights:  # the same random weights in every process and engine
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = spec.build(False)
        else:
            model = spec.build(True)
        self.weights_sha256 = (
            RANDOM_WEIGHTS_TAG if config.random_weights else str(getattr(model, "weights_sha256", "") or "")
        )
        self.channels_last = config.channels_last and device.type == "cuda"
        model = model.eval().to(device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last_3d)
        self.model = model
        precision = config.precision
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if device.type == "cuda":
            tf32 = precision == "tf32"
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
            torch.backends.cudnn.benchmark = True

    @torch.inference_mode()
    def __call__(self, resized: list[torch.Tensor]) -> torch.Tensor:
        """Features of resized uint8 clips.

        Args:
            resized: batches ``[n_i, 3, T, h_i, w_i]`` from :func:`resize_clips` (frame
                sizes may differ between batches: they can come from different videos).

        Returns:
            float32 ``[sum n_i, crops, D]`` (``[sum n_i, nodes, D]`` for node backbones), in
            order, on the model's device. Nothing here
            waits for the device: the caller copies features to the host only when a video
            is complete, so decoding, transfers and kernel launches of the next batch
            overlap the model's work.
        """
        crops = torch.cat([
            crop_clips(r.to(self.device, non_blocking=True), self.config.preset, self.config.crops) for r in resized
        ])  # [N, crops, 3, T, S, S]
        n, k = crops.shape[:2]
        x = crops.flatten(0, 1)  # [N*crops, 3, T, S, S]
        x = normalize_clips(x, self.config.preset, dtype=self.autocast_dtype or torch.float32)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        ctx = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with ctx:
            feats = self.model(x)
        feats = feats.float().reshape(n, k, *feats.shape[1:])  # [N, crops, D] or [N, crops, nodes, D]
        return feats[:, 0] if self.spec.nodes > 1 else feats  # node backbones run one crop


def finished_videos(items: Iterable[object], model: FeatureModel,
                    batch_clips: int) -> Iterator[tuple[VideoDone, list[tuple[int, torch.Tensor]]]]:
    """Run ``model`` on the :class:`ClipBatch` items of a clip stream, batching clips across
    videos, and yield each video as soon as its features are complete.

    A forward pass runs when ``batch_clips`` clips are pending, or early when a video's
    :class:`VideoDone` arrives while some of its clips are still pending. Items of other
    types (e.g. the idle heartbeats of a queue-fed stream) are skipped.

    Yields:
        ``(done, parts)``: ``parts`` are ``(first clip index, features [n, crops, D])``
        chunks on the model's device, in any order (empty when decoding failed early).
    """
    parts: dict[int, list[tuple[int, torch.Tensor]]] = {}
    pending: list[ClipBatch] = []
    n_pending = 0

    def flush() -> None:
        nonlocal pending, n_pending
        feats = model([p.data for p in pending])
        offset = 0
        for p in pending:
            n = p.data.shape[0]
            parts.setdefault(p.job, []).append((p.start, feats[offset:offset + n]))
            offset += n
        pending, n_pending = [], 0

    for item in items:
        if isinstance(item, ClipBatch):
            pending.append(item)
            n_pending += item.data.shape[0]
            if n_pending >= batch_clips:
                flush()
            continue
        if not isinstance(item, VideoDone):
            continue
        if any(p.job == item.job for p in pending):
            flush()
        yield item, parts.pop(item.job, [])
