"""The interface every anomaly head implements, and the head registry.

Tensor conventions (``B`` videos, ``N`` crops, ``T`` snippets, ``D`` feature size):

* training batches: ``normal`` and ``abnormal`` float ``[B, N, T, D]`` (``N = 1`` for
  single-crop features; RTFM-style heads fold crops into the batch themselves);
* scoring: ``[B, N, T, D]`` → snippet scores ``[B, T]`` in ``[0, 1]``, averaged over crops
  the way the head's official code does it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch
from torch import nn

from vadpipe.registry import Registry


class AnomalyHead(nn.Module):
    """Base class of anomaly heads.

    Subclasses hold their hyper-parameters in ``self.config`` (a dataclass instance) and
    implement :meth:`loss` and :meth:`snippet_scores`.
    """

    config: Any

    def loss(self, normal: torch.Tensor, abnormal: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch.

        Args:
            normal: ``[B, N, T, D]`` features of normal videos.
            abnormal: ``[B', N, T, D]`` features of anomalous videos (``B' = B`` for balanced
                batches).

        Heads whose :class:`TrainSampling` is masked (``temporal`` ``"uniform"`` or
        ``"full"``) also take keyword arguments ``normal_mask`` ``[B, T]`` and
        ``abnormal_mask`` ``[B', T]`` (bool, True on real snippets, False on padding).

        Returns:
            The scalar loss to minimise and its named parts (floats) for logging.
        """
        raise NotImplementedError

    def snippet_scores(self, features: torch.Tensor) -> torch.Tensor:
        """Anomaly scores ``[B, T]`` in ``[0, 1]`` of features ``[B, N, T, D]``."""
        raise NotImplementedError

    @property
    def causal_context(self) -> int | None:
        """Snippets ``c`` such that the score of snippet ``t`` depends only on snippets
        ``t - c + 1 .. t`` (a causal head: its scores can be final as soon as a clip ends,
        see ``vadpipe score --stream``); ``None`` when later snippets change it (temporal
        convolutions, attention or pooling over the whole video)."""
        return None


Temporal = Literal["segments", "uniform", "full"]
Instances = Literal["video", "crop"]
Batching = Literal["balanced", "random"]


@dataclass(frozen=True)
class TrainSampling:
    """How the training loop turns a head's training videos into batches.

    Attributes:
        temporal: what a training bag holds along time —
            ``"segments"``: the video resampled to ``length`` segments (RTFM's
            ``process_feat``: means of snippet ranges; every bag has ``length`` rows, no mask);
            ``"uniform"``: ``length`` snippets picked by integer ``linspace`` indices
            (Wu et al.'s ``uniform_extract``) when the video is longer, the video as it is
            when shorter; bags are zero-padded to the longest in the batch and come with a
            length mask;
            ``"full"``: every snippet (``length`` ignored), zero-padded with a mask.
        length: segments (``"segments"``) or the most snippets (``"uniform"``).
        instances: ``"video"``: a bag holds all crops ``[N, T, D]``; ``"crop"``: each crop
            of each video is its own instance ``[1, T, D]`` (Wu et al.'s lists: one line per crop).
        batching: ``"balanced"``: ``batch_size`` normal + ``batch_size`` anomalous videos
            (:class:`~vadpipe.heads.data.BalancedBatchSampler`); ``"random"``: ``batch_size``
            instances drawn from one shuffled pass over all of them per epoch, the last
            batch of an epoch smaller (``DataLoader(shuffle=True)``; see
            :class:`~vadpipe.heads.data.EpochBatchSampler`).
        batch_size: per class (``"balanced"``) or in all (``"random"``).
        steps: optimisation steps of the head's schedule, or ``None`` when it is set in
            epochs.
        epochs: epochs of the schedule (``"random"`` batching): steps = ``epochs *
            ceil(instances / batch_size)``.
    """

    temporal: Temporal = "segments"
    length: int = 32
    instances: Instances = "video"
    batching: Batching = "balanced"
    batch_size: int = 32
    steps: int | None = 1000
    epochs: int | None = None

    @property
    def masked(self) -> bool:
        """Bags of unequal length, zero-padded: the loss takes ``normal_mask``/``abnormal_mask``."""
        return self.temporal != "segments"

    def steps_for(self, n_instances: int) -> int:
        """Schedule length for a training set of ``n_instances`` (videos or crops)."""
        if self.epochs is None:
            return int(self.steps or 1000)
        return int(self.epochs) * max(1, math.ceil(n_instances / self.batch_size))


