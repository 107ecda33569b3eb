"""Import checkpoints written by the heads' official code into vadpipe's head modules.

Files are read with ``torch.load(path, map_location="cpu", weights_only=True)``: only
tensors and plain containers are unpickled, never arbitrary objects. A checkpoint that
pickles a whole model (``torch.save(model)``) is refused with a message saying how to
re-save it as a state dict.

Accepted layouts (the official repositories save bare state dicts; the rest are common
wrappers):

* a bare state dict ``{name: tensor}`` (RTFM ``main.py``: ``torch.save(model.state_dict(),
  './ckpt/' + model_name + 'final.pkl')``);
* a dict wrapping one under ``state_dict``, ``model_state_dict``, ``model``, ``net`` or
  ``weights`` (training frameworks, other ports);
* keys prefixed by ``module.`` (``nn.DataParallel``/DDP) or ``_orig_mod.`` (``torch.compile``).

Keys are then checked against the target module: every missing, unexpected or mis-shaped
key is named in a :class:`CheckpointMismatchError`, with a description of the file the
head expects. BatchNorm ``num_batches_tracked`` buffers absent from pre-0.4.1 files are
filled with 0 (they do not affect inference).

Heads register their expected format with :func:`register_checkpoint_format` (RTFM and
Sultani are registered here; other heads may add theirs from their own module).
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from vadpipe.errors import ConfigError, WeightsIntegrityError, WeightsNotFoundError

__all__ = [
    "CheckpointFormat",
    "CheckpointMismatchError",
    "WRAPPER_KEYS",
    "STRIP_PREFIXES",
    "check_state_dict",
    "load_official_state_dict",
    "read_state_dict",
    "register_checkpoint_format",
    "checkpoint_format",
    "unwrap_state_dict",
]

#: Keys under which training scripts commonly nest the model's state dict.
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
#: Key prefixes added by wrappers (DataParallel/DDP, torch.compile).
STRIP_PREFIXES = ("module.", "_orig_mod.")

_MAX_LISTED = 20


class CheckpointMismatchError(WeightsIntegrityError):
    """A checkpoint's keys or shapes do not match the head it is loaded into."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


@dataclass(frozen=True)
class CheckpointFormat:
    """What an official checkpoint of one head looks like.

    Attributes:
        head: head name (registry key).
        description: the file the head expects (who writes it, how, example keys), shown
            in error messages.
        key_map: optional renaming of keys after unwrapping (official name → vadpipe name).
    """

    head: str
    description: str
    key_map: Callable[[str], str] | None = None


_FORMATS: dict[str, CheckpointFormat] = {}


def register_checkpoint_format(fmt: CheckpointFormat) -> CheckpointFormat:
    """Register (or replace) the expected checkpoint format of ``fmt.head``."""
    _FORMATS[fmt.head] = fmt
    return fmt


def checkpoint_format(head: str) -> CheckpointFormat:
    """The registered format of ``head``; ``ConfigError`` names the known ones."""
    try:
        return _FORMATS[head]
    except KeyError:
        known = ", ".join(sorted(_FORMATS)) or "none"
        raise ConfigError(f"no official checkpoint format registered for head {head!r}; known: {known}") from None


