"""Command line: ``vadpipe`` and its commands, one module per command group (parsing only)."""

from vadpipe.cli import (  # noqa: F401  (register the commands)
    bench,
    export,
    extract,
    reproduce,
    score,
    stage_two,
    train_backbone,
    weights,
)
from vadpipe.cli.config_files import add_config_option
from vadpipe.cli.main import main

add_config_option(main)

__all__ = ["main"]
