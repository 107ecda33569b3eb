"""Any legal file name survives stage one and stage two, in both layouts: feature paths are
never passed through ``str.format`` (only the last ``{k}`` of a per-crop pattern is replaced)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from tests.helpers import media
from vadpipe.cli import main
from vadpipe.heads.data import load_features
from vadpipe.manifests.datasets import from_features_manifest, read_dataset, write_dataset
from vadpipe.manifests.features import crop_file, read_manifest
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.runner import extract
from vadpipe.pipeline.extract.sources import discover

NAMES = ["brace{1}", "a{k}", "{0}{}", "100%d %s", "it's \"q\"", "-dash", "new\nline"]
CROPS = 5


def test_crop_file_replaces_only_the_last_token() -> None:
    assert crop_file("brace{1}__{k}.npy", 3) == "brace{1}__3.npy"
    assert crop_file("a{k}__{k}.npy", 0) == "a{k}__0.npy"
    assert crop_file("plain{0}.npy", 2) == "plain{0}.npy"


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("names") / "vids"
    for i, name in enumerate(NAMES):
        media.make_video(root / f"{name}.mp4", n_frames=32 + 16 * (i % 2), seed=i)
    return root


@pytest.mark.parametrize("layout", ["per-crop", "single"])
def test_odd_names_extract_load_and_train(videos: Path, tmp_path: Path, layout: str) -> None:
    out = tmp_path / "feats"
    cfg = ExtractConfig(backbone="tiny", crops=CROPS, layout=layout, random_weights=True, device="cpu", workers=0)
    summary = extract(discover([videos]), out, cfg, progress=False)
    assert summary.failed == 0, summary.failures
    rows = read_manifest(out / "features.csv")
    assert sorted(Path(r.video).stem for r in rows) == sorted(NAMES)
    # a dataset CSV made from the manifest, saved and read back
    labels = {r.video: "anomalous" if i % 2 else "normal" for i, r in enumerate(rows)}
    ds = [replace(r, split="val" if i < 2 else "train")
          for i, r in enumerate(from_features_manifest(out / "features.csv", labels, relative_to=out))]
    write_dataset(out / "ds.csv", ds)
    back = read_dataset(out / "ds.csv")
    assert [r.feature_path for r in back] == [r.feature_path for r in ds]
    for fr, dr in zip(rows, back):
        files = fr.feature_files(out)
        assert all(f.is_file() for f in files) and len(files) == (CROPS if layout == "per-crop" else 1)
        want = (np.stack([np.load(f) for f in files]) if layout == "per-crop"
                else np.load(files[0]).transpose(1, 0, 2))
        np.testing.assert_array_equal(load_features(dr, out), want)
        assert Path(dr.crop_path(0, out)) == files[0]
    # ... and a head trained on it (the training entry point reads the files by their names)
    res = CliRunner().invoke(main, ["train", "--train", str(out / "ds.csv"), "--head", "sultani", "--steps", "2",
                                    "--eval-every", "1", "--device", "cpu", "-o", str(tmp_path / "run"), "-q",
                                    "--set", "batch_size=2"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "best.pt").is_file()
    again = extract(discover([videos]), out, cfg, progress=False)  # and resume finds every file again
    assert (again.ok, again.skipped) == (0, len(NAMES))
