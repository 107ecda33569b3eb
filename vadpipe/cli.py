"""Command line: parses arguments and calls library functions (which tests call too)."""

from __future__ import annotations

import logging
import sys

import click

from vadpipe import __version__
from vadpipe.errors import VadpipeError


#: ``--preset`` recipes: the geometry preset they take and the backbone they imply (None: any).
RECIPES: dict[str, tuple[str, str | None]] = {
    "kinetics": ("kinetics", None),
    "gowtham-rtfm": ("gowtham-rtfm", None),
    "rtfm-ucf": ("gowtham-rtfm", "i3d-r50-caffe2"),
    "sultani": ("backbone", "c3d"),
}


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
@click.option("--backbone", default=None, help="Registered backbone (see `vadpipe weights list`) [default: i3d, "
              "or the recipe's].")
@click.option("--crops", type=click.Choice(["1", "5", "10"]), default="10", show_default=True,
              help="Crops per clip: centre; 4 corners + centre; those and their mirrors.")
@click.option("--preset", "preset_name", type=click.Choice(sorted(RECIPES)), default=None,
              help="Named recipe: kinetics (short side 256, TenCrop order, bilinear); gowtham-rtfm (340x256 "
                   "ignoring aspect, Lanczos, TL,TR,C,BL,BR order); rtfm-ucf (that geometry and [-1, 1] values on i3d-r50-caffe2, the RTFM "
                   "UCF-Crime/ShanghaiTech features); sultani (c3d fc6, 128x171 → 112). Crop size and value "
                   "normalisation always stay the backbone's weights'.")
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
@click.option("--decoder", type=click.Choice(["auto", "decord", "pyav", "torchcodec", "torchcodec-cuda"]),
              default="auto", show_default=True,
              help="auto uses decord where it is frame-exact, PyAV elsewhere. torchcodec (CPU) and "
                   "torchcodec-cuda (NVDEC) decode where checked equal to PyAV, PyAV elsewhere "
                   "(pip install torchcodec; needs FFmpeg's shared libraries).")
@click.option("--no-channels-last", is_flag=True, help="Do not use channels_last_3d on CUDA.")
@click.option("--gpus", default=None, metavar="0,1,...",
              help="One worker process per listed GPU; videos go longest first through a shared queue.")
