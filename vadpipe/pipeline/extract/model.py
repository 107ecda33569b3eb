"""Model side of extraction: a backbone on a device, fed clip batches across videos.

:class:`FeatureModel` turns resized uint8 clips into float32 features; :func:`finished_videos`
batches the clips of many videos for it and yields each video once its features are complete.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from vadpipe.extractors.registry import BackboneSpec
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.stream import ClipBatch, VideoDone, lost_clips_reason
from vadpipe.pipeline.extract.transforms import crop_clips, normalize_clips

__all__ = ["FeatureBuffer", "FeatureModel", "finished_videos", "RANDOM_WEIGHTS_TAG", "RANDOM_WEIGHTS_SEED"]

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
                model = spec.build(weights=None)
        else:
            model = spec.build(weights=spec.weights)
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


class FeatureBuffer:
    """One video's features, filled batch by batch into a single preallocated array.

    :meth:`add` copies the features of clips ``start .. start + n - 1`` into place (batches
    may come in any order; each clip once). The storage is made like the first batch: a
    tensor on its device for model outputs (on a GPU the copies stay asynchronous: nothing
    waits for the device before :meth:`array`), a NumPy array for host arrays (the Ray
    driver). It holds ``capacity`` clips (the stream's expected count,
    :attr:`ClipBatch.n_clips_hint`) and doubles when a batch lands past its end.

    So a video costs one array of its features (a hint that is too small costs a few
    doublings), never an object per batch: per-batch tensors kept until the video ends each
    pin a piece of the heap between the large short-lived buffers of decoding and of the
    forward passes, which glibc can then neither reuse nor return. How much that costs
    depends on the allocator's history; with the tiny test backbone (10 crops) the 1125
    batches of a 20-minute 64x48 video kept that way raised the peak RSS by up to 1 GB.
    """

    def __init__(self, capacity: int = 0):
        self.capacity = max(0, int(capacity))
        #: clips added, :meth:`add` calls, one past the highest clip added
        self.rows = self.batches = self.end = 0
        self._data: torch.Tensor | np.ndarray | None = None

    def _new(self, like: torch.Tensor | np.ndarray, n: int) -> torch.Tensor | np.ndarray:
        if isinstance(like, torch.Tensor):
            return torch.empty((n, *like.shape[1:]), dtype=like.dtype, device=like.device)
        return np.empty((n, *like.shape[1:]), dtype=like.dtype)

    def add(self, start: int, feats: torch.Tensor | np.ndarray) -> None:
        """Copy ``feats`` (``[n, ...]``) in as the features of clips ``start .. start + n - 1``."""
        data = self._data
        if data is None:
            feats = feats if isinstance(feats, torch.Tensor) else np.asarray(feats)
        elif isinstance(data, torch.Tensor):
            feats = torch.as_tensor(feats, device=data.device)
        else:
            feats = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
        n = int(feats.shape[0])
        stop = start + n
        if data is not None and tuple(feats.shape[1:]) != tuple(data.shape[1:]):
            raise ValueError(f"features of shape {tuple(feats.shape[1:])} per clip after {tuple(data.shape[1:])}")
        if data is None:
            data = self._new(feats, max(stop, self.capacity))
        elif stop > data.shape[0]:
            grown = self._new(data, max(stop, 2 * data.shape[0]))
            grown[:self.end] = data[:self.end]
            data = grown
        data[start:stop] = feats
        self._data = data
        self.rows += n
        self.batches += 1
        self.end = max(self.end, stop)

    def array(self) -> np.ndarray | None:
        """The features of clips ``0 .. end - 1`` on the host (``None`` before any :meth:`add`);
        a view of the buffer for host storage, one copy from the device otherwise.

        Raises:
            RuntimeError: some clip below ``end`` was never added, or one was added twice.
        """
        if self._data is None:
            return None
        if self.rows != self.end:
            raise RuntimeError(f"{self.rows} clip features added for clips 0..{self.end - 1}: "
                               "a batch is missing or was added twice (please report this)")
        out = self._data[:self.end]
        return out.cpu().numpy() if isinstance(out, torch.Tensor) else out

    def parts(self) -> list[tuple[int, np.ndarray]]:
        """:func:`finish_video`'s ``parts``: ``[(0, features)]``, or ``[]`` when nothing was added."""
        feats = self.array()
        return [] if feats is None else [(0, feats)]


def finished_videos(items: Iterable[object], model: Callable[[list[torch.Tensor]], torch.Tensor],
                      batch_clips: int) -> Iterator[tuple[VideoDone, list[tuple[int, np.ndarray]]]]:
    """Run ``model`` on the :class:`ClipBatch` items of a clip stream, batching clips across
    videos, and yield each video as soon as its features are complete.

    A forward pass runs when ``batch_clips`` clips are pending, or early when a video's :class:`VideoDone`
    arrives while some of its clips are still pending; items of other types (e.g. the idle
    heartbeats of a queue-fed stream) are skipped. Each pass's features go at once into their
    video's :class:`FeatureBuffer` (sized from :attr:`ClipBatch.n_clips_hint`), so memory
    does not grow with a video's length; on a GPU the copies are asynchronous and the host
    copy is made once, when the video is complete.

    Yields:
        ``(done, parts)``: ``parts`` is ``[(0, float32 [n_clips, crops, D] on the host)]``,
        or ``[]`` when no clip was decoded (a failed video). A video whose clips arrived with
        a hole (a batch lost between processes) comes with ``[]`` and ``done.error`` set
        (:func:`~vadpipe.pipeline.extract.stream.lost_clips_reason`); one that lost only its
        last batches is caught by :func:`~vadpipe.pipeline.extract.writer.finish_video`.
    """
    buffers: dict[int, FeatureBuffer] = {}
    pending: list[ClipBatch] = []
    n_pending = 0

    def flush() -> None:
        nonlocal pending, n_pending
        feats = model([p.data for p in pending])
        offset = 0
        for p in pending:
            n = p.data.shape[0]
            buf = buffers.get(p.job)
            if buf is None:
                buf = buffers[p.job] = FeatureBuffer(p.n_clips_hint)
            buf.add(p.start, feats[offset:offset + n])
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
        buf = buffers.pop(item.job, None)
        if buf is not None and buf.rows != buf.end and not item.error:  # a batch lost on the way: fail the video
            item.error = lost_clips_reason(item, buf.rows, None, gap=True)
            yield item, []
            continue
        yield item, [] if buf is None else buf.parts()
