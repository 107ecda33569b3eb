"""`vadpipe score` keeps what it loaded in memory: the checkpoint is read once per run, each
video's features go from stage one to the head as the array that was written (the files are
still written), no dataset row is made up for a video, and the numbers are the `apply`
path's on the written files."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.tiny_heads import cli as _cli
from tests.helpers.tiny_heads import train_tiny_sultani
from vadpipe.errors import ConfigError, FeatureLoadError
from vadpipe.heads.data import FeatureDataset, load_features
from vadpipe.manifests.datasets import DatasetRow
from vadpipe.manifests.features import read_manifest
from vadpipe.pipeline.extract.runner import extract
from vadpipe.pipeline.extract.sources import discover
from vadpipe.pipeline.score.batch import (
    ScoreOptions,
    checkpoint_recipe,
    score_clip_features,
    score_videos,
    with_recipe_precision,
)
from vadpipe.pipeline.train.apply import head_input, load_head, score_features, score_rows

SPEED = {"device": "cpu", "random_weights": True, "workers": 0, "batch_clips": 2}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A Sultani head (L2-normalised input) trained on tiny-backbone features of 6 videos."""
    return train_tiny_sultani(tmp_path_factory.mktemp("in_memory"), n_videos=6, steps=4)


class FileReads:
    """Every file opened for reading, and every ``torch.load`` of a path, while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.opened: list[Path] = []
        self.torch_loads: list[Path] = []
        real_open, real_load = builtins.open, torch.load

        def spy_open(file, mode="r", *args, **kwargs):
            if isinstance(file, (str, os.PathLike)) and not set(str(mode)) & set("wax+"):
                self.opened.append(Path(file).resolve())
            return real_open(file, mode, *args, **kwargs)

        def spy_load(f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)):
                self.torch_loads.append(Path(f).resolve())
            return real_load(f, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", spy_open)
        monkeypatch.setattr(torch, "load", spy_load)

    def under(self, folder: Path) -> list[Path]:
        """Files read below ``folder``."""
        root = folder.resolve()
        return [p for p in self.opened if root in p.parents]

    def loads_of(self, path: Path) -> int:
        """``torch.load`` calls of ``path``."""
        return self.torch_loads.count(Path(path).resolve())


def _no_dataset_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make building a dataset row or a feature dataset an error."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"a {type(self).__name__} was built")

    monkeypatch.setattr(DatasetRow, "__init__", refuse)
    monkeypatch.setattr(FeatureDataset, "__init__", refuse)


def _apply_path(ckpt: Path, feats_dir: Path) -> dict[str, np.ndarray]:
    """The scores `vadpipe apply` gives for every ``ok`` row of ``feats_dir``, read from the files."""
    loaded = load_head(ckpt, CPU)
    rows = [DatasetRow(r.video, r.feature_path, "normal") for r in read_manifest(feats_dir / "features.csv")
            if r.status == "ok"]
    return score_rows(loaded, rows, feats_dir, CPU)


# ----------------------------------------------------------------------------- one load per run


def test_the_score_command_reads_its_checkpoint_once(trained, tmp_path: Path, monkeypatch) -> None:
    videos = [trained["vids"] / "v1.mp4", trained["vids"] / "v2.mp4", trained["vids"] / "v3.mp4"]
    reads = FileReads(monkeypatch)
    res = _cli(["score", *videos, "--head", trained["ckpt"], "-o", tmp_path / "batch", "--device", "cpu",
                "--random-weights", "--workers", 0, "--no-plots", "-q"])
    assert res.exit_code == 0, res.output
    assert reads.loads_of(trained["ckpt"]) == 1
    assert reads.opened.count(trained["ckpt"].resolve()) == 1  # no other reader of the file either

    streamed = FileReads(monkeypatch)
    res = _cli(["score", "--stream", videos[0], "--head", trained["ckpt"], "-o", tmp_path / "stream", "--device",
                "cpu", "--random-weights"])
    assert res.exit_code == 0, res.output
    assert streamed.loads_of(trained["ckpt"]) == 1


def test_score_videos_uses_a_loaded_head_without_reading_the_file(trained, tmp_path: Path, monkeypatch) -> None:
    loaded = load_head(trained["ckpt"], CPU)
    reads = FileReads(monkeypatch)
    summary = score_videos(discover([trained["vids"] / "v2.mp4"]), loaded, tmp_path, options=ScoreOptions(plots=False),
                           speed=SPEED, progress=False)
    assert summary.exit_code == 0 and reads.loads_of(trained["ckpt"]) == 0
    assert (tmp_path / "events.json").read_text().count(str(trained["ckpt"])) == 1  # still named in the outputs


# ----------------------------------------------------------------------------- features in memory


def test_a_fresh_run_scores_the_written_features_without_reading_them(trained, tmp_path: Path, monkeypatch) -> None:
    jobs = discover([trained["vids"] / "v0.mp4", trained["vids"] / "v3.mp4"])
    feats_dir = tmp_path / "features"
    reads = FileReads(monkeypatch)
    _no_dataset_rows(monkeypatch)
    summary = score_videos(jobs, trained["ckpt"], tmp_path, options=ScoreOptions(plots=False), speed=SPEED,
                           progress=False)
    assert summary.exit_code == 0 and summary.extraction.ok == 2
    assert reads.under(feats_dir) == []  # neither a .npy nor features.csv was read back
    monkeypatch.undo()

    # the files are still written, and the scores are the `apply` path's on them, exactly
    want = _apply_path(trained["ckpt"], feats_dir)
    for v in summary.videos:
        assert (feats_dir / v.feature_path).is_file()
        np.testing.assert_array_equal(v.scores, want[v.video].astype(np.float64))


def test_a_resumed_run_reads_what_it_skipped_and_gives_the_same_scores(trained, tmp_path: Path, monkeypatch) -> None:
    jobs = discover([trained["vids"] / "v1.mp4"])
    first = score_videos(jobs, trained["ckpt"], tmp_path, options=ScoreOptions(plots=False), speed=SPEED,
                         progress=False)
    _no_dataset_rows(monkeypatch)
    reads = FileReads(monkeypatch)
    again = score_videos(jobs, trained["ckpt"], tmp_path, options=ScoreOptions(plots=False), speed=SPEED,
                         progress=False)
    assert again.extraction.skipped == 1
    assert (tmp_path / "features" / again.videos[0].feature_path).resolve() in reads.opened
    np.testing.assert_array_equal(again.videos[0].scores, first.videos[0].scores)


def test_stage_one_hands_each_finished_video_its_written_array(trained, tmp_path: Path) -> None:
    seen: dict[str, tuple[str, np.ndarray | None]] = {}
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    out = tmp_path / "o"
    recipe = checkpoint_recipe(load_head(trained["ckpt"], CPU), speed=SPEED)
    summary = extract(discover([trained["vids"] / "v2.mp4", bad]), out, recipe, progress=False,
                      on_video=lambda row, feats: seen.__setitem__(Path(row.video).name, (row.status, feats)))
    assert summary.exit_code == 1 and seen["bad.mp4"] == ("failed", None)
    (row,) = [r for r in read_manifest(out / "features.csv") if r.status == "ok"]
    status, feats = seen["v2.mp4"]
    written = np.load(out / row.feature_path)
    assert status == "ok" and feats.dtype == np.float32 and feats.shape == written.shape == (5, 1, 8)
    np.testing.assert_array_equal(feats, written)
    # a skipped video (finished by an earlier run) is not handed over: its file is the copy
    seen.clear()
    extract(discover([trained["vids"] / "v2.mp4"]), out, recipe, progress=False,
            on_video=lambda row, feats: seen.__setitem__(Path(row.video).name, (row.status, feats)))
    assert seen == {}


# ----------------------------------------------------------------------------- the head on an array


def test_score_features_is_the_apply_path_on_one_array(trained, tmp_path: Path) -> None:
    loaded = load_head(trained["ckpt"], CPU)
    assert loaded.l2_normalize  # Sultani: the input is L2-normalised per snippet
    feats = np.random.default_rng(0).normal(size=(7, 1, 8)).astype(np.float32)  # [T, crops, D], stage one's layout
    np.save(tmp_path / "v.npy", feats)
    want = score_rows(loaded, [DatasetRow("v", "v.npy", "normal")], tmp_path, CPU)["v"]
    np.testing.assert_array_equal(score_features(loaded, feats.transpose(1, 0, 2), CPU), want)
    np.testing.assert_array_equal(score_clip_features(loaded, feats, CPU), want.astype(np.float64))
    np.testing.assert_array_equal(head_input(loaded, load_features(tmp_path / "v.npy")),
                                  FeatureDataset([DatasetRow("v", "v.npy", "normal")], tmp_path, mode="eval",
                                                 l2_normalize=True).features(0))
    with pytest.raises(ConfigError, match=r"trained on 8-D features \(tiny\); these are 4-D"):
        score_features(loaded, np.zeros((1, 3, 4), np.float32), CPU)
    with pytest.raises(FeatureLoadError, match="T >= 1"):
        score_features(loaded, np.zeros((1, 0, 8), np.float32), CPU)


def test_recipe_precision_is_replaced_in_memory_only(trained) -> None:
    loaded = load_head(trained["ckpt"], CPU)
    before = trained["ckpt"].read_bytes()
    bf16 = with_recipe_precision(loaded, "bf16")
    assert bf16.feature_spec["extract"]["config"]["precision"] == "bf16" and bf16.head is loaded.head
    assert loaded.feature_spec["extract"]["config"]["precision"] == "fp32"  # the original is not changed
    assert trained["ckpt"].read_bytes() == before
    with pytest.raises(ConfigError, match="precision must be one of"):
        with_recipe_precision(loaded, "fp8")
    loaded.feature_spec.pop("extract")
    with pytest.raises(ConfigError, match="records no extraction recipe"):
        with_recipe_precision(loaded, "bf16")
