"""Where features came from: the extraction settings behind a set of feature files.

``vadpipe extract`` writes, beside its feature files, ``features.csv`` (one row per video
with the run's ``config_hash``) and one ``extract-<time>.json`` per run with the full
:class:`~vadpipe.pipeline.extract.config.ExtractConfig`. Training records what it finds here in the
head's checkpoint, so that ``vadpipe score`` can re-create exactly the same features from raw
video, and refuses to guess when it cannot.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable

from vadpipe.errors import ConfigError, ManifestError
from vadpipe.manifests.features import MANIFEST_NAME, read_manifest
from vadpipe.manifests.runs import RUN_RECORD_GLOB, RunRecord

log = logging.getLogger(__name__)


def run_records(folder: str | os.PathLike) -> dict[str, RunRecord]:
    """``{config_hash: run record}`` of the ``extract-*.json`` files in ``folder`` (the
    latest run of each hash wins; unreadable records are skipped with a log line)."""
    out: dict[str, RunRecord] = {}
    for path in sorted(Path(folder).glob(RUN_RECORD_GLOB)):  # names sort by time
        try:
            record = RunRecord.read(path)
        except ManifestError as e:
            log.warning("ignoring %s", e)
            continue
        out[record.config_hash] = record
    return out


def extraction_of(feature_files: Iterable[str | os.PathLike]) -> dict[str, Any] | None:
    """The one extraction that made all of ``feature_files``, or ``None`` when unknown.

    Each file is looked up in the ``features.csv`` of its folder (or of a parent folder, up
    to three levels, for nested inputs); its row's ``config_hash`` leads to that folder's
    run record.

    Returns:
        ``{"config": ExtractConfig dict, "config_hash": str, "weights_sha256": str,
        "backbone": str}``, or ``None`` when any file is not in a vadpipe features folder.

    Raises:
        ConfigError: the files come from extractions with different settings (a head
            trained on such a mix has no single recipe to score new videos with).
    """
    manifests: dict[Path, dict[str, Any] | None] = {}
    found: dict[str, RunRecord] = {}
    for f in feature_files:
        path = Path(f).resolve()
        hit = None
        for folder in list(path.parents)[:4]:
            if folder not in manifests:
                manifests[folder] = _load_folder(folder)
            entry = manifests[folder]
            if entry:
                hit = entry["by_file"].get(str(path))
                if hit is not None:
                    hit = (folder, hit)
                    break
        if hit is None:
            return None
        folder, config_hash = hit
        record = manifests[folder]["records"].get(config_hash)
        if record is None:
            return None
        found[config_hash] = record
    if not found:
        return None
    if len(found) > 1:
        raise ConfigError(
            f"the feature files come from {len(found)} extractions with different settings "
            f"(config hashes {', '.join(sorted(found))}); train on features of one recipe"
        )
    (config_hash, record), = found.items()
    return {"config": record.config, "config_hash": config_hash, "weights_sha256": record.weights_sha256,
            "backbone": record.backbone}


def _load_folder(folder: Path) -> dict[str, Any] | None:
    manifest = folder / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        rows = read_manifest(manifest)
    except ManifestError as e:
        log.warning("ignoring %s: %s", manifest, e)
        return None
    by_file: dict[str, str] = {}
    for row in rows:
        if row.status == "ok":
            for f in row.feature_files(folder):
                by_file[str(Path(f).resolve())] = row.config_hash
    return {"by_file": by_file, "records": run_records(folder)}
