"""Extraction engines: how the videos of one planned run are spread over processes and devices.

Every engine takes the run planned by :func:`vadpipe.pipeline.extract.runner.extract` (a
:class:`~vadpipe.pipeline.extract.writer.RunContext`, whose ``record`` in the driver is the
only writer of ``features.csv``) and the videos still to do, and is built from the same
parts: :class:`~vadpipe.pipeline.extract.stream.ClipStream` (decode into clip batches),
:class:`~vadpipe.pipeline.extract.model.FeatureModel` with
:func:`~vadpipe.pipeline.extract.model.finished_videos` (batching across videos) and
:func:`~vadpipe.pipeline.extract.writer.finish_video` (the atomic writer). Engines never
import the runner.

* ``local`` (:mod:`.local`): one model in this process, decoding worker processes.
* multi-device (:mod:`.multi`): ``local`` with more than one entry in ``config.devices``:
  one model process per device, fed from a shared queue.
* ``ray`` (:mod:`.ray`): decoding and models as Ray tasks and actors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vadpipe.errors import ConfigError

if TYPE_CHECKING:  # the engines' parts load torch: imported where an engine runs
    from vadpipe.pipeline.extract.config import ExtractConfig
    from vadpipe.pipeline.extract.model import FeatureModel
    from vadpipe.pipeline.extract.sources import VideoJob
    from vadpipe.pipeline.extract.writer import RunContext

__all__ = ["ENGINES", "is_distributed", "run_engine"]

#: Values of ``ExtractConfig.engine`` (``--engine``).
ENGINES = ("local", "ray")


def is_distributed(config: ExtractConfig) -> bool:
    """True when the models run outside this process (Ray, or several devices)."""
    if config.engine not in ENGINES:
        raise ConfigError(f"engine must be one of {ENGINES}, got {config.engine!r}")
    return config.engine != "local" or len(config.devices) > 1


def run_engine(ctx: RunContext, todo: list[VideoJob], model: FeatureModel | None, *, progress: bool) -> None:
    """Extract ``todo`` with the engine ``ctx.config`` asks for.

    Args:
        ctx: the planned run; rows come back to ``ctx.record``.
        todo: videos still to do.
        model: the driver's model for the ``local`` engine; ``None`` for distributed
            engines, which build their own in their workers.
    """
    config = ctx.config
    if config.engine == "ray":
        from vadpipe.pipeline.extract.engines.ray import run_ray

        run_ray(ctx, todo, progress=progress)
    elif is_distributed(config):
        from vadpipe.pipeline.extract.engines.multi import run_multi

        run_multi(ctx, todo, progress=progress)
    else:
        if model is None:
            raise ConfigError("the local engine needs the driver's model")
        from vadpipe.pipeline.extract.engines.local import run_local

        run_local(ctx, todo, model, progress)