@click.option("--devices", "device_list", default=None, metavar="DEV,DEV,...",
              help="Like --gpus with explicit devices, e.g. cuda:0,cuda:2 or cpu,cpu (testing).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
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
    from dataclasses import replace

    from vadpipe.extractors import get_backbone
    from vadpipe.pipeline.clips import ClipSpec
    from vadpipe.pipeline.config import ExtractConfig
    from vadpipe.pipeline.runner import default_batch_clips, default_workers, extract as run_extract, resolve_device
    from vadpipe.pipeline.sources import discover
    from vadpipe.pipeline.transforms import PRESETS

    try:
        geometry, recipe_backbone = RECIPES[preset_name] if preset_name else ("backbone", None)
        if backbone and recipe_backbone and backbone != recipe_backbone:
            raise VadpipeError(f"--preset {preset_name} is made with --backbone {recipe_backbone}, not {backbone}")
        backbone = backbone or recipe_backbone or "i3d"
        spec = get_backbone(backbone)
        preset = spec.preset
        if geometry != "backbone":  # geometry from the recipe; crop size and value normalisation stay the weights'
            named = PRESETS[geometry]
            preset = replace(preset, resize=named.resize, crop_order=named.crop_order,
                             interpolation=named.interpolation, antialias=named.antialias)
        if crop_order:
            preset = replace(preset, crop_order=crop_order)
        if resize:
            preset = replace(preset, resize=_parse_resize(resize))
        devices = _parse_devices(gpus, device_list)
        if engine == "ray":  # the cluster's devices, not the driver's: no local CUDA check
            import torch

            dev = torch.device("cuda" if (devices or (device,))[0].startswith("cuda") else "cpu")
        else:
            dev = resolve_device(devices[0] if devices else device)
        workers = default_workers(dev, per_device=len(devices) or 1) if workers is None else workers
        batch_clips = default_batch_clips(dev) if batch_clips is None else batch_clips
        length = clip_len or spec.clip_len
        config = ExtractConfig(
            backbone=backbone, clip=ClipSpec(length=length, stride=stride or length, tail=tail),
            preset=preset, crops=int(crops), fps=fps, layout=layout, precision=precision, device=device,
            batch_clips=batch_clips, workers=workers, decoder=decoder, channels_last=not no_channels_last,
            random_weights=random_weights, devices=devices, engine=engine, ray_address=ray_address,
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
@click.argument("video", required=False, type=click.Path(exists=True))
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

    from vadpipe.bench import run_extract_bench, run_scaling_bench
    from vadpipe.pipeline.config import ExtractConfig
    from vadpipe.pipeline.runner import default_batch_clips, default_workers, resolve_device

    try:
        devices = _parse_devices(gpus, device_list)
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
    except VadpipeError as e:
        _fail(e)


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
    from vadpipe.bench import run_train_bench

    try:
        run_train_bench(head, crops=crops, dim=dim, segments=segments, steps=steps, device=device,
                        overrides=_parse_overrides(overrides), echo=click.echo)
    except VadpipeError as e:
        _fail(e)


@bench.command("score")
@click.argument("video", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--head", "checkpoint", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Head checkpoint [default: the bundled demo head (I3D, 1 crop)].")
@click.option("--seconds", default=60.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Length of the generated 320x240 30 fps video when VIDEO is not given.")
@click.option("--device", default="auto", show_default=True)
@click.option("--precision", type=click.Choice(["fp32", "tf32", "bf16", "fp16"]), default=None,
              help="Replace the precision of the head's recorded recipe (benchmark only) [default: the recipe's].")
@click.option("--runs", default=2, show_default=True, type=click.IntRange(1),
              help="Throughput runs (the first in a process pays one-time costs such as CUDA start-up).")
@click.option("--stages", default="cold-start,throughput", show_default=True,
              help="Comma-separated subset of cold-start, throughput.")
@click.option("--random-weights", is_flag=True, help="Benchmark without installed weights (same speed).")
def bench_score(video, checkpoint, seconds, device, precision, runs, stages, random_weights) -> None:
    """Cold start (process start to first streamed clip score) and seconds of `vadpipe score`
    per minute of 240p video."""
    from vadpipe.bench_score import run_score_bench

    wanted = {s.strip() for s in stages.split(",") if s.strip()}
    unknown = wanted - {"cold-start", "throughput"}
    if unknown:
        raise click.BadParameter(f"unknown stage(s) {sorted(unknown)}", param_hint="--stages")
    try:
        run_score_bench(video, head=checkpoint, seconds=seconds, device=device, precision=precision, runs=runs,
                        cold_start="cold-start" in wanted, throughput="throughput" in wanted,
                        random_weights=random_weights, echo=click.echo)
    except VadpipeError as e:
        _fail(e)


@main.group()
def features() -> None:
    """Derived feature sets (e.g. Sultani's 32 L2-normalised segments)."""


@features.command("segments")
@click.argument("features_csv", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False))
@click.option("--n", "n_segments", default=32, show_default=True, type=click.IntRange(1))
@click.option("--l2/--no-l2", default=True, show_default=True, help="L2-normalise each segment (Sultani).")
@click.option("--format", "fmt", type=click.Choice(["txt", "npy"]), default="txt", show_default=True,
              help="txt: Sultani's text files (32 lines × 4096 '%f ' values); npy: float32 [n, D].")
def features_segments(features_csv, out, n_segments, l2, fmt) -> None:
    """Average each video of a features.csv into N segments as Sultani's
    Save_C3DFeatures_32Segments.m does (round(linspace(1, T, N+1)) bins)."""
    from vadpipe.pipeline.segments import segments_for_manifest

    try:
        written = segments_for_manifest(features_csv, out, n=n_segments, l2=l2, fmt=fmt)
    except (VadpipeError, ValueError) as e:
        _fail(e)
    click.echo(f"{len(written)} videos → {out} ({n_segments} segments, {'L2-normalised' if l2 else 'raw'}, {fmt})")


@main.group()
def weights() -> None:
    """Weights: backbones registered, installed and verified; official head checkpoints imported."""


@weights.command("list")
def weights_list() -> None:
    """Registered backbones, their weights' provenance and licence, and whether they are installed.

    Files in the weights index (imported with `vadpipe weights import`, or converted) are
    reported from it (sha256 recorded at import); others are looked for by building the backbone.
    """
    from vadpipe.errors import WeightsIntegrityError, WeightsNotFoundError
    from vadpipe.extractors import get_backbone, list_backbones
    from vadpipe.weights import read_weights_index, weights_dir, weights_index_path

    try:
        index = read_weights_index()
    except WeightsIntegrityError as e:
        click.echo(f"warning: {e}", err=True)
        index = {}
    for name in list_backbones():
        spec = get_backbone(name)
        entry = index.get(spec.weights.file_name) if spec.weights.file_name else None
        path = weights_dir() / spec.weights.file_name
        if entry is not None and path.is_file():
            state = f"imported {entry.imported_at}, sha256 {entry.sha256[:12]}…"
            if path.stat().st_size != entry.size:
                state += (f" — CHANGED since import ({path.stat().st_size} bytes, {entry.size} recorded): "
                          "run `vadpipe weights verify`")
        elif entry is not None:
            state = f"MISSING: {path} was imported on {entry.imported_at} but is gone. {spec.weights.how_to_get}"
        else:
            try:
                model = spec.build(True)
                state = f"installed (sha256 {(getattr(model, 'weights_sha256', None) or '?')[:12]}…)"
            except WeightsNotFoundError:
                state = "MISSING: " + spec.weights.how_to_get
            except WeightsIntegrityError as e:
                state = f"BROKEN: {e}"
        click.echo(f"{name}: {spec.feature_dim}-D, {spec.clip_len}-frame clips, weights {spec.weights.name}")
        click.echo(f"  source:  {spec.weights.source}")
        click.echo(f"  licence: {spec.weights.license}")
        click.echo(f"  status:  {state}")
    try:
        index = read_weights_index()  # building may have converted (and recorded) files
    except WeightsIntegrityError:
        pass
    click.echo(f"weights index {weights_index_path()}: {len(index)} file(s)")
    for entry in index.values():
        click.echo(f"  {entry.file}: {entry.kind} {entry.imported_at}, sha256 {entry.sha256[:12]}…, "
                   f"{entry.size} bytes, licence: {entry.license or 'not recorded'}")


@weights.command("verify")
@click.argument("backbone", required=False)
def weights_verify(backbone: str | None) -> None:
    """Re-hash the files in the weights index; with BACKBONE, also build it (hash-check, convert once).

    Exits 1 when an indexed file is missing or its sha256 differs from the one recorded at
    import (corrupted or replaced), 2 on other errors.
    """
    from vadpipe.extractors import get_backbone
    from vadpipe.weights import verify_weights_index, weights_index_path

    try:
        files = None
        if backbone is not None:
            spec = get_backbone(backbone)
            files = [spec.weights.file_name] if spec.weights.file_name else []
        checks = verify_weights_index(files)
    except VadpipeError as e:
        _fail(e)
    for check in checks:
        if check.ok:
            click.echo(f"{check.entry.file}: ok, sha256 {check.sha256}")
        else:
            click.echo(f"error: {check.entry.file}: {check.problem}", err=True)
    bad = [c for c in checks if not c.ok]
    if bad:
        click.echo(f"{len(bad)} of {len(checks)} indexed weight file(s) failed verification", err=True)
        sys.exit(1)
    if backbone is None:
        click.echo(f"{len(checks)} indexed weight file(s) verified ({weights_index_path()})")
        return
    try:
        model = spec.build(True)
    except VadpipeError as e:
        _fail(e)
    click.echo(f"{backbone}: ok, weights sha256 {model.weights_sha256}")


@weights.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False),
              help="For a head (rtfm, mgfn, sultani): the vadpipe checkpoint to write.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Head settings the file was trained with.")
