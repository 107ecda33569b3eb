"""Writing side of extraction: one video's features to an atomic ``.npy`` and its manifest row.

The driver owns a :class:`RunContext` and is the only writer of ``features.csv``; workers
of other processes get its picklable :class:`WriteContext` and return rows to the driver.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
import torch

from vadpipe.errors import ConfigError
from vadpipe.extractors.registry import BackboneSpec, get_backbone
from vadpipe.manifests.atomic import TMP_MARKER, atomic_save_npy, file_sha256, file_stamp
from vadpipe.manifests.features import FeatureRow, crop_file, write_manifest
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.sources import VideoJob
from vadpipe.pipeline.extract.stream import VideoDone, lost_clips_reason

#: ``on_video(row, features)``: see :class:`RunContext`.
OnVideo = Callable[[FeatureRow, "np.ndarray | None"], None]

__all__ = ["ExtractSummary", "OnVideo", "RunContext", "WriteContext", "finish_video", "output_path",
           "output_names", "escape_reason", "damage", "remove_leftovers", "backbone_by_name", "video_array",
           "recipe_label"]

#: Values per slice when resume scans a stored feature file for NaN/inf (bounded memory).
_FINITE_SLICE = 1 << 22


@dataclass
class ExtractSummary:
    """What a run did. ``exit_code`` is non-zero when any video failed.

    ``per_device`` is filled by the multi-device engine: for each worker (by label, e.g.
    ``cuda:1``) its ``videos``, ``clips``, ``startup_s`` (process start to model ready),
    ``active_s`` (model ready to the end of its work, or its death) and, when it stopped
    abnormally, ``exit`` (its exit code or error).

    ``redone`` lists ``(video, reason)`` for each video an earlier run had finished whose
    feature files were damaged (see :func:`damage`), or were decoded otherwise than this run
    decodes, and so were computed again.
    """

    ok: int = 0
    failed: int = 0
    skipped: int = 0
    clips: int = 0
    seconds: float = 0.0
    manifest: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)
    redone: list[tuple[str, str]] = field(default_factory=list)
    per_device: dict[str, dict] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def line(self) -> str:
        """One-line summary for the terminal."""
        rate = self.clips / self.seconds if self.seconds > 0 else 0.0
        again = f" ({len(self.redone)} again: damaged outputs or another decoder)" if self.redone else ""
        return (
            f"{self.ok} extracted{again}, {self.skipped} already done, {self.failed} failed; "
            f"{self.clips} clips in {self.seconds:.1f} s ({rate:.1f} clips/s); manifest: {self.manifest}"
        )


def recipe_label(recipe: str | None, overrides: tuple[str, ...] = ()) -> str:
    """The manifest's ``recipe`` cell: the name, plus `` (overrides: a=1, b=2)`` when flags replaced
    some of its settings; ``""`` without a recipe."""
    if not recipe:
        return ""
    return f"{recipe} (overrides: {', '.join(overrides)})" if overrides else recipe


def output_path(job: VideoJob, config: ExtractConfig, spec: BackboneSpec) -> str:
    """Manifest ``feature_path`` (relative to the output folder) for ``job``."""
    if config.layout == "per-crop":
        return f"{job.rel_name}__{{k}}.npy"
    return f"{job.rel_name}_{spec.file_suffix or spec.name}.npy"


def output_names(feature_path: str, layout: str, crops: int) -> list[str]:
    """The files of a ``feature_path`` (relative names): itself, or one per crop
    (:func:`~vadpipe.manifests.features.crop_file`, never ``str.format``)."""
    return [crop_file(feature_path, k) for k in range(crops)] if layout == "per-crop" else [feature_path]


def escape_reason(root: Path, names: list[str]) -> str:
    """Why writing ``names`` (relative to the output folder ``root``) would put a file outside
    it; ``""`` when every one lies inside.

    A name must be relative, without a ``..`` part, and still lie inside ``root`` once
    resolved (symbolic links in the output folder followed), so that nothing is written
    elsewhere and the manifest's ``feature_path`` never starts with ``../``.
    """
    base = root.resolve()
    for name in names:
        pure = PurePosixPath(name)
        if not name or pure.is_absolute() or ".." in pure.parts:
            return (f"its output name {name!r} would leave the output folder {base}; give the video a name "
                    "inside the list's folder, or pass its folder as an input")
        target = (base / name).resolve()
        if target == base or not target.is_relative_to(base):
            return (f"its output {name!r} resolves to {target}, outside the output folder {base} "
                    "(a symbolic link inside the output folder?); remove the link or write elsewhere")
    return ""


def _non_finite(arr: np.ndarray) -> int:
    """NaN and inf values in ``arr`` (memory-mapped: read in slices, bounded memory)."""
    flat = arr.reshape(-1)
    return sum(int(np.count_nonzero(~np.isfinite(flat[i:i + _FINITE_SLICE])))
               for i in range(0, flat.size, _FINITE_SLICE))


def damage(row: FeatureRow, root: Path) -> str:
    """Why the feature files of the ``ok`` row ``row`` cannot be trusted; ``""`` when intact.

    A file must lie inside ``root`` (:func:`escape_reason`), exist, parse as ``.npy`` with its
    full data present, hold float32 of the recorded shape and, when the row records a
    ``sha256`` (every row written since that column exists), still have those bytes. Its data
    is read only for a file whose ``<size>:<mtime_ns>`` stamp differs from the recorded one
    (rewritten, or copied to another folder), or that has no recorded hash (older rows): it
    must then hold no NaN/inf (the writer never writes them) and match its hash. When the
    bytes still match, ``row.file_stamp`` is updated so the next run does not read it again.
    A file rewritten in place with its size and mtime put back is not read: ``--force``.
    """
    want = (row.n_clips, row.crops, row.dim) if row.layout == "single" else (row.n_clips, row.dim)
    files = row.feature_files(root)
    hashes = row.sha256.split(";") if row.sha256 else []
    stamps = row.file_stamp.split(";") if row.file_stamp else []
    if hashes and len(hashes) != len(files):
        return f"the manifest records {len(hashes)} sha256 value(s) for {len(files)} feature file(s)"
    outside = escape_reason(root, output_names(row.feature_path, row.layout, row.crops))
    if outside:
        return f"the manifest's feature path is not inside the folder: {outside}"
    new_stamps: list[str] = []
    for i, f in enumerate(files):
        name = f.relative_to(root) if f.is_relative_to(root) else f
        if not f.is_file():
            return f"feature file {name} is missing"
        try:
            arr = np.load(f, mmap_mode="r", allow_pickle=False)  # reads the header; maps the data
        except (OSError, ValueError) as e:
            return f"feature file {name} is unreadable or cut short ({e})"
        if arr.shape != want or arr.dtype != np.float32:
            return f"feature file {name} holds {arr.dtype}{list(arr.shape)}, the manifest says float32{list(want)}"
        stamp = file_stamp(f)
        new_stamps.append(stamp)
        read = not hashes or i >= len(stamps) or stamps[i] != stamp
        bad = _non_finite(arr) if read else 0
        del arr
        if bad:
            return f"feature file {name} holds {bad} NaN/inf value(s)"
        if hashes and read and file_sha256(f) != hashes[i]:
            return f"feature file {name} changed since it was written (its sha256 differs from the manifest's)"
    if hashes:
        row.file_stamp = ";".join(new_stamps)
    return ""


def remove_leftovers(root: Path) -> None:
    """Delete temporary files a killed run left behind (never complete outputs)."""
    if root.is_dir():
        for f in root.rglob(f"*{TMP_MARKER}*"):
            with contextlib.suppress(OSError):
                f.unlink()


@dataclass
class RunContext:
    """What every engine needs to turn finished videos into files and manifest rows.

    Only the process that owns the context writes ``features.csv``: engines send each
    finished video's row to :meth:`record` (in the driver), so rows are never lost or
    duplicated however many workers produce them.

    ``on_video(row, features)``, when set, is called by :meth:`record` once the row is in
    ``features.csv``: ``features`` is the float32 ``[n_clips, crops, D]`` array just written
    when the video was finished in this process (local and Ray engines), ``None`` for a
    failed video or one a worker process wrote (multi-device engine), whose file is then
    the copy to read. This is how ``vadpipe score`` scores what stage one wrote without
    reading it back.
    """

    root: Path
    config: ExtractConfig
    spec: BackboneSpec
    config_hash: str
    weights_sha256: str
    rows: dict[str, FeatureRow]
    manifest: Path
    summary: ExtractSummary
    on_video: OnVideo | None = None

    def record(self, row: FeatureRow, features: np.ndarray | None = None) -> None:
        """Store ``row`` (keyed by its video), count it, rewrite the manifest atomically, then
        hand the row and its ``features`` (see the class docstring) to ``on_video``."""
        self.rows[row.video] = row
        if row.status == "ok":
            self.summary.ok += 1
        else:
            self.summary.failed += 1
            self.summary.failures.append((row.video, row.error))
        self.write()
        if self.on_video is not None:
            self.on_video(row, features if row.status == "ok" else None)

    def write(self) -> None:
        """Rewrite ``features.csv`` from the rows held now (atomic)."""
        write_manifest(self.manifest, list(self.rows.values()))

    def writer(self) -> WriteContext:
        """The picklable part of this context, for :func:`finish_video` in worker processes."""
        return WriteContext(root=self.root, config=self.config, spec=self.spec,
                            config_hash=self.config_hash, weights_sha256=self.weights_sha256)


@dataclass
class WriteContext:
    """The part of a :class:`RunContext` that :func:`finish_video` needs, and that a worker
    process can receive: where and how to write one video's features.

    It pickles the backbone by name (with the module that registered it, so plugin
    backbones such as the tests' are registered again in a spawned process), never the
    builder itself.
    """

    root: Path
    config: ExtractConfig
    spec: BackboneSpec
    config_hash: str
    weights_sha256: str

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        spec = state.pop("spec")
        state["spec_ref"] = (spec.name, getattr(spec.build, "__module__", None))
        return state

    def __setstate__(self, state: dict) -> None:
        state = dict(state)
        name, module = state.pop("spec_ref")
        self.__dict__.update(state)
        self.spec = backbone_by_name(name, module)


def backbone_by_name(name: str, module: str | None = None) -> BackboneSpec:
    """The registered backbone ``name``, importing ``module`` first when it is not loaded yet
    (the module that registers it, for backbones outside vadpipe).

    Raises:
        ConfigError: ``module`` cannot be imported or ``name`` is not registered.
    """
    if module and module not in sys.modules and module != "__main__":
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"backbone {name!r} is registered by {module!r}, which cannot be imported: {e}") from e
    return get_backbone(name)


def video_array(parts: list[tuple[int, torch.Tensor | np.ndarray]]) -> np.ndarray:
    """One video's features ``[n_clips, crops or nodes, D]`` (float32, host) from its ``parts``:
    the buffer itself for :func:`~vadpipe.pipeline.extract.model.finished_videos`'s single part
    (no copy), else the chunks concatenated in clip order."""
    if len(parts) == 1 and parts[0][0] == 0 and isinstance(parts[0][1], np.ndarray):
        return parts[0][1]
    ordered = sorted(parts, key=lambda p: p[0])
    return torch.cat([torch.as_tensor(p[1]) for p in ordered]).cpu().numpy()


def _contiguous(parts: list[tuple[int, torch.Tensor | np.ndarray]]) -> bool:
    """Whether the ``(start, features)`` chunks ``parts`` cover clips ``0 .. n - 1`` each once."""
    end = 0
    for start, feats in sorted(parts, key=lambda p: p[0]):
        if start != end:
            return False
        end += int(feats.shape[0])
    return True


def finish_video(ctx: RunContext | WriteContext, job: VideoJob, done: VideoDone,
                 parts: list[tuple[int, torch.Tensor]]) -> FeatureRow:
    """Write one video's features (atomically) and return its manifest row.

    Args:
        ctx: the run, or its picklable :class:`WriteContext` (in a worker process).
        job: the video.
        done: the end of its stream (frames, fps, decoder, error).
        parts: ``(first clip index, features [n, crops, D])`` chunks in any order.

    The row is ``ok`` (and the file written) only when ``parts`` hold exactly the clips the
    decoder produced: ``done.n_clips``, which its frame count gives under the clip rule
    (:func:`~vadpipe.pipeline.extract.stream.lost_clips_reason`); else it fails with the reason.
    """
    config, spec = ctx.config, ctx.spec
    row = FeatureRow(
        video=job.path, backbone=spec.name, weights_sha256=ctx.weights_sha256,
        n_frames=done.n_frames, fps=round(done.fps, 6), crops=max(config.crops, spec.nodes),
        dim=spec.feature_dim, layout=config.layout, decoder=done.decoder, config_hash=ctx.config_hash,
        rotation=done.rotation, recipe=recipe_label(config.recipe, config.recipe_overrides),
    )
    # ok only with every clip the decoder produced: a batch lost on the way fails the video (never a
    # row with part of its clips that a resume would trust)
    error = done.error or lost_clips_reason(done, sum(int(f.shape[0]) for _, f in parts), config.clip,
                                            gap=not _contiguous(parts))
    if error:
        row.status, row.error = "failed", error
        row.seconds = round(time.time() - done.started, 3)
        return row
    feats = video_array(parts)  # float32 [n_clips, crops or nodes, D]
    path = output_path(job, config, spec)
    names = output_names(path, config.layout, config.crops)
    outside = escape_reason(ctx.root, names)  # checked here too: nothing is ever written outside the folder
    bad = 0 if outside else int(np.count_nonzero(~np.isfinite(feats)))
    if outside or bad:
        row.status = "failed"
        row.error = (f"ConfigError: {job.path}: {outside}" if outside else
                     f"the backbone gave {bad} NaN/inf value(s) for this video; nothing was written "
                     f"(--precision {config.precision}: try fp32)")
        row.seconds = round(time.time() - done.started, 3)
        return row
    row.n_clips = feats.shape[0]
    row.feature_path = path
    if config.layout == "per-crop":
        written = {name: np.ascontiguousarray(feats[:, k]) for k, name in enumerate(names)}
    else:
        written = {path: feats}
    hashes = [atomic_save_npy(ctx.root / name, arr) for name, arr in written.items()]
    row.sha256 = ";".join(hashes)
    row.file_stamp = ";".join(file_stamp(ctx.root / name) for name in written)
    row.status = "ok"
    row.seconds = round(time.time() - done.started, 3)
    return row
