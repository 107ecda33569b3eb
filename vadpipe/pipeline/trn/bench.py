"""``vadpipe bench train-backbone``: training-step throughput and peak memory of resnet50-trn."""

from __future__ import annotations

import resource
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from vadpipe.pipeline.benchmark import StageResult, make_synthetic_video, timed_steps

__all__ = ["run_train_backbone_bench"]

#: UCF-Crime's classes (13 anomalies + normal): the classifier's size in the bench.
UCF_CLASSES = 14


def run_train_backbone_bench(*, relation: str = "inner-product", batch_size: int = 2, segments: int = 16,
                             size: int = 224, steps: int = 3, warmup: int = 1, device: str = "auto",
                             precision: str = "auto", decode: bool = True,
                             echo: Callable[[str], None] = print) -> list[StageResult]:
    """Time full training steps (forward, cross-entropy, backward, clip, SGD) of the real
    ResNet-50 TRN network with random weights on random ``[batch, 3, segments, size, size]``
    inputs, and (``decode``) TRN sampling + decoding + preprocessing of a generated video.
    Prints videos/s and frames/s (a video is ``segments`` frames) and peak memory."""
    from vadpipe.pipeline.device import resolve_device
    from vadpipe.pipeline.trn.train import (
        TrainBackboneConfig,
        _new_classifier,
        learning_rate,
        optimizer_groups,
        resolve_precision,
    )

    dev = resolve_device(device)
    dtype = resolve_precision(precision, dev)
    config = TrainBackboneConfig(relation=relation, segments=segments, size=size, batch_size=batch_size,
                                 pretrained="none", device=device, precision=precision)
    torch.manual_seed(0)
    model = _new_classifier(config, UCF_CLASSES).to(dev).train()
    opt = torch.optim.SGD(optimizer_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum)
    for group in opt.param_groups:
        group["lr"] = learning_rate(10**9, config, 1) * group["lr_mult"]
    gen = torch.Generator().manual_seed(0)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    echo(f"resnet50-trn ({relation}) training step: batch {batch_size} x {segments} segments x {size}^2, "
         f"{UCF_CLASSES} classes, device {dev}, {'fp32' if dtype is None else str(dtype).removeprefix('torch.')}")

    def step() -> None:
        x = torch.randn(batch_size, 3, segments, size, size, generator=gen).to(dev, non_blocking=True)
        y = torch.randint(0, UCF_CLASSES, (batch_size,), generator=gen).to(dev)
        with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler is not None else loss).backward()
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    seconds = timed_steps(step, warmup=warmup, steps=steps, device=dev)
    results = [StageResult("train step", steps * batch_size, "videos", seconds),
               StageResult("train step", steps * batch_size * segments, "frames", seconds)]
    for r in results:
        echo(r.line())
    echo(f"{seconds / steps:.3f} s per step")
    if dev.type == "cuda":
        echo(f"peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")
    else:
        echo(f"peak process memory (max RSS) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if decode:
        from vadpipe.pipeline.trn.data import VideoRow, VideoSegments

        with tempfile.TemporaryDirectory() as tmp:
            video = make_synthetic_video(Path(tmp) / "bench.mp4", seconds=10.0)
            ds = VideoSegments([VideoRow(str(video), "normal")], [0], segments=segments, size=size, train=True)
            n, t = 0, time.perf_counter()
            while n < 3 or time.perf_counter() - t < 1.0:
                ds[(0, n)]
                n += 1
            r = StageResult("decode+sample (1 proc)", n, "videos", time.perf_counter() - t)
        echo(r.line() + "  [10 s 320x240 H.264, whole video decoded]")
        results.append(r)
    return results
