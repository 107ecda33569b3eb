"""Head checkpoints: official state dicts imported into vadpipe's heads, and vadpipe's own files.

Every file is read by the one safe reader of :mod:`vadpipe.loading`
(``torch.load(path, map_location="cpu", weights_only=True)``: only tensors and plain
containers are unpickled, never arbitrary objects) and checked by its one strict
state-dict check. A checkpoint that pickles a whole model (``torch.save(model)``) is refused
with a message saying how to re-save it as a state dict.

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
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from vadpipe.errors import CheckpointError, ConfigError
from vadpipe.loading import (
    STRIP_PREFIXES,
    WRAPPER_KEYS,
    CheckpointMismatchError,
    check_state_dict,
    first_line,
    is_tensor_dict,
    load_checked,
    read_state_dict,
    unreadable_reason,
    unwrap_state_dict,
)
from vadpipe.registry import Registry

__all__ = [
    "CheckpointFormat",
    "CheckpointMismatchError",
    "WRAPPER_KEYS",
    "STRIP_PREFIXES",
    "check_state_dict",
    "load_official_state_dict",
    "read_state_dict",
    "read_vadpipe_checkpoint",
    "VADPIPE_FORMAT",
    "register_checkpoint_format",
    "checkpoint_format",
    "unwrap_state_dict",
]

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


#: Official checkpoint formats, by head (heads register theirs from their own module).
FORMATS: Registry[CheckpointFormat] = Registry("official checkpoint format")


def register_checkpoint_format(fmt: CheckpointFormat) -> CheckpointFormat:
    """Register (or replace) the expected checkpoint format of ``fmt.head``."""
    return FORMATS.register(fmt.head, fmt)


def checkpoint_format(head: str) -> CheckpointFormat:
    """The registered format of ``head``; ``ConfigError`` names the known ones."""
    return FORMATS.get(head)


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
    return load_checked(model, sd, source=f"checkpoint {path} ({head})", expected_format=fmt.description)


# ----------------------------------------------------------------------------- vadpipe's own checkpoints

#: ``format`` of the checkpoints ``vadpipe train`` and ``vadpipe weights import`` write.
VADPIPE_FORMAT = "vadpipe-head/1"
#: Entries every vadpipe head checkpoint has, with their types.
_REQUIRED = {"head": str, "head_config": Mapping, "state_dict": Mapping, "feature_spec": Mapping, "selection": str}
#: Entries a checkpoint needs to be resumed (``last.pt``/``best.pt`` of a training run).
_RESUME = ("optimizer", "step", "history", "best_metric", "best_step", "bad_evals", "torch_rng")
_TRAIN_HINT = "train one with `vadpipe train` or pass the .pt file train wrote (OUT/best.pt or OUT/last.pt)"
_IMPORT_HINT = ("an official RTFM/MGFN/Sultani state dict is converted first with "
                "`vadpipe weights import HEAD FILE -o head.pt`")


def read_vadpipe_checkpoint(path: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by ``vadpipe train`` (or ``vadpipe weights import``) safely
    (``torch.load(weights_only=True)``: tensors and plain containers only) and check it
    before anything uses it: vadpipe's format, a registered head, head settings the head
    accepts, weights whose names and shapes fit that head.

    Args:
        path: the ``.pt`` file.
        resume: also require the training state that ``vadpipe train --resume`` needs.

    Raises:
        CheckpointError: ``"<path> is not a vadpipe checkpoint (<reason>); <what to do>"``
            for a missing, empty, text, damaged or non-torch file, a pickle that the safe load
            refuses, a bare state dict, a checkpoint of an unknown head or with settings or
            weights that do not fit its head; or a checkpoint without training state when
            ``resume`` is set. One line each.
    """
    path = Path(path)

    def refuse(reason: str, hint: str = _TRAIN_HINT) -> CheckpointError:
        return CheckpointError(f"{path} is not a vadpipe checkpoint ({reason}); {hint}")

    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; {_TRAIN_HINT}")
    if path.is_dir():
        raise refuse("it is a folder", "pass the .pt file inside it (e.g. best.pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        what = f"a {found.group(1)} object" if found else "Python objects other than tensors"
        raise refuse(f"it pickles {what}, which a safe load (weights_only=True) refuses",
                     "vadpipe never runs code from a checkpoint; " + _TRAIN_HINT) from None
    except PermissionError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - text, empty, truncated zip, any other non-torch file
        raise refuse(unreadable_reason(path, e)) from None
    if not isinstance(obj, Mapping):
        raise refuse(f"it holds a {type(obj).__name__}, not a checkpoint dict")
    fmt = obj.get("format")
    if fmt is None:
        if is_tensor_dict(obj) or any(isinstance(obj.get(k), Mapping) for k in WRAPPER_KEYS):
            raise refuse("a bare PyTorch state dict without vadpipe's metadata", _IMPORT_HINT + ", or " + _TRAIN_HINT)
        keys = ", ".join(repr(k) for k in list(obj)[:8])
        raise refuse(f"a dict without vadpipe's 'format' entry; its keys: {keys or 'none'}")
    if fmt != VADPIPE_FORMAT:
        raise refuse(f"format {fmt!r}; this vadpipe reads {VADPIPE_FORMAT!r}",
                     "use the vadpipe version that wrote it, or " + _TRAIN_HINT)
    missing = [k for k in _REQUIRED if k not in obj]
    wrong = [f"{k} is a {type(obj[k]).__name__}" for k, t in _REQUIRED.items() if k in obj and not isinstance(obj[k], t)]
    if missing or wrong:
        raise refuse("; ".join(([f"missing {', '.join(missing)}"] if missing else []) + wrong))
    from vadpipe.heads.base import get_head, list_heads

    name = obj["head"]
    if name not in list_heads():
        raise refuse(f"it is a checkpoint of head {name!r}, which this vadpipe does not know; "
                     f"known heads: {', '.join(list_heads())}",
                     "use the vadpipe version (or plug-in) that registers that head, or " + _TRAIN_HINT)
    spec = get_head(name)
    state = obj["state_dict"]
    bad_keys = [repr(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if not state or bad_keys:
        raise refuse("its state_dict is empty" if not state else
                     f"its state_dict holds non-tensor entries {', '.join(bad_keys[:5])}")
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in obj["head_config"].items()}
    try:
        config = spec.config_cls(**settings)
    except (ConfigError, TypeError, ValueError) as e:
        raise refuse(f"its {name} settings are not valid for this vadpipe: {first_line(e)}") from None
    _check_weights_fit(state, spec, config, refuse)
    if resume:
        if obj.get("kind") == "imported":
            raise CheckpointError(f"{path} cannot be resumed: it was imported from an official file and holds no "
                                  "training state; train with `vadpipe train` (without --resume), or resume "
                                  "from the OUT/last.pt of a vadpipe training run")
        lacking = [k for k in _RESUME if k not in obj]
        if lacking:
            raise CheckpointError(f"{path} cannot be resumed: it lacks the training state ({', '.join(lacking)}); "
                                  "resume from the OUT/last.pt of a vadpipe training run")
    return dict(obj)


def _check_weights_fit(state: Mapping[str, torch.Tensor], spec: Any, config: Any,
                       refuse: Callable[..., CheckpointError]) -> None:
    """Refuse weights whose names or shapes do not fit ``spec``'s head built with ``config``.

    The head is built without initialising its weights (:class:`_SkipInit`: milliseconds
    instead of the ~0.5 s random initialisation of a 25M-parameter head) and without
    touching the global RNG; a head that cannot be built so is not checked here (loading
    it checks)."""
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), _SkipInit():
            model = spec.build(config)
    except Exception:  # noqa: BLE001 - an unusual head: skip the early check
        return
    try:
        check_state_dict(state, model, source="its weights")
    except CheckpointMismatchError as e:
        parts = []
        for title, items in (("missing", e.missing), ("unexpected", e.unexpected), ("mis-shaped", e.mismatched)):
            if items:
                parts.append(f"{len(items)} {title}: {', '.join(items[:3])}" + (" ..." if len(items) > 3 else ""))
        raise refuse(f"its weights do not fit the {spec.name} head its settings describe: {'; '.join(parts)}") from None


class _SkipInit(TorchFunctionMode):
    """Within it, ``torch.nn.init`` functions and in-place random fills leave tensors as
    allocated: a module is built for its names and shapes only (``torch.device("meta")``
    would do that too, but its first use imports torch._dynamo, seconds)."""

    _FILLS = ("normal_", "uniform_", "random_", "bernoulli_", "exponential_", "geometric_", "log_normal_", "cauchy_")

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _skipped_inits():
            tensor = args[0] if args else kwargs.get("tensor")
            if isinstance(tensor, torch.Tensor):
                return tensor
        return func(*args, **kwargs)


_SKIPPED: set | None = None


def _skipped_inits() -> set:
    global _SKIPPED
    if _SKIPPED is None:
        inits = {getattr(nn.init, n) for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")}
        _SKIPPED = inits | {getattr(torch.Tensor, n) for n in _SkipInit._FILLS if hasattr(torch.Tensor, n)}
    return _SKIPPED
