"""Run an exported detector (``vadpipe export --format onnx``) with onnxruntime, without
PyTorch or vadpipe's training code: ``vadpipe score --model detector.onnx``.

What runs where::

    decoder (PyAV/decord, stage one's)   uint8 [t, H, W, 3] chunks
    resize_for_model (host)              uint8 [t, h, w, 3]    the recipe's resize
    iter_clips (stage one's clip rule)   uint8 [L, h, w, 3] clips, batched to [N, L, h, w, 3]
    the ONNX graph                       crops, value range, backbone, head -> features, scores

The resize runs on the host: with torchvision installed it is stage one's own function
(:func:`~vadpipe.pipeline.extract.transforms.resize_chunk`), so the exported detector sees
the pixels ``vadpipe score`` sees; without it, Pillow's resampling of the same filter, which
differs from torchvision's uint8 kernels by at most 2 grey levels on 0.05-6 % of the pixels
(measured on the fixture videos) and so moves scores slightly (4e-5 with the real I3D;
:data:`RESIZERS`; ``OUT/model.json`` says which ran).

A whole video is scored in batches of clips: each batch's features are kept, and the last
batch is run with all earlier features as ``context``, so its scores are the head's over the
whole video, as ``vadpipe score`` computes them.
"""

from __future__ import annotations

import json
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from vadpipe.errors import ConfigError, ExportError, VadpipeError
from vadpipe.pipeline.export.info import INPUTS, METADATA_KEY, OUTPUTS, DetectorInfo

__all__ = ["OnnxDetector", "ModelRun", "ModelScored", "RESIZERS", "onnx_session", "providers_for", "read_info",
           "resize_for_model", "score_with_model"]

#: Host-side resizers: ``torchvision`` (stage one's, exact) and ``pillow`` (without torch).
RESIZERS = ("torchvision", "pillow")
#: Clips per call of the graph when scoring a whole video.
DEFAULT_BATCH_CLIPS = 4
#: Frames decoded per chunk.
CHUNK_FRAMES = 16


def onnx_session(path: str | os.PathLike, providers: list | None = None) -> Any:
    """An onnxruntime ``InferenceSession`` of ``path`` (CPU unless ``providers`` are given).

    Raises:
        ExportError: onnxruntime is not installed, or the file is not a model it can load.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError("running an exported detector needs onnxruntime: pip install onnxruntime "
                          "(or onnxruntime-gpu)") from e
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options,
                                    providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own errors (bad file, unsupported opset, ...)
        raise ExportError(f"{path}: onnxruntime cannot load it ({str(e).strip().splitlines()[0]}); give a file "
                          "written by `vadpipe export --format onnx`") from e


def providers_for(device: str) -> list[str]:
    """onnxruntime execution providers for ``--device``: ``cpu``; ``cuda`` / ``cuda:N`` (the
    CUDA provider, then the CPU one for what it lacks); ``auto``: CUDA when this onnxruntime
    has it (``onnxruntime-gpu``), else CPU.

    Raises:
        ExportError: onnxruntime is missing, or CUDA is asked for and this onnxruntime has no
            CUDA provider.
    """
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ExportError("running an exported detector needs onnxruntime: pip install onnxruntime "
                          "(or onnxruntime-gpu)") from e
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if device == "cpu" or (device == "auto" and not has_cuda):
        return ["CPUExecutionProvider"]
    if device == "auto" or device.startswith("cuda"):
        if not has_cuda:
            raise ExportError(f"--device {device}: this onnxruntime has no CUDA provider (it has {', '.join(available)}); "
                              "pip install onnxruntime-gpu, or use --device cpu")
        index = device.split(":", 1)[1] if ":" in device else "0"
        return [("CUDAExecutionProvider", {"device_id": int(index)}), "CPUExecutionProvider"]
    raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")


def read_info(session: Any, where: str) -> DetectorInfo:
    """The :class:`DetectorInfo` stored in an ONNX session's metadata.

    Raises:
        ExportError: the model has no vadpipe metadata or not the graph's inputs/outputs.
    """
    meta = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in meta:
        raise ExportError(f"{where}: an ONNX model without vadpipe's {METADATA_KEY!r} metadata; export the "
                          "detector with `vadpipe export --format onnx`")
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    if inputs != INPUTS or outputs != OUTPUTS:
        raise ExportError(f"{where}: the graph has inputs {inputs} and outputs {outputs}, not {INPUTS} -> {OUTPUTS}")
    return DetectorInfo.from_json(meta[METADATA_KEY], where)


def _torchvision_resize(info: DetectorInfo) -> Callable[[np.ndarray], np.ndarray] | None:
    try:
        from vadpipe.extractors.presets import ClipPreset
        from vadpipe.pipeline.extract.transforms import resize_chunk
    except ImportError:
        return None
    resize = tuple(info.resize) if isinstance(info.resize, list) else info.resize
    preset = ClipPreset(resize=resize, crop_size=info.crop_size, crop_order=info.crop_order,
                        antialias=info.antialias, interpolation=info.interpolation)
    return lambda frames: resize_chunk(frames, preset)


def _pillow_resize(info: DetectorInfo) -> Callable[[np.ndarray], np.ndarray]:
    from PIL import Image

    if not info.antialias:
        raise ExportError("this detector's recipe resizes without antialiasing, which Pillow cannot do; install "
                          "torchvision to run it")
    filters = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS,
               "nearest": Image.NEAREST}
    if info.interpolation not in filters:
        raise ExportError(f"no Pillow filter for interpolation {info.interpolation!r}; install torchvision")

    def resize(frames: np.ndarray) -> np.ndarray:
        h, w = resized_size(info, frames.shape[1], frames.shape[2])
        if (h, w) == frames.shape[1:3]:
            return np.ascontiguousarray(frames)
        return np.stack([np.asarray(Image.fromarray(f).resize((w, h), filters[info.interpolation])) for f in frames])

    return resize


def resized_size(info: DetectorInfo, height: int, width: int) -> tuple[int, int]:
    """``(h, w)`` of a ``height x width`` frame after the recipe's resize (as ``ClipPreset.resized_size``)."""
    if isinstance(info.resize, list):
        return int(info.resize[0]), int(info.resize[1])
    short, long = (height, width) if height <= width else (width, height)
    new_long = int(info.resize * long / short)
    return (info.resize, new_long) if height <= width else (new_long, info.resize)


