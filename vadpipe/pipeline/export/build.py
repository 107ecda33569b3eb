"""``vadpipe export``: a trained detector (backbone + preprocessing + head + threshold) as one
ONNX or TorchScript file that runs without vadpipe's training code.

The file holds :class:`~vadpipe.pipeline.export.graph.DetectorGraph` with the weights of the
backbone the checkpoint records and of the head, and a
:class:`~vadpipe.pipeline.export.info.DetectorInfo` (clip rule, resize, threshold, hashes).
After writing, the file is run once on frames of two sizes and two context lengths and its
outputs are compared with the PyTorch module's (:data:`PARITY_ATOL`): a file that does not
reproduce the module is not left behind.

Which heads export
------------------
Every built-in head but SA-CRF exports with any number of clips (a dynamic time axis):
Sultani (per snippet), RTFM, MGFN, LA-Net and MCR (convolutions, attention and pooling
over the clips given; their exported scores over ``K + N`` clips are the PyTorch ones).
SA-CRF (:data:`NOT_EXPORTABLE`) does not: its clique band width is read from a tensor and
its mean-field inference halts per video when the marginals settle, both data-dependent
control flow that ``torch.export`` cannot capture; scoring an SA-CRF head needs PyTorch.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vadpipe.errors import ExportError
from vadpipe.extractors.registry import get_backbone
from vadpipe.manifests.atomic import ensure_writable_file, file_sha256
from vadpipe.pipeline.export.graph import DetectorGraph
from vadpipe.pipeline.export.info import INPUTS, METADATA_KEY, OUTPUTS, DetectorInfo
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.train.apply import LoadedHead

__all__ = ["EXPORT_FORMATS", "NOT_EXPORTABLE", "PARITY_ATOL", "ExportResult", "export_detector", "build_graph"]

#: ``vadpipe export --format``.
EXPORT_FORMATS = ("onnx", "torchscript")
#: Heads that cannot be exported, and why.
NOT_EXPORTABLE = {
    "sacrf": "SA-CRF's clique band width is read from a tensor and its mean-field inference stops per video "
             "once the marginals settle: data-dependent control flow that torch.export cannot capture; score "
             "it with `vadpipe score --head` (PyTorch)",
}
#: Largest absolute difference between the exported file's scores and the PyTorch module's
#: accepted at export time (fp32).
PARITY_ATOL = 1e-4
#: Frame size of the example the export traces and of the first check (a 4:3 video).
EXAMPLE_FRAME = (240, 320)


@dataclass
class ExportResult:
    """What :func:`export_detector` wrote: the file, its metadata, and the export-time check
    (largest score / feature difference from PyTorch over the check inputs)."""

    path: Path
    info: DetectorInfo
    seconds: float
    max_score_diff: float
    max_feature_diff: float


def build_graph(loaded: LoadedHead, *, backbone: str | None = None, random_weights: bool = False
                ) -> tuple[DetectorGraph, ExtractConfig, str]:
    """The :class:`DetectorGraph` of a loaded head (on the CPU, eval mode), the extraction
    settings it stands for, and the backbone weights' sha256.

    Raises:
        ExportError: the head cannot be exported (:data:`NOT_EXPORTABLE`).
        ConfigError, WeightsNotFoundError: from the checkpoint's recipe or the backbone.
    """
    from vadpipe.pipeline.score.stream import recipe_model

    if loaded.name in NOT_EXPORTABLE:
        raise ExportError(f"cannot export a {loaded.name} head: {NOT_EXPORTABLE[loaded.name]}")
    cpu = torch.device("cpu")
    loaded.head.to(cpu).eval()
    config, model = recipe_model(loaded, cpu, backbone=backbone,
                                 speed={"device": "cpu", "random_weights": random_weights})
    spec = get_backbone(config.backbone)
    graph = DetectorGraph(model.model, loaded.head, config.preset, config.crops, nodes=spec.nodes,
                          l2_normalize=loaded.l2_normalize).eval()
    return graph, config, model.weights_sha256


def _example(config: ExtractConfig, channels: int, dim: int, frame: tuple[int, int], n: int, k: int,
             seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded ``clips`` uint8 ``[n, L, h, w, 3]`` (resized ``frame``) and ``context`` ``[k, C, D]``."""
    h, w = config.preset.resized_size(*frame)
    g = torch.Generator().manual_seed(seed)
    clips = torch.randint(0, 256, (n, config.clip.length, h, w, 3), dtype=torch.uint8, generator=g)
    return clips, torch.randn(k, channels, dim, generator=g)


