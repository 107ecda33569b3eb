"""Starting the CLI imports no model code: `vadpipe --help` and the choice lists cost no torch."""

from __future__ import annotations

import json
import subprocess
import sys

from click.testing import CliRunner

from vadpipe.cli import main
from vadpipe.extractors.presets import CROP_ORDERS, N_CROPS, RECIPE_ALIASES, RECIPES
from vadpipe.pipeline.extract.decode import DECODERS
from vadpipe.pipeline.extract.engines import ENGINES

HEAVY = ("torch", "torchvision", "pandas", "av", "numpy", "decord")


def _heavy_after(statement: str) -> list[str]:
    code = f"import json, sys; {statement}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    return json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def test_importing_the_cli_loads_no_heavy_library() -> None:
    """Catches: a command module importing a library constant (or anything else) from a
    module that loads torch at import time; an eager `vadpipe.extractors` package (the
    presets, which the choice lists and every backbone read, must stay light)."""
    assert _heavy_after("import vadpipe.cli") == []
    assert _heavy_after("import vadpipe.extractors.presets") == []


def test_choices_are_the_library_constants() -> None:
    """The lazily read choices are exactly the library's values (nothing copied into the CLI)."""
    params = {p.name: p for p in main.commands["extract"].params}
    assert params["decoder"].type.choices == DECODERS
    assert params["engine"].type.choices == tuple(ENGINES) == ("local", "ray")
    assert params["crop_order"].type.choices == CROP_ORDERS
    assert params["crops"].type.choices == tuple(str(n) for n in N_CROPS)
    assert params["preset_name"].type.choices == tuple(sorted(RECIPES)) + tuple(sorted(RECIPE_ALIASES))
    res = CliRunner().invoke(main, ["extract", "x", "--decoder", "nope"])
    assert res.exit_code == 2 and "torchcodec-cuda" in res.output


def test_stage_two_choices_come_from_the_library() -> None:
    from vadpipe.heads.base import refinement_heads
    from vadpipe.manifests.datasets import LIST_KINDS
    from vadpipe.pipeline.train.loop import PROTOCOLS

    train = {p.name: p for p in main.commands["train"].params}
    assert train["refine"].type.choices == tuple(refinement_heads()) == ("mcr",)
    assert train["protocol"].type.choices == tuple(PROTOCOLS) == ("holdout", "paper")
    kind = {p.name: p for p in main.commands["manifest"].commands["import"].params}["kind"]
    assert kind.type.choices == LIST_KINDS
