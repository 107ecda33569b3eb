"""Dataset CSVs, community list import, feature loading, resampling and balanced batching."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers.shared_data import shared_fixture
from vadpipe.errors import ConfigError, ManifestError
from vadpipe.heads.data import (
    BalancedBatcher,
    BalancedBatchSampler,
    FeatureDataset,
    FeatureLoadError,
    l2_normalize_segments,
    load_features,
    resample_segments,
    segment_bounds,
    temporal_view,
    uniform_extract_indices,
)
from vadpipe.manifests.atomic import TMP_MARKER
from vadpipe.manifests.datasets import (
    DatasetRow,
    from_features_manifest,
    import_list,
    import_rtfm_list,
    import_xd_list,
    read_dataset,
    split_train_val,
    video_key,
    write_dataset,
    xd_class,
)
from vadpipe.manifests.features import FeatureRow, write_manifest

# ----------------------------------------------------------------------------- dataset CSV


def test_dataset_roundtrip_and_name(tmp_path: Path) -> None:
    rows = [
        DatasetRow("/v/Abuse001_x264.mp4", "feats/Abuse001_x264_i3d.npy", "anomalous", "train", "Abuse"),
        DatasetRow("Normal_Videos001_x264", "/abs/n__{k}.npy", "normal", "", ""),
    ]
    write_dataset(tmp_path / "ds.csv", rows)
    assert not [p for p in tmp_path.iterdir() if TMP_MARKER in p.name]
    back = read_dataset(tmp_path / "ds.csv")
    assert back == rows
    assert (tmp_path / "ds.csv").read_text().splitlines()[0] == "video,feature_path,label,split,class"
    assert back[0].name == "Abuse001_x264" and back[0].target == 1 and back[1].target == 0
    assert back[0].resolve(tmp_path) == str(tmp_path / "feats/Abuse001_x264_i3d.npy")
    assert back[1].resolve(tmp_path) == "/abs/n__{k}.npy" and back[1].per_crop


def test_read_dataset_optional_columns_absent(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("video,feature_path,label\na,a.npy,normal\n")
    assert read_dataset(tmp_path / "d.csv") == [DatasetRow("a", "a.npy", "normal")]


@pytest.mark.parametrize(
    "body, message",
    [
        ("video,feature_path\na,a.npy\n", "missing column(s) label"),
        ("video,feature_path,label\na,a.npy,normal\nb,b.npy,weird\n", ":3: label 'weird'"),
        ("video,feature_path,label,split\na,a.npy,normal,holdout\n", ":2: split 'holdout'"),
        ("video,feature_path,label\na,a.npy,normal\na,b.npy,normal\n", ":3: video 'a' already listed on line 2"),
        ("video,feature_path,label\na,,normal\n", ":2: empty feature_path"),
    ],
)
def test_read_dataset_errors_name_the_line(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "d.csv").write_text(body)
    with pytest.raises(ManifestError) as e:
        read_dataset(tmp_path / "d.csv")
    assert message in str(e.value)


def test_write_dataset_rejects_bad_rows(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="label"):
        write_dataset(tmp_path / "d.csv", [DatasetRow("a", "a.npy", "abnormal")])
    assert not (tmp_path / "d.csv").exists()


def test_video_key() -> None:
    assert video_key("/data/UCF/Abuse028_x264.mp4") == "Abuse028_x264"
    assert video_key(r"G:\x\Abuse028_x264.MP4") == "Abuse028_x264"
    assert video_key("Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6") == "Bad.Boys.1995__#01-11-55_01-12-40_label_G-B2-B6"
    assert video_key("v=U6MC8JJJZSY__#1_label_G-0-0.mp4") == "v=U6MC8JJJZSY__#1_label_G-0-0"


# ----------------------------------------------------------------------------- from features.csv


def _manifest(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    rows = [
        FeatureRow("/videos/Abuse001_x264.mp4", feature_path="Abuse001_x264_i3d.npy", status="ok", crops=10),
        FeatureRow("/videos/Normal_Videos001_x264.mp4", feature_path="Normal_Videos001_x264__{k}.npy",
                   layout="per-crop", status="ok", crops=5),
        FeatureRow("/videos/Broken.mp4", status="failed", error="VideoDecodeError: x"),
    ]
    write_manifest(out / "features.csv", rows)
    return out / "features.csv"


def test_from_features_manifest_dict_labels(tmp_path: Path) -> None:
    csv = _manifest(tmp_path)
    rows = from_features_manifest(
        csv, {"Abuse001_x264": ("anomalous", "Abuse"), "/videos/Normal_Videos001_x264.mp4": 0}, split="train"
    )
    assert [(r.video, r.label, r.class_name, r.split) for r in rows] == [
        ("/videos/Abuse001_x264.mp4", "anomalous", "Abuse", "train"),
        ("/videos/Normal_Videos001_x264.mp4", "normal", "", "train"),
    ]
    assert rows[0].feature_path == str(csv.parent.resolve() / "Abuse001_x264_i3d.npy")
    assert rows[1].feature_path.endswith("Normal_Videos001_x264__{k}.npy")
    rel = from_features_manifest(csv, {"Abuse001_x264": 1, "Normal_Videos001_x264": 0}, relative_to=tmp_path)
    assert rel[0].feature_path == "out/Abuse001_x264_i3d.npy"


def test_from_features_manifest_labels_csv_and_missing(tmp_path: Path) -> None:
    csv = _manifest(tmp_path)
    (tmp_path / "labels.csv").write_text("video,label,class\nAbuse001_x264,anomalous,Abuse\n")
    with pytest.raises(ManifestError, match="no label for /videos/Normal_Videos001_x264.mp4"):
        from_features_manifest(csv, tmp_path / "labels.csv")
    rows = from_features_manifest(csv, tmp_path / "labels.csv", missing="skip")
    assert [(r.name, r.label, r.class_name) for r in rows] == [("Abuse001_x264", "anomalous", "Abuse")]
    (tmp_path / "bad.csv").write_text("video,label\nAbuse001_x264,maybe\n")
    with pytest.raises(ManifestError, match="bad.csv:2"):
        from_features_manifest(csv, tmp_path / "bad.csv")


# ----------------------------------------------------------------------------- RTFM lists


def test_import_rtfm_ucf_train_list() -> None:
    rows = import_rtfm_list(shared_fixture("rtfm_lists/ucf-i3d.list"), dataset="ucf")
    assert len(rows) == 1610
    assert sum(r.is_anomalous for r in rows) == 810
    assert all(r.is_anomalous for r in rows[:810]) and not any(r.is_anomalous for r in rows[810:])
    assert rows[0] == DatasetRow("Abuse001_x264", "Abuse001_x264_i3d.npy", "anomalous", "train", "Abuse")
    assert rows[810].video == "Normal_Videos001_x264" and rows[810].class_name == "Normal"
    assert all("\r" not in r.video and "\\" not in r.feature_path for r in rows)
    classes = Counter(r.class_name for r in rows)
    assert classes["Normal"] == 800 and len(classes) == 14 and classes["RoadAccidents"] == 127
    assert len({r.video for r in rows}) == 1610


def test_import_rtfm_ucf_test_list_with_root() -> None:
    rows = import_rtfm_list(shared_fixture("rtfm_lists/ucf-i3d-test.list"), dataset="ucf", feature_root="/feats/UCF_Test")
    assert len(rows) == 290 and sum(r.is_anomalous for r in rows) == 140
    assert {r.split for r in rows} == {"test"}
    assert rows[0].feature_path == "/feats/UCF_Test/Abuse028_x264_i3d.npy"
    assert rows[140].video.startswith("Normal_Videos_")


def test_import_rtfm_ucf_train_matches_anomaly_train_txt() -> None:
    rows = import_rtfm_list(shared_fixture("rtfm_lists/ucf-i3d.list"), dataset="ucf")
    names = {video_key(line) for line in shared_fixture("ucf_crime/Anomaly_Train.txt").read_text().split()}
    assert {r.video for r in rows} == names


def test_import_rtfm_shanghai_lists_cross_checked_with_masks() -> None:
    masks = shared_fixture("rtfm_lists/test_frame_mask")
    train = import_rtfm_list(shared_fixture("rtfm_lists/shanghai-i3d-train-10crop.list"), dataset="shanghai", mask_dir=masks)
    test = import_rtfm_list(shared_fixture("rtfm_lists/shanghai-i3d-test-10crop.list"), dataset="shanghai", mask_dir=masks)
    assert (len(train), sum(r.is_anomalous for r in train)) == (238, 63)
    assert (len(test), sum(r.is_anomalous for r in test)) == (199, 44)
    assert train[0].video == "01_0014" and train[0].feature_path == "01_0014_i3d.npy"
    ids = shared_fixture("rtfm_lists/SH_Test.txt").read_text().split()
    assert {r.video for r in test} == set(ids)


def test_import_rtfm_list_rule_and_name_disagree(tmp_path: Path) -> None:
    lst = tmp_path / "mine.list"
    lst.write_bytes(b"C:\\f\\Abuse001_x264_i3d.npy\r\nC:\\f\\Normal_Videos001_x264_i3d.npy\r\n/x/Arson001_x264_i3d.npy\r\n")
    with pytest.raises(ManifestError, match=r"mine.list:2: 'Normal_Videos001_x264' is entry 2.*labels anomalous"):
        import_rtfm_list(lst, dataset="ucf", n_anomalous=2)
    with pytest.raises(ManifestError, match=r"mine.list:3: 'Arson001_x264'.*labels normal"):
        import_rtfm_list(lst, dataset="ucf", n_anomalous=1)
    with pytest.raises(ManifestError, match="3 entries, but the ucf train rule"):
        import_rtfm_list(lst, dataset="ucf")


def test_import_rtfm_shanghai_mask_disagreement(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    np.save(tmp_path / "masks" / "01_0002.npy", np.ones(20, np.uint8))
    lst = tmp_path / "sh.list"
    lst.write_text("/a/01_0001_i3d.npy\n/a/01_0002_i3d.npy\n")
    with pytest.raises(ManifestError, match="sh.list:1: '01_0001'.*has no frame mask"):
        import_rtfm_list(lst, dataset="shanghai", n_anomalous=1, mask_dir=tmp_path / "masks")
    rows = import_rtfm_list(lst, dataset="shanghai", n_anomalous=1)  # no masks: rule only
    assert [r.label for r in rows] == ["anomalous", "normal"]


# ----------------------------------------------------------------------------- XD lists


def test_import_xd_train_list() -> None:
    rows = import_xd_list(shared_fixture("xd_violence/rgb.list"), feature_root="/xd/RGB")
    assert len(rows) == 3954
    labels = Counter(r.label for r in rows)
    assert labels == {"anomalous": 1905, "normal": 2049}
    assert rows[0].video == "Bad.Boys.1995__#00-26-51_00-27-53_label_B2-0-0"
    assert rows[0].feature_path == "/xd/RGB/Bad.Boys.1995__#00-26-51_00-27-53_label_B2-0-0__{k}.npy"
    assert rows[0].class_name == "B2" and rows[-1].class_name == "A" and rows[-1].label == "normal"
    assert {r.split for r in rows} == {"train"}


def test_import_xd_test_list() -> None:
    rows = import_xd_list(shared_fixture("xd_violence/rgb_test.list"))
    assert len(rows) == 800 and sum(r.is_anomalous for r in rows) == 500
    assert all(r.is_anomalous for r in rows[:500]) and {r.split for r in rows} == {"test"}
    assert rows[0].class_name == "G-B2-B6" and rows[0].feature_path.endswith("label_G-B2-B6__{k}.npy")


def test_import_xd_list_errors(tmp_path: Path) -> None:
    lst = tmp_path / "rgb.list"
    lst.write_text("/a/v1_label_A__0.npy\n/a/v1_label_A__2.npy\n")
    with pytest.raises(ManifestError, match="crops \\[0, 2\\]"):
        import_xd_list(lst)
    lst.write_text("/a/v1_label_A__0.npy\n/a/v2_label_A__0.npy\n/a/v1_label_A__1.npy\n")
    with pytest.raises(ManifestError, match="rgb.list:3: crops of 'v1_label_A' are not on consecutive lines"):
        import_xd_list(lst)
    lst.write_text("/a/v1.npy\n")
    with pytest.raises(ManifestError, match="rgb.list:1"):
        import_xd_list(lst)
    assert xd_class("x_label_B1-B2-0") == "B1-B2" and xd_class("nolabel") == ""


# ----------------------------------------------------------------------------- split


def _rows(n_norm: int, n_abn: int) -> list[DatasetRow]:
    return [DatasetRow(f"n{i:03d}", f"n{i}.npy", "normal") for i in range(n_norm)] + [
        DatasetRow(f"a{i:03d}", f"a{i}.npy", "anomalous") for i in range(n_abn)
    ]


def test_split_train_val_stratified_and_deterministic() -> None:
    rows = _rows(95, 42)
    train, val = split_train_val(rows, 0.1, seed=3)
    assert Counter(r.label for r in val) == {"normal": 10, "anomalous": 4}  # round(9.5) = 10, round(4.2) = 4
    assert {r.video for r in train} | {r.video for r in val} == {r.video for r in rows}
    assert not {r.video for r in train} & {r.video for r in val}
    assert {r.split for r in train} == {"train"} and {r.split for r in val} == {"val"}
    again = split_train_val(list(reversed(rows)), 0.1, seed=3)
    assert {r.video for r in again[1]} == {r.video for r in val}  # input order does not matter
    assert [r.video for r in train] == [r.video for r in rows if r.video not in {v.video for v in val}]
    other = split_train_val(rows, 0.1, seed=4)[1]
    assert {r.video for r in other} != {r.video for r in val}


def test_split_train_val_small_classes() -> None:
    train, val = split_train_val(_rows(3, 1), 0.1)
    assert Counter(r.label for r in val) == {"normal": 1}  # at least one of 3, never the single anomalous
    assert split_train_val(_rows(3, 2), 0.0)[1] == []
    with pytest.raises(ValueError):
        split_train_val(_rows(3, 2), 1.0)


# ----------------------------------------------------------------------------- loading


def test_load_single_file_layouts(tmp_path: Path) -> None:
    a = np.arange(7 * 3 * 4, dtype=np.float64).reshape(7, 3, 4)  # [T, N, D]
    np.save(tmp_path / "v_i3d.npy", a)
    out = load_features(DatasetRow("v", "v_i3d.npy", "normal"), tmp_path)
    assert out.dtype == np.float32 and out.shape == (3, 7, 4) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, a.transpose(1, 0, 2))
    np.save(tmp_path / "one.npy", a[:, 0])
    out = load_features(tmp_path / "one.npy")
    assert out.shape == (1, 7, 4)
    np.testing.assert_array_equal(out[0], a[:, 0])


def test_load_per_crop_files(tmp_path: Path) -> None:
    crops = [np.full((6, 4), k, np.float32) for k in range(5)]
    for k, c in enumerate(crops):
        np.save(tmp_path / f"vid.x__{k}.npy", c)
    out = load_features(DatasetRow("vid.x", "vid.x__{k}.npy", "anomalous"), tmp_path)
    assert out.shape == (5, 6, 4)
    np.testing.assert_array_equal(out[:, 0, 0], np.arange(5))
    np.save(tmp_path / "bad__0.npy", np.zeros((6, 4)))
    np.save(tmp_path / "bad__1.npy", np.zeros((5, 4)))
    with pytest.raises(FeatureLoadError, match="disagree"):
        load_features(str(tmp_path / "bad__{k}.npy"))
    with pytest.raises(FeatureLoadError, match="no per-crop feature files"):
        load_features(str(tmp_path / "nothing__{k}.npy"))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FeatureLoadError, match="not found"):
        load_features(tmp_path / "missing.npy")
    np.save(tmp_path / "empty.npy", np.zeros((0, 3, 4), np.float32))
    with pytest.raises(FeatureLoadError, match="T = 0"):
        load_features(tmp_path / "empty.npy")
    np.save(tmp_path / "flat.npy", np.zeros(5, np.float32))
    with pytest.raises(FeatureLoadError, match="shape"):
        load_features(tmp_path / "flat.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an npy")
    with pytest.raises(FeatureLoadError, match="cannot read"):
        load_features(tmp_path / "junk.npy")


def test_load_sultani_c3d_text_samples() -> None:
    folder = shared_fixture("ucf_crime/SampleVideos")
    for name in ("Explosion008_x264.txt", "Normal_Videos_006_x264.txt"):
        out = load_features(folder / name)
        assert out.shape == (1, 32, 4096) and out.dtype == np.float32
        assert (out >= 0).all()
        np.testing.assert_allclose(np.linalg.norm(out[0], axis=1), 1.0, atol=1e-3)
        np.testing.assert_array_equal(resample_segments(out), out)  # already 32 segments


# ----------------------------------------------------------------------------- resampling


def _rtfm_process_feat(feat: np.ndarray, length: int) -> np.ndarray:
    """Naive transliteration of RTFM ``utils.process_feat`` (reference for the tests)."""
    new = np.zeros((length, feat.shape[1]), dtype=np.float32)
    r = np.linspace(0, len(feat), length + 1).astype(int)
    for i in range(length):
        if r[i] != r[i + 1]:
            new[i, :] = np.mean(feat[r[i]:r[i + 1], :], 0)
        else:
            new[i, :] = feat[r[i], :]
    return new


def _sultani_matlab(feat: np.ndarray, n: int = 32) -> np.ndarray:
    """Sultani's MATLAB loop with 1-based indices kept (reference for the tests)."""
    t = feat.shape[0]
    shots = [int(np.floor(1 + i * (t - 1) / n + 0.5)) for i in range(n + 1)]
    out = []
    for i in range(n):
        ss, ee = shots[i], shots[i + 1] - 1
        out.append(feat[ss - 1] if ee < ss else feat[ss - 1:ee].mean(0))
    return np.stack(out)


