"""`vadpipe reproduce`: every published row end to end on synthetic features named by the real lists."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.helpers import public_layout as pl
from vadpipe.cli import main
from vadpipe.errors import ConfigError, FeatureLoadError
from vadpipe.pipeline.reproduce.protocols import PROTOCOLS, get_protocol, protocol_rows
from vadpipe.pipeline.reproduce.run import locate_inputs, reproduce, sha256_of, table_lines
from vadpipe.pipeline.train.loop import load_checkpoint

#: The rows the seed papers report (issue list): every one must be reproducible.
ROWS = [("rtfm", "ucf"), ("rtfm", "shanghai"), ("rtfm", "xd"), ("mgfn", "ucf"), ("mgfn", "xd"), ("sultani", "ucf"),
        ("lanet", "ucf"), ("lanet", "xd"), ("sacrf", "ucf"), ("sacrf", "shanghai"), ("mcr", "shanghai")]
STEPS = 2
#: Test-only settings, the protocol otherwise the row's: MGFN narrower (its 1024-wide last stage
#: costs ~20 ms a snippet on these CPUs, minutes per test list); SA-CRF with a larger learning
#: rate (it does not rank by feature magnitude at initialisation, so two steps at 1e-4 stay at chance).
SMALL = {"mgfn": {"dims": (8, 16, 32), "dim_head": 8}, "sacrf": {"lr": 1e-2}}


def _writer(method: str, dataset: str):
    if method == "sultani":
        return pl.write_sultani_ucf
    if method == "sacrf":
        return lambda root: pl.write_trn(root, dataset)
    return {"ucf": pl.write_rtfm_ucf, "shanghai": pl.write_rtfm_shanghai, "xd": pl.write_xd}[dataset]


@pytest.fixture(scope="module")
def public_sets(tmp_path_factory):
    """One synthetic set per layout, written once for the module."""
    made: dict[str, pl.PublicSet] = {}

    def get(method: str, dataset: str) -> pl.PublicSet:
        key = {"sultani": "sultani", "sacrf": f"trn-{dataset}"}.get(method, dataset)
        if key not in made:
            made[key] = _writer(method, dataset)(tmp_path_factory.mktemp(key))
        return made[key]

    return get


def test_every_published_row_has_a_protocol():
    assert sorted(PROTOCOLS) == sorted(ROWS)
    for row in protocol_rows():
        assert row["paper"] and row["selection"] and row["length"]
    with pytest.raises(ConfigError, match="known rows: rtfm ucf"):
        get_protocol("rtfm", "avenue")


@pytest.mark.parametrize("method,dataset", ROWS, ids=[f"{m}-{d}" for m, d in ROWS])
def test_row_end_to_end(public_sets, tmp_path, method, dataset, one_thread):
    """Lists imported (real names, CRLF, Windows paths, index labels), trained, evaluated on the
    real GT: AUC far above chance proves names, labels, lengths and GT line up."""
    data = public_sets(method, dataset)
    protocol = get_protocol(method, dataset)
    inputs = locate_inputs(protocol, data.features, lists_dir=data.lists, frames_csv=data.frames_csv)
    result = reproduce(protocol, inputs, tmp_path / "out", seeds=1, steps=STEPS, device="cpu",
                       overrides=SMALL.get(method))
    assert result.summary["auc"][0] > 0.9, result.summary
    lines = table_lines(result)
    assert f"{protocol.paper.value:.2f}" in "\n".join(lines)
    assert any(ln.startswith("AP (average_precision_score)") for ln in lines)
    assert any(ln.startswith("AP (auc(recall, precision))") for ln in lines)
    assert any("NOT comparable" in ln for ln in lines)  # --steps and 8-D features
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["paper"]["value"] == protocol.paper.value and saved["comparable"] is False
    assert saved["gt_sha256"] == sha256_of(data.gt)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["gt"]["sha256"] == sha256_of(data.gt) and config["protocol"]["method"] == method
    n_test = len(Path(tmp_path / "out" / "data" / "test.csv").read_text().splitlines()) - 1
    assert n_test == {"ucf": 290, "shanghai": 199, "xd": 800}[dataset]
    if dataset in ("ucf", "xd"):
        assert saved["per_class_auc"], "per-class AUC missing"


def test_seeds_summarised_and_resumed(public_sets, tmp_path):
    data = public_sets("rtfm", "ucf")
    protocol = get_protocol("rtfm", "ucf")
    inputs = locate_inputs(protocol, data.features, lists_dir=data.lists)
    first = reproduce(protocol, inputs, tmp_path, seeds=2, steps=STEPS, device="cpu")
    aucs = [s.auc for s in first.seeds]
    spec = load_checkpoint(first.seeds[0].checkpoint)["feature_spec"]  # what `vadpipe score` extracts with
    assert spec["backbone"] == "i3d-r50-caffe2" and spec["recipe"] == protocol.recipe
    assert [s.seed for s in first.seeds] == [0, 1] and aucs[0] != aucs[1]
    assert first.summary["auc"] == pytest.approx((np.mean(aucs), np.std(aucs, ddof=1)))
    again = reproduce(protocol, inputs, tmp_path, seeds=2, steps=STEPS, device="cpu")
    assert again.reused == [0, 1] and [s.auc for s in again.seeds] == aucs
    forced = reproduce(protocol, inputs, tmp_path, seeds=1, steps=STEPS, device="cpu", force=True)
    assert forced.reused == [] and forced.seeds[0].auc == pytest.approx(aucs[0])  # seeded: same number
    other = reproduce(protocol, inputs, tmp_path, seeds=1, steps=STEPS + 1, device="cpu")
    assert other.reused == []  # another schedule is another run


def test_missing_features_stop_before_training(public_sets, tmp_path):
    data = public_sets("rtfm", "ucf")
    protocol = get_protocol("rtfm", "ucf")
    gone = ["Arson011_x264_i3d.npy", "Normal_Videos_003_x264_i3d.npy", "Abuse001_x264_i3d.npy"]
    for name in gone:
        os.rename(data.features / name, data.features / (name + ".away"))
    try:
        inputs = locate_inputs(protocol, data.features, lists_dir=data.lists)
        with pytest.raises(FeatureLoadError) as e:
            reproduce(protocol, inputs, tmp_path, seeds=1, steps=STEPS, device="cpu")
    finally:
        for name in gone:
            os.rename(data.features / (name + ".away"), data.features / name)
    msg = str(e.value)
    assert "3 of 1900 feature files" in msg and "nothing was trained" in msg
    assert all(name in msg for name in gone)
    assert not list(tmp_path.glob("seed*"))


def test_inputs_are_located_or_named(public_sets, tmp_path):
    data = public_sets("rtfm", "ucf")
    protocol = get_protocol("rtfm", "ucf")
    with pytest.raises(ConfigError, match="needs ucf-i3d.list .*tianyu0207/RTFM"):
        locate_inputs(protocol, data.features, lists_dir=tmp_path)
    (tmp_path / "list").mkdir()  # lists in a list/ subfolder are found too
    for f in data.lists.iterdir():
        (tmp_path / "list" / f.name).write_bytes(f.read_bytes())
    assert locate_inputs(protocol, data.features, lists_dir=tmp_path).test_list.parent == tmp_path / "list"
    sultani = public_sets("sultani", "ucf")
    with pytest.raises(ConfigError, match="needs each test video's real frame count: give --frames CSV"):
        locate_inputs(get_protocol("sultani", "ucf"), sultani.features, lists_dir=sultani.lists)


def test_cli_prints_the_table(public_sets, tmp_path):
    data = public_sets("rtfm", "shanghai")
    r = CliRunner().invoke(main, ["reproduce", "rtfm", "shanghai", "--features", str(data.features), "--lists",
                                  str(data.lists), "--seeds", "1", "--steps", str(STEPS), "--device", "cpu",
                                  "--set", "lr=0.002", "-q", "-o", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "97.21" in r.output and "rtfm on ShanghaiTech" in r.output and "results:" in r.output
    assert "head settings changed from the row's: lr=0.002" in r.output
    r = CliRunner().invoke(main, ["reproduce", "rtfm", "avenue", "--features", str(data.features)])
    assert r.exit_code == 2 and "known rows" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["reproduce", "--list"])
    assert r.exit_code == 0 and all(f"{m} {d}:" in r.output for m, d in ROWS)


def test_docs_protocol_table_is_the_registry():
    from tests.helpers.paths import REPO
    from vadpipe.pipeline.reproduce.protocols import protocol_table_markdown

    docs = (REPO / "docs" / "reproduce.md").read_text()
    assert protocol_table_markdown() in docs, "docs/reproduce.md is stale: paste protocol_table_markdown()"


@pytest.mark.parametrize("name,where", [("01_0014_i3d.npy", "training set"), ("01_0015_i3d.npy", "test list")])
def test_non_finite_features_stop_before_training(public_sets, tmp_path, name, where):
    """A NaN in a training or a test file stops the run before any checkpoint is written."""
    data = public_sets("rtfm", "shanghai")
    protocol = get_protocol("rtfm", "shanghai")
    inputs = locate_inputs(protocol, data.features, lists_dir=data.lists)
    f = data.features / name
    keep = np.load(f)
    bad = keep.copy()
    bad[0, 0, 0] = np.nan
    np.save(f, bad)
    try:
        with pytest.raises(FeatureLoadError, match=f"{where}.*NaN or Inf"):
            reproduce(protocol, inputs, tmp_path, seeds=1, steps=STEPS, device="cpu")
    finally:
        np.save(f, keep)
    assert not list(tmp_path.glob("seed*/*.pt"))
