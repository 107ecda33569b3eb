"""``vadpipe bench extract|train|score``: throughput per stage (never part of pass/fail tests)."""

from __future__ import annotations

import click

from vadpipe.cli.main import choices_of, main, parse_devices, parse_overrides


@main.group()
def bench() -> None:
    """Throughput benchmarks (print rates per stage; never part of the tests)."""


@bench.command("extract")
@click.argument("video", required=False, type=click.Path(exists=True))
@click.option("--backbone", default="i3d", show_default=True)
@click.option("--crops", type=choices_of("vadpipe.extractors.presets", "N_CROPS"), default="10", show_default=True)
@click.option("--precision", type=choices_of("vadpipe.pipeline.extract.config", "PRECISIONS"), default="fp32", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-clips", default=None, type=click.IntRange(1), help="[default: 16 on CUDA, 2 on CPU]")
@click.option("--workers", default=None, type=click.IntRange(0), help="[default: 1 on CPU, up to 8 with CUDA]")
@click.option("--seconds", default=10.0, show_default=True, help="Length of the generated video when VIDEO is not given.")
@click.option("--model-iters", default=5, show_default=True, type=click.IntRange(1), help="Timed model batches.")
@click.option("--stages", default="decode,preprocess,model,e2e", show_default=True,
              help="Comma-separated subset of decode, preprocess, model, e2e.")
@click.option("--random-weights", is_flag=True, help="Benchmark without installed weights (same speed).")
@click.option("--gpus", default=None, metavar="0,1,...",
              help="Scaling bench instead of the stages: extract on the first GPU, then on all of them (one "
                   "worker each), on the same videos; prints clips/s, per-GPU clips/s, scaling efficiency and "
                   "GPU utilisation.")
@click.option("--devices", "device_list", default=None, metavar="DEV,DEV,...",
              help="Like --gpus with explicit devices (cpu,cpu works, without scaling on a small CPU).")
@click.option("--videos", "n_videos", default=None, type=click.IntRange(1),
              help="Scaling bench: videos to generate (0.5x to 1.5x --seconds long) or links to VIDEO "
                   "[default: 4 per device]; a folder VIDEO is used as it is.")
def bench_extract(video, backbone, crops, precision, device, batch_clips, workers, seconds, model_iters, stages,
                  random_weights, gpus, device_list, n_videos) -> None:
    """Decode frames/s, preprocess clips/s, model clips/s and end-to-end clips/s on VIDEO
    (or a generated 320x240 H.264 video); with --gpus/--devices, multi-device scaling on
    VIDEO (a file or a folder) or generated videos."""
    from pathlib import Path

    from vadpipe.pipeline.device import default_batch_clips, default_workers, resolve_device
    from vadpipe.pipeline.extract.bench import run_extract_bench, run_scaling_bench
    from vadpipe.pipeline.extract.config import ExtractConfig

    devices = parse_devices(gpus, device_list)
    dev = resolve_device(devices[0] if devices else device)
    workers = default_workers(dev, per_device=len(devices) or 1) if workers is None else workers
    batch_clips = default_batch_clips(dev) if batch_clips is None else batch_clips
    config = ExtractConfig(backbone=backbone, crops=int(crops), precision=precision, device=device,
                           batch_clips=batch_clips, workers=workers, random_weights=random_weights)
    if devices:
        run_scaling_bench(video, config, devices, seconds=seconds, n_videos=n_videos, echo=click.echo)
        return
    if video is not None and Path(video).is_dir():
        raise click.BadParameter("the stage bench takes one video; a folder only with --gpus/--devices",
                                 param_hint="VIDEO")
    wanted = tuple(s.strip() for s in stages.split(",") if s.strip())
    unknown = set(wanted) - {"decode", "preprocess", "model", "e2e"}
    if unknown:
        raise click.BadParameter(f"unknown stage(s) {sorted(unknown)}", param_hint="--stages")
    run_extract_bench(video, config, seconds=seconds, model_iters=model_iters, stages=wanted, echo=click.echo)


@bench.command("train")
@click.option("--head", default="rtfm", show_default=True)
@click.option("--steps", default=5, show_default=True, type=click.IntRange(1), help="Timed steps (after 1 warm-up).")
@click.option("--crops", default=10, show_default=True, type=click.IntRange(1))
@click.option("--dim", default=2048, show_default=True, type=click.IntRange(1))
@click.option("--segments", default=32, show_default=True, type=click.IntRange(1), help="Snippets per training video.")
@click.option("--device", default="auto", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Head setting, e.g. --set batch_size=16.")
def bench_train(head, steps, crops, dim, segments, device, overrides) -> None:
    """Training steps/s and peak memory of a head at UCF-Crime's feature size."""
    from vadpipe.pipeline.train.bench import run_train_bench

    run_train_bench(head, crops=crops, dim=dim, segments=segments, steps=steps, device=device,
                    overrides=parse_overrides(overrides), echo=click.echo)


@bench.command("score")
@click.argument("video", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--head", "checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Head checkpoint [default: the bundled demo head (I3D, 1 crop)].")
@click.option("--seconds", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Length of the generated 320x240 30 fps video when VIDEO is not given.")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=choices_of("vadpipe.pipeline.extract.config", "PRECISIONS"), default=None,
              help="Replace the precision of the head's recorded recipe (benchmark only) [default: the recipe's].")
@click.option("--runs", default=2, show_default=True, type=click.IntRange(1),
              help="Throughput runs (the first in a process pays one-time costs such as CUDA start-up).")
@click.option("--stages", default="cold-start,throughput", show_default=True,
              help="Comma-separated subset of cold-start, throughput.")
@click.option("--random-weights", is_flag=True, help="Benchmark without installed weights (same speed).")
@click.option("--stream", is_flag=True,
              help="Instead: latency of `score --stream` on the video served live (MPEG-TS over loopback HTTP at "
                   "real-time pace): p50/p99/max from a clip's last frame arriving to its score, frames dropped.")
@click.option("--buffer", default=64, show_default=True, type=click.IntRange(1),
              help="With --stream: frames of the live frame buffer (score --stream --buffer).")
def bench_score(video, checkpoint, seconds, device, precision, runs, stages, random_weights, stream, buffer) -> None:
    """Cold start (process start to first streamed clip score) and seconds of `vadpipe score`
    per minute of 240p video; with --stream, the live latency."""
    from vadpipe.pipeline.score.bench import run_score_bench

    wanted = {s.strip() for s in stages.split(",") if s.strip()}
    unknown = wanted - {"cold-start", "throughput"}
    if unknown:
        raise click.BadParameter(f"unknown stage(s) {sorted(unknown)}", param_hint="--stages")
    run_score_bench(video, head=checkpoint, seconds=seconds, device=device, precision=precision, runs=runs,
                    cold_start="cold-start" in wanted, throughput="throughput" in wanted,
                    random_weights=random_weights, stream=stream, buffer=buffer, echo=click.echo)


@bench.command("train-backbone")
@click.argument("backbone", type=click.Choice(["resnet50-trn"]), default="resnet50-trn")
@click.option("--relation", type=choices_of("vadpipe.extractors.resnet_trn", "RELATION_TYPES"),
              default="inner-product", show_default=True)
@click.option("--batch", "batch_size", default=2, show_default=True, type=click.IntRange(1))
@click.option("--segments", default=16, show_default=True, type=click.IntRange(2))
@click.option("--size", default=224, show_default=True, type=click.IntRange(8))
@click.option("--steps", default=3, show_default=True, type=click.IntRange(1), help="Timed steps (after 1 warm-up).")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=choices_of("vadpipe.pipeline.trn.train", "PRECISIONS"), default="auto",
              show_default=True)
@click.option("--decode/--no-decode", default=True, show_default=True,
              help="Also time decoding + sampling on a generated 10 s 320x240 video.")
def bench_train_backbone(backbone, relation, batch_size, segments, size, steps, device, precision, decode) -> None:
    """Training step videos/s and frames/s of resnet50-trn (random weights, the real ResNet-50),
    peak memory, and decoding videos/s."""
    from vadpipe.pipeline.trn.bench import run_train_backbone_bench

    run_train_backbone_bench(relation=relation, batch_size=batch_size, segments=segments, size=size, steps=steps,
                             device=device, precision=precision, decode=decode, echo=click.echo)
