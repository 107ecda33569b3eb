"""MGFN: Magnitude-Contrastive Glance-and-Focus Network (Chen et al., AAAI 2023).

Re-implementation of the official code (github.com/carolchenyx/MGFN., files
``models/mgfn.py``, ``utils/utils.py``, ``train.py``, ``test.py``, ``option.py``,
``main.py``, ``datasets/dataset.py``). The official code's behaviour is the default;
where the paper says something else, that choice is a named option of
:class:`MGFNConfig` (see :meth:`MGFNConfig.paper`).

Parameter names follow the official module attributes, so an official checkpoint
(``torch.save(model.state_dict())``, possibly with ``module.`` prefixes) loads with
``strict=True`` into :class:`MGFN` (see :func:`load_official_checkpoint`; the format is
registered with :mod:`vadpipe.heads.checkpoints` under ``"mgfn"``).

Architecture (official defaults; ``x`` is channel-first ``[B*N, C, T]``)::

    input     [B, N, T, 2049]   last channel = L2 magnitude of the 2048-D feature
    tokens    to_tokens(feature) + 0.1 * to_mag(magnitude)    both Conv1d k=3, pad 1 -> 64
    stage i   for each of depths[i] layers:
                  x = conv_k3(x) + x          (Conv1d(dim, dim, 3, padding=1))
                  x = mixer(x) + x            (GlanceBlock "gb" or FocusBlock "fb")
                  x = ff(x) + x               (LayerNorm -> 1x1 (x4) -> GELU -> Dropout -> 1x1)
              then, except after the last stage, LayerNorm -> Conv1d(dim_i, dim_{i+1}, 1)
              (a channel projection: stride 1, the time axis is never downsampled)
    dims (64, 128, 1024), depths (3, 3, 2), mixers (gb, fb, fb), heads = dim // 64 = 1, 2, 16
    head      nn.LayerNorm(1024) on [B*N, T, 1024] -> fc -> sigmoid   = snippet scores
              magnitudes = ||LN-ed feature||_2 per crop, averaged over crops

``LayerNorm`` (all but the final one) is channel-first and adds ``eps`` to the
standard deviation: ``(x - mean) / (sqrt(var_biased) + 1e-5) * g + b``.

GlanceBlock: ``LN -> to_qkv (1x1, no bias) -> q, k, v`` (chunks of the channel axis),
each split head-major (channel ``h * dim_head + d``), softmax((q * dim_head^-0.5) k^T)
over time, ``to_out`` (1x1). Its attention-dropout argument is accepted and never used.

FocusBlock: ``BatchNorm1d -> to_v (1x1, no bias) -> rel_pos -> to_out (1x1)`` where
``rel_pos`` is ``Conv1d(heads, heads, 5, padding=2, groups=heads)`` applied with the
heads as the *fast* channel index: channel ``j`` is convolved over time with kernel
``j mod heads``. No attention, no learned mixing across channels in that step.

Top-k selection (official ``MSNSD``): the batch is ``[normal B; abnormal B]`` with the
crops folded video-major (row ``v * N + c``). Per video, crop-averaged magnitudes are
multiplied by ``Dropout(0.7)(ones)`` (training only: random eligibility, the only place
that dropout acts), the top ``k = 3`` snippets are chosen and applied to every crop; the
selected features are concatenated crop-major (row ``c * B + v``) as ``[N*B, k, 1024]``.
The video score is the mean of the crop-averaged scores at those snippets.

Loss (official ``train.py``), ``s`` = crop-averaged snippet scores ``[2B, T]``,
``A`` / ``Z`` = selected abnormal / normal features ``[N*B, k, 1024]``, and
``|A|_1`` the L1 norm over the feature axis (``[N*B, k]``)::

    C(x, y, l)   = mean_rows( (1 - l) * d^2 + l * max(0, margin - d)^2 ),
                   d = ||x - y + 1e-6||_2 (F.pairwise_distance), margin = 200
    L_con        = C(|A|_1, |Z|_1, 1)                      abnormal row i vs normal row i
    L_con_a      = C(|A[5B:]|_1, |A[:5B]|_1, 0)            crops 5-9 vs crops 0-4, same videos
    L_con_n      = C(|Z[5B:]|_1, |Z[:5B]|_1, 0)
    L_bce        = BCE([score_normal; score_abnormal], [0...0; 1...1])
    L_sparsity   = 8e-3 * ||s[:B]||_2                      L2 norm of the NORMAL half's scores
    L_smooth     = 8e-4 * sum_v sum_t (s[v, t+1] - s[v, t])^2    within each of all 2B videos
    L            = L_bce + 1e-3 * (1e-3 * L_con + L_con_a + L_con_n) + L_smooth + L_sparsity

Magnitude channel (:func:`add_magnitude`): the official dataset appends
``||feature||_2`` itself. At test time it is per snippet and crop of the raw features; in
training it is the norm of the 32-segment *averaged* feature (computed after resampling,
not the average of per-snippet norms). :meth:`MGFN.loss` and :meth:`MGFN.snippet_scores`
take plain ``[B, N, T, D]`` features and append the channel themselves, so training
features must already be resampled to 32 segments when they reach :meth:`MGFN.loss`.

Optimiser (official ``main.py``/``option.py``): Adam, lr 1e-3 (constant, ``[0.001]*15000``),
weight decay 5e-4; 16 normal + 16 abnormal videos per step, 10 crops, 32 segments.

Loss, paper → code. Notation: ``B`` normal + ``B`` abnormal videos (the paper's ``B/2`` +
``B/2``), ``s [2B, T]`` crop-averaged snippet scores, ``m_{v,t}`` the crop-averaged feature
magnitude of snippet ``t`` of video ``v`` (the quantity MSNSD ranks), ``Ω_k(v)`` its top-k
snippets. Official = the default; paper = :meth:`MGFNConfig.paper` (the CLI's ``vadpipe
train --head mgfn --preset paper``), which sets every option below at once
(:data:`MGFN_PAPER_SETTINGS`; each can also be set alone)::

    total    L = L_sce + λ1 L_ts + λ2 L_sp + λ3 L_mc,  λ1 = λ2 = 1, λ3 = 0.001
             official: L_bce + 1e-3 (1e-3 L_con + L_con_a + L_con_n) + 8e-4 L_smooth
             + 8e-3 L_sparsity; paper: ``con_inter_weight=1``, ``smooth_weight=1``,
             ``sparsity_weight=1`` (``mc_weight`` = λ3 = 1e-3 in both)
    L_sce    -y log s^{i,j} - (1 - y) log(1 - s^{i,j}) for clip j of video i, y the video
             label: ``classification="official"``: BCE of each video's score (mean of s
             over its top-k snippets), mean over 2B videos; ``"paper_clip"``: BCE of every
             clip score s[v, t] against its video's label, mean over all 2B * T clips
    Eq. (1)  M = ||f||_2 per snippet and crop (FAM): both append the L2 norm channel
    Eq. (2)  f + α Conv1D(M), α = 0.1 (``mag_ratio``): both
    Eq. (8)  L_mc = Σ_{p,q} D(M_n^p, M_n^q) + Σ_{u,v} D(M_a^u, M_a^v)
                    + Σ_{p,u} (Margin - D(M_n^p, M_a^u))
             ``contrastive_pairs="crops"`` (official ``ContrastiveLoss``): squared
             distances, squared hinge ``max(0, 200 - d)^2``, d = Euclidean distance of the
             L1 top-k magnitude vectors of abnormal row r vs normal row r (same crop, same
             batch slot), intra-class terms between crops 5-9 and crops 0-4 of the same
             video, all as means; ``"videos"`` (paper): the printed sums over every ordered
             pair of normal videos (p, q), of abnormal videos (u, v) and every normal x
             abnormal pair (p, u), unsquared, the inter term ``Margin - D`` not clamped
             (``mc_inter_hinge=True`` clamps it at 0, which the paper does not print)
    Eq. (9)  D(M_n^p, M_n^q) = min_{t in Ω_k(p), r in Ω_k(q)} |m_{p,t} - m_{q,r}|:
             ``"videos"``: the smallest gap between any top-k magnitude of p and any of
             q (0 for p = q, so the diagonal adds nothing)
    Eq. (10) D(M_n^p, M_a^u) = max_{t in Ω_k(p), r in Ω_k(u)} |m_{p,t} - m_{u,r}|:
             ``"videos"``: the largest such gap; magnitudes are L2 (``con_norm_p=2``;
             official L1) of the final features, crop-averaged
    L_ts, L_sp  Σ_t s_a^{i,t} and Σ_t (s_a^{i,t} - s_a^{i,t+1})^2 on abnormal videos
             (the paper prints the two names swapped, and runs the difference sum to
             t = T: read as t < T; with λ1 = λ2 the total is the same):
             ``sparsity="official"``: ||s[:B]||_2, the L2 norm of the *normal* half;
             ``"paper"``: mean over abnormal videos of Σ_t s_t. ``smoothness="official"``:
             Σ over all 2B videos; ``"paper"``: mean over abnormal videos of the sum
    top-k    "top-k-largest-feature-magnitude clips": official ``dropout_rate=0.7`` ranks
             only the snippets surviving Dropout(0.7) on a mask of ones (training);
             paper ``dropout_rate=0``: the exact top-k (the mask is that dropout's only use)
    batch    16 videos = 8 normal + 8 abnormal (``batch_size=8``; code 16 + 16); lr 1e-3,
             weight decay 5e-4, T = 32, P = 10, k = 3: code and paper agree

Departures of the paper variant from the printed text, kept on purpose:

* Eq. (9) and (10) print a signed difference ``1(.) - 1(.)``; with a min over the pairs
  it would not be a distance (and would reward spreading each video's top-k apart), so
  the absolute gap is used. The text after eq. (9) speaks of "the maximum-distance pair"
  for the similarity terms; the equations (min for eq. 9, max for eq. 10) are followed.
* Eq. (8)'s index ranges ``0..B/2`` and ``B/2..B`` are read as the B/2 normal and the B/2
  abnormal videos; the sums are kept as sums (λ3 multiplies sums over ``B^2`` pairs).
  Unclamped, the inter term ``Margin - D`` is unbounded below and ``Margin`` only shifts
  the loss; the margin value is not printed, the code's 200 is kept.
* The paper has no crops in the MC loss: magnitudes are averaged over crops per snippet.
  How ``L_sce``, ``L_ts`` and ``L_sp`` aggregate over videos is not printed: means.
* Not offered: the parameter-free "self-attentional convolution" (eq. 6-7) and FAM in
  the input feature space, since the official checkpoints use the code's layers.

Deviations from the official code, none of which changes its results where it runs:
no ``.cuda()`` (device follows the input); crops are split by the actual ``N`` (the code
hard-codes 10 in ``features[0:batch_size*10]``); the inference branch ("abnormal half :=
normal half") is taken for a single video only (the code also takes it when training with
``batch_size=1``); with an odd number of selected rows ``L_con_a``/``L_con_n`` pair rows
``[h:2h]`` with ``[:h]``, ``h = rows // 2`` (the code fails there).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vadpipe.errors import ConfigError
from vadpipe.heads.base import AnomalyHead, HeadSpec, register_head
from vadpipe.heads.checkpoints import CheckpointFormat, load_official_state_dict, register_checkpoint_format

__all__ = [
    "MGFNConfig",
    "MGFN",
    "ChannelLayerNorm",
    "GlanceBlock",
    "FocusBlock",
    "Backbone",
    "add_magnitude",
    "select_top_magnitudes",
    "contrastive_loss",
    "paper_mc_terms",
    "MGFN_PAPER_SETTINGS",
    "official_forward",
    "official_loss",
    "load_official_checkpoint",
    "MGFN_CHECKPOINT_FORMAT",
    "build_optimizer",
]

_MIXERS = ("gb", "fb")
_CHOICES = {
    "contrastive_pairs": ("crops", "videos"),
    "sparsity": ("official", "paper"),
    "smoothness": ("official", "paper"),
    "classification": ("official", "paper_clip"),
}

#: Every paper choice that differs from the code (:meth:`MGFNConfig.paper`): λ1 = λ2 = 1 on
#: the abnormal scores, no extra 0.001 inside λ3 = 0.001, L2 magnitudes, eq. (8)-(10) over
#: video pairs, per-clip BCE, exact top-k, 8 + 8 videos per batch.
MGFN_PAPER_SETTINGS: dict[str, Any] = {
    "batch_size": 8,
    "mc_weight": 1e-3,
    "con_inter_weight": 1.0,
    "con_norm_p": 2.0,
    "contrastive_pairs": "videos",
    "classification": "paper_clip",
    "dropout_rate": 0.0,
    "sparsity_weight": 1.0,
    "sparsity": "paper",
    "smooth_weight": 1.0,
    "smoothness": "paper",
}


@dataclass
class MGFNConfig:
    """Hyper-parameters of MGFN; defaults are the official code's.

    Attributes:
        feature_dim: backbone feature size without the magnitude channel
            (``mgfn(channels=2048)``; XD-Violence users set 1024).
        dims: channel width of the three stages (``mgfn(dims=(64, 128, 1024))``).
        depths: layers per stage (``option.py`` ``--depths1..3`` = 3, 3, 2).
        mgfn_types: mixer of each stage, ``"gb"`` glance / ``"fb"`` focus
            (``--mgfn_type1..3`` = gb, fb, fb).
        dim_head: channels per head; a stage has ``dim // dim_head`` heads (1, 2, 16).
        local_aggr_kernel: kernel of the focus block's grouped conv (``Backbone(kernel=5)``;
            the ``lokernel`` argument of ``mgfn`` is never passed on).
        ff_repe: expansion of the feed-forward 1x1 convs (4).
        ff_dropout: dropout inside the feed-forward (``mgfn(dropout=0.)``).
        attention_dropout: accepted by the glance block and never applied (0).
        dropout_rate: dropout on the top-k eligibility mask (``--dropout_rate`` 0.7; the
            paper's exact top-k is 0).
        mag_ratio: weight of the magnitude tokens (``--mag_ratio`` 0.1; the paper's alpha).
        k: snippets selected per video (hard-coded 3 in ``mgfn.forward``).
        margin: contrastive margin (``ContrastiveLoss(margin=200.0)``).
        batch_size: videos per class per step (``--batch_size`` 16; paper: 8 + 8).
        ncrops: crops per snippet in the published features (10).
        seg_length: segments per training video (``--seg_length`` 32).
        lr: Adam learning rate (``--lr [0.001]*15000``).
        weight_decay: Adam weight decay (``main.py``: 0.0005).
        max_epoch: passes over the zipped normal/abnormal loaders (``--max-epoch`` 1000).
        mc_weight: outer weight of the contrastive terms (0.001; the paper's lambda_3).
        con_inter_weight: extra weight of the normal-vs-abnormal term inside it
            (official 0.001; the paper has none: 1.0).
        con_norm_p: norm of a selected feature fed to the contrastive loss
            (official L1 = 1; the paper's magnitudes are L2 = 2).
        contrastive_pairs: ``"crops"`` (official ``ContrastiveLoss``: squared distances
            and squared hinge; crops 5-9 vs crops 0-4 of the same videos, abnormal row i vs
            normal row i) or ``"videos"`` (paper eq. 8-10, :func:`paper_mc_terms`: sums over
            every pair of videos of unsquared min / max gaps between crop-averaged top-k
            magnitudes).
        mc_inter_hinge: ``"videos"`` only: clamp the inter-class term ``Margin - D`` at 0
            (not printed in eq. 8; default False = as printed).
        classification: ``"official"``: BCE of the video scores (top-k mean); ``"paper_clip"``:
            the paper's ``L_sce`` on every clip score with its video's label, mean over clips.
        sparsity_weight: official 8e-3 (paper lambda_1 = 1).
        sparsity: ``"official"``: L2 norm of the normal half's scores; ``"paper"``:
            sum over snippets of the abnormal videos' scores, averaged over videos.
        smooth_weight: official 8e-4 (paper lambda_2 = 1).
        smoothness: ``"official"``: sum of squared neighbour differences over all 2B
            videos; ``"paper"``: the same on abnormal videos, averaged over videos.
    """

    feature_dim: int = 2048
    dims: tuple[int, ...] = (64, 128, 1024)
    depths: tuple[int, ...] = (3, 3, 2)
    mgfn_types: tuple[str, ...] = ("gb", "fb", "fb")
    dim_head: int = 64
    local_aggr_kernel: int = 5
    ff_repe: int = 4
    ff_dropout: float = 0.0
    attention_dropout: float = 0.0
    dropout_rate: float = 0.7
    mag_ratio: float = 0.1
    k: int = 3
    margin: float = 200.0
    batch_size: int = 16
    ncrops: int = 10
    seg_length: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    max_epoch: int = 1000
    mc_weight: float = 1e-3
    con_inter_weight: float = 1e-3
    con_norm_p: float = 1.0
    contrastive_pairs: str = "crops"
    sparsity_weight: float = 8e-3
    sparsity: str = "official"
    smooth_weight: float = 8e-4
    smoothness: str = "official"
    classification: str = "official"
    mc_inter_hinge: bool = False

    def __post_init__(self) -> None:
        self.dims = tuple(int(d) for d in self.dims)
        self.depths = tuple(int(d) for d in self.depths)
        self.mgfn_types = tuple(str(t).lower() for t in self.mgfn_types)
        if not (len(self.dims) == len(self.depths) == len(self.mgfn_types)) or not self.dims:
            raise ConfigError(
                f"MGFN dims {self.dims}, depths {self.depths} and mgfn_types {self.mgfn_types} "
                "must be non-empty and of the same length (one entry per stage)"
            )
        bad = [t for t in self.mgfn_types if t not in _MIXERS]
        if bad:
            raise ConfigError(f"unknown MGFN mixer type(s) {bad}; use 'gb' (glance) or 'fb' (focus)")
        if self.dim_head < 1 or min(self.dims) < self.dim_head:
            raise ConfigError(
                f"every MGFN stage width {self.dims} must be >= dim_head={self.dim_head} (heads = dim // dim_head)"
            )
        if self.local_aggr_kernel < 1 or self.local_aggr_kernel % 2 == 0:
            raise ConfigError(f"local_aggr_kernel must be odd and positive, got {self.local_aggr_kernel}")
        if self.feature_dim < 1 or self.k < 1:
            raise ConfigError(f"feature_dim and k must be positive, got {self.feature_dim} and {self.k}")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ConfigError(f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"MGFN {name}={getattr(self, name)!r}; choose one of {allowed}")
        if not isinstance(self.mc_inter_hinge, bool):
            raise ConfigError(f"MGFN mc_inter_hinge must be True or False, got {self.mc_inter_hinge!r}")
        if self.mc_inter_hinge and self.contrastive_pairs != "videos":
            raise ConfigError(
                "MGFN mc_inter_hinge applies to contrastive_pairs='videos' (eq. 8-10); the official "
                "'crops' loss always uses its squared hinge"
            )

    @property
    def heads(self) -> tuple[int, ...]:
        """Heads of each stage (``dim // dim_head``; official: 1, 2, 16)."""
        return tuple(d // self.dim_head for d in self.dims)

    @classmethod
    def paper(cls, **overrides: Any) -> "MGFNConfig":
        """The paper's stated choices where they differ from the code (:data:`MGFN_PAPER_SETTINGS`).

        λ1 = λ2 = 1 on sparsity/smoothness of the abnormal scores, λ3 = 0.001 on the whole
        MC loss (no extra 0.001 on the inter-class term), the MC loss of eq. (8)-(10) on L2
        magnitudes over all video pairs, the per-clip BCE ``L_sce``, the exact top-k (no
        eligibility dropout), 8 + 8 videos per batch. ``overrides`` change any field.
        """
        return cls(**{**MGFN_PAPER_SETTINGS, **overrides})

    def replace(self, **changes: Any) -> "MGFNConfig":
        """A copy with ``changes`` applied (validated)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown MGFN option(s) {unknown}")
        return replace(self, **changes)


# --------------------------------------------------------------------------- blocks


class ChannelLayerNorm(nn.Module):
    """Official ``utils.LayerNorm``: over the channel axis of ``[B, C, T]``, eps on the std.

    ``y = (x - mean_c) / (sqrt(var_c, biased) + eps) * g + b`` with ``g``, ``b`` of shape
    ``[1, C, 1]`` (parameter names ``g`` and ``b``).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=1, keepdim=True)
        std = x.var(dim=1, unbiased=False, keepdim=True).sqrt()
        return (x - mean) / (std + self.eps) * self.g + self.b


def feed_forward(dim: int, repe: int = 4, dropout: float = 0.0) -> nn.Sequential:
    """Official ``FeedForward``: indices 0 LN, 1 conv 1x1 up, 2 GELU, 3 Dropout, 4 conv 1x1 down."""
    return nn.Sequential(
        ChannelLayerNorm(dim),
        nn.Conv1d(dim, dim * repe, 1),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Conv1d(dim * repe, dim, 1),
    )


class GlanceBlock(nn.Module):
    """Official ``GLANCE``: multi-head softmax self-attention over time, heads head-major."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.scale = dim_head**-0.5
        self.dropout = dropout  # accepted for parity with the official signature; never applied
        inner = dim_head * heads
        self.norm = ChannelLayerNorm(dim)
        self.to_qkv = nn.Conv1d(dim, inner * 3, 1, bias=False)
        self.to_out = nn.Conv1d(inner, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        b, _, t = x.shape
        h, d = self.heads, self.dim_head
        q, k, v = self.to_qkv(x).chunk(3, dim=1)
        # channel index = head * dim_head + d  ->  [b, h, t, d]
        q, k, v = (z.reshape(b, h, d, t).transpose(2, 3) for z in (q, k, v))
        attn = torch.matmul(q * self.scale, k.transpose(2, 3)).softmax(dim=-1)
        out = torch.matmul(attn, v)  # [b, h, t, d]
        out = out.transpose(2, 3).reshape(b, h * d, t)
        return self.to_out(out)


class FocusBlock(nn.Module):
    """Official ``FOCUS``: BatchNorm, 1x1, grouped temporal conv over interleaved heads, 1x1."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64, local_aggr_kernel: int = 5) -> None:
        super().__init__()
        self.heads = heads
        inner = dim_head * heads
        self.norm = nn.BatchNorm1d(dim)
        self.to_v = nn.Conv1d(dim, inner, 1, bias=False)
        self.rel_pos = nn.Conv1d(heads, heads, local_aggr_kernel, padding=local_aggr_kernel // 2, groups=heads)
        self.to_out = nn.Conv1d(inner, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        b, _, t = x.shape
        v = self.to_v(x)
        inner = v.shape[1]
        # heads are the fast channel index: channel j = c * heads + (j mod heads)
        v = v.reshape(b * (inner // self.heads), self.heads, t)
        out = self.rel_pos(v).reshape(b, inner, t)
        return self.to_out(out)


class Backbone(nn.Module):
    """Official ``Backbone``: ``layers[i] = [conv k3, mixer, feed-forward]``, each residual."""

    def __init__(
        self,
        *,
        dim: int,
        depth: int,
        heads: int,
        mgfn_type: str = "gb",
        kernel: int = 5,
        dim_headnumber: int = 64,
        ff_repe: int = 4,
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for _ in range(depth):
            if mgfn_type == "fb":
                mixer: nn.Module = FocusBlock(dim, heads=heads, dim_head=dim_headnumber, local_aggr_kernel=kernel)
            elif mgfn_type == "gb":
                mixer = GlanceBlock(dim, heads=heads, dim_head=dim_headnumber, dropout=attention_dropout)
            else:
                raise ConfigError(f"unknown MGFN mixer type {mgfn_type!r}; use 'gb' or 'fb'")
            self.layers.append(
                nn.ModuleList([nn.Conv1d(dim, dim, 3, padding=1), mixer, feed_forward(dim, ff_repe, dropout)])
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for scc, mixer, ff in self.layers:
            x = scc(x) + x
            x = mixer(x) + x
            x = ff(x) + x
        return x


# --------------------------------------------------------------------------- helpers


def add_magnitude(features: torch.Tensor) -> torch.Tensor:
    """Append the L2 norm over the last axis as one more channel: ``[.., D] -> [.., D+1]``.

    Official ``datasets/dataset.py``: at test time on the raw features (per snippet and
    crop); in training on each crop's 32-segment resampled features. Apply it to features
    exactly as they enter the model (after any resampling).
    """
    magnitude = torch.linalg.vector_norm(features, ord=2, dim=-1, keepdim=True)
    return torch.cat([features, magnitude], dim=-1)


def _gather_crop_major(features: torch.Tensor, index: torch.Tensor, ncrops: int) -> torch.Tensor:
    """``features [n*N, T, F]`` (video-major), ``index [n, k]`` -> ``[N*n, k, F]`` crop-major."""
    rows, t, f = features.shape
    n, k = index.shape
    per_crop = features.reshape(n, ncrops, t, f).permute(1, 0, 2, 3)  # [N, n, T, F]
    idx = index[None, :, :, None].expand(ncrops, n, k, f)
    return torch.gather(per_crop, 2, idx).reshape(ncrops * n, k, f)


def _select_half(
    features: torch.Tensor,
    scores: torch.Tensor,
    magnitudes: torch.Tensor,
    mask: torch.Tensor,
    ncrops: int,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``magnitudes * mask``; returns (video scores ``[n, 1]``, features ``[N*n, k, F]``)."""
    index = torch.topk(magnitudes * mask, k, dim=1)[1]
    selected = _gather_crop_major(features, index, ncrops)
    video_score = torch.gather(scores, 1, index.unsqueeze(2)).mean(dim=1)
    return video_score, selected


def select_top_magnitudes(
    features: torch.Tensor,
    scores: torch.Tensor,
    bs: int,
    batch_size: int,
    drop_out: nn.Module,
    ncrops: int,
    k: int,
    single_video: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official ``MSNSD``: magnitude-based top-k selection and video scores.

    Args:
        features: final LayerNorm-ed features ``[bs*N, T, F]``, crops video-major.
        scores: sigmoid snippet scores ``[bs*N, T, 1]``.
        bs: videos in the batch: ``2 * batch_size`` (training) or 1 (inference, where the
            "abnormal" half is a copy of the single video).
        batch_size: videos per class.
        drop_out: the dropout applied to the all-ones eligibility masks (abnormal first).
        single_video: take the inference branch (abnormal half := the normal half).
            Default ``bs == 1``. The official test is "one video per half", which with
            ``batch_size=1`` in training would also copy the normal video over the abnormal
            one; :meth:`MGFN.loss` passes ``False`` so B=1 training is well defined.

    Returns:
        ``(score_abnormal [n,1], score_normal [n,1], abn_feamagnitude [N*n,k,F],
        nor_feamagnitude [N*n,k,F], scores [bs,T,1])`` with ``n = batch_size`` (1 at inference).
    """
    _, t, _ = features.shape
    if t < k:
        raise ConfigError(f"MGFN selects the top k={k} snippets but the videos have only T={t}")
    scores = scores.reshape(bs, ncrops, -1).mean(1).unsqueeze(2)  # [bs, T, 1]
    magnitudes = torch.linalg.vector_norm(features, ord=2, dim=2).reshape(bs, ncrops, -1).mean(1)  # [bs, T]

    normal_features = features[: batch_size * ncrops]
    abnormal_features = features[batch_size * ncrops :]
    normal_scores, abnormal_scores = scores[:batch_size], scores[batch_size:]
    normal_mags, abnormal_mags = magnitudes[:batch_size], magnitudes[batch_size:]
    if single_video is None:
        single_video = bs == 1
    if single_video:
        if bs != 1:
            raise ConfigError(f"single_video=True needs one video, got {bs}")
        abnormal_features, abnormal_scores, abnormal_mags = normal_features, normal_scores, normal_mags
    elif bs != 2 * batch_size:
        raise ConfigError(
            f"MGFN forward expects 1 video (inference) or 2*batch_size={2 * batch_size} videos "
            f"(normal half then abnormal half), got {bs}"
        )

    mask_abnormal = drop_out(torch.ones_like(normal_mags))
    score_abnormal, abn_feamagnitude = _select_half(
        abnormal_features, abnormal_scores, abnormal_mags, mask_abnormal, ncrops, k
    )
    mask_normal = drop_out(torch.ones_like(normal_mags))
    score_normal, nor_feamagnitude = _select_half(normal_features, normal_scores, normal_mags, mask_normal, ncrops, k)
    return score_abnormal, score_normal, abn_feamagnitude, nor_feamagnitude, scores


def contrastive_loss(x1: torch.Tensor, x2: torch.Tensor, label: float, margin: float = 200.0) -> torch.Tensor:
    """Official ``ContrastiveLoss``: ``mean((1-l) d^2 + l max(0, margin - d)^2)``, ``d = ||x1 - x2 + 1e-6||_2`` per row."""
    d = F.pairwise_distance(x1, x2, keepdim=True)
    return torch.mean((1 - label) * d.pow(2) + label * torch.clamp(margin - d, min=0.0).pow(2))


def _topk_gaps(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``|x[p, t] - y[q, r]|`` for every pair: ``x [P, k], y [Q, k] -> [P, Q, k, k]``."""
    return (x[:, None, :, None] - y[None, :, None, :]).abs()


def paper_mc_terms(
    mag_normal: torch.Tensor, mag_abnormal: torch.Tensor, margin: float, inter_hinge: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The three sums of the paper's Magnitude Contrastive loss, eq. (8)-(10).

    Args:
        mag_normal: ``[P, k]`` top-k feature magnitudes of each normal video (``M_n``).
        mag_abnormal: ``[U, k]`` the same for the abnormal videos (``M_a``).
        margin: ``Margin`` of eq. (8).
        inter_hinge: clamp ``Margin - D`` at 0 (not printed; False = as printed).

    Returns:
        ``(inter, intra_abnormal, intra_normal)`` scalars:
        ``inter = Σ_{p,u} (Margin - max_{t,r} |M_n[p,t] - M_a[u,r]|)`` (eq. 10),
        ``intra_abnormal = Σ_{u,v} min_{t,r} |M_a[u,t] - M_a[v,r]|`` and
        ``intra_normal = Σ_{p,q} min_{t,r} |M_n[p,t] - M_n[q,r]|`` (eq. 9), sums over
        ordered pairs (the ``p = q`` terms are 0). Distances are not squared.
    """
    intra_normal = _topk_gaps(mag_normal, mag_normal).amin(dim=(2, 3)).sum()
    intra_abnormal = _topk_gaps(mag_abnormal, mag_abnormal).amin(dim=(2, 3)).sum()
    inter_terms = margin - _topk_gaps(mag_normal, mag_abnormal).amax(dim=(2, 3))  # [P, U]
    if inter_hinge:
        inter_terms = torch.clamp(inter_terms, min=0.0)
    return inter_terms.sum(), intra_abnormal, intra_normal


def _split_crops(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Official ``x[len/2:]`` vs ``x[:len/2]``: with 10 crops, crops 5-9 vs 0-4 of the same videos."""
    half = x.shape[0] // 2
    return x[half : 2 * half], x[:half]


def official_loss(
    outputs: tuple[torch.Tensor, ...],
    batch_size: int,
    config: MGFNConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of official ``train.py``, or the paper's terms where ``config`` says so
    (formulas in the module docstring).

    Args:
        outputs: the tuple of :func:`official_forward` on ``[normal B; abnormal B]``:
            video scores ``[B, 1]`` x2, selected features ``[N*B, k, F]`` x2 (crop-major),
            crop-averaged snippet scores ``[2B, T, 1]``.
        batch_size: ``B``, videos per class.

    Returns:
        The scalar loss and its parts ``bce, con, con_a, con_n, smooth, sparsity, total``
        (``con``, ``con_a``, ``con_n`` unweighted; ``bce`` is ``L_sce`` per clip with
        ``classification="paper_clip"``).
    """
    score_abnormal, score_normal, abn_sel, nor_sel, scores = outputs
    cfg = config
    s = scores.squeeze(2)  # [2B, T] crop-averaged snippet scores

    if cfg.classification == "official":
        video_scores = torch.cat([score_normal, score_abnormal], 0).reshape(-1)
        labels = torch.cat([torch.zeros_like(score_normal), torch.ones_like(score_abnormal)], 0).reshape(-1)
        bce = F.binary_cross_entropy(video_scores, labels)
    else:  # "paper_clip": L_sce on every clip, labelled with its video's label
        clip_labels = torch.cat([torch.zeros_like(s[:batch_size]), torch.ones_like(s[batch_size:])], 0)
        bce = F.binary_cross_entropy(s, clip_labels)

    abn_norm = torch.linalg.vector_norm(abn_sel, ord=cfg.con_norm_p, dim=2)  # [N*B, k]
    nor_norm = torch.linalg.vector_norm(nor_sel, ord=cfg.con_norm_p, dim=2)
    zero = s.new_zeros(())
    if cfg.contrastive_pairs == "crops":
        con = contrastive_loss(abn_norm, nor_norm, 1, cfg.margin)
        a_hi, a_lo = _split_crops(abn_norm)
        n_hi, n_lo = _split_crops(nor_norm)
        con_a = contrastive_loss(a_hi, a_lo, 0, cfg.margin) if a_lo.shape[0] else zero
        con_n = contrastive_loss(n_hi, n_lo, 0, cfg.margin) if n_lo.shape[0] else zero
    else:  # "videos": paper eq. (8)-(10) on crop-averaged top-k magnitudes, all video pairs
        n = score_normal.shape[0]
        m_a = abn_norm.reshape(-1, n, abn_norm.shape[1]).mean(0)  # [B, k]
        m_n = nor_norm.reshape(-1, n, nor_norm.shape[1]).mean(0)
        con, con_a, con_n = paper_mc_terms(m_n, m_a, cfg.margin, cfg.mc_inter_hinge)

    if cfg.sparsity == "official":
        sparsity = torch.linalg.vector_norm(s[:batch_size].reshape(-1), ord=2)
    else:
        sparsity = s[batch_size:].sum(dim=1).mean()
    diffs = (s[:, 1:] - s[:, :-1]).pow(2)
    if cfg.smoothness == "official":
        smooth = diffs.sum()
    else:
        smooth = diffs[batch_size:].sum(dim=1).mean()

    total = (
        bce
        + cfg.mc_weight * (cfg.con_inter_weight * con + con_a + con_n)
        + cfg.smooth_weight * smooth
        + cfg.sparsity_weight * sparsity
    )
    parts = {
        "bce": float(bce.detach()),
        "con": float(con.detach()),
        "con_a": float(con_a.detach()),
        "con_n": float(con_n.detach()),
        "smooth": float((cfg.smooth_weight * smooth).detach()),
        "sparsity": float((cfg.sparsity_weight * sparsity).detach()),
        "total": float(total.detach()),
    }
    return total, parts


# --------------------------------------------------------------------------- model


class MGFN(AnomalyHead):
    """The MGFN head; module attributes and their order follow the official ``mgfn`` class.

    Official state-dict keys: ``to_tokens.{weight,bias}``, ``stages.{i}.0.layers.{j}.0.*``
    (conv k3), ``stages.{i}.0.layers.{j}.1.*`` (mixer: glance ``norm.{g,b}, to_qkv.weight,
    to_out.*``; focus ``norm.{weight,bias,running_mean,running_var,num_batches_tracked},
    to_v.weight, rel_pos.*, to_out.*``), ``stages.{i}.0.layers.{j}.2.{0.g,0.b,1.*,4.*}``
    (feed-forward), ``stages.{i}.1.{0.g,0.b,1.weight,1.bias}`` (projection, not after the
    last stage), ``to_logits.0.{weight,bias}``, ``fc.{weight,bias}``, ``to_mag.{weight,bias}``.
    """

    def __init__(self, config: MGFNConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config if config is not None else MGFNConfig()
        init_dim, last_dim = cfg.dims[0], cfg.dims[-1]
        self.to_tokens = nn.Conv1d(cfg.feature_dim, init_dim, kernel_size=3, stride=1, padding=1)
        self.stages = nn.ModuleList()
        for i, (depth, mixer, heads) in enumerate(zip(cfg.depths, cfg.mgfn_types, cfg.heads)):
            dim = cfg.dims[i]
            is_last = i == len(cfg.depths) - 1
            backbone = Backbone(
                dim=dim,
                depth=depth,
                heads=heads,
                mgfn_type=mixer,
                kernel=cfg.local_aggr_kernel,
                dim_headnumber=cfg.dim_head,
                ff_repe=cfg.ff_repe,
                dropout=cfg.ff_dropout,
                attention_dropout=cfg.attention_dropout,
            )
            projection = None if is_last else nn.Sequential(ChannelLayerNorm(dim), nn.Conv1d(dim, cfg.dims[i + 1], 1))
            self.stages.append(nn.ModuleList([backbone, projection]))
        self.to_logits = nn.Sequential(nn.LayerNorm(last_dim))
        self.fc = nn.Linear(last_dim, 1)
        self.sigmoid = nn.Sigmoid()
        self.drop_out = nn.Dropout(cfg.dropout_rate)
        self.to_mag = nn.Conv1d(1, init_dim, kernel_size=3, stride=1, padding=1)

    # -- official forward pieces

    def _check_input(self, video: torch.Tensor, channels: int) -> None:
        if video.dim() != 4 or video.shape[-1] != channels:
            raise ConfigError(
                f"MGFN expects [B, N, T, {channels}] features, got {tuple(video.shape)} "
                f"(config.feature_dim={self.config.feature_dim})"
            )

    def embed(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``video [bs, N, T, D+1]`` (magnitude last) -> (final LN-ed features ``[bs*N, T, dims[-1]]``,
        sigmoid scores ``[bs*N, T, 1]``), crops folded video-major."""
        self._check_input(video, self.config.feature_dim + 1)
        bs, ncrops, t, c = video.shape
        x = video.reshape(bs * ncrops, t, c).permute(0, 2, 1)
        fd = self.config.feature_dim
        x_f = self.to_tokens(x[:, :fd, :]) + self.config.mag_ratio * self.to_mag(x[:, fd:, :])
        for backbone, projection in self.stages:
            x_f = backbone(x_f)
            if projection is not None:
                x_f = projection(x_f)
        feats = self.to_logits(x_f.permute(0, 2, 1))
        return feats, self.sigmoid(self.fc(feats))

    def forward(
        self, video: torch.Tensor, batch_size: int | None = None, single_video: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The official forward: ``video [bs, N, T, D+1]`` -> ``(score_abnormal, score_normal,
        abn_feamagnitude, nor_feamagnitude, scores)`` (see :func:`select_top_magnitudes`).

        ``bs`` is 1 (inference) or ``2 * batch_size`` (normal videos first);
        ``batch_size`` defaults to ``config.batch_size`` as in the official constructor;
        ``single_video`` as in :func:`select_top_magnitudes`.
        """
        batch_size = self.config.batch_size if batch_size is None else batch_size
        bs, ncrops = video.shape[:2]
        feats, scores = self.embed(video)
        return select_top_magnitudes(
            feats, scores, bs, batch_size, self.drop_out, ncrops, self.config.k, single_video=single_video
        )

    # -- AnomalyHead interface

    def loss(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Official training loss on ``normal``/``abnormal`` ``[B, N, T, D]`` (no magnitude channel).

        The magnitude channel is appended here, from the features as given: pass features
        already resampled to ``config.seg_length`` segments, as the official dataset does.
        """
        self._check_input(normal, self.config.feature_dim)
        self._check_input(abnormal, self.config.feature_dim)
        if normal.shape != abnormal.shape:
            raise ConfigError(
                f"MGFN needs balanced batches of equal shape, got normal {tuple(normal.shape)} "
                f"and abnormal {tuple(abnormal.shape)}"
            )
        b = normal.shape[0]
        video = torch.cat([add_magnitude(normal), add_magnitude(abnormal)], 0)
        outputs = self(video, batch_size=b, single_video=False)
        return official_loss(outputs, b, self.config)

    def snippet_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Crop-averaged sigmoid scores ``[B, T]`` of ``features [B, N, T, D]`` (official test path).

        The magnitude channel is appended per snippet and crop. Call ``eval()`` first: the
        focus blocks' BatchNorm uses batch statistics in training mode.
        """
        self._check_input(features, self.config.feature_dim)
        b, n, t, _ = features.shape
        _, scores = self.embed(add_magnitude(features))
        return scores.reshape(b, n, t).mean(dim=1)


def official_forward(
    model: MGFN, video: torch.Tensor, batch_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reproduce the official ``mgfn.forward`` output tuple (``video`` has the magnitude channel)."""
    return model(video, batch_size=batch_size)


# --------------------------------------------------------------------------- checkpoints


MGFN_CHECKPOINT_FORMAT = register_checkpoint_format(
    CheckpointFormat(
        head="mgfn",
        description=(
            "a PyTorch state dict saved by the official MGFN code (github.com/carolchenyx/MGFN., main.py: "
            "torch.save(model.state_dict(), savepath + '/mgfn<step>-i3d.pkl'), or './ckpt/mgfnfinal.pkl') "
            "with 145 keys for the default config, such as 'to_tokens.weight' [64, 2048, 3], "
            "'to_mag.weight' [64, 1, 3], 'stages.0.0.layers.0.1.to_qkv.weight' [192, 64, 1], "
            "'stages.2.0.layers.1.1.rel_pos.weight' [16, 1, 5], 'stages.1.1.1.weight' [1024, 128, 1], "
            "'to_logits.0.weight' [1024], 'fc.weight' [1, 1024]; the head's feature_dim must match the "
            "checkpoint (2048 for UCF-Crime/ShanghaiTech I3D, 1024 for XD-Violence)"
        ),
    )
)


def load_official_checkpoint(path: str | os.PathLike[str], config: MGFNConfig | None = None) -> MGFN:
    """Build :class:`MGFN` from ``config`` and load an official checkpoint into it (strict).

    Uses :func:`vadpipe.heads.checkpoints.load_official_state_dict`: ``weights_only=True``,
    ``module.`` prefixes stripped, ``{"state_dict": ...}`` unwrapped, every missing,
    unexpected or mis-shaped key reported in a ``CheckpointMismatchError``
    (a :class:`~vadpipe.errors.WeightsIntegrityError`).
    """
    model = MGFN(config)
    load_official_state_dict(path, "mgfn", model)
    return model


def build_optimizer(params: Any, config: MGFNConfig) -> torch.optim.Optimizer:
    """Official optimiser: ``Adam(lr=1e-3, weight_decay=5e-4)``."""
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


register_head(
    HeadSpec(
        name="mgfn",
        config_cls=MGFNConfig,
        build=MGFN,
        optimizer=build_optimizer,
        description="MGFN (Chen et al. 2023): glance/focus blocks, feature amplification, magnitude-contrastive loss",
        presets={"paper": dict(MGFN_PAPER_SETTINGS)},  # vadpipe train --head mgfn --preset paper
    )
)