def config_setting(config: Any, names: tuple[str, ...], default: Any) -> Any:
    """The first of ``names`` that ``config`` sets (not ``None``), else ``default``. Heads keep
    their official option names (RTFM ``segments``/``max_steps``, MGFN ``seg_length``/``max_epoch``)."""
    return next((getattr(config, n) for n in names if getattr(config, n, None) is not None), default)


#: Ranges of head settings, by field name, for every head config that has such a field
#: (``(low, high, low_open, high_open)``, ``None`` for no bound). Tuple settings apply the
#: range to each element. A head's own ``__post_init__`` checks the rest.
_AT_LEAST_ONE = (1, None, False, False)
_NON_NEGATIVE = (0, None, False, False)
_POSITIVE = (0, None, True, False)
_PROBABILITY = (0, 1, False, True)  # dropout rates: [0, 1)
SETTING_RANGES: dict[str, tuple[float | None, float | None, bool, bool]] = {
    **dict.fromkeys(("batch_size", "max_steps", "max_epoch", "epochs", "segments", "seg_length", "feature_dim",
                     "in_dim", "k", "heads", "hidden_dim", "kernel_size", "k_divisor", "dim_head", "ff_repe",
                     "ncrops", "n_crops", "mf_iterations", "attn_dim", "embed_dim", "segments_k",
                     "dmil_topk_divisor", "local_aggr_kernel", "hidden_dims", "fc_dims", "mlp_dims", "dims",
                     "depths", "windows", "localities"), _AT_LEAST_ONE),
    # lr 0 is allowed (a frozen run: the tests' baseline); a negative one is not
    **dict.fromkeys(("lr", "weight_decay", "margin", "weight_l2", "alpha", "alpha1", "alpha2", "lambda1",
                     "lambda2", "lambda_smooth", "lambda_sparse", "lambda_center", "lambda_cs", "mc_weight",
                     "con_inter_weight", "sparsity_weight", "smooth_weight", "base_loss_weight", "halting_tol",
                     "mag_ratio", "unary_hidden"), _NON_NEGATIVE),
    **dict.fromkeys(("sigma", "eps", "adagrad_eps", "con_norm_p"), _POSITIVE),
    **dict.fromkeys(("dropout", "ff_dropout", "attention_dropout", "dropout_rate"), _PROBABILITY),
}


def check_setting_names(spec: "HeadSpec", overrides: dict[str, Any]) -> dict[str, dataclasses.Field]:
    """The fields of ``spec.config_cls`` by name; :class:`~vadpipe.errors.ConfigError` naming
    any of ``overrides`` that is not one of them (and the known ones)."""
    from vadpipe.errors import ConfigError

    fields = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ConfigError(f"head {spec.name!r} has no setting(s) {sorted(unknown)}; known: {sorted(fields)}")
    return fields


