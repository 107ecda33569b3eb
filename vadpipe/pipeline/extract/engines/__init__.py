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

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vadpipe.errors import ConfigError
from vadpipe.registry import Registry

if TYPE_CHECKING:  # the engines' parts load torch: imported where an engine runs
    from vadpipe.pipeline.extract.config import ExtractConfig
    from vadpipe.pipeline.extract.model import FeatureModel
    from vadpipe.pipeline.extract.sources import VideoJob
    from vadpipe.pipeline.extract.writer import RunContext

__all__ = ["ENGINES", "Engine", "MULTI_DEVICE", "engine_for", "is_distributed", "run_engine"]


@dataclass(frozen=True)
class Engine:
    """An extraction engine.

    Attributes:
        name: the ``--engine`` value.
        module: the module that runs it, imported only when it runs (it loads torch).
        function: ``module.function(ctx, todo, model, progress=...)`` (without ``model`` when
            distributed).
        distributed: whether its models run outside this process (the driver builds none).
        description: one line for the docs.
    """

    name: str
    module: str
    function: str
    distributed: bool
    description: str

    def run(self, ctx: RunContext, todo: list[VideoJob], model: FeatureModel | None, *, progress: bool) -> None:
        """Extract ``todo``; rows come back to ``ctx.record`` (the driver's one writer of features.csv)."""
        if not self.distributed and model is None:
            raise ConfigError(f"the {self.name} engine needs the driver's model")
        run = getattr(importlib.import_module(self.module), self.function)
        if self.distributed:
            run(ctx, todo, progress=progress)
        else:
            run(ctx, todo, model, progress=progress)


#: Engines a user picks with ``--engine``.
ENGINES: Registry[Engine] = Registry("engine")
ENGINES.register("local", Engine("local", "vadpipe.pipeline.extract.engines.local", "run_local", False,
                                 "one model in this process, decoding worker processes"))
ENGINES.register("ray", Engine("ray", "vadpipe.pipeline.extract.engines.ray", "run_ray", True,
                               "decoding and models as Ray tasks and actors"))
#: ``local`` with more than one device: one model process per device, fed from a shared queue.
MULTI_DEVICE = Engine("multi", "vadpipe.pipeline.extract.engines.multi", "run_multi", True,
                      "one model process per device (--devices/--gpus with two or more)")


def engine_for(config: ExtractConfig) -> Engine:
    """The engine ``config`` asks for (``config.engine``, multi-device for several devices).

    Raises:
        ConfigError: an unknown engine name.
    """
    engine = ENGINES.get(config.engine)
    if engine.name == "local" and len(config.devices) > 1:
        return MULTI_DEVICE
    return engine


def is_distributed(config: ExtractConfig) -> bool:
    """True when the models run outside this process (Ray, or several devices)."""
    return engine_for(config).distributed


def run_engine(ctx: RunContext, todo: list[VideoJob], model: FeatureModel | None, *, progress: bool) -> None:
    """Extract ``todo`` with the engine ``ctx.config`` asks for (see :class:`Engine`)."""
    engine_for(ctx.config).run(ctx, todo, model, progress=progress)
