"""Backbone-related commands: importing weight files, the 32-segment tool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from click.testing import CliRunner

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from tests.helpers import media
from vadpipe.cli import main
from vadpipe.extractors.c3d import C3D


def test_weights_import_c3d_checks_that_the_file_loads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VADPIPE_C3D_CKPT", raising=False)
    torch.manual_seed(0)
    torch.save(C3D().state_dict(), tmp_path / "c3d.pickle")
    res = CliRunner().invoke(main, ["weights", "import", "c3d", str(tmp_path / "c3d.pickle")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "home" / "weights" / "c3d.pickle").exists() and "c3d: loads" in res.output
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pickle")
    bad = CliRunner().invoke(main, ["weights", "import", "c3d", str(tmp_path / "bad.pickle")])
    assert bad.exit_code == 1 and "does not build" in bad.output


def test_features_segments_writes_sultani_text_files(tmp_path: Path) -> None:
    media.make_video(tmp_path / "v" / "a.mp4", n_frames=80, seed=4)  # 5 clips
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "v"), "--backbone", "tiny", "--random-weights",
                                    "--crops", "1", "--device", "cpu", "--workers", "0", "-q", "-o", str(tmp_path / "f")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["features", "segments", str(tmp_path / "f" / "features.csv"), "-o", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    seg = np.loadtxt(tmp_path / "s" / "a.txt")
    assert seg.shape == (32, 8)
    np.testing.assert_allclose(np.linalg.norm(seg, axis=1), 1.0, atol=1e-5)  # 6 printed decimals


def test_recipes_pick_their_backbone_and_refuse_another(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("VADPIPE_C3D_CKPT", raising=False)
    media.make_video(tmp_path / "v.mp4", n_frames=20, seed=1)
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mp4"), "--preset", "sultani", "--device", "cpu",
                                    "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "vadpipe weights import c3d" in res.output  # c3d chosen; its weights are missing
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mp4"), "--preset", "rtfm-i3d-r50-10crop",
                                    "--backbone", "i3d", "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "made with --backbone i3d-r50" in res.output


def test_rtfm_recipe_runs_the_caffe2_i3d_r50_with_its_geometry(tmp_path: Path) -> None:
    import json

    media.make_video(tmp_path / "v.mp4", n_frames=20, seed=1)
    res = CliRunner().invoke(main, ["extract", str(tmp_path / "v.mp4"), "--preset", "rtfm-i3d-r50-10crop",
                                    "--random-weights", "--crops", "1", "--device", "cpu", "--workers", "0", "-q",
                                    "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "o" / "v_i3d.npy").shape == (1, 1, 2048)
    (run,) = (tmp_path / "o").glob("extract-*.json")
    cfg = json.loads(run.read_text())["config"]
    assert cfg["backbone"] == "i3d-r50-caffe2"
    assert (cfg["preset"]["resize"], cfg["preset"]["crop_order"], cfg["preset"]["interpolation"]) == (
        [256, 340], "gowtham", "lanczos")
    assert cfg["preset"]["value_range"] == [-1.0, 1.0] and cfg["preset"]["mean"] is None  # Gowtham's x*2/255-1