def _dynamic_shapes(config: ExtractConfig) -> dict[str, dict[int, object]]:
    """Clips ``N`` and context ``K`` are free; ``h, w`` too unless the preset resizes to a fixed size."""
    dim = torch.export.Dim
    clips: dict[int, object] = {0: dim("clips", min=1, max=1 << 16)}
    if not isinstance(config.preset.resize, tuple):
        s = config.preset.crop_size
        clips[2], clips[3] = dim("height", min=s, max=1 << 14), dim("width", min=s, max=1 << 14)
    return {"clips": clips, "context": {0: dim("context", min=0, max=1 << 20)}}


def _export_onnx(graph: DetectorGraph, example: tuple[torch.Tensor, torch.Tensor], config: ExtractConfig,
                 info: DetectorInfo, tmp: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, example, dynamo=True, dynamic_shapes=_dynamic_shapes(config),
                                    input_names=list(INPUTS), output_names=list(OUTPUTS), verbose=False,
                                    report=False)
    program.model.metadata_props[METADATA_KEY] = info.to_json()
    program.model.producer_name = "vadpipe"
    program.save(str(tmp), external_data=False)  # one file (the weights inside; all backbones are < 2 GB)


def _export_torchscript(graph: DetectorGraph, example: tuple[torch.Tensor, torch.Tensor], info: DetectorInfo,
                        tmp: Path) -> None:
    with warnings.catch_warnings():  # trace is deprecated upstream, and warns on every data-dependent branch
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, example, check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={METADATA_KEY: info.to_json()})