@pytest.mark.parametrize("t", [1, 5, 31, 32, 33, 64, 100, 517])
def test_resample_matches_rtfm_loop(t: int) -> None:
    rng = np.random.default_rng(t)
    feat = rng.standard_normal((t, 8)).astype(np.float32)
    np.testing.assert_array_equal(resample_segments(feat, 32), _rtfm_process_feat(feat, 32))
    crops = rng.standard_normal((3, t, 8)).astype(np.float32)  # [N, T, D]
    got = resample_segments(crops, 32)
    assert got.shape == (3, 32, 8) and got.dtype == np.float32
    for k in range(3):
        np.testing.assert_allclose(got[k], _rtfm_process_feat(crops[k], 32), rtol=1e-6, atol=1e-6)
    tg = resample_segments(torch.from_numpy(crops), 32)
    assert isinstance(tg, torch.Tensor)
    np.testing.assert_allclose(tg.numpy(), got, rtol=1e-6, atol=1e-6)


def test_resample_hand_cases() -> None:
    t32 = np.arange(32 * 2, dtype=np.float32).reshape(32, 2)
    np.testing.assert_array_equal(resample_segments(t32), t32)  # identity
    t64 = np.arange(64, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(resample_segments(t64)[:, 0], np.arange(32) * 2 + 0.5)  # mean of pairs
    t5 = np.arange(5, dtype=np.float32)[:, None]
    out = resample_segments(t5)[:, 0]
    # bins floor(i*5/32): no averaging, every snippet repeated 6 or 7 times, in order
    assert out.tolist() == [0.0] * 7 + [1.0] * 6 + [2.0] * 7 + [3.0] * 6 + [4.0] * 6
    with pytest.raises(ValueError, match="T must be >= 1"):
        resample_segments(np.zeros((0, 4), np.float32))
    assert segment_bounds(64)[0] == (0, 2)


@pytest.mark.parametrize("t", [1, 5, 32, 33, 70, 1000])
def test_resample_sultani_scheme(t: int) -> None:
    feat = np.random.default_rng(t).standard_normal((t, 6))
    np.testing.assert_allclose(resample_segments(feat, 32, scheme="sultani"), _sultani_matlab(feat), rtol=1e-12)


def test_l2_normalize_segments() -> None:
    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(l2_normalize_segments(x), [[0.6, 0.8], [0.0, 0.0]])
    np.testing.assert_allclose(l2_normalize_segments(torch.from_numpy(x)).numpy(), [[0.6, 0.8], [0.0, 0.0]])


# ----------------------------------------------------------------------------- dataset & batching


def _feature_set(tmp_path: Path, n_norm: int = 5, n_abn: int = 4) -> list[DatasetRow]:
    rows = []
    for i in range(n_norm + n_abn):
        t = 20 + 7 * i
        a = np.full((t, 2, 3), float(i), np.float32)  # [T, N, D], value = video index
        np.save(tmp_path / f"v{i}.npy", a)
        rows.append(DatasetRow(f"v{i}", f"v{i}.npy", "normal" if i < n_norm else "anomalous"))
    return rows


def test_feature_dataset_modes(tmp_path: Path) -> None:
    rows = _feature_set(tmp_path)
    train = FeatureDataset(rows, tmp_path, mode="train")
    x, y = train[6]
    assert x.shape == (2, 32, 3) and x.dtype == torch.float32 and float(y) == 1.0
    assert train.labels == [0] * 5 + [1] * 4 and train.names[0] == "v0"
    ev = FeatureDataset(rows, tmp_path, mode="eval")
    x, y = ev[1]
    assert x.shape == (2, 27, 3) and float(y) == 0.0
    cached = FeatureDataset(rows, tmp_path, cache=True)
    a, _ = cached[2]
    a += 1  # callers cannot corrupt the cache
    assert float(cached[2][0].max()) == 2.0 and len(cached._cache) == 1
    assert len(FeatureDataset(rows, tmp_path)._cache) == 0


def test_feature_dataset_temporal_views(tmp_path: Path) -> None:
    """Training items are temporal_view of the loaded features, for each temporal mode and
    resampling scheme, on numpy and torch alike. Catches: the scheme dropped (Sultani's
    MATLAB bins silently replaced by RTFM's), uniform sampling skipped or applied in eval."""
    rng = np.random.default_rng(3)
    feat = rng.random((45, 2, 3), dtype=np.float32)
    np.save(tmp_path / "r.npy", feat)
    rows = [DatasetRow("r", "r.npy", "normal")]
    per_snippet = np.swapaxes(feat, 0, 1)  # [N, T, D]
    sultani = FeatureDataset(rows, tmp_path, mode="train", n_segments=8, scheme="sultani").features(0)
    np.testing.assert_allclose(sultani, resample_segments(per_snippet, 8, scheme="sultani"), rtol=1e-6)
    assert not np.allclose(sultani, resample_segments(per_snippet, 8, scheme="rtfm"))
    uniform = FeatureDataset(rows, tmp_path, mode="train", n_segments=10, temporal="uniform").features(0)
    np.testing.assert_array_equal(uniform, per_snippet[:, uniform_extract_indices(45, 10)])
    assert FeatureDataset(rows, tmp_path, mode="eval", temporal="uniform").features(0).shape == (2, 45, 3)
    t = torch.from_numpy(per_snippet)
    assert torch.equal(temporal_view(t, "uniform", 10), torch.from_numpy(uniform))
    assert torch.allclose(temporal_view(t, "segments", 8, "sultani"), torch.from_numpy(sultani), atol=1e-6)
    assert temporal_view(t, "full", 10) is t
    with pytest.raises(ValueError, match="temporal"):
        temporal_view(t, "nope", 10)


def test_balanced_batch_sampler_deterministic_without_replacement() -> None:
    labels = [0] * 7 + [1] * 5
    s1 = BalancedBatchSampler(labels, 2, seed=11, num_batches=6)
    s2 = BalancedBatchSampler(labels, 2, generator=torch.Generator().manual_seed(11), num_batches=6)
    b1, b2 = list(s1), list(s2)
    assert b1 == b2 and len(b1) == 6
    assert list(BalancedBatchSampler(labels, 2, seed=12, num_batches=6)) != b1
    for b in b1:
        assert all(labels[i] == 0 for i in b[:2]) and all(labels[i] == 1 for i in b[2:])
    # normal: 7 // 2 = 3 batches per permutation; anomalous: 5 // 2 = 2 (rest dropped)
    normal_epoch = [i for b in b1[:3] for i in b[:2]]
    abn_epoch = [i for b in b1[:2] for i in b[2:]]
    assert len(set(normal_epoch)) == 6 and len(set(abn_epoch)) == 4
    assert len(BalancedBatchSampler(labels, 2)) == 3  # max(7, 5) // 2
    with pytest.raises(ConfigError, match="fewer than batch_size"):
        BalancedBatchSampler(labels, 6)


def test_balanced_batcher_yields_pairs(tmp_path: Path) -> None:
    rows = _feature_set(tmp_path)
    ds = FeatureDataset(rows, tmp_path, mode="train")
    pairs = list(BalancedBatcher(ds, 2, seed=5))
    again = list(BalancedBatcher(ds, 2, seed=5))
    assert len(pairs) == 2
    for (n, a), (n2, a2) in zip(pairs, again):
        assert n.shape == a.shape == (2, 2, 32, 3)
        assert torch.equal(n, n2) and torch.equal(a, a2)
        assert (n < 5).all() and (a >= 5).all()  # values are video indices
    with pytest.raises(ValueError, match="'train' mode"):
        BalancedBatcher(FeatureDataset(rows, tmp_path, mode="eval"), 2)
    with pytest.raises(ValueError, match="temporal='segments'"):  # padded bags would lose their masks here
        BalancedBatcher(FeatureDataset(rows, tmp_path, mode="train", temporal="full"), 2)


def test_import_ucf_video_lists(tmp_path) -> None:
    """Anomaly_Train.txt / Anomaly_Test.txt: labels from the folder, cross-checked with the name."""
    train = import_list("ucf-video-list", shared_fixture("ucf_crime/Anomaly_Train.txt"), feature_root="/f")
    test = import_list("ucf-video-list", shared_fixture("ucf_crime/vadclip_list/Anomaly_Test.txt"))
    assert (len(train), sum(r.is_anomalous for r in train)) == (1610, 810)
    assert (len(test), sum(r.is_anomalous for r in test)) == (290, 140)
    assert {r.split for r in train} == {"train"} and {r.split for r in test} == {"test"}
    first = train[0]
    assert (first.video, first.feature_path, first.class_name) == ("Abuse001_x264", "/f/Abuse001_x264.txt", "Abuse")
    normal = next(r for r in test if not r.is_anomalous)
    assert normal.class_name == "Normal" and normal.video.startswith("Normal_Videos")
    # the same videos as the GT file names
    gt = {ln.split()[0][: -len(".mp4")] for ln in shared_fixture("ucf_crime/Temporal_Anomaly_Annotation.txt")
          .read_text().splitlines() if ln.strip()}
    assert {r.video for r in test} == gt
    bad = tmp_path / "Anomaly_Train.txt"
    bad.write_text("Abuse/Abuse001_x264.mp4\r\nTraining_Normal_Videos_Anomaly/Abuse002_x264.mp4\r\n")
    with pytest.raises(ManifestError, match=r"Anomaly_Train.txt:2: 'Abuse002_x264' sits in folder"):
        import_list("ucf-video-list", bad)
    bad.write_text("Abuse001_x264.mp4\n")
    with pytest.raises(ManifestError, match="is not Folder/Name.mp4"):
        import_list("ucf-video-list", bad)
