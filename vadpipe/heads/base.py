"""The interface every anomaly head implements, and the head registry.

Tensor conventions (``B`` videos, ``N`` crops, ``T`` snippets, ``D`` feature size):

* training batches: ``normal`` and ``abnormal`` float ``[B, N, T, D]`` (``N = 1`` for
  single-crop features; RTFM-style heads fold crops into the batch themselves);
* scoring: ``[B, N, T, D]`` → snippet scores ``[B, T]`` in ``[0, 1]``, averaged over crops
  the way the head's official code does it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import nn


class AnomalyHead(nn.Module):
    """Base class of anomaly heads.

    Subclasses hold their hyper-parameters in ``self.config`` (a dataclass instance) and
    implement :meth:`loss` and :meth:`snippet_scores`.
    """

    config: Any

    def loss(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch.

        Args:
            normal: ``[B, N, T, D]`` features of normal videos.
            abnormal: ``[B', N, T, D]`` features of anomalous videos (``B' = B`` for balanced
                batches).

        Heads whose :class:`TrainSampling` is masked (``temporal`` ``"uniform"`` or
        ``"full"``) also take keyword arguments ``normal_mask`` ``[B, T]`` and
        ``abnormal_mask`` ``[B', T]`` (bool, True on real snippets, False on padding).

        Returns:
            The scalar loss to minimise and its named parts (floats) for logging.
        """
        raise NotImplementedError

    def snippet_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Anomaly scores ``[B, T]`` in ``[0, 1]`` of features ``[B, N, T, D]``."""
        raise NotImplementedError

    @property
    def causal_context(self) -> int | None:
        """Snippets ``c`` such that the score of snippet ``t`` depends only on snippets
        ``t - c + 1 .. t`` (a causal head: its scores can be final as soon as a clip ends,
        see ``vadpipe score --stream``); ``None`` when later snippets change it (temporal
        convolutions, attention or pooling over the whole video)."""
        return None


Temporal = Literal["segments", "uniform", "full"]
Instances = Literal["video", "crop"]
Batching = Literal["balanced", "random"]


@dataclass(frozen=True)
class TrainSampling:
    """How the training loop turns a head's training videos into batches.

    Attributes:
        temporal: what a training bag holds along time —
            ``"segments"``: the video resampled to ``length`` segments (RTFM's
            ``process_feat``: means of snippet ranges; every bag has ``length`` rows, no mask);
            ``"uniform"``: ``length`` snippets picked by integer ``linspace`` indices
            (Wu et al.'s ``uniform_extract``) when the video is longer, the video as it is
            when shorter; bags are zero-padded to the longest in the batch and come with a
            length mask;
            ``"full"``: every snippet (``length`` ignored), zero-padded with a mask.
        length: segments (``"segments"``) or the most snippets (``"uniform"``).
        instances: ``"video"``: a bag holds all crops ``[N, T, D]``; ``"crop"``: each crop
            of each video is its own instance ``[1, T, D]`` (Wu et al.'s lists: one line per crop).
        batching: ``"balanced"``: ``batch_size`` normal + ``batch_size`` anomalous videos
            (:class:`~vadpipe.heads.data.BalancedBatchSampler`); ``"random"``: ``batch_size``
            instances drawn from one shuffled pass over all of them per epoch, the last
            batch of an epoch smaller (``DataLoader(shuffle=True)``; see
            :class:`~vadpipe.heads.data.EpochBatchSampler`).
        batch_size: per class (``"balanced"``) or in all (``"random"``).
        steps: optimisation steps of the head's schedule, or ``None`` when it is set in
            epochs.
        epochs: epochs of the schedule (``"random"`` batching): steps = ``epochs *
            ceil(instances / batch_size)``.
    """

    temporal: Temporal = "segments"
    length: int = 32
    instances: Instances = "video"
    batching: Batching = "balanced"
    batch_size: int = 32
    steps: int | None = 1000
    epochs: int | None = None

    @property
    def masked(self) -> bool:
        """Bags of unequal length, zero-padded: the loss takes ``normal_mask``/``abnormal_mask``."""
        return self.temporal != "segments"

    def steps_for(self, n_instances: int) -> int:
        """Schedule length for a training set of ``n_instances`` (videos or crops)."""
        if self.epochs is None:
            return int(self.steps or 1000)
        return int(self.epochs) * max(1, math.ceil(n_instances / self.batch_size))


def config_setting(config: Any, names: tuple[str, ...], default: Any) -> Any:
    """The first of ``names`` that ``config`` sets (not ``None``), else ``default``. Heads keep
    their official option names (RTFM ``segments``/``max_steps``, MGFN ``seg_length``/``max_epoch``)."""
    return next((getattr(config, n) for n in names if getattr(config, n, None) is not None), default)


def default_sampling(config: Any) -> TrainSampling:
    """RTFM-style sampling from a head config's official option names: ``segments`` /
    ``seg_length`` (32), ``batch_size`` per class (32), ``max_steps`` / ``max_epoch`` (1000)."""
    return TrainSampling(
        temporal="segments",
        length=int(config_setting(config, ("segments", "seg_length"), 32)),
        batch_size=int(config_setting(config, ("batch_size",), 32)),
        steps=int(config_setting(config, ("max_steps", "max_epoch"), 1000)),
    )


def schedule_overrides(spec: "HeadSpec", overrides: dict[str, Any], n_instances: int,
                       steps: int | None = None) -> tuple[int, dict[str, Any]]:
    """The step count of ``spec``'s schedule on ``n_instances`` training instances (``steps``
    when given) and the overrides that record it: a schedule in epochs (``max_steps=None``)
    gets ``max_steps`` set, so that step-based settings (e.g. a cosine decay) see its length."""
    defaults = spec.config_cls(**overrides)
    n_steps = int(steps or spec.sampling(defaults).steps_for(n_instances))
    out = dict(overrides)
    if getattr(defaults, "max_steps", 0) is None:
        out["max_steps"] = n_steps
    return n_steps, out


@dataclass(frozen=True)
class HeadSpec:
    """A registered head.

    Attributes:
        name: registry key (``--head``).
        config_cls: dataclass of the head's hyper-parameters (defaults = official code).
        build: ``build(config) -> AnomalyHead``.
        optimizer: ``optimizer(params, config) -> torch.optim.Optimizer``, the official choice.
        description: one line for ``--help`` listings.
        sampling: ``sampling(config) -> TrainSampling``, how its training batches are built
            (default :func:`default_sampling`: 32 resampled segments, balanced batches).
        presets: named paper settings (``vadpipe train --preset NAME``): config overrides.
    """

    name: str
    config_cls: type
    build: Callable[[Any], AnomalyHead] = field(compare=False)
    optimizer: Callable[[Any, Any], torch.optim.Optimizer] = field(compare=False)
    description: str = ""
    sampling: Callable[[Any], TrainSampling] = field(default=default_sampling, compare=False)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)


_HEADS: dict[str, HeadSpec] = {}


def register_head(spec: HeadSpec) -> HeadSpec:
    """Add ``spec`` to the registry."""
    _HEADS[spec.name] = spec
    return spec


def get_head(name: str) -> HeadSpec:
    """Look a head up by name; raises ``ConfigError`` naming the registered ones."""
    from vadpipe.errors import ConfigError

    _load_builtin()
    try:
        return _HEADS[name]
    except KeyError:
        raise ConfigError(f"unknown head {name!r}; registered heads: {', '.join(sorted(_HEADS)) or 'none'}") from None


def list_heads() -> list[str]:
    """Names of the registered heads."""
    _load_builtin()
    return sorted(_HEADS)


def _load_builtin() -> None:
    import importlib

    for module in ("sultani", "rtfm", "mgfn", "lanet", "sacrf", "mcr"):
        try:
            importlib.import_module(f"vadpipe.heads.{module}")
        except ModuleNotFoundError as e:  # heads are added one file at a time
            if e.name != f"vadpipe.heads.{module}":
                raise