def resize_for_model(info: DetectorInfo, resizer: str = "auto") -> tuple[Callable[[np.ndarray], np.ndarray], str]:
    """The host-side resize of uint8 ``[t, H, W, 3]`` frames to the graph's ``[t, h, w, 3]``
    and its name (:data:`RESIZERS`); ``auto``: torchvision when it can be imported."""
    if resizer not in ("auto", *RESIZERS):
        raise ConfigError(f"unknown resizer {resizer!r}; choose auto, {', '.join(RESIZERS)}")
    if resizer in ("auto", "torchvision"):
        fn = _torchvision_resize(info)
        if fn is not None:
            return fn, "torchvision"
        if resizer == "torchvision":
            raise ExportError("resizer 'torchvision' asked for, but torch/torchvision cannot be imported")
    return _pillow_resize(info), "pillow"


class OnnxDetector:
    """An exported detector: ``clips`` in, features and scores out (module docstring).

    Args:
        path: the ``.onnx`` file of ``vadpipe export``.
        threshold: event threshold instead of the stored one.
        window: clips of context the streamed scores of a non-causal head see.
        providers: onnxruntime execution providers (default CPU).
        resizer: ``auto``, ``torchvision`` or ``pillow`` (:func:`resize_for_model`).

    Raises:
        ExportError: the file is not an exported vadpipe detector, or onnxruntime is missing.
    """

    def __init__(self, path: str | os.PathLike, *, threshold: float | None = None, window: int = 64,
                 providers: list | None = None, resizer: str = "auto") -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ExportError(f"{self.path}: no such file; export a detector with `vadpipe export --checkpoint "
                              "best.pt -o detector.onnx`")
        self.session = onnx_session(self.path, providers)
        self.info = read_info(self.session, str(self.path))
        self.resize, self.resizer = resize_for_model(self.info, resizer)
        self.threshold = self.info.threshold if threshold is None else float(threshold)
        self.threshold_source = self.info.threshold_source if threshold is None else "--threshold"
        keep = self.info.causal_context if self.info.causal else window
        self._recent: deque[np.ndarray] = deque(maxlen=max(1, int(keep)))

    @property
    def clip_len(self) -> int:
        return self.info.clip_len

    def run(self, clips: np.ndarray, context: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The graph on resized clips uint8 ``[N, L, h, w, 3]`` with ``context [K, C, D]``
        (``None``: none) -> ``features [N, C, D]``, ``scores [K + N]`` (float32)."""
        if context is None:
            context = np.zeros((0, self.info.channels, self.info.feature_dim), np.float32)
        feats, scores = self.session.run(list(OUTPUTS), {"clips": np.ascontiguousarray(clips, np.uint8),
                                                         "context": np.ascontiguousarray(context, np.float32)})
        return feats, scores

    def clip_spec(self) -> Any:
        from vadpipe.pipeline.extract.clips import ClipSpec

        i = self.info
        return ClipSpec(length=i.clip_len, stride=i.stride, tail=i.tail, drop_last=i.drop_last)

    def score_chunks(self, chunks: Iterable[np.ndarray], batch_clips: int = DEFAULT_BATCH_CLIPS) -> np.ndarray:
        """Clip scores ``[n_clips]`` (float64) of one video given as full-size uint8 frame
        chunks ``[t, H, W, 3]``, cut by the recipe's clip rule."""
        from vadpipe.pipeline.extract.clips import iter_clips

        resized = (self.resize(c) for c in chunks if len(c))
        feats: list[np.ndarray] = []
        pending: list[np.ndarray] = []
        last: np.ndarray | None = None
        for clip in iter_clips(resized, self.clip_spec()):
            pending.append(clip)
            if len(pending) == batch_clips:
                if last is not None:  # not the last batch: its features only
                    feats.append(self.run(last)[0])
                last, pending = np.stack(pending), []
        if pending:
            if last is not None:
                feats.append(self.run(last)[0])
            last = np.stack(pending)
        if last is None:
            return np.zeros(0)
        context = np.concatenate(feats) if feats else None
        return self.run(last, context)[1].astype(np.float64)

    def score(self, frames: np.ndarray, batch_clips: int = DEFAULT_BATCH_CLIPS) -> np.ndarray:
        """Clip scores ``[n_clips]`` of a whole video in memory, uint8 ``[T, H, W, 3]`` RGB."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ConfigError(f"frames must be uint8 [T, H, W, 3] (RGB), got {frames.dtype} {list(frames.shape)}")
        return self.score_chunks([frames], batch_clips)

    def score_clip(self, clip: np.ndarray) -> float:
        """Score of the newest clip (full-size uint8 ``[L, H, W, 3]``) given the clips before
        it (the last ``window``; a causal head's score is final, another's provisional)."""
        if clip.ndim != 4 or clip.shape[0] != self.clip_len:
            raise ConfigError(f"a clip is uint8 [{self.clip_len}, H, W, 3], got {list(clip.shape)}")
        context = np.stack(list(self._recent)) if len(self._recent) else None
        if self._recent.maxlen == 1:
            context = None
        elif context is not None and len(context) >= self._recent.maxlen:
            context = context[1:]
        feats, scores = self.run(self.resize(clip)[None], context)
        self._recent.append(feats[0])
        return float(scores[-1])

    def reset(self) -> None:
        """Forget the clips :meth:`score_clip` has seen."""
        self._recent.clear()


@dataclass
class ModelScored:
    """One video scored by :func:`score_with_model`."""

    video: str
    name: str
    status: str = "ok"
    error: str = ""
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fps: float = 0.0
    n_frames: int = 0
    events: list = field(default_factory=list)
    scores_csv: str = ""


@dataclass
class ModelRun:
    """What :func:`score_with_model` did: each video, the threshold and its source, the resizer."""

    videos: list[ModelScored]
    threshold: float
    threshold_source: str
    resizer: str
    out_dir: Path

    @property
    def failed(self) -> list[ModelScored]:
        return [v for v in self.videos if v.status != "ok"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def score_with_model(inputs: list[str | os.PathLike], model: str | os.PathLike | OnnxDetector,
                     out: str | os.PathLike, *, threshold: float | None = None, min_gap: float = 0.0,
                     min_duration: float = 0.0, batch_clips: int = DEFAULT_BATCH_CLIPS, decoder: str | None = None,
                     resizer: str = "auto", device: str = "auto", echo: Callable[[str], None] | None = None
                     ) -> ModelRun:
    """``vadpipe score --model``: score videos (files, folders, CSV lists) with an exported
    detector. Writes what ``vadpipe score`` writes (``OUT/<video>/scores.csv``,
    ``OUT/events.json``, ``OUT/scores_manifest.csv``) and ``OUT/model.json`` (the detector's
    metadata, the resizer used). A video that fails to decode fails its own row.

    Raises:
        ExportError: ``model`` is not an exported detector. ConfigError: no videos.
    """
    from vadpipe.manifests.atomic import atomic_write_text, ensure_writable_dir, folder_lock
    from vadpipe.pipeline.extract.decode import open_video
    from vadpipe.pipeline.extract.sources import discover
    from vadpipe.pipeline.score import events as ev
    from vadpipe.pipeline.score.outputs import EVENTS_NAME, SCORES_MANIFEST_NAME, write_clip_scores, write_manifest

    detector = model if isinstance(model, OnnxDetector) else OnnxDetector(
        model, threshold=threshold, resizer=resizer, providers=providers_for(device))
    thr = detector.threshold if threshold is None else float(threshold)
    thr_source = detector.threshold_source if threshold is None else "--threshold"
    ev.find_events(np.zeros(0), np.zeros((0, 2)), thr, min_gap, min_duration)  # checks the options first
    jobs = discover([str(v) for v in inputs])
    if not jobs:
        raise ConfigError(f"no videos found in {', '.join(map(str, inputs))}")
    out = ensure_writable_dir(out)
    info = detector.info
    results: list[ModelScored] = []
    t0 = time.time()
    with folder_lock(out, "vadpipe score --model"):
        for job in jobs:
            v = ModelScored(video=job.path, name=job.rel_name)
            try:
                reader = open_video(job.path, backend=decoder or info.decoder, fps=info.fps, chunk_size=CHUNK_FRAMES)
                try:
                    v.fps = float(reader.info.fps)
                    counted = _Counted(reader.iter_chunks())
                    v.scores = detector.score_chunks(counted, batch_clips)
                    v.n_frames = counted.frames
                finally:
                    reader.close()
                if not v.scores.size:
                    raise VadpipeError(f"no complete {info.clip_len}-frame clip in {v.n_frames} frame(s)")
                times = ev.uniform_clip_times(v.scores.size, v.fps, info.clip_len, info.stride)
                v.events = ev.find_events(v.scores, times, thr, min_gap, min_duration)
                path = out / job.rel_name / "scores.csv"
                write_clip_scores(path, v.scores, times, info.clip_len, info.stride)
                v.scores_csv = str(path.relative_to(out))
            except VadpipeError as e:
                v.status, v.error = "failed", f"{type(e).__name__}: {e}"
            results.append(v)
            if echo and v.status == "ok":
                echo(ev.format_events_table(v.name, v.events))
        ok = [v for v in results if v.status == "ok"]
        ev.write_events_json(out / EVENTS_NAME, {v.name: v.events for v in ok}, threshold=thr,
                             threshold_source=thr_source, min_gap=min_gap, min_duration=min_duration,
                             extra={"model": str(detector.path), "head": info.head, "backbone": info.backbone,
                                    "runtime": "onnxruntime"})
        write_manifest(out / SCORES_MANIFEST_NAME, [{
            "video": v.video, "status": v.status, "error": v.error, "scores_csv": v.scores_csv, "plot": "",
            "feature_path": "", "n_clips": int(v.scores.size), "fps": v.fps,
            "duration_s": round(v.n_frames / v.fps, 3) if v.fps else 0.0,
            "max_score": float(v.scores.max()) if v.scores.size else "", "n_events": len(v.events),
            "threshold": thr, "checkpoint": str(detector.path), "seconds": round(time.time() - t0, 3),
        } for v in results])
        atomic_write_text(out / "model.json", json.dumps({"model": str(detector.path), "resizer": detector.resizer,
                                                          **json.loads(info.to_json())}, indent=2) + "\n")
    return ModelRun(results, thr, thr_source, detector.resizer, out)


class _Counted:
    """An iterator of frame chunks that counts the frames it passed on."""

    def __init__(self, chunks: Iterator[np.ndarray]) -> None:
        self._chunks = chunks
        self.frames = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        for c in self._chunks:
            self.frames += len(c)
            yield c
