"""``vadpipe train-backbone resnet50-trn``: train SA-CRF's relation-aware extractor on raw videos.

The network (:class:`TRNClassifier`) is the extractor :class:`~vadpipe.extractors.resnet_trn.ResNetTRN`
(ResNet-50 trunk, optional inner-product attention, 14 max-pooled patch nodes, TRN
multi-scale relation module per node) followed by dropout (before the relation module, where
TRN puts it: after the trunk, before its ``new_fc``/relation), the mean over the 14 nodes and a
linear classifier. Input ``[B, 3, K, S, S]``, output logits ``[B, n_classes]``; the loss is the
video-level cross-entropy.

What the SA-CRF paper says (Sec. 4.2) and what is done here:

* "TRN [11] with a pretrained ResNet-50 model [43]": the trunk starts from torchvision's
  ImageNet ResNet-50 (``vadpipe weights import resnet50-trn resnet50-11ad3fa6.pth``).
* SGD, momentum 0.9, weight decay 0.0005, base learning rate 0.0001: as stated. Parameter
  groups follow TSN/TRN's ``get_optim_policies``: weights get the decay; biases twice the
  learning rate and no decay; BatchNorm scale/shift no decay. Gradient norm clipped at 20
  (TRN's ``--clip-gradient`` default; the paper is silent).
* "the warming up learning rate in [44] is used for the first 10 epochs and linearly
  increases to the base learning rate" (UCF-Crime): per iteration,
  ``lr = base * min(1, (step + 1) / (warmup_epochs * steps_per_epoch))`` (Goyal et al.'s
  gradual warm-up), then constant (the paper names no decay; TRN's step decay is not used).
  ShanghaiTech: the paper mentions no warm-up, so the ``sh`` preset has none.
* dropout 0.8; "partial batch normalization" (TSN): every BatchNorm layer of the trunk but
  the first is kept in eval mode (running statistics frozen) and its scale/shift frozen; the
  first one trains normally (TSN ``TSN.train`` / ``partialBN``).
* 100 / 225 epochs and batch 18 / 16 for UCF-Crime / ShanghaiTech: the ``ucf`` / ``sh`` presets.
* Classes: the paper trains the extractor with video-level labels but does not say which
  classes. With a ``class`` column the classifier has UCF-Crime's 13 anomaly classes plus
  ``Normal`` (14); without one, normal vs anomalous (2; ShanghaiTech has no classes).
* Segments: ``K`` frames per video by TRN's segment sampling (:mod:`vadpipe.pipeline.trn.data`).
  The default ``K = 16`` is the extractor's clip length, because the relation MLPs (and the
  attention) are sized by ``K`` and ``vadpipe extract`` feeds 16-frame clips; the paper, whose
  ``D`` has "K = the length of the video", gives no number.

Reproducibility: python, numpy and torch are seeded; each item's sampling is a function of
``(seed, epoch, video)``, the batch order of ``(seed, epoch)``; dropout and TRN's random
subsets use torch's global RNG, whose state ``last.pt`` stores with the model, optimiser,
grad scaler, history and failed videos. ``--resume last.pt`` continues after the last finished
epoch and ends with the same weights as an uninterrupted run (same device and precision).
Checkpoints: ``last.pt`` after every epoch, ``best.pt`` at the best validation accuracy (ties:
lower loss; without ``--val``, the last epoch), both written atomically, loadable with
``torch.load(weights_only=True)`` and carrying the configuration and metric history.

Failed videos: a video stage one's reader cannot decode (corrupt, empty, not a video) fails
its own row — it is skipped from then on, the others train — and the list is printed at the
end and written to ``failed.csv`` (``video,split,error``).
"""

from __future__ import annotations

import csv
import io
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from vadpipe import __version__
from vadpipe.errors import CheckpointError, ConfigError
from vadpipe.extractors.resnet_trn import RELATION_TYPES, TRAIN_CHECKPOINT_FORMAT, TRUNKS, ResNetTRN
from vadpipe.manifests.atomic import atomic_open, atomic_write_text, ensure_writable_dir
from vadpipe.pipeline.trn.data import EpochBatches, VideoRow, VideoSegments, class_names, collate_items

