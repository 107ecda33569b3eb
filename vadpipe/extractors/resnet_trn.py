"""ResNet-50 + multi-scale patch nodes + TRN relation module (SA-CRF's relation-aware extractor).

Pipeline of :class:`ResNetTRN` for an ImageNet-normalised clip ``[B, 3, T, H, W]``:

1. **Trunk.** torchvision's ResNet-50 ``conv1 .. layer4`` (no ``avgpool``/``fc``) applied to
   every frame -> feature map ``[B*T, 2048, h, w]`` (``h = ceil(H / 32)``, 7x7 at 224 px).
2. **Patch nodes.** The map is split at partition scales ``k = 1, 2, 3`` into
   ``1 + 4 + 9 = 14`` regions and each region is global-MAX-pooled to 2048-D
   (SA-CRF Sec. 4: "global max pooling is applied to each" patch). Region rule: this is
   exactly ``F.adaptive_max_pool2d(fmap, k)``; cell ``(i, j)`` of a ``k x k`` grid covers
   rows ``floor(i*h/k) .. ceil((i+1)*h/k) - 1`` and columns ``floor(j*w/k) ..
   ceil((j+1)*w/k) - 1``. When ``k`` does not divide the map, neighbouring cells overlap
   (7x7, k=2: rows 0-3 and 3-6; k=3: 0-2, 2-4, 4-6; a 2x2 map with k=3: rows 0, 0-1, 1).
   Node order: whole map, then the 2x2 grid row-major, then the 3x3 grid row-major.
   Result: ``[B, T, 14, 2048]`` (:meth:`ResNetTRN.patch_features`).
3. **Temporal relations.** :class:`RelationModuleMultiScale` (TRN, Zhou et al., ECCV 2018)
   runs over time independently for each of the 14 nodes (weights shared by all nodes):
   for every scale ``s`` (default ``T, T-1, ..., 2``) it takes ordered ``s``-frame subsets,
   concatenates their features, applies the scale's MLP ``ReLU -> Linear(s*2048, 256) ->
   ReLU -> Linear(256, D_out)``, averages over the subsets of the scale
   (``subset_reduction="sum"`` reproduces TRN's summation) and SUMS over scales.

Output of ``forward``: float32 ``[B, 14, D_out]`` (``D_out = 2048`` by default, the SA-CRF
head's ``feature_dim``). Unlike the other backbones this one yields 14 node vectors per clip
(``BackboneSpec.nodes = 14``), so a video's feature file is ``[n_clips, 14, D_out]`` — the
``[T, G, F]`` layout the SA-CRF head consumes.

Subset selection. The full scale ``s = T`` has one subset (all frames). For ``s < T`` at
most ``subsample_num = 3`` subsets are used, as in TRN. In training mode they are drawn at
random (uniform ordered ``s``-subsets, from torch's global RNG), as TRN does. In eval mode
(the extractor is frozen at inference) they are deterministic, "strided" subsets: subset
``q`` of ``m`` uses frames ``floor((i + (q + 0.5) / m) * T / s)`` for ``i = 0 .. s-1``
(evenly spread over the clip, each with a different phase; duplicates dropped).

Weights. The trunk loads torchvision's ImageNet ResNet-50 state dict
(``resnet50-11ad3fa6.pth`` = IMAGENET1K_V2, or ``resnet50-0676ba61.pth`` = V1; BSD-3) with
``torch.load(weights_only=True)``; every trunk key must be present and match in shape
(``fc.weight``/``fc.bias`` in the file are ignored; any other extra key is an error). The
TRN relation MLPs have NO published weights for this use: unless a trained relation state
dict is given, they are randomly initialised from a fixed seed (``relation_seed``), and the
pretrained builder refuses to do that without explicit opt-in
(``allow_untrained_relation=True`` or ``$VADPIPE_TRN_ALLOW_UNTRAINED_RELATION=1``).

Inner-product relation (SA-CRF Sec. 3.2, second modification; ``relation_type="inner-product"``).
:class:`InnerProductAttention` re-weighs the trunk's output before the patch pooling. With
the clip's feature maps ``D`` ``[K, C, h, w]`` flattened to ``N = K*h*w`` positions
``d_a`` (order: frame, row, column) it computes, exactly::

    gamma[a, a'] = psi1(d_a) . psi2(d_a') / sqrt(E)          # psi1, psi2: Linear(C, E)
    alpha_a      = sigmoid(w . [d_a ; gamma[a, 1..N]] + b)   # w: one trainable (C + N) vector
    D'_a         = alpha_a * d_a

The paper (Sec. 3.2, paragraph "Second, ...", text lines 74) gives ``gamma(a, a') =
psi1(d_a)^T psi2(d'_a')`` with linear embeddings, "collecting all of these dependencies at
position a yields [gamma(a, 1), ..., gamma(a, KWH)]", "concatenated with the intermediate
feature maps and then transformed into a scalar attention weight ... by multiplying with a
trainable weight to re-weigh the output of the convolutional blocks". It leaves open, and
this module chooses: which block (the last, ``layer4``, whose output is pooled); the
embedding size ``E`` (``embed_dim``, 256 = C/8); the ``1/sqrt(E)`` scale (taken from its
reference [27]); the squashing of the scalar (a sigmoid, no residual); which positions are
"neighbouring frames" (all ``K*h*w`` positions of the input frames, as the index range
``1..KWH`` says, the position's own frame included). Because the weight multiplies a
``C + N`` vector, a model is tied to its ``num_frames`` and input size (``input_size``,
224 px -> 7x7 maps); a different size is refused. The paper says "global average pooling"
in Sec. 3.2 but "global max pooling" in Sec. 4.2; the patches stay max-pooled (4.2).

Trained weights. ``vadpipe train-backbone resnet50-trn`` (:mod:`vadpipe.pipeline.trn`)
trains trunk, attention and relation module end to end; ``vadpipe weights import
resnet50-trn runs/trn/best.pt`` converts the checkpoint to :data:`TRAINED_FILE_NAME`
(safetensors, the model configuration in its metadata, sha256 in the weights index).
:func:`resnet50_trn` builds from that file when it is installed (or named by
``$VADPIPE_TRN_TRAINED``), so features need no opt-in; the trunk-only path above (ImageNet
file + random relation) stays refused with a message naming both commands.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vadpipe.errors import ConfigError, WeightsIntegrityError, WeightsNotFoundError
from vadpipe.extractors.presets import ClipPreset
from vadpipe.extractors.registry import BackboneSpec, Weights, register_backbone
from vadpipe.extractors.weights import locate_weight_file, sha256_file
from vadpipe.loading import load_checked, read_state_dict

__all__ = [
    "RELATION_TYPES",
    "TRAINED_ENV",
    "TRAINED_FILE_NAME",
    "TRAINED_FORMAT",
    "TRAIN_CHECKPOINT_FORMAT",
    "TRUNKS",
    "InnerProductAttention",
    "TrunkSpec",
    "read_trained_weights",
    "register_trunk",
    "trained_weights_file",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_NODES",
    "RESNET50_CKPT_NAME",
    "RESNET50_ENV",
    "RESNET50_HOW_TO_GET",
    "RESNET50_WEIGHTS",
    "RELATION_ALLOW_ENV",
    "RELATION_ENV",
    "ResNet50Trunk",
    "ResNetTRN",
    "RelationModuleMultiScale",
    "locate_resnet50_checkpoint",
    "load_resnet50_state_dict",
    "num_patches",
    "patch_max_pool",
    "resnet50_trn",
    "strided_subsets",
]

TRUNK_DIM = 2048
DEFAULT_OUT_DIM = 2048
DEFAULT_PARTITION_SCALES = (1, 2, 3)
NUM_NODES = 14
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Preferred file (torchvision IMAGENET1K_V2) and the V1 file, both accepted in the cache.
RESNET50_CKPT_NAME = "resnet50-11ad3fa6.pth"
RESNET50_V1_CKPT_NAME = "resnet50-0676ba61.pth"
RESNET50_URL = "https://download.pytorch.org/models/resnet50-11ad3fa6.pth"
#: Environment variable pointing at a ResNet-50 state dict file.
RESNET50_ENV = "VADPIPE_RESNET50_CKPT"
#: Environment variable pointing at a trained relation-module state dict.
RELATION_ENV = "VADPIPE_TRN_RELATION_CKPT"
#: Set to ``1`` to allow the randomly initialised (untrained) relation module.
RELATION_ALLOW_ENV = "VADPIPE_TRN_ALLOW_UNTRAINED_RELATION"
#: Environment variable pointing at trained resnet50-trn weights (converted file or best.pt).
TRAINED_ENV = "VADPIPE_TRN_TRAINED"
#: The converted trained weights in the weights cache (``vadpipe weights import resnet50-trn best.pt``).
TRAINED_FILE_NAME = "resnet50-trn-trained.safetensors"
#: ``format`` of the converted file's metadata and of ``vadpipe train-backbone`` checkpoints.
TRAINED_FORMAT = "vadpipe-trn-extractor/1"
TRAIN_CHECKPOINT_FORMAT = "vadpipe-trn-backbone/1"
#: Relation modules: plain TRN, or TRN after SA-CRF's inner-product attention.
RELATION_TYPES = ("trn", "inner-product")
TRAIN_COMMANDS = (
    "train them with `vadpipe train-backbone resnet50-trn --videos train.csv -o runs/trn` and register "
    "them with `vadpipe weights import resnet50-trn runs/trn/best.pt`"
)
RESNET50_HOW_TO_GET = (
    f"download torchvision's ImageNet ResNet-50 weights {RESNET50_URL} (BSD-3-Clause) and run "
    f"`vadpipe weights import resnet50-trn FILE` (stores {RESNET50_CKPT_NAME} in the weights "
    f"folder), or set {RESNET50_ENV}=/path/to/{RESNET50_CKPT_NAME}"
)

# torchvision names its files <arch>-<first 8 hex of sha256>.pth (check_hash compares them).
_TV_NAME = re.compile(r"^resnet50-([0-9a-f]{8})\.pth$")
_TRUNK_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


# --------------------------------------------------------------------------------------
# Patch split
# --------------------------------------------------------------------------------------


def num_patches(partition_scales: Sequence[int] = DEFAULT_PARTITION_SCALES) -> int:
    """Number of patch nodes: ``sum(k * k)`` (14 for scales 1, 2, 3)."""
    return sum(int(k) * int(k) for k in partition_scales)


def patch_max_pool(
    fmap: torch.Tensor, partition_scales: Sequence[int] = DEFAULT_PARTITION_SCALES
) -> torch.Tensor:
    """Max-pool ``[N, C, h, w]`` over the grid cells of each scale -> ``[N, G, C]``.

    Cells follow ``F.adaptive_max_pool2d`` (rows ``floor(i*h/k) .. ceil((i+1)*h/k) - 1``,
    overlapping when ``k`` does not divide ``h``); order: scale by scale, row-major.
    """
    if fmap.dim() != 4:
        raise ValueError(f"patch_max_pool expects [N, C, h, w], got {tuple(fmap.shape)}")
    if torch.compiler.is_exporting():  # ONNX has no adaptive max pool: the same cells by slicing
        parts = [_cell_max(fmap, int(k)) for k in partition_scales]
    else:
        parts = [F.adaptive_max_pool2d(fmap, int(k)).flatten(2) for k in partition_scales]
    return torch.cat(parts, dim=2).transpose(1, 2)


def _cell_max(fmap: torch.Tensor, k: int) -> torch.Tensor:
    """``F.adaptive_max_pool2d(fmap, k).flatten(2)`` (``[N, C, k*k]``) as ``k*k`` slices and
    maxima, for static ``h, w`` (the exported graph's fixed crop size)."""
    h, w = int(fmap.shape[-2]), int(fmap.shape[-1])
    rows = [(i * h // k, -(-(i + 1) * h // k)) for i in range(k)]
    cols = [(j * w // k, -(-(j + 1) * w // k)) for j in range(k)]
    cells = [fmap[..., r0:r1, c0:c1].amax(dim=(-2, -1)) for r0, r1 in rows for c0, c1 in cols]
    return torch.stack(cells, dim=-1)


# --------------------------------------------------------------------------------------
# TRN multi-scale relation module
# --------------------------------------------------------------------------------------


def strided_subsets(num_frames: int, scale: int, count: int) -> list[tuple[int, ...]]:
    """Deterministic ordered ``scale``-frame subsets of ``range(num_frames)`` (eval mode).

    Subset ``q`` of ``count``: frames ``floor((i + (q + 0.5) / count) * num_frames / scale)``,
    ``i = 0 .. scale-1`` (strictly increasing because ``num_frames >= scale``); duplicates
    are dropped, so fewer than ``count`` may come back.
    """
    if not 1 <= scale <= num_frames or count < 1:
        raise ValueError(f"bad subset request: T={num_frames}, scale={scale}, count={count}")
    out: list[tuple[int, ...]] = []
    for q in range(count):
        # floor(((2*i*count + 2q + 1) * T) / (2 * count * scale)), in integers.
        sub = tuple(
            ((2 * i * count + 2 * q + 1) * num_frames) // (2 * count * scale) for i in range(scale)
        )
        if sub not in out:
            out.append(sub)
    return out


def _random_subsets(num_frames: int, scale: int, count: int) -> list[tuple[int, ...]]:
    """``count`` distinct uniform random ordered ``scale``-subsets (torch's global RNG)."""
    out: list[tuple[int, ...]] = []
    while len(out) < count:
        sub = tuple(sorted(torch.randperm(num_frames)[:scale].tolist()))
        if sub not in out:
            out.append(sub)
    return out


class RelationModuleMultiScale(nn.Module):
    """TRN multi-scale temporal relation module over ``[N, T, in_dim]`` -> ``[N, out_dim]``.

    For each scale ``s`` in ``scales`` (default ``T .. 2``): ordered ``s``-frame subsets
    (one for ``s = T``; at most ``subsample_num`` otherwise: random in training mode,
    :func:`strided_subsets` in eval mode), features concatenated in temporal order ->
    ``fc_fusion_scales[idx]`` = ``ReLU, Linear(s*in_dim, bottleneck), ReLU,
    Linear(bottleneck, out_dim)`` -> mean over the subsets (``"sum"``: TRN's
    accumulation) -> summed over the scales.
    """

    def __init__(
        self,
        in_dim: int,
        num_frames: int,
        out_dim: int,
        *,
        scales: Sequence[int] | None = None,
        bottleneck: int = 256,
        subsample_num: int = 3,
        subset_reduction: str = "mean",
    ) -> None:
        super().__init__()
        if num_frames < 2:
            raise ConfigError(f"TRN relation module needs at least 2 frames, got {num_frames}")
        scales = list(range(num_frames, 1, -1)) if scales is None else [int(s) for s in scales]
        if not scales or any(not 1 <= s <= num_frames for s in scales) or len(set(scales)) != len(scales):
            raise ConfigError(f"relation scales must be distinct values in 1..{num_frames}, got {scales}")
        if subset_reduction not in ("mean", "sum"):
            raise ConfigError(f"subset_reduction must be 'mean' or 'sum', got {subset_reduction!r}")
        if subsample_num < 1:
            raise ConfigError(f"subsample_num must be >= 1, got {subsample_num}")
        self.in_dim = in_dim
        self.num_frames = num_frames
        self.out_dim = out_dim
        self.scales = tuple(scales)
        self.subsample_num = subsample_num
        self.subset_reduction = subset_reduction
        self.fc_fusion_scales = nn.ModuleList(
            nn.Sequential(
                nn.ReLU(),
                nn.Linear(s * in_dim, bottleneck),
                nn.ReLU(),
                nn.Linear(bottleneck, out_dim),
            )
            for s in self.scales
        )

    def subset_count(self, scale: int) -> int:
        """Subsets used at ``scale``: ``min(subsample_num, C(T, scale))``."""
        return min(self.subsample_num, math.comb(self.num_frames, scale))

    def subsets(self, scale: int) -> list[tuple[int, ...]]:
        """Frame subsets for ``scale`` under the current mode (see the class docstring)."""
        if scale == self.num_frames:
            return [tuple(range(scale))]
        count = self.subset_count(scale)
        if self.training:
            return _random_subsets(self.num_frames, scale, count)
        return strided_subsets(self.num_frames, scale, count)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1] != self.num_frames or x.shape[2] != self.in_dim:
            raise ValueError(
                f"RelationModuleMultiScale expects [N, {self.num_frames}, {self.in_dim}], "
                f"got {tuple(x.shape)}"
            )
        n = x.shape[0]
        total = None
        for scale, mlp in zip(self.scales, self.fc_fusion_scales):
            idx = torch.tensor(self.subsets(scale), dtype=torch.long, device=x.device)  # [m, s]
            rel = x[:, idx].reshape(n, idx.shape[0], scale * self.in_dim)  # temporal order kept
            out = mlp(rel)  # [N, m, out]
            out = out.mean(dim=1) if self.subset_reduction == "mean" else out.sum(dim=1)
            total = out if total is None else total + out
        return total


# --------------------------------------------------------------------------------------
# Trunk and full model
# --------------------------------------------------------------------------------------


class ResNet50Trunk(nn.Module):
    """torchvision ResNet-50 ``conv1 .. layer4``; state-dict keys are torchvision's (no fc)."""

    def __init__(self) -> None:
        super().__init__()
        tv = torchvision.models.resnet50(weights=None)
        for name in _TRUNK_NAMES:
            setattr(self, name, getattr(tv, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in _TRUNK_NAMES:
            x = getattr(self, name)(x)
        return x


def _resnet_map_size(size: int) -> int:
    # conv1 (stride 2, pad 3, k 7), maxpool (stride 2, pad 1, k 3), layer2-4 (stride 2): ceil(S / 2) five times
    for _ in range(5):
        size = (size + 1) // 2
    return size


@dataclass(frozen=True)
class TrunkSpec:
    """A per-frame trunk :class:`ResNetTRN` can use.

    Attributes:
        build: ``build() -> nn.Module`` mapping ``[N, 3, S, S]`` to ``[N, dim, h, h]``.
        dim: channels ``C`` of its output.
        map_size: ``map_size(S) -> h``, the output's side for an ``S``-pixel input.
        torchvision: whether it loads torchvision ResNet-50 state dicts.
    """

    build: Callable[[], nn.Module]
    dim: int
    map_size: Callable[[int], int]
    torchvision: bool = False


#: Trunks by name (``"resnet50"``; tests register tiny ones with :func:`register_trunk`).
TRUNKS: dict[str, TrunkSpec] = {
    "resnet50": TrunkSpec(build=ResNet50Trunk, dim=TRUNK_DIM, map_size=_resnet_map_size, torchvision=True),
}


def register_trunk(name: str, spec: TrunkSpec) -> TrunkSpec:
    """Add (or replace) a trunk; its name goes into model configurations and checkpoints."""
    TRUNKS[name] = spec
    return spec


class InnerProductAttention(nn.Module):
    """SA-CRF's inner-product attention over a clip's feature maps (module docstring, Sec. 3.2).

    ``forward(fmap [B, K, C, h, w]) -> (fmap * alpha [B, K, C, h, w], alpha [B, K, h, w])`` with
    ``gamma = psi1(d) psi2(d)^T / sqrt(E)`` over the ``N = K*h*w`` positions and
    ``alpha = sigmoid(weight([d ; gamma]))``. Computed in float32 (also under autocast).
    """

    def __init__(self, channels: int, positions: int, embed_dim: int = 256) -> None:
        super().__init__()
        if channels < 1 or positions < 1 or embed_dim < 1:
            raise ConfigError(f"bad inner-product attention size: C={channels}, N={positions}, E={embed_dim}")
        self.channels, self.positions, self.embed_dim = channels, positions, embed_dim
        self.psi1 = nn.Linear(channels, embed_dim)
        self.psi2 = nn.Linear(channels, embed_dim)
        self.weight = nn.Linear(channels + positions, 1)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, k, c, h, w = fmap.shape
        n = k * h * w
        if c != self.channels or n != self.positions:
            raise ConfigError(
                f"inner-product attention was built for {self.positions} positions x {self.channels} channels, "
                f"got {k} frames x {h}x{w} x {c}: the model is tied to its number of frames and input size")
        with torch.autocast(fmap.device.type, enabled=False):
            d = fmap.float().permute(0, 1, 3, 4, 2).reshape(b, n, c)  # positions: frame, row, column
            gamma = self.psi1(d) @ self.psi2(d).transpose(1, 2) / math.sqrt(self.embed_dim)  # [B, N, N]
            alpha = torch.sigmoid(self.weight(torch.cat([d, gamma], dim=2)))  # [B, N, 1]
            out = (d * alpha).reshape(b, k, h, w, c).permute(0, 1, 4, 2, 3)
        return out.to(fmap.dtype), alpha.reshape(b, k, h, w)


class ResNetTRN(nn.Module):
    """Relation-aware patch-node extractor: ``[B, 3, T, H, W]`` -> float32 ``[B, G, out_dim]``.

    ``G = sum(k*k for k in partition_scales)`` (14). Input is ImageNet-normalised RGB
    (``(x/255 - mean) / std``). See the module docstring for every step.
    ``relation_type="inner-product"`` inserts :class:`InnerProductAttention` between trunk
    and pooling (then ``input_size`` fixes the frame size; ``embed_dim`` its embedding);
    ``trunk`` names a :data:`TRUNKS` entry. :meth:`config` returns these keyword arguments.

    Attributes:
        weights_sha256: sha256 of the loaded ResNet-50 file, or of the trained file
            (``None``: random trunk).
        relation_sha256: sha256 of the loaded relation state dict (``None``: not loaded).
        relation_trained: ``False`` while the relation MLPs are the seeded random init.
    """

    def __init__(
        self,
        num_frames: int = 16,
        out_dim: int = DEFAULT_OUT_DIM,
        *,
        partition_scales: Sequence[int] = DEFAULT_PARTITION_SCALES,
        relation_scales: Sequence[int] | None = None,
        bottleneck: int = 256,
        subsample_num: int = 3,
        subset_reduction: str = "mean",
        relation_seed: int = 0,
        relation_type: str = "trn",
        trunk: str = "resnet50",
        input_size: int = 224,
        embed_dim: int = 256,
    ) -> None:
        super().__init__()
        if relation_type not in RELATION_TYPES:
            raise ConfigError(f"relation_type must be one of {RELATION_TYPES}, got {relation_type!r}")
        if trunk not in TRUNKS:
            raise ConfigError(f"unknown trunk {trunk!r} (known: {', '.join(sorted(TRUNKS))})")
        self.num_frames = num_frames
        self.out_dim = out_dim
        self.partition_scales = tuple(int(k) for k in partition_scales)
        if not self.partition_scales or any(k < 1 for k in self.partition_scales):
            raise ConfigError(f"partition scales must be >= 1, got {partition_scales!r}")
        self.nodes = num_patches(self.partition_scales)
        self.relation_seed = relation_seed
        self.relation_type = relation_type
        self.trunk_name = trunk
        self.input_size = int(input_size)
        self.embed_dim = int(embed_dim)
        spec = TRUNKS[trunk]
        self.trunk_dim = spec.dim
        self.trunk = spec.build()
        # Relation (and attention) are initialised from a fixed seed, without touching the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(relation_seed)
            self.relation = RelationModuleMultiScale(
                self.trunk_dim,
                num_frames,
                out_dim,
                scales=relation_scales,
                bottleneck=bottleneck,
                subsample_num=subsample_num,
                subset_reduction=subset_reduction,
            )
            self.attention: InnerProductAttention | None = None
            if relation_type == "inner-product":
                side = spec.map_size(self.input_size)
                self.attention = InnerProductAttention(self.trunk_dim, num_frames * side * side, self.embed_dim)
        self._config = {
            "num_frames": num_frames, "out_dim": out_dim, "partition_scales": list(self.partition_scales),
            "relation_scales": list(self.relation.scales), "bottleneck": bottleneck, "subsample_num": subsample_num,
            "subset_reduction": subset_reduction, "relation_seed": relation_seed, "relation_type": relation_type,
            "trunk": trunk, "input_size": self.input_size, "embed_dim": self.embed_dim,
        }
        self.weights_sha256: str | None = None
        self.relation_sha256: str | None = None
        self.relation_trained = False

    def config(self) -> dict:
        """The constructor's keyword arguments (JSON-serialisable): ``ResNetTRN(**m.config())``
        builds the same architecture."""
        return dict(self._config)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != 3 or x.shape[2] != self.num_frames:
            raise ValueError(
                f"ResNetTRN expects ImageNet-normalised float [B, 3, {self.num_frames}, H, W], "
                f"got shape {tuple(x.shape)}"
            )

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame trunk output ``[B*T, C, h, w]`` (frames of clip b at ``b*T .. b*T+T-1``),
        re-weighted by the inner-product attention when the model has one."""
        self._check_input(x)
        b, c, t, h, w = x.shape
        frames = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        fmap = self.trunk(frames)
        if self.attention is not None:
            fmap = self.attention(fmap.reshape(b, t, *fmap.shape[1:]))[0].reshape(fmap.shape)
        return fmap

    def patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """Max-pooled patch nodes per frame: float32 ``[B, T, G, C]``."""
        b, t = x.shape[0], x.shape[2]
        nodes = patch_max_pool(self.feature_map(x), self.partition_scales).float()
        return nodes.reshape(b, t, self.nodes, self.trunk_dim)

    def relate(self, patches: torch.Tensor) -> torch.Tensor:
        """Relation module per node: ``[B, T, G, C]`` -> float32 ``[B, G, out_dim]``."""
        b, t, g, d = patches.shape
        per_node = patches.permute(0, 2, 1, 3).reshape(b * g, t, d)
        with torch.autocast(patches.device.type, enabled=False):
            out = self.relation(per_node.float())
        return out.reshape(b, g, self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relate(self.patch_features(x))

    # ---------------------------------------------------------------- weight loading

    def load_trunk_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str = "ResNet-50 weights") -> None:
        """Load a torchvision ResNet-50 state dict into the trunk.

        Strict on the trunk keys; ``fc.weight``/``fc.bias`` are ignored; missing keys, any
        other extra key or a shape mismatch raise :class:`WeightsIntegrityError`.
        """
        trunk_sd = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        load_checked(self.trunk, trunk_sd, problem=f"{source}: not a torchvision ResNet-50 state dict")

    def load_relation_state_dict(self, state_dict: Mapping[str, torch.Tensor], source: str = "relation-module") -> None:
        """Load trained relation-module weights (keys ``fc_fusion_scales.*``, or prefixed
        ``relation.``), strictly; marks ``relation_trained``."""
        sd = {k.removeprefix("relation."): v for k, v in state_dict.items()}
        load_checked(self.relation, sd, problem=(
            f"{source} state dict does not fit this configuration "
            f"(T={self.num_frames}, scales={self.relation.scales}, out_dim={self.out_dim})"))
        self.relation_trained = True


# --------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------


#: ImageNet ResNet-50 (torchvision) for the trunk of the ``resnet50-trn`` backbone.
RESNET50_WEIGHTS = Weights(
    name="resnet50-trn",
    source=(
        f"torchvision ImageNet ResNet-50 ({RESNET50_URL}); TRN relation module: no "
        f"published weights ({TRAIN_COMMANDS}; or a relation state dict via "
        f"{RELATION_ENV}, or {RELATION_ALLOW_ENV}=1 for the seeded random init)"
    ),
    license="BSD-3-Clause (torchvision weights)",
    how_to_get=RESNET50_HOW_TO_GET[0].upper() + RESNET50_HOW_TO_GET[1:] + ".",
    file_name=RESNET50_CKPT_NAME,
    alt_file_names=(RESNET50_V1_CKPT_NAME,),
    env=RESNET50_ENV,
    preset=ClipPreset(
        resize=256,
        crop_size=224,
        crop_order="torchvision",
        value_range=None,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ),
    feature_dim=DEFAULT_OUT_DIM,
    meta={"training_data": "ImageNet-1k", "nodes": NUM_NODES, "partition_scales": DEFAULT_PARTITION_SCALES},
    loaded_file=lambda checkpoint=None: _loaded_file(checkpoint),
)


def locate_resnet50_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """The ResNet-50 file: ``path``, else ``$VADPIPE_RESNET50_CKPT``, else
    ``weights_dir()/resnet50-11ad3fa6.pth``, else ``weights_dir()/resnet50-0676ba61.pth``.

    Raises:
        WeightsNotFoundError: none exists; the message names the file, the URL and the
            ``vadpipe weights import resnet50-trn FILE`` command.
    """
    return locate_weight_file(RESNET50_WEIGHTS, path)


def _read_tensor_dict(path: Path, what: str) -> tuple[dict[str, torch.Tensor], str]:
    digest = sha256_file(path)
    m = _TV_NAME.match(path.name)
    if m and not digest.startswith(m.group(1)):
        raise WeightsIntegrityError(
            f"{what} {path} has sha256 {digest}, but torchvision's file name promises a hash "
            f"starting {m.group(1)}: the file is corrupt or not the published one"
        )
    return read_state_dict(path, what=what), digest


def load_resnet50_state_dict(path: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict, sha256)`` of the ResNet-50 file found by :func:`locate_resnet50_checkpoint`."""
    return _read_tensor_dict(locate_resnet50_checkpoint(path), "ResNet-50 weights")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def trained_weights_file() -> Path | None:
    """The trained weights :func:`resnet50_trn` uses by default: ``$VADPIPE_TRN_TRAINED``, else
    ``weights_dir()/resnet50-trn-trained.safetensors`` when present; ``None`` otherwise.

    Raises:
        WeightsNotFoundError: ``$VADPIPE_TRN_TRAINED`` names no file.
    """
    from vadpipe.extractors.weights import weights_dir

    env = os.environ.get(TRAINED_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"trained resnet50-trn weights {p} (from ${TRAINED_ENV}) do not exist")
        return p
    cached = weights_dir() / TRAINED_FILE_NAME
    return cached if cached.is_file() else None


def _loaded_file(checkpoint: str | os.PathLike | None) -> Path:
    """The file the registered build reads (its sha256 is what features record)."""
    if checkpoint is None and not os.environ.get(RELATION_ENV):
        trained = trained_weights_file()
        if trained is not None:
            return trained
    return locate_weight_file(RESNET50_WEIGHTS, checkpoint)


def read_trained_weights(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], str]:
    """``(model_config, state_dict, sha256)`` of trained resnet50-trn weights.

    Accepts the converted safetensors file (:data:`TRAINED_FORMAT`; the configuration is in
    its metadata) or a ``vadpipe train-backbone`` checkpoint (``best.pt``/``last.pt``,
    read with ``torch.load(weights_only=True)``; its ``backbone.*`` keys are taken).

    Raises:
        WeightsNotFoundError: no such file.
        WeightsIntegrityError: neither of those formats.
    """
    import json

    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"trained resnet50-trn weights {p} not found; {TRAIN_COMMANDS}")
    digest = sha256_file(p)
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception as e:  # noqa: BLE001 - any parse failure means a bad file
            raise WeightsIntegrityError(f"{p}: not a readable safetensors file ({type(e).__name__}: {e})") from e
        if meta.get("format") != TRAINED_FORMAT or "model_config" not in meta:
            raise WeightsIntegrityError(f"{p}: not trained resnet50-trn weights (metadata format "
                                        f"{meta.get('format')!r}, expected {TRAINED_FORMAT!r})")
        return json.loads(meta["model_config"]), read_state_dict(p, what="trained resnet50-trn weights"), digest
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused or garbled pickle: not a checkpoint of ours
        raise WeightsIntegrityError(
            f"{p}: not a readable vadpipe train-backbone checkpoint ({type(e).__name__})") from e
    if not isinstance(obj, dict) or obj.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise WeightsIntegrityError(f"{p}: not a vadpipe train-backbone checkpoint (format "
                                    f"{obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r})")
    sd = {k.removeprefix("backbone."): v for k, v in obj["state_dict"].items() if k.startswith("backbone.")}
    return dict(obj["model_config"]["backbone"]), sd, digest


def _build_trained(path: Path, config: Mapping) -> ResNetTRN:
    file_config, sd, digest = read_trained_weights(path)
    clash = {k: (v, file_config.get(k)) for k, v in config.items() if file_config.get(k, v) != v}
    if clash:
        raise ConfigError(f"{path} was trained with other settings: " + ", ".join(
            f"{k}={got!r} (asked {want!r})" for k, (want, got) in clash.items()))
    model = ResNetTRN(**file_config)
    load_checked(model, sd, problem=f"trained resnet50-trn weights {path} do not fit their own configuration")
    model.weights_sha256 = model.relation_sha256 = digest
    model.relation_trained = True
    return model


def resnet50_trn(
    *,
    weights: Weights | None = RESNET50_WEIGHTS,
    checkpoint: str | os.PathLike | None = None,
    relation_weights: str | os.PathLike | None = None,
    allow_untrained_relation: bool = False,
    trained: str | os.PathLike | None = None,
    **config,
) -> ResNetTRN:
    """:class:`ResNetTRN` in eval mode (``config``: its constructor's keyword arguments).

    Trained weights first: ``trained`` (a converted file or a ``train-backbone`` checkpoint),
    else — when neither ``checkpoint`` nor ``relation_weights`` (nor ``$VADPIPE_TRN_RELATION_CKPT``)
    asks for the trunk-only path — :func:`trained_weights_file`. The architecture then comes
    from the file (``config`` must agree with it) and ``weights_sha256`` is its sha256.

    Otherwise, with ``weights`` (the registered entry is :data:`RESNET50_WEIGHTS`) the ImageNet
    ResNet-50 trunk is loaded (:func:`locate_resnet50_checkpoint`; ``checkpoint`` names the file
    explicitly) and ``weights_sha256`` set. The relation module
    is loaded from ``relation_weights`` (or ``$VADPIPE_TRN_RELATION_CKPT``); without one the
    build is refused unless ``allow_untrained_relation`` (or
    ``$VADPIPE_TRN_ALLOW_UNTRAINED_RELATION=1``), in which case the relation MLPs keep their
    seeded random init (``relation_trained = False``) and a warning is issued.
    ``weights=None``: everything random (tests), no files read.

    Raises:
        WeightsNotFoundError: ResNet-50 file missing, or no trained weights, no relation
            weights and no opt-in (the message names the train and import commands).
        WeightsIntegrityError: a file is not the expected state dict.
    """
    if trained is not None:
        return _build_trained(Path(trained).expanduser(), config).eval()
    if weights is not None and checkpoint is None and relation_weights is None and not os.environ.get(RELATION_ENV):
        found = trained_weights_file()
        if found is not None:
            return _build_trained(found, config).eval()
    model = ResNetTRN(**config)
    if weights is not None:
        rel_path = relation_weights if relation_weights is not None else os.environ.get(RELATION_ENV) or None
        if rel_path is None and not (allow_untrained_relation or _env_flag(RELATION_ALLOW_ENV)):
            raise WeightsNotFoundError(
                "resnet50-trn has no trained weights: the TRN relation module (and the inner-product "
                f"attention) has no published weights. To use it, {TRAIN_COMMANDS}. Refusing to extract "
                "features with a randomly initialised relation module; to do so knowingly pass "
                f"allow_untrained_relation=True or set {RELATION_ALLOW_ENV}=1 (the MLPs are then initialised "
                f"from seed {model.relation_seed}), or give a relation state dict ({RELATION_ENV})."
            )
        ckpt = locate_weight_file(weights, checkpoint)
        if not TRUNKS[model.trunk_name].torchvision:
            raise ConfigError(f"trunk {model.trunk_name!r} does not load torchvision ResNet-50 weights")
        sd, digest = _read_tensor_dict(ckpt, "ResNet-50 weights")
        model.load_trunk_state_dict(sd, source=f"ResNet-50 weights {ckpt}")
        model.weights_sha256 = digest
        if rel_path is not None:
            p = Path(rel_path).expanduser()
            if not p.is_file():
                raise WeightsNotFoundError(f"relation-module weights {p} not found")
            rel_sd, rel_digest = _read_tensor_dict(p, "relation-module weights")
            model.load_relation_state_dict(rel_sd, source=f"relation-module weights {p}")
            model.relation_sha256 = rel_digest
        else:
            warnings.warn(
                "resnet50-trn: the TRN relation module is UNTRAINED (random init from seed "
                f"{model.relation_seed}); its features are not the paper's",
                stacklevel=2,
            )
    return model.eval()


register_backbone(
    BackboneSpec(
        name="resnet50-trn",
        clip_len=16,
        weights=RESNET50_WEIGHTS,
        build=resnet50_trn,
        file_suffix="trn",
        nodes=NUM_NODES,
    )
)
