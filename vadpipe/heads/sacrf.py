"""SA-CRF: self-attention conditional random field with contrastive MIL (Purwanto et al.).

Paper: "Dance with Self-Attention: A New Look of Conditional Random Fields on Anomaly
Detection in Videos" (Purwanto, Chen, Fang, ICCV 2021). There is **no public code**: this
module is built from the paper's Secs. 3.3-3.4, Algorithm 1 and Sec. 4.2 only. The
stage-one relation-aware TRN/ResNet-50 extractor (Sec. 3.2) is *not* part of this head.

Input layout
------------
The head takes the usual ``[B, N, T, D]`` tensors, but **the second axis is the G patch nodes
of each clip, not crops**: for the paper's multi-scale ResNet-50 extractor (partition scale
3) ``G = 1 + 4 + 9 = 14`` patch features per snippet (whole frame, 2x2 and 3x3 grids), each
pooled to ``D = 2048`` channels. Any ``G >= 1`` works; ``G = 1`` is plain ``[T, F]``
snippet features (one node per snippet), and multi-crop features can be fed as well (each
crop is then treated as one node of the clip). Inside the head nodes are ``[B, T, G, ...]``
(clip-major, dense index ``t * G + g``). The paper's "frame j" is one snippet (clip) here.

Model (per video: ``T`` clips, ``n = T * G`` nodes with features ``b``)
---------------------------------------------------------------------
* Cliques (Sec. 3.3.3): ``C_t^tau`` = all G nodes of ``tau`` consecutive clips that include
  clip ``t`` (``tau * G`` nodes). Which ``tau - 1`` neighbours: ``clique_window`` (below).
* Self-attention per clique, combined over the localities ``K`` (eqs. 1, 3, 4)::

      A^tau[(t,g), (t',g')] = softmax_{(t',g') in C_t^tau} (theta1(b_tg) . theta2(b_t'g') / sqrt(d_a))
      A = sum_tau w_tau A^tau,      H = A theta3(B)                 ([B, T, G, C])

  and the *message* attention ``Â`` (eq. 6, "(i', j') != (i, j)"): the same with the node
  itself removed from every clique before the softmax. A clique with no other node (tau = 1,
  G = 1) contributes a zero row (zero message), so ``Â`` rows sum to at most 1.
  Implemented banded: each clip attends to a window of ``W`` clips that holds all its
  cliques (``W = max tau`` for the nested default windows), so memory is linear in T;
  :func:`clique_mask` gives the dense masks for reference.
* Mean-field inference (Algorithm 1, eqs. 5-8), energies ``E`` with ``P ∝ exp(-E)``::

      E_u = f_u(B)                         (linear D -> 2, eq. 5)
      Q^0 = softmax(-E_u)
      repeat:  E_p = Â (f_p(theta3(B)) + Q^l) U      (message passing, compatibility transform)
               Q^{l+1} = softmax(-E_u - E_p)          (unary, normalisation, softmax)

  ``U`` is a trainable symmetric 2x2 matrix initialised to the Potts model
  ``[[0, 1], [1, 0]]``; ``f_p`` a linear layer ``C -> 2``. The message from a clique
  neighbour is its feature-based label prediction ``f_p(theta3(b'))`` (eqs. 6-7) plus its
  current marginal (mean field). With Potts ``U`` an anomalous neighbour raises the energy of
  the *normal* label: the CRF pulls a node towards its clique's labels.
* Snippet score = anomaly marginal ``Q[..., 1]`` pooled over the G nodes (``node_pool``,
  max by default) -> ``[B, T]`` in ``[0, 1]``.

Training objective (eq. 9)::

    L = L_bn + alpha1 * L_sp + alpha2 * L_ts + lambda_cs * L_cs

* ``L_bn``: BCE of each video's score = mean of its top-k snippet scores against the video
  label (0 normal, 1 anomalous), averaged over the 2B videos (:func:`sacrf_mil_bce`).
* ``L_sp`` = ``mean_videos sum_t s_t``, ``L_ts`` = ``mean_videos sum_t (s_{t+1} - s_t)^2``
  on the abnormal videos' snippet scores (Sultani et al. [1]).
* ``L_cs`` (contrastive MIL, :func:`sacrf_contrastive`): per video, the centroid of the
  self-attention embeddings ``h`` of its top-k nodes (by anomaly marginal), L2-normalised;
  for every (abnormal, normal) pair ``d = ||c_a - c_n||^2`` (in [0, 4]) and
  ``L_cs = mean_pairs max(0, margin - d)``.

Paper -> code
-------------
=================================  ==========================================================
Paper                              Code (``SACRFConfig`` field / function)
=================================  ==========================================================
Sec. 3.2 nodes ``b_{i,j}``, G=14   the ``N`` axis of the input; ``feature_dim`` D = 2048
Sec. 3.3.1 graph over K frames     one graph per video (all its ``T`` clips); edges only
                                   inside cliques ("confined ... to a prescribed set of
                                   cliques", Sec. 3.3.4)
eq. (1) ``p = exp(θ1ᵀθ2)``         ``theta1``, ``theta2`` (width ``attn_dim``); softmax per
                                   clique, scaled by ``1/sqrt(attn_dim)`` [D2]
eq. (2) total CRF energy           not computed; only its mean-field marginals (eq. 8)
Sec. 3.3.3 clique ``C_j^τ``        :func:`clique_bounds` / :func:`clique_mask`: τ clips,
                                   τG nodes; ``clique_window``, ``clique_edges`` [D1]
eq. (3) ``h̄^τ``                    ``SACRFHead.attention`` (context attention, node itself
                                   included, as the eq.'s sum over all of ``C_j^τ``) applied
                                   to ``theta3`` (width ``embed_dim``) of the *key* nodes [D3]
eq. (4) ``h = Σ w_τ h̄^τ``, K       ``localities`` = K = (1, 2, 4, 6, 8) (Table 2's best);
                                   ``clique_weighting``: softmax of ``clique_logits`` or free
                                   scalars [D4]; ``forward()["embeddings"]`` = H
eq. (5) ``e^u = f_u(b)``, linear   ``f_u = nn.Linear(D, 2)`` (``unary_hidden = 0``); MLP
                                   optional (``unary_hidden > 0``, ReLU, ``dropout``)
eq. (6) pairwise, (i',j') != (i,j) message attention ``Â`` (self removed, zero row for a
                                   lone node), Potts ``u`` via ``U``; marginals added [D5]
eq. (7) ``E_p = f_p(H) U``, U sym. ``f_p = nn.Linear(C, 2)``; ``compat`` -> ``compatibility``
                                   = ``(P + Pᵀ)/2``, Potts init
eq. (8) ``W = exp(-(e^u+e^p))/Z``  ``softmax(-E_u - E_p)`` in ``SACRFHead.mean_field``
Algorithm 1                        ``SACRFHead.mean_field``: steps 2-4 -> ``Q^0``; 6-7 ->
                                   ``E_p``; 8-10 -> one softmax; ``mf_iterations`` passes [D6]
eq. (9) ``L_total``                ``SACRFHead.loss``; ``lambda_cs`` = 1 (eq. 9 has none)
``L_bn`` (BCE on marginals)        :func:`sacrf_mil_bce`, video level, top-``k`` mean [D7]
``L_sp``, ``L_ts`` [1]             :func:`sacrf_sparsity`, :func:`sacrf_smoothness` [D8]
eq. (10) ``L_cs``                  :func:`sacrf_contrastive`, hinge (``margin``) [D9]
``v = f_s(h)`` (Sec. 3.4)          identified with the CRF anomaly marginal [D7]
Sec. 4.2 G = 14 (scale 3)          input ``N`` axis; ``node_pool`` max over G [D7]
Sec. 4.2 dynamic halting           ``halting_tol`` (1e-3), cap ``mf_iterations`` (10) [D6]
Sec. 4.2 Adam, lr 1e-4, wd 1e-5    :func:`sacrf_optimizer`; ``lr``, ``weight_decay``
Sec. 4.2 batch 32, 50 epochs       ``batch_size`` 32 (per class), ``max_steps`` 1250 [D10]
Sec. 4.2 α1 = α2 = 8e-5            ``alpha1``, ``alpha2``
Sec. 4.2 backbone SGD, momentum    stage one (extractor), not this head; its dropout 0.8
0.9, wd 5e-4, warm-up, dropout     too (``dropout`` here defaults to 0); "global max
0.8, batch 18/16, 100/225 epochs   pooling" of the patches (vs "average" in Sec. 3.2) is
                                   the extractor's choice as well
=================================  ==========================================================

Departures and readings (where the paper is silent or inconsistent)
------------------------------------------------------------------
D1. *Which* ``tau - 1`` adjacent clips (Sec. 3.3.3 does not say): ``clique_window``
    ``"centred"`` (default) takes ``floor(tau/2)`` past and ``ceil(tau/2) - 1`` future clips,
    i.e. ``[t - tau//2, t - tau//2 + tau - 1]``: for odd ``tau`` symmetric, for even ``tau``
    the extra clip is on the **past** side (the convention of ``pandas.rolling(center=True)``;
    it keeps the look-ahead, and so the latency of a streaming scorer, one clip shorter than
    the look-back). "Adjacent" reads most naturally as both sides; ``"past"`` (clips
    ``t - tau + 1 .. t``) and ``"future"`` (``t .. t + tau - 1``) are the alternatives.
    At the video ends ``clique_edges = "shift"`` (default) slides the window inside the
    video so every clique keeps exactly ``tau`` clips (``tau * G`` nodes, as the paper
    says) whenever ``T >= tau`` (a video shorter than ``tau`` gives one clique of all its
    clips); ``"truncate"`` cuts the window at the ends instead (fewer nodes there).
D2. Eq. (1) is unnormalised and eq. (3) sums ``p * theta3`` without normalisation; we use
    softmax attention normalised within each clique (the ``1/Z`` of [27, 37]), scaled by
    ``1/sqrt(attn_dim)`` (``scaled_attention``; ``False`` gives the plain ``exp(θ1ᵀθ2)``).
D3. Eq. (3) applies the weights to ``theta3(b_{i,j})`` (the query node; the sum would then
    be a multiple of the node's own embedding) -- read as a typo for the key node
    ``b_{i',j'}``, as in [27].
D4. ``w_tau`` "trainable scalar weight" (eq. 4): ``clique_weighting = "softmax"`` (default)
    learns logits (init 0 = uniform) so ``A`` stays row-stochastic and the mean-field update
    a contraction (D6); ``"free"`` uses raw scalars (init ``1/|K|``).
D5. Eq. (6) is written with ``f_p(θ3(b_{i,j}))`` of the node itself and without the
    neighbour's label; eq. (7) / Algorithm 1 step 6 use ``f_p(H)``, which would not depend
    on the marginals (the loop would not iterate anything). We read it as mean field with
    feature-based label predictions of the neighbours: ``E_p = Â (f_p(θ3(B)) + Q) U``
    (``f_p`` applied per neighbour, *then* aggregated, so a lone node gets exactly zero
    message; the feature and marginal parts are both excluded from the node itself).
D6. Algorithm 1 "adds" ``Ê`` in step 8 while the text subtracts the unary energy; we follow
    eq. (8) and CRF-as-RNN [33]: logits ``-E_u - E_p``; steps 3-4 and 9-10 (normalise, then
    softmax) collapse into one softmax. ``while l <= max_iter`` (max_iter + 1 passes) is read
    as ``mf_iterations`` passes. Dynamic halting (Sec. 4.2, criterion not given): a video
    stops once ``max |Q^{l+1} - Q^l| < halting_tol``, at most ``mf_iterations`` passes;
    ``halting_tol = None`` runs the fixed count. With Potts ``U`` and softmax clique weights
    the update is a sup-norm contraction (factor ``|U00 + U11 - U01 - U10| / 4 * max row
    sum of Â <= 0.5``), so it converges.
D7. The MIL regressor ``v = f_s(h)`` is identified with the CRF: a node's anomaly marginal
    is its score ("BCE on the marginal distribution"). Only video labels exist, so ``L_bn``
    is BCE of the top-``k`` (3, as RTFM) mean snippet score. Snippet score = **max** over
    the G nodes (an anomaly may be local to one patch); ``node_pool = "mean"`` is available.
D8. Sparsity/smoothness on the abnormal videos' snippet scores, per video summed over
    snippets and averaged over videos (Sultani [1]).
D9. Eq. (10) is a plain mean of squared distances between positive- and negative-bag
    embeddings; minimised literally it would *pull* the bags together, contradicting its
    stated purpose (and maximised it is unbounded), and positive bags contain normal nodes.
    We use the hinge of ``L_cs`` above on the top-``k`` (most anomalous) nodes with
    normalised centroids (without normalisation the margin is met by scaling theta3).
D10. "Batch 32 for 50 epochs": one step = 32 normal + 32 abnormal videos (as RTFM);
    UCF-Crime has ~800 videos per class, so ``max_steps = 1250`` ≈ 50 epochs. Training
    videos are resampled to ``segments = 32`` snippets (Sultani/RTFM convention; not stated).
D11. Not given by the paper: ``attn_dim`` (128), ``embed_dim`` C (256), ``margin`` (1).

Checkpoints written before cliques were ``tau`` clips (when locality ``l`` meant the
``2 l + 1`` clips ``|t - t'| <= l``) load with the new meaning of ``localities``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from vadpipe.errors import ConfigError
from vadpipe.heads.base import AnomalyHead, HeadSpec, register_head

__all__ = [
    "SACRFConfig",
    "SACRFHead",
    "BandedAttention",
    "CliqueBands",
    "clique_bounds",
    "clique_bands",
    "clique_mask",
    "apply_banded",
    "banded_to_dense",
    "sacrf_sparsity",
    "sacrf_smoothness",
    "sacrf_mil_bce",
    "sacrf_contrastive",
    "sacrf_optimizer",
]

NodePool = Literal["max", "mean"]
CliqueWindow = Literal["centred", "past", "future"]
CliqueEdges = Literal["shift", "truncate"]
CliqueWeighting = Literal["softmax", "free"]

CLIQUE_WINDOWS: tuple[str, ...] = ("centred", "past", "future")
CLIQUE_EDGES: tuple[str, ...] = ("shift", "truncate")
CLIQUE_WEIGHTINGS: tuple[str, ...] = ("softmax", "free")
NODE_POOLS: tuple[str, ...] = ("max", "mean")
PAPER_LOCALITIES: tuple[int, ...] = (1, 2, 4, 6, 8)  # Table 2, best set K
POTTS: tuple[tuple[float, float], tuple[float, float]] = ((0.0, 1.0), (1.0, 0.0))  # u(z, z') = [z != z']
NUM_LABELS = 2  # 0 normal, 1 anomalous


@dataclass
class SACRFConfig:
    """Hyper-parameters of SA-CRF (paper values where it gives them; see the module docstring,
    "Paper -> code" and the departures D1-D11).

    Attributes:
        feature_dim: node feature size D (2048 for ResNet-50 patch features; set from data).
        attn_dim: width of the query/key embeddings theta1, theta2 (D11).
        embed_dim: width C of the value embedding theta3 (= self-attention output H, D11).
        unary_hidden: hidden width of the unary classifier f_u; 0 (default): linear, as eq. 5.
        localities: the set K of clique temporal localities tau, each a number of clips
            (paper best: 1, 2, 4, 6, 8).
        clique_window: which ``tau - 1`` clips join clip t (D1): ``"centred"`` (extra clip of
            an even tau on the past side), ``"past"`` or ``"future"``.
        clique_edges: at the video ends ``"shift"`` the window to keep ``tau`` clips, or
            ``"truncate"`` it (D1).
        clique_weighting: ``"softmax"`` of learned logits or ``"free"`` scalars w_tau (D4).
        scaled_attention: scale the attention logits by ``1/sqrt(attn_dim)`` (D2).
        mf_iterations: mean-field passes (the cap when ``halting_tol`` is set).
        halting_tol: dynamic halting: stop a video once ``max |ΔQ| <`` this; ``None``: always
            run ``mf_iterations`` passes (D6).
        node_pool: ``"max"`` or ``"mean"`` of the anomaly marginal over the G nodes.
        k: top-k snippets (BCE video score) and top-k nodes (contrastive centroids).
        alpha1: sparsity weight (8e-5). alpha2: smoothness weight (8e-5).
        lambda_cs: contrastive weight (1, eq. 9). margin: hinge margin on the squared
            distance of L2-normalised centroids (in [0, 4]).
        dropout: dropout on the unary hidden layer and the value embeddings.
        lr, weight_decay: Adam (1e-4, 1e-5). batch_size: videos per class (32).
        max_steps: training steps (1250 ≈ 50 epochs of UCF-Crime). segments: snippets per
            training video (32).
    """

    feature_dim: int = 2048
    attn_dim: int = 128
    embed_dim: int = 256
    unary_hidden: int = 0
    localities: tuple[int, ...] = PAPER_LOCALITIES
    clique_window: CliqueWindow = "centred"
    clique_edges: CliqueEdges = "shift"
    clique_weighting: CliqueWeighting = "softmax"
    scaled_attention: bool = True
    mf_iterations: int = 10
    halting_tol: float | None = 1e-3
    node_pool: NodePool = "max"
    k: int = 3
    alpha1: float = 8e-5
    alpha2: float = 8e-5
    lambda_cs: float = 1.0
    margin: float = 1.0
    dropout: float = 0.0
    lr: float = 1e-4
    weight_decay: float = 1e-5
    batch_size: int = 32
    max_steps: int = 1250
    segments: int = 32

    def __post_init__(self) -> None:
        self.localities = tuple(int(l) for l in self.localities)  # type: ignore[assignment]
        for name in ("feature_dim", "attn_dim", "embed_dim", "mf_iterations", "k", "batch_size", "max_steps",
                     "segments"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"SA-CRF {name} must be positive, got {getattr(self, name)}")
        if self.unary_hidden < 0:
            raise ConfigError(f"SA-CRF unary_hidden must be >= 0, got {self.unary_hidden}")
        if not self.localities or min(self.localities) < 1 or len(set(self.localities)) != len(self.localities):
            raise ConfigError(
                f"SA-CRF localities must be distinct clip counts tau >= 1 (paper: {PAPER_LOCALITIES}), "
                f"got {self.localities}"
            )
        choices = (("clique_window", CLIQUE_WINDOWS), ("clique_edges", CLIQUE_EDGES),
                   ("clique_weighting", CLIQUE_WEIGHTINGS), ("node_pool", NODE_POOLS))
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"SA-CRF {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.scaled_attention, bool):
            raise ConfigError(f"SA-CRF scaled_attention must be a bool, got {self.scaled_attention!r}")
        if self.halting_tol is not None and not self.halting_tol > 0:
            raise ConfigError(f"SA-CRF halting_tol must be positive or None, got {self.halting_tol}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"SA-CRF dropout must be in [0, 1), got {self.dropout}")
        for name in ("alpha1", "alpha2", "lambda_cs", "margin", "lr", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SA-CRF {name} must be >= 0, got {getattr(self, name)}")


# ----------------------------------------------------------------------------------------
# Cliques (Sec. 3.3.3)
# ----------------------------------------------------------------------------------------


def _lookback(tau: int, window: str) -> int:
    """Past clips of an interior clique of ``tau`` clips (D1)."""
    if window == "centred":
        return tau // 2  # even tau: the extra clip is on the past side
    if window == "past":
        return tau - 1
    if window == "future":
        return 0
    raise ConfigError(f"SA-CRF clique_window must be one of {CLIQUE_WINDOWS}, got {window!r}")


def clique_bounds(
    t: int, tau: int, window: str = "centred", edges: str = "shift", device: torch.device | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips of the clique ``C_t^tau`` of every clip ``t`` of a ``T``-clip video.

    Args:
        t: number of clips T. tau: temporal locality (clips per clique, >= 1).
        window, edges: ``SACRFConfig.clique_window`` / ``clique_edges`` (D1).

    Returns:
        ``start``, ``stop`` (long ``[T]``): the clique of clip ``t`` is clips
        ``start[t] .. stop[t] - 1``; ``stop - start == min(tau, T)`` with ``"shift"``.
    """
    if tau < 1:
        raise ConfigError(f"SA-CRF clique locality must be >= 1, got {tau}")
    if edges not in CLIQUE_EDGES:
        raise ConfigError(f"SA-CRF clique_edges must be one of {CLIQUE_EDGES}, got {edges!r}")
    clips = torch.arange(t, device=device)
    start = clips - _lookback(tau, window)
    if edges == "shift":
        start = start.clamp(0, max(t - tau, 0))
        stop = (start + tau).clamp(max=t)
    else:
        stop = (start + tau).clamp(max=t)
        start = start.clamp(min=0)
    return start, stop