def weights_import(name: str, file: str, out: str | None, overrides: tuple[str, ...]) -> None:
    """Register a downloaded weight FILE.

    NAME is a backbone (the file is sha256-checked and copied into the cache) or a head
    (an official RTFM/MGFN/Sultani state dict is loaded strictly and written as a vadpipe
    checkpoint to --out, usable by `vadpipe eval`).
    """
    from vadpipe.extractors import list_backbones
    from vadpipe.heads.base import list_heads

    try:
        if name in list_heads():
            from vadpipe.pipeline.train import import_official_head

            if not out:
                raise VadpipeError(f"importing a {name} head needs --out CHECKPOINT.pt")
            import_official_head(name, file, out, _parse_overrides(overrides))
            click.echo(f"imported {file} ({name}) as {out}")
            return
        if name not in list_backbones():
            raise VadpipeError(f"{name!r} is neither a backbone ({', '.join(list_backbones())}) "
                               f"nor a head ({', '.join(list_heads())})")
        from vadpipe.extractors import get_backbone
        from vadpipe.weights import import_weight_file, sha256_file

        info = get_backbone(name).weights
        if not info.file_name:
            raise VadpipeError(f"backbone {name!r} has no importable weight file")
        dst = import_weight_file(info.file_name, file, expected_sha256=info.source_sha256, weights_name=info.name,
                                 source=info.source, license=info.license, backbone=name)
    except VadpipeError as e:
        _fail(e)
    click.echo(f"imported {file} as {dst} (sha256 {sha256_file(dst)}; licence: {info.license})")
    try:  # prove the file loads into the backbone
        get_backbone(name).build(True)
    except VadpipeError as e:
        click.echo(f"warning: {name} does not build yet: {e}", err=True)
        sys.exit(1)
    click.echo(f"{name}: loads")


