"""``vadpipe extract --engine ray``: stage one on a Ray cluster (or a local Ray instance).

Data flow::

    driver: plan (resume, run record) ─┐
                                       │  one decode task per video (CPU, a Ray generator)
    decode task: decode → clips → resize (uint8) → chunks of ≤ batch_clips clips ─┐
                                                                                  │ object store
    model actor (GPU, or CPU): crop → normalise → backbone → float32 [n, crops, D] ┘
                                       │  features only (small) come back
    driver: assemble each video's chunks by first clip index → .npy (atomic) + manifest row

* **Decoding** runs in Ray tasks, one per video, that *stream* their chunks (Ray
  generators): a chunk holds at most ``config.batch_clips`` clips, so memory stays bounded
  whatever a video's length. The last item of each stream is the video's :class:`VideoDone`
  (frames, fps, decoder, error, number of chunks) — the same record, with the same error
  messages, as the local engine's (:class:`vadpipe.pipeline.extract.stream.ClipStream` makes both).
* **Backpressure**: a decode task runs at most :data:`DECODE_AHEAD` chunks ahead of the
  driver taking them (``_generator_backpressure_num_objects``); the driver takes a chunk
  only when a model actor has room (at most :data:`ACTOR_QUEUE` calls queued per actor),
  and decodes at most :attr:`ActorPlan.max_videos` videos at once. The object store thus
  holds at most ``max_videos * DECODE_AHEAD + n_actors * ACTOR_QUEUE`` chunks.
* **Chunks go straight from the decode task to a model actor** (the driver only passes
  object references); only features travel back to the driver.
* **The driver writes everything**: it assembles each video's feature chunks (they may
  arrive out of order, from several actors: each carries its first clip index, and the
  ``VideoDone.n_batches`` says how many there are), writes the ``.npy`` with
  :func:`~vadpipe.pipeline.extract.writer.finish_video` and records the row. So nothing assumes a
  filesystem shared by the nodes: the output folder only has to exist where the driver
  runs, and ``features.csv`` has a single writer. (The *inputs* must be readable at the same
  path on every node that runs decode tasks.)

Resources (:func:`plan_actors`; the model actors are reserved in a placement group, so
decode tasks can never take the CPUs a restarting actor needs):

* **GPU actors** when the cluster has GPUs and ``config.device``/``config.devices`` do not
  say ``cpu``: one actor per entry of ``config.devices``, else one per GPU in the cluster;
  each takes one GPU and one CPU (no CPU when the cluster has fewer than two CPUs per actor,
  so that decoding always has CPUs).
* **CPU actors** otherwise: ``len(config.devices)`` actors, else one. A quarter of the
  cluster's CPUs (at least one) is kept for decoding; the actors share the rest (whole CPUs
  each when there are enough, else fractions) and run ``max(1, floor(share))`` torch
  threads.
* Videos decoded at once: ``min(floor(decode CPUs), 4 * n_actors) + 1`` (one waiting, so
  that a CPU never idles between videos).

Failures:

* A video that cannot be decoded (corrupt, empty, too short, ...) is a ``failed`` row with
  the same message as the local engine's.
* A decode task whose worker dies (a native decoder crash, a lost node) is run again up to
  ``max_retries`` times (Ray's task ``max_retries``), then its video fails.
* A model actor whose process dies (segfault, OOM kill, lost node) is restarted by Ray up to
  ``max_retries`` times and its pending calls are run again (``max_restarts``,
  ``max_task_retries``). When Ray gives up on it, the videos it was working on fail and the
  driver starts a fresh actor in its place, at most ``max_retries`` times per actor slot;
  when every slot has used that up, the videos left fail with the last cause. An exception
  raised by the model itself (a bug, CUDA out of memory) is not retried: that video fails.
* Failed rows are redone by the next run (the driver's resume logic), like the local
  engine's.
* Workers that cannot build the backbone at all (vadpipe or the backbone's module not
  importable, weights missing or different from the driver's) stop the run before any
  video with a :class:`~vadpipe.errors.ConfigError` (the rows stay ``skipped``).

Manifest rows equal the local engine's except ``seconds``, which here is the driver's wall
time from the video's submission to its row (queueing included; nodes' clocks may differ).
With ``random_weights`` every actor builds the model from the seed
:data:`vadpipe.pipeline.extract.model.RANDOM_WEIGHTS_SEED`, so all actors of a run compute the same function.

Cluster requirements: vadpipe (and any module that registers the backbone, e.g. one named
in ``VADPIPE_PLUGINS``) importable on every node, the backbone's weights installed on the
nodes that run model actors (their sha256 is checked against the driver's), and the input
videos at the same paths on the nodes that decode. Connect with ``--ray-address``
(``auto``, ``HOST:PORT``; or the ``RAY_ADDRESS`` variable); with neither, a local Ray
instance is started for the run and stopped after it.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import time
import warnings
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from vadpipe.errors import ConfigError, WeightsIntegrityError
from vadpipe.extractors.registry import get_backbone
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.model import FeatureBuffer, FeatureModel
from vadpipe.pipeline.extract.sources import VideoJob
from vadpipe.pipeline.extract.stream import ClipBatch, ClipStream, VideoDone
from vadpipe.pipeline.extract.writer import RunContext, finish_video, video_array

log = logging.getLogger(__name__)

#: Default bound on retries of a failed Ray task, restarts of a crashed model actor, and
#: fresh actors started in place of one Ray gave up on.
MAX_RETRIES = 2
#: Model calls queued per actor: one running, one waiting, so the actor never idles.
ACTOR_QUEUE = 2
#: Chunks a decode task may produce before the driver takes them.
DECODE_AHEAD = 2
#: Seconds to wait for the cluster to place the model actors (an autoscaler may add nodes).
PLACEMENT_TIMEOUT_S = 300.0
#: Longest Ray error text kept in a manifest row.
_REASON_CHARS = 300
_LOGS_HINT = "Ray worker logs: /tmp/ray/session_latest/logs on the node"
_LOST = "RaySystemError: the decode stream of this video ended without its final record; re-run to retry it"


def _import_ray() -> Any:
    # Ray's progress-bar manager replaces builtins.print in the driver unless told not to; a
    # library must not change its caller's print.
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    try:
        import ray
    except ImportError as e:
        raise ConfigError(f"--engine ray needs Ray, which is not installed ({e}): pip install 'vadpipe[ray]'") from e
    return ray


# ----------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class ActorPlan:
    """How a run uses the cluster (see the module docstring for the rule).

    Attributes:
        n_actors: model actors.
        use_gpu: each actor takes one GPU.
        actor_cpus: CPUs reserved per actor (may be fractional).
        threads: torch threads per CPU actor.
        decode_cpus: CPUs left for decode tasks.
        max_videos: videos decoded at once.
    """

    n_actors: int
    use_gpu: bool
    actor_cpus: float
    threads: int
    decode_cpus: float
    max_videos: int

    def describe(self) -> str:
        """One line for logs and the benchmark."""
        kind = "GPU" if self.use_gpu else "CPU"
        return (f"{self.n_actors} {kind} model actor(s) ({self.actor_cpus:g} CPU each), "
                f"{self.decode_cpus:g} CPU(s) for decoding, {self.max_videos} video(s) at once")


def plan_actors(config: ExtractConfig, resources: Mapping[str, float]) -> ActorPlan:
    """Choose the model actors and decoding concurrency for ``config`` on a cluster.

    Args:
        config: the run's settings (``device``, ``devices``).
        resources: the cluster's total resources (``ray.cluster_resources()``).

    Raises:
        ConfigError: CUDA was asked for and the cluster has no GPU; or the cluster has too
            few CPUs to decode beside the model actors.
    """
    cpus = float(resources.get("CPU", 0.0))
    gpus = int(resources.get("GPU", 0.0))
    names = config.devices or (config.device,)
    wants_cpu = all(n == "cpu" for n in names)
    wants_cuda = any(n.startswith("cuda") for n in names)
    if wants_cuda and gpus == 0:
        raise ConfigError(f"device {','.join(names)} asked for, but the Ray cluster has no GPU; "
                          "use --device cpu, or add GPU nodes to the cluster")
    use_gpu = gpus > 0 and not wants_cpu
    n_actors = len(config.devices) or (gpus if use_gpu else 1)
    if use_gpu and n_actors > gpus:
        raise ConfigError(f"{n_actors} GPU model actors asked for (--devices), but the Ray cluster has {gpus} GPU(s)")
    if use_gpu:
        actor_cpus = 1.0 if cpus >= 2 * n_actors else 0.0
        decode_cpus = cpus - actor_cpus * n_actors
    else:
        if cpus < 2:
            raise ConfigError(f"the Ray cluster has {cpus:g} CPU(s); a CPU-only run needs at least 2 "
                              "(one for the model, one for decoding)")
        decode_cpus = max(1.0, math.floor(cpus / 4))
        share = (cpus - decode_cpus) / n_actors
        actor_cpus = float(math.floor(share)) if share >= 1 else math.floor(share * 1000) / 1000
        if actor_cpus <= 0:
            raise ConfigError(f"{n_actors} CPU model actors do not fit on a Ray cluster with {cpus:g} CPUs")
        decode_cpus = cpus - actor_cpus * n_actors
    if decode_cpus < 1:
        raise ConfigError(f"the Ray cluster has {cpus:g} CPU(s): none left to decode beside {n_actors} model actor(s)")
    return ActorPlan(
        n_actors=n_actors, use_gpu=use_gpu, actor_cpus=actor_cpus, threads=max(1, math.floor(actor_cpus)),
        decode_cpus=decode_cpus, max_videos=min(math.floor(decode_cpus), 4 * n_actors) + 1,
    )


def ensure_ray(address: str | None) -> bool:
    """Connect to Ray unless this process already is (then that connection is used): to
    ``address`` (``auto``, ``HOST:PORT``), or to ``$RAY_ADDRESS``, or else start a local
    instance (all CPUs, no dashboard; Ray's messages only at ``vadpipe -v``).

    Returns:
        True when this call connected (the caller should ``ray.shutdown()`` when done); a
        benchmark can call it once beforehand so that runs do not pay Ray's start-up.

    Raises:
        ConfigError: Ray is not installed, or the cluster cannot be reached.
    """
    ray = _import_ray()
    if ray.is_initialized():
        if address:
            log.info("ray engine: this process is already connected to Ray; --ray-address %s is not used", address)
        return False
    verbose = log.isEnabledFor(logging.DEBUG)  # vadpipe -v: Ray's own messages and the workers' output too
    kwargs: dict[str, Any] = dict(
        address=address, include_dashboard=False, logging_level=logging.INFO if verbose else logging.ERROR,
        log_to_driver=verbose,
    )
    if address is None and not os.environ.get("RAY_ADDRESS"):
        kwargs["num_cpus"] = os.cpu_count() or 1
    try:
        ray.init(**kwargs)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise ConfigError(f"cannot connect to the Ray cluster at {address or os.environ.get('RAY_ADDRESS')!r}: {e}; "
                          "check --ray-address, or leave it out to start a local Ray instance") from e
    return True


# ----------------------------------------------------------------------------- remote code


@dataclass
class _Features:
    """A model actor's answer for one :class:`ClipBatch`: ``feats`` float32 ``[n, crops, D]``
    of the clips from ``start``."""

    start: int
    feats: np.ndarray


def _decode_chunks(job: VideoJob, config: ExtractConfig) -> Iterator[ClipBatch | VideoDone]:
    """Ray generator task: the video's :class:`ClipBatch` items (``data`` as a NumPy uint8
    ``[n, 3, T, h, w]`` array for the object store, ``n <= config.batch_clips``), in clip
    order, then its :class:`VideoDone` (whose ``n_batches`` says how many came)."""
    torch.set_num_threads(1)
    for item in ClipStream([job], config):
        if isinstance(item, ClipBatch):
            item = ClipBatch(job=item.job, start=item.start, data=item.data.numpy())
        yield item


class _FeatureWorker:
    """Ray actor: one backbone on the actor's device; chunks in, features out."""

    def __init__(self, backbone_module: str, config: ExtractConfig, use_gpu: bool, threads: int):
        importlib.import_module(backbone_module)  # registers plugin backbones (e.g. tests')
        torch.set_num_threads(threads)
        spec = get_backbone(config.backbone)
        # FeatureModel seeds --random-weights builds (RANDOM_WEIGHTS_SEED): every actor builds the same model
        self.model = FeatureModel(spec, config, torch.device("cuda" if use_gpu else "cpu"))

    def weights_sha256(self) -> str:
        """sha256 of the weights this actor loaded (``random`` with random weights)."""
        return self.model.weights_sha256

    def run(self, item: ClipBatch | VideoDone) -> _Features | VideoDone:
        """The :class:`_Features` of one :class:`ClipBatch`; a :class:`VideoDone` passes
        through unchanged."""
        if not isinstance(item, ClipBatch):
            return item
        with warnings.catch_warnings():  # object-store arrays are read-only; nothing writes to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            data = torch.from_numpy(item.data)
        feats = self.model([data])
        return _Features(start=item.start, feats=feats.cpu().numpy())