def clique_mask(
    t: int, g: int, tau: int, window: str = "centred", edges: str = "shift", include_self: bool = True,
) -> torch.Tensor:
    """Dense bool mask ``[T*G, T*G]``: row ``t * G + g`` marks the nodes of ``C_t^tau`` (all
    G nodes of its clips); ``include_self=False`` removes the node itself (eq. 6). A
    reference for the banded implementation."""
    start, stop = clique_bounds(t, tau, window, edges)
    clip = torch.arange(t).repeat_interleave(g)  # [n] clip of each node
    mask = (clip[None, :] >= start[clip][:, None]) & (clip[None, :] < stop[clip][:, None])
    if not include_self:
        mask &= ~torch.eye(t * g, dtype=torch.bool)
    return mask


@dataclass(frozen=True)
class CliqueBands:
    """Banded layout of the cliques of a ``T``-clip video: clip ``t`` sees the ``W`` clips
    ``index[t]`` (a window holding all its cliques).

    Attributes:
        index: long ``[T, W]``, clip of window slot ``w`` of clip ``t`` (clamped to
            ``T - 1`` where the window runs past the video; such slots are in no clique).
        member: bool ``[K, T, W]``, slot ``w`` of clip ``t`` is in ``C_t^tau`` of locality ``k``.
        own: bool ``[T, W]``, slot ``w`` of clip ``t`` is clip ``t`` itself.
    """

    index: torch.Tensor
    member: torch.Tensor
    own: torch.Tensor


