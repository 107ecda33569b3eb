"""LA-Net + DDL: Locality-aware Attention Network with Discriminative Dynamics Learning.

Paper: Yujiang Pu, Xiaoyu Wu, "Locality-aware Attention Network with Discriminative Dynamics
Learning for Weakly Supervised Anomaly Detection" (ICME 2022). No public code exists: this
module is built from the paper alone. For data handling the paper follows Wu et al. [13]
("we use a uniform sampling strategy as in [13, 18] to obtain a fixed length of 200
snippets"), whose XD-Violence code (XDVioDet ``utils.py``/``dataset.py``/``train.py``/
``option.py``) is the reference for what the paper leaves to it.

What is sampled, padded and masked (the default, ``sampling="wu"``)
--------------------------------------------------------------------
* **Instances**: every crop of every training video is its own instance (a bag
  ``[T, D]``), as in Wu et al.'s lists (one line per crop: XD-Violence's ``__0``..``__4``
  files; a 10-crop ``[T, 10, D]`` file gives 10 instances).
* **Batches**: 128 instances drawn from one shuffled pass over all instances per epoch, the
  last batch of an epoch smaller (``DataLoader(batch_size=128, shuffle=True)``, no
  ``drop_last``); classes are *not* balanced per batch. 50 epochs: the number of steps is
  ``50 * ceil(instances / 128)`` and follows from the dataset (XD-Violence 3,954 videos ×
  5 crops = 19,770 instances → 155 steps/epoch → 7,750 steps; UCF-Crime 1,610 × 10 →
  126 → 6,300); ``vadpipe train`` prints it at start.
* **Time axis**: a video of ``T > 200`` snippets is reduced to 200 by *uniform index
  sampling* (``linspace(0, T - 1, 200)`` truncated to integers: real snippets, none averaged
  or repeated; :func:`~vadpipe.heads.data.uniform_extract_indices`); a shorter video keeps
  its ``T`` snippets and is **zero-padded** to the longest bag of the batch with a **length
  mask** (Wu pads to 200 and recovers the length from the non-zero rows; the mask is the
  same thing without the "all-zero snippet" ambiguity). Nothing is ever repeated.
* **Masks**: padded snippets are excluded from the attention (masked out as keys before the
  softmax, and the location prior is zeroed on them), from the top-k of the MIL loss,
  from the score and feature dynamics (a pair ``(t, t+1)`` counts only when both are real)
  and so from the dynamics ranking and alignment losses. The MLP is pointwise and the
  scorer is causal (it looks only backwards, and padding is at the end), so the scores of
  a padded bag's real snippets equal the scores of the same bag unpadded.
* **k**: ``k = floor(T / 16 + 1)`` per bag, ``T`` the bag's real length (after the
  uniform sampling, before padding: Wu's ``seq_len``), for the MIL top-k of abnormal bags
  and the dynamics top-k of abnormal bags (capped at ``T - 1`` dynamics); 1 for normal bags.
* **Inference**: the whole video, no sampling; each crop scored alone, sigmoid scores
  averaged over crops.
* ``sampling="balanced"`` (an option, vadpipe's older reading): ``batch_size / 2`` normal +
  ``batch_size / 2`` anomalous videos per step with all their crops as bags, same uniform
  sampling, padding and masks.

Paper → code
------------
=====================  ======================================================================
eq. (1)                ``A_h = softmax_j(phi_h(x_i) . psi_h(x_j) * scale)``, k = 4 heads
                       (:class:`LocalityAwareAttention`; ``scale`` see open choice 3)
eq. (2)                ``G_ij = exp(-|i - j|^2 / (2 sigma))`` (:func:`location_prior`)
eq. (3)                ``A~ = A + G`` (no renormalisation)
eq. (4)                ``X~ = LayerNorm(stack_h(A~_h X W_k^h) W_h + X)``
Sec. 2.3 MLP           two pointwise Conv1D (512, 128), each GELU then dropout 0.1
eq. (5)                ``S = sigmoid(CausalConv1d_K(X^F))`` (:class:`CausalConv1d`)
eq. (6)                ``L_MIL``: BCE of bag scores ``p`` (top-k mean abnormal, max normal)
                       (:func:`mil_loss`; open choice 7)
eq. (7)                ``E = (1/k) sum_{top-k} (d^s_t)^2``, ``d^s_t = |s_t - s_{t+1}|``
                       (:func:`score_dynamics`, :func:`dynamics_accumulation`)
eq. (8)                ``L_DR = max(0, zeta - E^a + E^n)``, averaged over every (abnormal,
                       normal) pair of the batch (:func:`dynamics_ranking_loss`)
eq. (9)                ``d^f_t = 1 - cos(x^F_t, x^F_{t+1})`` (:func:`feature_dynamics`)
eq. (10)               ``L_DA = mean_bags (1/(T_i - 1)) sum_t -d^s_t log(d^f_t + eps)``
                       (:func:`dynamics_alignment_loss`; equal to eq. 10 when all ``T_i``
                       are equal)
eq. (11)               ``L = L_MIL + lambda1 L_DR + lambda2 L_DA``
Sec. 3.2 UCF-Crime     D_h 512, sigma 16, K 10, lambda1 1 (``--preset ucf``)
Sec. 3.2 XD-Violence   D_h 128, sigma 6, K 5, lambda1 2 (``--preset xd``)
Sec. 3.2 both          4 heads, MLP 512/128, dropout 0.1, lambda2 1, eps 1e-7, zeta 0, Adam
                       lr 5e-4 with cosine decay, mini-batch 128, 50 epochs, 200 snippets
=====================  ======================================================================

Open choices (the paper does not say; what is done here):

1. **Feature size**: ``feature_dim = 1024`` (I3D RGB, as in Wu et al. [13]'s XD-Violence
   features); the training loop sets it from the data.
2. **Location prior form**: eq. (2) literally, ``exp(-d^2 / (2 sigma))`` (sigma, not
   sigma^2), *added* to the softmax map (eq. 3) with no renormalisation, shared by all
   heads. ``prior="gaussian"`` uses ``2 sigma^2``; ``prior="none"`` is Table 3's "w/o prior".
3. **Attention scaling**: logits divided by ``sqrt(D_h / k)`` as in [16] ("following the
   self-attention mechanism [16]"); eq. (1) shows none (``attn_scale=False``).
4. **Projections**: ``phi``, ``psi`` (queries/keys) and ``W_k`` (values) are
   ``Linear(D, D_h)`` split into ``k`` heads of ``D_h / k``; ``W_h`` is ``Linear(D_h, D)``;
   with bias; PyTorch default initialisation; post-norm ``LayerNorm(D)``; no attention dropout.
5. **MLP**: "two Conv1D layers with 512 and 128 nodes" read as pointwise convolutions,
   each followed by GELU then dropout(0.1). ``X^F`` (for the feature dynamics) is the MLP
   output that enters the scorer.
6. **Scorer**: the "1x1 causal convolution with kernel size K" is ``Conv1d(128, 1, K)`` on
   the input left-padded with ``K - 1`` zeros: the score at ``t`` sees ``X^F`` at
   ``t-K+1..t`` (the attention before it is global, so only the scorer is causal).
7. **MIL loss**: eq. (6) prints only ``-y log p`` (which would ignore normal videos); the
   binary cross-entropy ``-[y log p + (1-y) log(1-p)]`` averaged over bags is used, as in
   Wu et al.'s code the paper follows ([13]: ``BCELoss`` on top-k means).
8. **Dynamics k**: the eq. (7) rule with the bag's real ``T``, capped at ``T - 1``; top-k
   dynamics are the ``k`` largest ``|d^s|``. A bag with one real snippet has no dynamics and
   takes no part in eqs. (7)-(10).
9. **Ranking pairs**: eq. (8) for one positive and one negative bag; with random batches
   every (abnormal, normal) pair of the batch is ranked and the hinge averaged over pairs
   (a batch without one of the classes has no ranking term).
10. **Alignment**: eq. (10) literally (``alignment="paper"``): a cross-entropy of the raw
    dynamics over all bags (normal and abnormal), gradients through both dynamics.
    ``alignment="kl"`` sum-normalises both dynamics of each bag and takes
    ``KL(score || feature)``.
11. **Schedule**: cosine decay per step from ``lr`` to 0 over the run's steps
    (``max_steps``, set by the loop from the epochs; no warm-up or restarts), built into the
    optimizer (:class:`CosineAdam`). Weight decay: not given, 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vadpipe.errors import ConfigError
from vadpipe.heads.base import AnomalyHead, HeadSpec, TrainSampling, register_head

__all__ = [
    "LANetConfig",
    "LANetHead",
    "LocalityAwareAttention",
    "CausalConv1d",
    "CosineAdam",
    "location_prior",
    "topk_k",
    "masked_topk_mean",
    "mil_loss",
    "score_dynamics",
    "feature_dynamics",
    "dynamics_accumulation",
    "dynamics_ranking_loss",
    "dynamics_alignment_loss",
    "lanet_optimizer",
    "lanet_sampling",
    "PRESETS",
]

Prior = Literal["paper", "gaussian", "none"]
Alignment = Literal["paper", "kl"]
Sampling = Literal["wu", "balanced"]

#: Per-dataset settings of the paper (Sec. 3.2): ``vadpipe train --head lanet --preset ucf|xd``.
PRESETS: dict[str, dict[str, Any]] = {
    "ucf": {"hidden_dim": 512, "sigma": 16.0, "kernel_size": 10, "lambda1": 1.0},
    "xd": {"hidden_dim": 128, "sigma": 6.0, "kernel_size": 5, "lambda1": 2.0},
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
        k_divisor: top-k is ``floor(T / k_divisor + 1)`` (16).
        lambda1: dynamics-ranking weight (1 UCF, 2 XD).
        lambda2: dynamics-alignment weight (1).
        margin: ranking margin zeta (0).
        eps: epsilon of eq. (10) (1e-7).
        alignment: ``"paper"`` eq. (10) literally; ``"kl"`` KL of sum-normalised dynamics.
        lr: Adam initial learning rate (5e-4).
        weight_decay: Adam weight decay (not in the paper: 0).
        lr_schedule: ``"cosine"`` (per-step decay to 0 over ``max_steps``) or ``"constant"``.
        sampling: ``"wu"`` (crop instances, random batches, as Wu et al.'s loader) or
            ``"balanced"`` (``batch_size / 2`` videos per class with all their crops).
        batch_size: instances per mini-batch (128).
        segments: most snippets of a training bag (200, uniform index sampling).
        epochs: training epochs (50).
        max_steps: optimisation steps; ``None`` (default): ``epochs`` passes over the
            training instances, filled in by the training loop.
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
    sampling: Sampling = "wu"
    batch_size: int = 128
    segments: int = 200
    epochs: int = 50
    max_steps: int | None = None

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
        if self.batch_size < 1 or self.segments < 2 or self.epochs < 1:
            raise ConfigError("LA-Net batch_size and epochs must be >= 1 and segments >= 2")
        if self.sampling == "balanced" and self.batch_size < 2:
            raise ConfigError("LA-Net sampling='balanced' needs batch_size >= 2 (half normal, half anomalous)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"LA-Net max_steps must be >= 1 or None, got {self.max_steps}")
        choices = {
            "prior": ("paper", "gaussian", "none"),
            "alignment": ("paper", "kl"),
            "lr_schedule": ("cosine", "constant"),
            "sampling": ("wu", "balanced"),
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


def lanet_sampling(config: LANetConfig) -> TrainSampling:
    """How the training loop builds LA-Net's batches (see the module docstring)."""
    if config.sampling == "wu":
        return TrainSampling(temporal="uniform", length=config.segments, instances="crop", batching="random",
                             batch_size=config.batch_size, steps=config.max_steps,
                             epochs=None if config.max_steps is not None else config.epochs)
    half = config.batch_size // 2
    return TrainSampling(temporal="uniform", length=config.segments, instances="video", batching="balanced",
                         batch_size=half, steps=config.max_steps, epochs=None if config.max_steps else config.epochs)


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

    def attention(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Re-calibrated attention maps ``A~ [M, k, T, T]`` of ``x [M, T, D]`` (eq. 3).

        ``mask [M, T]`` (True on real snippets): padded snippets get no attention weight as
        keys (logits ``-inf`` before the softmax, prior zeroed), so real snippets attend only
        to real ones.
        """
        q, k = self._split(self.phi(x)), self._split(self.psi(x))
        logits = torch.matmul(q, k.transpose(-1, -2)) * self.scale
        prior = location_prior(x.shape[1], self.sigma, self.prior, x.device, x.dtype)
        if mask is None:
            return torch.softmax(logits, dim=-1) + prior
        keys = mask[:, None, None, :]  # [M, 1, 1, T]
        a = torch.softmax(logits.masked_fill(~keys, float("-inf")), dim=-1)
        return a + prior * keys.to(x.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x [M, T, D] -> X~ [M, T, D]`` (``mask [M, T]`` as in :meth:`attention`)."""
        m, t, _ = x.shape
        v = self._split(self.w_k(x))
        y = torch.matmul(self.attention(x, mask), v).transpose(1, 2).reshape(m, t, -1)  # stack heads
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

    def forward_bags(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bags ``x [M, T, D]`` (``mask [M, T]``, True on real snippets) -> (scores ``[M, T]``
        in [0, 1], representation ``X^F [M, T, h2]``). Values at padded positions are
        meaningless; the real ones do not depend on the padding."""
        xf = self.mlp(self.attention(x, mask).transpose(1, 2))  # [M, h2, T]
        scores = torch.sigmoid(self.scorer(xf)).squeeze(1)
        return scores, xf.transpose(1, 2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.snippet_scores(features)

    def loss(self, normal: torch.Tensor, abnormal: torch.Tensor, *, normal_mask: torch.Tensor | None = None,
             abnormal_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """``L_MIL + lambda1 L_DR + lambda2 L_DA`` (eq. 11); every crop is a bag.

        Args:
            normal: ``[B, N, T, D]``; abnormal: ``[B', N, T, D]`` (either may be empty, not both).
            normal_mask, abnormal_mask: ``[B, T]`` / ``[B', T]``, True on real snippets
                (``None``: all real); the mask of a video applies to all its crops.

        Returns the loss and the parts ``mil``, ``dr``, ``da`` (unweighted) and ``total``.
        """
        self._check_input(normal, "normal")
        self._check_input(abnormal, "abnormal")
        if normal.shape[1:] != abnormal.shape[1:] or normal.shape[0] + abnormal.shape[0] == 0:
            raise ValueError(f"normal {tuple(normal.shape)} and abnormal {tuple(abnormal.shape)} must match beyond B")
        b_n, n, t, d = normal.shape
        b_a = abnormal.shape[0]
        cfg = self.config
        masks = []
        for x, m in ((normal, normal_mask), (abnormal, abnormal_mask)):
            m = torch.ones(x.shape[0], t, dtype=torch.bool, device=x.device) if m is None else m.to(x.device, torch.bool)
            if m.shape != (x.shape[0], t):
                raise ValueError(f"mask of shape {tuple(m.shape)} does not fit features {tuple(x.shape)}")
            masks.append(m.repeat_interleave(n, dim=0))  # video-major, like the reshape below
        mask = torch.cat(masks)
        if bool((mask.sum(1) < 1).any()):
            raise ValueError("every LA-Net training bag needs at least one real snippet")
        m_n = b_n * n
        scores, xf = self.forward_bags(torch.cat((normal, abnormal), 0).reshape(-1, t, d), mask)
        lengths = mask.sum(1)
        ks = topk_k(lengths, cfg.k_divisor)
        ks = torch.cat((torch.ones_like(ks[:m_n]), ks[m_n:]))  # normal bags: k = 1
        labels = torch.cat((torch.zeros(m_n), torch.ones(b_a * n))).to(scores)
        l_mil = mil_loss(scores, labels, ks, mask)
        ds, pair_mask = score_dynamics(scores, mask)
        e = dynamics_accumulation(ds, ks, pair_mask)
        has_dyn = pair_mask.any(1)
        l_dr = dynamics_ranking_loss(e[m_n:][has_dyn[m_n:]], e[:m_n][has_dyn[:m_n]], cfg.margin)
        l_da = dynamics_alignment_loss(ds[has_dyn], feature_dynamics(xf)[has_dyn], cfg.eps, cfg.alignment,
                                       pair_mask[has_dyn])
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
# Loss terms (bags ``[M, T]``; ``mask [M, T]`` True on real snippets, ``None`` = all real)
# ----------------------------------------------------------------------------------------


def topk_k(t: int | torch.Tensor, divisor: int = 16) -> int | torch.Tensor:
    """``floor(T / divisor + 1)``, at most ``T`` (the k of Sec. 2.3), of an int or a tensor of
    per-bag real lengths."""
    if isinstance(t, torch.Tensor):
        return torch.minimum(torch.div(t, divisor, rounding_mode="floor") + 1, t)
    return min(int(math.floor(t / divisor + 1)), t)


def _ones_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(x, dtype=torch.bool) if mask is None else mask


def masked_topk_mean(values: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None = None,
                     power: float = 1.0) -> torch.Tensor:
    """Per row, the mean of ``values ** power`` over its ``k[i]`` largest real entries:
    ``[M, T], [M] -> [M]`` (``k`` clipped to ``1 .. real count``)."""
    mask = _ones_mask(values, mask)
    count = mask.sum(1)
    k = torch.clamp(torch.minimum(k.to(count), count), min=1)
    ranked = torch.sort(values.masked_fill(~mask, float("-inf")), dim=1, descending=True).values
    take = torch.arange(values.shape[1], device=values.device)[None, :] < k[:, None]
    picked = torch.where(take, ranked, torch.zeros_like(ranked))
    return (picked.pow(power) * take).sum(1) / k.to(values.dtype)


def mil_loss(scores: torch.Tensor, labels: torch.Tensor, k: torch.Tensor,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """BCE of bag scores (eq. 6, open choice 7): bag score ``p_i`` = mean of the top-``k_i``
    real snippet scores (``k_i = 1`` gives the maximum, the normal-bag rule), against the
    bag label; averaged over bags. ``scores [M, T]``, ``labels [M]``, ``k [M]``."""
    p = masked_topk_mean(scores, k, mask).clamp(0.0, 1.0)
    return F.binary_cross_entropy(p, labels.to(p))


def score_dynamics(scores: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``|s_t - s_{t+1}|`` and which pairs are real (both snippets real): ``[M, T] -> ([M, T-1], [M, T-1])``."""
    mask = _ones_mask(scores, mask)
    return (scores[:, :-1] - scores[:, 1:]).abs(), mask[:, :-1] & mask[:, 1:]


def feature_dynamics(xf: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x_t, x_{t+1})`` (eq. 9): ``[M, T, C] -> [M, T-1]``, clamped at 0 (rounding can
    make the cosine of two equal vectors exceed 1, and ``log(d + eps)`` of eq. 10 needs ``d >= 0``)."""
    return (1.0 - F.cosine_similarity(xf[:, :-1], xf[:, 1:], dim=-1, eps=1e-8)).clamp(min=0.0)


def dynamics_accumulation(ds: torch.Tensor, k: torch.Tensor, pair_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. (7): mean of the squares of the ``k`` largest real dynamics of each bag, ``[M, T-1] -> [M]``."""
    return masked_topk_mean(ds, k, pair_mask, power=2.0)


def dynamics_ranking_loss(e_abnormal: torch.Tensor, e_normal: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Eq. (8) over every (abnormal, normal) pair, averaged: ``mean_{a,n} max(0, zeta - E^a + E^n)``
    (zero when either side is empty)."""
    if e_abnormal.numel() == 0 or e_normal.numel() == 0:
        return e_abnormal.sum() * 0.0 + e_normal.sum() * 0.0
    return torch.clamp(margin - e_abnormal[:, None] + e_normal[None, :], min=0.0).mean()


def dynamics_alignment_loss(ds: torch.Tensor, df: torch.Tensor, eps: float = 1e-7, mode: Alignment = "paper",
                            pair_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Alignment of score dynamics ``ds`` and feature dynamics ``df`` (both ``[M, T-1]``).

    ``"paper"`` (eq. 10): ``mean_bags mean_{real t} -ds_t log(df_t + eps)``. ``"kl"``: with
    ``p = (ds + eps) / sum(ds + eps)`` and ``q = (df + eps) / sum(df + eps)`` over a bag's
    real pairs, ``mean_bags sum_t p_t (log p_t - log q_t)``.
    """
    if ds.shape[0] == 0:
        return ds.sum() * 0.0
    mask = _ones_mask(ds, pair_mask).to(ds.dtype)
    count = mask.sum(1).clamp(min=1.0)
    if mode == "paper":
        terms = torch.where(mask > 0, -ds * torch.log(df + eps), torch.zeros_like(ds))
        return terms.sum(1).div(count).mean()
    p = (ds + eps) * mask
    q = (df + eps) * mask
    p = p / p.sum(dim=1, keepdim=True)
    q = q / q.sum(dim=1, keepdim=True)
    kl = torch.where(mask > 0, p * (torch.log(p.clamp(min=1e-30)) - torch.log(q.clamp(min=1e-30))), torch.zeros_like(p))
    return kl.sum(dim=1).mean()


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
        if config.max_steps is None:
            raise ConfigError("LA-Net's cosine schedule needs max_steps (the training loop sets it from the epochs)")
        return CosineAdam(params, lr=config.lr, weight_decay=config.weight_decay, total_steps=config.max_steps)
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


register_head(
    HeadSpec(
        name="lanet",
        config_cls=LANetConfig,
        build=LANetHead,
        optimizer=lanet_optimizer,
        description="LA-Net + DDL (Pu & Wu 2022): locality-prior attention, causal scorer, dynamics losses",
        sampling=lanet_sampling,
        presets=PRESETS,
    )
)
