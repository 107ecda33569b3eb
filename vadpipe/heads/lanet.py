"""LA-Net + DDL: Locality-aware Attention Network with Discriminative Dynamics Learning.

Paper: Yujiang Pu, Xiaoyu Wu, "Locality-aware Attention Network with Discriminative Dynamics
Learning for Weakly Supervised Anomaly Detection" (ICME 2022). No public code exists: this
module is built from the paper alone (``/work/shared/papers/lanet-ddl.txt``). Every choice
the paper leaves open is listed under *Open choices* below; the ones worth ablating are
options of :class:`LANetConfig`.

Model (per bag of ``T`` snippets ``X [T, D]``)::

    A_h  = softmax_j(phi_h(x_i) . psi_h(x_j) / sqrt(D_h / k))        eq. (1), k = 4 heads
    G_ij = exp(-|i - j|^2 / (2 sigma))                               eq. (2)
    A~_h = A_h + G                                                   eq. (3)  (no renormalisation)
    X~   = LayerNorm(stack_h(A~_h X W_k^h) W_h + X)                  eq. (4)
    X^F  = Drop(GELU(Conv1x1_128(Drop(GELU(Conv1x1_512(X~))))))     two-layer MLP
    S    = sigmoid(CausalConv1d_K(X^F))                              eq. (5), left pad K - 1

Losses on ``B`` normal + ``B`` abnormal bags (eq. 11)::

    L    = L_MIL + lambda1 * L_DR + lambda2 * L_DA
    L_MIL = BCE(p, y),  p = mean of the top-k snippet scores, k = floor(T/16 + 1) (abnormal)
                                                              or 1 (normal)           eq. (6)
    d^s_t = |s_t - s_{t+1}|,   E = (1/k) sum_{top-k d^s} (d^s)^2  (same k rule)        eq. (7)
    L_DR = mean over pairs max(0, zeta - E^a + E^n)                                   eq. (8)
    d^f_t = 1 - cos(x^F_t, x^F_{t+1})                                                 eq. (9)
    L_DA = 1/(N (T-1)) sum_bags sum_t -d^s_t log(d^f_t + eps)                         eq. (10)

Paper settings (:meth:`LANetConfig.preset`): ``"ucf"``: D_h = 512, sigma = 16, K = 10,
lambda1 = 1; ``"xd"``: D_h = 128, sigma = 6, K = 5, lambda1 = 2; both: 4 heads, MLP 512/128,
dropout 0.1, lambda2 = 1, eps = 1e-7, zeta = 0, Adam lr 5e-4 with cosine decay, mini-batch
128, 50 epochs, 200 uniformly sampled snippets per training video, I3D RGB features.

Open choices (the paper does not say; what is done here):

1. **Feature size**: ``feature_dim = 1024`` (I3D RGB, as in Wu et al. [13]'s XD-Violence
   features the paper follows); the training loop overrides it from the data anyway.
2. **Location prior form**: eq. (2) literally, ``exp(-d^2 / (2 sigma))`` (sigma, not
   sigma^2, in the denominator), *added* to the softmax attention map (eq. 3) with no
   renormalisation, shared by all heads. ``prior="gaussian"`` uses ``2 sigma^2``,
   ``prior="none"`` is the "w/o prior" ablation (Table 3).
3. **Attention scaling**: logits divided by ``sqrt(D_h / k)`` as in [16] ("following the
   self-attention mechanism [16]"); eq. (1) shows no scaling (``attn_scale=False``).
4. **Projections**: ``phi``, ``psi`` (queries/keys) and ``W_k`` (values) are
   ``Linear(D, D_h)`` split into ``k`` heads of ``D_h / k``; ``W_h`` is ``Linear(D_h, D)``;
   all with bias; PyTorch default initialisation; post-norm ``LayerNorm(D)``; no dropout in
   the attention block.
5. **MLP**: "two Conv1D layers with 512 and 128 nodes" read as pointwise (kernel 1)
   convolutions, each followed by GELU then dropout(0.1). ``X^F`` (for the feature dynamics)
   is the MLP output that enters the scorer, i.e. after the second GELU and dropout.
6. **Scorer**: the "1x1 causal convolution with kernel size K" is ``Conv1d(128, 1, K)`` on the
   input left-padded with ``K - 1`` zeros, so the score at ``t`` sees snippets ``t-K+1..t`` of
   ``X^F`` (the attention before it is global, so the *model* is not causal, only the scorer).
7. **MIL loss**: eq. (6) prints only ``-y log p`` (which would ignore normal videos); the
   binary cross-entropy ``-[y log p + (1-y) log(1-p)]`` averaged over bags is used.
8. **Dynamics k**: ``k = floor(T/16 + 1)`` for abnormal bags, 1 for normal ones, with ``T`` the
   number of snippets, capped at the ``T - 1`` dynamics. Top-k dynamics are the ``k`` largest
   ``|d^s|`` (equivalently ``(d^s)^2``).
9. **Ranking pairs**: eq. (8) is applied to the ``i``-th normal and ``i``-th abnormal bag of the
   batch (same crop) and averaged over pairs.
10. **Alignment**: eq. (10) literally (``alignment="paper"``): a cross-entropy of the raw
    (un-normalised) dynamics, over *all* bags of the batch (normal and abnormal), with
    gradients through both the score and the feature dynamics. ``alignment="kl"`` instead
    normalises both dynamics of each bag to distributions (sum-normalisation,
    ``eps`` added) and takes ``KL(score || feature)``, averaged over bags.
11. **Crops**: in training every crop is a separate bag (crops folded into the batch,
    video-major) for all three losses; at inference each crop is scored alone and the
    sigmoid scores are averaged over crops.
12. **Batch**: the loop's ``batch_size`` is videos *per class*; the paper's "mini-batch 128" is
    read as 64 normal + 64 abnormal.
13. **Steps / schedule**: the loop draws balanced batches, so "50 epochs" becomes
    ``max_steps = 50 * ceil(larger class / 64)``: UCF-Crime 810 abnormal -> 13 steps/epoch ->
    650 steps; XD-Violence 2049 normal -> 33 -> 1650 steps. The cosine decay is per step,
    from ``lr`` to 0 over ``max_steps`` (no warm-up, no restarts), built into the optimizer
    (:class:`CosineAdam`) because the loop has no scheduler hook. Weight decay: not given,
    0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vadpipe.errors import ConfigError
from vadpipe.heads.base import AnomalyHead, HeadSpec, register_head

__all__ = [
    "LANetConfig",
    "LANetHead",
    "LocalityAwareAttention",
    "CausalConv1d",
    "CosineAdam",
    "location_prior",
    "topk_k",
    "mil_loss",
    "score_dynamics",
    "feature_dynamics",
    "dynamics_accumulation",
    "dynamics_ranking_loss",
    "dynamics_alignment_loss",
    "lanet_optimizer",
    "PRESETS",
]

Prior = Literal["paper", "gaussian", "none"]
Alignment = Literal["paper", "kl"]

#: Per-dataset settings of the paper (Sec. 3.2); see open choice 13 for ``max_steps``.
PRESETS: dict[str, dict[str, Any]] = {
    "ucf": {"hidden_dim": 512, "sigma": 16.0, "kernel_size": 10, "lambda1": 1.0, "max_steps": 650},
    "xd": {"hidden_dim": 128, "sigma": 6.0, "kernel_size": 5, "lambda1": 2.0, "max_steps": 1650},
}


@dataclass
class LANetConfig:
    """Hyper-parameters of LA-Net + DDL; defaults are the paper's UCF-Crime settings.

    Attributes:
        feature_dim: snippet feature size D (1024, I3D RGB; set from the data by the loop).
        heads: attention heads k (4).
        hidden_dim: D_h, total width of the attention heads (512 UCF, 128 XD).
        sigma: location-prior width (16 UCF, 6 XD).
        prior: ``"paper"`` exp(-d^2/(2 sigma)); ``"gaussian"`` exp(-d^2/(2 sigma^2));
            ``"none"`` (ablation).
        attn_scale: divide attention logits by sqrt(D_h / k) (as in [16]).
        mlp_dims: widths of the two pointwise Conv1D layers (512, 128).
        dropout: dropout after each MLP layer (0.1).
        kernel_size: causal-convolution kernel K (10 UCF, 5 XD).
        k_divisor: abnormal top-k is ``floor(T / k_divisor + 1)`` (16).
        lambda1: dynamics-ranking weight (1 UCF, 2 XD).
        lambda2: dynamics-alignment weight (1).
        margin: ranking margin zeta (0).
        eps: epsilon of eq. (10) (1e-7).
        alignment: ``"paper"`` eq. (10) literally; ``"kl"`` KL of sum-normalised dynamics.
        lr: Adam initial learning rate (5e-4).
        weight_decay: Adam weight decay (not in the paper: 0).
        lr_schedule: ``"cosine"`` (per-step decay to 0 over ``max_steps``) or ``"constant"``.
        batch_size: videos per class per batch (64: the paper's 128 = 64 + 64).
        segments: snippets per training video (200, uniform sampling).
        max_steps: optimisation steps (650 UCF / 1650 XD = 50 epochs, see module docs).
    """

    feature_dim: int = 1024
    heads: int = 4
    hidden_dim: int = 512
    sigma: float = 16.0
    prior: Prior = "paper"
    attn_scale: bool = True
    mlp_dims: tuple[int, int] = (512, 128)
    dropout: float = 0.1
    kernel_size: int = 10
    k_divisor: int = 16
    lambda1: float = 1.0
    lambda2: float = 1.0
    margin: float = 0.0
    eps: float = 1e-7
    alignment: Alignment = "paper"
    lr: float = 5e-4
    weight_decay: float = 0.0
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    batch_size: int = 64
    segments: int = 200
    max_steps: int = 650

    def __post_init__(self) -> None:
        self.mlp_dims = tuple(int(d) for d in self.mlp_dims)  # type: ignore[assignment]
        if self.feature_dim <= 0:
            raise ConfigError(f"LA-Net feature_dim must be positive, got {self.feature_dim}")
        if self.heads <= 0 or self.hidden_dim <= 0 or self.hidden_dim % self.heads:
            raise ConfigError(
                f"LA-Net hidden_dim ({self.hidden_dim}) must be a positive multiple of heads ({self.heads})"
            )
        if not self.sigma > 0:
            raise ConfigError(f"LA-Net sigma must be positive, got {self.sigma}")
        if len(self.mlp_dims) != 2 or min(self.mlp_dims) <= 0:
            raise ConfigError(f"LA-Net mlp_dims must be two positive widths, got {self.mlp_dims}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LA-Net dropout must be in [0, 1), got {self.dropout}")
        if self.kernel_size < 1 or self.k_divisor < 1:
            raise ConfigError(f"LA-Net kernel_size and k_divisor must be >= 1, got {self.kernel_size}, {self.k_divisor}")
        if self.eps <= 0 or self.lr < 0 or self.weight_decay < 0 or self.lambda1 < 0 or self.lambda2 < 0:
            raise ConfigError("LA-Net eps must be positive and lr, weight_decay, lambda1, lambda2 non-negative")
        if self.batch_size < 1 or self.segments < 2 or self.max_steps < 1:
            raise ConfigError("LA-Net batch_size and max_steps must be >= 1 and segments >= 2")
        choices = {
            "prior": ("paper", "gaussian", "none"),
            "alignment": ("paper", "kl"),
            "lr_schedule": ("cosine", "constant"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"LA-Net {name} must be one of {allowed}, got {getattr(self, name)!r}")

    @classmethod
    def preset(cls, dataset: str, **overrides: Any) -> "LANetConfig":
        """The paper's settings for ``dataset`` (``"ucf"`` or ``"xd"``), then ``overrides``."""
        key = dataset.lower()
        if key not in PRESETS:
            raise ConfigError(f"unknown LA-Net preset {dataset!r}; choose one of {sorted(PRESETS)}")
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise ConfigError(f"LA-Net has no setting(s) {sorted(unknown)}")
        return cls(**{**PRESETS[key], **overrides})


# ----------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------


def location_prior(t: int, sigma: float, form: Prior = "paper", device=None, dtype=None) -> torch.Tensor:
    """``G [T, T]``: ``exp(-|i-j|^2 / (2 sigma))`` (``"paper"``, eq. 2),
    ``exp(-|i-j|^2 / (2 sigma^2))`` (``"gaussian"``) or zeros (``"none"``)."""
    pos = torch.arange(t, device=device, dtype=dtype or torch.float32)
    d2 = (pos[:, None] - pos[None, :]) ** 2
    if form == "none":
        return torch.zeros_like(d2)
    denom = 2.0 * sigma if form == "paper" else 2.0 * sigma * sigma
    return torch.exp(-d2 / denom)


class LocalityAwareAttention(nn.Module):
    """Eqs. (1)-(4): multi-head attention + additive location prior, residual, LayerNorm."""

    def __init__(self, feature_dim: int, hidden_dim: int, heads: int, sigma: float,
                 prior: Prior = "paper", attn_scale: bool = True) -> None:
        super().__init__()
        self.heads, self.sigma, self.prior = heads, float(sigma), prior
        self.head_dim = hidden_dim // heads
        self.scale = self.head_dim ** -0.5 if attn_scale else 1.0
        self.phi = nn.Linear(feature_dim, hidden_dim)  # queries
        self.psi = nn.Linear(feature_dim, hidden_dim)  # keys
        self.w_k = nn.Linear(feature_dim, hidden_dim)  # W_k of eq. (4), per head D_h/k
        self.w_h = nn.Linear(hidden_dim, feature_dim)  # W_h of eq. (4)
        self.norm = nn.LayerNorm(feature_dim)

    def _split(self, y: torch.Tensor) -> torch.Tensor:
        m, t, _ = y.shape
        return y.reshape(m, t, self.heads, self.head_dim).transpose(1, 2)  # [M, k, T, d]

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Re-calibrated attention maps ``A~ [M, k, T, T]`` of ``x [M, T, D]`` (eq. 3)."""
        q, k = self._split(self.phi(x)), self._split(self.psi(x))
        a = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        return a + location_prior(x.shape[1], self.sigma, self.prior, x.device, x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [M, T, D] -> X~ [M, T, D]``."""
        m, t, _ = x.shape
        v = self._split(self.w_k(x))
        y = torch.matmul(self.attention(x), v).transpose(1, 2).reshape(m, t, -1)  # stack heads
        return self.norm(self.w_h(y) + x)


class CausalConv1d(nn.Module):
    """``Conv1d(C, out, K)`` on the input left-padded with ``K - 1`` zeros: output ``t`` depends
    on inputs ``t-K+1..t`` only. ``[M, C, T] -> [M, out, T]``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (self.kernel_size - 1, 0)))


class LANetHead(AnomalyHead):
    """LA-Net (attention + MLP + causal scorer) trained with MIL + DDL."""

    def __init__(self, config: LANetConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else LANetConfig()
        cfg = self.config
        h1, h2 = cfg.mlp_dims
        self.attention = LocalityAwareAttention(cfg.feature_dim, cfg.hidden_dim, cfg.heads, cfg.sigma,
                                                cfg.prior, cfg.attn_scale)
        self.mlp = nn.Sequential(
            nn.Conv1d(cfg.feature_dim, h1, 1), nn.GELU(), nn.Dropout(cfg.dropout),
            nn.Conv1d(h1, h2, 1), nn.GELU(), nn.Dropout(cfg.dropout),
        )
        self.scorer = CausalConv1d(h2, 1, cfg.kernel_size)

    def _check_input(self, x: torch.Tensor, name: str) -> None:
        if x.dim() != 4:
            raise ValueError(f"LA-Net expects {name} of shape [B, N, T, D], got {tuple(x.shape)}")
        if x.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"LA-Net configured for feature_dim={self.config.feature_dim} but {name} has D={x.shape[-1]}"
            )

    def forward_bags(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bags ``x [M, T, D]`` -> (scores ``[M, T]`` in [0, 1], representation ``X^F [M, T, h2]``)."""
        xf = self.mlp(self.attention(x).transpose(1, 2))  # [M, h2, T]
        scores = torch.sigmoid(self.scorer(xf)).squeeze(1)
        return scores, xf.transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.snippet_scores(features)

    def loss(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_MIL + lambda1 L_DR + lambda2 L_DA`` (eq. 11); every crop is a bag.

        Returns the loss and the parts ``mil``, ``dr``, ``da`` (unweighted) and ``total``.
        """
        self._check_input(normal, "normal")
        self._check_input(abnormal, "abnormal")
        if normal.shape != abnormal.shape:
            raise ValueError(f"normal {tuple(normal.shape)} and abnormal {tuple(abnormal.shape)} must match")
        b, n, t, d = normal.shape
        if t < 2:
            raise ValueError(f"LA-Net needs at least 2 snippets per training video, got T={t}")
        cfg = self.config
        m = b * n
        scores, xf = self.forward_bags(torch.cat((normal, abnormal), 0).reshape(2 * m, t, d))
        s_n, s_a = scores[:m], scores[m:]
        k_a = topk_k(t, cfg.k_divisor)
        l_mil = mil_loss(s_n, s_a, k_a)
        ds = score_dynamics(scores)
        e_n = dynamics_accumulation(ds[:m], 1)
        e_a = dynamics_accumulation(ds[m:], k_a)
        l_dr = dynamics_ranking_loss(e_a, e_n, cfg.margin)
        l_da = dynamics_alignment_loss(ds, feature_dynamics(xf), cfg.eps, cfg.alignment)
        total = l_mil + cfg.lambda1 * l_dr + cfg.lambda2 * l_da
        parts = {"mil": float(l_mil.detach()), "dr": float(l_dr.detach()), "da": float(l_da.detach()),
                 "total": float(total.detach())}
        return total, parts

    def snippet_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Sigmoid scores ``[B, T]`` of ``features [B, N, T, D]``: each crop scored alone,
        averaged over crops. Call :meth:`eval` first (dropout)."""
        self._check_input(features, "features")
        b, n, t, d = features.shape
        scores, _ = self.forward_bags(features.reshape(b * n, t, d))
        return scores.reshape(b, n, t).mean(1)


# ----------------------------------------------------------------------------------------
# Loss terms
# ----------------------------------------------------------------------------------------


def topk_k(t: int, divisor: int = 16) -> int:
    """``floor(T / divisor + 1)`` (the abnormal-bag k of Sec. 2.3), at most ``T``."""
    return min(int(math.floor(t / divisor + 1)), t)


def mil_loss(s_normal: torch.Tensor, s_abnormal: torch.Tensor, k_abnormal: int) -> torch.Tensor:
    """BCE of bag scores: mean of the top-``k_abnormal`` scores of each abnormal bag vs 1, the
    maximum score of each normal bag vs 0, averaged over all bags (``[M, T]`` inputs)."""
    p_a = torch.topk(s_abnormal, min(k_abnormal, s_abnormal.shape[1]), dim=1).values.mean(1)
    p_n = s_normal.max(dim=1).values
    p = torch.cat((p_n, p_a)).clamp(0.0, 1.0)
    y = torch.cat((torch.zeros_like(p_n), torch.ones_like(p_a)))
    return F.binary_cross_entropy(p, y)


def score_dynamics(scores: torch.Tensor) -> torch.Tensor:
    """``|s_t - s_{t+1}|``: ``[M, T] -> [M, T-1]``."""
    return (scores[:, :-1] - scores[:, 1:]).abs()


def feature_dynamics(xf: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x_t, x_{t+1})`` (eq. 9): ``[M, T, C] -> [M, T-1]``."""
    return 1.0 - F.cosine_similarity(xf[:, :-1], xf[:, 1:], dim=-1, eps=1e-8)


def dynamics_accumulation(ds: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. (7): mean of the squares of the ``k`` largest dynamics of each bag, ``[M, T-1] -> [M]``."""
    return torch.topk(ds, max(1, min(k, ds.shape[1])), dim=1).values.pow(2).mean(1)


def dynamics_ranking_loss(e_abnormal: torch.Tensor, e_normal: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Eq. (8) for each (abnormal, normal) pair, averaged: ``mean max(0, zeta - E^a + E^n)``."""
    return torch.clamp(margin - e_abnormal + e_normal, min=0.0).mean()


def dynamics_alignment_loss(ds: torch.Tensor, df: torch.Tensor, eps: float = 1e-7,
                            mode: Alignment = "paper") -> torch.Tensor:
    """Alignment of score dynamics ``ds`` and feature dynamics ``df`` (both ``[M, T-1]``).

    ``"paper"`` (eq. 10): ``mean_{bags, t} -ds_t log(df_t + eps)``. ``"kl"``: with
    ``p = (ds + eps) / sum(ds + eps)`` and ``q = (df + eps) / sum(df + eps)`` per bag,
    ``mean_bags sum_t p_t (log p_t - log q_t)``.
    """
    if mode == "paper":
        return (-ds * torch.log(df + eps)).mean()
    p = (ds + eps) / (ds + eps).sum(dim=1, keepdim=True)
    q = (df + eps) / (df + eps).sum(dim=1, keepdim=True)
    return (p * (p.log() - q.log())).sum(dim=1).mean()


# ----------------------------------------------------------------------------------------
# Optimizer
# ----------------------------------------------------------------------------------------


class CosineAdam(torch.optim.Adam):
    """Adam whose learning rate follows ``lr * (1 + cos(pi * step / total_steps)) / 2``.

    The step counter lives in each param group (``"sched_step"``), so it is saved and
    restored with ``state_dict`` and a resumed run continues the same schedule.
    """

    def __init__(self, params, lr: float, weight_decay: float, total_steps: int) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay)
        self.total_steps = max(1, int(total_steps))
        for group in self.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group.setdefault("sched_step", 0)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            frac = min(group["sched_step"], self.total_steps) / self.total_steps
            group["lr"] = group["initial_lr"] * 0.5 * (1.0 + math.cos(math.pi * frac))
            group["sched_step"] += 1
        return super().step(closure)


def lanet_optimizer(params, config: LANetConfig) -> torch.optim.Optimizer:
    """Adam (lr 5e-4, cosine decay over ``max_steps``), as in Sec. 3.2."""
    if config.lr_schedule == "cosine":
        return CosineAdam(params, lr=config.lr, weight_decay=config.weight_decay, total_steps=config.max_steps)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


register_head(
    HeadSpec(
        name="lanet",
        config_cls=LANetConfig,
        build=LANetHead,
        optimizer=lanet_optimizer,
        description="LA-Net + DDL (Pu & Wu 2022): locality-prior attention, causal scorer, dynamics losses",
    )
)
