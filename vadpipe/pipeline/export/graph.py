"""The detector as one exportable module: resized uint8 clips in, clip features and scores out.

:class:`DetectorGraph` is what ``vadpipe export`` hands to the ONNX and TorchScript
exporters. It holds the backbone, its crop and value preprocessing, and the head::

    clips    uint8   [N, L, h, w, 3]   N new clips, resized (RGB, channels last)
    context  float32 [K, C, D]         features of the K clips before them (K may be 0)
      -> crops     uint8 [N*C, 3, L, S, S]    (the preset's crop order, in the graph)
      -> backbone  float [N*C, D]             (value range / mean-std, BGR, in the graph)
      -> features  float32 [N, C, D]          output 1: what stage one writes per clip
      -> head over [1, C, K+N, D]             (L2-normalised first when the head asks)
      -> scores    float32 [K+N]              output 2: one score per clip, context first

Crop offsets are computed in the graph from ``h`` and ``w`` (:func:`crop_offsets`), so one
exported file takes frames of any size. The resize is *not* in the graph: torchvision's
uint8 antialiased kernels, which stage one uses, have no ONNX equivalent that gives the
same pixels, and a grey level moves scores by more than the 1e-4 the export is held to.
The runtime resizes on the host with the same function as stage one
(:func:`vadpipe.pipeline.export.runtime.resize_for_model`).

Scoring a whole video is one call with every clip (or several calls, each passing the
previous clips' features as ``context``: the last call's scores are the whole video's);
streaming is one call per clip with the last ``window`` features as context.
"""

from __future__ import annotations

import torch
from torch import nn

from vadpipe.extractors.presets import BASE_ORDER, CENTRE_ROUNDING, ClipPreset, check_n_crops, check_order

__all__ = ["DetectorGraph", "crop_offsets"]


def _centre(diff, rounding: str):
    """Offset of the centre crop with ``diff`` spare pixels; integer arithmetic only, so it
    also works on the symbolic sizes of an export (``round(diff / 2)`` half to even is
    ``(diff + (diff // 2) % 2) // 2``)."""
    return (diff + (diff // 2) % 2) // 2 if rounding == "half-even" else diff // 2


def crop_offsets(height, width, crop_size: int, order: str, n_crops: int) -> list[tuple[object, object, bool]]:
    """``(top, left, mirrored)`` of every crop of a ``height x width`` frame: the boxes of
    :func:`~vadpipe.pipeline.extract.transforms.crop_boxes`, computed with integer
    arithmetic that accepts symbolic sizes (no size check: the runtime checks sizes)."""
    check_order(order)
    check_n_crops(n_crops)
    dh, dw = height - crop_size, width - crop_size
    rounding = CENTRE_ROUNDING[order]
    pos = {"TL": (0, 0), "TR": (0, dw), "BL": (dh, 0), "BR": (dh, dw), "C": (_centre(dh, rounding), _centre(dw, rounding))}
    if n_crops == 1:
        return [(*pos["C"], False)]
    boxes = [(*pos[name], False) for name in BASE_ORDER[order]]
    if n_crops == 10:
        boxes += [(pos[name][0], dw - pos[name][1], True) for name in BASE_ORDER[order]]
    return boxes


class DetectorGraph(nn.Module):
    """Backbone + preprocessing + head (module docstring).

    Args:
        backbone: ``[B, 3, L, S, S]`` float -> ``[B, D]`` (``[B, nodes, D]`` for node backbones).
        head: an :class:`~vadpipe.heads.base.AnomalyHead` in eval mode.
        preset: the backbone's crop and value preprocessing.
        n_crops: crops per clip (1, 5 or 10); node backbones run one crop and give ``C = nodes``.
        nodes: the backbone's feature nodes per clip (1 for crop backbones).
        l2_normalize: divide every snippet feature by its L2 norm before the head (Sultani).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, preset: ClipPreset, n_crops: int, nodes: int = 1,
                 l2_normalize: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.preset = preset
        self.n_crops = n_crops
        self.nodes = nodes
        self.l2_normalize = l2_normalize

    def crops(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, L, h, w, 3]`` -> uint8 ``[N, C, 3, L, S, S]`` in the preset's crop order."""
        x = clips.permute(0, 4, 1, 2, 3)  # [N, 3, L, h, w]
        s = self.preset.crop_size
        parts = []
        for top, left, mirrored in crop_offsets(x.shape[-2], x.shape[-1], s, self.preset.crop_order, self.n_crops):
            region = x[..., top:top + s, left:left + s]
            parts.append(region.flip(-1) if mirrored else region)
        return torch.stack(parts, dim=1)

    def normalize(self, crops: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, 3, L, S, S]`` -> float32 network input (channels reversed first for BGR)."""
        x = crops.float()
        if self.preset.bgr:
            x = x.flip(1)
        if self.preset.value_range is not None:  # the same operations, in the same order, as normalize_clips
            lo, hi = self.preset.value_range
            x = x / 255.0
            x = x * (hi - lo) if hi - lo != 1.0 else x
            return x + lo if lo != 0.0 else x
        mean = torch.tensor(self.preset.mean, dtype=torch.float32).view(3, 1, 1, 1)
        std = torch.tensor(self.preset.std, dtype=torch.float32).view(3, 1, 1, 1)
        return (x / 255.0 - mean) / std

    def features(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, L, h, w, 3]`` -> float32 ``[N, C, D]``."""
        crops = self.crops(clips)
        n, c = crops.shape[0], crops.shape[1]
        feats = self.backbone(self.normalize(crops.flatten(0, 1))).float()
        if self.nodes > 1:  # [N, nodes, D]: node backbones run one crop
            return feats.reshape(n, self.nodes, feats.shape[-1])
        return feats.reshape(n, c, feats.shape[-1])

    def scores(self, feats: torch.Tensor) -> torch.Tensor:
        """float32 ``[T, C, D]`` -> scores ``[T]`` (the head over the whole ``T`` clips)."""
        x = feats.transpose(0, 1)[None]  # [1, C, T, D]
        if self.l2_normalize:  # l2_normalize_segments: vectors of norm < 1e-12 are left as they are
            norm = x.norm(dim=-1, keepdim=True)
            x = x / torch.where(norm < 1e-12, torch.ones_like(norm), norm)
        return self.head.snippet_scores(x)[0].float()

    def forward(self, clips: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``clips`` uint8 ``[N, L, h, w, 3]``, ``context`` float32 ``[K, C, D]`` ->
        ``features [N, C, D]``, ``scores [K + N]``."""
        feats = self.features(clips)
        return feats, self.scores(torch.cat([context, feats], dim=0))
