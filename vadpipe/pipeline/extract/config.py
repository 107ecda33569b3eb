"""The configuration of a stage-one extraction run, serialised beside its outputs.

:class:`ExtractConfig` is flat on the command line and on disk (``extract-<time>.json``), and
falls into three typed parts, each field in exactly one:

* :class:`FeatureSettings` (:attr:`ExtractConfig.features`): what the numbers in the feature
  files depend on; with the weights' sha256 it makes the ``config_hash`` that decides
  whether an earlier output can be kept;
* :class:`RunOptions` (:attr:`ExtractConfig.run`): speed and placement on one machine;
* :class:`EngineOptions` (:attr:`ExtractConfig.engine_options`): how the run is spread over
  processes, devices and machines.

:func:`recipe_config` builds the config of ``vadpipe extract --preset NAME``: the named
:class:`~vadpipe.extractors.presets.FeatureRecipe` fills in every setting it fixes, explicit
flags override it, and the recipe's name and the overridden settings are kept in the config
(so in the run record ``extract-<time>.json`` and, by name, in ``features.csv``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from vadpipe.errors import ConfigError
from vadpipe.extractors.presets import N_CROPS, ClipPreset, get_recipe, recipe_preset
from vadpipe.manifests.features import LAYOUTS
from vadpipe.pipeline.extract.clips import ClipSpec

__all__ = ["DEFAULT_CROPS", "DEFAULT_LAYOUT", "DEFAULT_TAIL", "PRECISIONS", "EngineOptions", "ExtractConfig",
           "FeatureSettings", "RunOptions", "recipe_config"]

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
#: Crops per clip, file layout and tail rule when neither a flag nor a recipe sets them.
DEFAULT_CROPS = 10
DEFAULT_LAYOUT = "single"
DEFAULT_TAIL = "drop"

#: Settings added after ``config_hash`` was introduced, left out of the hash while they keep
#: these values, so that folders written before they existed keep their hash (and are not
#: recomputed): ``(path in the FeatureSettings dict, value)``.
_HASHED_ONLY_IF_SET: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("clip", "drop_last"), 0),
    (("recipe",), None),
    (("recipe_overrides",), ()),
    (("decoder",), "auto"),
)


@dataclass(frozen=True)
class FeatureSettings:
    """The settings that change the numbers in the feature files (hashed with the weights).

    ``decoder`` is here because a forced backend (``decord``, ``torchcodec-cuda``) need not give
    PyAV's frames: a folder is never resumed with another decoder than the one that wrote it
    (``auto``, the default, is left out of the hash, so older folders keep theirs).
    ``random_weights`` is not here: it changes the weights, whose tag (``"random"``) takes the
    place of the sha256 in the hash. ``recipe`` and ``recipe_overrides`` do not change the
    numbers by themselves (the settings they stand for do) but are hashed too, so that the
    rows of a folder and its run record always name the same recipe.
    """

    backbone: str
    clip: ClipSpec
    preset: ClipPreset | None
    crops: int
    fps: float | None
    layout: str
    precision: str
    recipe: str | None
    recipe_overrides: tuple[str, ...]
    decoder: str


@dataclass(frozen=True)
class RunOptions:
    """Speed and placement on one machine: changing them keeps earlier outputs valid."""

    device: str
    batch_clips: int
    workers: int
    channels_last: bool
    random_weights: bool


@dataclass(frozen=True)
class EngineOptions:
    """How the run is spread over processes, devices and machines."""

    devices: tuple[str, ...]
    engine: str
    ray_address: str | None


def _part(config: "ExtractConfig", cls: type) -> object:
    return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


@dataclass(frozen=True)
class ExtractConfig:
    """Everything that decides what ``vadpipe extract`` writes and how fast.

    Attributes:
        backbone: registered backbone name.
        clip: clip length, stride and tail policy.
        preset: resize/crop/normalisation; ``None`` takes the backbone's own preset.
        crops: crops per clip (1, 5 or 10).
        fps: resample videos to this frame rate; ``None`` keeps the native rate.
        layout: ``single`` (``<name>_<suffix>.npy``, ``[n_clips, crops, D]``) or
            ``per-crop`` (``<name>__<k>.npy``, ``[n_clips, D]`` each).
        precision: ``fp32``, ``tf32`` (fp32 storage, TF32 matmuls), ``bf16``/``fp16``
            (autocast on CUDA). Features are always saved as float32.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:1`` ...
        batch_clips: clips per forward pass (times ``crops`` samples).
        workers: decoding/preprocessing worker processes (0: in the main process).
        decoder: ``auto``, ``decord``, ``pyav``, ``torchcodec`` or ``torchcodec-cuda`` (see
            :mod:`vadpipe.pipeline.extract.decode`).
        channels_last: use ``torch.channels_last_3d`` memory format on CUDA.
        random_weights: run the backbone with random weights (tests and benchmarks only).
        devices: one worker process per device (``("cuda:0", "cuda:1")``; ``("cpu", "cpu")``
            for tests); empty or one entry: the single-process run on ``device``.
        engine: ``local`` (this machine) or ``ray`` (a Ray cluster or a local Ray instance).
        ray_address: Ray cluster address for ``engine="ray"`` (``None``: start a local one).
        recipe: name of the :class:`~vadpipe.extractors.presets.FeatureRecipe` the settings
            come from (``vadpipe extract --preset NAME``; ``None``: none).
        recipe_overrides: ``"setting=value"`` for each recipe setting an explicit flag
            replaced (e.g. ``("tail=pad",)``): the features then differ from the recipe's.
    """

    backbone: str = "i3d"
    clip: ClipSpec = field(default_factory=ClipSpec)
    preset: ClipPreset | None = None
    crops: int = 10
    fps: float | None = None
    layout: str = "single"
    precision: str = "fp32"
    device: str = "auto"
    batch_clips: int = 2
    workers: int = 0
    decoder: str = "auto"
    channels_last: bool = True
    random_weights: bool = False
    devices: tuple[str, ...] = ()
    engine: str = "local"
    ray_address: str | None = None
    recipe: str | None = None
    recipe_overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.crops not in N_CROPS:
            raise ConfigError(f"crops must be one of {N_CROPS}, got {self.crops}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_clips < 1:
            raise ConfigError(f"batch_clips must be >= 1, got {self.batch_clips}")
        if self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.fps is not None and self.fps <= 0:
            raise ConfigError(f"fps must be positive, got {self.fps}")
        if self.recipe is not None:
            get_recipe(self.recipe)  # raises on an unknown name
        object.__setattr__(self, "recipe_overrides", tuple(self.recipe_overrides))

    @property
    def features(self) -> FeatureSettings:
        """The settings the feature values depend on."""
        return _part(self, FeatureSettings)  # type: ignore[return-value]

    @property
    def run(self) -> RunOptions:
        """Speed and placement options."""
        return _part(self, RunOptions)  # type: ignore[return-value]

    @property
    def engine_options(self) -> EngineOptions:
        """Engine options."""
        return _part(self, EngineOptions)  # type: ignore[return-value]

    def with_preset(self, preset: ClipPreset) -> "ExtractConfig":
        """This config with ``preset`` filled in (the backbone's default when unset)."""
        return self if self.preset is not None else replace(self, preset=preset)

    def feature_hash(self, weights_sha256: str) -> str:
        """Short hash of the settings that change the numbers in the feature files.

        :attr:`features` and the weights' sha256: run and engine options are left out, so
        changing them does not invalidate earlier outputs.
        """
        shaping = {"weights": weights_sha256, **asdict(self.features)}
        for path, unset in _HASHED_ONLY_IF_SET:
            *parents, key = path
            part = shaping
            for name in parents:
                part = part[name]
            if part.get(key) == unset:
                del part[key]
        blob = json.dumps(shaping, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def hash_before_decoder(self, weights_sha256: str) -> str:
        """:meth:`feature_hash` as it was before the decoder was hashed (as for ``auto``): the
        hash of rows a forced decoder wrote then, which resume keeps only where the row's
        ``decoder`` column shows that this run's decoder made it."""
        return replace(self, decoder="auto").feature_hash(weights_sha256)

    def to_dict(self) -> dict:
        """JSON-ready dictionary of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ExtractConfig":
        """Inverse of :meth:`to_dict` (JSON lists become tuples again); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown extraction setting(s) {sorted(unknown)}; known: {sorted(known)}")
        values = dict(data)
        if values.get("clip") is not None:
            values["clip"] = ClipSpec(**values["clip"])
        if values.get("preset") is not None:
            values["preset"] = ClipPreset(**{k: tuple(v) if isinstance(v, list) else v
                                             for k, v in values["preset"].items()})
        for name in ("devices", "recipe_overrides"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


def recipe_config(
    recipe: str | None,
    *,
    backbone: str,
    backbone_preset: ClipPreset,
    backbone_clip_len: int,
    crops: int | None = None,
    crop_order: str | None = None,
    resize: int | tuple[int, int] | None = None,
    clip_len: int | None = None,
    stride: int | None = None,
    tail: str | None = None,
    layout: str | None = None,
    **options: Any,
) -> ExtractConfig:
    """The config of one extraction: explicit settings, else the recipe's, else the defaults.

    Args:
        recipe: a recipe name or alias (``None``: no recipe); stored under its own name.
        backbone: the backbone (see :func:`~vadpipe.extractors.presets.recipe_backbone`).
        backbone_preset, backbone_clip_len: the backbone weights' preset and clip length.
        crops, crop_order, resize, clip_len, stride, tail, layout: explicit settings
            (``None``: not given). ``stride`` defaults to the clip length.
        options: the other :class:`ExtractConfig` fields (run and engine options, ``fps``,
            ``precision``).

    Returns:
        The config, with ``recipe`` set and ``recipe_overrides`` naming each explicit setting
        that differs from what the recipe fixes (the recipe's ``drop_last`` has no flag).

    Raises:
        ConfigError: an unknown recipe or an invalid setting.
    """
    r = get_recipe(recipe) if recipe else None

    def fact(name: str) -> Any:
        return getattr(r, name) if r is not None else None

    preset = recipe_preset(backbone_preset, r.name if r else None, crop_order=crop_order, resize=resize)
    length = clip_len or fact("clip_len") or backbone_clip_len
    values: dict[str, Any] = {
        "crops": crops or fact("crops") or DEFAULT_CROPS,
        "layout": layout or fact("layout") or DEFAULT_LAYOUT,
        "clip": ClipSpec(length=length, stride=stride or fact("stride") or length,
                         tail=tail or fact("tail") or DEFAULT_TAIL, drop_last=fact("drop_last") or 0),
    }
    overrides: list[str] = []
    if r is not None:
        fixed = r.apply(backbone_preset)
        recipe_length = r.clip_len or backbone_clip_len
        given = {"crop_order": (crop_order, fixed.crop_order), "resize": (resize, fixed.resize),
                 "crops": (crops, r.crops), "clip_len": (clip_len, r.clip_len),
                 "stride": (stride, r.stride or recipe_length), "tail": (tail, r.tail), "layout": (layout, r.layout)}
        for name, (value, theirs) in given.items():
            if value is not None and theirs is not None and value != theirs:
                text = "x".join(map(str, value)) if isinstance(value, tuple) else str(value)
                overrides.append(f"{name}={text}")
    return ExtractConfig(backbone=backbone, preset=preset, recipe=r.name if r else None,
                         recipe_overrides=tuple(overrides), **values, **options)
