"""Command line: ``vadpipe`` and its commands, one module per command group (parsing only)."""

from vadpipe.cli import bench, extract, reproduce, score, stage_two, weights  # noqa: F401  (register the commands)
from vadpipe.cli.main import main

__all__ = ["main"]
