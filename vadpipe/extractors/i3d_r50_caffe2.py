"""I3D-ResNet-50 ``i3d_baseline`` converted from Caffe2: the backbone of RTFM's published features.

The UCF-Crime and ShanghaiTech I3D features that RTFM (and MGFN and many later heads)
published were made with ``GowthamGottimukkala/I3D_Feature_Extraction_resnet``, which runs
the PyTorch port of Facebook's Caffe2 ``video-nonlocal-net`` I3D baseline by
``Tushar-N/pytorch-resnet3d``. This module rebuilds that network so the same weight file can be
used here.

Architecture (``Tushar-N/pytorch-resnet3d`` ``models/resnet.py``, class ``I3Res50``; the
copy in Gowtham's ``resnet.py`` is the same with the non-local blocks off):

* stem: ``conv1`` 3->64, kernel ``(5, 7, 7)``, stride ``(2, 2, 2)``, padding ``(2, 3, 3)``,
  no bias; ``bn1``; ReLU; ``maxpool1`` kernel ``(2, 3, 3)``, stride ``(2, 2, 2)``,
  padding 0 (so the temporal length is divided by 4 before ``layer1``);
* ``layer1..layer4``: 3, 4, 6, 3 bottlenecks of width 64, 128, 256, 512 (output x4).
  Bottleneck: ``conv1`` kernel ``(k, 1, 1)`` with temporal padding ``k // 2``, ``bn1``,
  ReLU, ``conv2`` ``(1, 3, 3)`` with the spatial stride (first block of layer2..4: 2),
  padding ``(0, 1, 1)``, ``bn2``, ReLU, ``conv3`` 1x1x1, ``bn3``, plus the shortcut, ReLU.
  The temporal kernel ``k`` is ``1 + 2 * temp_conv`` with ``temp_conv`` ``[1, 1, 1]``,
  ``[1, 0, 1, 0]``, ``[1, 0, 1, 0, 1, 0]``, ``[0, 1, 0]`` per stage (all temporal strides
  1). The first block of every stage has a projection shortcut ``downsample`` =
  ``Sequential(Conv3d 1x1x1 with the spatial stride, no bias; BatchNorm3d)``;
* ``maxpool2`` kernel = stride ``(2, 1, 1)`` between ``layer1`` and ``layer2``;
* ``avgpool`` = ``AdaptiveAvgPool3d(1)``, dropout 0.5 and ``fc`` ``Linear(2048, 400)``.

Feature (``forward``): the global average of ``layer4``, before dropout and ``fc`` —
Gowtham's ``forward_single`` returns the ``avgpool`` output and its extractor keeps
``[..., 0, 0, 0]`` -> fp32 ``[B, 2048]``. A 16-frame 224x224 clip gives a ``layer4`` map of
``[2048, 2, 7, 7]``. The network needs ``T >= 7`` frames and ``H, W >= 5``.

Weights: ``i3d_r50_kinetics.pth``, written by ``utils/convert_weights.py`` of
``Tushar-N/pytorch-resnet3d`` from ``i3d_baseline_32x2_IN_pretrain_400k.pkl``
(``facebookresearch/video-nonlocal-net``, Kinetics-400, 73.6 % top-1 there). The script
renames the Caffe2 blobs and saves a *bare* state dict with only the mapped keys:
``conv1.weight``, ``bn1.{weight,bias,running_mean,running_var}``, ``layerL.B.convN.weight``,
``layerL.B.bnN.*``, ``layerL.0.downsample.0.weight``, ``layerL.0.downsample.1.*`` and
``fc.weight``/``fc.bias`` — 267 tensors, no ``num_batches_tracked``. It is loaded with
``torch.load(weights_only=True)``; a ``state_dict``/``model_state`` wrapper or a
``module.`` prefix is removed; then every key must be present with its shape
(``num_batches_tracked`` may be absent) and no other key may appear, else
:class:`~vadpipe.errors.WeightsIntegrityError` lists the differences.

Licence: the ``video-nonlocal-net`` README says "The code and the models in this repo are
released under the CC-BY-NC 4.0 LICENSE": **non-commercial use only**. Neither
``Tushar-N/pytorch-resnet3d`` nor Gowtham's repository states a licence of its own.

Preprocessing: the backbone's preset is the RTFM feature recipe (Gowtham's
``extract_features.py``): 340x256 Lanczos resize ignoring aspect, RGB scaled to ``[-1, 1]``,
10 crops of 224 in the ``gowtham`` order (:data:`~vadpipe.extractors.presets.GOWTHAM_RTFM_PRESET`).
That is what the published features were made with, although it is *not* the normalisation
the weights were trained and evaluated with: ``Tushar-N/pytorch-resnet3d`` ``utils/util.py``
uses RGB ``(x - 114.75) / 57.375`` on ``[0, 255]`` values (mean 0.45, std 0.225 in ``[0, 1]``
units) after a bilinear short-side-256 resize, recorded here as :data:`KINETICS_PRESET`
for Kinetics-faithful features.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from vadpipe.extractors.presets import GOWTHAM_RTFM_PRESET, ClipPreset
from vadpipe.extractors.registry import BackboneSpec, Weights, register_backbone
from vadpipe.extractors.weights import load_weights, locate_weight_file
from vadpipe.loading import check_state_dict, read_state_dict

__all__ = [
    "BLOCKS",
    "CAFFE2_URL",
    "CKPT_ENV",
    "CKPT_NAME",
    "FEATURE_DIM",
    "HOW_TO_GET",
    "I3DResNet50Caffe2",
    "I3D_R50_CAFFE2_WEIGHTS",
    "KINETICS_PRESET",
    "LICENSE",
    "MIN_FRAMES",
    "RTFM_PRESET",
    "SPEC",
    "TEMPORAL_KERNELS",
    "i3d_r50_caffe2_kinetics400",
    "load_i3d_r50_caffe2_state_dict",
    "locate_i3d_r50_caffe2_checkpoint",
]

FEATURE_DIM = 2048
NUM_CLASSES = 400
#: Bottlenecks per stage (ResNet-50).
BLOCKS = (3, 4, 6, 3)
#: Bottleneck width per stage (the output is 4x).
WIDTHS = (64, 128, 256, 512)
#: Temporal kernel of each bottleneck's ``conv1`` (``1 + 2 * temp_conv``), per stage.
TEMPORAL_KERNELS = ((3, 3, 3), (3, 1, 3, 1), (3, 1, 3, 1, 3, 1), (1, 3, 1))
#: Fewest frames the network accepts (conv1 and two temporal max pools of stride 2).
MIN_FRAMES = 7

CKPT_NAME = "i3d_r50_kinetics.pth"
CAFFE2_URL = "https://dl.fbaipublicfiles.com/video-nonlocal/i3d_baseline_32x2_IN_pretrain_400k.pkl"
#: Environment variable that may point at the checkpoint file directly.
CKPT_ENV = "VADPIPE_I3D_R50_CAFFE2_CKPT"
LICENSE = (
    "CC-BY-NC 4.0, non-commercial use only (facebookresearch/video-nonlocal-net: 'The code "
    "and the models in this repo are released under the CC-BY-NC 4.0 LICENSE'); "
    "Tushar-N/pytorch-resnet3d, which converts them, states no licence"
)
HOW_TO_GET = (
    f"download {CAFFE2_URL} (facebookresearch/video-nonlocal-net, CC-BY-NC 4.0: non-commercial "
    "use only), convert it in a checkout of https://github.com/Tushar-N/pytorch-resnet3d with "
    f"`python -m utils.convert_weights i3d_baseline_32x2_IN_pretrain_400k.pkl {CKPT_NAME}` "
    "(GowthamGottimukkala/I3D_Feature_Extraction_resnet ships the same script), then run "
    f"`vadpipe weights import i3d-r50-caffe2 {CKPT_NAME}` (or set ${CKPT_ENV} to the file)"
)

#: The RTFM feature recipe (Gowtham's extractor), the preset of this backbone.
RTFM_PRESET = GOWTHAM_RTFM_PRESET

#: What the weights were evaluated with on Kinetics (Tushar-N ``utils/util.py``): short side
#: 256 (bilinear), RGB, ``(x - 114.75) / 57.375`` on ``[0, 255]``.
KINETICS_PRESET = ClipPreset(
    resize=256,
    crop_size=224,
    crop_order="torchvision",
    value_range=None,
    mean=(0.45, 0.45, 0.45),
    std=(0.225, 0.225, 0.225),
)


class _Bottleneck(nn.Module):
    """ResNet bottleneck with a ``(k, 1, 1)`` first conv; ``[B, C, T, H, W]`` ->
    ``[B, 4 * width, T, H / stride, W / stride]``."""

    def __init__(
        self, in_channels: int, width: int, stride: int, temporal_kernel: int, project: bool
    ) -> None:
        super().__init__()
        out_channels = 4 * width
        k = temporal_kernel
        self.conv1 = nn.Conv3d(in_channels, width, (k, 1, 1), padding=(k // 2, 0, 0), bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = nn.Conv3d(
            width, width, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False
        )
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if project:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=(1, stride, stride), bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + shortcut)


class I3DResNet50Caffe2(nn.Module):
    """The Caffe2 ``i3d_baseline`` I3D-ResNet-50; ``forward`` gives fp32 features ``[B, 2048]``.

    Module names equal ``I3Res50``'s, so ``state_dict()`` keys are those of
    ``i3d_r50_kinetics.pth`` (plus BatchNorm ``num_batches_tracked`` counters).

    Attributes:
        weights_sha256: sha256 of the loaded checkpoint file (``None``: random init).
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, 64, (5, 7, 7), stride=(2, 2, 2), padding=(2, 3, 3), bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool1 = nn.MaxPool3d((2, 3, 3), stride=(2, 2, 2))
        self.maxpool2 = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))
        in_channels = 64
        for i, (n, width, kernels) in enumerate(zip(BLOCKS, WIDTHS, TEMPORAL_KERNELS)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(
                    _Bottleneck(in_channels, width, stride if j == 0 else 1, kernels[j], j == 0)
                )
                in_channels = 4 * width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(FEATURE_DIM, num_classes)
        self.weights_sha256: str | None = None

    def res5(self, x: torch.Tensor) -> torch.Tensor:
        """The ``layer4`` map ``[B, 2048, T', H', W']`` of float ``[B, 3, T, H, W]`` clips
        (``T' = T // 8`` roughly, ``H' = H / 32``; 16x224x224 -> ``[2, 7, 7]``)."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(
                f"I3DResNet50Caffe2 expects float [B, 3, T, H, W] clips, got shape {tuple(x.shape)}"
            )
        if x.shape[2] < MIN_FRAMES or min(x.shape[3:]) < 5:
            raise ValueError(
                f"I3DResNet50Caffe2 needs at least {MIN_FRAMES} frames of at least 5x5 pixels, "
                f"got T, H, W = {tuple(x.shape[2:])}"
            )
        x = self.maxpool1(self.relu(self.bn1(self.conv1(x))))
        x = self.maxpool2(self.layer1(x))
        return self.layer4(self.layer3(self.layer2(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Global average of :meth:`res5`: fp32 ``[B, 2048]``."""
        return self.res5(x).float().mean(dim=(2, 3, 4))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Kinetics-400 logits ``[B, 400]`` (eval mode: dropout is the identity)."""
        feats = self.forward(x)
        return self.fc(feats.to(self.fc.weight.dtype))


#: The Caffe2-converted I3D-ResNet-50 behind RTFM's features (the ``i3d-r50-caffe2`` backbone's entry).
I3D_R50_CAFFE2_WEIGHTS = Weights(
    name="i3d-r50-caffe2-kinetics-400",
    source=(
        "Tushar-N/pytorch-resnet3d utils/convert_weights.py conversion of "
        f"facebookresearch/video-nonlocal-net i3d_baseline_32x2_IN_pretrain_400k.pkl "
        f"({CAFFE2_URL}); the weights of GowthamGottimukkala/I3D_Feature_Extraction_resnet "
        "(RTFM's UCF-Crime/ShanghaiTech features)"
    ),
    license=LICENSE,
    how_to_get=HOW_TO_GET[0].upper() + HOW_TO_GET[1:] + ".",
    file_name=CKPT_NAME,
    env=CKPT_ENV,
    preset=RTFM_PRESET,
    feature_dim=FEATURE_DIM,
    meta={"training_data": "Kinetics-400 (ImageNet-inflated)", "classes": NUM_CLASSES,
          "evaluated_with": KINETICS_PRESET, "features_of": "RTFM UCF-Crime / ShanghaiTech"},
)


def load_i3d_r50_caffe2_state_dict(
    path: str | os.PathLike, model: I3DResNet50Caffe2 | None = None
) -> dict[str, torch.Tensor]:
    """Read ``i3d_r50_kinetics.pth`` (a bare state dict) and check it against the network.

    Returns the state dict to load strictly.

    Raises:
        WeightsIntegrityError: unreadable file, no state dict, missing/unexpected keys
            (listed), or shape mismatches.
    """
    path = Path(path)
    sd = read_state_dict(path, what=f"the state dict {CKPT_NAME} (Tushar-N/pytorch-resnet3d convert_weights.py)")
    hint = ""
    if any(k.startswith("blocks.") for k in sd):
        hint = "; it looks like a pytorchvideo checkpoint: use --backbone i3d-r50 for it"
    return check_state_dict(
        sd,
        model if model is not None else I3DResNet50Caffe2(),
        problem=(
            f"{path} is not the Caffe2-converted I3D-ResNet-50 state dict {CKPT_NAME} "
            f"(Tushar-N/pytorch-resnet3d utils/convert_weights.py){hint}"
        ),
    )


def locate_i3d_r50_caffe2_checkpoint() -> Path:
    """``$VADPIPE_I3D_R50_CAFFE2_CKPT`` if set, else ``weights_dir()/i3d_r50_kinetics.pth``.

    Raises:
        WeightsNotFoundError: the file does not exist (the message says how to get it).
    """
    return locate_weight_file(I3D_R50_CAFFE2_WEIGHTS)


def i3d_r50_caffe2_kinetics400(
    *, weights: Weights | None = I3D_R50_CAFFE2_WEIGHTS, checkpoint: str | os.PathLike | None = None
) -> I3DResNet50Caffe2:
    """The RTFM-features I3D-ResNet-50 in eval mode.

    With ``weights``, loads ``checkpoint`` (default: the entry's file) strictly and sets
    ``weights_sha256``; it raises rather than returning random weights.
    ``weights=None``: random init, ``weights_sha256 = None``.
    """
    model = I3DResNet50Caffe2()
    if weights is not None:
        load_weights(model, weights, checkpoint, read=load_i3d_r50_caffe2_state_dict)
    return model.eval()


SPEC = register_backbone(
    BackboneSpec(name="i3d-r50-caffe2", clip_len=16, weights=I3D_R50_CAFFE2_WEIGHTS,
                 build=i3d_r50_caffe2_kinetics400, file_suffix="i3d")
)
