"""One safe reader and one strict check for every state dict vadpipe loads: backbones and heads.

Files are read with ``torch.load(path, map_location="cpu", weights_only=True)``: only
tensors and plain containers are unpickled, never arbitrary objects (a ``torch.save(model)``
pickle is refused with a message saying how to re-save it). ``.safetensors`` files are read
with safetensors, which has no code path at all.

Accepted layouts: a bare state dict ``{name: tensor}``; one nested under a key of
:data:`WRAPPER_KEYS` (``model_state`` is pytorchvideo's ``.pyth``, ``state_dict`` most
training frameworks); keys prefixed by :data:`STRIP_PREFIXES` (``nn.DataParallel``/DDP,
``torch.compile``).

:func:`check_state_dict` compares names and shapes with what a module (or a published
name -> shape table) expects and names every missing, unexpected or mis-shaped key in one
:class:`CheckpointMismatchError`. BatchNorm ``num_batches_tracked`` counters absent from a
file are filled with 0 (they do not affect inference), so the result loads with
``strict=True``.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from vadpipe.errors import WeightsIntegrityError, WeightsNotFoundError

__all__ = [
    "CheckpointMismatchError",
    "STRIP_PREFIXES",
    "WRAPPER_KEYS",
    "check_state_dict",
    "first_line",
    "is_tensor_dict",
    "load_checked",
    "read_state_dict",
    "unreadable_reason",
    "unwrap_state_dict",
]

#: Keys under which training scripts commonly nest the model's state dict, in the order tried.
WRAPPER_KEYS = ("state_dict", "model_state", "model_state_dict", "model", "net", "weights")
#: Key prefixes added by wrappers (DataParallel/DDP, torch.compile).
STRIP_PREFIXES = ("module.", "_orig_mod.")
#: Keys listed per kind of problem in a mismatch message.
MAX_LISTED = 20
#: BatchNorm counters that a file may lack.
_OPTIONAL_SUFFIX = "num_batches_tracked"


class CheckpointMismatchError(WeightsIntegrityError):
    """A state dict's keys or shapes do not match the module it is loaded into."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


