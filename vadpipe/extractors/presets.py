"""Clip presets: the preprocessing a backbone's weights were trained with, carried by the weights.

A :class:`ClipPreset` (resize, crop size and order, interpolation, value range, mean/std)
belongs to a backbone's registry entry, so features are never made with the wrong
normalisation; the named presets are what ``vadpipe extract --preset NAME`` offers. The
operations that apply a preset live in :mod:`vadpipe.pipeline.extract.transforms`, whose
docstring gives the crop regions and the facts behind the ``gowtham`` order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from numbers import Real

from vadpipe.errors import ConfigError

__all__ = ["ClipPreset", "CROP_ORDERS", "INTERPOLATIONS", "N_CROPS", "KINETICS_I3D_PRESET",
           "GOWTHAM_RTFM_PRESET", "PRESETS", "BASE_ORDER", "FeatureRecipe", "RECIPES", "crop_names", "check_n_crops",
           "check_order", "recipe_backbone", "recipe_preset"]

#: Crop orders. Names of the five base crops: TL, TR, BL, BR, C (top-left, ..., centre).
#: ``torchvision``: ``torchvision.transforms.TenCrop`` order: the five crops of the frame
#: (TL, TR, BL, BR, C) followed by the five crops of the horizontally flipped frame.
#: ``gowtham``: the order of the widely used I3D feature extractor behind the RTFM
#: features: TL, TR, C, BL, BR, then the same five crops taken from the horizontally
#: flipped frame. See the module docstring for offsets and names.
CROP_ORDERS = ("torchvision", "gowtham")

#: Resize interpolations (torchvision ``InterpolationMode`` names, lower case).
INTERPOLATIONS = ("bilinear", "bicubic", "lanczos")

#: Supported numbers of crops per clip.
N_CROPS = (1, 5, 10)

BASE_ORDER = {
    "torchvision": ("TL", "TR", "BL", "BR", "C"),
    "gowtham": ("TL", "TR", "C", "BL", "BR"),
}
# Crop X of the flipped frame is the mirror image of this region of the original frame.
_MIRROR_OF = {"TL": "TR", "TR": "TL", "BL": "BR", "BR": "BL", "C": "C"}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class ClipPreset:
    """Preprocessing that a backbone's weights expect.

    Attributes:
        resize: ``int``: resize so the short side has this many pixels, keeping the
            aspect ratio (long side ``int(resize * long / short)``, as torchvision);
            ``(height, width)``: resize to exactly this size, ignoring aspect.
        crop_size: side ``S`` of the square crops.
        crop_order: one of :data:`CROP_ORDERS`.
        value_range: uint8 ``[0, 255]`` is mapped linearly onto ``[lo, hi]``
            (I3D: ``(-1.0, 1.0)``). Mutually exclusive with ``mean``/``std``: to use
            those, pass ``value_range=None``.
        mean, std: per-channel statistics in ``[0, 1]`` units, applied after ``x / 255``,
            listed in the channel order the network receives (BGR order if ``bgr``).
        bgr: feed channels as BGR instead of RGB.
        antialias: antialiased resize (torchvision's ``antialias=True``).
        interpolation: one of :data:`INTERPOLATIONS`; ``"lanczos"`` needs ``antialias``.

    Raises:
        ConfigError: on any invalid value or combination (see the messages).
    """

    resize: int | tuple[int, int] = 256
    crop_size: int = 224
    crop_order: str = "torchvision"
    value_range: tuple[float, float] | None = (-1.0, 1.0)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    bgr: bool = False
    antialias: bool = True
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        resize = self.resize
        if isinstance(resize, (tuple, list)):
            if len(resize) != 2 or not all(_is_int(v) and v >= 1 for v in resize):
                raise ConfigError(
                    "ClipPreset.resize must be an int >= 1 (short side) or a (height, width) "
                    f"pair of ints >= 1, got {resize!r}"
                )
            object.__setattr__(self, "resize", (int(resize[0]), int(resize[1])))
        elif not _is_int(resize) or resize < 1:
            raise ConfigError(
                "ClipPreset.resize must be an int >= 1 (short side) or a (height, width) "
                f"pair of ints >= 1, got {resize!r}"
            )
        if not _is_int(self.crop_size) or self.crop_size < 1:
            raise ConfigError(f"ClipPreset.crop_size must be an int >= 1, got {self.crop_size!r}")
        smallest = min(self.resize) if isinstance(self.resize, tuple) else self.resize
        if self.crop_size > smallest:
            raise ConfigError(
                f"ClipPreset.crop_size {self.crop_size} is larger than the resized frame "
                f"(resize={self.resize!r}); crop_size must be <= {smallest}"
            )
        if self.crop_order not in CROP_ORDERS:
            allowed = ", ".join(repr(o) for o in CROP_ORDERS)
            raise ConfigError(
                f"ClipPreset.crop_order must be one of {allowed}, got {self.crop_order!r}"
            )
        if self.interpolation not in INTERPOLATIONS:
            allowed = ", ".join(repr(o) for o in INTERPOLATIONS)
            raise ConfigError(
                f"ClipPreset.interpolation must be one of {allowed}, got {self.interpolation!r}"
            )
        if not isinstance(self.antialias, bool) or not isinstance(self.bgr, bool):
            raise ConfigError("ClipPreset.antialias and ClipPreset.bgr must be True or False")
        if self.interpolation == "lanczos" and not self.antialias:
            raise ConfigError("ClipPreset.interpolation='lanczos' requires antialias=True")
        self._check_values()

    def _check_values(self) -> None:
        has_stats = self.mean is not None or self.std is not None
        if self.value_range is not None and has_stats:
            raise ConfigError(
                "ClipPreset: value_range and mean/std are mutually exclusive; pass either "
                "value_range=(lo, hi) or value_range=None with mean=(m0, m1, m2) and "
                "std=(s0, s1, s2)"
            )
        if self.value_range is None and not has_stats:
            raise ConfigError(
                "ClipPreset needs a value mapping: value_range=(lo, hi) or mean and std"
            )
        if self.value_range is not None:
            vr = self.value_range
            if (
                not isinstance(vr, (tuple, list))
                or len(vr) != 2
                or not all(_is_real(v) for v in vr)
                or not float(vr[0]) < float(vr[1])
            ):
                raise ConfigError(
                    f"ClipPreset.value_range must be a pair (lo, hi) of numbers with lo < hi, "
                    f"got {vr!r}"
                )
            object.__setattr__(self, "value_range", (float(vr[0]), float(vr[1])))
            return
        for name in ("mean", "std"):
            value = getattr(self, name)
            if (
                not isinstance(value, (tuple, list))
                or len(value) != 3
                or not all(_is_real(v) for v in value)
            ):
                raise ConfigError(
                    f"ClipPreset.{name} must be 3 numbers (one per channel) when mean/std are "
                    f"used, got {value!r}; set both mean and std"
                )
            object.__setattr__(self, name, tuple(float(v) for v in value))
        if not all(s > 0 for s in self.std):  # type: ignore[union-attr]
            raise ConfigError(f"ClipPreset.std must be > 0 per channel, got {self.std!r}")

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` that a ``height x width`` frame has after :func:`resize_frames`."""
        if isinstance(self.resize, tuple):
            return self.resize
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.resize * long / short)
        return (self.resize, new_long) if height <= width else (new_long, self.resize)

    def crop_names(self, n_crops: int) -> list[str]:
        """Names of the crops :func:`crop_frames` produces with this preset."""
        return crop_names(self.crop_order, n_crops)


