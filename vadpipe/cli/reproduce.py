"""``vadpipe reproduce METHOD DATASET``: a paper's table row from one command."""

from __future__ import annotations

import click

from vadpipe.cli.main import main, parse_overrides


def _list_rows(ctx: click.Context, _param, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from vadpipe.pipeline.reproduce.protocols import protocol_rows

    for row in protocol_rows():
        click.echo(f"{row['row']}: paper {row['paper']}")
        for key in ("features", "gt", "length", "ap", "selection"):
            click.echo(f"    {key:<9} {row[key]}")
    ctx.exit()


@main.command()
@click.argument("method")
@click.argument("dataset")
@click.option("--features", "features_root", required=True, type=click.Path(file_okay=False),
              help="Folder holding the public feature files the lists name.")
@click.option("--lists", "lists_dir", default=None, type=click.Path(file_okay=False),
              help="Folder with the row's list files and GT [default: --features, or its list/ subfolder].")
@click.option("--gt", default=None, type=click.Path(exists=True),
              help="The GT file (or mask folder) [default: in --lists].")
@click.option("--frames", "frames_csv", default=None, type=click.Path(exists=True, dir_okay=False),
              help="CSV video,frames of real frame counts (needed by segment-level features: Sultani's C3D).")
@click.option("--seeds", default=5, show_default=True, type=click.IntRange(1), help="Seeds 0..N-1.")
@click.option("--steps", default=None, type=click.IntRange(1),
              help="Another schedule than the paper's (the result is marked NOT comparable).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Change a head setting of the row (an ablation: the result is marked NOT comparable).")
@click.option("-o", "--out", default=None, type=click.Path(file_okay=False),
              help="Results folder [default: runs/reproduce/METHOD-DATASET].")
@click.option("--device", default="auto", show_default=True)
@click.option("--force", is_flag=True, help="Re-train seeds a previous run finished.")
@click.option("--list", "list_rows", is_flag=True, is_eager=True, expose_value=False, callback=_list_rows,
              help="List every row with its protocol and exit.")
@click.option("-q", "--quiet", is_flag=True)
def reproduce(method, dataset, features_root, lists_dir, gt, frames_csv, seeds, steps, overrides, out, device,
              force, quiet) -> None:
    """Re-run METHOD's published DATASET row (e.g. `vadpipe reproduce rtfm ucf --features DIR`): import the
    community lists, train on the full training split with the paper's settings over --seeds seeds, evaluate
    on the test list and print the paper's number beside ours (mean ± std), both AP definitions, FAR and
    per-class AUC. See `vadpipe reproduce --list` for the rows."""
    from vadpipe.pipeline.reproduce.protocols import get_protocol
    from vadpipe.pipeline.reproduce.run import locate_inputs, table_lines
    from vadpipe.pipeline.reproduce.run import reproduce as run_reproduce

    protocol = get_protocol(method, dataset)
    inputs = locate_inputs(protocol, features_root, lists_dir=lists_dir, gt=gt, frames_csv=frames_csv)
    result = run_reproduce(protocol, inputs, out or f"runs/reproduce/{method}-{dataset}", seeds=seeds, steps=steps,
                           overrides=parse_overrides(overrides), device=device, force=force, progress=not quiet,
                           echo=click.echo)
    for line in table_lines(result):
        click.echo(line)
    click.echo(f"results: {result.out / 'results.json'}")
