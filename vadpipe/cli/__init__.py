"""Command line: ``vadpipe`` and its commands, one module per command group (parsing only)."""

from vadpipe.cli import bench, extract, reproduce, score, stage_two, weights  # noqa: F401  (register the commands)
from vadpipe.cli.config_files import add_config_option
from vadpipe.cli.main import main

add_config_option(main)

__all__ = ["main"]
