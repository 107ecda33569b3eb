"""The extraction configuration's three parts: feature settings (hashed), run and engine options."""

from __future__ import annotations

from dataclasses import replace

from vadpipe.pipeline.extract.config import ExtractConfig

CFG = ExtractConfig(backbone="tiny", device="cpu")


def test_every_setting_is_in_exactly_one_part_and_only_feature_settings_are_hashed():
    from dataclasses import fields

    from vadpipe.pipeline.extract.config import EngineOptions, FeatureSettings, RunOptions

    parts = [{f.name for f in fields(c)} for c in (FeatureSettings, RunOptions, EngineOptions)]
    every = [f.name for f in fields(ExtractConfig)]
    assert sorted(every) == sorted(n for p in parts for n in p)  # each field in exactly one part
    base = CFG
    assert base.features.crops == base.crops and base.run.device == "cpu" and base.engine_options.engine == "local"
    h = base.feature_hash("sha")
    for name, value in [("device", "cuda"), ("batch_clips", 7), ("workers", 3),
                        ("channels_last", False), ("devices", ("cpu", "cpu")), ("engine", "ray"),
                        ("ray_address", "x:1")]:
        assert replace(base, **{name: value}).feature_hash("sha") == h, name
    for name, value in [("backbone", "c3d"), ("crops", 5), ("fps", 10.0), ("layout", "per-crop"),
                        ("precision", "bf16"), ("decoder", "pyav"), ("decoder", "decord")]:
        assert replace(base, **{name: value}).feature_hash("sha") != h, name
    assert base.feature_hash("other") != h
