"""I3D-ResNet-50 (Kinetics-400, "I3D 8x8 R50") from pytorchvideo's ``create_resnet`` family.

Architecture: built with pytorchvideo's own builder ``pytorchvideo.models.resnet.create_resnet``
and the arguments of ``pytorchvideo.models.hub.resnet.i3d_r50`` (pytorchvideo 0.1.5):
stem conv kernel ``(5, 7, 7)`` stride ``(1, 2, 2)``, stem max pool ``(1, 3, 3)`` stride
``(1, 2, 2)``, ``stage1_pool=nn.MaxPool3d`` (kernel = stride ``(2, 1, 1)``, after res2),
conv_a temporal kernels res2 ``(3,1,1)`` x3, res3/res4 alternating ``(3,1,1)``/``(1,1,1)``,
res5 alternating ``(1,1,1)``/``(3,1,1)``; head ``AvgPool3d((4, 7, 7), stride 1)``, dropout
0.5, ``Linear(2048, 400)``, global average. Module indices: ``blocks.0`` stem,
``blocks.1`` res2, ``blocks.2`` the stage-1 max pool, ``blocks.3..5`` res3..res5,
``blocks.6`` the head (so the projection is ``blocks.6.proj``, not ``blocks.5``).

Features (``forward``): the head's pooling before dropout/projection, averaged over the
remaining positions: ``avg_pool3d(res5, (4, 7, 7), stride 1).mean((2, 3, 4))`` -> fp32
``[B, 2048]``. For ``T = 8`` at 224 px the res5 map is ``[4, 7, 7]`` (one window); for
``T = 16`` it is ``[8, 7, 7]`` (5 temporal windows, averaged, which is exactly what the head's
``output_pool`` does after the linear projection). The window is clipped to the map when the
map is smaller (tiny test inputs). ``logits(x) = blocks.6.proj(features)`` equals
pytorchvideo's head output in eval mode (the projection is linear, so pool -> mean -> proj
equals pool -> proj -> mean).

Weights: pytorchvideo model zoo ``I3D_8x8_R50.pyth`` (Apache-2.0): a torch pickle whose
state dict is under ``"model_state"`` with pytorchvideo names (``blocks.0.conv.weight``,
..., ``blocks.6.proj.weight``). It is loaded with ``torch.load(..., weights_only=True)``
and a strict key check: every model key must be present (the projection ``blocks.6.proj.*``
included; it is kept and used by :meth:`I3DResNet50.logits`), except BatchNorm
``num_batches_tracked`` counters, which do not affect inference; any unexpected key or
shape mismatch raises :class:`~vadpipe.errors.WeightsIntegrityError`.

The Caffe2-converted ``i3d_r50_kinetics.pth`` (non-local repo ``i3d_baseline``) used by
``GowthamGottimukkala/I3D_Feature_Extraction_resnet`` for the RTFM features is a *different*
network, not a renaming (temporal stride 2 in ``conv1`` and ``maxpool1``, global average
pooling): it is the separate backbone ``i3d-r50-caffe2``
(:mod:`vadpipe.extractors.i3d_r50_caffe2`), and this loader refuses it (unexpected keys).
Its input recipe is recorded as :data:`RTFM_UCF_PRESET`.

The checkpoint helpers :func:`read_torch_state_dict`, :func:`check_state_dict` and
:func:`locate_weight_file` are shared with that backbone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vadpipe.extractors.presets import GOWTHAM_RTFM_PRESET, ClipPreset
from vadpipe.extractors.registry import BackboneSpec, Weights, register_backbone
from vadpipe.extractors.weights import load_weights, locate_weight_file
from vadpipe.loading import check_state_dict, read_state_dict

__all__ = [
    "CKPT_ENV",
    "CKPT_NAME",
    "CKPT_URL",
    "FEATURE_DIM",
    "HOW_TO_GET",
    "I3DResNet50",
    "I3D_R50_KWARGS",
    "I3D_R50_PRESET",
    "RTFM_UCF_PRESET",
    "I3D_R50_WEIGHTS",
    "SPEC",
    "i3d_r50_kinetics400",
    "load_i3d_r50_state_dict",
    "locate_i3d_r50_checkpoint",
]

FEATURE_DIM = 2048
NUM_CLASSES = 400
HEAD_POOL = (4, 7, 7)
CKPT_NAME = "I3D_8x8_R50.pyth"
CKPT_URL = "https://dl.fbaipublicfiles.com/pytorchvideo/model_zoo/kinetics/I3D_8x8_R50.pyth"
#: Environment variable that may point at the checkpoint file directly.
CKPT_ENV = "VADPIPE_I3D_R50_CKPT"
HOW_TO_GET = (
    f"download {CKPT_URL} (pytorchvideo model zoo, Apache-2.0) and run "
    f"`vadpipe weights import i3d-r50 {CKPT_NAME}` (or set ${CKPT_ENV} to the file)"
)

#: Preprocessing of pytorchvideo's Kinetics I3D/Slow R50 models (mean/std 0.45/0.225,
#: short side 256, 224 crops).
I3D_R50_PRESET = ClipPreset(
    resize=256,
    crop_size=224,
    crop_order="torchvision",
    value_range=None,
    mean=(0.45, 0.45, 0.45),
    std=(0.225, 0.225, 0.225),
)

#: The RTFM feature recipe of ``GowthamGottimukkala/I3D_Feature_Extraction_resnet``
#: (``extract_features.py``, ``load_frame``/``oversample_data``): PIL resize to 340x256
#: (width x height, aspect ignored) with ``Image.ANTIALIAS`` (Lanczos), values
#: ``x * 2 / 255 - 1`` (``[-1, 1]``, RGB), 10 crops of 224 in the ``gowtham`` order: that is
#: ``vadpipe.extractors.presets.GOWTHAM_RTFM_PRESET``. That recipe was made for
#: the Caffe2-converted ``I3Res50`` (see the module docstring), *not* for the pytorchvideo
#: weights this backbone loads, which expect :data:`I3D_R50_PRESET`.
RTFM_UCF_PRESET = GOWTHAM_RTFM_PRESET


def _import_pytorchvideo_resnet() -> Any:
    # pytorchvideo 0.1.5 imports torchvision.transforms.functional_tensor, renamed
    # _functional_tensor in recent torchvision.
    if "torchvision.transforms.functional_tensor" not in sys.modules:
        try:
            import torchvision.transforms._functional_tensor as _ft

            sys.modules["torchvision.transforms.functional_tensor"] = _ft
        except ImportError:  # pragma: no cover - older torchvision has the old name
            pass
    from pytorchvideo.models import resnet as pv_resnet

    return pv_resnet


def i3d_r50_kwargs() -> dict[str, Any]:
    """``create_resnet`` arguments of ``pytorchvideo.models.hub.resnet.i3d_r50``."""
    return dict(
        stem_conv_kernel_size=(5, 7, 7),
        stage1_pool=nn.MaxPool3d,
        stage_conv_a_kernel_size=(
            (3, 1, 1),
            [(3, 1, 1), (1, 1, 1)],
            [(3, 1, 1), (1, 1, 1)],
            [(1, 1, 1), (3, 1, 1)],
        ),
        model_num_class=NUM_CLASSES,
        head_pool_kernel_size=HEAD_POOL,
    )


I3D_R50_KWARGS = i3d_r50_kwargs()


class I3DResNet50(nn.Module):
    """pytorchvideo I3D 8x8 R50; ``forward`` gives pooled fp32 features ``[B, 2048]``.

    ``self.blocks`` is pytorchvideo's ``Net.blocks`` (``ModuleList``), so ``state_dict()``
    keys are exactly pytorchvideo's (``blocks.0.conv.weight``, ...).

    Attributes:
        weights_sha256: sha256 of the loaded checkpoint file (``None``: random init).
    """

    def __init__(self) -> None:
        super().__init__()
        pv = _import_pytorchvideo_resnet()
        net = pv.create_resnet(**i3d_r50_kwargs())
        self.blocks = net.blocks
        self.weights_sha256: str | None = None

    @property
    def head(self) -> nn.Module:
        return self.blocks[-1]

    def res5(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's last map ``[B, 2048, T/2, H/32, W/32]``."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(
                f"I3DResNet50 expects float [B, 3, T, H, W] (mean/std normalised), "
                f"got shape {tuple(x.shape)}"
            )
        for block in self.blocks[:-1]:
            x = block(x)
        return x

    @staticmethod
    def pool(res5: torch.Tensor) -> torch.Tensor:
        """Head pooling ``AvgPool3d((4, 7, 7), stride 1)`` (clipped), then mean -> fp32."""
        m = res5.float()
        window = tuple(min(k, n) for k, n in zip(HEAD_POOL, m.shape[-3:]))
        return F.avg_pool3d(m, window, stride=1).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.res5(x))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Kinetics-400 logits ``[B, 400]`` (eval-mode head output)."""
        proj = self.head.proj
        return F.linear(self.forward(x).to(proj.weight.dtype), proj.weight, proj.bias)


