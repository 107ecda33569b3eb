"""``vadpipe train-backbone resnet50-trn``: train SA-CRF's relation-aware extractor on raw videos."""

from __future__ import annotations

import click

from vadpipe.cli.main import choices_of, main, parse_overrides


@main.command("train-backbone")
@click.argument("backbone", type=click.Choice(["resnet50-trn"]))
@click.option("--videos", "videos_csv", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Training list: CSV with columns video,label[,class] (paths relative to the CSV).")
@click.option("--val", "val_csv", default=None, type=click.Path(exists=True, dir_okay=False),
              help="Validation list (same columns); selects best.pt by accuracy [default: best.pt = last epoch].")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Run folder (best.pt, last.pt).")
@click.option("--dataset", type=click.Choice(["ucf", "sh"]), default="ucf", show_default=True,
              help="The paper's schedule: ucf 100 epochs, batch 18, 10 warm-up epochs; sh 225, 16, none.")
@click.option("--relation", type=choices_of("vadpipe.extractors.resnet_trn", "RELATION_TYPES"),
              default="inner-product", show_default=True, help="SA-CRF's inner-product relation, or plain TRN.")
@click.option("--epochs", default=None, type=click.IntRange(0), help="[default: the dataset's]")
@click.option("--batch", "batch_size", default=None, type=click.IntRange(1),
              help="Videos per step [default: the dataset's].")
@click.option("--segments", default=None, type=click.IntRange(2), help="Frames sampled per video [default: 16].")
@click.option("--size", default=None, type=click.IntRange(8), help="Crop side in pixels [default: 224].")
@click.option("--lr", default=None, type=click.FloatRange(min=0, min_open=True),
              help="Base learning rate [default: 1e-4].")
@click.option("--warmup-epochs", default=None, type=click.IntRange(0), help="Linear warm-up [default: the dataset's].")
@click.option("--dropout", default=None, type=click.FloatRange(0, 1, max_open=True), help="[default: 0.8]")
@click.option("--no-partial-bn", is_flag=True, help="Train every BatchNorm (default: TSN's partial BN).")
@click.option("--pretrained", default=None, metavar="FILE|none",
              help="ImageNet ResNet-50 file [default: the installed one]; 'none': random init.")
@click.option("--seed", default=None, type=int, help="[default: 0]")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:1 ... [default: auto]")
@click.option("--precision", type=choices_of("vadpipe.pipeline.trn.train", "PRECISIONS"), default=None,
              help="auto: bf16 (or fp16) autocast on CUDA, fp32 on CPU [default: auto].")
@click.option("--workers", default=None, type=click.IntRange(0),
              help="Decoding processes [default: 1 on CPU, up to 8 on CUDA].")
@click.option("--decoder", type=choices_of("vadpipe.pipeline.extract.decode", "DECODERS"), default=None,
              help="Stage one's decoder [default: auto].")
@click.option("--log-every", default=None, type=click.IntRange(0), help="Progress line every N steps [default: 20].")
@click.option("--resume", default=None, type=click.Path(exists=True, dir_okay=False), help="Continue from last.pt.")
@click.option("--register", is_flag=True,
              help="At the end, register best.pt for `vadpipe extract` (as `vadpipe weights import` does).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Other settings (out_dim, bottleneck, embed_dim, clip_grad, momentum, weight_decay, trunk).")
def train_backbone_cmd(backbone, videos_csv, val_csv, out, dataset, overrides, no_partial_bn, resume, register,
                       **flags) -> None:
    """Train BACKBONE (resnet50-trn: ResNet-50 + patch nodes + TRN relations) on raw videos
    with video-level labels: TRN segment sampling, cross-entropy over the classes, the SA-CRF
    paper's SGD recipe. Writes best.pt/last.pt (and failed.csv for unreadable videos)."""
    from vadpipe.pipeline.trn.data import read_video_list
    from vadpipe.pipeline.trn.train import TrainBackboneConfig, train_backbone

    settings = {**flags, **parse_overrides(overrides)}
    if no_partial_bn:
        settings["partial_bn"] = False
    config = TrainBackboneConfig.for_dataset(dataset, **settings)
    train_rows = read_video_list(videos_csv)
    val_rows = read_video_list(val_csv) if val_csv else []
    result = train_backbone(train_rows, val_rows, out, config, resume=resume, echo=click.echo)
    if register:
        from vadpipe.pipeline.trn.export import export_trained

        dst = export_trained(result.best_path)
        click.echo(f"registered {result.best_path} as {dst}: `vadpipe extract --backbone {backbone}` uses it")
