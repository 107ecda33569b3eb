"""The engine registry: which engine a configuration gets, and the layering rule that engines
never import the runner that plans their runs."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

import vadpipe.pipeline.extract.engines as engines_pkg
from vadpipe.errors import ConfigError
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.engines import ENGINES, MULTI_DEVICE, engine_for, is_distributed

CFG = ExtractConfig(backbone="tiny", random_weights=True, device="cpu")


def test_engine_for_each_configuration():
    assert engine_for(CFG) is ENGINES.get("local") and not is_distributed(CFG)
    assert engine_for(replace(CFG, devices=("cpu",))).name == "local"
    assert engine_for(replace(CFG, devices=("cpu", "cpu"))) is MULTI_DEVICE and is_distributed(
        replace(CFG, devices=("cpu", "cpu")))
    ray = replace(CFG, engine="ray", devices=("cpu", "cpu"))
    assert engine_for(ray).name == "ray" and is_distributed(ray)
    with pytest.raises(ConfigError, match=r"unknown engine 'spark'; registered engines: local, ray"):
        engine_for(replace(CFG, engine="spark"))


def test_the_local_engine_refuses_to_run_without_the_drivers_model():
    with pytest.raises(ConfigError, match="local engine needs the driver's model"):
        ENGINES.get("local").run(None, [], None, progress=False)  # type: ignore[arg-type]


def test_engines_never_import_the_runner():
    for path in Path(engines_pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.endswith("extract.runner") for n in names), f"{path.name} imports the runner"

