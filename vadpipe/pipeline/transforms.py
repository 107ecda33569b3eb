"""Spatial preprocessing of clips: resize, multi-crop, value normalisation.

A :class:`ClipPreset` is bound to a backbone's weights (see ``vadpipe.extractors``), so
features are never made with the wrong normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Crop orders. Names of the five base crops: TL, TR, BL, BR, C (top-left, ..., centre).
#: ``torchvision``: ``torchvision.transforms.TenCrop`` order: the five crops of the frame
#: (TL, TR, BL, BR, C) followed by the five crops of the horizontally flipped frame.
#: ``gowtham``: the order of the widely used I3D feature extractor behind the RTFM
#: features: TL, TR, C, BL, BR, then the same five crops mirrored.
CROP_ORDERS = ("torchvision", "gowtham")


@dataclass(frozen=True)
class ClipPreset:
    """Preprocessing that a backbone's weights expect.

    Attributes:
        resize: ``int``: resize so the short side has this many pixels, keeping the
            aspect ratio; ``(height, width)``: resize to exactly this size, ignoring aspect.
        crop_size: side of the square crops.
        crop_order: one of :data:`CROP_ORDERS`.
        value_range: uint8 ``[0, 255]`` is mapped linearly onto ``[lo, hi]``
            (I3D: ``(-1.0, 1.0)``). Mutually exclusive with ``mean``/``std``.
        mean, std: per-channel statistics in ``[0, 1]`` units, applied after ``x / 255``.
        bgr: feed channels as BGR instead of RGB.
        antialias: antialiased resize (torchvision's ``antialias=True``).
    """

    resize: int | tuple[int, int] = 256
    crop_size: int = 224
    crop_order: str = "torchvision"
    value_range: tuple[float, float] | None = (-1.0, 1.0)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    bgr: bool = False
    antialias: bool = True
