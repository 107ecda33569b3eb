"""Command line: parses arguments and calls library functions (which tests call too)."""

from __future__ import annotations

import logging
import sys

import click

from vadpipe import __version__
from vadpipe.errors import VadpipeError


def _fail(e: Exception, code: int = 2) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vadpipe")
@click.option("-v", "--verbose", is_flag=True, help="Log debugging details.")
def main(verbose: bool) -> None:
    """vadpipe: raw videos → features → anomaly scores."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", default="features", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (feature files, features.csv, run config JSON).")
@click.option("--backbone", default="i3d", show_default=True, help="Registered backbone (see `vadpipe weights list`).")
@click.option("--crops", type=click.Choice(["1", "5", "10"]), default="10", show_default=True,
              help="Crops per clip: centre; 4 corners + centre; those and their mirrors.")
@click.option("--preset", "preset_name", type=click.Choice(["kinetics", "gowtham-rtfm"]), default=None,
              help="Named preprocessing recipe: kinetics (short side 256, TenCrop order, bilinear) or "
                   "gowtham-rtfm (340x256 ignoring aspect, Lanczos, TL,TR,C,BL,BR order) [default: the backbone's].")
@click.option("--crop-order", type=click.Choice(["torchvision", "gowtham"]), default=None,
              help="Order of the crops (default: the backbone preset's, torchvision TenCrop).")
@click.option("--resize", default=None, metavar="N|HxW",
              help="Resize: short side N (keeps aspect) or exact HxW, e.g. 256x340 (default: preset's, 256).")
@click.option("--clip-len", default=None, type=click.IntRange(1), help="Frames per clip [default: the backbone's, 16].")
@click.option("--stride", default=None, type=click.IntRange(1), help="Frames between clip starts [default: clip length].")
@click.option("--tail", type=click.Choice(["drop", "pad"]), default="drop", show_default=True,
              help="Incomplete last clip: drop it (community features) or pad by repeating the last frame.")
@click.option("--fps", default=None, type=click.FloatRange(min=0, min_open=True), help="Resample videos to this frame rate.")
@click.option("--layout", type=click.Choice(["single", "per-crop"]), default="single", show_default=True,
              help="single: <name>_i3d.npy [clips, crops, D]; per-crop: <name>__<k>.npy [clips, D].")
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--batch-clips", default=None, type=click.IntRange(1),
              help="Clips per forward pass, each with all its crops [default: 16 on CUDA, 2 on CPU].")
@click.option("--workers", default=None, type=click.IntRange(0),
              help="Decode/preprocess worker processes [default: 1 on CPU, up to 8 with CUDA].")
@click.option("--decoder", type=click.Choice(["auto", "decord", "pyav"]), default="auto", show_default=True,
              help="auto uses decord where it is frame-exact, PyAV elsewhere.")
@click.option("--no-channels-last", is_flag=True, help="Do not use channels_last_3d on CUDA.")
@click.option("--random-weights", is_flag=True, help="Run the backbone with random weights (tests/benchmarks only).")
@click.option("--force", is_flag=True, help="Recompute videos that an earlier run finished.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; print only failures and the summary line.")
def extract(inputs, out, backbone, crops, preset_name, crop_order, resize, clip_len, stride, tail, fps, layout, precision,
            device, batch_clips, workers, decoder, no_channels_last, random_weights, force, quiet) -> None:
    """Extract features of videos (folders, files or CSV lists) into OUT.

    Writes one .npy per video and OUT/features.csv with a row per video (status ok,
    failed or skipped). Exits 1 when any video failed, 2 on a usage or setup error.
    """
    from dataclasses import replace

    from vadpipe.extractors import get_backbone
    from vadpipe.pipeline.clips import ClipSpec
    from vadpipe.pipeline.config import ExtractConfig
    from vadpipe.pipeline.runner import default_batch_clips, default_workers, extract as run_extract, resolve_device
    from vadpipe.pipeline.sources import discover
    from vadpipe.pipeline.transforms import PRESETS

    try:
        spec = get_backbone(backbone)
        preset = spec.preset
        if preset_name:  # geometry from the recipe; crop size and value normalisation stay the weights'
            named = PRESETS[preset_name]
            preset = replace(preset, resize=named.resize, crop_order=named.crop_order,
                             interpolation=named.interpolation, antialias=named.antialias)
        if crop_order:
            preset = replace(preset, crop_order=crop_order)
        if resize:
            preset = replace(preset, resize=_parse_resize(resize))
        dev = resolve_device(device)
        workers = default_workers(dev) if workers is None else workers
        batch_clips = default_batch_clips(dev) if batch_clips is None else batch_clips
        length = clip_len or spec.clip_len
        config = ExtractConfig(
            backbone=backbone, clip=ClipSpec(length=length, stride=stride or length, tail=tail),
            preset=preset, crops=int(crops), fps=fps, layout=layout, precision=precision, device=device,
            batch_clips=batch_clips, workers=workers, decoder=decoder, channels_last=not no_channels_last,
            random_weights=random_weights,
        )
        jobs = discover(list(inputs))
        if not jobs:
            _fail(VadpipeError(f"no videos found in {', '.join(inputs)}"))
        summary = run_extract(jobs, out, config, force=force, progress=not quiet)
    except VadpipeError as e:
        _fail(e)
    for path, err in summary.failures:
        click.echo(f"failed: {err}" if path in err else f"failed: {path}: {err}", err=True)
    click.echo(summary.line(), err=True)
    sys.exit(summary.exit_code)


@main.group()
def bench() -> None:
    """Throughput benchmarks (print rates per stage; never part of the tests)."""


@bench.command("extract")
@click.argument("video", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--backbone", default="i3d", show_default=True)
@click.option("--crops", type=click.Choice(["1", "5", "10"]), default="10", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16", "fp16"]), default="fp32", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-clips", default=None, type=click.IntRange(1), help="[default: 16 on CUDA, 2 on CPU]")
@click.option("--workers", default=None, type=click.IntRange(0), help="[default: 1 on CPU, up to 8 with CUDA]")
@click.option("--seconds", default=10.0, show_default=True, help="Length of the generated video when VIDEO is not given.")
@click.option("--model-iters", default=5, show_default=True, type=click.IntRange(1), help="Timed model batches.")
@click.option("--stages", default="decode,preprocess,model,e2e", show_default=True,
              help="Comma-separated subset of decode, preprocess, model, e2e.")
@click.option("--random-weights", is_flag=True, help="Benchmark without installed weights (same speed).")
def bench_extract(video, backbone, crops, precision, device, batch_clips, workers, seconds, model_iters, stages,
                  random_weights) -> None:
    """Decode frames/s, preprocess clips/s, model clips/s and end-to-end clips/s on VIDEO
    (or a generated 320x240 H.264 video)."""
    from vadpipe.bench import run_extract_bench
    from vadpipe.pipeline.config import ExtractConfig
    from vadpipe.pipeline.runner import default_batch_clips, default_workers, resolve_device

    try:
        dev = resolve_device(device)
        workers = default_workers(dev) if workers is None else workers
        batch_clips = default_batch_clips(dev) if batch_clips is None else batch_clips
        config = ExtractConfig(backbone=backbone, crops=int(crops), precision=precision, device=device,
                               batch_clips=batch_clips, workers=workers, random_weights=random_weights)
        wanted = tuple(s.strip() for s in stages.split(",") if s.strip())
        unknown = set(wanted) - {"decode", "preprocess", "model", "e2e"}
        if unknown:
            raise click.BadParameter(f"unknown stage(s) {sorted(unknown)}", param_hint="--stages")
        run_extract_bench(video, config, seconds=seconds, model_iters=model_iters, stages=wanted, echo=click.echo)
    except VadpipeError as e:
        _fail(e)


@main.group()
def weights() -> None:
    """Backbone weights: what is registered, installed and verified."""


@weights.command("list")
def weights_list() -> None:
    """Registered backbones, their weights' provenance, and whether they are installed."""
    from vadpipe.errors import WeightsIntegrityError, WeightsNotFoundError
    from vadpipe.extractors import get_backbone, list_backbones

    for name in list_backbones():
        spec = get_backbone(name)
        try:
            model = spec.build(True)
            state = f"installed (sha256 {getattr(model, 'weights_sha256', None) or '?'})"
        except WeightsNotFoundError:
            state = "MISSING: " + spec.weights.how_to_get
        except WeightsIntegrityError as e:
            state = f"BROKEN: {e}"
        click.echo(f"{name}: {spec.feature_dim}-D, {spec.clip_len}-frame clips, weights {spec.weights.name}")
        click.echo(f"  source:  {spec.weights.source}")
        click.echo(f"  licence: {spec.weights.license}")
        click.echo(f"  status:  {state}")


