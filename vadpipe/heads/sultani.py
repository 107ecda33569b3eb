"""Sultani et al. MIL ranking regressor ("Real-world Anomaly Detection in Surveillance
Videos", CVPR 2018).

Official code: https://github.com/WaqasSultani/AnomalyDetectionCVPR2018
(``TrainingAnomalyDetector_public.py``, Keras 1.1 on Theano; ``model.json``). The defaults
reproduce that code; where the paper differs, the paper's value is documented on the
config field.

Model (``model.json``), applied to each snippet feature independently::

    Dense(in_dim -> 512, ReLU) -> Dropout(0.6) -> Dense(512 -> 32, linear) -> Dropout(0.6)
    -> Dense(32 -> 1, sigmoid)

The middle layer has *no* activation. Weights are ``glorot_normal`` (= ``xavier_normal_``),
biases zero, and every Dense kernel (not bias) carries ``W_regularizer=l2(0.001)``: Keras
adds ``0.001 * sum(W ** 2)`` per layer to the loss.

Loss (``custom_objective``) on a batch of ``B`` abnormal and ``B`` normal bags (the original
uses 30 + 30 videos of 32 segments), with ``a_j``/``n_i`` the maximum snippet score of
abnormal bag ``j`` / normal bag ``i`` and ``s_{j,t}`` the snippet scores of abnormal bag ``j``::

    L = (1/B) sum_i sum_j max(0, 1 - a_j + n_i)          # every normal vs every abnormal bag
      + 8e-5 * sum_j sum_{t=1}^{T-1} (s_{j,t} - s_{j,t+1})^2   # smoothness, abnormal bags only
      + 8e-5 * sum_j sum_t s_{j,t}                       # sparsity, abnormal bags only
      + 0.001 * sum_layers ||W||_F^2                     # Keras l2 regulariser

i.e. the hinge is summed over abnormal bags and averaged over normal bags, and the two
regularisers are summed (not averaged) over the abnormal bags.

Crops: the original uses single-crop C3D features. With ``N > 1`` crops, the snippet scores
of each crop are computed independently and averaged over crops before the MIL loss (and
for :meth:`SultaniHead.snippet_scores`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
import torch
from torch import nn

from vadpipe.errors import ConfigError
from vadpipe.heads.base import AnomalyHead, HeadSpec, register_head

__all__ = [
    "SultaniConfig",
    "SultaniHead",
    "sultani_mil_loss",
    "sultani_optimizer",
    "state_dict_from_keras_layers",
]

Reduction = Literal["official", "paired_mean"]


@dataclass
class SultaniConfig:
    """Hyper-parameters of the Sultani MIL regressor; defaults are the official code's.

    Attributes:
        in_dim: feature size (4096, C3D fc6).
        hidden_dims: widths of the first two Dense layers (512, 32).
        dropout: rate of both Dropout layers (0.6).
        margin: ranking hinge margin (1).
        lambda_smooth: temporal smoothness weight (8e-5, paper's lambda_1).
        lambda_sparse: sparsity weight (8e-5, paper's lambda_2).
        weight_l2: Keras ``l2(0.001)`` kernel regulariser, added to the loss as
            ``weight_l2 * sum ||W||^2`` over the three kernels (biases excluded).
        segments: segments per video (32).
        batch_size: bags *per class* per batch (30: ``batchsize=60`` videos).
        lr: Adagrad learning rate. Code: ``Adagrad(lr=0.01, epsilon=1e-08)``; the paper
            states an initial learning rate of 0.001.
        adagrad_eps: Adagrad epsilon (Keras 1e-8, added to ``sqrt(accumulator)`` as in torch).
        max_steps: training iterations (``num_iters = 20000``).
        reduction: ``"official"``: hinge over all normal x abnormal pairs, summed over
            abnormal and averaged over normal bags, regularisers summed over abnormal bags
            (``custom_objective``); ``"paired_mean"``: the common PyTorch re-implementation,
            ``mean_j [max(0, 1 - a_j + n_j) + l1 * smooth_j + l2 * sparse_j]`` over
            paired bags.
        l2_normalize: feed every segment L2-normalised, as Sultani's features are
            (``Save_C3DFeatures_32Segments.m`` normalises each 32-segment average). The
            data loaders apply it when training and scoring; idempotent on the published
            features. Without it, unnormalised features (I3D, norms of tens) saturate the
            sigmoid at initialisation and the ranking loss stops learning.
    """

    in_dim: int = 4096
    hidden_dims: tuple[int, int] = (512, 32)
    dropout: float = 0.6
    margin: float = 1.0
    lambda_smooth: float = 8e-5
    lambda_sparse: float = 8e-5
    weight_l2: float = 1e-3
    segments: int = 32
    batch_size: int = 30
    lr: float = 0.01
    adagrad_eps: float = 1e-8
    max_steps: int = 20000
    reduction: Reduction = "official"
    l2_normalize: bool = True

    def __post_init__(self) -> None:
        self.hidden_dims = tuple(int(d) for d in self.hidden_dims)  # type: ignore[assignment]
        if self.in_dim <= 0 or len(self.hidden_dims) != 2 or min(self.hidden_dims) <= 0:
            raise ConfigError(f"Sultani dims must be positive: in_dim={self.in_dim}, hidden_dims={self.hidden_dims}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"Sultani dropout must be in [0, 1), got {self.dropout}")
        if self.reduction not in ("official", "paired_mean"):
            raise ConfigError(f"Sultani reduction must be 'official' or 'paired_mean', got {self.reduction!r}")


class SultaniHead(AnomalyHead):
    """The 3-layer MIL regressor. Parameters: ``fc1``, ``fc2``, ``fc3`` (weight, bias)."""

    def __init__(self, config: SultaniConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else SultaniConfig()
        cfg = self.config
        h1, h2 = cfg.hidden_dims
        self.fc1 = nn.Linear(cfg.in_dim, h1)
        self.relu = nn.ReLU()
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.fc2 = nn.Linear(h1, h2)
        self.dropout2 = nn.Dropout(cfg.dropout)
        self.fc3 = nn.Linear(h2, 1)
        self.sigmoid = nn.Sigmoid()
        for fc in (self.fc1, self.fc2, self.fc3):
            nn.init.xavier_normal_(fc.weight)  # Keras glorot_normal
            nn.init.zeros_(fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Snippet scores ``[..., 1]`` in ``[0, 1]`` of features ``[..., in_dim]``."""
        x = self.dropout1(self.relu(self.fc1(x)))
        x = self.dropout2(self.fc2(x))
        return self.sigmoid(self.fc3(x))

    def _check(self, x: torch.Tensor, name: str) -> None:
        if x.dim() != 4:
            raise ValueError(f"Sultani expects {name} of shape [B, N, T, D], got {tuple(x.shape)}")
        if x.shape[-1] != self.config.in_dim:
            raise ValueError(f"Sultani configured for in_dim={self.config.in_dim} but {name} has D={x.shape[-1]}")

    def snippet_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, T]``: per-crop snippet scores averaged over the ``N`` crops."""
        self._check(features, "features")
        return self(features).squeeze(-1).mean(dim=1)

    @property
    def causal_context(self) -> int | None:
        """1: each snippet is scored on its own features (a per-snippet MLP)."""
        return 1

    def weight_penalty(self) -> torch.Tensor:
        """``weight_l2 * sum ||W||^2`` over the Dense kernels (Keras ``l2`` regulariser)."""
        return self.config.weight_l2 * sum(fc.weight.pow(2).sum() for fc in (self.fc1, self.fc2, self.fc3))

    def loss(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """MIL ranking loss (see the module docstring); parts ``rank``, ``smooth``,
        ``sparse``, ``l2`` (weighted) and ``total``."""
        self._check(normal, "normal")
        self._check(abnormal, "abnormal")
        if normal.shape[1:] != abnormal.shape[1:]:
            raise ValueError(f"normal {tuple(normal.shape)} and abnormal {tuple(abnormal.shape)} differ beyond B")
        # one pass over both classes, abnormal first as in the original batch layout
        b_abn = abnormal.shape[0]
        scores = self.snippet_scores(torch.cat((abnormal, normal), 0))
        terms = sultani_mil_loss(scores[b_abn:], scores[:b_abn], self.config)
        terms["l2"] = self.weight_penalty()
        total = terms["rank"] + terms["smooth"] + terms["sparse"] + terms["l2"]
        parts = {k: float(v.detach()) for k, v in terms.items()}
        parts["total"] = float(total.detach())
        return total, parts


def sultani_mil_loss(
    normal_scores: torch.Tensor, abnormal_scores: torch.Tensor, config: SultaniConfig
) -> dict[str, torch.Tensor]:
    """Weighted MIL terms from snippet scores ``[B_n, T]`` and ``[B_a, T]``.

    Returns ``{"rank", "smooth", "sparse"}`` (already multiplied by their lambdas),
    reduced as ``config.reduction`` says (see :class:`SultaniConfig`).
    """
    n_max = normal_scores.max(dim=1).values  # [B_n]
    a_max = abnormal_scores.max(dim=1).values  # [B_a]
    smooth_per_bag = (abnormal_scores[:, :-1] - abnormal_scores[:, 1:]).pow(2).sum(dim=1)
    sparse_per_bag = abnormal_scores.sum(dim=1)
    if config.reduction == "official":
        hinge = torch.clamp(config.margin - a_max.unsqueeze(0) + n_max.unsqueeze(1), min=0)  # [B_n, B_a]
        rank = hinge.sum(dim=1).mean()
        smooth = smooth_per_bag.sum()
        sparse = sparse_per_bag.sum()
    else:
        if n_max.shape != a_max.shape:
            raise ValueError("paired_mean reduction needs as many normal as abnormal bags")
        rank = torch.clamp(config.margin - a_max + n_max, min=0).mean()
        smooth = smooth_per_bag.mean()
        sparse = sparse_per_bag.mean()
    return {"rank": rank, "smooth": config.lambda_smooth * smooth, "sparse": config.lambda_sparse * sparse}


def sultani_optimizer(params, config: SultaniConfig) -> torch.optim.Optimizer:
    """``Adagrad(lr=0.01, epsilon=1e-08)`` as compiled by the original script. Weight decay
    is 0: the Keras ``l2(0.001)`` regulariser is part of :meth:`SultaniHead.loss`."""
    return torch.optim.Adagrad(
        params, lr=config.lr, eps=config.adagrad_eps, weight_decay=0.0, initial_accumulator_value=0.0
    )


def state_dict_from_keras_layers(layers: Sequence[Sequence[np.ndarray]]) -> dict[str, torch.Tensor]:
    """Convert the original Keras weights into a :class:`SultaniHead` state dict.

    Args:
        layers: the ``(kernel [in, out], bias [out])`` pairs of the three Dense layers in
            order (layers 0, 2 and 4 of ``weights_L1L2.mat`` once read with scipy and
            flattened as in the original ``conv_dict``; the Dropout entries are empty).
            Biases of shape ``[1, out]`` are accepted.
    """
    dense = [tuple(layer) for layer in layers if len(layer) > 0]
    if len(dense) != 3 or any(len(layer) != 2 for layer in dense):
        raise ValueError("expected three Dense layers given as (kernel, bias) pairs")
    sd: dict[str, torch.Tensor] = {}
    for i, (kernel, bias) in enumerate(dense, start=1):
        kernel = np.asarray(kernel, dtype=np.float32)
        bias = np.asarray(bias, dtype=np.float32).reshape(-1)
        if kernel.ndim != 2 or kernel.shape[1] != bias.shape[0]:
            raise ValueError(f"Dense layer {i}: kernel {kernel.shape} does not match bias {bias.shape}")
        sd[f"fc{i}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.T))
        sd[f"fc{i}.bias"] = torch.from_numpy(bias.copy())
    return sd


register_head(
    HeadSpec(
        name="sultani",
        config_cls=SultaniConfig,
        build=SultaniHead,
        optimizer=sultani_optimizer,
        description="Sultani et al. 2018 MIL ranking regressor (C3D fc6, 32 segments)",
    )
)
