"""RTFM: Robust Temporal Feature Magnitude learning (Tian et al., ICCV 2021).

Paper: "Weakly-supervised Video Anomaly Detection with Robust Temporal Feature Magnitude
Learning", arXiv:2101.10030. Official code: https://github.com/tianyu0207/RTFM (``model.py``,
``train.py``, ``main.py``, ``option.py``, ``test_10crop.py``).

The defaults reproduce the official code; where the paper describes something else, the
paper's choice is a named option of :class:`RTFMConfig`.

Module layout and parameter names follow ``model.py`` exactly, so a state dict saved by the
official ``main.py`` (``torch.save(model.state_dict(), 'ckpt/<name>final.pkl')``) loads into
:class:`RTFMHead` with ``strict=True`` (see :mod:`vadpipe.heads.checkpoints`)::

    Aggregate.conv_{1,2,3}.0.{weight,bias}        Conv1d(D, D/4, k=3, dilation 1/2/4)
    Aggregate.conv_{1,2,3}.2.{weight,bias,running_mean,running_var,num_batches_tracked}
    Aggregate.conv_4.0.weight                     Conv1d(D, D/4, k=1, bias=False)
    Aggregate.conv_5.0.weight                     Conv1d(D, D, k=3, bias=False)
    Aggregate.conv_5.2.{...BatchNorm1d(D)...}
    Aggregate.non_local.g.{weight,bias}           Conv1d(D/4, D/8, k=1)
    Aggregate.non_local.W.0.{weight,bias}         Conv1d(D/8, D/4, k=1)
    Aggregate.non_local.W.1.{...BatchNorm1d(D/4)...}   (gamma = beta = 0 at init)
    Aggregate.non_local.theta.{weight,bias}       Conv1d(D/4, D/8, k=1)
    Aggregate.non_local.phi.{weight,bias}         Conv1d(D/4, D/8, k=1)
    fc1.{weight,bias} (D -> 512), fc2.{weight,bias} (512 -> 128), fc3.{weight,bias} (128 -> 1)

with D = 2048 for the official I3D features (the official code hard-codes 2048 inside
``Aggregate``; here every width follows ``feature_dim``).

Tensor layout: the official forward takes ``[bs, ncrops, T, D]`` where the first
``batch_size`` videos are normal and the rest abnormal, folds crops into the batch
video-major (row ``b * ncrops + c``), and averages *sigmoid scores* over crops inside the
forward. :meth:`RTFMHead.forward_official` reproduces its 10-tuple output.

Loss, paper → code. Notation: ``B`` normal + ``B`` abnormal videos, ``N`` crops, ``T``
snippets; ``s [2B, T]`` crop-averaged sigmoid snippet scores; ``Ω_k(v)`` the top-k snippets
of video ``v`` by crop-averaged feature magnitude (one index set for all crops); ``a_{c,i}``
/ ``n_{c,j}`` the ``[k, D]`` selected MTN features of crop ``c`` of abnormal video ``i`` /
normal video ``j``. Official = the default; paper = :meth:`RTFMConfig.paper` (the CLI's
``vadpipe train --head rtfm --preset paper``), which sets every option below at once
(:data:`RTFM_PAPER_SETTINGS`; each can also be set alone, e.g. ``--set
magnitude_loss=paper_hinge``)::

    eq. (1)  L = l_s + l_f (+ smoothness, sparsity; weights not printed)
             official: L = BCE + 1e-4 * l_s' + 8e-3 * sparse' + 8e-4 * smooth'
             paper:    L = l_f + 1 * l_s + 8e-3 * sparse + 8e-4 * smooth
             (primes: the code's forms of each term, listed below)
             (``alpha=None``: each magnitude variant's own weight, 1e-4 official / 1 paper;
             a number overrides both)
    eq. (2)  g(X) = max over k-subsets of the mean ||x_t||_2 = mean of the k largest norms
             official: selection among snippets surviving a Dropout(0.7) mask of ones
             (training only), ``eligibility_dropout=True``;
             paper: the exact top-k, ``eligibility_dropout=False``
    eq. (3)  d(X+, X-) = g(X+) - g(X-)
    eq. (6)  l_s = max(0, m - d(X_i, X_j)) for abnormal i, normal j (m = 100), summed over
             all such pairs in eq. (1)
             official ``magnitude_loss="official"``: mean_{c,i} (|m - ||mean_k a_{c,i}||_2|
             + ||mean_k n_{c,i}||_2)^2 -- squared, absolute value instead of the hinge, norm
             of the *mean* feature instead of the mean of norms, abnormal video i paired
             with normal video i only;
             paper ``"paper_hinge"``: mean_{c,i,j} max(0, m - mean_k ||a_{c,i,k}|| +
             mean_k ||n_{c,j,k}||), every abnormal x normal pair (within a crop)
    eq. (7)  l_f = sum_{x in Ω_k(X)} BCE(f(x), y)
             official ``classification="official"``: BCE(mean_{t in Ω_k} s_t, y), mean over
             the 2B videos; paper ``"paper_snippet"``: sum over the k snippets of
             BCE(s_t, y), mean over the 2B videos
    Sec. 3.4 smoothness (f(x_t) - f(x_{t-1}))^2 (summed over t, as in [51]):
             official ``smoothness="official"``: 8e-4 * sum over the B*T abnormal scores
             flattened, pairs crossing video boundaries; paper ``"per_video"``: 8e-4 *
             mean over abnormal videos of sum_t (s_t - s_{t-1})^2
    Sec. 3.4 sparsity sum_t |f(x_t)| in each abnormal video:
             official ``sparsity="official"``: 8e-3 * ||s_abn||_2 (L2 norm of all B*T
             abnormal scores); paper ``"paper_l1"``: 8e-3 * mean over abnormal videos of
             sum_t |s_t|
    Sec. 4.2 m = 100, k = 3, T = 32, 32 + 32 videos per batch, lr 1e-3: code and paper
             agree. Adam weight decay: code 5e-3, paper 5e-4 (``weight_decay``, set by
             :meth:`RTFMConfig.paper`).

Departures of the paper variant from the printed text, kept on purpose:

* eq. (1) writes dataset-level sums; a mini-batch takes means (``l_s`` over the
  abnormal x normal pairs, ``l_f`` and the regularisers over videos). Read literally,
  the double sum over ``i, j`` would also count each ``l_f`` term ``|D|`` times; that is
  taken as notation, not as a weight.
* The smoothness and sparsity weights are not printed (the paper only says "following
  [51]"); the paper variant keeps the code's 8e-4 and 8e-3 (``lambda_smooth``,
  ``lambda_sparse``), now applied to the per-video forms.
* The paper has no crops: every selected crop is treated as a view of its video, ``g``
  is taken per crop, and pairs are formed between videos within the same crop; the
  top-k set is chosen on crop-averaged magnitudes and scores are crop-averaged, as in
  the code.
* "50 epochs" (Sec. 4.2) is not converted: ``max_steps`` stays the code's 15000.
* Not offered (architecture, fixed by the official checkpoints): the code's dropout on
  the MTN output before the magnitudes are taken (the paper puts dropout after the FC
  layers only), and its TSA details: affinity ``theta phi^T`` divided by T, D/8-wide
  inner convolutions (the paper: D/4), BatchNorm after the output convolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vadpipe.errors import ConfigError
from vadpipe.heads.base import AnomalyHead, HeadSpec, register_head

__all__ = [
    "RTFMConfig",
    "RTFMHead",
    "MultiScaleTemporalNetwork",
    "TemporalNonLocal",
    "rtfm_video_bce",
    "rtfm_snippet_bce",
    "rtfm_smoothness",
    "rtfm_sparsity",
    "rtfm_magnitude_loss",
    "rtfm_optimizer",
    "official_weight_init",
    "OFFICIAL_MAGNITUDE_WEIGHT",
    "PAPER_MAGNITUDE_WEIGHT",
    "RTFM_PAPER_SETTINGS",
]

MagnitudeLoss = Literal["official", "paper_hinge"]
SparsityLoss = Literal["official", "paper_l1"]
SmoothnessLoss = Literal["official", "per_video"]
ClassificationLoss = Literal["official", "paper_snippet"]

#: Weight of the official magnitude loss: ``RTFM_loss(0.0001, 100)`` in ``train.py``.
OFFICIAL_MAGNITUDE_WEIGHT = 1e-4
#: Weight of ``l_s`` in the paper's eq. (1): ``L = l_s + l_f``, i.e. 1.
PAPER_MAGNITUDE_WEIGHT = 1.0
_MAGNITUDE_WEIGHTS: dict[str, float] = {
    "official": OFFICIAL_MAGNITUDE_WEIGHT,
    "paper_hinge": PAPER_MAGNITUDE_WEIGHT,
}
#: Every paper choice that differs from the code (:meth:`RTFMConfig.paper`); ``alpha`` stays
#: ``None`` so that the paper hinge gets its own weight 1.
RTFM_PAPER_SETTINGS: dict[str, Any] = {
    "magnitude_loss": "paper_hinge",
    "classification": "paper_snippet",
    "smoothness": "per_video",
    "sparsity": "paper_l1",
    "eligibility_dropout": False,
    "weight_decay": 5e-4,
}


@dataclass
class RTFMConfig:
    """Hyper-parameters of RTFM; defaults are the official code's.

    Attributes:
        feature_dim: snippet feature size D (``--feature-size``, 2048 for I3D mix_5c).
            Must be divisible by 8: the dilated branches have D/4 channels and the
            non-local block D/8 inner channels (512 and 256 for D = 2048).
        fc_dims: widths of ``fc1`` and ``fc2`` (512, 128); ``fc3`` has 1 output.
        batch_size: videos *per class* in a training batch (``--batch-size`` 32; the
            paper's "batch size 64" is 32 normal + 32 abnormal).
        n_crops: crops per video (10 for the published features). The official forward
            hard-codes 10 when splitting normal/abnormal features; here the actual number
            of crops of the input is used.
        segments: snippets per training video (32, ``process_feat``).
        k: top-k snippets per video. Official: ``num_segments // 10`` with
            ``num_segments = 32`` fixed in ``Model.__init__``, i.e. 3 whatever T is.
        dropout: rate of the single ``nn.Dropout`` the official model reuses everywhere
            (aggregated features, after fc1, after fc2, and the top-k eligibility masks).
        margin: magnitude margin m (100).
        alpha: weight of the magnitude loss; ``None`` (default): the weight that goes with
            ``magnitude_loss`` -- 1e-4 for ``"official"`` (``RTFM_loss(0.0001, 100)``), 1 for
            ``"paper_hinge"`` (eq. 1 adds ``l_s`` unweighted). A number is used as given for
            either variant. :attr:`magnitude_weight` is the weight in effect.
        lambda_smooth: smoothness weight (``smooth(abn_scores, 8e-4)``).
        lambda_sparse: sparsity weight (``sparsity(abn_scores, batch_size, 8e-3)``).
        lr: Adam learning rate (``--lr '[0.001]*15000'``; the paper uses 1e-4 for XD-Violence).
        weight_decay: Adam weight decay. Code (``main.py``): 0.005; the paper says 0.0005.
        max_steps: training iterations (``--max-epoch 15000``: one batch per "epoch").
        magnitude_loss: ``"official"``: ``mean_r (|m - ||mean_k a_r||| + ||mean_k n_r||)^2``
            (absolute value, norm of the mean top-k feature, abnormal row r vs normal row
            r); ``"paper_hinge"``: eq. (6), ``mean_{c,i,j} max(0, m - g(a_{c,i}) +
            g(n_{c,j}))`` over every abnormal x normal video pair of each crop, with ``g``
            the mean of the top-k snippet magnitudes (eq. 2), not squared.
        sparsity: ``"official"``: ``lambda * ||s_abn||_2`` over all abnormal snippet
            scores of the batch flattened; ``"paper_l1"``: ``lambda * mean_videos sum_t |s_t|``.
        smoothness: ``"official"``: ``lambda * sum (s_{i+1} - s_i)^2`` over the flattened
            abnormal scores (pairs cross video boundaries); ``"per_video"``: the same sum
            restricted to pairs inside each video, averaged over videos.
        classification: ``"official"``: BCE on each video's score (mean of the top-k
            snippet scores), mean over videos; ``"paper_snippet"``: eq. (7), BCE on every
            top-k snippet score, summed over the k snippets, mean over videos.
        eligibility_dropout: ``True`` (official): in training the top-k is taken among
            the snippets that survive the model's dropout applied to a mask of ones;
            ``False`` (paper eq. 2): the exact top-k magnitudes. No effect in eval mode.
    """

    feature_dim: int = 2048
    fc_dims: tuple[int, int] = (512, 128)
    batch_size: int = 32
    n_crops: int = 10
    segments: int = 32
    k: int = 3
    dropout: float = 0.7
    margin: float = 100.0
    alpha: float | None = None
    lambda_smooth: float = 8e-4
    lambda_sparse: float = 8e-3
    lr: float = 1e-3
    weight_decay: float = 5e-3
    max_steps: int = 15000
    magnitude_loss: MagnitudeLoss = "official"
    sparsity: SparsityLoss = "official"
    smoothness: SmoothnessLoss = "official"
    classification: ClassificationLoss = "official"
    eligibility_dropout: bool = True

    def __post_init__(self) -> None:
        self.fc_dims = tuple(int(d) for d in self.fc_dims)  # type: ignore[assignment]
        if self.feature_dim <= 0 or self.feature_dim % 8:
            raise ConfigError(f"RTFM feature_dim must be a positive multiple of 8, got {self.feature_dim}")
        if len(self.fc_dims) != 2 or min(self.fc_dims) <= 0:
            raise ConfigError(f"RTFM fc_dims must be two positive widths, got {self.fc_dims}")
        if self.k <= 0:
            raise ConfigError(f"RTFM k must be positive, got {self.k}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"RTFM dropout must be in [0, 1), got {self.dropout}")
        if self.alpha is not None and not (math.isfinite(self.alpha) and self.alpha >= 0.0):
            raise ConfigError(f"RTFM alpha must be None or a finite weight >= 0, got {self.alpha}")
        if not isinstance(self.eligibility_dropout, bool):
            raise ConfigError(f"RTFM eligibility_dropout must be True or False, got {self.eligibility_dropout!r}")
        choices = {
            "magnitude_loss": ("official", "paper_hinge"),
            "sparsity": ("official", "paper_l1"),
            "smoothness": ("official", "per_video"),
            "classification": ("official", "paper_snippet"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"RTFM {name} must be one of {allowed}, got {getattr(self, name)!r}")

    @property
    def magnitude_weight(self) -> float:
        """Weight of the magnitude loss in effect: ``alpha``, or the variant's own weight
        (``OFFICIAL_MAGNITUDE_WEIGHT`` / ``PAPER_MAGNITUDE_WEIGHT``) when ``alpha`` is None."""
        return _MAGNITUDE_WEIGHTS[self.magnitude_loss] if self.alpha is None else float(self.alpha)

    @classmethod
    def paper(cls, **overrides: Any) -> "RTFMConfig":
        """Every choice of the paper that differs from the code (:data:`RTFM_PAPER_SETTINGS`).

        Eq. (6) hinge over all abnormal x normal pairs with weight 1 (eq. 1), eq. (7) BCE
        summed over the top-k snippets, per-video smoothness and L1 sparsity (Sec. 3.4),
        exact top-k (eq. 2, no eligibility dropout), weight decay 5e-4 (Sec. 4.2).
        ``overrides`` change any field afterwards.
        """
        return cls(**{**RTFM_PAPER_SETTINGS, **overrides})


# ----------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------


def official_weight_init(module: nn.Module) -> None:
    """``model.py::weight_init``: Xavier-uniform weights and zero biases for every module
    whose class name contains ``Conv`` or ``Linear``; BatchNorm keeps its own init."""
    name = type(module).__name__
    if "Conv" in name or "Linear" in name:
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class TemporalNonLocal(nn.Module):
    """Official ``NONLocalBlock1D(512, sub_sample=False, bn_layer=True)`` (the paper's TSA).

    ``z = W(y) + x`` with ``y = (theta(x)^T phi(x) / T) g(x)``: a dot-product affinity
    divided by the number of positions, no softmax. ``W`` is a 1x1 conv followed by
    BatchNorm whose weight and bias start at zero, so the block is the identity at init.
    Submodules are registered in the official order ``g, W, theta, phi``.
    """

    def __init__(self, channels: int, inter_channels: int | None = None) -> None:
        super().__init__()
        self.in_channels = channels
        self.inter_channels = inter_channels if inter_channels is not None else max(channels // 2, 1)
        c, ci = self.in_channels, self.inter_channels
        self.g = nn.Conv1d(c, ci, kernel_size=1)
        self.W = nn.Sequential(nn.Conv1d(ci, c, kernel_size=1), nn.BatchNorm1d(c))
        nn.init.zeros_(self.W[1].weight)
        nn.init.zeros_(self.W[1].bias)
        self.theta = nn.Conv1d(c, ci, kernel_size=1)
        self.phi = nn.Conv1d(c, ci, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, C, T] -> [B, C, T]``."""
        g_x = self.g(x).transpose(1, 2)  # [B, T, C']
        theta_x = self.theta(x).transpose(1, 2)  # [B, T, C']
        phi_x = self.phi(x)  # [B, C', T]
        affinity = torch.matmul(theta_x, phi_x)  # [B, T, T]
        affinity = affinity / affinity.size(-1)
        y = torch.matmul(affinity, g_x).transpose(1, 2).contiguous()  # [B, C', T]
        return self.W(y) + x


class MultiScaleTemporalNetwork(nn.Module):
    """Official ``Aggregate`` (the paper's MTN): pyramid of dilated convs + non-local.

    Branches ``conv_1..3``: Conv1d(D, D/4, k=3, dilation 1/2/4, padding = dilation) → ReLU →
    BatchNorm. ``conv_4``: Conv1d(D, D/4, k=1, no bias) → ReLU, then the non-local block.
    The four D/4 outputs are concatenated (branches first) → ``conv_5``: Conv1d(D, D, k=3,
    no bias) → ReLU → BatchNorm, plus the input as residual.
    """

    def __init__(self, feature_dim: int) -> None:
        super().__init__()
        d, c = feature_dim, feature_dim // 4
        self.len_feature = d
        self.conv_1 = nn.Sequential(nn.Conv1d(d, c, 3, stride=1, dilation=1, padding=1), nn.ReLU(), nn.BatchNorm1d(c))
        self.conv_2 = nn.Sequential(nn.Conv1d(d, c, 3, stride=1, dilation=2, padding=2), nn.ReLU(), nn.BatchNorm1d(c))
        self.conv_3 = nn.Sequential(nn.Conv1d(d, c, 3, stride=1, dilation=4, padding=4), nn.ReLU(), nn.BatchNorm1d(c))
        self.conv_4 = nn.Sequential(nn.Conv1d(d, c, 1, stride=1, padding=0, bias=False), nn.ReLU())
        self.conv_5 = nn.Sequential(
            nn.Conv1d(4 * c, d, 3, stride=1, padding=1, bias=False), nn.ReLU(), nn.BatchNorm1d(d)
        )
        self.non_local = TemporalNonLocal(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, T, D] -> [B, T, D]``."""
        x = x.transpose(1, 2)  # [B, D, T]
        pyramid = torch.cat((self.conv_1(x), self.conv_2(x), self.conv_3(x)), dim=1)
        attention = self.non_local(self.conv_4(x))
        out = self.conv_5(torch.cat((pyramid, attention), dim=1)) + x
        return out.transpose(1, 2)


class RTFMHead(AnomalyHead):
    """RTFM head with the official module names (``Aggregate``, ``fc1``-``fc3``, ...).

    Call :meth:`eval` before :meth:`snippet_scores` for inference (BatchNorm running
    statistics, no dropout), as the official ``test_10crop.py`` does.
    """

    def __init__(self, config: RTFMConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else RTFMConfig()
        cfg = self.config
        h1, h2 = cfg.fc_dims
        self.Aggregate = MultiScaleTemporalNetwork(cfg.feature_dim)
        self.fc1 = nn.Linear(cfg.feature_dim, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, 1)
        self.drop_out = nn.Dropout(cfg.dropout)
        self.relu = nn.ReLU()
        self.sigmoid = nn.Sigmoid()
        self.apply(official_weight_init)

    # -- building blocks -------------------------------------------------------------

    def _check_input(self, x: torch.Tensor, name: str) -> None:
        if x.dim() != 4:
            raise ValueError(f"RTFM expects {name} of shape [B, N, T, D], got {tuple(x.shape)}")
        if x.shape[-1] != self.config.feature_dim:
            raise ValueError(
                f"RTFM configured for feature_dim={self.config.feature_dim} but {name} has D={x.shape[-1]}"
            )

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        """``[bs, N, T, D] -> [bs * N, T, D]``: fold crops video-major, MTN, dropout."""
        bs, n, t, d = x.shape
        return self.drop_out(self.Aggregate(x.reshape(bs * n, t, d)))

    def _classify(self, features: torch.Tensor) -> torch.Tensor:
        """Snippet classifier on ``[..., D]`` → sigmoid scores ``[..., 1]``."""
        s = self.drop_out(self.relu(self.fc1(features)))
        s = self.drop_out(self.relu(self.fc2(s)))
        return self.sigmoid(self.fc3(s))

    def _select_topk(
        self, features: torch.Tensor, scores: torch.Tensor, magnitudes: torch.Tensor, ncrops: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Top-k by crop-averaged magnitude (after a dropout mask of ones when
        ``config.eligibility_dropout``; the exact top-k otherwise).

        Args:
            features: ``[n * ncrops, T, D]`` (video-major), scores ``[n, T, 1]``,
                magnitudes ``[n, T]``.

        Returns:
            ``(video_score [n, 1], selected features [ncrops * n, k, D] crop-major,
            indices [n, k])``.
        """
        n, t = magnitudes.shape
        eligible = torch.ones_like(magnitudes)
        if self.config.eligibility_dropout:
            eligible = self.drop_out(eligible)
        idx = torch.topk(magnitudes * eligible, self.config.k, dim=1)[1]  # [n, k]
        per_crop = features.reshape(n, ncrops, t, -1).transpose(0, 1)  # [ncrops, n, T, D]
        gather_idx = idx.unsqueeze(2).expand(-1, -1, features.shape[-1])
        selected = torch.cat([torch.gather(crop, 1, gather_idx) for crop in per_crop], dim=0)
        video_score = torch.gather(scores, 1, idx.unsqueeze(2)).mean(dim=1)
        return video_score, selected, idx

    # -- official forward ------------------------------------------------------------

    def _forward_parts(
        self, inputs: torch.Tensor, batch_size: int | None, single_video_is_inference: bool
    ) -> dict[str, torch.Tensor]:
        """The official forward, returning named parts (including the top-k indices)."""
        self._check_input(inputs, "inputs")
        bsz = self.config.batch_size if batch_size is None else int(batch_size)
        bs, ncrops, t, _ = inputs.shape
        if t < self.config.k:
            raise ValueError(f"RTFM needs at least k={self.config.k} snippets per video, got T={t}")
        n_normal = min(bsz, bs)
        copy_single = single_video_is_inference and n_normal == 1
        if not copy_single and bs != 2 * n_normal:
            raise ValueError(
                f"RTFM forward expects {bsz} normal then {bsz} abnormal videos (or one video at test), got {bs}"
            )

        features = self._features(inputs)  # [bs * ncrops, T, D]
        scores = self._classify(features).reshape(bs, ncrops, t).mean(1).unsqueeze(2)  # [bs, T, 1]
        magnitudes = features.norm(p=2, dim=2).reshape(bs, ncrops, t).mean(1)  # [bs, T]

        split = n_normal * ncrops
        normal = (features[:split], scores[:n_normal], magnitudes[:n_normal])
        abnormal = normal if copy_single else (features[split:], scores[n_normal:], magnitudes[n_normal:])

        score_abnormal, feat_select_abn, idx_abn = self._select_topk(*abnormal, ncrops)
        score_normal, feat_select_normal, idx_normal = self._select_topk(*normal, ncrops)
        return {
            "score_abnormal": score_abnormal,
            "score_normal": score_normal,
            "feat_select_abn": feat_select_abn,
            "feat_select_normal": feat_select_normal,
            "scores": scores,
            "feat_magnitudes": magnitudes,
            "idx_abn": idx_abn,
            "idx_normal": idx_normal,
            "scores_abn": abnormal[1],
            "scores_normal": normal[1],
        }

    def forward_official(
        self, inputs: torch.Tensor, batch_size: int | None = None, *, single_video_is_inference: bool = True
    ) -> tuple[torch.Tensor, ...]:
        """Reproduce ``Model.forward`` of the official ``model.py``.

        Args:
            inputs: ``[bs, ncrops, T, D]``; the first ``batch_size`` videos are normal, the
                rest abnormal (``bs == 2 * batch_size`` in training, ``bs == 1`` at test).
            batch_size: the official constructor argument; defaults to ``config.batch_size``.
            single_video_is_inference: official behaviour: when the normal half has one
                video, the abnormal half is replaced by a copy of it (test time). Pass
                ``False`` to train with one video per class.

        Returns:
            The official 10-tuple ``(score_abnormal [n, 1], score_normal [n, 1],
            feat_select_abn [ncrops * n, k, D], feat_select_normal [ncrops * n, k, D],
            feat_select_abn, feat_select_abn, scores [bs, T, 1], feat_select_abn,
            feat_select_abn, feat_magnitudes [bs, T])`` with ``n`` videos per class,
            selected features concatenated crop-major (row ``c * n + b``), ``scores`` the
            crop-averaged sigmoid scores and ``feat_magnitudes`` the crop-averaged L2 norms.

        Random draws happen in the official order (feature dropout, fc1 and fc2 dropout,
        the abnormal then the normal eligibility mask), so a seeded training step matches.
        With ``config.eligibility_dropout=False`` (paper) the two masks are not drawn.
        """
        p = self._forward_parts(inputs, batch_size, single_video_is_inference)
        fa = p["feat_select_abn"]
        return (
            p["score_abnormal"],
            p["score_normal"],
            fa,
            p["feat_select_normal"],
            fa,
            fa,
            p["scores"],
            fa,
            fa,
            p["feat_magnitudes"],
        )

    def forward(self, inputs: torch.Tensor, batch_size: int | None = None) -> tuple[torch.Tensor, ...]:
        """Same as :meth:`forward_official` (drop-in for the official ``Model``)."""
        return self.forward_official(inputs, batch_size)

    # -- AnomalyHead -----------------------------------------------------------------

    def loss(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Official training objective (``train.py``) on ``B`` normal + ``B`` abnormal videos.

        With ``s`` the crop-averaged snippet scores of the abnormal videos flattened to
        ``[B * T]``, ``a_r``/``n_r`` the selected top-k abnormal/normal features of row ``r``
        (``ncrops * B`` rows, crop-major, row ``r`` of both halves = same crop and index),
        and ``y`` = 0 for normal, 1 for abnormal::

            L = BCE([score_normal; score_abnormal], [0...; 1...])             (mean)
              + alpha * mean_r (|m - ||mean_k a_r||_2| + ||mean_k n_r||_2)^2
              + lambda_sparse * ||s||_2
              + lambda_smooth * sum_i (s_{i+1} - s_i)^2   (i over the flattened s, so
                                                           pairs cross video boundaries)

        (``train.py::sparsity`` is ``lambda * mean(norm(arr, dim=0))`` of a 1-D tensor, i.e.
        its L2 norm.) Options of :class:`RTFMConfig` switch each term to the paper's form
        (module docstring); ``alpha`` above is :attr:`RTFMConfig.magnitude_weight`.

        Args:
            normal, abnormal: ``[B, N, T, D]`` features, the same shape.

        Returns the loss and the parts ``cls``, ``magnitude``, ``smooth``, ``sparse``
        (weighted) and ``total``.
        """
        self._check_input(normal, "normal")
        self._check_input(abnormal, "abnormal")
        if normal.shape != abnormal.shape:
            raise ValueError(f"normal {tuple(normal.shape)} and abnormal {tuple(abnormal.shape)} must match")
        b, ncrops, t, _ = normal.shape
        p = self._forward_parts(torch.cat((normal, abnormal), 0), b, single_video_is_inference=False)
        cfg = self.config
        if cfg.classification == "official":
            loss_cls = rtfm_video_bce(p["score_normal"], p["score_abnormal"])
        else:
            sel_n = torch.gather(p["scores_normal"][..., 0], 1, p["idx_normal"])  # [B, k]
            sel_a = torch.gather(p["scores_abn"][..., 0], 1, p["idx_abn"])  # [B, k]
            loss_cls = rtfm_snippet_bce(sel_n, sel_a)
        abn_scores = p["scores"][b:].reshape(b * t)
        magnitude = cfg.magnitude_weight * rtfm_magnitude_loss(
            p["feat_select_abn"], p["feat_select_normal"], cfg.margin, cfg.magnitude_loss, ncrops=ncrops
        )
        sparse = rtfm_sparsity(abn_scores, cfg.lambda_sparse, cfg.sparsity, t)
        smooth = rtfm_smoothness(abn_scores, cfg.lambda_smooth, cfg.smoothness, t)
        total = loss_cls + magnitude + smooth + sparse
        parts = {
            "cls": float(loss_cls.detach()),
            "magnitude": float(magnitude.detach()),
            "smooth": float(smooth.detach()),
            "sparse": float(sparse.detach()),
            "total": float(total.detach()),
        }
        return total, parts

    def snippet_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Crop-averaged sigmoid scores ``[B, T]`` of ``features [B, N, T, D]``.

        Equals the official ``scores`` output for each video run alone (test_10crop.py),
        since in eval mode videos do not interact. Use ``model.eval()`` first.
        """
        self._check_input(features, "features")
        b, n, t, _ = features.shape
        return self._classify(self._features(features)).reshape(b, n, t).mean(1)

    def snippet_magnitudes(self, features: torch.Tensor) -> torch.Tensor:
        """Crop-averaged L2 magnitudes ``[B, T]`` of the MTN features (for plots)."""
        self._check_input(features, "features")
        b, n, t, _ = features.shape
        return self._features(features).norm(p=2, dim=2).reshape(b, n, t).mean(1)


# ----------------------------------------------------------------------------------------
# Loss terms
# ----------------------------------------------------------------------------------------


def rtfm_sparsity(
    abn_scores: torch.Tensor, lam: float, mode: SparsityLoss = "official", t: int | None = None
) -> torch.Tensor:
    """Sparsity on the flattened abnormal snippet scores ``[B * T]``.

    ``"official"``: ``lam * ||s||_2`` (``train.py::sparsity``: ``mean(norm(arr, dim=0))`` of
    a 1-D tensor is its L2 norm). ``"paper_l1"``: ``lam * mean_videos sum_t |s_t|``.
    """
    if mode == "official":
        return lam * torch.linalg.vector_norm(abn_scores, ord=2)
    per_video = abn_scores.reshape(-1, t if t is not None else abn_scores.numel())
    return lam * per_video.abs().sum(dim=1).mean()


def rtfm_smoothness(
    abn_scores: torch.Tensor, lam: float, mode: SmoothnessLoss = "official", t: int | None = None
) -> torch.Tensor:
    """Temporal smoothness on the flattened abnormal snippet scores ``[B * T]``.

    ``"official"`` (``train.py::smooth``): ``lam * sum_{i < L-1} (s_{i+1} - s_i)^2`` over the
    whole flattened vector (the shifted copy repeats the last element, so the final term is
    0; pairs across video boundaries count). ``"per_video"``: only pairs inside each video,
    summed per video and averaged over videos.
    """
    if mode == "official":
        return lam * (abn_scores[1:] - abn_scores[:-1]).pow(2).sum()
    per_video = abn_scores.reshape(-1, t if t is not None else abn_scores.numel())
    return lam * (per_video[:, 1:] - per_video[:, :-1]).pow(2).sum(dim=1).mean()


def rtfm_magnitude_loss(
    feat_abn: torch.Tensor,
    feat_nor: torch.Tensor,
    margin: float,
    mode: MagnitudeLoss = "official",
    *,
    ncrops: int = 1,
) -> torch.Tensor:
    """Feature-magnitude separation (unweighted) on the selected top-k features.

    Args:
        feat_abn, feat_nor: ``[R, k, D]`` selected features, ``R = ncrops * n`` rows
            crop-major (row ``c * n + v``), as :meth:`RTFMHead.forward_official` returns them.
        margin: ``m``.
        mode: ``"official"`` (``RTFM_loss``): ``mean_r (|m - ||mean_k a_r||| +
            ||mean_k n_r||)^2``, row ``r`` of both halves paired. ``"paper_hinge"`` (eq. 6
            summed over pairs as in eq. 1): ``mean_{c,i,j} max(0, m - g(a_{c,i}) +
            g(n_{c,j}))``, ``g`` = mean over k of the L2 norms (eq. 2), every abnormal
            video ``i`` against every normal video ``j`` within each crop ``c``.
        ncrops: crops ``N`` in the row layout (``"paper_hinge"`` only; 1 pairs every
            abnormal row with every normal row).

    Returns:
        A scalar.
    """
    if mode == "official":
        loss_abn = torch.abs(margin - torch.linalg.vector_norm(feat_abn.mean(dim=1), ord=2, dim=1))
        loss_nor = torch.linalg.vector_norm(feat_nor.mean(dim=1), ord=2, dim=1)
        return ((loss_abn + loss_nor) ** 2).mean()
    if ncrops < 1 or feat_abn.shape[0] % ncrops or feat_nor.shape[0] % ncrops:
        raise ValueError(
            f"RTFM paper_hinge: {feat_abn.shape[0]} abnormal and {feat_nor.shape[0]} normal rows "
            f"are not whole videos of ncrops={ncrops} crops"
        )
    g_abn = torch.linalg.vector_norm(feat_abn, ord=2, dim=2).mean(dim=1).reshape(ncrops, -1)  # [N, B_a]
    g_nor = torch.linalg.vector_norm(feat_nor, ord=2, dim=2).mean(dim=1).reshape(ncrops, -1)  # [N, B_n]
    separability = g_abn[:, :, None] - g_nor[:, None, :]  # d(X_i, X_j), eq. (3): [N, B_a, B_n]
    return torch.clamp(margin - separability, min=0).mean()


def rtfm_video_bce(score_normal: torch.Tensor, score_abnormal: torch.Tensor) -> torch.Tensor:
    """``BCELoss(mean)`` of ``cat(score_normal, score_abnormal)`` against labels 0 then 1."""
    score = torch.cat((score_normal.reshape(-1), score_abnormal.reshape(-1)))
    label = torch.cat((torch.zeros(score_normal.numel()), torch.ones(score_abnormal.numel()))).to(score)
    return F.binary_cross_entropy(score, label)


def rtfm_snippet_bce(score_normal: torch.Tensor, score_abnormal: torch.Tensor) -> torch.Tensor:
    """Eq. (7): ``sum_{x in Ω_k} BCE(f(x), y)`` per video, averaged over all videos.

    Args:
        score_normal: ``[B, k]`` scores of the top-k snippets of each normal video (y = 0).
        score_abnormal: ``[B', k]`` the same for the abnormal videos (y = 1).

    Returns:
        A scalar: ``(sum_v sum_k BCE) / (B + B')``.
    """
    score = torch.cat((score_normal, score_abnormal), 0)  # [B + B', k]
    label = torch.cat((torch.zeros_like(score_normal), torch.ones_like(score_abnormal)), 0)
    per_snippet = F.binary_cross_entropy(score, label, reduction="none")
    return per_snippet.sum(dim=1).mean()


def rtfm_optimizer(params, config: RTFMConfig) -> torch.optim.Optimizer:
    """``optim.Adam(model.parameters(), lr=0.001, weight_decay=0.005)`` (``main.py``)."""
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)


register_head(
    HeadSpec(
        name="rtfm",
        config_cls=RTFMConfig,
        build=RTFMHead,
        optimizer=rtfm_optimizer,
        description="RTFM (Tian et al. 2021): MTN + top-k feature-magnitude MIL, 10-crop I3D features",
        presets={"paper": dict(RTFM_PAPER_SETTINGS)},  # vadpipe train --head rtfm --preset paper
    )
)