def read_state_dict(path: str | Path, *, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Read a weight file safely and return its (unwrapped, unprefixed) state dict, on the CPU.

    Args:
        path: a torch checkpoint (``.pt``, ``.pth``, ``.pyth``, ``.pickle``, ...) or a
            ``.safetensors`` file.
        what: what the file should be, for error messages (``"C3D weights"``).

    Raises:
        WeightsNotFoundError: the file does not exist.
        WeightsIntegrityError: not a torch/safetensors file, pickles objects other than
            tensors and containers, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"{what} file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
            raise WeightsIntegrityError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # garbage bytes, a text file, a truncated pickle
            raise WeightsIntegrityError(f"{path}: not a readable PyTorch checkpoint ({unreadable_reason(path, e)})") from e
        raise WeightsIntegrityError(
            f"{path}: refused to unpickle (weights_only=True): it stores Python objects other than "
            f"tensors, e.g. a whole model saved with torch.save(model). Re-save it in a trusted "
            f"environment with torch.save(model.state_dict(), path). Detail: {first_line(e, 'Unsupported global')}"
        ) from e
    except Exception as e:  # noqa: BLE001 - zip/pickle corruption, not a torch file at all
        raise WeightsIntegrityError(f"{path}: not a readable PyTorch checkpoint ({unreadable_reason(path, e)})") from e
    return unwrap_state_dict(obj, source=str(path))


def unreadable_reason(path: Path, e: Exception) -> str:
    """Why ``torch.load`` could not read ``path``, in words (empty, damaged zip, not torch)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError:
        head = b""
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):
        return "a damaged or truncated zip archive"
    return f"not a file torch.save wrote ({type(e).__name__}: {first_line(e, 'Unsupported')[:160]})"


def first_line(e: BaseException, containing: str = "") -> str:
    """The first non-empty line of an exception's message (the first containing ``containing``, if any)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    picked = [line for line in lines if containing and containing in line]
    return (picked or lines or [type(e).__name__])[0]


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict in ``obj`` (bare or under :data:`WRAPPER_KEYS`) and strip
    :data:`STRIP_PREFIXES` from its keys. Keeps ``_metadata`` (module versions) in step."""
    if not isinstance(obj, Mapping):
        raise WeightsIntegrityError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    sd: Mapping[str, Any] = obj
    if not is_tensor_dict(sd):
        for key in WRAPPER_KEYS:
            inner = sd.get(key)
            if isinstance(inner, Mapping) and is_tensor_dict(inner):
                sd = inner
                break
        else:
            top = ", ".join(repr(k) for k in list(sd)[:10])
            raise WeightsIntegrityError(
                f"{source}: no state dict found: neither a dict of tensors nor one under "
                f"{', '.join(WRAPPER_KEYS)} (top-level keys: {top or 'none'})"
            )
    metadata = getattr(sd, "_metadata", None)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in sd.items():
        new_key = _strip(key)
        if new_key in out:
            raise WeightsIntegrityError(f"{source}: key {key!r} collides with another after removing wrapper prefixes")
        out[new_key] = value
    if metadata is not None:
        # the wrapper's own entry ("module") maps to "" and replaces the wrapper's: last wins
        out._metadata = OrderedDict((_strip(k), v) for k, v in metadata.items())  # type: ignore[attr-defined]
    return out


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
            elif key == prefix[:-1]:  # metadata entry of the wrapper module itself
                key, changed = "", True
    return key


def is_tensor_dict(d: Mapping[str, Any]) -> bool:
    """A non-empty mapping of names to tensors."""
    return len(d) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    expected: nn.Module | Mapping[str, tuple[int, ...]],
    *,
    source: str = "checkpoint",
    expected_format: str = "",
    problem: str = "",
) -> dict[str, torch.Tensor]:
    """Compare names and shapes with ``expected``; return the dict to load with ``strict=True``.

    Args:
        state_dict: what the file holds.
        expected: the module to load into, or a published name -> shape table.
        source: names the file in the message (``"C3D weights /x/c3d.pickle"``).
        expected_format: describes the file that is expected (who writes it, how), appended
            to the message.
        problem: starts the message instead of ``"<source> does not match <module>"``.

    Returns:
        ``state_dict`` with absent BatchNorm ``num_batches_tracked`` counters set to 0.

    Raises:
        CheckpointMismatchError: one message naming the missing, unexpected and mis-shaped
            keys (the first :data:`MAX_LISTED` of each, and how many there are).
    """
    if isinstance(expected, nn.Module):
        shapes = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
        what = type(expected).__name__
    else:
        shapes = {k: tuple(v) for k, v in expected.items()}
        what = "the published layout"
    sd: OrderedDict[str, torch.Tensor] = OrderedDict(state_dict)
    if hasattr(state_dict, "_metadata"):
        sd._metadata = state_dict._metadata  # type: ignore[attr-defined]
    for key in shapes:
        if key not in sd and key.endswith(_OPTIONAL_SUFFIX):
            sd[key] = torch.zeros((), dtype=torch.long)
    missing = [k for k in shapes if k not in sd]
    unexpected = [k for k in sd if k not in shapes]
    mismatched = [
        f"{k}: checkpoint {_shape(sd[k])} vs model {shapes[k]}" for k in shapes if k in sd and _shape(sd[k]) != shapes[k]
    ]
    if missing or unexpected or mismatched:
        parts = []
        groups = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        for title, items in groups:
            if items:
                shown = ", ".join(items[:MAX_LISTED])
                more = f" (+{len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
                parts.append(f"{len(items)} {title}: {shown}{more}")
        message = (problem or f"{source} does not match {what}") + ": " + "; ".join(parts)
        if expected_format:
            message += f". Expected: {expected_format}"
        raise CheckpointMismatchError(message, missing, unexpected, mismatched)
    return sd


def _shape(value: Any) -> tuple[int, ...] | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def load_checked(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "checkpoint",
    expected_format: str = "",
    problem: str = "",
) -> nn.Module:
    """:func:`check_state_dict` against ``model``, then ``model.load_state_dict(strict=True)``."""
    checked = check_state_dict(state_dict, model, source=source, expected_format=expected_format, problem=problem)
    model.load_state_dict(checked, strict=True)
    return model
