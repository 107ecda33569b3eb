"""SA-CRF: self-attention conditional random field with contrastive MIL (Purwanto et al.).

Paper: "Dance with Self-Attention: A New Look of Conditional Random Fields on Anomaly
Detection in Videos" (Purwanto, Chen, Fang, ICCV 2021). There is **no public code**: this
module is built from the paper's Secs. 3.3-3.4, Algorithm 1 and Sec. 4.2 only. Every choice
the paper leaves open is listed below under "Open choices"; the stage-one relation-aware
TRN/ResNet-50 extractor (Sec. 3.2) is *not* part of this head.

Input layout
------------
The head takes the usual ``[B, N, T, D]`` tensors, but **the second axis is the G patch nodes
of each clip, not crops**: for the paper's multi-scale ResNet-50 extractor (partition scale
3) ``G = 1 + 4 + 9 = 14`` patch features per snippet (whole frame, 2x2 and 3x3 grids), each
globally pooled to ``D`` channels. Any ``G >= 1`` works; ``G = 1`` is plain ``[T, F]``
snippet features (one node per snippet), and multi-crop features can be fed as well (each
crop is then treated as one node of the clip). Nodes are ordered clip-major (``t * G + g``).

Model (per video, ``n = T * G`` nodes with features ``b``)
----------------------------------------------------------
* Self-attention restricted to cliques of temporal locality ``l`` (eqs. 1, 3, 4)::

      A^l[(t,g), (t',g')] = softmax_{(t',g'): |t - t'| <= l} (theta1(b_tg) . theta2(b_t'g') / sqrt(d_a))
      A = sum_l w_l A^l,    w = softmax(clique_logits)          (learned clique weights)
      H = A theta3(B)                                          ([B, T, G, C])

  Implemented banded (only the ``2 L + 1`` clips around each clip, ``L = max locality``),
  so memory is linear in T; :func:`clique_mask` gives the dense mask for reference.
* Mean-field inference (Algorithm 1, eqs. 5-8), energies ``E`` with ``P ∝ exp(-E)``::

      E_u = f_u(B)                        (MLP  D -> unary_hidden -> 2)
      Q^0 = softmax(-E_u)
      repeat:  E_p = (f_p(H) + A Q^l) U   (message passing + compatibility transform)
               Q^{l+1} = softmax(-E_u - E_p)      (unary "addition", normalisation, softmax)

  ``U`` is a trainable symmetric 2x2 matrix initialised to the Potts model
  ``[[0, 1], [1, 0]]``; ``f_p`` a linear layer ``C -> 2``. Since every ``A`` row sums to 1,
  ``f_p(H) + A Q = A (f_p(theta3(B)) + Q)``: the message from a clique neighbour is its
  feature-based label prediction (eq. 6) plus its current marginal (mean field). The
  iteration runs ``mf_iterations`` times, or (``halting_tol`` set) stops per video as soon
  as ``max |Q^{l+1} - Q^l| < halting_tol`` ("dynamic halting", Sec. 4.2); videos that have
  halted keep their marginals while others continue.
* Snippet score = anomaly marginal ``Q[..., 1]`` pooled over the G nodes (``node_pool``,
  max by default) → ``[B, T]`` in ``[0, 1]``.

Training objective (eq. 9)::

    L = L_bn + alpha1 * L_sp + alpha2 * L_ts + lambda_cs * L_cs

* ``L_bn``: BCE of each video's score = mean of its top-k snippet scores against the video
  label (0 normal, 1 anomalous), averaged over the 2B videos (:func:`sacrf_mil_bce`).
* ``L_sp`` = ``mean_videos sum_t s_t``, ``L_ts`` = ``mean_videos sum_t (s_{t+1} - s_t)^2``
  on the abnormal videos' snippet scores (Sultani et al. [1]); alpha1 = alpha2 = 8e-5.
* ``L_cs`` (contrastive MIL, :func:`sacrf_contrastive`): per video, the centroid of the
  self-attention embeddings ``h`` of its top-k nodes (by anomaly marginal), L2-normalised;
  for every (abnormal, normal) pair ``d = ||c_a - c_n||^2`` (in [0, 4]) and
  ``L_cs = mean_pairs max(0, margin - d)``.

Optimiser: Adam, lr 1e-4, weight decay 1e-5, batch 32 (per class), 50 epochs (Sec. 4.2).

Open choices (not fixed by the paper), as implemented
----------------------------------------------------
1. Clique ``C_j^tau``: the paper says "frame j and its (tau - 1) adjacent frames" (tau frames,
   tau*G nodes) without saying which neighbours. Here locality ``l`` admits every node of
   every clip with ``|t - t'| <= l`` (all G nodes of each, the node itself included):
   a symmetric window of up to ``2 l + 1`` clips, truncated at the video ends.
2. Eq. (1) ``p = exp(theta1^T theta2)`` is unnormalised; eq. (3) applies it to
   ``theta3(b_{i,j})`` (the query node — read as a typo for the key node ``b_{i',j'}``, as
   in [27]). We use scaled dot-product softmax attention normalised within each clique.
3. Clique weights ``w_tau`` (eq. 4, "trainable scalar"): ``softmax`` over localities of
   learned logits (init 0 = uniform), so ``A`` stays row-stochastic.
4. Algorithm 1 as printed computes ``E_p = f_p(H)`` independently of the marginals (the
   loop would not depend on its state) and "adds" ``Ê`` instead of the unary energy in
   step 8, while the text says the unary energy is subtracted. We follow eq. (8) and CRF-as-
   RNN [33]: logits ``-E_u - E_p``, with the current marginals passed through the same
   attention ``A`` (see above); steps 3-4 and 9-10 (normalise, then softmax) collapse into
   one softmax. ``while l <= max_iter`` (max_iter + 1 passes) is read as ``mf_iterations``
   passes. With the Potts init the update is a sup-norm contraction (factor
   ``|U00 + U11 - U01 - U10| / 4 = 0.5``), so it converges; ``U`` is kept symmetric (Sec. 3.3.4)
   by using ``(P + P^T) / 2``.
5. ``f_u`` is "a linear feed-forward classifier" in the paper; here a one-hidden-layer MLP
   (``unary_hidden``, ReLU, ``dropout``); ``unary_hidden = 0`` gives the paper's linear one.
   Embedding sizes (``attn_dim`` for theta1/theta2, ``embed_dim`` C for theta3) are not given.
6. The paper's separate MIL regressor ``v = f_s(h)`` is identified with the CRF: the anomaly
   marginal of a node is its score (``L_bn`` is "BCE on the marginal distribution").
   ``L_bn`` applies BCE at video level (top-k mean, ``k = 3`` as in RTFM) since only video
   labels exist. Snippet score = **max** over the G nodes (an anomaly may be local to one
   patch); ``node_pool="mean"`` is available.
7. Eq. (10) is a plain mean of squared distances between positive- and negative-bag
   embeddings; minimised literally it would *pull* the bags together, contradicting its
   stated purpose, and positive bags contain normal nodes. We use the hinge of item
   ``L_cs`` above on top-k (most anomalous) nodes with normalised centroids (without
   normalisation the margin is met by scaling theta3). Weight ``lambda_cs = 1`` (eq. 9).
8. Sparsity/smoothness on the abnormal videos' snippet scores, per video, summed over
   snippets and averaged over videos (Sultani [1]).
9. "50 epochs at batch 32": one step = 32 normal + 32 abnormal videos (as RTFM); UCF-Crime
   has ~800 videos per class, so ``max_steps = 1250`` ≈ 50 epochs. Training videos are
   resampled to ``segments = 32`` snippets (Sultani/RTFM convention; not stated).
10. Dynamic halting: the paper gives neither criterion nor cap; here per-video
    ``max |ΔQ| < halting_tol`` (default 1e-3) with at most ``mf_iterations`` (default 10)
    passes. ``halting_tol=None`` runs the fixed count. No dropout by default (the paper's
    0.8 refers to the backbone training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from vadpipe.errors import ConfigError
from vadpipe.heads.base import AnomalyHead, HeadSpec, register_head

__all__ = [
    "SACRFConfig",
    "SACRFHead",
    "clique_mask",
    "sacrf_sparsity",
    "sacrf_smoothness",
    "sacrf_mil_bce",
    "sacrf_contrastive",
    "sacrf_optimizer",
]

NodePool = Literal["max", "mean"]


@dataclass
class SACRFConfig:
    """Hyper-parameters of SA-CRF (paper values where it gives them; see module docstring).

    Attributes:
        feature_dim: node feature size D (2048 for ResNet-50 patch features; set from data).
        attn_dim: width of the query/key embeddings theta1, theta2.
        embed_dim: width C of the value embedding theta3 (= self-attention output H).
        unary_hidden: hidden width of the unary MLP f_u (0: linear, as in the paper).
        localities: temporal localities of the cliques (paper best: 1, 2, 4, 6, 8).
        mf_iterations: mean-field passes (the cap when ``halting_tol`` is set).
        halting_tol: dynamic halting: stop a video once ``max |ΔQ| <`` this; ``None``: always
            run ``mf_iterations`` passes.
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
    unary_hidden: int = 512
    localities: tuple[int, ...] = (1, 2, 4, 6, 8)
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
        if not self.localities or min(self.localities) < 0 or len(set(self.localities)) != len(self.localities):
            raise ConfigError(f"SA-CRF localities must be distinct non-negative ints, got {self.localities}")
        if self.halting_tol is not None and not self.halting_tol > 0:
            raise ConfigError(f"SA-CRF halting_tol must be positive or None, got {self.halting_tol}")
        if self.node_pool not in ("max", "mean"):
            raise ConfigError(f"SA-CRF node_pool must be 'max' or 'mean', got {self.node_pool!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"SA-CRF dropout must be in [0, 1), got {self.dropout}")
        for name in ("alpha1", "alpha2", "lambda_cs", "margin", "lr", "weight_decay"):
            if getattr(self, name) < 0:
                raise ConfigError(f"SA-CRF {name} must be >= 0, got {getattr(self, name)}")


def clique_mask(t: int, g: int, locality: int) -> torch.Tensor:
    """Dense bool mask ``[T*G, T*G]`` of clique locality ``l``: node ``(t, g)`` (index
    ``t * G + g``) admits every node ``(t', g')`` with ``|t - t'| <= l`` (reference for the
    banded implementation; itself included)."""
    clip = torch.arange(t).repeat_interleave(g)
    return (clip[:, None] - clip[None, :]).abs() <= locality


def _pad_time(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Zero-pad ``x [B, T, ...]`` by ``pad`` clips on both sides of the time axis."""
    spec = [0, 0] * (x.dim() - 2) + [pad, pad]
    return F.pad(x, spec)


def apply_banded(attn: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out[b, t, g] = sum_{o, h} attn[b, t, g, o, h] * values[b, t + o - L, h]``.

    Args:
        attn: ``[B, T, G, O, G]`` with ``O = 2 L + 1`` clip offsets ``-L..L``.
        values: ``[B, T, G, c]``.
    """
    o_count = attn.shape[3]
    half = o_count // 2
    padded = _pad_time(values, half)
    t = values.shape[1]
    if values.shape[-1] <= 8:  # marginals (c = 2): one broadcast product, ~100x faster on CPU
        window = padded.unfold(1, o_count, 1).permute(0, 1, 4, 2, 3)  # [B, T, O, G, c] (a view)
        return (attn.unsqueeze(-1) * window.unsqueeze(2)).sum(dim=(3, 4))
    out = None
    for oi in range(o_count):
        term = torch.einsum("btgh,bthc->btgc", attn[:, :, :, oi], padded[:, oi: oi + t])
        out = term if out is None else out + term
    return out


class SACRFHead(AnomalyHead):
    """SA-CRF head; see the module docstring for the model, the loss and open choices."""

    def __init__(self, config: SACRFConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else SACRFConfig()
        cfg = self.config
        d = cfg.feature_dim
        self.theta1 = nn.Linear(d, cfg.attn_dim)
        self.theta2 = nn.Linear(d, cfg.attn_dim)
        self.theta3 = nn.Linear(d, cfg.embed_dim)
        if cfg.unary_hidden:
            self.f_u = nn.Sequential(nn.Linear(d, cfg.unary_hidden), nn.ReLU(), nn.Dropout(cfg.dropout),
                                     nn.Linear(cfg.unary_hidden, 2))
        else:
            self.f_u = nn.Linear(d, 2)
        self.f_p = nn.Linear(cfg.embed_dim, 2)
        self.clique_logits = nn.Parameter(torch.zeros(len(cfg.localities)))
        self.compat = nn.Parameter(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # Potts model
        self.drop = nn.Dropout(cfg.dropout)
        self.register_buffer("_localities", torch.tensor(cfg.localities), persistent=False)
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
        """The symmetric compatibility matrix ``U`` (2x2)."""
        return 0.5 * (self.compat + self.compat.t())

    @property
    def clique_weights(self) -> torch.Tensor:
        """``w_tau``: softmax over the localities."""
        return torch.softmax(self.clique_logits, dim=0)

    def attention(self, nodes: torch.Tensor) -> torch.Tensor:
        """Combined clique attention ``A [B, T, G, O, G]`` of node features ``[B, T, G, D]``
        (``O = 2 L + 1`` clip offsets; each ``(t, g)`` row sums to 1)."""
        b, t, g, _ = nodes.shape
        big = max(self.config.localities)
        q = self.theta1(nodes)
        k = _pad_time(self.theta2(nodes), big)
        scores = torch.stack(
            [torch.einsum("btga,btha->btgh", q, k[:, oi: oi + t]) for oi in range(2 * big + 1)], dim=3
        ) / math.sqrt(self.config.attn_dim)  # [B, T, G, O, G]
        offsets = torch.arange(-big, big + 1, device=nodes.device)
        target = torch.arange(t, device=nodes.device)[:, None] + offsets[None, :]  # [T, O]
        valid = (target >= 0) & (target < t)
        flat = scores.reshape(b, t, g, -1)
        weights = self.clique_weights
        combined = None
        for i, loc in enumerate(self.config.localities):
            allowed = valid & (offsets.abs() <= loc)[None, :]  # [T, O]
            allowed = allowed[:, None, :, None].expand(t, g, 2 * big + 1, g).reshape(t, g, -1)
            a = torch.softmax(flat.masked_fill(~allowed, float("-inf")), dim=-1)
            combined = weights[i] * a if combined is None else combined + weights[i] * a
        return combined.reshape(b, t, g, 2 * big + 1, g)

    def mean_field(
        self, unary: torch.Tensor, pairwise_feat: torch.Tensor, attn: torch.Tensor,
        iterations: int | None = None, tol: float | None | str = "config",
    ) -> tuple[torch.Tensor, int, list[float]]:
        """Algorithm 1 (as read in the module docstring).

        Args:
            unary: energies ``E_u [B, T, G, 2]``; pairwise_feat: ``f_p(H) [B, T, G, 2]``;
            attn: ``A [B, T, G, O, G]``; iterations/tol: override the config.

        Returns:
            marginals ``[B, T, G, 2]``, passes run, and per pass the max change over the batch.
        """
        iterations = self.config.mf_iterations if iterations is None else int(iterations)
        tol = self.config.halting_tol if tol == "config" else tol
        u = self.compatibility
        q = torch.softmax(-unary, dim=-1)
        active = torch.ones(unary.shape[0], dtype=torch.bool, device=unary.device)
        deltas: list[float] = []
        passes = 0
        for _ in range(iterations):
            energy_p = (pairwise_feat + apply_banded(attn, q)) @ u
            q_new = torch.softmax(-unary - energy_p, dim=-1)
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
        """``features [B, G, T, D]`` → ``marginals [B, T, G, 2]``, ``embeddings H [B, T, G, C]``,
        ``scores [B, T]`` (pooled anomaly marginals)."""
        self._check_input(features, "features")
        nodes = features.transpose(1, 2)  # [B, T, G, D]
        attn = self.attention(nodes)
        h = apply_banded(attn, self.drop(self.theta3(nodes)))
        unary = self.f_u(nodes)
        q, passes, deltas = self.mean_field(unary, self.f_p(h), attn)
        self.last_iterations, self.last_deltas = passes, deltas
        anomaly = q[..., 1]
        scores = anomaly.amax(dim=2) if self.config.node_pool == "max" else anomaly.mean(dim=2)
        return {"marginals": q, "embeddings": h, "scores": scores, "unary": unary}

    # -- AnomalyHead -----------------------------------------------------------------

    def loss(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """``L = L_bn + alpha1 L_sp + alpha2 L_ts + lambda_cs L_cs`` (eq. 9; see module doc).

        Returns the loss and the parts ``bce``, ``sparse``, ``smooth``, ``contrastive``
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
        """Anomaly marginal pooled over the G nodes, ``[B, T]`` in ``[0, 1]``."""
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
