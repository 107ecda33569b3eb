"""The features manifest, ``features.csv``: one row per input video of stage one.

Schema (column, type, meaning):

=================  ======  =============================================================
video              str     absolute path of the input video
feature_path       str     output file, relative to the manifest's folder and inside it
                           (never ``../``); for the ``per-crop`` layout a pattern whose last
                           ``{k}`` stands for the crop index (:func:`crop_file`)
backbone           str     registered backbone name (``i3d``)
weights_sha256     str     sha256 of the weight file the backbone ran with; ``random``
                           when ``--random-weights`` was given
n_frames           int     frames decoded (after ``--fps`` resampling)
fps                float   frame rate of the decoded frames
n_clips            int     clips written (rows of the feature array)
crops              int     crops per clip (1, 5 or 10); for patch-node backbones
                           (ResNet-50 TRN) the nodes per clip (14)
dim                int     feature size D
layout             str     ``single`` ([n_clips, crops, D]) or ``per-crop`` ([n_clips, D] each)
decoder            str     backend that decoded the video (``decord`` or ``pyav``), plus
                           ``(fallback: reason)`` when ``auto`` could not use decord, plus
                           ``; notes`` on what else was done to the frames (frames scaled
                           where the size changes mid-stream)
config_hash        str     hash of the extraction settings that shape the features
status             str     ``ok``, ``failed`` or ``skipped`` (not reached: run interrupted)
error              str     why the row failed, empty otherwise
seconds            float   wall time spent on this video
sha256             str     sha256 of the feature file as written (``;``-joined in crop
                           order for ``per-crop``); empty for rows of older manifests
file_stamp         str     ``<size>:<mtime_ns>`` of each feature file when written (same
                           joining): a re-run re-hashes only files whose stamp changed
rotation           int     degrees (counterclockwise) the frames were turned to show them
                           upright, as the container's display matrix asks; 0: none
recipe             str     the named feature recipe (``--preset``, ``docs/recipes.md``), plus
                           ``(overrides: setting=value, ...)`` when flags replaced some of
                           its settings; empty: none
=================  ======  =============================================================

The file is always rewritten whole and atomically, so it is never half-written. The last
four columns are optional when reading (manifests written before they existed).
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd

from vadpipe.errors import ManifestError
from vadpipe.manifests.atomic import atomic_write_text
from vadpipe.manifests.tables import read_string_csv

MANIFEST_NAME = "features.csv"
STATUSES = ("ok", "failed", "skipped")
LAYOUTS = ("single", "per-crop")
#: The crop index placeholder of a per-crop feature path (``clip__{k}.npy``).
CROP_TOKEN = "{k}"


def crop_file(pattern: str, k: int) -> str:
    """The file of crop ``k`` of a per-crop ``pattern``: its last ``{k}`` replaced by ``k``.

    Nothing else in the path is interpreted (never ``str.format``), so a video named
    ``brace{1}.mp4``, ``100%.mp4`` or even ``a{k}.mp4`` (``a{k}__{k}.npy`` → ``a{k}__3.npy``)
    keeps its name. A path without ``{k}`` is returned as it is.
    """
    i = pattern.rfind(CROP_TOKEN)
    return pattern if i < 0 else f"{pattern[:i]}{k}{pattern[i + len(CROP_TOKEN):]}"


@dataclass
class FeatureRow:
    """One row of ``features.csv`` (see the module docstring for the schema)."""

    video: str
    feature_path: str = ""
    backbone: str = ""
    weights_sha256: str = ""
    n_frames: int = 0
    fps: float = 0.0
    n_clips: int = 0
    crops: int = 0
    dim: int = 0
    layout: str = "single"
    decoder: str = ""
    config_hash: str = ""
    status: str = "skipped"
    error: str = ""
    seconds: float = 0.0
    sha256: str = ""
    file_stamp: str = ""
    rotation: int = 0
    recipe: str = ""

    def feature_files(self, root: str | os.PathLike) -> list[Path]:
        """Absolute paths of this row's feature files (one, or one per crop)."""
        base = Path(root)
        if self.layout == "per-crop":
            return [base / crop_file(self.feature_path, k) for k in range(self.crops)]
        return [base / self.feature_path]


COLUMNS = tuple(f.name for f in fields(FeatureRow))
#: Columns added after the first release: read as ``""`` when a manifest lacks them.
OPTIONAL_COLUMNS = ("sha256", "file_stamp", "rotation", "recipe")
#: What to tell a user whose ``features.csv`` cannot be trusted.
_DAMAGED_HINT = ("restore the file, or move it away to recompute every video of this folder "
                 "(its feature files are then rewritten)")
_INT_COLUMNS = ("n_frames", "n_clips", "crops", "dim", "rotation")
_FLOAT_COLUMNS = ("fps", "seconds")


def read_manifest(path: str | os.PathLike) -> list[FeatureRow]:
    """Read and validate a ``features.csv``.

    Raises:
        ManifestError: missing columns, unknown status/layout values, bad numbers or
            duplicate videos, with the line that is wrong.
    """
    path = Path(path)
    df = read_string_csv(path, "manifest")
    for c in OPTIONAL_COLUMNS:
        if c not in df.columns:
            df[c] = ""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"{path} is not a vadpipe features manifest: missing column(s) {', '.join(missing)}; {_DAMAGED_HINT}"
        )
    short = _short_line(path)
    if short is not None:
        line, n, want = short
        raise ManifestError(f"{path}:{line}: {n} of {want} fields (the file is cut short or was edited); "
                            f"{_DAMAGED_HINT}")
    rows: list[FeatureRow] = []
    seen: set[str] = set()
    for i, rec in enumerate(df[list(COLUMNS)].to_dict("records")):
        line = i + 2  # header is line 1
        try:
            for c in _INT_COLUMNS:
                rec[c] = int(rec[c] or 0)
            for c in _FLOAT_COLUMNS:
                rec[c] = float(rec[c] or 0.0)
        except ValueError as e:
            raise ManifestError(f"{path}:{line}: bad number ({e})") from e
        row = FeatureRow(**rec)
        if row.status not in STATUSES:
            raise ManifestError(f"{path}:{line}: status {row.status!r} not in {STATUSES}")
        if row.layout not in LAYOUTS:
            raise ManifestError(f"{path}:{line}: layout {row.layout!r} not in {LAYOUTS}")
        if row.video in seen:
            raise ManifestError(f"{path}:{line}: video {row.video!r} listed twice")
        seen.add(row.video)
        rows.append(row)
    return rows


def _short_line(path: Path) -> tuple[int, int, int] | None:
    """``(line, fields, header fields)`` of the first data line with fewer fields than the
    header (pandas pads such a line with empty cells, which would hide a cut-off file)."""
    with open(path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        for row in reader:
            if row and len(row) < len(header):
                return reader.line_num, len(row), len(header)
    return None


def write_manifest(path: str | os.PathLike, rows: list[FeatureRow]) -> None:
    """Write ``rows`` to ``path`` atomically (temp file + rename), sorted by video."""
    df = pd.DataFrame([asdict(r) for r in sorted(rows, key=lambda r: r.video)], columns=COLUMNS)
    atomic_write_text(path, df.to_csv(index=False))