# ----------------------------------------------------------------------------- driver side


@dataclass
class _Video:
    """A video in flight: its decode stream and the feature chunks received so far (copied
    into one array as they come: memory does not grow by an object per chunk)."""

    index: int
    job: VideoJob
    started: float
    gen: Any = None  # ray.ObjectRefGenerator until its stream ends
    features: FeatureBuffer = field(default_factory=FeatureBuffer)
    done: VideoDone | None = None
    calls: int = 0  # model calls out for this video

    def add(self, result: _Features | VideoDone) -> None:
        """Take one model result: a feature chunk or the video's :class:`VideoDone`."""
        if isinstance(result, _Features):  # copied, so the object store's (read-only) array is freed
            self.features.add(result.start, result.feats)
        else:
            self.done = result

    @property
    def parts(self) -> list[tuple[int, np.ndarray]]:
        """:func:`finish_video`'s ``parts``: the features received, in clip order."""
        return self.features.parts()

    @property
    def lost(self) -> bool:
        """The stream ended and every call came back, yet the video is not complete (a
        guard: a stream always ends with its ``done`` record or a Ray error)."""
        return self.gen is None and self.calls == 0 and not self.complete

    @property
    def complete(self) -> bool:
        """The ``done`` record is here, and so is every chunk (unless decoding failed)."""
        return self.done is not None and (bool(self.done.error) or self.features.batches == self.done.n_batches)

    def record_item(self, error: str = "") -> VideoDone:
        """The :class:`VideoDone` :func:`finish_video` takes, timed on the driver's clock
        (nodes' clocks may differ); ``error`` overrides."""
        done = self.done or VideoDone(job=self.index, video=self.job, started=self.started)
        return replace(done, started=self.started, error=error or done.error)


