"""Run a backbone over many videos: decode and preprocess in worker processes, batch the
crops of many clips (across videos) for the model, write atomic outputs and manifest rows.

Data flow::

    VideoJob ─ worker: decode → clips → resize (uint8) ─┐  (pinned memory, prefetch)
                                                       ├→ main, on the model's device: crop → normalise
    VideoJob ─ worker: ...                             ─┘    → model → [n, crops, D] → .npy (atomic) + row

A video that fails (corrupt, empty, too short, not a video ...) becomes a ``failed`` row with
the reason; the run goes on, and so does one whose output would lie outside the output folder
(refused before it is decoded). Re-running skips videos whose ``ok`` rows match the current
settings (the decoder included, see :func:`_decoder_doubt`) and whose files are intact, unless
``force`` is set.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from vadpipe import __version__
from vadpipe.errors import ConfigError
from vadpipe.extractors.registry import get_backbone
from vadpipe.extractors.weights import loaded_weights_sha256
from vadpipe.manifests.atomic import ensure_writable_dir, folder_lock
from vadpipe.manifests.features import MANIFEST_NAME, FeatureRow, read_manifest
from vadpipe.manifests.runs import RunRecord, new_run_path, utc_now
from vadpipe.pipeline.device import resolve_device
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.decode import check_backend, decord_header_reason
from vadpipe.pipeline.extract.engines import is_distributed, run_engine
from vadpipe.pipeline.extract.model import RANDOM_WEIGHTS_TAG, FeatureModel
from vadpipe.pipeline.extract.sources import VideoJob
from vadpipe.pipeline.extract.writer import (
    ExtractSummary,
    OnVideo,
    RunContext,
    damage,
    escape_reason,
    output_names,
    output_path,
    remove_leftovers,
)

__all__ = ["extract"]


def extract(
    jobs: list[VideoJob],
    out_dir: str | os.PathLike,
    config: ExtractConfig = ExtractConfig(),
    *,
    force: bool = False,
    progress: bool = True,
    on_video: OnVideo | None = None,
) -> ExtractSummary:
    """Extract features of ``jobs`` into ``out_dir`` and record them in ``features.csv``.

    Args:
        jobs: videos to process (see :func:`vadpipe.pipeline.extract.sources.discover`).
        out_dir: output folder; holds the feature files, ``features.csv`` and one
            ``extract-<time>.json`` per run with the full configuration.
        config: extraction settings. ``config.devices`` with more than one entry runs one
            worker process per device (:mod:`vadpipe.pipeline.extract.engines.multi`); ``config.engine ==
            "ray"`` runs the job on Ray (:mod:`vadpipe.pipeline.extract.engines.ray`); see
            :func:`vadpipe.pipeline.extract.engines.run_engine`.
        force: recompute videos that an earlier run already finished.
        progress: show a progress bar on stderr.
        on_video: ``on_video(row, features)`` for every video this run finishes, once its row
            is in ``features.csv``; ``features`` is the array just written (``None`` for a
            failed video, or one a multi-device worker wrote). See
            :class:`~vadpipe.pipeline.extract.writer.RunContext`.

    Returns:
        An :class:`ExtractSummary`; its ``exit_code`` is 1 when any video failed.

    Raises:
        WeightsNotFoundError: the backbone's weights are not installed.
        ConfigError: invalid settings or device; another run is writing to ``out_dir``
            (:func:`~vadpipe.manifests.atomic.folder_lock`).
    """
    t0 = time.time()
    root = ensure_writable_dir(out_dir)  # before any work: a clear error, not a traceback
    with folder_lock(root, "vadpipe extract"):  # one run per output folder at a time
        return _extract(jobs, root, config, force=force, progress=progress, on_video=on_video, t0=t0)


def _extract(jobs: list[VideoJob], root: Path, config: ExtractConfig, *, force: bool, progress: bool,
             on_video: OnVideo | None, t0: float) -> ExtractSummary:
    spec = get_backbone(config.backbone)
    if spec.nodes > 1 and config.crops != 1:
        raise ConfigError(f"backbone {spec.name!r} yields {spec.nodes} patch nodes per clip from one view; use --crops 1")
    distributed = is_distributed(config)
    if config.engine == "local":  # Ray decodes on the cluster's nodes, which may differ from this one
        check_backend(config.decoder)
    config = config.with_preset(spec.preset)
    # Distributed engines build their models in their workers, which check that they loaded
    # the file whose sha256 the run records; the driver reads it from the weights entry.
    if distributed:
        model = None
        weights_sha256 = RANDOM_WEIGHTS_TAG if config.random_weights else loaded_weights_sha256(spec.weights)
        device = None
    else:
        device = resolve_device(config.device)
        model = FeatureModel(spec, config, device)
        weights_sha256 = model.weights_sha256
    config_hash = config.feature_hash(weights_sha256)
    older_hash = config.hash_before_decoder(weights_sha256)
    manifest = root / MANIFEST_NAME
    remove_leftovers(root)

    rows: dict[str, FeatureRow] = {}
    if manifest.exists():
        rows = {r.video: r for r in read_manifest(manifest)}
    summary = ExtractSummary(manifest=str(manifest))
    todo: list[VideoJob] = []
    refused: list[FeatureRow] = []
    restamped = False
    for job in jobs:
        outside = escape_reason(root, output_names(output_path(job, config, spec), config.layout, config.crops))
        if outside:  # before anything is decoded or written
            refused.append(FeatureRow(video=job.path, backbone=spec.name, layout=config.layout, config_hash=config_hash,
                                      status="failed", error=f"ConfigError: {job.path}: {outside}"))
            continue
        old = rows.get(job.path)
        if not force and old is not None and old.status == "ok" and old.config_hash in (config_hash, older_hash):
            stamp = old.file_stamp
            # never trust a file made by another decoder, or one that is gone, cut short, reshaped or rewritten
            why = _decoder_doubt(old, config.decoder, config_hash) or damage(old, root)
            if not why:
                summary.skipped += 1
                restamped |= old.file_stamp != stamp or old.config_hash != config_hash
                old.config_hash = config_hash
                continue
            summary.redone.append((job.path, why))
        todo.append(job)
        rows[job.path] = FeatureRow(video=job.path, backbone=spec.name, status="skipped",
                                    error="not processed yet (run interrupted)")

    run_record = RunRecord(
        vadpipe_version=__version__, started=utc_now(), config=config.to_dict(), config_hash=config_hash,
        weights_sha256=weights_sha256,
        weights={"name": spec.weights.name, "source": spec.weights.source, "license": spec.weights.license},
        device=str(device) if model is not None else ",".join(config.devices) or config.device,
        engine=config.engine, torch=torch.__version__, inputs=len(jobs), to_process=len(todo),
    )
    run_file = new_run_path(root)
    run_record.write(run_file)

    ctx = RunContext(root=root, config=config, spec=spec, config_hash=config_hash, weights_sha256=weights_sha256,
                     rows=rows, manifest=manifest, summary=summary, on_video=on_video)
    for row in refused:
        ctx.record(row)
    if todo or restamped:
        ctx.write()
    if todo:
        try:
            run_engine(ctx, todo, model, progress=progress)
        finally:
            ctx.write()
    summary.seconds = time.time() - t0
    run_record.finish(ok=summary.ok, failed=summary.failed, skipped=summary.skipped, clips=summary.clips,
                      seconds=summary.seconds, per_device=summary.per_device)
    run_record.write(run_file)
    return summary


def _decoder_doubt(row: FeatureRow, decoder: str, config_hash: str) -> str:
    """Why the ``ok`` row ``row``, whose hash is this run's or this run's before the decoder was
    hashed, was not decoded the way this run (``--decoder decoder``) decodes; ``""`` when it was.

    A row of this run's hash was written with this decoder setting. One of the older hash was
    written with any decoder (before it was hashed) or with ``auto``: it is kept only where its
    ``decoder`` column names a backend this setting uses (``pyav`` for ``pyav``; ``decord`` for
    ``decord``; the torchcodec backend or ``pyav`` for a torchcodec one). Under ``auto``, a row
    decord decoded is kept only while decord is still trusted with the file by its headers
    (:func:`~vadpipe.pipeline.extract.decode.decord_header_reason`: odd sizes with subsampled
    chroma, for one, were trusted before).
    """
    made_by = row.decoder.split(" ", 1)[0].rstrip(";")
    if decoder == "auto":
        if made_by != "decord":
            return ""
        reason = decord_header_reason(row.video)
        return f"decoded by decord, which auto no longer uses for this file ({reason})" if reason else ""
    if row.config_hash == config_hash:
        return ""
    allowed = {"pyav": ("pyav",), "decord": ("decord",)}.get(decoder, (decoder, "pyav"))
    if made_by not in allowed:
        return f"decoded by {made_by or 'an unrecorded decoder'}; this run decodes with --decoder {decoder}"
    return ""