# ----------------------------------------------------------------------------- stage two


@main.group()
def manifest() -> None:
    """Build dataset CSVs (video, feature_path, label, split, class) for training and evaluation."""


@manifest.command("import")
@click.argument("kind", type=click.Choice(["rtfm-list", "xd-list"]))
@click.argument("list_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Dataset CSV to write.")
@click.option("--dataset", type=click.Choice(["ucf", "shanghai"]), default="ucf", show_default=True,
              help="rtfm-list: which dataset's labelling rule applies.")
@click.option("--feature-root", default=None, type=click.Path(file_okay=False),
              help="Folder holding the feature files (the list's author paths are replaced).")
def manifest_import(kind, list_file, out, dataset, feature_root) -> None:
    """Import a community feature list (RTFM's ucf-i3d.list, XD-Violence's rgb.list, ...)."""
    from vadpipe.manifests.datasets import import_rtfm_list, import_xd_list, write_dataset

    try:
        if kind == "rtfm-list":
            rows = import_rtfm_list(list_file, dataset=dataset, feature_root=feature_root)
        else:
            rows = import_xd_list(list_file, feature_root=feature_root)
        write_dataset(out, rows)
    except VadpipeError as e:
        _fail(e)
    n_abn = sum(r.is_anomalous for r in rows)
    click.echo(f"{out}: {len(rows)} videos ({n_abn} anomalous, {len(rows) - n_abn} normal)")


@manifest.command("from-features")
@click.argument("features_csv", type=click.Path(exists=True, dir_okay=False))
@click.option("--labels", required=True, type=click.Path(exists=True, dir_okay=False),
              help="CSV with columns video,label[,class] (label: normal|anomalous).")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False))
@click.option("--split", default="", help="Value of the split column (train, val, test).")
def manifest_from_features(features_csv, labels, out, split) -> None:
    """Join a features.csv from `vadpipe extract` with video labels."""
    from vadpipe.manifests.datasets import from_features_manifest, write_dataset

    try:
        rows = from_features_manifest(features_csv, labels, split=split)
        write_dataset(out, rows)
    except VadpipeError as e:
        _fail(e)
    click.echo(f"{out}: {len(rows)} videos")


