"""Registry of stage-one backbones and the weights contract they share.

Each backbone module registers one :class:`BackboneSpec`, whose :class:`Weights` entry
(torchvision ``Weights`` style) says which file the backbone loads, its sha256, licence and
source, the :class:`~vadpipe.extractors.presets.ClipPreset` the weights were trained with
and the feature size they give. Builders take the entry keyword-only,
``build(weights=entry)``; ``weights=None`` is a random initialisation (tests, benchmarks),
never a silent fallback. The CLI and the runner only look names up here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from vadpipe.extractors.presets import ClipPreset
from vadpipe.registry import Registry

__all__ = ["BACKBONES", "BackboneSpec", "PLUGINS_ENV", "Weights", "get_backbone", "list_backbones",
           "register_backbone"]

#: Environment variable naming extra modules (comma-separated) that register backbones.
PLUGINS_ENV = "VADPIPE_PLUGINS"


@dataclass(frozen=True)
class Weights:
    """One published weight file of a backbone and what it needs.

    Attributes:
        name: tag of the weights (``"i3d-kinetics-400"``), recorded in every run.
        source: where users get the file (package, URL, paper).
        license: the licence the source states.
        how_to_get: one actionable sentence printed when the file is missing.
        file_name: the file's name in the weights cache (``vadpipe weights import`` stores it so).
        env: environment variable that may name the file instead.
        sha256: published sha256, checked on every lookup (``None``: not fixed; the file's
            own sha256 is recorded in each run instead).
        preset: preprocessing the weights were trained with.
        feature_dim: size ``D`` of one feature vector.
        alt_file_names: other cache names accepted (earlier releases of the same weights).
        meta: facts about the weights (training data, classes, paper).
        find_installed: finds the file where a package installed it (``None``: not there).
        loaded_file: for weights converted before loading, ``loaded_file(checkpoint)`` is the
            file the backbone actually reads (its sha256 is the one features record).
    """

    name: str
    source: str
    license: str
    how_to_get: str
    file_name: str
    preset: ClipPreset
    feature_dim: int
    env: str = ""
    sha256: str | None = None
    alt_file_names: tuple[str, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)
    find_installed: Callable[[], Path | None] | None = field(default=None, compare=False)
    loaded_file: Callable[[str | os.PathLike | None], Path] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered feature extractor.

    Attributes:
        name: registry key used on the command line (``--backbone``).
        clip_len: frames per clip the model consumes.
        weights: the published weights the backbone loads by default.
        build: ``build(*, weights: Weights | None) -> nn.Module``; the module maps float
            ``[B, 3, T, S, S]`` to ``[B, D]`` (or ``[B, nodes, D]``) and, with weights,
            carries the sha256 of the loaded file as ``module.weights_sha256``.
        file_suffix: features of ``video.mp4`` are written to ``video_<suffix>.npy``.
        nodes: feature vectors per clip and crop (1; 14 for the patch-node ResNet-50 TRN
            extractor, whose files are ``[n_clips, nodes, D]`` and need ``--crops 1``).
    """

    name: str
    clip_len: int
    weights: Weights
    build: Callable[..., nn.Module] = field(compare=False)
    file_suffix: str = ""
    nodes: int = 1

    @property
    def preset(self) -> ClipPreset:
        """Preprocessing of the default weights."""
        return self.weights.preset

    @property
    def feature_dim(self) -> int:
        """Feature size ``D`` of the default weights."""
        return self.weights.feature_dim


#: Every backbone; the modules of :mod:`vadpipe.extractors` register theirs when imported.
BACKBONES: Registry[BackboneSpec] = Registry("backbone", package="vadpipe.extractors", plugins_env=PLUGINS_ENV)


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to :data:`BACKBONES` (replacing one of the same name)."""
    return BACKBONES.register(spec.name, spec)


def get_backbone(name: str) -> BackboneSpec:
    """Look a backbone up by name; raises :class:`~vadpipe.errors.ConfigError` naming the known ones."""
    return BACKBONES.get(name)


def list_backbones() -> list[str]:
    """Names of all registered backbones, sorted."""
    return BACKBONES.names()
