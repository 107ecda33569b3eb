"""Registry of stage-one backbones.

Each backbone module registers one :class:`BackboneSpec`: its builder, its feature size,
the clip length and the :class:`~vadpipe.pipeline.extract.transforms.ClipPreset` its weights
expect, and where its weights come from. The CLI and the runner only look names up here.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from vadpipe.errors import ConfigError
from vadpipe.extractors.presets import ClipPreset


@dataclass(frozen=True)
class WeightsInfo:
    """Provenance of a backbone's published weights.

    Attributes:
        name: short identifier of the weight file (e.g. ``"i3d-kinetics-400"``).
        source: where users get the file (package, URL, paper).
        license: the licence the source states.
        source_sha256: sha256 of the published file, when fixed.
        how_to_get: one actionable sentence printed when the file is missing.
        file_name: name of the published file, as ``vadpipe weights import`` stores it.
    """

    name: str
    source: str
    license: str
    source_sha256: str | None = None
    how_to_get: str = ""
    file_name: str = ""


@dataclass(frozen=True)
class BackboneSpec:
    """A registered feature extractor.

    Attributes:
        name: registry key used on the command line (``--backbone``).
        feature_dim: size ``D`` of one feature vector.
        clip_len: frames per clip the model consumes.
        preset: preprocessing the weights expect.
        weights: provenance of the pretrained weights.
        build: ``build(pretrained: bool) -> nn.Module``; the module maps float
            ``[B, 3, T, S, S]`` to ``[B, D]`` (or ``[B, nodes, D]``) and, when pretrained,
            carries the sha256 of the loaded weight file as ``module.weights_sha256``.
        file_suffix: features of ``video.mp4`` are written to ``video_<suffix>.npy``.
        nodes: feature vectors per clip and crop (1; 14 for the patch-node ResNet-50 TRN
            extractor, whose files are ``[n_clips, nodes, D]`` and need ``--crops 1``).
    """

    name: str
    feature_dim: int
    clip_len: int
    preset: ClipPreset
    weights: WeightsInfo
    build: Callable[[bool], nn.Module] = field(compare=False)
    file_suffix: str = ""
    nodes: int = 1


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry (idempotent for the same name)."""
    _REGISTRY[spec.name] = spec
    return spec


def get_backbone(name: str) -> BackboneSpec:
    """Look a backbone up by name; raises :class:`ConfigError` naming the known ones."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise ConfigError(f"unknown backbone {name!r}; registered backbones: {known}") from None


def list_backbones() -> list[str]:
    """Names of all registered backbones."""
    _load_builtin()
    return sorted(_REGISTRY)


_BUILTIN = ("i3d", "i3d_r50", "i3d_r50_caffe2", "c3d", "resnet_trn")

#: Environment variable naming extra modules (comma-separated) that register backbones.
PLUGINS_ENV = "VADPIPE_PLUGINS"


def _load_builtin() -> None:
    # Importing a backbone module registers it.
    for name in _BUILTIN:
        try:
            importlib.import_module(f"vadpipe.extractors.{name}")
        except ModuleNotFoundError as e:  # backbones are added one file at a time
            if e.name != f"vadpipe.extractors.{name}":
                raise

    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f"{PLUGINS_ENV} names {module!r}, which cannot be imported: {e}") from e