def validate_settings(spec: "HeadSpec", overrides: dict[str, Any]) -> dict[str, Any]:
    """Check head settings (``--set KEY=VALUE``, presets) against the field types of
    ``spec.config_cls`` (int, float, bool, str, ``Literal``, tuples, ``Optional``, dicts) and
    :data:`SETTING_RANGES`; return them converted (an int where a float is expected, an
    integral float for an int, ``"true"``/``"false"`` for a bool, a list for a tuple).

    A head with ``base_head``/``base_overrides`` settings (MCR) has the base overrides
    checked against the base head's config.

    Raises:
        ConfigError: an unknown setting (naming the known ones), or a value of another type
            or out of range: ``"<head> setting KEY=VALUE: expected <type/range>"``.
    """
    from vadpipe.errors import ConfigError

    fields = check_setting_names(spec, overrides)
    hints = typing.get_type_hints(spec.config_cls)
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        try:
            out[key] = _coerce(value, hints.get(key, Any), SETTING_RANGES.get(key))
        except _Mismatch as m:
            default = fields[key].default
            shown = "" if default is dataclasses.MISSING else f" (default {_show(default)})"
            raise ConfigError(f"{spec.name} setting {key}={_show(value)}: expected {m.expected}{shown}") from None
    if "base_overrides" in out and "base_head" in fields:
        base = out.get("base_head", fields["base_head"].default)
        out["base_overrides"] = validate_settings(get_head(str(base)), dict(out["base_overrides"]))
    return out


def make_config(spec: "HeadSpec", values: dict[str, Any]) -> Any:
    """``spec.config_cls(**values)``; a ``TypeError``/``ValueError`` of the config's own checks
    becomes a :class:`~vadpipe.errors.ConfigError` naming the head."""
    from vadpipe.errors import ConfigError

    try:
        return spec.config_cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {spec.name} settings: {e}") from None


class _Mismatch(Exception):
    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


_FLOAT32_MAX = 3.4028234663852886e38
_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _coerce(value: Any, tp: Any, bounds: tuple | None) -> Any:
    """``value`` as type ``tp`` (within ``bounds``); raises :class:`_Mismatch` saying what was expected."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in ("none", "null"))):
            return None
        if len(options) == 1:
            try:
                return _coerce(value, options[0], bounds)
            except _Mismatch as m:
                raise _Mismatch(f"{m.expected} or null") from None
        for option in options:
            try:
                return _coerce(value, option, bounds)
            except _Mismatch:
                continue
        raise _Mismatch(" or ".join(_describe(o) for o in options))
    if origin is typing.Literal:
        if value in args:
            return value
        raise _Mismatch("one of " + ", ".join(repr(a) for a in args))
    if origin is tuple or tp is tuple:
        if not isinstance(value, (tuple, list)) or (args and args[-1] is not Ellipsis and len(value) != len(args)):
            raise _Mismatch(_describe(tp, bounds))
        if not args:
            return tuple(value)
        elem = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        try:
            return tuple(_coerce(v, t, bounds) for v, t in zip(value, elem))
        except _Mismatch:
            raise _Mismatch(_describe(tp, bounds)) from None
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch('a JSON object, e.g. {"lr": 0.001}')
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        raise _Mismatch("true or false")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise _Mismatch(_describe(int, bounds))
        return _in_range(value, int, bounds)
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise _Mismatch(_describe(float, bounds))
        return _in_range(float(value), float, bounds)
    if tp is str:
        if not isinstance(value, str):
            raise _Mismatch("a string")
        return value
    return value  # a type this check does not know: the config's own checks apply


def _in_range(value: float, tp: type, bounds: tuple | None) -> Any:
    if tp is float and not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
        raise _Mismatch(_describe(tp, bounds) + " (finite, at most 3.4e38: float32)")
    if bounds is not None:
        low, high, low_open, high_open = bounds
        if (low is not None and (value < low or (low_open and value == low))) or \
                (high is not None and (value > high or (high_open and value == high))):
            raise _Mismatch(_describe(tp, bounds))
    return value


def _describe(tp: Any, bounds: tuple | None = None, plural: bool = False) -> str:
    """``"an integer >= 1"``, ``"a number in [0, 1)"``, ``"a list of 2 integers >= 1"``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is tuple or tp is tuple:
        if not args:
            return "a list"
        count = "" if args[-1] is Ellipsis else f"{len(args)} "
        return f"a list of {count}{_describe(args[0], bounds, plural=True)}"
    name = {int: "integer", float: "number", bool: "true or false", str: "string"}.get(tp, getattr(tp, "__name__", str(tp)))
    if tp is not bool:
        name = f"{name}s" if plural else f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
    if bounds is None:
        return name
    low, high, low_open, high_open = bounds
    if low is not None and high is not None:
        return f"{name} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{name} {'>' if low_open else '>='} {low:g}"
    return f"{name} {'<' if high_open else '<='} {high:g}"


