"""``vadpipe bench train``: training steps/s and peak memory of a head at a dataset's size."""

from __future__ import annotations

import torch

from vadpipe.pipeline.benchmark import StageResult, timed_steps

__all__ = ["run_train_bench", "UCF_TRAIN_VIDEOS"]

#: Training videos of UCF-Crime (the size the figures are given for).
UCF_TRAIN_VIDEOS = 1610


def run_train_bench(head: str, *, crops: int = 10, segments: int = 32, dim: int = 2048,
                    steps: int = 5, warmup: int = 1, device: str = "auto", overrides: dict | None = None,
                    echo=print) -> StageResult:
    """Training steps/s of ``head`` at a dataset's size, on synthetic features.

    The features have UCF-Crime's training shape (32 segments × 10 crops × 2048 per video;
    1,610 videos). The step cost does not depend on the number of videos, so batches are
    generated per step instead of holding 4.2 GB of features: the figure is the
    optimisation step (forward, loss, backward, optimizer) plus the host→device copy.
    Prints steps/s, peak memory and the time of the head's full official schedule.
    """
    import resource

    from vadpipe.heads.base import get_head, make_config, schedule_overrides, validate_settings
    from vadpipe.pipeline.device import resolve_device
    from vadpipe.pipeline.train.loop import build_head

    dev = resolve_device(device)
    spec = get_head(head)
    overrides = validate_settings(spec, dict(overrides or {}))  # a bad --set value: one clear error
    crop_instances = spec.sampling(make_config(spec, overrides)).instances == "crop"
    # the schedule on UCF-Crime's 1,610 training videos (each crop an instance where the head says so)
    schedule, overrides = schedule_overrides(spec, overrides, UCF_TRAIN_VIDEOS * (crops if crop_instances else 1))
    model, cfg = build_head(spec, overrides, dim)
    model.to(dev).train()
    opt = spec.optimizer(model.parameters(), cfg)
    sampling = spec.sampling(cfg)
    b = sampling.batch_size
    if sampling.instances == "crop":  # random batches of single-crop instances: half of each class here
        b, crops = max(1, sampling.batch_size // 2), 1
    gen = torch.Generator().manual_seed(0)
    echo(f"head {head}: batch {b} normal + {b} abnormal {'crop instances' if crops == 1 and sampling.instances == 'crop' else 'videos'}"
         f" × {crops} crops × {segments} segments × {dim}, device {dev}")

    def step() -> None:
        normal = torch.rand(b, crops, segments, dim, generator=gen).to(dev, non_blocking=True)
        abnormal = torch.rand(b, crops, segments, dim, generator=gen).to(dev, non_blocking=True)
        loss, _ = model.loss(normal, abnormal)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    seconds = timed_steps(step, warmup=warmup, steps=steps, device=dev)
    result = StageResult(f"train step ({head})", steps, "steps", seconds)
    echo(result.line())
    if dev.type == "cuda":
        echo(f"peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB")
    else:
        echo(f"peak process memory (max RSS) {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    echo(f"full official schedule: {schedule} steps ≈ {schedule / result.rate / 60:.1f} min at this rate "
        )
    return result
