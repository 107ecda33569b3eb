"""``vadpipe score`` (raw videos to events) and ``vadpipe demo``."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from vadpipe.cli.main import choices_of, main
from vadpipe.errors import VadpipeError

if TYPE_CHECKING:  # torch is imported where a command runs
    import torch

    from vadpipe.pipeline.train.apply import LoadedHead


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--head", "checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Head checkpoint (best.pt from `vadpipe train`, or `vadpipe weights import`).")
@click.option("--model", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Instead of --head: a detector exported with `vadpipe export --format onnx`, run with "
                   "onnxruntime (no PyTorch needed).")
@click.option("-o", "--out", default="runs/score", show_default=True, type=click.Path(file_okay=False))
@click.option("--threshold", default=None, type=click.FloatRange(0, 1),
              help="Event threshold [default: the checkpoint's validation-optimal value, else 0.5].")
@click.option("--min-gap", default=0.0, show_default=True, type=click.FloatRange(0), help="Merge events this close (s).")
@click.option("--min-duration", default=0.0, show_default=True, type=click.FloatRange(0), help="Drop shorter events (s).")
@click.option("--gt", default=None, metavar="KIND:PATH", help="Ground truth for plots and AUC/AP (see `vadpipe eval`).")
@click.option("--gt-convention", default=None, type=choices_of("vadpipe.pipeline.train.metrics", "CONVENTIONS"))
@click.option("--report", default=None, type=click.Path(dir_okay=False), help="Write one self-contained HTML report.")
@click.option("--no-plots", is_flag=True, help="Do not write a PNG per video.")
@click.option("--backbone", default=None, help="Only for checkpoints that do not record their feature recipe.")
@click.option("--features", "features_dir", default=None, type=click.Path(file_okay=False),
              help="Stage-one folder to reuse and fill [default: OUT/features].")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-clips", default=None, type=click.IntRange(1))
@click.option("--workers", default=None, type=click.IntRange(0))
@click.option("--decoder", type=choices_of("vadpipe.pipeline.extract.decode", "DECODERS"),
              default="auto", show_default=True,
              help="As for extract: auto (decord where frame-exact, else PyAV), decord, pyav, torchcodec, "
                   "torchcodec-cuda.")
@click.option("--random-weights", is_flag=True, help="Backbone with random weights (tests/benchmarks only).")
@click.option("--force", is_flag=True, help="Recompute features even when the features folder has them.")
@click.option("--stream", is_flag=True, help="Score one video (file, growing file, - for stdin, or a live URL/camera) "
                                              "clip by clip, printing each score and each event as it is produced.")
@click.option("--follow", default=0.0, show_default=True, type=click.FloatRange(0),
              help="With --stream: keep reading a growing file until it stops growing for this many seconds.")
@click.option("--window", "stream_window", default=64, show_default=True, type=click.IntRange(1),
              help="With --stream and a non-causal head: clips of context the provisional scores see.")
@click.option("--buffer", "live_buffer", default=64, show_default=True, type=click.IntRange(1),
              help="With --stream and a live source (rtsp/http(s)/rtmp/udp/tcp/srt URL, /dev/video*): decoded "
                   "frames held for the scorer; when it falls behind the oldest are dropped (counted).")
@click.option("--reconnect", default=3, show_default=True, type=click.IntRange(0),
              help="Live source: re-open attempts in a row when the connection fails or ends (0: its end is the "
                   "end of the run, e.g. a finite file on a web server).")
@click.option("--reconnect-delay", default=1.0, show_default=True, type=click.FloatRange(0),
              help="Live source: seconds before the first re-open attempt, doubled for each further one.")
@click.option("--io-timeout", default=10.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Live source: seconds to wait for it to open, and for data once open.")
@click.option("--input-format", default=None, metavar="FMT",
              help="Open the --stream source with this FFmpeg input format (v4l2, mpegts, ...; makes it live).")
@click.option("--input-option", "input_options", multiple=True, metavar="KEY=VALUE",
              help="FFmpeg option for opening a live source, e.g. rtsp_transport=tcp (repeatable).")
@click.option("--webhook", default=None, metavar="URL",
              help="With --stream: POST each event as JSON to this http(s) URL when it closes (background, "
                   "retried, never blocks scoring).")
@click.option("--recipe-precision", default=None, hidden=True,
              type=choices_of("vadpipe.pipeline.extract.config", "PRECISIONS"),
              help="Benchmarks only (`vadpipe bench score --precision`): extract with this precision instead of "
                   "the recipe's.")
@click.option("-q", "--quiet", is_flag=True)
def score(inputs, checkpoint, model, out, threshold, min_gap, min_duration, gt, gt_convention, report, no_plots, backbone,
          features_dir, device, batch_clips, workers, decoder, random_weights, force, stream, follow, stream_window,
          live_buffer, reconnect, reconnect_delay, io_timeout, input_format, input_options, webhook,
          recipe_precision, quiet) -> None:
    """Score raw videos with a trained head: per-video scores.csv, events, plots, a report.

    Stage one runs with the backbone and preprocessing the checkpoint records, and reuses
    features already extracted. Exits 1 when any video failed, 2 on a setup error.
    """
    if (checkpoint is None) == (model is None):
        raise VadpipeError("give a head checkpoint (--head best.pt) or an exported detector (--model detector.onnx)")
    if model is not None:
        sys.exit(_score_with_model(inputs, model, out, threshold, min_gap, min_duration, batch_clips, decoder, device, quiet,
                                   unsupported={"--gt": gt, "--report": report, "--stream": stream,
                                                "--features": features_dir, "--backbone": backbone,
                                                "--random-weights": random_weights}))
    from vadpipe.pipeline.device import default_batch_clips, default_workers, resolve_device

    if stream and len(inputs) != 1:
        raise VadpipeError("--stream scores one video (a file, a growing file, - for stdin, or a live source)")
    if not stream and (webhook or input_format or input_options):
        raise VadpipeError("--webhook, --input-format and --input-option go with --stream")
    if stream:
        from vadpipe.pipeline.score.live import LiveOptions, parse_input_options
        from vadpipe.pipeline.score.sinks import check_webhook_url

        live = LiveOptions(buffer=live_buffer, reconnect=reconnect, reconnect_delay=reconnect_delay,
                           io_timeout=io_timeout, input_format=input_format,
                           input_options=parse_input_options(input_options))
        if webhook:
            check_webhook_url(webhook)  # before the head is loaded
    dev = resolve_device(device)
    loaded = _load_head(checkpoint, dev, recipe_precision)
    speed = {"device": device, "decoder": decoder, "random_weights": random_weights,
             "workers": default_workers(dev) if workers is None else workers,
             "batch_clips": default_batch_clips(dev) if batch_clips is None else batch_clips}
    if stream:
        from vadpipe.pipeline.score.batch import ScoreOptions
        from vadpipe.pipeline.score.stream import stream_score

        options = ScoreOptions(threshold=threshold, min_gap=min_gap, min_duration=min_duration, gt=gt,
                               gt_convention=gt_convention, plots=not no_plots, report=report)
        result = stream_score(inputs[0], loaded, out, options=options, backbone=backbone,
                              speed={**speed, "workers": 0, "batch_clips": 1}, follow=follow,
                              window=stream_window, live=live, webhook=webhook, echo=click.echo)
        sys.exit(result.exit_code)
    from vadpipe.api import score as score_api

    summary = score_api(list(inputs), loaded, out, threshold=threshold, min_gap=min_gap, min_duration=min_duration,
                        gt=gt, gt_convention=gt_convention, plots=not no_plots, report=report, backbone=backbone,
                        features_dir=features_dir, force=force, progress=not quiet, echo=None if quiet else click.echo,
                        **speed)
    for v in summary.failed:
        click.echo(f"failed: {v.video}: {v.error}", err=True)
    n_events = sum(len(v.events) for v in summary.videos)
    click.echo(f"{len(summary.videos) - len(summary.failed)} scored, {len(summary.failed)} failed; {n_events} event(s) "
               f"at threshold {summary.threshold:g} ({summary.threshold_source}); results: {summary.out_dir}"
               + (f"; report: {summary.report}" if summary.report else ""), err=True)
    for w in summary.warnings:
        click.echo(f"WARNING: {w}", err=True)
    if summary.metrics:
        click.echo("  ".join(f"{k} {v:.4f}" for k, v in summary.metrics.items()), err=True)
    sys.exit(summary.exit_code)


def _score_with_model(inputs, model, out, threshold, min_gap, min_duration, batch_clips, decoder, device, quiet,
                      unsupported: dict) -> int:
    """``score --model``: the exported detector on onnxruntime; the exit code."""
    from vadpipe.pipeline.export.runtime import DEFAULT_BATCH_CLIPS, score_with_model

    given = [name for name, value in unsupported.items() if value]
    if given:
        raise VadpipeError(f"{', '.join(given)} work with --head only (the PyTorch path), not with --model")
    run = score_with_model(list(inputs), model, out, threshold=threshold, min_gap=min_gap,
                           min_duration=min_duration, batch_clips=batch_clips or DEFAULT_BATCH_CLIPS,
                           decoder=None if decoder == "auto" else decoder, device=device,
                           echo=None if quiet else click.echo)
    for v in run.failed:
        click.echo(f"failed: {v.video}: {v.error}", err=True)
    click.echo(f"{len(run.videos) - len(run.failed)} scored, {len(run.failed)} failed; "
               f"{sum(len(v.events) for v in run.videos)} event(s) at threshold {run.threshold:g} "
               f"({run.threshold_source}); {model} on onnxruntime, {run.resizer} resize; results: {run.out_dir}",
               err=True)
    return run.exit_code


def _load_head(checkpoint: str, device: torch.device, precision: str | None) -> LoadedHead:
    """The run's head, read from ``checkpoint`` once, with the recipe's precision replaced
    (in memory) when ``precision`` is given."""
    from vadpipe.pipeline.score.batch import with_recipe_precision
    from vadpipe.pipeline.train.apply import load_head

    loaded = load_head(checkpoint, device)
    return loaded if precision is None else with_recipe_precision(loaded, precision)


@main.command()
@click.option("-o", "--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--retrain", is_flag=True,
              help="Train the demo head again (videos, I3D features, training) into OUT/retrain instead of using "
                   "the bundled one (minutes on a CPU).")
@click.option("--stream", is_flag=True, help="Afterwards also score the demo video clip by clip (--stream).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def demo(out, retrain, stream, device, quiet) -> None:
    """Score a real video with a planted anomaly end to end, offline: events, plot, report.html.

    The demo head is a Sultani MIL head trained by vadpipe on real Kinetics-400 I3D features
    of two short bundled videos with one planted kind of anomaly (the picture turned upside
    down); it is not a detector of real-world crimes or accidents.
    """
    from vadpipe.pipeline.demo import run_demo

    result = run_demo(out, retrain=retrain, device=device, stream=stream, progress=not quiet, echo=click.echo)
    sys.exit(result.exit_code)
