"""``vadpipe extract``: videos to feature files and ``features.csv``."""

from __future__ import annotations

import sys

import click

from vadpipe.cli.main import choices_of, main, parse_devices, parse_resize


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("-o", "--out", default="features", show_default=True, type=click.Path(file_okay=False),
              help="Output folder (feature files, features.csv, run config JSON).")
@click.option("--backbone", default=None, help="Registered backbone (see `vadpipe weights list`) [default: i3d, "
              "or the recipe's].")
@click.option("--crops", type=choices_of("vadpipe.extractors.presets", "N_CROPS"), default=None,
              help="Crops per clip: centre; 4 corners + centre; those and their mirrors [default: 10, or the "
                   "recipe's].")
@click.option("--preset", "preset_name", type=choices_of("vadpipe.extractors.presets", "RECIPE_CHOICES"), default=None,
              help="Named recipe of a public feature set (docs/recipes.md); it sets the backbone, resize, values, "
                   "crop order and count, clips, tail, frames used and layout, and explicit flags override it: "
                   "rtfm-i3d-r50-10crop (RTFM/MGFN UCF-Crime and ShanghaiTech, i3d-r50-caffe2; alias rtfm-ucf); "
                   "wu-i3d-10crop (Wu et al.'s UCF-Crime I3D, per-crop files); xd-i3d-5crop (XD-Violence I3D, "
                   "last frame left out); sultani-c3d (c3d fc6, 1 crop; alias sultani). Geometry only, for any "
                   "backbone: kinetics (short side 256, TenCrop order); gowtham-rtfm (340x256 Lanczos, "
                   "TL,TR,C,BL,BR order).")
@click.option("--crop-order", type=choices_of("vadpipe.extractors.presets", "CROP_ORDERS"), default=None,
              help="Order of the crops (default: the backbone preset's, torchvision TenCrop).")
@click.option("--resize", default=None, metavar="N|HxW",
              help="Resize: short side N (keeps aspect) or exact HxW, e.g. 256x340 (default: preset's, 256).")
@click.option("--clip-len", default=None, type=click.IntRange(1), help="Frames per clip [default: the backbone's, 16].")
@click.option("--stride", default=None, type=click.IntRange(1), help="Frames between clip starts [default: clip length].")
@click.option("--tail", type=choices_of("vadpipe.pipeline.extract.clips", "TAIL_POLICIES"), default=None,
              help="Incomplete last clip: drop it (community features) or pad by repeating the last frame "
                   "[default: drop, or the recipe's].")
@click.option("--fps", default=None, type=click.FloatRange(min=0, min_open=True), help="Resample videos to this frame rate.")
@click.option("--layout", type=choices_of("vadpipe.manifests.features", "LAYOUTS"), default=None,
              help="single: <name>_i3d.npy [clips, crops, D]; per-crop: <name>__<k>.npy [clips, D] "
                   "[default: single, or the recipe's].")
@click.option("--precision", type=choices_of("vadpipe.pipeline.extract.config", "PRECISIONS"), default="fp32", show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--batch-clips", default=None, type=click.IntRange(1),
              help="Clips per forward pass, each with all its crops [default: 16 on CUDA, 2 on CPU].")
@click.option("--workers", default=None, type=click.IntRange(0),
              help="Decode/preprocess worker processes [default: 1 on CPU, up to 8 with CUDA].")
@click.option("--decoder", type=choices_of("vadpipe.pipeline.extract.decode", "DECODERS"),
              default="auto", show_default=True,
              help="auto uses decord where it is frame-exact, PyAV elsewhere. torchcodec (CPU) and "
                   "torchcodec-cuda (NVDEC) decode where checked equal to PyAV, PyAV elsewhere "
                   "(pip install torchcodec; needs FFmpeg's shared libraries).")
@click.option("--no-channels-last", is_flag=True, help="Do not use channels_last_3d on CUDA.")
@click.option("--gpus", default=None, metavar="0,1,...",
              help="One worker process per listed GPU; videos go longest first through a shared queue.")
@click.option("--devices", "device_list", default=None, metavar="DEV,DEV,...",
              help="Like --gpus with explicit devices, e.g. cuda:0,cuda:2 or cpu,cpu (testing).")
@click.option("--engine", type=choices_of("vadpipe.pipeline.extract.engines", "ENGINES"), default="local", show_default=True,
              help="ray: run on Ray (pip install 'vadpipe[ray]'); decoding on CPU tasks, the model on GPU actors.")
@click.option("--ray-address", default=None, help="Ray cluster address [default: start a local Ray instance].")
@click.option("--random-weights", is_flag=True, help="Run the backbone with random weights (tests/benchmarks only).")
@click.option("--force", is_flag=True, help="Recompute videos that an earlier run finished.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar; print only failures and the summary line.")
def extract(inputs, out, backbone, crops, preset_name, crop_order, resize, clip_len, stride, tail, fps, layout, precision,
            device, batch_clips, workers, decoder, no_channels_last, gpus, device_list, engine, ray_address,
            random_weights, force, quiet) -> None:
    """Extract features of videos (folders, files or CSV lists) into OUT.

    Writes one .npy per video and OUT/features.csv with a row per video (status ok,
    failed or skipped). Exits 1 when any video failed, 2 on a usage or setup error.
    """
    from vadpipe.api import extract as run_extract

    summary = run_extract(
        list(inputs), out, recipe=preset_name, backbone=backbone, crops=int(crops) if crops else None,
        crop_order=crop_order, resize=parse_resize(resize) if resize else None, clip_len=clip_len, stride=stride,
        tail=tail, fps=fps, layout=layout, precision=precision, device=device, batch_clips=batch_clips,
        workers=workers, decoder=decoder, channels_last=not no_channels_last, devices=parse_devices(gpus, device_list),
        engine=engine, ray_address=ray_address, random_weights=random_weights, force=force, progress=not quiet,
    )
    for path, why in summary.redone:
        click.echo(f"recomputed: {path}: {why}", err=True)
    for path, err in summary.failures:
        click.echo(f"failed: {err}" if path in err else f"failed: {path}: {err}", err=True)
    click.echo(summary.line(), err=True)
    sys.exit(summary.exit_code)
