"""Stage two: ``vadpipe manifest``, ``features segments``, ``train``, ``eval``, ``apply``."""

from __future__ import annotations

import click

from vadpipe.cli.main import choices_of, main, parse_overrides


@main.group()
def manifest() -> None:
    """Build dataset CSVs (video, feature_path, label, split, class) for training and evaluation."""


@manifest.command("import")
@click.argument("kind", type=choices_of("vadpipe.manifests.datasets", "LIST_KINDS"))
@click.argument("list_file", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Dataset CSV to write.")
@click.option("--dataset", type=choices_of("vadpipe.manifests.datasets", "RTFM_LIST_DATASETS"), default="ucf", show_default=True,
              help="rtfm-list: which dataset's labelling rule applies.")
@click.option("--feature-root", default=None, type=click.Path(file_okay=False),
              help="Folder holding the feature files (the list's author paths are replaced).")
def manifest_import(kind, list_file, out, dataset, feature_root) -> None:
    """Import a community feature list (RTFM's ucf-i3d.list, XD-Violence's rgb.list, ...)."""
    from vadpipe.manifests.atomic import ensure_writable_file
    from vadpipe.manifests.datasets import import_list, write_dataset

    ensure_writable_file(out)
    rows = import_list(kind, list_file, dataset=dataset, feature_root=feature_root)
    write_dataset(out, rows)
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
    from vadpipe.manifests.atomic import ensure_writable_file
    from vadpipe.manifests.datasets import from_features_manifest, write_dataset

    ensure_writable_file(out)
    rows = from_features_manifest(features_csv, labels, split=split)
    write_dataset(out, rows)
    click.echo(f"{out}: {len(rows)} videos")


@main.group()
def features() -> None:
    """Derived feature sets (e.g. Sultani's 32 L2-normalised segments)."""


@features.command("segments")
@click.argument("features_csv", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False))
@click.option("--n", "n_segments", default=32, show_default=True, type=click.IntRange(1))
@click.option("--l2/--no-l2", default=True, show_default=True, help="L2-normalise each segment (Sultani).")
@click.option("--format", "fmt", type=choices_of("vadpipe.pipeline.train.segments", "FORMATS"), default="txt", show_default=True,
              help="txt: Sultani's text files (32 lines × 4096 '%f ' values); npy: float32 [n, D].")
def features_segments(features_csv, out, n_segments, l2, fmt) -> None:
    """Average each video of a features.csv into N segments as Sultani's
    Save_C3DFeatures_32Segments.m does (round(linspace(1, T, N+1)) bins)."""
    from vadpipe.manifests.atomic import ensure_writable_dir
    from vadpipe.pipeline.train.segments import segments_for_manifest

    ensure_writable_dir(out)
    written = segments_for_manifest(features_csv, out, n=n_segments, l2=l2, fmt=fmt)
    click.echo(f"{len(written)} videos → {out} ({n_segments} segments, {'L2-normalised' if l2 else 'raw'}, {fmt})")


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
@click.option("--refine", type=choices_of("vadpipe.heads.base", "refinement_heads", lambda heads: heads()), default=None,
              help="Wrap the head in a score-refinement module (MCR) and train them together.")
@click.option("--refine-set", "refine_overrides", multiple=True, metavar="KEY=VALUE",
              help="Refinement setting, e.g. --refine-set windows=[1,3,5].")
@click.option("--preset", "head_preset", default=None, metavar="NAME",
              help="The paper's settings for a dataset, e.g. --head lanet --preset xd (see `vadpipe train --list-presets`); "
                   "--set values apply on top. Implies --protocol paper unless --protocol is given.")
