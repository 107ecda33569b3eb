"""Discovering the videos of a run: a folder (recursive), single files, or a CSV list."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vadpipe.errors import ConfigError
from vadpipe.manifests.datasets import VIDEO_EXTENSIONS  # file extensions treated as videos (case-insensitive)


@dataclass(frozen=True)
class VideoJob:
    """One input video.

    Attributes:
        path: absolute path of the video.
        rel_name: output name without extension, relative to the input root
            (``Abuse/Abuse001_x264`` for ``<root>/Abuse/Abuse001_x264.mp4``).
    """

    path: str
    rel_name: str


def discover(inputs: list[str | os.PathLike], extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> list[VideoJob]:
    """Expand inputs into video jobs, sorted by path.

    Each input is a folder (scanned recursively for ``extensions``; names are relative
    to that folder), a ``.csv`` list (column ``video`` or ``path``, else the first column;
    relative entries are resolved against the CSV's folder, names relative to it), or a
    single file of any extension (so that wrong-type files fail their own row instead of
    being silently ignored).

    Raises:
        ConfigError: an input does not exist, or two videos would write the same
            output name.
    """
    jobs: list[VideoJob] = []
    exts = tuple(e.lower() for e in extensions)
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            root = p.resolve()
            for f in sorted(root.rglob("*")):
                if f.is_file() and f.suffix.lower() in exts:
                    jobs.append(_job(f, root))
        elif p.suffix.lower() == ".csv" and p.is_file():
            jobs.extend(_from_csv(p))
        elif p.exists() or p.is_symlink():
            jobs.append(_job(p.resolve(), p.resolve().parent))
        else:
            raise ConfigError(f"input {str(item)!r} does not exist")
    by_name: dict[str, str] = {}
    unique: list[VideoJob] = []
    for job in jobs:
        if job.rel_name in by_name:
            if by_name[job.rel_name] == job.path:
                continue
            raise ConfigError(
                f"two inputs map to the same output name {job.rel_name!r}: "
                f"{by_name[job.rel_name]} and {job.path}; pass their common parent folder instead"
            )
        by_name[job.rel_name] = job.path
        unique.append(job)
    return sorted(unique, key=lambda j: j.path)


def _job(path: Path, root: Path) -> VideoJob:
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return VideoJob(path=str(path), rel_name=rel.with_suffix("").as_posix())


def _from_csv(csv_path: Path) -> list[VideoJob]:
    try:
        df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ConfigError(f"cannot read video list {csv_path}: {e}") from e
    column = next((c for c in ("video", "path") if c in df.columns), df.columns[0] if len(df.columns) else None)
    if column is None:
        raise ConfigError(f"video list {csv_path} has no columns")
    root = csv_path.resolve().parent
    jobs = []
    for entry in df[column]:
        if not entry.strip():
            continue
        p = Path(entry)
        p = p if p.is_absolute() else root / p
        jobs.append(_job(p.resolve() if p.exists() else p, root))
    return jobs
