"""``vadpipe export``: a trained detector as one ONNX or TorchScript file (parsing only)."""

from __future__ import annotations

import click

from vadpipe.cli.main import main


@main.command("export")
@click.option("--checkpoint", "--head", "checkpoint", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Head checkpoint (best.pt from `vadpipe train`, or `vadpipe weights import`).")
@click.option("--format", "fmt", type=click.Choice(["onnx", "torchscript"]), default="onnx", show_default=True)
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="File to write (detector.onnx).")
@click.option("--threshold", default=None, type=click.FloatRange(0, 1),
              help="Event threshold to store [default: the checkpoint's, else 0.5].")
@click.option("--backbone", default=None, help="Only for checkpoints that do not record their feature recipe.")
@click.option("--random-weights", is_flag=True, help="Backbone with random weights (tests only).")
def export(checkpoint, fmt, out, threshold, backbone, random_weights) -> None:
    """Pack backbone (with its crops and value preprocessing from uint8), head and threshold
    into one file, checked against PyTorch before it is kept.

    Inputs of the graph: `clips` uint8 [N, L, h, w, 3] (frames resized by the recipe's rule)
    and `context` float32 [K, C, D] (features of earlier clips); outputs: `features` [N, C, D]
    and `scores` [K+N]. Run it with `vadpipe score --model FILE` (ONNX). SA-CRF heads do not
    export (data-dependent inference).
    """
    from vadpipe.api import export as export_api

    result = export_api(checkpoint, out, format=fmt, backbone=backbone, random_weights=random_weights,
                             threshold=threshold)
    i = result.info
    click.echo(f"wrote {result.path} ({result.path.stat().st_size / 2**20:.1f} MiB, {fmt}) in {result.seconds:.1f} s: "
               f"{i.backbone} {i.crops}-crop + {i.head}, clips of {i.clip_len} every {i.stride} frames, threshold "
               f"{i.threshold:g} ({i.threshold_source}); check against PyTorch: scores within "
               f"{result.max_score_diff:.2g}, features within {result.max_feature_diff:.2g}")
