"""Clip presets: the preprocessing a backbone's weights were trained with, carried by the weights.

A :class:`ClipPreset` (resize, crop size and order, interpolation, value range, mean/std)
belongs to a backbone's registry entry, so features are never made with the wrong
normalisation; the named presets are what ``vadpipe extract --preset NAME`` offers. The
operations that apply a preset live in :mod:`vadpipe.pipeline.extract.transforms`, whose
docstring gives the crop regions and the facts behind the ``gowtham`` order.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from numbers import Real

from vadpipe.errors import ConfigError

__all__ = ["ClipPreset", "CROP_ORDERS", "INTERPOLATIONS", "N_CROPS", "KINETICS_I3D_PRESET",
           "GOWTHAM_RTFM_PRESET", "WU_I3D_PRESET", "PRESETS", "BASE_ORDER", "CENTRE_ROUNDING", "FeatureRecipe",
           "RECIPES", "RECIPE_ALIASES", "RECIPE_CHOICES", "crop_names", "check_n_crops", "check_order", "get_recipe",
           "recipe_backbone", "recipe_preset"]

#: Crop orders. Names of the five base crops: TL, TR, BL, BR, C (top-left, ..., centre).
#: ``torchvision``: ``torchvision.transforms.TenCrop`` order: the five crops of the frame
#: (TL, TR, BL, BR, C) followed by the five crops of the horizontally flipped frame.
#: ``gowtham``: the order of the widely used I3D feature extractor behind the RTFM
#: features: TL, TR, C, BL, BR, then the same five crops taken from the horizontally
#: flipped frame. See the module docstring for offsets and names.
#: ``wu``: the order of Wu et al.'s published I3D feature files (UCF-Crime 10-crop,
#: XD-Violence 5-crop, ``<video>__<k>.npy``): ``__0`` C, then the corners TL, TR, BL, BR,
#: then (10 crops) the same five taken from the horizontally flipped frame.
#: ``caffe``: the ``torchvision`` order with Caffe's centre offset ``(side - S) // 2`` (C3D
#: v1.0 ``video_data_layer.cpp``, test phase: ``h_off = (height - crop_size) / 2``).
CROP_ORDERS = ("torchvision", "gowtham", "wu", "caffe")

#: Resize interpolations (torchvision ``InterpolationMode`` names, lower case).
INTERPOLATIONS = ("bilinear", "bicubic", "lanczos")

#: Supported numbers of crops per clip.
N_CROPS = (1, 5, 10)

#: The five base crops of each order, by index.
BASE_ORDER = {
    "torchvision": ("TL", "TR", "BL", "BR", "C"),
    "gowtham": ("TL", "TR", "C", "BL", "BR"),
    "wu": ("C", "TL", "TR", "BL", "BR"),
    "caffe": ("TL", "TR", "BL", "BR", "C"),
}
#: How each order rounds the centre crop's offset ``(d = side - S) / 2``: ``"half-even"``
#: ``int(round(d / 2))`` (torchvision ``center_crop``; pytorch-i3d ``videotransforms.CenterCrop``
#: uses ``np.round``, the same rule); ``"floor"``: ``d // 2`` (Gowtham's hard-coded slices,
#: Caffe's integer division).
CENTRE_ROUNDING = {"torchvision": "half-even", "gowtham": "floor", "wu": "half-even", "caffe": "floor"}
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

#: Reproduces Wu et al.'s Inception-I3D features (UCF-Crime 10-crop, XD-Violence 5-crop), made
#: with piergiaj/pytorch-i3d: OpenCV bilinear resize of the short side to 256 keeping the
#: aspect (no antialiasing), ``x / 255 * 2 - 1``, the ``wu`` crop order. See ``docs/recipes.md``.
WU_I3D_PRESET = ClipPreset(
    resize=256,
    crop_size=224,
    crop_order="wu",
    value_range=(-1.0, 1.0),
    antialias=False,
    interpolation="bilinear",
)

#: Named presets (geometries) that recipes refer to.
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

#: Layouts and tail rules a recipe may name (checked again by ``ExtractConfig``/``ClipSpec``;
#: spelled out here so that this module stays free of the heavy manifest modules).
_RECIPE_LAYOUTS = ("single", "per-crop")
_RECIPE_TAILS = ("drop", "pad")


@dataclass(frozen=True)
class FeatureRecipe:
    """A named feature recipe (``vadpipe extract --preset NAME``): how a public feature set was made.

    Every fact that is not ``None`` replaces the default of the extraction; explicit command
    line flags still override it (and are recorded as overrides).

    Attributes:
        name: the recipe's name.
        description: what the recipe reproduces (one line).
        backbone: the backbone the recipe is made with (``None``: any).
        geometry: key of :data:`PRESETS` whose resize, crop order, interpolation and
            antialiasing replace the weights' own (crop size and value normalisation stay the
            weights'); for the geometry-only recipes that apply to any backbone.
        preset: the whole clip preset (resize, crop size and order, interpolation, value
            range); takes precedence over ``geometry``. ``None`` with ``geometry=None``: the
            backbone weights' preset as it is.
        preset_changes: ``(field, value)`` pairs replaced on the weights' preset (after
            ``geometry``) when ``preset`` is ``None``, e.g. ``(("antialias", False),)``.
        crops: crops per clip (1, 5 or 10).
        clip_len, stride: frames per clip and between clip starts (``stride=None``: ``clip_len``).
        tail: ``"drop"`` or ``"pad"`` (see :mod:`vadpipe.pipeline.extract.clips`).
        drop_last: frames left out at the end of each video before it is cut.
        layout: ``"single"`` (``<video>_<suffix>.npy`` ``[n_clips, crops, D]``) or
            ``"per-crop"`` (``<video>__<k>.npy`` ``[n_clips, D]``, ``k`` in crop order).
        aliases: other names that resolve to this recipe.

    Raises:
        ConfigError: a fact out of range, or ``geometry`` not in :data:`PRESETS`.
    """

    name: str
    description: str
    backbone: str | None = None
    geometry: str | None = None
    preset: ClipPreset | None = None
    crops: int | None = None
    clip_len: int | None = None
    stride: int | None = None
    tail: str | None = None
    drop_last: int = 0
    layout: str | None = None
    aliases: tuple[str, ...] = ()
    preset_changes: tuple[tuple[str, object], ...] = ()

    def __post_init__(self) -> None:
        if self.geometry is not None and self.geometry not in PRESETS:
            raise ConfigError(f"recipe {self.name!r}: geometry {self.geometry!r} is not one of {sorted(PRESETS)}")
        if self.crops is not None:
            check_n_crops(self.crops)
        for attr in ("clip_len", "stride"):
            value = getattr(self, attr)
            if value is not None and (not _is_int(value) or value < 1):
                raise ConfigError(f"recipe {self.name!r}: {attr} must be an int >= 1, got {value!r}")
        if not _is_int(self.drop_last) or self.drop_last < 0:
            raise ConfigError(f"recipe {self.name!r}: drop_last must be an int >= 0, got {self.drop_last!r}")
        if self.tail is not None and self.tail not in _RECIPE_TAILS:
            raise ConfigError(f"recipe {self.name!r}: tail must be one of {_RECIPE_TAILS}, got {self.tail!r}")
        if self.layout is not None and self.layout not in _RECIPE_LAYOUTS:
            raise ConfigError(f"recipe {self.name!r}: layout must be one of {_RECIPE_LAYOUTS}, got {self.layout!r}")
        known = {f.name for f in fields(ClipPreset)}
        unknown = [name for name, _ in self.preset_changes if name not in known]
        if unknown:
            raise ConfigError(f"recipe {self.name!r}: preset_changes name unknown ClipPreset fields {unknown}")

    def apply(self, preset: ClipPreset) -> ClipPreset:
        """``preset`` (a backbone's) with this recipe's preset or geometry."""
        if self.preset is not None:
            return self.preset
        if self.geometry is not None:
            named = PRESETS[self.geometry]
            preset = replace(preset, resize=named.resize, crop_order=named.crop_order,
                             interpolation=named.interpolation, antialias=named.antialias)
        return replace(preset, **dict(self.preset_changes)) if self.preset_changes else preset


#: Named feature recipes (``vadpipe extract --preset NAME``); cards in ``docs/recipes.md``.
RECIPES: dict[str, FeatureRecipe] = {r.name: r for r in (
    FeatureRecipe("kinetics", "Kinetics evaluation geometry: short side 256, TenCrop order", geometry="kinetics"),
    FeatureRecipe("gowtham-rtfm", "GowthamGottimukkala/I3D_Feature_Extraction_resnet geometry: 340x256 Lanczos, "
                  "its crop order", geometry="gowtham-rtfm"),
    FeatureRecipe("rtfm-i3d-r50-10crop", "RTFM/MGFN UCF-Crime and ShanghaiTech I3D-ResNet-50 10-crop features "
                  "(Gowtham's extractor)", backbone="i3d-r50-caffe2", preset=GOWTHAM_RTFM_PRESET, crops=10,
                  clip_len=16, stride=16, tail="drop", layout="single", aliases=("rtfm-ucf",)),
    FeatureRecipe("wu-i3d-10crop", "Wu et al.'s UCF-Crime Inception-I3D RGB 10-crop features (DeepMIL; used by "
                  "UR-DMU, BN-WVAD, PEL4VAD)", backbone="i3d", preset=WU_I3D_PRESET, crops=10, clip_len=16,
                  stride=16, tail="drop", layout="per-crop"),
    FeatureRecipe("xd-i3d-5crop", "XD-Violence Inception-I3D RGB 5-crop features (Wu et al., XDVioDet)",
                  backbone="i3d", preset=WU_I3D_PRESET, crops=5, clip_len=16, stride=16, tail="drop",
                  drop_last=1, layout="per-crop"),
    FeatureRecipe("sultani-c3d", "Sultani et al.'s UCF-Crime C3D fc6 features (Sports-1M weights, 128x171, centre "
                  "112)", backbone="c3d", crops=1, clip_len=16, stride=16, tail="drop", layout="single",
                  aliases=("sultani",), preset_changes=(("antialias", False), ("crop_order", "caffe"))),
)}

#: Old or short names of recipes: ``{alias: recipe name}``.
RECIPE_ALIASES: dict[str, str] = {alias: r.name for r in RECIPES.values() for alias in r.aliases}

#: What ``--preset`` accepts: the recipe names, then the aliases.
RECIPE_CHOICES: tuple[str, ...] = tuple(sorted(RECIPES)) + tuple(sorted(RECIPE_ALIASES))


def get_recipe(name: str) -> FeatureRecipe:
    """The recipe called ``name`` (or whose alias ``name`` is).

    Raises:
        ConfigError: no recipe has that name or alias (the message lists them).
    """
    recipe = RECIPES.get(RECIPE_ALIASES.get(name, name))
    if recipe is None:
        aliases = ", ".join(f"{a} -> {n}" for a, n in sorted(RECIPE_ALIASES.items()))
        raise ConfigError(f"unknown feature recipe {name!r}; known: {', '.join(sorted(RECIPES))} (aliases: {aliases})")
    return recipe


def recipe_preset(
    backbone_preset: ClipPreset,
    recipe: str | None = None,
    *,
    crop_order: str | None = None,
    resize: int | tuple[int, int] | None = None,
) -> ClipPreset:
    """The clip preset of one extraction: the backbone weights' preset, the named recipe's
    preset or geometry over it, then explicit ``crop_order`` / ``resize`` over that.

    Raises:
        ConfigError: unknown recipe.
    """
    preset = get_recipe(recipe).apply(backbone_preset) if recipe else backbone_preset
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
    made_with = get_recipe(recipe).backbone
    if backbone and made_with and backbone != made_with:
        raise ConfigError(f"--preset {recipe} is made with --backbone {made_with}, not {backbone}")
    return backbone or made_with or default