def _parse_overrides(items: tuple[str, ...]) -> dict:
    import json

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
        if isinstance(out[key], list):
            out[key] = tuple(out[key])
    return out


@main.command()
@click.option("--train", "train_csv", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Dataset CSV of training videos (rows with split=val are held out for validation).")
@click.option("--val", "val_csv", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Validation CSV [default: 10%% of the training videos, stratified, held out].")
@click.option("--head", default="rtfm", show_default=True, help="Registered head (sultani, rtfm, mgfn).")
@click.option("-o", "--out", default="runs/train", show_default=True, type=click.Path(file_okay=False))
@click.option("--steps", default=None, type=click.IntRange(1), help="[default: the head's official schedule]")
@click.option("--eval-every", default=50, show_default=True, type=click.IntRange(1))
@click.option("--patience", default=None, type=click.IntRange(1), help="Early stopping after N validations without gain.")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Head setting, e.g. --set lr=1e-4.")
@click.option("--refine", type=click.Choice(["mcr"]), default=None,
              help="Wrap the head in a score-refinement module (MCR) and train them together.")
@click.option("--refine-set", "refine_overrides", multiple=True, metavar="KEY=VALUE",
              help="Refinement setting, e.g. --refine-set windows=[1,3,5].")
@click.option("--preset", "head_preset", default=None, metavar="NAME",
              help="The paper's settings for a dataset, e.g. --head lanet --preset xd (see `vadpipe train --list-presets`); "
                   "--set values apply on top. Implies --protocol paper unless --protocol is given.")
@click.option("--protocol", type=click.Choice(["holdout", "paper"]), default=None,
              help="holdout: validation videos held out of the training split, best.pt chosen on them (default "
                   "for your own data); paper: train on the FULL training split as the papers do, keep the last "
                   "step [default: paper with --preset, else holdout].")
@click.option("--list-presets", is_flag=True, is_eager=True, expose_value=False, callback=lambda ctx, _p, v: _list_presets(ctx, v),
              help="List every head's presets and exit.")
@click.option("--resume", default=None, type=click.Path(exists=True, dir_okay=False), help="Continue from last.pt.")
@click.option("--cache", is_flag=True, help="Keep resampled training features in memory.")
@click.option("--backbone", default=None, help="Backbone that made the features, e.g. i3d (recorded in the checkpoint's feature spec).")
@click.option("--clip-len", default=16, show_default=True, type=click.IntRange(1),
              help="Frames per feature snippet (recorded; used to map scores to frames).")
@click.option("--select-on-test", "test_csv", default=None, type=click.Path(exists=True, dir_okay=False),
              help="OPTIMISTIC, as the published code: choose the checkpoint on this TEST set (needs --gt).")
@click.option("--gt", default=None, metavar="KIND:PATH", help="Ground truth for --select-on-test (see `vadpipe eval`).")
@click.option("-q", "--quiet", is_flag=True)
def train(train_csv, val_csv, head, out, steps, eval_every, patience, seed, device, overrides, refine,
          refine_overrides, head_preset, protocol, resume, cache, backbone, clip_len, test_csv, gt, quiet) -> None:
    """Train an anomaly head; best.pt is chosen on the validation split (--protocol holdout) or is
    the last step on the full training split (--protocol paper)."""
    from vadpipe.manifests.datasets import dataset_root, read_dataset, split_train_val
    from vadpipe.pipeline import scoring
    from vadpipe.pipeline.runner import resolve_device
    from vadpipe.pipeline.train import TEST_SELECTION_WARNING, TrainConfig, train as run_train

    try:
        protocol = protocol or ("paper" if head_preset else "holdout")
        rows = read_dataset(train_csv)
        root = dataset_root(train_csv)
        if protocol == "paper":
            if val_csv:
                raise VadpipeError("--protocol paper trains on the full training split: drop --val "
                                   "(or use --protocol holdout)")
            train_rows, val_rows = rows, []
        elif val_csv:
            train_rows, val_rows = [r for r in rows if r.split != "val"], read_dataset(val_csv)
            if dataset_root(val_csv) != root:
                raise VadpipeError("--train and --val must sit in the same folder (feature paths are relative to it)")
        elif any(r.split == "val" for r in rows):
            train_rows, val_rows = [r for r in rows if r.split != "val"], [r for r in rows if r.split == "val"]
        else:
            train_rows, val_rows = split_train_val(rows, val_fraction=0.1, seed=seed)
        test_metric = None
        if test_csv:
            if not gt:
                raise VadpipeError("--select-on-test needs --gt KIND:PATH")
            click.echo(f"WARNING: {TEST_SELECTION_WARNING}", err=True)
            test_metric = scoring.test_set_auc(test_csv, gt, resolve_device(device))

        head_overrides = {**_preset_overrides(head, head_preset), **_parse_overrides(overrides)}
        if refine:  # the refinement module is the trained head; the base head's settings go inside it
            head_overrides = {"base_head": head, "base_overrides": head_overrides, **_parse_overrides(refine_overrides)}
            head = refine
        config = TrainConfig(head=head, overrides=head_overrides, steps=steps, eval_every=eval_every,
                             patience=patience, seed=seed, device=device,
                             selection="test" if test_csv else "val", cache=cache,
                             train_split="full" if protocol == "paper" else "holdout")
        meta = _feature_meta(train_rows + val_rows, root, backbone, clip_len)
        result = run_train(train_rows, val_rows, out, config, root=root, resume=resume, test_metric=test_metric,
                           feature_meta=meta, progress=not quiet)
    except VadpipeError as e:
        _fail(e)
    if not val_rows and not test_csv:
        click.echo(f"protocol paper: trained on all {len(train_rows)} training videos for {result.best_step} steps "
                   f"(training-set video-level AUC {result.best_metric:.4f}, optimistic); "
                   f"{result.steps_per_second:.2f} steps/s; checkpoints: {result.best_path}, {result.last_path}")
        return
    metric = "TEST AUC (optimistic)" if test_csv else "validation video-level AUC"
    click.echo(f"best {metric} {result.best_metric:.4f} at step {result.best_step}; "
               f"{result.steps_per_second:.2f} steps/s; checkpoints: {result.best_path}, {result.last_path}"
               + ("; stopped early" if result.stopped_early else ""))


def _preset_overrides(head: str, preset: str | None) -> dict:
    """The head's registered preset ``preset`` as config overrides (``{}`` without one)."""
    if preset is None:
        return {}
    from vadpipe.heads.base import get_head

    presets = get_head(head).presets
    if preset not in presets:
        known = ", ".join(sorted(presets)) or "none"
        raise VadpipeError(f"head {head!r} has no preset {preset!r} (its presets: {known})")
    return dict(presets[preset])


def _list_presets(ctx, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from vadpipe.heads.base import get_head, list_heads

    for name in list_heads():
        for preset, values in sorted(get_head(name).presets.items()):
            click.echo(f"{name} --preset {preset}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    ctx.exit()


def _feature_meta(rows, root, backbone: str | None, clip_len: int) -> dict:
    """What made the training features: the recorded extraction recipe when the files come
    from `vadpipe extract` (so `vadpipe score` can re-create them), else what the user says."""
    from pathlib import Path

    from vadpipe.pipeline.provenance import extraction_of

    files = [Path(root or ".") / r.feature_path.format(k=0) for r in rows]
    recipe = extraction_of(files)
    if recipe is None:
        return {"backbone": backbone or "unknown", "clip_len": clip_len}
    if backbone and backbone != recipe["backbone"]:
        raise VadpipeError(f"--backbone {backbone}, but the features were extracted with {recipe['backbone']} "
                           "(features.csv beside them says so)")
    return {"backbone": recipe["backbone"], "clip_len": recipe["config"]["clip"]["length"], "extract": recipe}


def _score_command(checkpoint, data, out, device, gt, convention) -> None:
    from pathlib import Path

    from vadpipe.manifests.datasets import dataset_root, read_dataset
    from vadpipe.pipeline import scoring
    from vadpipe.pipeline.runner import resolve_device

    try:
        dev = resolve_device(device)
        loaded = scoring.load_head(checkpoint, dev)
        rows = read_dataset(data)
        scores = scoring.score_rows(loaded, rows, dataset_root(data), dev)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        scoring.write_scores_csv(out / "scores.csv", rows, scores)
        click.echo(f"{out / 'scores.csv'}: {len(rows)} videos, {sum(s.size for s in scores.values())} snippets")
        if gt:
            result = scoring.evaluate_scores(scores, gt, convention=convention, frame_scores_csv=out / "frame_scores.csv")
            for line in scoring.result_lines(result, loaded.selection):
                click.echo(line)
    except VadpipeError as e:
        _fail(e)


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Dataset CSV to score.")
@click.option("--gt", required=True, metavar="KIND:PATH",
              help="ucf:Temporal_Anomaly_Annotation.txt, xd:annotations.txt, sh-masks:test_frame_mask/, csv:intervals.csv")
@click.option("--gt-convention", default=None, type=click.Choice(["rtfm", "sultani", "vadclip"]),
              help="How annotation frame numbers are read [default: rtfm for UCF (0-based, inclusive ends), "
                   "vadclip for XD (0-based, exclusive ends)].")
@click.option("-o", "--out", default="runs/eval", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
def eval(checkpoint, data, gt, gt_convention, out, device) -> None:  # noqa: A001 (command name)
    """Score a dataset and report frame-level ROC-AUC, AP (both ways), FAR and per-class AUC."""
    _score_command(checkpoint, data, out, device, gt, gt_convention)


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Dataset CSV to score.")
@click.option("-o", "--out", default="runs/apply", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
def apply(checkpoint, data, out, device) -> None:
    """Score a dataset with a trained head: OUT/scores.csv (one row per snippet)."""
    _score_command(checkpoint, data, out, device, None, None)


@main.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--head", "checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Head checkpoint (best.pt from `vadpipe train`, or `vadpipe weights import`).")
@click.option("-o", "--out", default="runs/score", show_default=True, type=click.Path(file_okay=False))
@click.option("--threshold", default=None, type=click.FloatRange(0, 1),
              help="Event threshold [default: the checkpoint's validation-optimal value, else 0.5].")
@click.option("--min-gap", default=0.0, show_default=True, type=click.FloatRange(0), help="Merge events this close (s).")
@click.option("--min-duration", default=0.0, show_default=True, type=click.FloatRange(0), help="Drop shorter events (s).")
@click.option("--gt", default=None, metavar="KIND:PATH", help="Ground truth for plots and AUC/AP (see `vadpipe eval`).")
@click.option("--gt-convention", default=None, type=click.Choice(["rtfm", "sultani", "vadclip"]))
@click.option("--report", default=None, type=click.Path(dir_okay=False), help="Write one self-contained HTML report.")
@click.option("--no-plots", is_flag=True, help="Do not write a PNG per video.")
@click.option("--backbone", default=None, help="Only for checkpoints that do not record their feature recipe.")
@click.option("--features", "features_dir", default=None, type=click.Path(file_okay=False),
              help="Stage-one folder to reuse and fill [default: OUT/features].")
@click.option("--device", default="auto", show_default=True)
@click.option("--batch-clips", default=None, type=click.IntRange(1))
@click.option("--workers", default=None, type=click.IntRange(0))
@click.option("--decoder", type=click.Choice(["auto", "decord", "pyav", "torchcodec", "torchcodec-cuda"]),
              default="auto", show_default=True,
              help="As for extract: auto (decord where frame-exact, else PyAV), decord, pyav, torchcodec, "
                   "torchcodec-cuda.")
@click.option("--random-weights", is_flag=True, help="Backbone with random weights (tests/benchmarks only).")
@click.option("--force", is_flag=True, help="Recompute features even when the features folder has them.")
@click.option("--stream", is_flag=True, help="Score one video (file, growing file or - for stdin) clip by clip, "
                                              "printing each score as it is produced.")
@click.option("--follow", default=0.0, show_default=True, type=click.FloatRange(0),
              help="With --stream: keep reading a growing file until it stops growing for this many seconds.")
@click.option("--window", "stream_window", default=64, show_default=True, type=click.IntRange(1),
              help="With --stream and a non-causal head: clips of context the provisional scores see.")
@click.option("-q", "--quiet", is_flag=True)
def score(inputs, checkpoint, out, threshold, min_gap, min_duration, gt, gt_convention, report, no_plots, backbone,
          features_dir, device, batch_clips, workers, decoder, random_weights, force, stream, follow, stream_window,
          quiet) -> None:
    """Score raw videos with a trained head: per-video scores.csv, events, plots, a report.

    Stage one runs with the backbone and preprocessing the checkpoint records, and reuses
    features already extracted. Exits 1 when any video failed, 2 on a setup error.
    """
    from vadpipe.pipeline.runner import default_batch_clips, default_workers, resolve_device
    from vadpipe.pipeline.score import ScoreOptions, score_videos
    from vadpipe.pipeline.sources import discover

    try:
        dev = resolve_device(device)
        speed = {"device": device, "decoder": decoder, "random_weights": random_weights,
                 "workers": default_workers(dev) if workers is None else workers,
                 "batch_clips": default_batch_clips(dev) if batch_clips is None else batch_clips}
        options = ScoreOptions(threshold=threshold, min_gap=min_gap, min_duration=min_duration, gt=gt,
                               gt_convention=gt_convention, plots=not no_plots, report=report)
        if stream:
            from vadpipe.pipeline.stream import stream_score

            if len(inputs) != 1:
                raise VadpipeError("--stream scores one video (a file, a growing file, or - for stdin)")
            result = stream_score(inputs[0], checkpoint, out, options=options, backbone=backbone,
                                  speed={**speed, "workers": 0, "batch_clips": 1}, follow=follow,
                                  window=stream_window, echo=click.echo)
            sys.exit(result.exit_code)
        jobs = discover(list(inputs))
        if not jobs:
            raise VadpipeError(f"no videos found in {', '.join(inputs)}")
        summary = score_videos(jobs, checkpoint, out, options=options, backbone=backbone, speed=speed,
                               features_dir=features_dir, force=force, progress=not quiet,
                               echo=None if quiet else click.echo)
    except VadpipeError as e:
        _fail(e)
    for v in summary.failed:
        click.echo(f"failed: {v.video}: {v.error}", err=True)
    n_events = sum(len(v.events) for v in summary.videos)
    click.echo(f"{len(summary.videos) - len(summary.failed)} scored, {len(summary.failed)} failed; {n_events} event(s) "
               f"at threshold {summary.threshold:g} ({summary.threshold_source}); results: {summary.out_dir}"
               + (f"; report: {summary.report}" if summary.report else ""), err=True)
    if summary.metrics:
        click.echo("  ".join(f"{k} {v:.4f}" for k, v in summary.metrics.items()), err=True)
    sys.exit(summary.exit_code)


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
    from vadpipe.demo import run_demo

    try:
        result = run_demo(out, retrain=retrain, device=device, stream=stream, progress=not quiet, echo=click.echo)
    except VadpipeError as e:
        _fail(e)
    sys.exit(result.exit_code)


def _parse_devices(gpus: str | None, devices: str | None) -> tuple[str, ...]:
    """``--gpus 0,1`` → ``("cuda:0", "cuda:1")``; ``--devices cpu,cpu`` as given."""
    if gpus and devices:
        raise VadpipeError("give --gpus or --devices, not both")
    if gpus:
        try:
            return tuple(f"cuda:{int(g)}" for g in gpus.split(",") if g.strip())
        except ValueError:
            raise VadpipeError(f"--gpus takes GPU indices like 0,1,2, got {gpus!r}") from None
    if devices:
        return tuple(d.strip() for d in devices.split(",") if d.strip())
    return ()


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
