"""Registering trained resnet50-trn weights: a ``train-backbone`` checkpoint -> the extractor's file.

:func:`export_trained` takes the ``backbone.*`` part of ``best.pt`` (trunk, inner-product
attention, relation module; the classifier is dropped), checks that ``vadpipe extract`` can
use it (16-frame clips, 2048-D, 14 nodes, the preset's 224 px crop when the attention ties
the model to a size), and writes it as safetensors — the model configuration, classes and the
checkpoint's sha256 in the metadata — to ``weights_dir()/resnet50-trn-trained.safetensors``,
recorded in the weights index with its sha256. :func:`~vadpipe.extractors.resnet_trn.resnet50_trn`
then builds from it without any opt-in.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from vadpipe.errors import ConfigError, WeightsIntegrityError
from vadpipe.extractors.resnet_trn import (
    TRAIN_CHECKPOINT_FORMAT,
    TRAINED_FILE_NAME,
    TRAINED_FORMAT,
    read_trained_weights,
)

__all__ = ["check_extractable", "export_trained", "is_train_checkpoint"]


def is_train_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``vadpipe train-backbone`` checkpoint (read with ``weights_only=True``)."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - anything unreadable is not one
        return False
    return isinstance(obj, dict) and obj.get("format") == TRAIN_CHECKPOINT_FORMAT


def check_extractable(model_config: dict, source: str = "checkpoint") -> None:
    """Raise :class:`ConfigError` unless the registered ``resnet50-trn`` backbone can run ``model_config``."""
    from vadpipe.extractors.registry import get_backbone

    spec = get_backbone("resnet50-trn")
    problems = []
    if model_config["num_frames"] != spec.clip_len:
        problems.append(f"it samples {model_config['num_frames']} frames, `vadpipe extract` feeds "
                        f"{spec.clip_len}-frame clips (train with --segments {spec.clip_len})")
    if model_config["out_dim"] != spec.feature_dim:
        problems.append(f"its features are {model_config['out_dim']}-D, the backbone's are {spec.feature_dim}-D")
    nodes = sum(k * k for k in model_config["partition_scales"])
    if nodes != spec.nodes:
        problems.append(f"it has {nodes} patch nodes, the backbone {spec.nodes}")
    if model_config["relation_type"] == "inner-product" and model_config["input_size"] != spec.preset.crop_size:
        problems.append(f"its attention is tied to {model_config['input_size']} px frames, extraction crops "
                        f"{spec.preset.crop_size} px (train with --size {spec.preset.crop_size})")
    if problems:
        raise ConfigError(f"{source} cannot be registered for `vadpipe extract --backbone resnet50-trn`: "
                          + "; ".join(problems))


def export_trained(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None, *,
                   check: bool = True, record: bool = True) -> Path:
    """Convert a ``train-backbone`` checkpoint to the extractor's safetensors file.

    Args:
        checkpoint: ``best.pt`` (or ``last.pt``).
        out: where to write (default: ``weights_dir()/resnet50-trn-trained.safetensors``).
        check: refuse a model ``vadpipe extract`` cannot run (:func:`check_extractable`).
        record: record the file in the weights index (only for a file in the weights folder).

    Returns:
        The written file.

    Raises:
        WeightsIntegrityError: not a train-backbone checkpoint.
        ConfigError: ``check`` failed.
    """
    from safetensors.torch import save

    from vadpipe.extractors.weights import record_weight_file, weights_dir
    from vadpipe.manifests.atomic import atomic_write_bytes

    src = Path(checkpoint)
    if src.suffix == ".safetensors":
        raise WeightsIntegrityError(f"{src} is already a converted file; give the train-backbone checkpoint (best.pt)")
    config, sd, digest = read_trained_weights(src)
    if check:
        check_extractable(config, str(src))
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    meta = {
        "format": TRAINED_FORMAT, "model_config": json.dumps(config, sort_keys=True),
        "classes": json.dumps(ckpt.get("classes", [])), "source_sha256": digest,
        "epoch": str(ckpt.get("epoch", "")), "best": json.dumps(ckpt.get("best", {})),
        "pretrained_sha256": str(ckpt.get("pretrained_sha256") or ""),
        "vadpipe_version": str(ckpt.get("vadpipe_version", "")),
    }
    dst = Path(out) if out is not None else weights_dir() / TRAINED_FILE_NAME
    atomic_write_bytes(dst, save({k: v.contiguous() for k, v in sd.items()}, metadata=meta))
    if record and dst.parent.resolve() == weights_dir().resolve():
        record_weight_file(
            dst, name="resnet50-trn-trained", kind="converted", origin=str(src.resolve()), backbone="resnet50-trn",
            source=f"vadpipe train-backbone checkpoint {src.name} (sha256 {digest}, epoch {meta['epoch']})",
            license="trained by the user; trunk initialised from torchvision's ImageNet ResNet-50 (BSD-3-Clause)",
        )
    return dst
