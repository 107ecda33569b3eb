"""MCR: Multi-scale Continuity-aware Refinement of anomaly scores, on top of any head.

Paper: "MCR" score refinement (``/work/shared/papers/mcr.txt``; no public code). MCR takes
the snippet scores of a base network, smooths them with moving averages of ``N`` window
sizes (multi-scale continuity), predicts one weight per scale per video from the video's
features (multi-scale attention) and fuses the smoothed scores with those weights::

    s^(w)_{i,j} = (1/w) sum_{n=1}^{w} s_{i, j+n-1}                       (2.1, moving average)
    F_i  --adaptive avg pool over time-->  F~_i in R^{K x D}, K = 32        (2.2, squeeze)
    P_i  = softmax_n(W_2 F~_i + b_2),  W_2 in R^{D x N}                     (2.2, attention)
    s_{i,j} = sum_n p^(n)_i s^(w_n)_{i,j}                                   (fusion, see below)
    L = L_DMIL + lambda * L_c                                               (2.3)

Here the base network is any registered head (``base_head``, built with
``get_head(base_head).build(config)``); its :meth:`~AnomalyHead.snippet_scores` ``[B, T]``
are the scores MCR refines, and :meth:`MCRHead.snippet_scores` returns the refined ones.

What a training bag holds (default ``temporal="full"``)
    Every snippet of the video, as at test time: the moving-average windows count
    *snippets* in both phases (a window of 5 is 5 snippets = 80 frames, in training and in
    scoring) and the squeeze of section 2.2 pools ``k_i`` real snippets to ``K = 32``.
    Batches are zero-padded to the longest video with a length mask; the base head, the
    squeeze, the smoothing and both losses run on each video's real snippets only (videos
    of equal length share one forward pass), so padding never reaches a score or a loss.
    ``temporal="segments"`` is the earlier departure: training videos resampled to
    ``segments`` (32) means first, so a window of 5 spans ``5 T / 32`` snippets in training
    but 5 at test time, and the squeeze does nothing in training.

The base head's own objective (default ``base_loss_weight = 1``)
    "RTFM + MCR" trains RTFM with RTFM's loss: each step adds ``base_loss_weight *
    base.loss(...)`` on the base's own training view of the same videos (RTFM: each real
    video resampled to its 32 segments with ``resample_segments``, exactly RTFM's
    ``process_feat``; a base with masked sampling, e.g. LA-Net, gets its view padded with
    masks). ``base_loss_weight = 0`` trains the base through the MCR loss only.

Paper -> code:

==========================================  =================================================
Sec. 2.1 moving average, windows w_1..w_N   :func:`moving_average`, ``windows = (1, 3, 5)``
Sec. 2.2 adaptive squeeze to K = 32         :func:`squeeze_features`, ``segments_k = 32``
Sec. 2.2 P_i = softmax(W_2 F + b_2)         :meth:`MCRHead.scale_attention` (``attention``)
Sec. 2.2 s_ij = (1/N) sum_n p_n s^(w_n)     :meth:`MCRHead.refine` (``fusion``, item 6)
Sec. 2.3 L_DMIL                             :func:`dmil_loss` (item 7)
Sec. 2.3 L_c with c_i = mean_j s_ij         :func:`center_loss` (item 8)
Sec. 2.3 L = L_DMIL + lambda L_c            :meth:`MCRHead.loss` (+ the base's loss, above)
==========================================  =================================================

Choices the paper leaves open (each one is a field of :class:`MCRConfig` where it matters):

1. **Window sizes.** The paper fixes N = 3 scales but never gives the sizes; default
   ``windows = (1, 3, 5)`` (the identity plus two smoothings); any positive sizes work.
2. **Window alignment.** The paper's formula averages ``s_j .. s_{j+w-1}``, a *forward*
   (anti-causal) window: ``alignment="forward"`` (default, literal). ``"centered"``
   (``j - (w-1)//2 .. j + w//2``) and ``"causal"`` (``j-w+1 .. j``, online use) are options.
3. **Edges.** The paper divides by ``w`` always ("pooling operator"), which needs values past
   the video's ends: ``padding="replicate"`` (default) repeats the first/last score, so
   the divisor is always ``w``. ``padding="shrink"`` averages only the scores inside the
   video (the window shrinks at the edges). Either way the edge is the video's own last
   snippet, never batch padding.
4. **Where the squeeze/attention features come from.** ``F_i`` is read as the head's
   *input* features (so MCR works on any base head), averaged over crops first (the
   weights are "video-level"), then adaptive-average-pooled over the video's ``k_i``
   snippets to ``K = segments_k``.
5. **How ``K x D`` becomes ``N`` weights.** ``W_2`` is ``D x N``, so the FC is applied to
   each of the K squeezed segments and the K logit vectors are averaged before the softmax
   over scales (``attention_pool="mean"``, default). Since the FC is linear this equals the
   FC on the mean squeezed feature. ``attention_pool="flatten"`` instead uses one FC on the
   flattened ``K * D`` vector (the only reading in which a fixed K matters).
   The FC starts at zero (weights and bias), i.e. with uniform attention ``1/N``.
6. **Fusion.** The paper writes ``s = (1/N) sum_n p_n s^(w_n)``. With softmax weights that
   caps every score at ``1/N``, which makes the DMIL target ``y = 1`` unreachable and a 0.5
   threshold meaningless, while ranking (AUC) is the same up to the constant. Default
   ``fusion="sum"``: ``s = sum_n p_n s^(w_n)`` (a convex combination, in ``[0, 1]``);
   ``fusion="paper_mean"`` applies the literal ``1/N``.
7. **DMIL's clip set.** ``L_DMIL`` is the loss of AR-Net (Wan et al., ICME 2020), whose
   code the loss comes from: the top-``k_i`` scores of each video with ``k_i = ceil(T_i /
   dmil_topk_divisor)`` from the video's **true** length (AR-Net ``KMXMILL_individual``,
   ``--k 4``), for normal (``y = 0``) and abnormal (``y = 1``) videos alike. The paper's
   bracket has a sign typo (``-y log s + (1-y) log(1-s)``); the usual BCE is used
   (``F.binary_cross_entropy``, logs clamped at -100). ``dmil_reduction="video"``
   (default, the printed ``1/k_i`` per video): mean over a video's selected clips, then
   over the videos; ``"pooled"``: AR-Net's code, one mean over all selected clips of the
   batch (a video weighs ``k_i``).
8. **Center loss.** As printed: on *scores*, per normal video, with the video's own
   center ``c_i = mean_j s_{i,j}`` over its ``T_i`` real clips (not a learned/global
   center, not features), ``L_c = mean_i mean_j |s_{i,j} - c_i|`` over normal videos
   (``||.||`` of a scalar = absolute value); 0 for abnormal videos. (AR-Net's code uses
   the variance instead, with weight 20.)
9. **lambda** is not given: ``lambda_center = 1.0``.
10. **Joint vs frozen base.** ``freeze_base=False`` (default): base and refinement are
    trained jointly by the MCR loss plus ``base_loss_weight`` times the base's own loss
    (see above). ``freeze_base=True``: the base's parameters get ``requires_grad=False``,
    the base stays in eval mode (no dropout, frozen BatchNorm statistics), its loss is
    not used and only the attention FC is trained -- meaningful only after loading
    trained base weights into ``head.base`` (e.g.
    ``head.base.load_state_dict(load_checkpoint(p)["state_dict"])``).
11. **Optimizer** is not given: ``optimizer="adam"`` (Adam, ``lr = 1e-3``,
    ``weight_decay = 0``); ``optimizer="base"`` uses the base head's own optimizer and
    learning rate from its config.
12. **Training schedule** is not given: ``batch_size = 32`` videos per class (balanced, as
    RTFM), ``max_steps = 15000`` (RTFM's).
13. **Feature normalisation** follows the base head: :attr:`MCRConfig.l2_normalize` is the
    base config's ``l2_normalize`` (Sultani: True), which the training and scoring loaders read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vadpipe.errors import ConfigError
from vadpipe.heads.base import AnomalyHead, HeadSpec, TrainSampling, get_head, register_head
from vadpipe.heads.data import pad_bags, temporal_view

__all__ = [
    "MCRConfig",
    "MCRHead",
    "moving_average",
    "multiscale_moving_averages",
    "squeeze_features",
    "dmil_loss",
    "center_loss",
    "mcr_optimizer",
    "mcr_sampling",
    "unpad",
]

Alignment = Literal["forward", "centered", "causal"]
Padding = Literal["replicate", "shrink"]
AttentionPool = Literal["mean", "flatten"]
Fusion = Literal["sum", "paper_mean"]
Temporal = Literal["full", "segments"]
DMILReduction = Literal["video", "pooled"]

#: Config fields a base head may use for its input feature size (as in the training loop).
_DIM_FIELDS = ("feature_dim", "in_dim")


def _tuplify(v: Any) -> Any:
    return tuple(_tuplify(x) for x in v) if isinstance(v, (list, tuple)) else v


@dataclass
class MCRConfig:
    """Hyper-parameters of MCR (see the module docstring for every choice).

    Attributes:
        base_head: registered name of the head whose scores are refined.
        base_overrides: settings of the base head's config (its feature size excepted).
        feature_dim: input feature size D; passed to the base config's ``feature_dim`` or
            ``in_dim`` field (the training loop sets it from the data).
        windows: moving-average window sizes, one per scale (N = 3 in the paper).
        alignment: ``"forward"`` (paper), ``"centered"`` or ``"causal"`` windows.
        padding: ``"replicate"`` (divide by w, edge scores repeated) or ``"shrink"``.
        segments_k: K, segments of the adaptive squeeze (32).
        attention_pool: ``"mean"`` (FC ``D -> N`` per segment, logits averaged over K) or
            ``"flatten"`` (FC ``K*D -> N``).
        fusion: ``"sum"`` (convex combination) or ``"paper_mean"`` (literal ``1/N``).
        dmil_topk_divisor: DMIL uses the top ``ceil(T_i / divisor)`` clips of each video.
        dmil_reduction: ``"video"`` (mean per video, then over videos; paper) or
            ``"pooled"`` (one mean over all selected clips; AR-Net's code).
        lambda_center: weight of the center loss.
        base_loss_weight: weight of the base head's own loss (on its own training view)
            added in joint training; 0 = MCR loss only.
        freeze_base: train only the refinement (attention FC) on a frozen base.
        optimizer: ``"adam"`` or ``"base"`` (the base head's optimizer and config).
        lr, weight_decay: Adam settings for ``optimizer="adam"``.
        batch_size: videos per class per batch.
        max_steps: training iterations.
        temporal: ``"full"`` (every snippet of a training video, zero-padded with a mask;
            windows span the same snippets as at test time) or ``"segments"`` (videos
            resampled to ``segments`` means; the earlier departure).
        segments: segments per training video for ``temporal="segments"``.
    """

    base_head: str = "rtfm"
    base_overrides: dict[str, Any] = field(default_factory=dict)
    feature_dim: int = 2048
    windows: tuple[int, ...] = (1, 3, 5)
    alignment: Alignment = "forward"
    padding: Padding = "replicate"
    segments_k: int = 32
    attention_pool: AttentionPool = "mean"
    fusion: Fusion = "sum"
    dmil_topk_divisor: int = 4
    dmil_reduction: DMILReduction = "video"
    lambda_center: float = 1.0
    base_loss_weight: float = 1.0
    freeze_base: bool = False
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    max_steps: int = 15000
    temporal: Temporal = "full"
    segments: int = 32

    def __post_init__(self) -> None:
        self.windows = tuple(int(w) for w in self.windows)  # type: ignore[assignment]
        self.base_overrides = {str(k): _tuplify(v) for k, v in dict(self.base_overrides).items()}
        if not self.windows or min(self.windows) < 1:
            raise ConfigError(f"MCR windows must be positive sizes, got {self.windows}")
        if self.feature_dim <= 0 or self.segments_k <= 0 or self.dmil_topk_divisor <= 0:
            raise ConfigError(
                f"MCR feature_dim, segments_k and dmil_topk_divisor must be positive, got "
                f"{self.feature_dim}, {self.segments_k}, {self.dmil_topk_divisor}"
            )
        choices = {
            "alignment": ("forward", "centered", "causal"),
            "padding": ("replicate", "shrink"),
            "attention_pool": ("mean", "flatten"),
            "fusion": ("sum", "paper_mean"),
            "optimizer": ("adam", "base"),
            "temporal": ("full", "segments"),
            "dmil_reduction": ("video", "pooled"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"MCR {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.base_loss_weight < 0 or self.lambda_center < 0:
            raise ConfigError(
                f"MCR loss weights must be >= 0, got base_loss_weight={self.base_loss_weight}, "
                f"lambda_center={self.lambda_center}"
            )
        if self.base_head == "mcr":
            raise ConfigError("MCR cannot wrap itself")
        self.base_config()  # validate the base settings now

    def base_config(self) -> Any:
        """The base head's config: ``base_overrides`` plus the feature size."""
        spec = get_head(self.base_head)
        fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        unknown = set(self.base_overrides) - fields
        if unknown:
            raise ConfigError(
                f"base head {self.base_head!r} has no setting(s) {sorted(unknown)}; known: {sorted(fields)}"
            )
        values = dict(self.base_overrides)
        for name in _DIM_FIELDS:
            if name in fields:
                if name in values and int(values[name]) != self.feature_dim:
                    raise ConfigError(
                        f"base_overrides[{name!r}]={values[name]} contradicts MCR feature_dim={self.feature_dim}"
                    )
                values[name] = self.feature_dim
        return spec.config_cls(**values)

    @property
    def l2_normalize(self) -> bool:
        """The base head's ``l2_normalize`` (read by the training and scoring loaders)."""
        if "l2_normalize" in self.base_overrides:
            return bool(self.base_overrides["l2_normalize"])
        return bool(getattr(get_head(self.base_head).config_cls, "l2_normalize", False))


# ----------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------


def _window_pads(w: int, alignment: str) -> tuple[int, int]:
    """(left, right) extent of a window of size ``w`` around clip ``j``."""
    if alignment == "forward":
        return 0, w - 1
    if alignment == "causal":
        return w - 1, 0
    if alignment == "centered":
        return (w - 1) // 2, w // 2
    raise ConfigError(f"unknown alignment {alignment!r}")


def moving_average(scores: torch.Tensor, w: int, alignment: str = "forward", padding: str = "replicate") -> torch.Tensor:
    """Moving average over time of ``scores [B, T]`` with window ``w``; same shape.

    ``padding="replicate"``: edge scores repeated, divisor ``w``; ``"shrink"``: mean of the
    window's clips inside the video.
    """
    if w == 1:
        return scores
    left, right = _window_pads(w, alignment)
    x = scores.unsqueeze(1)  # [B, 1, T]
    if padding == "replicate":
        return F.avg_pool1d(F.pad(x, (left, right), mode="replicate"), w, stride=1).squeeze(1)
    if padding == "shrink":
        sums = F.avg_pool1d(F.pad(x, (left, right)), w, stride=1) * w
        counts = F.avg_pool1d(F.pad(torch.ones_like(x[:1]), (left, right)), w, stride=1) * w
        return (sums / counts).squeeze(1)
    raise ConfigError(f"unknown padding {padding!r}")


def multiscale_moving_averages(
    scores: torch.Tensor, windows: tuple[int, ...], alignment: str = "forward", padding: str = "replicate"
) -> torch.Tensor:
    """Smoothed scores ``[B, N, T]`` for the ``N`` window sizes."""
    return torch.stack([moving_average(scores, w, alignment, padding) for w in windows], dim=1)


def squeeze_features(features: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, N_crops, T, D]`` → crop mean → adaptive average pooling over time → ``[B, K, D]``."""
    x = features.mean(dim=1).transpose(1, 2)  # [B, D, T]
    return F.adaptive_avg_pool1d(x, k).transpose(1, 2)


def _real(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return torch.ones_like(scores, dtype=torch.bool) if mask is None else mask.to(torch.bool)


def dmil_loss(scores: torch.Tensor, labels: torch.Tensor, topk_divisor: int = 4,
              mask: torch.Tensor | None = None, reduction: str = "video") -> torch.Tensor:
    """BCE on the top ``k_i = ceil(T_i / topk_divisor)`` clips of each video (AR-Net's DMIL).

    Args:
        scores: fused scores ``[V, T]`` in ``[0, 1]``; labels: video labels ``[V]`` (0/1).
        mask: ``[V, T]``, True on real clips (``None``: all real); ``T_i`` is the video's
            count of real clips and padded clips are never selected.
        reduction: ``"video"``: ``mean_i (1/k_i) sum_{top-k_i j} BCE(s_ij, y_i)``;
            ``"pooled"``: ``sum_i sum_j BCE / sum_i k_i`` (AR-Net's code).
    """
    real = _real(scores, mask)
    lengths = real.sum(1)
    if bool((lengths < 1).any()):
        raise ValueError("every video needs at least one real clip")
    k = torch.clamp(torch.div(lengths + topk_divisor - 1, topk_divisor, rounding_mode="floor"), min=1)  # ceil
    ranked = torch.sort(scores.masked_fill(~real, -1.0), dim=1, descending=True).values
    chosen = torch.arange(scores.shape[1], device=scores.device)[None, :] < k[:, None]  # [V, T]
    target = labels.to(scores).reshape(-1, 1).expand_as(ranked)
    bce = F.binary_cross_entropy(ranked.clamp(0.0, 1.0), target, reduction="none") * chosen
    if reduction == "pooled":
        return bce.sum() / k.sum()
    if reduction != "video":
        raise ConfigError(f"unknown DMIL reduction {reduction!r}")
    return (bce.sum(1) / k).mean()


def center_loss(normal_scores: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_i mean_j |s_ij - c_i|`` over normal videos, ``c_i`` the mean of video ``i``'s
    real clips (``mask [V, T]``, True on real clips; ``None``: all real)."""
    real = _real(normal_scores, mask).to(normal_scores)
    lengths = real.sum(1)
    center = (normal_scores * real).sum(1, keepdim=True) / lengths[:, None]
    return (((normal_scores - center).abs() * real).sum(1) / lengths).mean()


def unpad(features: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    """Zero-padded bags ``[B, N, T, D]`` (``mask [B, T]``, True on real snippets, at the
    start) -> the ``B`` videos ``[N, T_i, D]`` with their real snippets only."""
    if mask is None:
        return list(features)
    if tuple(mask.shape) != (features.shape[0], features.shape[2]):
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit features {tuple(features.shape)}")
    lengths = mask.sum(1).tolist()
    if min(lengths, default=1) < 1:
        raise ValueError("every video needs at least one real snippet")
    return [f[:, : int(t)] for f, t in zip(features, lengths)]


def _by_length(videos: list[torch.Tensor]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for i, v in enumerate(videos):
        groups.setdefault(int(v.shape[1]), []).append(i)
    return groups


# ----------------------------------------------------------------------------------------
# Head
# ----------------------------------------------------------------------------------------


class MCRHead(AnomalyHead):
    """A base head plus MCR refinement. Submodules: ``base`` (the base head) and
    ``attention`` (the scale-attention FC)."""

    def __init__(self, config: MCRConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else MCRConfig()
        cfg = self.config
        self.base_spec = get_head(cfg.base_head)
        self.base = self.base_spec.build(cfg.base_config())
        n = len(cfg.windows)
        in_features = cfg.feature_dim * (cfg.segments_k if cfg.attention_pool == "flatten" else 1)
        self.attention = nn.Linear(in_features, n)
        nn.init.zeros_(self.attention.weight)  # uniform attention at initialisation
        nn.init.zeros_(self.attention.bias)
        if cfg.freeze_base:
            for p in self.base.parameters():
                p.requires_grad_(False)
            self.base.eval()

    def train(self, mode: bool = True) -> "MCRHead":
        super().train(mode)
        if self.config.freeze_base:
            self.base.eval()
        return self

    def _check(self, x: torch.Tensor, name: str) -> None:
        if x.dim() != 4:
            raise ValueError(f"MCR expects {name} of shape [B, N, T, D], got {tuple(x.shape)}")
        if x.shape[-1] != self.config.feature_dim:
            raise ValueError(f"MCR configured for feature_dim={self.config.feature_dim} but {name} has D={x.shape[-1]}")

    def base_scores(self, features: torch.Tensor) -> torch.Tensor:
        """The base head's snippet scores ``[B, T]`` (no gradient when the base is frozen)."""
        if self.config.freeze_base:
            with torch.no_grad():
                return self.base.snippet_scores(features)
        return self.base.snippet_scores(features)

    def scale_attention(self, features: torch.Tensor) -> torch.Tensor:
        """Per-video softmax weights ``[B, N_scales]`` from features ``[B, N, T, D]``."""
        squeezed = squeeze_features(features, self.config.segments_k)  # [B, K, D]
        if self.config.attention_pool == "flatten":
            logits = self.attention(squeezed.flatten(1))
        else:
            logits = self.attention(squeezed).mean(dim=1)
        return torch.softmax(logits, dim=-1)

    def refine(self, scores: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Fuse the multi-scale moving averages of ``scores [B, T]`` with ``attention [B, N]``."""
        cfg = self.config
        smoothed = multiscale_moving_averages(scores, cfg.windows, cfg.alignment, cfg.padding)  # [B, N, T]
        fused = (attention.unsqueeze(-1) * smoothed).sum(dim=1)
        if cfg.fusion == "paper_mean":
            fused = fused / len(cfg.windows)
        return fused

    def refined_parts(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """``base`` scores ``[B, T]``, ``attention`` ``[B, N]`` and refined ``scores`` ``[B, T]``."""
        self._check(features, "features")
        base = self.base_scores(features)
        attention = self.scale_attention(features)
        return {"base": base, "attention": attention, "scores": self.refine(base, attention)}

    def snippet_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Refined scores ``[B, T]`` in ``[0, 1]``."""
        return self.refined_parts(features)["scores"]

    def refine_videos(self, videos: list[torch.Tensor]) -> list[torch.Tensor]:
        """Refined scores ``[T_i]`` of each unpadded video ``[N, T_i, D]``; videos of one
        length share a forward pass (nothing of one video reaches another's scores)."""
        out: list[torch.Tensor | None] = [None] * len(videos)
        for _, idx in _by_length(videos).items():
            scores = self.snippet_scores(torch.stack([videos[i] for i in idx]))
            for j, i in enumerate(idx):
                out[i] = scores[j]
        return out  # type: ignore[return-value]

    def base_view(self, normal: list[torch.Tensor], abnormal: list[torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """The base head's own training view of unpadded videos ``[N, T_i, D]``: what its
        training loader would give (RTFM: the 32 ``resample_segments`` means of each video).

        Returns ``normal``, ``abnormal`` and, for a base with masked sampling, its mask kwargs.
        """
        sampling = self.base_spec.sampling(self.base.config)
        bags = [temporal_view(v, sampling.temporal, sampling.length) for v in normal + abnormal]
        if not sampling.masked:
            feats = torch.stack(bags)
            return feats[: len(normal)], feats[len(normal):], {}
        feats, mask = pad_bags(bags)
        mask = mask.to(feats.device)
        n = len(normal)
        return feats[:n], feats[n:], {"normal_mask": mask[:n], "abnormal_mask": mask[n:]}

    def loss(self, normal: torch.Tensor, abnormal: torch.Tensor, *, normal_mask: torch.Tensor | None = None,
             abnormal_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """``L = L_DMIL + lambda_center * L_c + base_loss_weight * L_base`` on a batch.

        Args:
            normal, abnormal: ``[B, N, T, D]`` / ``[B', N, T, D]``, zero-padded at the end
                of time when the videos differ in length.
            normal_mask, abnormal_mask: ``[B, T]`` / ``[B', T]``, True on real snippets
                (``None``: all real). Each video is refined on its real snippets only.

        Returns:
            the loss and its parts ``dmil``, ``center`` (weighted), ``base`` (weighted, when
            used) and ``total``.
        """
        self._check(normal, "normal")
        self._check(abnormal, "abnormal")
        if normal.shape[1:] != abnormal.shape[1:]:
            raise ValueError(f"normal {tuple(normal.shape)} and abnormal {tuple(abnormal.shape)} differ beyond B")
        cfg = self.config
        normal_videos, abnormal_videos = unpad(normal, normal_mask), unpad(abnormal, abnormal_mask)
        b_n = len(normal_videos)
        refined = self.refine_videos(normal_videos + abnormal_videos)
        scores = torch.nn.utils.rnn.pad_sequence(refined, batch_first=True)  # [2B, T_max]
        real = torch.nn.utils.rnn.pad_sequence([torch.ones(len(r), dtype=torch.bool) for r in refined],
                                               batch_first=True).to(scores.device)
        labels = torch.cat((torch.zeros(b_n), torch.ones(len(abnormal_videos)))).to(scores)
        l_dmil = dmil_loss(scores, labels, cfg.dmil_topk_divisor, real, cfg.dmil_reduction)
        l_center = cfg.lambda_center * center_loss(scores[:b_n], real[:b_n])
        total = l_dmil + l_center
        parts = {"dmil": float(l_dmil.detach()), "center": float(l_center.detach())}
        if cfg.base_loss_weight and not cfg.freeze_base:
            base_n, base_a, masks = self.base_view(normal_videos, abnormal_videos)
            base_total, _ = self.base.loss(base_n, base_a, **masks)
            base_term = cfg.base_loss_weight * base_total
            total = total + base_term
            parts["base"] = float(base_term.detach())
        parts["total"] = float(total.detach())
        return total, parts


def mcr_optimizer(params, config: MCRConfig) -> torch.optim.Optimizer:
    """Adam(lr, weight_decay) over the trainable parameters, or the base head's optimizer."""
    params = [p for p in params if p.requires_grad]
    if config.optimizer == "base":
        return get_head(config.base_head).optimizer(params, config.base_config())
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


def mcr_sampling(config: MCRConfig) -> TrainSampling:
    """Balanced batches of ``batch_size`` + ``batch_size`` videos for ``max_steps`` steps;
    bags of every snippet with masks (``temporal="full"``) or of ``segments`` means."""
    if config.temporal == "full":
        return TrainSampling(temporal="full", batch_size=config.batch_size, steps=config.max_steps)
    return TrainSampling(temporal="segments", length=config.segments, batch_size=config.batch_size,
                         steps=config.max_steps)


register_head(
    HeadSpec(
        name="mcr",
        config_cls=MCRConfig,
        build=MCRHead,
        optimizer=mcr_optimizer,
        sampling=mcr_sampling,
        description="MCR: multi-scale moving-average score refinement with scale attention, on any base head",
    )
)