def _file_runner(path: Path, fmt: str) -> Callable[[torch.Tensor, torch.Tensor], tuple[np.ndarray, np.ndarray]]:
    """``(clips, context) -> (features, scores)`` of the written file, loaded once."""
    if fmt == "onnx":
        from vadpipe.pipeline.export.runtime import onnx_session

        session = onnx_session(path)
        return lambda clips, context: tuple(session.run(list(OUTPUTS), {"clips": clips.numpy(),
                                                                        "context": context.numpy()}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        module = torch.jit.load(str(path))

    def run(clips: torch.Tensor, context: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            feats, scores = module(clips, context)
        return feats.numpy(), scores.numpy()

    return run


def check_file(path: Path, fmt: str, graph: DetectorGraph, config: ExtractConfig, channels: int, dim: int
               ) -> tuple[float, float]:
    """Largest ``(score, feature)`` differences between the file and ``graph`` on seeded clips
    of two frame shapes (4:3 landscape and portrait; one for fixed-size presets) and two
    context lengths (0 and 3)."""
    frames = [EXAMPLE_FRAME] if isinstance(config.preset.resize, tuple) else [EXAMPLE_FRAME, (360, 270)]
    run = _file_runner(path, fmt)
    worst_s = worst_f = 0.0
    for i, frame in enumerate(frames):
        for n, k in ((2, 0), (1, 3)):
            clips, context = _example(config, channels, dim, frame, n, k, seed=100 + 10 * i + k)
            with torch.no_grad():
                ref_f, ref_s = graph(clips, context)
            got_f, got_s = run(clips, context)
            if got_s.shape != tuple(ref_s.shape) or got_f.shape != tuple(ref_f.shape):
                raise ExportError(f"the exported file gives shapes {got_f.shape}/{got_s.shape} for clips "
                                  f"{list(clips.shape)} and context {list(context.shape)}, PyTorch "
                                  f"{tuple(ref_f.shape)}/{tuple(ref_s.shape)} (please report this)")
            worst_s = max(worst_s, float(np.abs(got_s - ref_s.numpy()).max()))
            worst_f = max(worst_f, float(np.abs(got_f - ref_f.numpy()).max()))
    return worst_s, worst_f


def export_detector(checkpoint: str | os.PathLike | LoadedHead, out: str | os.PathLike, *, format: str = "onnx",
                    backbone: str | None = None, random_weights: bool = False,
                    threshold: float | None = None) -> ExportResult:
    """Write ``checkpoint``'s detector to ``out`` (module docstring).

    Args:
        checkpoint: a head checkpoint (``best.pt``) or a loaded head.
        out: the file to write (atomically: a temporary file renamed once it passed the check).
        format: ``"onnx"`` (inputs ``clips``/``context``, outputs ``features``/``scores``;
            run with onnxruntime, ``vadpipe score --model``) or ``"torchscript"``
            (``torch.jit.load``; the metadata is its extra file ``vadpipe.detector``).
        backbone, random_weights: as for ``vadpipe score`` (random weights: tests only).
        threshold: the event threshold to store instead of the checkpoint's.

    Raises:
        ExportError: an unknown format, a head that cannot be exported, an exporter failure,
            or a file whose outputs differ from PyTorch's by more than :data:`PARITY_ATOL`.
    """
    import vadpipe
    from vadpipe.pipeline.score.batch import ScoreOptions, head_for_run, resolve_threshold

    if format not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    target = ensure_writable_file(out)
    t0 = time.perf_counter()
    loaded = head_for_run(checkpoint, torch.device("cpu"))
    graph, config, weights_sha = build_graph(loaded, backbone=backbone, random_weights=random_weights)
    spec = get_backbone(config.backbone)
    channels = spec.nodes if spec.nodes > 1 else config.crops
    dim = int(loaded.feature_spec.get("dim") or spec.feature_dim)
    thr, thr_source = resolve_threshold(ScoreOptions(threshold=threshold), loaded)
    source = loaded.source or (str(checkpoint) if not isinstance(checkpoint, LoadedHead) else "")
    preset = config.preset
    info = DetectorInfo(
        head=loaded.name, causal_context=loaded.head.causal_context, threshold=float(thr), threshold_source=thr_source,
        backbone=config.backbone, weights_sha256=weights_sha, clip_len=config.clip.length, stride=config.clip.stride,
        tail=config.clip.tail, drop_last=config.clip.drop_last, fps=config.fps, decoder=config.decoder,
        resize=list(preset.resize) if isinstance(preset.resize, tuple) else int(preset.resize),
        interpolation=preset.interpolation, antialias=bool(preset.antialias), crop_size=preset.crop_size,
        crop_order=preset.crop_order, crops=config.crops, channels=channels, feature_dim=dim,
        checkpoint=source, checkpoint_sha256=file_sha256(source) if source and os.path.isfile(source) else "",
        format=format, vadpipe_version=vadpipe.__version__,
    )
    example = _example(config, channels, dim, EXAMPLE_FRAME, n=2, k=2, seed=0)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            if format == "onnx":
                _export_onnx(graph, example, config, info, tmp)
            else:
                _export_torchscript(graph, example, info, tmp)
        except ExportError:
            raise
        except Exception as e:  # the exporters' own errors: say which head/backbone, keep the cause
            raise ExportError(f"exporting {loaded.name} on {config.backbone} to {format} failed: "
                              f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}") from e
        worst_s, worst_f = check_file(tmp, format, graph, config, channels, dim)
        if not worst_s <= PARITY_ATOL:
            raise ExportError(f"the exported {format} file's scores differ from PyTorch's by up to {worst_s:.3g} "
                              f"(> {PARITY_ATOL:g}); nothing was written (please report this)")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return ExportResult(target, info, time.perf_counter() - t0, worst_s, worst_f)
