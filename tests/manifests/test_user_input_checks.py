"""Datasets checked before training or scoring; output folders checked before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vadpipe.errors import ConfigError, FeatureLoadError, ManifestError
from vadpipe.heads.data import MAX_NAMED, check_dataset_features, feature_info, load_features
from vadpipe.manifests.atomic import TMP_MARKER, ensure_writable_dir, ensure_writable_file
from vadpipe.manifests.datasets import DatasetRow, check_labels


def _rows(tmp_path: Path, shapes: list[tuple[int, ...]], dtype=np.float32) -> list[DatasetRow]:
    rows = []
    for i, shape in enumerate(shapes):
        np.save(tmp_path / f"v{i}.npy", np.ones(shape, dtype))
        rows.append(DatasetRow(f"v{i}", f"v{i}.npy", "anomalous" if i % 2 else "normal"))
    return rows


# ----------------------------------------------------------------------------- labels


def test_check_labels() -> None:
    rows = [DatasetRow("a", "a.npy", "normal"), DatasetRow("b", "b.npy", "anomalous")]
    check_labels(rows)
    with pytest.raises(ManifestError, match="the training set has no videos"):
        check_labels([])
    with pytest.raises(ManifestError, match=r"the val set has only normal videos \(1: a\).*label some videos 'anomalous'"):
        check_labels(rows[:1], "val set")
    check_labels(rows[:1], both_classes=False)


# ----------------------------------------------------------------------------- features


def test_feature_info_matches_load_features_on_every_layout(tmp_path: Path) -> None:
    np.save(tmp_path / "tnd.npy", np.zeros((5, 3, 4), np.float32))
    np.save(tmp_path / "td.npy", np.zeros((5, 4), np.float64))
    for k in range(2):
        np.save(tmp_path / f"pc__{k}.npy", np.zeros((5, 4), np.float32))
    np.savetxt(tmp_path / "s.txt", np.zeros((32, 6)))
    for name in ("tnd.npy", "td.npy", "pc__{k}.npy", "s.txt"):
        info = feature_info(str(tmp_path / name))
        assert (info.crops, info.snippets, info.dim) == load_features(str(tmp_path / name)).shape, name
        assert info.nonfinite == 0


def test_feature_info_counts_nan_inf_and_float32_overflow(tmp_path: Path) -> None:
    a = np.zeros((300, 2, 4), np.float64)
    a[0, 0, 0], a[150, 1, 2], a[299, 0, 3], a[10, 0, 0] = np.nan, np.inf, -np.inf, 1e300  # 1e300 is Inf in float32
    np.save(tmp_path / "a.npy", a)
    assert feature_info(str(tmp_path / "a.npy")).nonfinite == 4
    assert feature_info(str(tmp_path / "a.npy"), values=False).nonfinite == 0
    np.save(tmp_path / "i.npy", np.zeros((3, 4), np.int16))
    assert feature_info(str(tmp_path / "i.npy")).nonfinite == 0


def test_check_dataset_features_passes_a_consistent_dataset(tmp_path: Path) -> None:
    rows = _rows(tmp_path, [(7, 2, 8), (9, 2, 8), (3, 2, 8)])
    assert check_dataset_features(rows, tmp_path) == {"crops": 2, "dim": 8}


def test_mixed_feature_sizes_name_the_odd_videos(tmp_path: Path) -> None:
    rows = _rows(tmp_path, [(7, 2, 8), (9, 2, 8), (3, 2, 16), (4, 2, 8)])
    with pytest.raises(FeatureLoadError) as info:
        check_dataset_features(rows, tmp_path, what="training set")
    assert str(info.value).startswith("the videos of the training set mix feature sizes: 3 of 4 have 2 crops x 8-D "
                                      "features, 1 other(s) not: v2 (v2.npy: 2 crops x 16-D)")


def test_mixed_crop_counts_name_the_odd_videos(tmp_path: Path) -> None:
    rows = _rows(tmp_path, [(7, 10, 8), (9, 1, 8), (3, 10, 8)])
    with pytest.raises(FeatureLoadError, match=r"mix crop counts: 2 of 3 have 10 crops x 8-D features, 1 other\(s\) "
                                               r"not: v1 \(v1.npy: 1 crops x 8-D\)"):
        check_dataset_features(rows, tmp_path)


def test_many_offending_rows_are_counted_and_the_first_named(tmp_path: Path) -> None:
    rows = _rows(tmp_path, [(4, 1, 3)] * 9)
    for r in rows[1:]:
        a = np.load(tmp_path / r.feature_path)
        a[0, 0, 0] = np.nan
        np.save(tmp_path / r.feature_path, a)
    with pytest.raises(FeatureLoadError) as info:
        check_dataset_features(rows, tmp_path)
    text = str(info.value)
    assert text.startswith("8 of 9 videos of the dataset have NaN or Inf feature values: v1 (v1.npy: 1 NaN/Inf value(s))")
    assert f"; and {8 - MAX_NAMED} more;" in text and "v5" in text and "v6" not in text
    check_dataset_features(rows, tmp_path, values=False)  # shapes only


def test_missing_and_unreadable_files_are_listed_together(tmp_path: Path) -> None:
    rows = _rows(tmp_path, [(4, 1, 3)] * 3)
    (tmp_path / "v0.npy").unlink()
    (tmp_path / "v2.npy").write_text("junk")
    with pytest.raises(FeatureLoadError) as info:
        check_dataset_features(rows, tmp_path)
    text = str(info.value)
    assert text.startswith("2 of 3 videos of the dataset have missing or unreadable feature files: v0: feature file "
                           "not found")
    assert "v2: cannot read feature file" in text and "\n" not in text


def test_an_empty_dataset_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="has no videos"):
        check_dataset_features([], tmp_path)


# ----------------------------------------------------------------------------- output folders


def test_ensure_writable_dir_creates_and_probes(tmp_path: Path) -> None:
    out = ensure_writable_dir(tmp_path / "a" / "b")
    assert out == tmp_path / "a" / "b" and out.is_dir() and not any(out.iterdir())  # the probe is removed
    assert ensure_writable_dir(out) == out
    assert not [p for p in tmp_path.rglob(f"*{TMP_MARKER}*")]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda t: "/proc/vadpipe-forbidden/x", "cannot create output folder /proc/vadpipe-forbidden/x: "),
        (lambda t: (t / "f").write_text("x") and t / "f" / "sub", "cannot create output folder"),
        (lambda t: (t / "f").write_text("x") and t / "f", "is a file, not a folder"),
        (lambda t: "/proc/self", "cannot write to output folder /proc/self: "),
    ],
)
def test_ensure_writable_dir_names_the_folder_and_the_reason(tmp_path: Path, make, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ensure_writable_dir(make(tmp_path))
    assert message in str(info.value) and "give a folder" in str(info.value)


def test_ensure_writable_file(tmp_path: Path) -> None:
    assert ensure_writable_file(tmp_path / "new" / "x.csv") == tmp_path / "new" / "x.csv"
    assert (tmp_path / "new").is_dir()
    with pytest.raises(ConfigError, match="is a folder"):
        ensure_writable_file(tmp_path / "new")
    with pytest.raises(ConfigError, match="cannot create output folder /proc/nope"):
        ensure_writable_file("/proc/nope/x.csv")