def clique_bands(
    t: int, localities: tuple[int, ...], window: str = "centred", edges: str = "shift",
    device: torch.device | None = None,
) -> CliqueBands:
    """The :class:`CliqueBands` of all ``localities`` for ``T = t`` clips."""
    bounds = [clique_bounds(t, tau, window, edges, device) for tau in localities]
    starts = torch.stack([s for s, _ in bounds])  # [K, T]
    stops = torch.stack([e for _, e in bounds])
    first = starts.amin(dim=0)  # [T]
    width = int((stops.amax(dim=0) - first).max())
    raw = first[:, None] + torch.arange(width, device=device)[None, :]  # [T, W]
    member = (raw[None] >= starts[:, :, None]) & (raw[None] < stops[:, :, None])
    own = raw == torch.arange(t, device=device)[:, None]
    return CliqueBands(index=raw.clamp(max=t - 1), member=member, own=own)


class BandedAttention(NamedTuple):
    """Attention in banded layout.

    Attributes:
        weights: ``[B, T, G, W, G]``: weight of node ``(t, g)`` on node ``(index[t, w], h)``.
        index: long ``[T, W]`` (see :class:`CliqueBands`).
    """

    weights: torch.Tensor
    index: torch.Tensor


def _window(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [B, T, ...]`` gathered along time by ``index [T, W]`` -> ``[B, T, W, ...]``
    (``index_select``: its backward is ~2x faster on CPU than advanced indexing's)."""
    picked = x.index_select(1, index.reshape(-1))
    return picked.reshape(x.shape[0], *index.shape, *x.shape[2:])


def apply_banded(attn: BandedAttention, values: torch.Tensor) -> torch.Tensor:
    """``out[b, t, g] = sum_{w, h} weights[b, t, g, w, h] * values[b, index[t, w], h]``.

    Args:
        attn: banded attention with weights ``[B, T, G, W, G]``.
        values: ``[B, T, G, c]``.

    Returns:
        ``[B, T, G, c]``.
    """
    window = _window(values, attn.index)  # [B, T, W, G, c]
    return torch.einsum("btgwh,btwhc->btgc", attn.weights, window)


def banded_to_dense(attn: BandedAttention) -> torch.Tensor:
    """The dense ``[B, T*G, T*G]`` matrix of a banded attention (rows and columns in node
    order ``t * G + g``; for tests and inspection)."""
    b, t, g, w, _ = attn.weights.shape
    rows = torch.arange(t, device=attn.index.device)[:, None].expand(t, w)
    dense = attn.weights.new_zeros(t, t, b, g, g)  # [T (row clip), T (column clip), B, G, G]
    # slots clamped onto the last clip carry weight 0: accumulate rather than overwrite
    dense.index_put_((rows, attn.index), attn.weights.permute(1, 3, 0, 2, 4), accumulate=True)
    dense = dense.permute(2, 0, 3, 1, 4)  # [B, T, G, T, G]
    return dense.reshape(b, t * g, t * g)


def _masked_softmax(scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Softmax of ``scores [B, T, G, W, G]`` over the allowed ``(w, h)`` of each row; rows
    with no allowed entry are all zero (zero message, not NaN)."""
    b, t, g, w, _ = scores.shape
    flat = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min).reshape(b, t, g, w * g)
    return torch.softmax(flat, dim=-1).reshape(scores.shape) * allowed


# ----------------------------------------------------------------------------------------
# Head
# ----------------------------------------------------------------------------------------


class SACRFHead(AnomalyHead):
    """SA-CRF head; see the module docstring for the model, the loss and the departures."""

    def __init__(self, config: SACRFConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else SACRFConfig()
        cfg = self.config
        d = cfg.feature_dim
        self.theta1 = nn.Linear(d, cfg.attn_dim)
        self.theta2 = nn.Linear(d, cfg.attn_dim)
        self.theta3 = nn.Linear(d, cfg.embed_dim)
        if cfg.unary_hidden:
            self.f_u: nn.Module = nn.Sequential(nn.Linear(d, cfg.unary_hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                                nn.Linear(cfg.unary_hidden, NUM_LABELS))
        else:
            self.f_u = nn.Linear(d, NUM_LABELS)  # eq. 5: a linear classifier
        self.f_p = nn.Linear(cfg.embed_dim, NUM_LABELS)
        n_cliques = len(cfg.localities)
        init = 0.0 if cfg.clique_weighting == "softmax" else 1.0 / n_cliques
        # logits of w_tau ("softmax") or w_tau themselves ("free")
        self.clique_logits = nn.Parameter(torch.full((n_cliques,), init))
        self.compat = nn.Parameter(torch.tensor(POTTS))
        self.drop = nn.Dropout(cfg.dropout)
        self.last_iterations: int = 0
        self.last_deltas: list[float] = []

    # -- building blocks -------------------------------------------------------------

    def _check_input(self, x: torch.Tensor, name: str) -> None:
        if x.dim() != 4:
            raise ValueError(f"SA-CRF expects {name} of shape [B, G, T, D], got {tuple(x.shape)}")
        if x.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"SA-CRF configured for feature_dim={self.config.feature_dim} but {name} has D={x.shape[-1]}"
            )

    @property
    def compatibility(self) -> torch.Tensor:
        """The symmetric compatibility matrix ``U`` (2x2, eq. 7)."""
        return 0.5 * (self.compat + self.compat.t())

    @property
    def clique_weights(self) -> torch.Tensor:
        """``w_tau`` of eq. 4, ``[K]`` (D4)."""
        if self.config.clique_weighting == "softmax":
            return torch.softmax(self.clique_logits, dim=0)
        return self.clique_logits

    def bands(self, t: int, device: torch.device | None = None) -> CliqueBands:
        """The clique layout of a ``t``-clip video under this config."""
        cfg = self.config
        return clique_bands(t, cfg.localities, cfg.clique_window, cfg.clique_edges, device)

    def attention(self, nodes: torch.Tensor) -> tuple[BandedAttention, BandedAttention]:
        """Clique attentions of node features ``[B, T, G, D]`` (eqs. 1, 3, 4, 6).

        Returns:
            ``(context, message)``: ``context`` = ``A = sum_tau w_tau A^tau`` with the node
            itself in its cliques (eq. 3; used for ``H``); ``message`` = ``Â``, the same with
            the node itself removed (eq. 6; zero rows for lone nodes). Weights
            ``[B, T, G, W, G]``.
        """
        _, t, g, _ = nodes.shape
        bands = self.bands(t, nodes.device)
        q = self.theta1(nodes)  # [B, T, G, a]
        k = _window(self.theta2(nodes), bands.index)  # [B, T, W, G, a]
        scores = torch.einsum("btga,btwha->btgwh", q, k)
        if self.config.scaled_attention:
            scores = scores / math.sqrt(self.config.attn_dim)
        eye = torch.eye(g, dtype=torch.bool, device=nodes.device)
        self_node = bands.own[:, None, :, None] & eye[None, :, None, :]  # [T, G, W, G]
        weights = self.clique_weights
        context = message = None
        for i in range(len(self.config.localities)):
            allowed = bands.member[i][:, None, :, None]  # [T, 1, W, 1]
            a_ctx = weights[i] * _masked_softmax(scores, allowed.expand_as(self_node))
            a_msg = weights[i] * _masked_softmax(scores, allowed & ~self_node)
            context = a_ctx if context is None else context + a_ctx
            message = a_msg if message is None else message + a_msg
        return BandedAttention(context, bands.index), BandedAttention(message, bands.index)

    def mean_field(
        self, unary: torch.Tensor, neighbour_pred: torch.Tensor, message: BandedAttention,
        iterations: int | None = None, tol: float | None | str = "config",
    ) -> tuple[torch.Tensor, int, list[float]]:
        """Algorithm 1 (as read in D5, D6): ``Q <- softmax(-E_u - Â (f_p(theta3 B) + Q) U)``.

        Args:
            unary: energies ``E_u [B, T, G, 2]``.
            neighbour_pred: ``Â f_p(theta3(B))`` ``[B, T, G, 2]``, the feature part of the
                message (constant over the iterations).
            message: the self-excluded attention ``Â``.
            iterations, tol: override ``mf_iterations`` / ``halting_tol``.

        Returns:
            marginals ``[B, T, G, 2]``, passes run, and per pass the max change over the
            still-running videos.
        """
        iterations = self.config.mf_iterations if iterations is None else int(iterations)
        tol = self.config.halting_tol if tol == "config" else tol
        u = self.compatibility
        q = torch.softmax(-unary, dim=-1)  # Algorithm 1 steps 2-4
        active = torch.ones(unary.shape[0], dtype=torch.bool, device=unary.device)
        deltas: list[float] = []
        passes = 0
        for _ in range(iterations):
            energy_p = (neighbour_pred + apply_banded(message, q)) @ u  # steps 6-7
            q_new = torch.softmax(-unary - energy_p, dim=-1)  # steps 8-10
            delta = (q_new - q).detach().abs().flatten(1).amax(dim=1)  # [B]
            passes += 1
            if tol is None:
                deltas.append(float(delta.max()))
                q = q_new
                continue
            deltas.append(float(delta[active].max()))
            q = torch.where(active[:, None, None, None], q_new, q)
            active = active & (delta >= tol)
            if not bool(active.any()):
                break
        return q, passes, deltas

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """``features [B, G, T, D]`` -> ``marginals [B, T, G, 2]``, ``embeddings H [B, T, G, C]``
        (eq. 4), ``scores [B, T]`` (pooled anomaly marginals), ``unary E_u [B, T, G, 2]``."""
        self._check_input(features, "features")
        nodes = features.transpose(1, 2).contiguous()  # [B, T, G, D]; one copy, not one per layer
        context, message = self.attention(nodes)
        values = self.drop(self.theta3(nodes))  # [B, T, G, C]
        h = apply_banded(context, values)
        unary = self.f_u(nodes)
        neighbour_pred = apply_banded(message, self.f_p(values))
        q, passes, deltas = self.mean_field(unary, neighbour_pred, message)
        self.last_iterations, self.last_deltas = passes, deltas
        anomaly = q[..., 1]
        scores = anomaly.amax(dim=2) if self.config.node_pool == "max" else anomaly.mean(dim=2)
        return {"marginals": q, "embeddings": h, "scores": scores, "unary": unary}

    # -- AnomalyHead -----------------------------------------------------------------

    def loss(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``L = L_bn + alpha1 L_sp + alpha2 L_ts + lambda_cs L_cs`` (eq. 9; see module doc).

        Args:
            normal, abnormal: ``[B, G, T, D]`` node features of normal / anomalous videos.

        Returns:
            The loss and the parts ``bce``, ``sparse``, ``smooth``, ``contrastive``
            (weighted) and ``total``.
        """
        self._check_input(normal, "normal")
        self._check_input(abnormal, "abnormal")
        if normal.shape != abnormal.shape:
            raise ValueError(f"normal {tuple(normal.shape)} and abnormal {tuple(abnormal.shape)} must match")
        cfg = self.config
        b = normal.shape[0]
        out = self.forward(torch.cat((normal, abnormal), 0))
        s_n, s_a = out["scores"][:b], out["scores"][b:]
        bce = sacrf_mil_bce(s_n, s_a, cfg.k)
        sparse = cfg.alpha1 * sacrf_sparsity(s_a)
        smooth = cfg.alpha2 * sacrf_smoothness(s_a)
        h = out["embeddings"].flatten(1, 2)  # [2B, T*G, C]
        node_scores = out["marginals"][..., 1].flatten(1, 2)  # [2B, T*G]
        cs = cfg.lambda_cs * sacrf_contrastive(h[:b], node_scores[:b], h[b:], node_scores[b:], cfg.k, cfg.margin)
        total = bce + sparse + smooth + cs
        parts = {"bce": float(bce.detach()), "sparse": float(sparse.detach()), "smooth": float(smooth.detach()),
                 "contrastive": float(cs.detach()), "total": float(total.detach())}
        return total, parts

    def snippet_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Anomaly marginal pooled over the G nodes, ``[B, T]`` in ``[0, 1]``, of features
        ``[B, G, T, D]``."""
        return self.forward(features)["scores"]


# ----------------------------------------------------------------------------------------
# Loss terms
# ----------------------------------------------------------------------------------------


def sacrf_sparsity(scores: torch.Tensor) -> torch.Tensor:
    """``mean_videos sum_t s_t`` of abnormal snippet scores ``[B, T]`` (Sultani [1])."""
    return scores.sum(dim=1).mean()


def sacrf_smoothness(scores: torch.Tensor) -> torch.Tensor:
    """``mean_videos sum_t (s_{t+1} - s_t)^2`` of abnormal snippet scores ``[B, T]``."""
    return (scores[:, 1:] - scores[:, :-1]).pow(2).sum(dim=1).mean()


def _topk_mean(scores: torch.Tensor, k: int) -> torch.Tensor:
    return scores.topk(min(k, scores.shape[1]), dim=1).values.mean(dim=1)


def sacrf_mil_bce(normal_scores: torch.Tensor, abnormal_scores: torch.Tensor, k: int) -> torch.Tensor:
    """BCE of video scores (mean of the top-k snippet scores ``[B, T]``) against 0 (normal)
    and 1 (abnormal), averaged over the 2B videos."""
    video = torch.cat((_topk_mean(normal_scores, k), _topk_mean(abnormal_scores, k)))
    labels = torch.cat((torch.zeros(normal_scores.shape[0]), torch.ones(abnormal_scores.shape[0]))).to(video)
    return F.binary_cross_entropy(video.clamp(1e-7, 1 - 1e-7), labels)


def sacrf_contrastive(
    h_normal: torch.Tensor, s_normal: torch.Tensor, h_abnormal: torch.Tensor, s_abnormal: torch.Tensor,
    k: int, margin: float,
) -> torch.Tensor:
    """Contrastive MIL term: ``mean_{a, n} max(0, margin - ||c_a - c_n||^2)``.

    Args:
        h_normal, h_abnormal: node embeddings ``[B, n, C]``; s_normal, s_abnormal: their
            anomaly marginals ``[B, n]``; ``c`` = L2-normalised mean embedding of each
            video's top-k nodes by score.
    """

    def centroids(h: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        idx = s.detach().topk(min(k, s.shape[1]), dim=1).indices
        picked = torch.gather(h, 1, idx[..., None].expand(-1, -1, h.shape[-1]))
        return F.normalize(picked.mean(dim=1), dim=-1)

    c_n, c_a = centroids(h_normal, s_normal), centroids(h_abnormal, s_abnormal)
    dist = (c_a[:, None, :] - c_n[None, :, :]).pow(2).sum(-1)  # [Ba, Bn]
    return torch.clamp(margin - dist, min=0).mean()


def sacrf_optimizer(params, config: SACRFConfig) -> torch.optim.Optimizer:
    """Adam, lr 1e-4, weight decay 1e-5 (Sec. 4.2, contrastive MIL stage)."""
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


register_head(
    HeadSpec(
        name="sacrf",
        config_cls=SACRFConfig,
        build=SACRFHead,
        optimizer=sacrf_optimizer,
        description="SA-CRF (Purwanto et al. 2021): clique self-attention CRF + contrastive MIL; N axis = G patch nodes",
    )
)