def default_sampling(config: Any) -> TrainSampling:
    """RTFM-style sampling from a head config's official option names: ``segments`` /
    ``seg_length`` (32), ``batch_size`` per class (32), ``max_steps`` / ``max_epoch`` (1000)."""
    return TrainSampling(
        temporal="segments",
        length=int(config_setting(config, ("segments", "seg_length"), 32)),
        batch_size=int(config_setting(config, ("batch_size",), 32)),
        steps=int(config_setting(config, ("max_steps", "max_epoch"), 1000)),
    )


def schedule_overrides(spec: "HeadSpec", overrides: dict[str, Any], n_instances: int,
                       steps: int | None = None) -> tuple[int, dict[str, Any]]:
    """The step count of ``spec``'s schedule on ``n_instances`` training instances (``steps``
    when given) and the overrides that record it: a schedule in epochs (``max_steps=None``)
    gets ``max_steps`` set, so that step-based settings (e.g. a cosine decay) see its length."""
    defaults = make_config(spec, overrides)
    n_steps = int(steps or spec.sampling(defaults).steps_for(n_instances))
    out = dict(overrides)
    if getattr(defaults, "max_steps", 0) is None:
        out["max_steps"] = n_steps
    return n_steps, out


@dataclass(frozen=True)
class HeadSpec:
    """A registered head.

    Attributes:
        name: registry key (``--head``).
        config_cls: dataclass of the head's hyper-parameters (defaults = official code).
        build: ``build(config) -> AnomalyHead``.
        optimizer: ``optimizer(params, config) -> torch.optim.Optimizer``, the official choice.
        description: one line for ``--help`` listings.
        sampling: ``sampling(config) -> TrainSampling``, how its training batches are built
            (default :func:`default_sampling`: 32 resampled segments, balanced batches).
        presets: named paper settings (``vadpipe train --preset NAME``): config overrides.
    """

    name: str
    config_cls: type
    build: Callable[[Any], AnomalyHead] = field(compare=False)
    optimizer: Callable[[Any, Any], torch.optim.Optimizer] = field(compare=False)
    description: str = ""
    sampling: Callable[[Any], TrainSampling] = field(default=default_sampling, compare=False)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)

    def preset(self, name: str | None) -> dict[str, Any]:
        """The settings of preset ``name`` (a copy; ``{}`` for ``None``).

        Raises:
            ConfigError: the head has no such preset (the message lists its presets).
        """
        from vadpipe.errors import ConfigError

        if name is None:
            return {}
        if name not in self.presets:
            known = ", ".join(sorted(self.presets)) or "none"
            raise ConfigError(f"head {self.name!r} has no preset {name!r} (its presets: {known})")
        return dict(self.presets[name])


#: Every head; the modules of :mod:`vadpipe.heads` register theirs when imported (and modules
#: named in ``$VADPIPE_PLUGINS`` may add more).
HEADS: Registry[HeadSpec] = Registry("head", package="vadpipe.heads", plugins_env="VADPIPE_PLUGINS")


def register_head(spec: HeadSpec) -> HeadSpec:
    """Add ``spec`` to :data:`HEADS` (replacing one of the same name)."""
    return HEADS.register(spec.name, spec)


def get_head(name: str) -> HeadSpec:
    """Look a head up by name; raises ``ConfigError`` naming the registered ones."""
    return HEADS.get(name)


def list_heads() -> list[str]:
    """Names of the registered heads, sorted."""
    return HEADS.names()


def refinement_heads() -> list[str]:
    """Heads that wrap another head (a ``base_head`` setting), e.g. MCR: ``vadpipe train --refine``."""
    return [n for n in HEADS.names() if "base_head" in {f.name for f in dataclasses.fields(HEADS.get(n).config_cls)}]