#: The I3D (Kinetics-400) convention: short side 256, torchvision ten-crop, ``[-1, 1]``.
KINETICS_I3D_PRESET = ClipPreset(
    resize=256, crop_size=224, crop_order="torchvision", value_range=(-1.0, 1.0)
)

#: Reproduces ``GowthamGottimukkala/I3D_Feature_Extraction_resnet`` (RTFM features): PIL
#: Lanczos resize to 340x256 ignoring aspect, its crop order, ``[-1, 1]``, RGB.
GOWTHAM_RTFM_PRESET = ClipPreset(
    resize=(256, 340),
    crop_size=224,
    crop_order="gowtham",
    value_range=(-1.0, 1.0),
    antialias=True,
    interpolation="lanczos",
)

#: Named presets, as ``vadpipe extract --preset NAME`` offers them.
PRESETS: dict[str, ClipPreset] = {"kinetics": KINETICS_I3D_PRESET, "gowtham-rtfm": GOWTHAM_RTFM_PRESET}


def check_n_crops(n_crops: int) -> None:
    if not _is_int(n_crops) or n_crops not in N_CROPS:
        raise ConfigError(f"n_crops must be one of {N_CROPS}, got {n_crops!r}")


def check_order(order: str) -> None:
    if order not in CROP_ORDERS:
        allowed = ", ".join(repr(o) for o in CROP_ORDERS)
        raise ConfigError(f"crop order must be one of {allowed}, got {order!r}")


