"""The interface every anomaly head implements, and the head registry.

Tensor conventions (``B`` videos, ``N`` crops, ``T`` snippets, ``D`` feature size):

* training batches: ``normal`` and ``abnormal`` float ``[B, N, T, D]`` (``N = 1`` for
  single-crop features; RTFM-style heads fold crops into the batch themselves);
* scoring: ``[B, N, T, D]`` → snippet scores ``[B, T]`` in ``[0, 1]``, averaged over crops
  the way the head's official code does it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn


class AnomalyHead(nn.Module):
    """Base class of anomaly heads.

    Subclasses hold their hyper-parameters in ``self.config`` (a dataclass instance) and
    implement :meth:`loss` and :meth:`snippet_scores`.
    """

    config: Any

    def loss(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a balanced batch.

        Args:
            normal: ``[B, N, T, D]`` features of normal videos.
            abnormal: ``[B, N, T, D]`` features of anomalous videos.

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


@dataclass(frozen=True)
class HeadSpec:
    """A registered head.

    Attributes:
        name: registry key (``--head``).
        config_cls: dataclass of the head's hyper-parameters (defaults = official code).
        build: ``build(config) -> AnomalyHead``.
        optimizer: ``optimizer(params, config) -> torch.optim.Optimizer``, the official choice.
        description: one line for ``--help`` listings.
    """

    name: str
    config_cls: type
    build: Callable[[Any], AnomalyHead] = field(compare=False)
    optimizer: Callable[[Any, Any], torch.optim.Optimizer] = field(compare=False)
    description: str = ""


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
