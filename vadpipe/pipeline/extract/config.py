"""The configuration of a stage-one extraction run, serialised beside its outputs.

:class:`ExtractConfig` is flat on the command line and on disk (``extract-<time>.json``), and
falls into three typed parts, each field in exactly one:

* :class:`FeatureSettings` (:attr:`ExtractConfig.features`): what the numbers in the feature
  files depend on; with the weights' sha256 it makes the ``config_hash`` that decides
  whether an earlier output can be kept;
* :class:`RunOptions` (:attr:`ExtractConfig.run`): speed and placement on one machine;
* :class:`EngineOptions` (:attr:`ExtractConfig.engine_options`): how the run is spread over
  processes, devices and machines.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace

from vadpipe.errors import ConfigError
from vadpipe.extractors.presets import N_CROPS, ClipPreset
from vadpipe.manifests.features import LAYOUTS
from vadpipe.pipeline.extract.clips import ClipSpec

__all__ = ["PRECISIONS", "EngineOptions", "ExtractConfig", "FeatureSettings", "RunOptions"]

PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


@dataclass(frozen=True)
class FeatureSettings:
    """The settings that change the numbers in the feature files (hashed with the weights).

    ``random_weights`` is not here: it changes the weights, whose tag (``"random"``) takes the
    place of the sha256 in the hash.
    """

    backbone: str
    clip: ClipSpec
    preset: ClipPreset | None
    crops: int
    fps: float | None
    layout: str
    precision: str


@dataclass(frozen=True)
class RunOptions:
    """Speed and placement on one machine: changing them keeps earlier outputs valid."""

    device: str
    batch_clips: int
    workers: int
    decoder: str
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
        blob = json.dumps(shaping, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

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
        if "devices" in values:
            values["devices"] = tuple(values["devices"])
        return cls(**values)
