"""Discovering the videos of a run: a folder (recursive), single files, or a CSV list."""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vadpipe.errors import ConfigError
from vadpipe.manifests.datasets import VIDEO_EXTENSIONS  # file extensions treated as videos (case-insensitive)

log = logging.getLogger(__name__)

#: Names shown per kind of skipped entry in the one-line discovery summary.
_SHOWN = 3


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

    Each input is a folder (scanned recursively for ``extensions``, following symbolic links
    to folders, each real folder once; names are relative to that folder, see :func:`_scan`),
    a ``.csv`` list (column ``video`` or ``path``, else the first column;
    relative entries are resolved against the CSV's folder, names relative to it), or a
    single file of any extension (so that wrong-type files fail their own row instead of
    being silently ignored).

    What a folder scan skips (dangling links, FIFOs and other non-regular files with a video
    extension, folders reached a second time or through a link loop, unreadable folders) is
    logged as one warning line for the whole call.

    Raises:
        ConfigError: an input does not exist, or two videos would write the same
            output name.
    """
    jobs: list[VideoJob] = []
    exts = tuple(e.lower() for e in extensions)
    skipped: dict[str, list[str]] = {}
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            jobs.extend(_scan(p.resolve(), exts, skipped))
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
    if skipped:
        log.warning("%s", skip_summary(skipped))
    return sorted(unique, key=lambda j: j.path)


def skip_summary(skipped: dict[str, list[str]]) -> str:
    """The one line that says what a folder scan skipped: ``{kind: [paths]}`` counted by kind,
    with the first few paths of each."""
    parts = []
    for kind, paths in skipped.items():
        shown = ", ".join(paths[:_SHOWN]) + (", ..." if len(paths) > _SHOWN else "")
        parts.append(f"{len(paths)} {kind} ({shown})")
    n = sum(map(len, skipped.values()))
    return f"folder scan skipped {n} {'entry' if n == 1 else 'entries'}: " + "; ".join(parts)


def _scan(root: Path, exts: tuple[str, ...], skipped: dict[str, list[str]]) -> list[VideoJob]:
    """The videos under the folder ``root`` (resolved), recording what is skipped in ``skipped``.

    Symbolic links to folders are followed, each real folder (``os.path.realpath``) scanned
    once: the folders reached without a link first, so a link to a folder that is also in the
    tree does not rename its videos; a link back to a folder being scanned (a loop) or to one
    scanned already is skipped. Names of videos found through a link are relative to ``root``
    through the link (``<root>/cams -> /mnt/cams`` gives ``cams/...``).
    """
    jobs: list[VideoJob] = []
    seen: set[str] = set()
    plain, linked = [root], []  # folders to scan; linked ones wait until no plain one is left
    while plain or linked:
        folder = plain.pop() if plain else linked.pop(0)
        real = os.path.realpath(folder)
        if real in seen:
            inside = os.path.realpath(folder.parent)
            kind = "symlink loop(s)" if inside == real or inside.startswith(real + os.sep) else "folder(s) seen twice"
            skipped.setdefault(kind, []).append(str(folder))
            continue
        seen.add(real)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.setdefault("unreadable folder(s)", []).append(f"{folder}: {e.strerror or e}")
            continue
        subfolders: list[Path] = []
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir, is_link = entry.is_dir(), entry.is_symlink()
                st = None if is_dir else entry.stat()
            except OSError:  # a dangling link (or one that became unreadable)
                skipped.setdefault("dangling link(s)", []).append(str(path))
                continue
            if is_dir:
                (linked if is_link else subfolders).append(path)
            elif path.suffix.lower() in exts:
                if stat.S_ISREG(st.st_mode):
                    jobs.append(_job(path, root))
                else:
                    skipped.setdefault("non-regular file(s)", []).append(f"{path} ({_kind(st.st_mode)})")
        plain.extend(reversed(subfolders))
    return jobs


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file"


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