@weights.command("verify")
@click.argument("backbone")
def weights_verify(backbone: str) -> None:
    """Locate, hash-check and (once) convert BACKBONE's weights; print their sha256."""
    from vadpipe.extractors import get_backbone

    try:
        model = get_backbone(backbone).build(True)
    except VadpipeError as e:
        _fail(e)
    click.echo(f"{backbone}: ok, weights sha256 {model.weights_sha256}")


@weights.command("import")
@click.argument("backbone")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def weights_import(backbone: str, file: str) -> None:
    """Copy a downloaded weight FILE for BACKBONE into the cache (after checking its sha256)."""
    from vadpipe.extractors import get_backbone
    from vadpipe.weights import import_weight_file

    try:
        info = get_backbone(backbone).weights
        if not info.file_name:
            raise VadpipeError(f"backbone {backbone!r} has no importable weight file")
        dst = import_weight_file(info.file_name, file, expected_sha256=info.source_sha256)
        model = get_backbone(backbone).build(True)
    except VadpipeError as e:
        _fail(e)
    click.echo(f"imported {file} as {dst}; {backbone} weights sha256 {model.weights_sha256}")


def _parse_resize(text: str) -> int | tuple[int, int]:
    from vadpipe.errors import ConfigError

    try:
        if "x" in text.lower():
            h, w = text.lower().split("x")
            return int(h), int(w)
        return int(text)
    except ValueError:
        raise ConfigError(f"--resize takes N or HxW (e.g. 256 or 256x340), got {text!r}") from None


if __name__ == "__main__":
    main()