@dataclass
class _Slot:
    """One model actor place; ``generation`` counts the fresh actors started in it."""

    actor: Any
    bundle: int
    generation: int = 0
    in_flight: int = 0
    alive: bool = True


def _reason(e: BaseException) -> str:
    """A short manifest-row reason for a Ray failure: the underlying exception, and for a
    dead worker process only Ray's exit detail, pid and node."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException) and not isinstance(cause, type(e)):
        e = cause
    text = str(e)
    if "Worker exit detail:" in text:
        detail = text.split("Worker exit detail:", 1)[1].split(" Some common causes", 1)[0].strip()
        where = re.search(r"pid: (\d+)\s+namespace: \S+\s+ip: (\S+)", text)
        text = f"the worker process died ({detail}" + (f"; pid {where[1]} on {where[2]})" if where else ")")
    text = " ".join(text.split())
    if len(text) > _REASON_CHARS:
        text = text[:_REASON_CHARS - 3] + "..."
    return f"{type(e).__name__}: {text}"


def run_ray(ctx: RunContext, todo: list[VideoJob], *, progress: bool, max_retries: int | None = None) -> None:
    """The Ray engine: decode tasks feed model actors; this process writes every output.

    Args:
        ctx: the run planned by :func:`~vadpipe.pipeline.extract.runner.extract` (its rows hold a
            ``skipped`` row for each video of ``todo``).
        todo: videos to process.
        progress: show a progress bar on stderr.
        max_retries: bound on task retries, actor restarts and fresh actors per slot
            (default :data:`MAX_RETRIES`).

    Raises:
        ConfigError: Ray is missing or unreachable, the cluster lacks the resources, or the
            workers cannot build the backbone.
        WeightsIntegrityError: a model actor loaded other weights than the driver.
    """
    ray = _import_ray()
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    retries = MAX_RETRIES if max_retries is None else max_retries
    config = ctx.config
    started_ray = ensure_ray(config.ray_address)
    pg = None
    slots: list[_Slot] = []
    active: dict[int, _Video] = {}
    try:
        plan = plan_actors(config, ray.cluster_resources())
        log.info("ray engine: %s", plan.describe())
        bundle = {k: v for k, v in (("CPU", plan.actor_cpus), ("GPU", float(plan.use_gpu))) if v > 0}
        pg = placement_group([bundle] * plan.n_actors, strategy="PACK")
        ready, _ = ray.wait([pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
        if not ready:
            raise ConfigError(f"the Ray cluster could not place {plan.n_actors} model actor(s) of {bundle} within "
                              f"{PLACEMENT_TIMEOUT_S:g} s (cluster: {ray.cluster_resources()}); free resources or "
                              "ask for fewer --devices")
        worker_cls = ray.remote(_FeatureWorker)
        decode = ray.remote(_decode_chunks).options(
            num_cpus=1, max_retries=retries, retry_exceptions=False,
            _generator_backpressure_num_objects=DECODE_AHEAD,
        )
        backbone_module = ctx.spec.build.__module__

        def new_actor(index: int) -> Any:
            return worker_cls.options(
                num_cpus=plan.actor_cpus, num_gpus=1 if plan.use_gpu else 0,
                max_restarts=retries, max_task_retries=retries,
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=index),
            ).remote(backbone_module, config, plan.use_gpu, plan.threads)

        t0 = time.time()
        slots = [_Slot(actor=new_actor(i), bundle=i) for i in range(plan.n_actors)]
        try:
            shas = ray.get([s.actor.weights_sha256.remote() for s in slots])
        except ray.exceptions.RayError as e:
            raise ConfigError(f"the Ray workers cannot build backbone {config.backbone!r} ({_reason(e)}); vadpipe "
                              f"and the module {backbone_module!r} must be importable on every node, with the "
                              "weights installed") from e
        for sha in shas:
            if sha != ctx.weights_sha256:
                raise WeightsIntegrityError(
                    f"a Ray worker loaded {config.backbone} weights with sha256 {sha}, the driver "
                    f"{ctx.weights_sha256}; install the same weight file on every node (vadpipe weights import)")
        t1 = time.time()
        _drive(ray, ctx, todo, decode, slots, new_actor, plan, retries, active, progress)
        log.info("ray engine: model actors ready in %.2f s, %d video(s) in %.2f s", t1 - t0, len(todo),
                 time.time() - t1)
    finally:
        for video in active.values():
            if video.gen is not None:
                _cancel(ray, video.gen)
        for slot in slots:
            _kill(ray, slot.actor)
        if pg is not None:
            remove_placement_group(pg)
        if started_ray:
            ray.shutdown()


def _cancel(ray: Any, gen: Any) -> None:
    try:
        ray.cancel(gen, force=False)
    except Exception:  # already finished, or not cancellable: nothing to free
        log.debug("could not cancel a decode task", exc_info=True)


def _kill(ray: Any, actor: Any) -> None:
    try:
        ray.kill(actor, no_restart=True)
    except Exception:  # already dead
        log.debug("could not kill a model actor", exc_info=True)


def _drive(ray: Any, ctx: RunContext, todo: list[VideoJob], decode: Any, slots: list[_Slot], new_actor: Any,
           plan: ActorPlan, retries: int, active: dict[int, _Video], progress: bool) -> None:
    """The driver loop: start decode streams, hand chunks to actors, assemble results."""
    from tqdm.auto import tqdm

    summary = ctx.summary
    pending = deque(range(len(todo)))
    in_flight: dict[Any, tuple[_Video, _Slot, int]] = {}  # model call → (video, slot, slot generation)
    last_death = ""
    t_start = time.time()
    bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True)

    def finish(video: _Video, error: str = "") -> None:
        active.pop(video.index, None)
        if video.gen is not None:
            _cancel(ray, video.gen)
            video.gen = None
        parts = [] if error else video.parts
        row = finish_video(ctx, video.job, video.record_item(error), parts)
        ctx.record(row, video_array(parts) if row.status == "ok" else None)
        bar.update(1)
        bar.set_postfix(clips_per_s=f"{summary.clips / max(time.time() - t_start, 1e-9):.1f}", failed=summary.failed)

    def on_actor_death(slot: _Slot, generation: int, e: BaseException) -> None:
        nonlocal last_death
        last_death = _reason(e)
        if generation != slot.generation or not slot.alive:
            return  # this death was handled already (several calls fail with it)
        slot.generation += 1
        slot.in_flight = 0
        _kill(ray, slot.actor)
        if slot.generation <= retries:
            log.warning("a model actor died for good (%s); starting a fresh one", last_death)
            slot.actor = new_actor(slot.bundle)
        else:
            log.warning("a model actor died for good %d times; closing its slot (%s)", slot.generation, last_death)
            slot.alive = False

    try:
        while pending or active:
            while pending and len(active) < plan.max_videos:
                i = pending.popleft()
                active[i] = _Video(index=i, job=todo[i], started=time.time(), gen=decode.remote(todo[i], ctx.config))
            live = [s for s in slots if s.alive]
            if not live:
                reason = (f"RayActorError: not processed: the model actors kept dying ({retries} restart(s) each, "
                          f"{retries} fresh actor(s) per slot); last cause: {last_death}; re-run to retry this video")
                for video in list(active.values()):
                    finish(video, reason)
                while pending:
                    i = pending.popleft()
                    finish(_Video(index=i, job=todo[i], started=time.time()), reason)
                break
            room = sum(ACTOR_QUEUE - s.in_flight for s in live)
            gens = [v.gen for v in active.values() if v.gen is not None] if room > 0 else []
            waitables = list(in_flight) + gens
            if not waitables:  # cannot happen: an active video has a stream or calls out (see _Video.lost)
                raise RuntimeError("ray engine: nothing to wait for with videos still active (please report this)")
            ray.wait(waitables, num_returns=1)

            # results of model calls
            if in_flight:
                done_refs, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
                for ref in done_refs:
                    video, slot, generation = in_flight.pop(ref)
                    video.calls -= 1
                    if generation == slot.generation:
                        slot.in_flight -= 1
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.ActorDiedError as e:
                        on_actor_death(slot, generation, e)
                        if video.index in active:
                            finish(video, f"{_reason(e)}, again after {retries} restart(s) of the model actor; "
                                          f"re-run to retry this video ({_LOGS_HINT})")
                        continue
                    except ray.exceptions.RayError as e:
                        if video.index in active:
                            finish(video, f"{_reason(e)} ({_LOGS_HINT})")
                        continue
                    if isinstance(result, _Features):  # counted like the local engine: every clip the model ran
                        summary.clips += int(result.feats.shape[0])
                    if video.index not in active:
                        continue  # the video already failed
                    video.add(result)
                    if video.complete:
                        finish(video, "")
                    elif video.lost:
                        finish(video, _LOST)

            # hand ready chunks to actors, oldest video first
            if gens:
                ready_gens, _ = ray.wait(gens, num_returns=len(gens), timeout=0)
                for video in list(active.values()):
                    if video.gen is None or not any(g is video.gen for g in ready_gens):
                        continue
                    live = [s for s in slots if s.alive and s.in_flight < ACTOR_QUEUE]
                    if not live:
                        break
                    try:
                        ref = next(video.gen)
                    except StopIteration:
                        video.gen = None
                        if video.lost:
                            finish(video, _LOST)
                        continue
                    slot = min(live, key=lambda s: s.in_flight)
                    in_flight[slot.actor.run.remote(ref)] = (video, slot, slot.generation)
                    slot.in_flight += 1
                    video.calls += 1
    finally:
        bar.close()