__all__ = [
    "PRECISIONS",
    "PRESETS",
    "TRNClassifier",
    "TrainBackboneConfig",
    "TrainBackboneResult",
    "build_classifier",
    "learning_rate",
    "load_train_checkpoint",
    "optimizer_groups",
    "resolve_precision",
    "train_backbone",
]

log = logging.getLogger(__name__)

#: Schedules of the paper (Sec. 4.2) by dataset; flags override them.
PRESETS: dict[str, dict[str, Any]] = {
    "ucf": {"epochs": 100, "batch_size": 18, "warmup_epochs": 10},
    "sh": {"epochs": 225, "batch_size": 16, "warmup_epochs": 0},
}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Settings a resumed run may change (they do not change the result).
RESUME_FREE = frozenset({"epochs", "workers", "log_every", "device", "decoder"})


@dataclass(frozen=True)
class TrainBackboneConfig:
    """Settings of ``vadpipe train-backbone`` (defaults: the paper's UCF-Crime recipe, Sec. 4.2).

    Attributes:
        relation: ``"inner-product"`` (SA-CRF's relation-aware network) or ``"trn"`` (plain TRN).
        segments: frames ``K`` sampled per video (the extractor's clip length, 16).
        size: crop side ``S`` in pixels (224; frames are resized to ``S * 256 // 224`` first).
        epochs, batch_size, warmup_epochs: the schedule (``PRESETS``).
        lr, momentum, weight_decay: SGD.
        dropout: before the relation module.
        partial_bn: TSN's partial BatchNorm.
        clip_grad: gradient-norm clip (``None``: off).
        out_dim, bottleneck, embed_dim: relation output, relation MLP width, attention embedding.
        trunk: a :data:`~vadpipe.extractors.resnet_trn.TRUNKS` name.
        pretrained: the ImageNet ResNet-50 file (``""``: the installed one; ``"none"``: random init).
        seed: seeds everything.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        precision: ``auto`` (bf16 on CUDA where supported, else fp16; fp32 on CPU), ``fp32``,
            ``bf16``, ``fp16`` (the last two CUDA only).
        workers: decoding processes (``None``: 1 on CPU, up to 8 on CUDA, like stage one).
        decoder: stage one's decoder backend.
        log_every: a progress line every this many steps (0: per epoch only).
    """

    relation: str = "inner-product"
    segments: int = 16
    size: int = 224
    epochs: int = 100
    batch_size: int = 18
    warmup_epochs: int = 10
    lr: float = 1e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    dropout: float = 0.8
    partial_bn: bool = True
    clip_grad: float | None = 20.0
    out_dim: int = 2048
    bottleneck: int = 256
    embed_dim: int = 256
    trunk: str = "resnet50"
    pretrained: str = ""
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    workers: int | None = None
    decoder: str = "auto"
    log_every: int = 20

    def __post_init__(self) -> None:
        if self.relation not in RELATION_TYPES:
            raise ConfigError(f"relation must be one of {', '.join(RELATION_TYPES)}, got {self.relation!r}")
        if self.trunk not in TRUNKS:
            raise ConfigError(f"unknown trunk {self.trunk!r} (known: {', '.join(sorted(TRUNKS))})")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("segments", "size", "batch_size", "out_dim", "bottleneck", "embed_dim"):
            if getattr(self, name) < (2 if name == "segments" else 1):
                raise ConfigError(f"{name} must be >= {2 if name == 'segments' else 1}, got {getattr(self, name)}")
        if self.epochs < 0 or self.warmup_epochs < 0:
            raise ConfigError("epochs and warmup_epochs must be >= 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")

    @classmethod
    def for_dataset(cls, dataset: str = "ucf", **overrides: Any) -> TrainBackboneConfig:
        """The paper's recipe for ``dataset`` (``ucf`` or ``sh``) with ``overrides`` (``None`` values ignored)."""
        if dataset not in PRESETS:
            raise ConfigError(f"dataset must be one of {', '.join(PRESETS)}, got {dataset!r}")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ConfigError(f"unknown train-backbone setting(s): {', '.join(sorted(unknown))}")
        return cls(**{**PRESETS[dataset], **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class TrainBackboneResult:
    """What :func:`train_backbone` did: checkpoint paths, per-epoch history, failed videos."""

    best_path: Path
    last_path: Path
    classes: list[str]
    history: list[dict[str, float]]
    failed: list[dict[str, str]]
    failed_path: Path | None
    videos_per_second: float
    best_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- model


class TRNClassifier(nn.Module):
    """:class:`ResNetTRN` + dropout + node mean + linear classifier: ``[B, 3, K, S, S]`` -> ``[B, n_classes]``.

    With ``partial_bn`` (TSN), :meth:`train` leaves every trunk BatchNorm but the first in
    eval mode, and those layers' scale/shift are frozen (``requires_grad=False``).
    """

    def __init__(self, backbone: ResNetTRN, num_classes: int, *, dropout: float = 0.8, partial_bn: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(backbone.out_dim, num_classes)
        with torch.random.fork_rng(devices=[]):  # TSN's init of the new layer, seeded apart from the rest
            torch.manual_seed(backbone.relation_seed + 1)
            nn.init.normal_(self.classifier.weight, 0, 0.001)
        nn.init.zeros_(self.classifier.bias)
        self.partial_bn = partial_bn
        if partial_bn:
            for bn in self.frozen_bn():
                bn.weight.requires_grad_(False)
                bn.bias.requires_grad_(False)

    def frozen_bn(self) -> list[nn.BatchNorm2d]:
        """The trunk's BatchNorm layers partial BN freezes: all but the first (none when off)."""
        bns = [m for m in self.backbone.trunk.modules() if isinstance(m, nn.BatchNorm2d)]
        return bns[1:] if self.partial_bn else []

    def train(self, mode: bool = True) -> TRNClassifier:
        super().train(mode)
        if mode:
            for bn in self.frozen_bn():
                bn.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = self.backbone.patch_features(x)  # [B, K, G, C]
        rel = self.backbone.relate(self.dropout(nodes))  # [B, G, D]
        return self.classifier(rel.mean(dim=1))

    def model_config(self) -> dict[str, Any]:
        """What :func:`build_classifier` needs to rebuild this network."""
        return {"backbone": self.backbone.config(), "num_classes": self.classifier.out_features,
                "dropout": self.dropout.p, "partial_bn": self.partial_bn}


def build_classifier(model_config: dict[str, Any]) -> TRNClassifier:
    """The (untrained) :class:`TRNClassifier` of a checkpoint's ``model_config``."""
    return TRNClassifier(ResNetTRN(**model_config["backbone"]), int(model_config["num_classes"]),
                         dropout=float(model_config["dropout"]), partial_bn=bool(model_config["partial_bn"]))


def _new_classifier(config: TrainBackboneConfig, num_classes: int) -> TRNClassifier:
    backbone = ResNetTRN(num_frames=config.segments, out_dim=config.out_dim, bottleneck=config.bottleneck,
                         relation_type=config.relation, trunk=config.trunk, input_size=config.size,
                         embed_dim=config.embed_dim, relation_seed=config.seed)
    return TRNClassifier(backbone, num_classes, dropout=config.dropout, partial_bn=config.partial_bn)


def optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """TSN/TRN's parameter groups (trainable parameters only): conv/linear weights
    (``lr_mult`` 1, decay), biases (``lr_mult`` 2, no decay), norm scale/shift (1, no decay)."""
    weights, biases, norms = [], [], []
    for m in model.modules():
        own = [p for p in m.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)):
            norms.extend(own)
        elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            if m.weight.requires_grad:
                weights.append(m.weight)
            if m.bias is not None and m.bias.requires_grad:
                biases.append(m.bias)
        else:
            raise ConfigError(f"no optimiser policy for parameters of {type(m).__name__}")
    return [
        {"params": weights, "lr_mult": 1.0, "weight_decay": weight_decay, "name": "weight"},
        {"params": biases, "lr_mult": 2.0, "weight_decay": 0.0, "name": "bias"},
        {"params": norms, "lr_mult": 1.0, "weight_decay": 0.0, "name": "norm"},
    ]


def learning_rate(step: int, config: TrainBackboneConfig, steps_per_epoch: int) -> float:
    """Base learning rate at (0-based) ``step``: linear warm-up over ``warmup_epochs``, then ``lr``."""
    warm = config.warmup_epochs * steps_per_epoch
    return config.lr * min(1.0, (step + 1) / warm) if warm > 0 else config.lr


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype (``None``: fp32). ``auto``: bf16 on CUDA where supported, else fp16; fp32 on CPU.

    Raises:
        ConfigError: bf16/fp16 asked for on a CPU.
    """
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ConfigError(f"--precision {precision} needs CUDA; on {device} training runs in fp32")
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


# ----------------------------------------------------------------------------- checkpoints


def _save(path: Path, payload: dict[str, Any]) -> None:
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)


def load_train_checkpoint(path: str | Path) -> dict[str, Any]:
    """A ``train-backbone`` checkpoint, read with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: not a readable checkpoint of this format.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - refused or garbled pickle
        raise CheckpointError(f"{p}: not a readable train-backbone checkpoint ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != TRAIN_CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not a train-backbone checkpoint ({TRAIN_CHECKPOINT_FORMAT})")
    return ckpt


def _write_failed(path: Path, failed: list[dict[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["video", "split", "error"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(failed)
    atomic_write_text(path, buf.getvalue())


# ----------------------------------------------------------------------------- training


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _loader(dataset: VideoSegments, indices: list[int], config: TrainBackboneConfig, *, epoch: int, shuffle: bool,
            workers: int, pin: bool) -> DataLoader:
    sampler = EpochBatches(indices, config.batch_size, epoch=epoch, seed=config.seed, shuffle=shuffle)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_items, num_workers=workers,
                      pin_memory=pin, generator=torch.Generator().manual_seed(config.seed + epoch))


def _evaluate(model: TRNClassifier, loader: DataLoader, device: torch.device, dtype: torch.dtype | None,
              on_failed: Callable[[int, str], None]) -> tuple[float, float, int]:
    """Mean cross-entropy, accuracy and count over ``loader`` in eval mode (centred sampling)."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for batch in loader:
            for index, error in batch["failed"]:
                on_failed(index, error)
            if batch["frames"] is None:
                continue
            x, y = batch["frames"].to(device, non_blocking=True), batch["targets"].to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
    return (loss_sum / count, correct / count, count) if count else (math.nan, math.nan, 0)


def _rank(entry: dict[str, float]) -> tuple[float, float]:
    """Validation ranking: accuracy, then lower loss (an epoch without readable videos ranks last)."""
    acc, loss = entry["val_acc"], entry["val_loss"]
    return (-1.0 if math.isnan(acc) else acc, -math.inf if math.isnan(loss) else -loss)


def train_backbone(
    train_rows: list[VideoRow],
    val_rows: list[VideoRow],
    out_dir: str | Path,
    config: TrainBackboneConfig = TrainBackboneConfig(),
    *,
    resume: str | Path | None = None,
    echo: Callable[[str], None] = print,
) -> TrainBackboneResult:
    """Train ResNet-TRN on videos with video-level labels (see the module docstring).

    Args:
        train_rows, val_rows: the videos (:func:`~vadpipe.pipeline.trn.data.read_video_list`);
            ``val_rows`` may be empty (then ``best.pt`` is the last epoch).
        out_dir: receives ``last.pt``, ``best.pt`` and ``failed.csv`` (when videos failed).
        config: settings.
        resume: a ``last.pt`` of the same run (same videos and settings, more ``epochs`` allowed).
        echo: where progress lines go.

    Returns:
        A :class:`TrainBackboneResult`.

    Raises:
        ConfigError: bad settings, validation classes unknown to the training list, a resume
            that does not match, or no training video readable.
        WeightsNotFoundError: the ImageNet ResNet-50 file is not installed (``pretrained=""``).
    """
    from vadpipe.extractors.resnet_trn import load_resnet50_state_dict
    from vadpipe.pipeline.device import default_workers, resolve_device

    if not train_rows:
        raise ConfigError("train-backbone needs training videos")
    classes = class_names(train_rows)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({r.target_name for r in val_rows} - set(classes))
    if unknown:
        raise ConfigError(f"validation classes {unknown} do not occur in the training list ({classes})")
    out = ensure_writable_dir(out_dir)
    ckpt = load_train_checkpoint(resume) if resume is not None else None
    device = resolve_device(config.device)
    dtype = resolve_precision(config.precision, device)
    workers = default_workers(device) if config.workers is None else config.workers
    train_videos, val_videos = [r.video for r in train_rows], [r.video for r in val_rows]
    if ckpt is not None:
        saved = dict(ckpt["config"])
        diff = sorted(k for k, v in asdict(config).items() if k not in RESUME_FREE and saved.get(k) != v)
        if diff or ckpt["train_videos"] != train_videos or ckpt["val_videos"] != val_videos:
            what = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in diff) or "the video lists"
            raise ConfigError(f"{resume} is another run ({what} differ); start a new output folder")

    _seed_everything(config.seed)
    model = _new_classifier(config, len(classes))
    pretrained_sha = None
    if TRUNKS[config.trunk].torchvision and config.pretrained != "none" and ckpt is None:
        sd, pretrained_sha = load_resnet50_state_dict(config.pretrained or None)
        model.backbone.load_trunk_state_dict(sd)
    model.to(device)
    optimizer = torch.optim.SGD(optimizer_groups(model, config.weight_decay), lr=config.lr, momentum=config.momentum)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)

    history: list[dict[str, float]] = []
    failed: dict[tuple[str, int], str] = {}  # (split, index) -> error
    start_epoch, step = 0, 0
    best = {"epoch": 0, "val_acc": -math.inf, "val_loss": math.inf}
    if ckpt is not None:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, step, history = int(ckpt["epoch"]), int(ckpt["step"]), list(ckpt["history"])
        best = dict(ckpt["best"])
        failed = {(f["split"], int(f["index"])): f["error"] for f in ckpt["failed"]}
        pretrained_sha = ckpt.get("pretrained_sha256")
        torch.set_rng_state(ckpt["torch_rng"])

    targets = [index[r.target_name] for r in train_rows]
    train_set = VideoSegments(train_rows, targets, segments=config.segments, size=config.size, train=True,
                              seed=config.seed, decoder=config.decoder)
    val_set = VideoSegments(val_rows, [index[r.target_name] for r in val_rows], segments=config.segments,
                            size=config.size, train=False, seed=config.seed, decoder=config.decoder)
    rows_of = {"train": train_rows, "val": val_rows}

    def fail(split: str, i: int, error: str) -> None:
        if (split, i) not in failed:
            failed[(split, i)] = error
            echo(f"warning: {split} video {rows_of[split][i].video} failed and is skipped: {error}")

    def failed_rows() -> list[dict[str, str]]:
        return [{"video": rows_of[s][i].video, "split": s, "index": str(i), "error": e}
                for (s, i), e in sorted(failed.items())]

    def payload(kind: str, epoch: int) -> dict[str, Any]:
        return {
            "format": TRAIN_CHECKPOINT_FORMAT, "kind": kind, "vadpipe_version": __version__,
            "backbone": "resnet50-trn", "config": asdict(config), "model_config": model.model_config(),
            "classes": classes, "train_videos": train_videos, "val_videos": val_videos,
            "pretrained_sha256": pretrained_sha,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler is not None else None,
            "epoch": epoch, "step": step, "history": history, "best": best, "failed": failed_rows(),
            "selection": "val_acc" if val_rows else "last", "torch_rng": torch.get_rng_state(),
        }

    echo(f"train-backbone resnet50-trn ({config.relation}): {len(train_rows)} train / {len(val_rows)} val videos, "
         f"{len(classes)} classes, {config.segments} segments at {config.size}px, batch {config.batch_size}, "
         f"epochs {start_epoch + 1}..{config.epochs}, device {device}, "
         f"{'fp32' if dtype is None else str(dtype).removeprefix('torch.')}, {workers} decoding worker(s)")
    pin = device.type == "cuda"
    t0, seen = time.perf_counter(), 0
    for epoch in range(start_epoch, config.epochs):
        model.train()
        usable = [i for i in range(len(train_rows)) if ("train", i) not in failed]
        loss_sum, correct, count = 0.0, 0, 0
        for batch in _loader(train_set, usable, config, epoch=epoch, shuffle=True, workers=workers, pin=pin):
            for i, error in batch["failed"]:
                fail("train", i, error)
            if batch["frames"] is None:
                continue
            lr = learning_rate(step, config, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
            x, y = batch["frames"].to(device, non_blocking=True), batch["targets"].to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                raise ConfigError(f"the loss is {float(loss)} at epoch {epoch + 1}, step {step + 1}: training "
                                  "diverged; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if config.clip_grad is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            step += 1
            n = len(y)
            loss_sum += float(loss.detach()) * n
            correct += int((logits.detach().argmax(1) == y).sum())
            count += n
            seen += n
            if config.log_every and step % config.log_every == 0:
                echo(f"epoch {epoch + 1}/{config.epochs} step {step}: lr {lr:.3g} loss {loss_sum / count:.4f} "
                     f"acc {correct / count:.3f}")
        if count == 0:
            raise ConfigError("no training video could be read: " + "; ".join(
                f"{r['video']}: {r['error']}" for r in failed_rows()[:5]))
        entry: dict[str, float] = {"epoch": epoch + 1, "step": step, "lr": lr, "loss": loss_sum / count,
                                   "acc": correct / count}
        if val_rows:
            usable_val = [i for i in range(len(val_rows)) if ("val", i) not in failed]
            val_loader = _loader(val_set, usable_val, config, epoch=epoch, shuffle=False, workers=workers, pin=pin)
            vloss, vacc, _ = _evaluate(model, val_loader, device, dtype, lambda i, e: fail("val", i, e))
            entry.update(val_loss=vloss, val_acc=vacc)
        history.append(entry)
        improved = not val_rows or _rank(entry) > _rank(best)
        if improved:
            best = {"epoch": epoch + 1, "val_acc": entry.get("val_acc", math.nan),
                    "val_loss": entry.get("val_loss", math.nan)}
            _save(out / "best.pt", payload("best", epoch + 1))
        _save(out / "last.pt", payload("last", epoch + 1))
        elapsed = time.perf_counter() - t0
        val_text = f" val_loss {entry['val_loss']:.4f} val_acc {entry['val_acc']:.3f}" if val_rows else ""
        echo(f"epoch {epoch + 1}/{config.epochs}: lr {lr:.3g} loss {entry['loss']:.4f} acc {entry['acc']:.3f}"
             f"{val_text}{' *' if improved else ''} ({seen / elapsed:.2f} videos/s)")
    elapsed = time.perf_counter() - t0
    rows = failed_rows()
    failed_path = None
    if rows:
        failed_path = out / "failed.csv"
        _write_failed(failed_path, [{k: r[k] for k in ("video", "split", "error")} for r in rows])
        echo(f"{len(rows)} video(s) failed and were skipped (listed in {failed_path}):")
        for r in rows:
            echo(f"  {r['split']}: {r['video']}: {r['error']}")
    echo(f"best epoch {best['epoch']} -> {out / 'best.pt'}")
    return TrainBackboneResult(
        best_path=out / "best.pt", last_path=out / "last.pt", classes=classes, history=history,
        failed=[{k: r[k] for k in ("video", "split", "error")} for r in rows], failed_path=failed_path,
        videos_per_second=seen / elapsed if elapsed > 0 else math.nan, best_epoch=int(best["epoch"]),
    )