@click.option("--protocol", type=choices_of("vadpipe.pipeline.train.loop", "PROTOCOLS"), default=None,
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
    from vadpipe.api import train as run_train
    from vadpipe.pipeline.train.loop import TEST_SELECTION_WARNING

    if test_csv and gt:
        click.echo(f"WARNING: {TEST_SELECTION_WARNING}", err=True)
    result = run_train(train_csv, head=head, out=out, val=val_csv, settings=parse_overrides(overrides),
                       preset=head_preset, protocol=protocol, refine=refine,
                       refine_settings=parse_overrides(refine_overrides), steps=steps, eval_every=eval_every,
                       patience=patience, seed=seed, device=device, resume=resume, cache=cache, backbone=backbone,
                       clip_len=clip_len, select_on_test=test_csv, gt=gt, progress=not quiet)
    if not result.val_videos and not test_csv:
        click.echo(f"protocol paper: trained on all {result.train_videos} training videos for {result.best_step} steps "
                   f"(training-set video-level AUC {result.best_metric:.4f}, optimistic); "
                   f"{result.steps_per_second:.2f} steps/s; checkpoints: {result.best_path}, {result.last_path}")
        return
    metric = "TEST AUC (optimistic)" if test_csv else "validation video-level AUC"
    click.echo(f"best {metric} {result.best_metric:.4f} at step {result.best_step}; "
               f"{result.steps_per_second:.2f} steps/s; checkpoints: {result.best_path}, {result.last_path}"
               + ("; stopped early" if result.stopped_early else ""))


def _list_presets(ctx, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    from vadpipe.heads.base import get_head, list_heads

    for name in list_heads():
        for preset, values in sorted(get_head(name).presets.items()):
            click.echo(f"{name} --preset {preset}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    ctx.exit()


def _score_command(checkpoint, data, out, device, gt, convention, compare=None, resamples=1000,
                   strict_gt=False, scores_per="auto", frames=None) -> None:
    from vadpipe.api import evaluate
    from vadpipe.pipeline.train import apply as scoring

    run = evaluate(checkpoint, data, gt=gt, out=out, convention=convention, device=device, compare=compare,
                   resamples=resamples, strict_gt=strict_gt, scores_per=scores_per, frames=frames)
    click.echo(f"{run.scores_csv}: {run.n_videos} videos, {run.n_scores} {'segments' if run.segments else 'snippets'}")
    if run.segments and gt:
        click.echo(f"segment scores: each video evaluated on its real frame count ({run.n_videos} videos, "
                   "Sultani's Evaluate_Anomaly_Detector.m mapping)")
    if run.metrics is not None:
        for line in scoring.result_lines(run.metrics, run.selection):
            click.echo(line)
    if run.comparison is not None:
        click.echo("compare: " + run.comparison.line("this", "other"))


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Dataset CSV to score.")
@click.option("--gt", required=True, metavar="KIND:PATH",
              help="ucf:Temporal_Anomaly_Annotation.txt, xd:annotations.txt, sh-masks:test_frame_mask/, "
                   "sh-npy:gt-sh.npy, csv:intervals.csv")
@click.option("--gt-convention", default=None, type=choices_of("vadpipe.pipeline.train.metrics", "CONVENTIONS"),
              help="How annotation frame numbers are read [default: rtfm for UCF (0-based, inclusive ends), "
                   "vadclip for XD (0-based, exclusive ends)].")
@click.option("-o", "--out", default="runs/eval", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
@click.option("--compare", default=None, type=click.Path(exists=True, dir_okay=False), metavar="OTHER_SCORES",
              help="Another scores.csv of the same test set: AUC difference with a paired bootstrap CI "
                   "(videos resampled), also written to OUT/compare.json.")
@click.option("--bootstrap", "resamples", default=1000, show_default=True, type=click.IntRange(1),
              help="Resamples for --compare.")
@click.option("--strict-gt", is_flag=True,
              help="Stop when annotated frames reach past a video's evaluated frames (T x 16, or the frame count "
                   "of segment scores; default: a warning).")
@click.option("--scores-per", type=choices_of("vadpipe.pipeline.train.apply", "SCORES_PER"), default="auto",
              show_default=True,
              help="segment: one score per segment of the video (Sultani's 32), evaluated on the video's real "
                   "frame count; snippet: one per 16 frames; auto: segment for Sultani .txt files and files of "
                   "`vadpipe features segments`.")
@click.option("--frames", "frames_csv", default=None, type=click.Path(exists=True, dir_okay=False), metavar="CSV",
              help="Real frame counts for segment scores: CSV video,frames[,clips], or stage one's features.csv "
                   "[default: the segments.csv beside the segment files].")
def eval(checkpoint, data, gt, gt_convention, out, device, compare, resamples,  # noqa: A001 (command name)
         strict_gt, scores_per, frames_csv) -> None:
    """Score a dataset and report frame-level ROC-AUC, AP (both ways), FAR and per-class AUC."""
    _score_command(checkpoint, data, out, device, gt, gt_convention, compare, resamples, strict_gt,
                   scores_per, frames_csv)


@main.command()
@click.option("--checkpoint", required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False), help="Dataset CSV to score.")
@click.option("-o", "--out", default="runs/apply", show_default=True, type=click.Path(file_okay=False))
@click.option("--device", default="auto", show_default=True)
def apply(checkpoint, data, out, device) -> None:
    """Score a dataset with a trained head: OUT/scores.csv (one row per snippet)."""
    _score_command(checkpoint, data, out, device, None, None)