def crop_names(order: str, n_crops: int) -> list[str]:
    """Name of each crop index for ``order`` and ``n_crops``.

    ``TL, TR, BL, BR, C`` are crops of the frame; ``flip(X)`` is the mirror image of the
    original frame's region ``X`` (see the module docstring for ``flip(C)``), e.g.
    ``crop_names("torchvision", 10)[5] == "flip(TR)"``.
    """
    check_order(order)
    check_n_crops(n_crops)
    if n_crops == 1:
        return ["C"]
    base = list(BASE_ORDER[order])
    if n_crops == 5:
        return base
    return base + [f"flip({_MIRROR_OF[name]})" for name in base]

@dataclass(frozen=True)
class FeatureRecipe:
    """A named feature recipe (``vadpipe extract --preset NAME``): how a public feature set was made.

    Attributes:
        name: the recipe's name.
        geometry: key of :data:`PRESETS` whose resize, crop order, interpolation and
            antialiasing replace the weights' own (crop size and value normalisation always
            stay the weights'); ``None``: the weights' preset as it is.
        backbone: the backbone the recipe is made with (``None``: any).
        description: what the recipe reproduces.
    """

    name: str
    geometry: str | None
    backbone: str | None
    description: str

    def apply(self, preset: ClipPreset) -> ClipPreset:
        """``preset`` (a backbone's) with this recipe's geometry."""
        if self.geometry is None:
            return preset
        named = PRESETS[self.geometry]
        return replace(preset, resize=named.resize, crop_order=named.crop_order,
                       interpolation=named.interpolation, antialias=named.antialias)


#: Named feature recipes (``vadpipe extract --preset NAME``).
RECIPES: dict[str, FeatureRecipe] = {r.name: r for r in (
    FeatureRecipe("kinetics", "kinetics", None, "Kinetics evaluation geometry: short side 256, TenCrop order"),
    FeatureRecipe("gowtham-rtfm", "gowtham-rtfm", None,
                  "GowthamGottimukkala/I3D_Feature_Extraction_resnet geometry: 340x256 Lanczos, its crop order"),
    FeatureRecipe("rtfm-ucf", "gowtham-rtfm", "i3d-r50-caffe2",
                  "RTFM's UCF-Crime / ShanghaiTech I3D-ResNet-50 features (Gowtham's extractor)"),
    FeatureRecipe("sultani", None, "c3d", "Sultani et al.'s C3D fc6 features (Sports-1M weights, 128x171)"),
)}


def recipe_preset(
    backbone_preset: ClipPreset,
    recipe: str | None = None,
    *,
    crop_order: str | None = None,
    resize: int | tuple[int, int] | None = None,
) -> ClipPreset:
    """The clip preset of one extraction: the backbone weights' preset, the named recipe's
    geometry over it, then explicit ``crop_order`` / ``resize`` over that."""
    preset = RECIPES[recipe].apply(backbone_preset) if recipe else backbone_preset
    if crop_order:
        preset = replace(preset, crop_order=crop_order)
    if resize:
        preset = replace(preset, resize=resize)
    return preset


def recipe_backbone(recipe: str | None, backbone: str | None, default: str = "i3d") -> str:
    """The backbone of an extraction: ``backbone``, else the recipe's, else ``default``.

    Raises:
        ConfigError: unknown recipe, or a recipe made with another backbone than ``backbone``.
    """
    if recipe is None:
        return backbone or default
    if recipe not in RECIPES:
        raise ConfigError(f"unknown feature recipe {recipe!r}; known: {', '.join(sorted(RECIPES))}")
    made_with = RECIPES[recipe].backbone
    if backbone and made_with and backbone != made_with:
        raise ConfigError(f"--preset {recipe} is made with --backbone {made_with}, not {backbone}")
    return backbone or made_with or default
