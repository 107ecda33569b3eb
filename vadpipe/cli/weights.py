"""``vadpipe weights list|verify|import``: backbones and head checkpoints, installed and verified."""

from __future__ import annotations

import sys

import click

from vadpipe.cli.main import main, parse_overrides
from vadpipe.errors import VadpipeError


@main.group()
def weights() -> None:
    """Weights: backbones registered, installed and verified; official head checkpoints imported."""


@weights.command("list")
def weights_list() -> None:
    """Registered backbones, their weights' provenance and licence, and whether they are installed.

    Files in the weights index (imported with `vadpipe weights import`, or converted) are
    reported from it (sha256 recorded at import); others are looked up and hash-checked
    where their weights entry says (no model is built).
    """
    from vadpipe.errors import WeightsIntegrityError, WeightsNotFoundError
    from vadpipe.extractors import get_backbone, list_backbones
    from vadpipe.extractors.weights import loaded_weights_sha256, read_weights_index, weights_dir, weights_index_path

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
                state = f"installed (sha256 {loaded_weights_sha256(spec.weights)[:12]}…)"
            except WeightsNotFoundError:
                state = "MISSING: " + spec.weights.how_to_get
            except WeightsIntegrityError as e:
                state = f"BROKEN: {e}"
        click.echo(f"{name}: {spec.feature_dim}-D, {spec.clip_len}-frame clips, weights {spec.weights.name}")
        click.echo(f"  source:  {spec.weights.source}")
        click.echo(f"  licence: {spec.weights.license}")
        click.echo(f"  status:  {state}")
    try:
        index = read_weights_index()  # the lookup may have converted (and recorded) files
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
    from vadpipe.extractors.weights import verify_weights_index, weights_index_path

    files = None
    if backbone is not None:
        spec = get_backbone(backbone)
        files = [spec.weights.file_name] if spec.weights.file_name else []
    checks = verify_weights_index(files)
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
    model = spec.build(weights=spec.weights)
    click.echo(f"{backbone}: ok, weights sha256 {model.weights_sha256}")


@weights.command("import")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", default=None, type=click.Path(dir_okay=False),
              help="For a head (rtfm, mgfn, sultani): the vadpipe checkpoint to write.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Head settings the file was trained with.")
def weights_import(name: str, file: str, out: str | None, overrides: tuple[str, ...]) -> None:
    """Register a downloaded weight FILE.

    NAME is a backbone (the file is sha256-checked and copied into the cache; for resnet50-trn a
    `vadpipe train-backbone` checkpoint such as runs/trn/best.pt is converted to the extractor's
    trained weights instead) or a head
    (an official RTFM/MGFN/Sultani state dict is loaded strictly and written as a vadpipe
    checkpoint to --out, usable by `vadpipe eval`).
    """
    from vadpipe.extractors import list_backbones
    from vadpipe.heads.base import list_heads

    if name in list_heads():
        from vadpipe.pipeline.train.loop import import_official_head

        if not out:
            raise VadpipeError(f"importing a {name} head needs --out CHECKPOINT.pt")
        import_official_head(name, file, out, parse_overrides(overrides))
        click.echo(f"imported {file} ({name}) as {out}")
        return
    if name not in list_backbones():
        raise VadpipeError(f"{name!r} is neither a backbone ({', '.join(list_backbones())}) "
                           f"nor a head ({', '.join(list_heads())})")
    from vadpipe.extractors import get_backbone
    from vadpipe.extractors.weights import import_weights, sha256_file

    spec = get_backbone(name)
    if name == "resnet50-trn":
        from vadpipe.pipeline.trn.export import export_trained, is_train_checkpoint

        if is_train_checkpoint(file):  # trained by `vadpipe train-backbone`: convert, record, prove it builds
            dst = export_trained(file)
            click.echo(f"converted {file} to {dst} (sha256 {sha256_file(dst)}; recorded in the weights index)")
            model = spec.build(weights=spec.weights)
            click.echo(f"{name}: loads the trained weights (relation {model.relation_type}); "
                       f"`vadpipe extract --backbone {name}` uses them")
            return
    dst = import_weights(spec.weights, file, backbone=name)
    click.echo(f"imported {file} as {dst} (sha256 {sha256_file(dst)}; licence: {spec.weights.license})")
    try:  # prove the file loads into the backbone
        spec.build(weights=spec.weights)
    except VadpipeError as e:
        click.echo(f"warning: {name} does not build yet: {e}", err=True)
        sys.exit(1)
    click.echo(f"{name}: loads")


# ----------------------------------------------------------------------------- stage two
