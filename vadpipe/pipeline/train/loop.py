"""Training anomaly heads on stage-one features, with honest model selection.

Protocol (the default): the best checkpoint is chosen on a **validation split held out
from the training videos** (``split_train_val`` when no validation CSV is given). Those
videos carry only video-level labels, so the validation metric is the video-level
ROC-AUC of each video's maximum snippet score. Choosing the checkpoint on the test set,
as the published RTFM/MGFN code does, is available only as ``selection="test"`` and is
labelled as optimistic in the checkpoint and in every report.

Everything is seeded: the same data, settings and seed give the same batches, the same
weights on CPU, and a resumed run continues exactly where the checkpoint left off (the
batch sampler is replayed to the saved step).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vadpipe import __version__
from vadpipe.errors import ConfigError
from vadpipe.heads.base import (
    AnomalyHead,
    HeadSpec,
    TrainSampling,
    check_setting_names,
    config_setting,
    get_head,
    make_config,
    schedule_overrides,
    validate_settings,
)
from vadpipe.heads.data import (
    BalancedBatchSampler,
    EpochBatchSampler,
    FeatureDataset,
    check_dataset_features,
    training_batch,
    training_instances,
)
from vadpipe.manifests.atomic import atomic_open, ensure_writable_dir, ensure_writable_file
from vadpipe.manifests.datasets import DatasetRow, check_labels
from vadpipe.pipeline.train.metrics import roc_auc

log = logging.getLogger(__name__)

SELECTIONS = ("val", "test", "last")
TRAIN_SPLITS = ("holdout", "full")
#: ``vadpipe train --protocol``: the training split each protocol trains on.
PROTOCOLS = {"holdout": "holdout", "paper": "full"}
LAST_SELECTION = (
    "last step, no held-out videos (the papers' protocol: trained on the full training split); "
    "the threshold comes from the training videos"
)
TEST_SELECTION_WARNING = (
    "MODEL SELECTED ON THE TEST SET (as the published code does): the reported test metrics "
    "are optimistic and not comparable with a held-out protocol"
)
#: Config fields a head may use for its input feature size; set from the data.
_DIM_FIELDS = ("feature_dim", "in_dim")


@dataclass
class TrainConfig:
    """Settings of a training run (the head's own hyper-parameters live in its config).

    Attributes:
        head: registered head name.
        overrides: head-config fields to change (e.g. ``{"lr": 1e-4}``).
        steps: optimisation steps; ``None`` takes the head config's ``max_steps`` (MGFN:
            ``max_epoch``, one batch each as in its ``main.py``; 1,000 if it has neither).
        eval_every: steps between validation passes (and checkpoint candidates).
        eval_start: no validation pass up to this step but the last (RTFM's code tests only
            after step 200).
        patience: stop after this many validation passes without improvement (``None``:
            never stop early).
        seed: seeds python, numpy, torch and the batch sampler.
        device: ``auto``, ``cpu``, ``cuda``, ...
        selection: ``"val"`` (default), ``"test"`` (the published code's optimistic choice) or
            ``"last"`` (keep the last step; used when there are no validation videos).
        cache: keep resampled training features in memory (fast; needs the RAM).
        train_split: ``"holdout"`` (default, for users' own data: validation videos are held
            out of the training split) or ``"full"`` (the papers' protocol: every training
            video is trained on, nothing is held out, the last step is kept). Recorded in the
            checkpoint's ``protocol``; the caller decides which rows go where.
    """

    head: str = "rtfm"
    overrides: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    eval_every: int = 50
    eval_start: int = 0
    patience: int | None = None
    seed: int = 0
    device: str = "auto"
    selection: str = "val"
    cache: bool = False
    train_split: str = "holdout"

    def __post_init__(self) -> None:
        if self.train_split not in TRAIN_SPLITS:
            raise ConfigError(f"train_split must be one of {TRAIN_SPLITS}, got {self.train_split!r}")
        if self.selection not in SELECTIONS:
            raise ConfigError(f"selection must be one of {SELECTIONS}, got {self.selection!r}")
        if self.eval_every < 1:
            raise ConfigError(f"eval_every must be >= 1, got {self.eval_every}")
        if self.eval_start < 0:
            raise ConfigError(f"eval_start must be >= 0, got {self.eval_start}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")


@dataclass
class TrainResult:
    """Outcome of :func:`train`: where the checkpoints are and how validation went."""

    best_path: Path
    last_path: Path
    best_step: int
    best_metric: float
    history: list[dict[str, float]]
    steps_per_second: float
    stopped_early: bool
    #: videos trained on / held out for validation
    train_videos: int = 0
    val_videos: int = 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_head(spec: HeadSpec, overrides: dict[str, Any], feature_dim: int | None = None) -> tuple[AnomalyHead, Any]:
    """The head and its config, with ``overrides`` and (when the config has such a field)
    the input feature size taken from the data."""
    fields = check_setting_names(spec, overrides)
    values = dict(overrides)
    if feature_dim is not None:
        for name in _DIM_FIELDS:
            if name in fields and name not in values:
                values[name] = feature_dim
    config = make_config(spec, values)
    return spec.build(config), config


def feature_spec(dataset: FeatureDataset) -> dict[str, int]:
    """``crops``, ``snippets`` and ``dim`` of the first video's features ``[N, T, D]``."""
    n, t, d = dataset.features(0).shape
    return {"crops": int(n), "dim": int(d)}


@torch.no_grad()
def video_scores(head: AnomalyHead, dataset: FeatureDataset, device: torch.device) -> list[np.ndarray]:
    """Snippet scores ``[T]`` of every video of an eval-mode dataset."""
    head.eval()
    out = []
    for i in range(len(dataset)):
        feats = torch.from_numpy(np.ascontiguousarray(dataset.features(i))).to(device)[None]  # [1, N, T, D]
        out.append(head.snippet_scores(feats)[0].float().cpu().numpy())
    return out


def video_level_validation(head: AnomalyHead, dataset: FeatureDataset, device: torch.device) -> tuple[float, float]:
    """ROC-AUC of each video's maximum snippet score against its video label, and the
    score threshold that best separates them (Youden's J; see
    :func:`vadpipe.pipeline.train.metrics.validation_threshold`)."""
    from vadpipe.pipeline.train.metrics import validation_threshold

    scores = np.array([s.max() for s in video_scores(head, dataset, device)])
    labels = np.array(dataset.labels)
    if labels.min() == labels.max():
        raise ConfigError("the validation set needs both normal and anomalous videos")
    if not np.isfinite(scores).all():
        raise _diverged(None, head.config, "the head's scores are NaN or Inf")
    return float(roc_auc(labels, scores)), float(validation_threshold(scores, labels))


def _diverged(step: int | None, head_cfg: Any, what: str) -> ConfigError:
    """The error of a run whose weights blew up (the features were checked: finite)."""
    lr = getattr(head_cfg, "lr", None)
    hint = (f"lower the learning rate (lr={lr:g}), e.g. --set lr={lr / 10:g}" if isinstance(lr, (int, float)) and lr > 0
            else "lower the learning rate (--set lr=...)")
    at = f" at step {step}" if step is not None else ""
    return ConfigError(f"training diverged{at}: {what} (the features are finite); {hint}")


@torch.no_grad()
def _blew_up(head: AnomalyHead, features: torch.Tensor) -> bool:
    """Whether ``head``'s weights, or its scores of (finite) ``features``, are NaN or Inf."""
    if not all(bool(torch.isfinite(p).all()) for p in head.parameters()):
        return True
    try:
        return not bool(torch.isfinite(head.snippet_scores(features)).all())
    except RuntimeError:
        return False


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` atomically (temp file + rename)."""
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)


def load_checkpoint(path: str | Path, *, resume: bool = False) -> dict[str, Any]:
    """Load a vadpipe checkpoint safely (``weights_only=True``) and check it fits its head
    (:func:`vadpipe.heads.checkpoints.read_vadpipe_checkpoint`); ``resume`` also requires
    the training state.

    Raises:
        CheckpointError: anything that is not a loadable vadpipe checkpoint, in one line.
    """
    from vadpipe.heads.checkpoints import read_vadpipe_checkpoint

    return read_vadpipe_checkpoint(path, resume=resume)


def train(
    train_rows: list[DatasetRow],
    val_rows: list[DatasetRow],
    out_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    root: str | Path | None = None,
    resume: str | Path | None = None,
    test_metric: Callable[[AnomalyHead], float] | None = None,
    feature_meta: dict[str, Any] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``config.head`` and keep the best checkpoint.

    Args:
        train_rows, val_rows: labelled videos (see :mod:`vadpipe.manifests.datasets`).
        out_dir: receives ``last.pt`` and ``best.pt``.
        config: training settings.
        root: folder relative feature paths are resolved against.
        resume: a ``last.pt`` to continue from (same data and settings).
        test_metric: ``head -> metric`` on the test set; required for, and only used by,
            ``selection="test"``.
        feature_meta: what made the features (backbone, clip length, ...), stored in the
            checkpoint so that scoring can refuse mismatched features.
        progress: show a progress bar with the losses.

    Returns:
        A :class:`TrainResult`.
    """
    if config.selection == "test" and test_metric is None:
        raise ConfigError("selection='test' needs a test set with ground truth")
    if config.selection == "test":
        log.warning(TEST_SELECTION_WARNING)
    from vadpipe.pipeline.device import resolve_device

    spec = get_head(config.head)
    settings = validate_settings(spec, config.overrides)  # types and ranges, before any work
    defaults = make_config(spec, settings)
    out = ensure_writable_dir(out_dir)
    ckpt = load_checkpoint(resume, resume=True) if resume is not None else None
    check_labels(train_rows, "training set")
    if val_rows:
        check_labels(val_rows, "validation set")
    check_dataset_features(list(train_rows) + list(val_rows), root, what="training set (with its validation videos)")
    seed_everything(config.seed)
    device = resolve_device(config.device)
    sampling = spec.sampling(defaults)
    l2 = bool(config_setting(defaults, ("l2_normalize",), False))
    train_set = FeatureDataset(train_rows, root, mode="train", n_segments=sampling.length, cache=config.cache,
                               l2_normalize=l2, temporal=sampling.temporal)
    val_set = FeatureDataset(val_rows, root, mode="eval", l2_normalize=l2)
    selection = config.selection if val_rows or config.selection == "test" else "last"
    fspec = feature_spec(train_set)
    instances = training_instances(train_set, sampling, fspec["crops"])
    steps, overrides = schedule_overrides(spec, settings, len(instances), config.steps)
    head, head_cfg = build_head(spec, overrides, fspec["dim"])
    head.to(device)
    optimizer = spec.optimizer(head.parameters(), head_cfg)
    if sampling.batching == "balanced":
        sampler = BalancedBatchSampler(train_set.labels, sampling.batch_size, seed=config.seed, num_batches=steps)
    else:
        sampler = EpochBatchSampler(len(instances), sampling.batch_size, seed=config.seed, num_batches=steps)
    schedule = schedule_line(spec.name, sampling, len(instances), steps, len(train_rows))
    log.info(schedule)

    history: list[dict[str, float]] = []
    step, best_metric, best_step, bad_evals = 0, -math.inf, 0, 0
    threshold: float | None = None
    if ckpt is not None:
        if ckpt["head"] != spec.name or ckpt["head_config"] != _plain(head_cfg):
            raise ConfigError(f"{resume} was trained with another head or head settings; start a new run")
        head.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, history = int(ckpt["step"]), list(ckpt["history"])
        best_metric, best_step, bad_evals = float(ckpt["best_metric"]), int(ckpt["best_step"]), int(ckpt["bad_evals"])
        threshold = ckpt.get("threshold")  # the best checkpoint's, carried by last.pt
        torch.set_rng_state(ckpt["torch_rng"])

    def payload(kind: str) -> dict[str, Any]:
        return {
            "format": "vadpipe-head/1", "kind": kind, "vadpipe_version": __version__,
            "head": spec.name, "head_config": _plain(head_cfg), "train_config": _plain(config),
            "feature_spec": {**fspec, "segments": sampling.length, **(feature_meta or {})},
            "sampling": asdict(sampling),
            "protocol": {"train_split": config.train_split, "train_videos": len(train_rows),
                         "val_videos": len(val_rows), "selection": selection},
            "selection": {"val": "val", "last": LAST_SELECTION, "test": TEST_SELECTION_WARNING}[selection],
            "threshold": threshold,
            "state_dict": {k: v.detach().cpu() for k, v in head.state_dict().items()},
            "optimizer": optimizer.state_dict(), "step": step, "history": history,
            "best_metric": best_metric, "best_step": best_step, "bad_evals": bad_evals,
            "torch_rng": torch.get_rng_state(),
        }

    from tqdm.auto import tqdm

    batches = iter(sampler)
    for _ in range(step):  # replay the sampler so a resumed run sees the same batches
        next(batches)
    bar = tqdm(total=steps, initial=step, unit="step", disable=not progress, dynamic_ncols=True)
    if progress:
        bar.write(schedule)
    t0, start_step, stopped = time.perf_counter(), step, False
    for indices in batches:
        head.train()
        normal, abnormal, masks = training_batch(train_set, [instances[i] for i in indices], sampling)
        kwargs = {k: m.to(device) for k, m in masks.items()}
        try:
            loss, parts = head.loss(normal.to(device), abnormal.to(device), **kwargs)
        except RuntimeError:  # e.g. BCE refusing NaN scores: a user error when the weights diverged
            if _blew_up(head, normal.to(device)):
                raise _diverged(step + 1, head_cfg, "the head's weights or scores are NaN or Inf") from None
            raise
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise _diverged(step, head_cfg, f"the loss is {loss_value}")
        bar.set_postfix({k: f"{v:.4g}" for k, v in {"loss": loss_value, **parts}.items()})
        if (step % config.eval_every == 0 and step > config.eval_start) or step == steps:
            if selection == "last":  # the paper protocol: no held-out videos, the last step is kept
                metric, val_threshold = math.nan, threshold
                if step == steps:  # a threshold for `vadpipe score`, from the training videos (optimistic)
                    metric, val_threshold = video_level_validation(head, _eval_view(train_set), device)
                history.append({"step": step, "loss": loss_value, **parts})
            else:
                # test-set selection on the full training split has no validation videos: no threshold
                val_auc, val_threshold = (video_level_validation(head, val_set, device) if len(val_set)
                                          else (math.nan, None))
                metric = test_metric(head) if selection == "test" else val_auc
                history.append({"step": step, "loss": loss_value, **parts, f"{selection}_auc": metric})
            if selection == "last":
                best_metric, best_step, threshold = metric, step, val_threshold
                save_checkpoint(out / "best.pt", payload("best"))
            elif metric > best_metric:
                best_metric, best_step, bad_evals = metric, step, 0
                threshold = val_threshold
                save_checkpoint(out / "best.pt", payload("best"))
            else:
                bad_evals += 1
            save_checkpoint(out / "last.pt", payload("last"))
            if config.patience is not None and bad_evals >= config.patience:
                stopped = True
                break
    bar.close()
    elapsed = time.perf_counter() - t0
    return TrainResult(
        best_path=out / "best.pt", last_path=out / "last.pt", best_step=best_step, best_metric=best_metric,
        history=history, steps_per_second=(step - start_step) / elapsed if elapsed > 0 else float("nan"),
        stopped_early=stopped, train_videos=len(train_rows), val_videos=len(val_rows),
    )



def schedule_line(head: str, sampling: TrainSampling, n_instances: int, steps: int, n_videos: int) -> str:
    """One line saying what a training step is and how many there are."""
    unit = "crop instances" if sampling.instances == "crop" else "videos"
    if sampling.batching == "random":
        per_epoch = max(1, math.ceil(n_instances / sampling.batch_size))
        how = (f"random batches of {sampling.batch_size} {unit} ({n_instances} {unit} of {n_videos} videos, "
               f"{per_epoch} steps/epoch"
               + (f", {sampling.epochs} epochs" if sampling.epochs is not None else "") + ")")
    else:
        how = f"balanced batches of {sampling.batch_size} normal + {sampling.batch_size} anomalous videos"
    bag = {"segments": f"{sampling.length} resampled segments",
           "uniform": f"up to {sampling.length} uniformly sampled snippets, zero-padded with a mask",
           "full": "every snippet, zero-padded with a mask"}[sampling.temporal]
    return f"{head}: {steps} steps; {how}; bags of {bag}"


def _eval_view(dataset: FeatureDataset) -> FeatureDataset:
    """The same videos at full length (eval mode)."""
    return FeatureDataset(dataset.rows, dataset.root, mode="eval", l2_normalize=dataset.l2_normalize)


def _plain(obj: Any) -> Any:
    """Dataclasses/tuples → plain dicts/lists (``weights_only``-loadable, comparable)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _plain(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


#: What the official RTFM/MGFN checkpoints were trained on (their README's feature sets).
OFFICIAL_FEATURE_SPECS: dict[str, dict[str, Any]] = {
    # RTFM's published I3D features: the Caffe2 i3d_baseline ResNet-50 with Gowtham's recipe (--preset rtfm-i3d-r50-10crop)
    "rtfm": {"backbone": "i3d-r50-caffe2", "dim": 2048, "crops": 10, "clip_len": 16},
    "mgfn": {"backbone": "i3d-r50-caffe2", "dim": 2048, "crops": 10, "clip_len": 16},
    "sultani": {"backbone": "c3d", "dim": 4096, "crops": 1, "clip_len": 16},  # fc6
}
OFFICIAL_SELECTION = "official checkpoint: selected on the test set by its authors (optimistic)"


def import_official_head(head: str, path: str | Path, out: str | Path, overrides: dict[str, Any] | None = None) -> Path:
    """Load an official state dict of ``head`` strictly and save it as a vadpipe checkpoint.

    ``overrides`` are the head settings the file was trained with (defaults: the official
    code's). The checkpoint records the feature set the authors trained on, so that
    ``vadpipe eval`` refuses features of another size.
    """
    from vadpipe.heads.checkpoints import load_official_state_dict

    out = ensure_writable_file(out)
    spec = get_head(head)
    model, cfg = build_head(spec, overrides or {})
    load_official_state_dict(path, head, model)
    payload = {
        "format": "vadpipe-head/1", "kind": "imported", "vadpipe_version": __version__, "head": spec.name,
        "head_config": _plain(cfg), "train_config": None, "source": str(path),
        "feature_spec": {**OFFICIAL_FEATURE_SPECS.get(head, {}), "segments": 32},
        "selection": OFFICIAL_SELECTION, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "step": 0, "history": [],
    }
    save_checkpoint(out, payload)
    return out
