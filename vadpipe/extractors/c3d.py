"""C3D (Tran et al., ICCV 2015) with the Sports-1M weights of the PyTorch port ``c3d.pickle``.

Network (C3D v1.0 ``c3d_sport1m_feature_extractor`` prototxt, facebook/C3D): eight 3x3x3
convolutions (padding 1, ReLU) ``conv1a(64) pool1 conv2a(128) pool2 conv3a(256) conv3b(256)
pool3 conv4a(512) conv4b(512) pool4 conv5a(512) conv5b(512) pool5``, then ``fc6(4096)``,
``fc7(4096)``, ``fc8(487)``. ``pool1`` is ``1x2x2`` / stride ``1x2x2``; all other pools are
``2x2x2`` / stride 2. Input: float ``[B, 3, 16, 112, 112]`` (BGR, mean-subtracted 0..255
values; see :data:`C3D_PRESET`).

Parameter names follow DavideA/c3d-pytorch ``C3D_model.py`` (whose ``predict.py`` loads
``c3d.pickle`` with a strict ``load_state_dict``): ``conv1``, ``conv2``, ``conv3a``,
``conv3b``, ``conv4a``, ``conv4b``, ``conv5a``, ``conv5b``, ``fc6``, ``fc7``, ``fc8``, each
with ``.weight`` and ``.bias`` (22 tensors).

Features. Sultani et al. used C3D v1.0's ``fc6-1`` blob. In that prototxt ``relu6`` runs
*in place* on ``fc6-1`` (``bottom`` = ``top`` = ``fc6-1``), and blobs are read after the
forward pass, so the extracted fc6 is **after ReLU** (dropout is the identity at test
time). This agrees with the published sample features (all values >= 0). ``forward``
therefore returns ``relu(fc6)``; ``layer="fc7"`` returns ``relu(fc7)`` likewise.

pool5. Caffe's ``Pooling3D`` sizes outputs with ``ceil`` and C3D's ``pool5`` has no
padding: conv5b ``[512, 2, 7, 7]`` -> ``[512, 1, 4, 4]``, windows at rows/cols 0, 2, 4, 6
(the last one clipped to the single row/col 6). The PyTorch port instead uses
``padding=(0, 1, 1)`` with floor sizing: same output size, but windows at -1, 1, 3, 5, i.e.
shifted by one pixel, so its fc6 differs from Caffe's. ``pool5="caffe"`` (default) follows
the original; ``pool5="port"`` reproduces the PyTorch port.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vadpipe.errors import ConfigError
from vadpipe.extractors.presets import ClipPreset
from vadpipe.extractors.registry import BackboneSpec, Weights, register_backbone
from vadpipe.extractors.weights import load_weights, locate_weight_file, sha256_file
from vadpipe.loading import check_state_dict, read_state_dict

__all__ = [
    "C3D",
    "C3D_CKPT_NAME",
    "C3D_ENV",
    "C3D_HOW_TO_GET",
    "C3D_KEYS",
    "C3D_PRESET",
    "C3D_URL",
    "C3D_WEIGHTS",
    "SPORTS1M_BGR_MEAN",
    "c3d_sports1m",
    "load_c3d_state_dict",
    "read_c3d_state_dict",
    "locate_c3d_checkpoint",
]

FEATURE_DIM = 4096
NUM_CLASSES = 487  # Sports-1M
CLIP_LEN = 16
CROP_SIZE = 112

#: File name of the PyTorch port's Sports-1M weights.
C3D_CKPT_NAME = "c3d.pickle"
#: Environment variable pointing at ``c3d.pickle``.
C3D_ENV = "VADPIPE_C3D_CKPT"
#: Download link given in the DavideA/c3d-pytorch README.
C3D_URL = "http://imagelab.ing.unimore.it/files/c3d_pytorch/c3d.pickle"
C3D_HOW_TO_GET = (
    f"download {C3D_CKPT_NAME} (C3D Sports-1M weights of the PyTorch port DavideA/c3d-pytorch, "
    f"link in its README: {C3D_URL}) and run `vadpipe weights import c3d /path/to/{C3D_CKPT_NAME}` "
    f"(or set {C3D_ENV}=/path/to/{C3D_CKPT_NAME})"
)

#: Sports-1M mean pixel, BGR, 0..255. The original subtracts a per-pixel mean *cube*
#: (``sport1m_train16_128_mean.binaryproto``, ``[3, 16, 128, 171]``) before cropping; these
#: per-channel values are the widely used approximation of it (not reproduced here).
SPORTS1M_BGR_MEAN = (90.25, 97.66, 101.41)

#: Resize to exactly 128x171 (C3D ``new_height``/``new_width``), centre crop 112, BGR,
#: ``(x / 255 - mean / 255) / (1 / 255) == x - mean`` in 0..255 units.
C3D_PRESET = ClipPreset(
    resize=(128, 171),
    crop_size=CROP_SIZE,
    crop_order="torchvision",
    value_range=None,
    mean=tuple(m / 255.0 for m in SPORTS1M_BGR_MEAN),  # type: ignore[arg-type]
    std=(1 / 255.0,) * 3,
    bgr=True,
)

_CONVS = (
    ("conv1", 3, 64),
    ("conv2", 64, 128),
    ("conv3a", 128, 256),
    ("conv3b", 256, 256),
    ("conv4a", 256, 512),
    ("conv4b", 512, 512),
    ("conv5a", 512, 512),
    ("conv5b", 512, 512),
)
_FCS = (("fc6", 8192, 4096), ("fc7", 4096, 4096), ("fc8", 4096, NUM_CLASSES))


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for name, cin, cout in _CONVS:
        out[f"{name}.weight"] = (cout, cin, 3, 3, 3)
        out[f"{name}.bias"] = (cout,)
    for name, fin, fout in _FCS:
        out[f"{name}.weight"] = (fout, fin)
        out[f"{name}.bias"] = (fout,)
    return out


#: Key -> shape of the ``c3d.pickle`` state dict (22 tensors, fc8 included).
C3D_KEYS: dict[str, tuple[int, ...]] = _expected_shapes()

LAYERS = ("fc6", "fc7")
POOL5_MODES = ("caffe", "port")


class C3D(nn.Module):
    """C3D trunk with fc6/fc7/fc8; ``forward`` returns post-ReLU ``layer`` activations.

    Args:
        layer: ``"fc6"`` (default, as Sultani et al.) or ``"fc7"``.
        pool5: ``"caffe"`` (ceil sizing, no padding; original C3D v1.0) or ``"port"``
            (``padding=(0, 1, 1)``, as DavideA/c3d-pytorch).

    Attributes:
        weights_sha256: sha256 of the loaded ``c3d.pickle`` (``None``: random init).
    """

    def __init__(self, layer: str = "fc6", pool5: str = "caffe") -> None:
        super().__init__()
        if layer not in LAYERS:
            raise ConfigError(f"C3D layer must be one of {LAYERS}, got {layer!r}")
        if pool5 not in POOL5_MODES:
            raise ConfigError(f"C3D pool5 must be one of {POOL5_MODES}, got {pool5!r}")
        self.layer = layer
        self.pool5_mode = pool5
        for name, cin, cout in _CONVS:
            setattr(self, name, nn.Conv3d(cin, cout, kernel_size=3, padding=1))
        for name, fin, fout in _FCS:
            setattr(self, name, nn.Linear(fin, fout))
        self.weights_sha256: str | None = None

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or tuple(x.shape[1:]) != (3, CLIP_LEN, CROP_SIZE, CROP_SIZE):
            raise ValueError(
                f"C3D expects float [B, 3, {CLIP_LEN}, {CROP_SIZE}, {CROP_SIZE}] (BGR, mean "
                f"subtracted), got shape {tuple(x.shape)}"
            )

    def pool5(self, h: torch.Tensor) -> torch.Tensor:
        if self.pool5_mode == "caffe":
            return F.max_pool3d(h, 2, 2, ceil_mode=True)
        return F.max_pool3d(h, 2, 2, padding=(0, 1, 1))

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """``pool5`` flattened: ``[B, 8192]``."""
        self._check_input(x)
        h = F.max_pool3d(F.relu(self.conv1(x)), (1, 2, 2), (1, 2, 2))
        h = F.max_pool3d(F.relu(self.conv2(h)), 2, 2)
        h = F.max_pool3d(F.relu(self.conv3b(F.relu(self.conv3a(h)))), 2, 2)
        h = F.max_pool3d(F.relu(self.conv4b(F.relu(self.conv4a(h)))), 2, 2)
        h = self.pool5(F.relu(self.conv5b(F.relu(self.conv5a(h)))))
        return h.flatten(1)

    def fc6_fc7(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Post-ReLU ``(fc6, fc7)``, each ``[B, 4096]``."""
        fc6 = F.relu(self.fc6(self.trunk(x)))
        return fc6, F.relu(self.fc7(fc6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Post-ReLU activations of ``self.layer``: ``[B, 4096]``."""
        fc6 = F.relu(self.fc6(self.trunk(x)))
        if self.layer == "fc6":
            return fc6
        return F.relu(self.fc7(fc6))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Sports-1M logits ``[B, 487]`` (softmax them for the port's ``probs``)."""
        return self.fc8(self.fc6_fc7(x)[1])


#: The C3D Sports-1M weights of the PyTorch port (the ``c3d`` backbone's entry).
C3D_WEIGHTS = Weights(
    name="c3d-sports1m",
    source=(
        f"DavideA/c3d-pytorch README ({C3D_URL}); converted from facebook/C3D "
        "v1.0 conv3d_deepnetA_sport1m_iter_1900000"
    ),
    license=(
        "no license stated for c3d.pickle (DavideA/c3d-pytorch code: MIT per its "
        "LICENSE file); original C3D weights from facebook/C3D"
    ),
    how_to_get=C3D_HOW_TO_GET[0].upper() + C3D_HOW_TO_GET[1:] + ".",
    file_name=C3D_CKPT_NAME,
    env=C3D_ENV,
    preset=C3D_PRESET,
    feature_dim=FEATURE_DIM,
    meta={"training_data": "Sports-1M", "classes": NUM_CLASSES, "layer": "fc6",
          "paper": "Tran et al., Learning Spatiotemporal Features with 3D Convolutional Networks (ICCV 2015)"},
)


def locate_c3d_checkpoint(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$VADPIPE_C3D_CKPT``, else ``weights_dir() / "c3d.pickle"``.

    Raises:
        WeightsNotFoundError: the file does not exist (message names ``c3d.pickle``, the
            download link and ``vadpipe weights import c3d FILE``).
    """
    return locate_weight_file(C3D_WEIGHTS, path)


def read_c3d_state_dict(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Read ``c3d.pickle`` with ``torch.load(weights_only=True)`` (no arbitrary code) and check
    that it holds exactly the 22 :data:`C3D_KEYS` with their shapes (fc8 included; it is kept).

    Raises:
        WeightsIntegrityError: unreadable file, wrong keys or shapes.
    """
    sd = read_state_dict(path, what="C3D weights")
    sd = check_state_dict(sd, C3D_KEYS, source=f"C3D weights {path}", expected_format=C3D_HOW_TO_GET)
    return {k: v.float() for k, v in sd.items()}


def load_c3d_state_dict(path: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """``(state_dict, sha256 of the file)`` of the ``c3d.pickle`` :func:`locate_c3d_checkpoint` finds.

    Raises:
        WeightsNotFoundError: see :func:`locate_c3d_checkpoint`.
        WeightsIntegrityError: see :func:`read_c3d_state_dict`.
    """
    found = locate_c3d_checkpoint(path)
    return read_c3d_state_dict(found), sha256_file(found)


def c3d_sports1m(
    *,
    weights: Weights | None = C3D_WEIGHTS,
    checkpoint: str | os.PathLike | None = None,
    layer: str = "fc6",
    pool5: str = "caffe",
) -> C3D:
    """C3D in eval mode; with ``weights`` the ``c3d.pickle`` weights, loaded strictly.

    ``weights_sha256`` is the sha256 of the loaded file (``None`` for ``weights=None``, a
    random init).
    """
    model = C3D(layer=layer, pool5=pool5)
    if weights is not None:
        load_weights(model, weights, checkpoint, read=read_c3d_state_dict)
    return model.eval()


register_backbone(
    BackboneSpec(name="c3d", clip_len=CLIP_LEN, weights=C3D_WEIGHTS, build=c3d_sports1m, file_suffix="c3d")
)