#: The pytorchvideo model-zoo I3D 8x8 R50 Kinetics-400 weights (the ``i3d-r50`` backbone's entry).
I3D_R50_WEIGHTS = Weights(
    name="i3d-r50-kinetics-400",
    source=f"pytorchvideo model zoo (pytorchvideo.models.hub.resnet.i3d_r50): {CKPT_URL}",
    license="Apache-2.0 (pytorchvideo model zoo)",
    how_to_get=HOW_TO_GET,
    file_name=CKPT_NAME,
    env=CKPT_ENV,
    preset=I3D_R50_PRESET,
    feature_dim=FEATURE_DIM,
    meta={"training_data": "Kinetics-400", "classes": NUM_CLASSES, "frames": "8x8",
          "format": "pytorchvideo .pyth {'model_state': state_dict}"},
)


def load_i3d_r50_state_dict(
    path: str | os.PathLike, model: I3DResNet50 | None = None
) -> dict[str, torch.Tensor]:
    """Read a pytorchvideo ``.pyth`` checkpoint and check it against the architecture.

    Accepts ``{"model_state": state_dict, ...}`` (the published format) or a bare state
    dict. Returns the state dict to load strictly.

    Raises:
        WeightsIntegrityError: unreadable file, no state dict, missing/unexpected keys
            (listed), or shape mismatches.
    """
    path = Path(path)
    sd = read_state_dict(path, what=f"pytorchvideo checkpoint {{'model_state': state_dict}} ({CKPT_NAME})")
    return check_state_dict(
        sd,
        model if model is not None else I3DResNet50(),
        problem=(
            f"{path} is not a pytorchvideo I3D 8x8 R50 checkpoint ({CKPT_NAME} format; the "
            "Caffe2-converted i3d_r50_kinetics.pth is not supported here: import it for "
            "--backbone i3d-r50-caffe2)"
        ),
    )


def locate_i3d_r50_checkpoint() -> Path:
    """``$VADPIPE_I3D_R50_CKPT`` if set, else ``weights_dir()/I3D_8x8_R50.pyth``.

    Raises:
        WeightsNotFoundError: the file does not exist (message says how to get it).
    """
    return locate_weight_file(I3D_R50_WEIGHTS)


def i3d_r50_kinetics400(
    *, weights: Weights | None = I3D_R50_WEIGHTS, checkpoint: str | os.PathLike | None = None
) -> I3DResNet50:
    """I3D-R50 feature extractor in eval mode.

    With ``weights``, loads ``checkpoint`` (default: the entry's file,
    :func:`~vadpipe.extractors.weights.locate_weight_file`) strictly and sets
    ``weights_sha256``; it raises rather than returning random weights.
    ``weights=None``: random init, ``weights_sha256 = None``.
    """
    model = I3DResNet50()
    if weights is not None:
        load_weights(model, weights, checkpoint, read=load_i3d_r50_state_dict)
    return model.eval()


SPEC = register_backbone(
    BackboneSpec(name="i3d-r50", clip_len=16, weights=I3D_R50_WEIGHTS, build=i3d_r50_kinetics400, file_suffix="i3d")
)