register_checkpoint_format(
    CheckpointFormat(
        head="rtfm",
        description=(
            "a PyTorch state dict saved by the official RTFM code (github.com/tianyu0207/RTFM, "
            "main.py: torch.save(model.state_dict(), 'ckpt/<model_name>final.pkl'), e.g. "
            "ckpt/rtfm_final.pkl) with 47 keys such as 'Aggregate.conv_1.0.weight' [512, 2048, 3], "
            "'Aggregate.non_local.W.0.weight' [512, 256, 1], 'Aggregate.conv_5.2.running_var' [2048], "
            "'fc1.weight' [512, 2048], 'fc3.bias' [1]; the head's feature_dim must match the checkpoint "
            "(2048 for the published I3D checkpoints)"
        ),
    )
)
register_checkpoint_format(
    CheckpointFormat(
        head="sultani",
        description=(
            "a PyTorch state dict of the Sultani MIL regressor with keys 'fc1.weight' [512, in_dim], "
            "'fc1.bias', 'fc2.weight' [32, 512], 'fc2.bias', 'fc3.weight' [1, 32], 'fc3.bias' "
            "(vadpipe's SultaniHead, also the layout of the ekosman/AnomalyDetectionCVPR2018-Pytorch port); "
            "the original Keras weights (weights_L1L2.mat) must first be converted with "
            "vadpipe.heads.sultani.state_dict_from_keras_layers"
        ),
    )
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely and return its (unwrapped, unprefixed) state dict.

    Raises:
        WeightsNotFoundError: the file does not exist.
        WeightsIntegrityError: the file is not a torch checkpoint, pickles objects other
            than tensors/containers, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsIntegrityError(
            f"{path}: refused to unpickle (weights_only=True): it stores Python objects other than "
            f"tensors, e.g. a whole model saved with torch.save(model). Re-save it in a trusted "
            f"environment with torch.save(model.state_dict(), path). Detail: {str(e).splitlines()[0]}"
        ) from e
    except Exception as e:  # zip/pickle corruption, not a torch file at all
        raise WeightsIntegrityError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    return unwrap_state_dict(obj, source=str(path))


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict in ``obj`` (bare or under :data:`WRAPPER_KEYS`) and strip
    :data:`STRIP_PREFIXES` from its keys. Keeps ``_metadata`` (module versions) in step."""
    if not isinstance(obj, Mapping):
        raise WeightsIntegrityError(f"{source}: expected a dict of tensors, found {type(obj).__name__}")
    sd: Mapping[str, Any] = obj
    if not _is_tensor_dict(sd):
        for key in WRAPPER_KEYS:
            inner = sd.get(key)
            if isinstance(inner, Mapping) and _is_tensor_dict(inner):
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
            raise WeightsIntegrityError(
                f"{source}: key {key!r} collides with another after removing wrapper prefixes"
            )
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
                key, changed = key[len(prefix) :], True
            elif key == prefix[:-1]:  # metadata entry of the wrapper module itself
                key, changed = "", True
    return key


def _is_tensor_dict(d: Mapping[str, Any]) -> bool:
    return len(d) > 0 and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module, *, expected: str = "", source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """Compare keys and shapes with ``model.state_dict()``; return the dict to load.

    Missing BatchNorm ``num_batches_tracked`` entries are filled with zeros. Anything else
    missing, unexpected or of another shape raises :class:`CheckpointMismatchError`.
    """
    target = model.state_dict()
    sd = OrderedDict(state_dict)
    if hasattr(state_dict, "_metadata"):
        sd._metadata = state_dict._metadata  # type: ignore[attr-defined]
    for key, value in target.items():
        if key not in sd and key.endswith("num_batches_tracked"):
            sd[key] = torch.zeros_like(value)
    missing = [k for k in target if k not in sd]
    unexpected = [k for k in sd if k not in target]
    mismatched = [
        f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(target[k].shape)}"
        for k in target
        if k in sd and tuple(sd[k].shape) != tuple(target[k].shape)
    ]
    if missing or unexpected or mismatched:
        lines = [f"{source} does not match {type(model).__name__}:"]
        groups = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        for title, items in groups:
            if items:
                shown = ", ".join(items[:_MAX_LISTED])
                more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
                lines.append(f"  {len(items)} {title}: {shown}{more}")
        if expected:
            lines.append(f"  expected: {expected}")
        raise CheckpointMismatchError("\n".join(lines), missing, unexpected, mismatched)
    return sd


def load_official_state_dict(path: str | Path, head: str, model: nn.Module) -> nn.Module:
    """Load an official checkpoint of ``head`` into ``model`` (strict) and return ``model``.

    Args:
        path: checkpoint file (bare or wrapped state dict, see the module docstring).
        head: registered head name (``"rtfm"``, ``"sultani"``, ...), which selects the
            key mapping and the format description used in errors.
        model: the head module to fill, built with a config matching the checkpoint.

    Raises:
        ConfigError: no format registered for ``head``.
        WeightsNotFoundError, WeightsIntegrityError: unreadable file (see
            :func:`read_state_dict`).
        CheckpointMismatchError: keys or shapes differ; the message lists them.
    """
    fmt = checkpoint_format(head)
    sd = read_state_dict(path)
    if fmt.key_map is not None:  # renamed modules: the saved module versions no longer apply
        sd = OrderedDict((fmt.key_map(k), v) for k, v in sd.items())
    sd = check_state_dict(sd, model, expected=fmt.description, source=f"checkpoint {path} ({head})")
    model.load_state_dict(sd, strict=True)
    return model
