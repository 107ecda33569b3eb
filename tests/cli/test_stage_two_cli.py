"""Stage two through the command line: manifest import, train, eval, apply, official-weight import."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from tests.helpers.shared_data import FIXTURES
from tests.helpers.synthetic import make_dataset
from vadpipe.cli import main
from vadpipe.heads.rtfm import RTFMConfig, RTFMHead
from vadpipe.heads.sultani import SultaniConfig, SultaniHead
from vadpipe.manifests.datasets import DatasetRow, read_dataset, write_dataset


def _run(args: list[str]):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def _intervals_csv(path: Path, truth: dict[str, np.ndarray]) -> Path:
    rows = []
    for name, labels in truth.items():
        idx = np.flatnonzero(labels)
        rows.append((name, idx[0] * 16, (idx[-1] + 1) * 16) if idx.size else (name, "", ""))
    pd.DataFrame(rows, columns=["video", "start", "end"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("s2")
    train_csv, _ = make_dataset(root / "train", 16, 16, seed=1)
    test_csv, truth = make_dataset(root / "test", 6, 6, seed=2)
    res = _run(["train", "--train", train_csv, "--head", "sultani", "--steps", 120, "--eval-every", 40,
                "--set", "batch_size=4", "--device", "cpu", "--backbone", "synthetic", "-q", "-o", root / "run"])
    assert res.exit_code == 0, res.output
    return {"root": root, "test_csv": test_csv, "truth": truth, "ckpt": root / "run" / "best.pt", "out": res.output}


def test_train_reports_validation_selection(trained: dict) -> None:
    from vadpipe.pipeline.train.loop import load_checkpoint

    assert "best validation video-level AUC" in trained["out"]
    spec = load_checkpoint(trained["ckpt"])["feature_spec"]
    assert spec == {"crops": 2, "dim": 32, "segments": 32, "backbone": "synthetic", "clip_len": 16}


def test_eval_writes_scores_and_reports_metrics(trained: dict, tmp_path: Path) -> None:
    gt = _intervals_csv(tmp_path / "gt.csv", trained["truth"])
    res = _run(["eval", "--checkpoint", trained["ckpt"], "--data", trained["test_csv"], "--gt", f"csv:{gt}",
                "--device", "cpu", "-o", tmp_path / "ev"])
    assert res.exit_code == 0, res.output
    auc = float(next(ln for ln in res.output.splitlines() if ln.startswith("ROC-AUC")).split()[1])
    assert auc > 0.9
    assert any(ln.startswith("PR-AUC") for ln in res.output.splitlines())
    scores = pd.read_csv(tmp_path / "ev" / "scores.csv")
    assert list(scores.columns) == ["video", "feature_path", "clip", "start_frame", "end_frame", "score"]
    assert len(scores) == sum(len(v) for v in trained["truth"].values())
    assert (scores.end_frame - scores.start_frame == 16).all() and (scores.start_frame == scores["clip"] * 16).all()
    assert scores.score.between(0, 1).all()
    frames = pd.read_csv(tmp_path / "ev" / "frame_scores.csv")
    assert len(frames) == 16 * len(scores)


def test_eval_compares_with_another_scores_file(trained: dict, tmp_path: Path) -> None:
    """``--compare``: the other file's AUC and the difference, from the scores as written."""
    import json

    from vadpipe.pipeline.train.metrics import expand_scores, roc_auc

    gt = _intervals_csv(tmp_path / "gt.csv", trained["truth"])
    args = ["eval", "--checkpoint", trained["ckpt"], "--data", trained["test_csv"], "--gt", f"csv:{gt}",
            "--device", "cpu"]
    assert _run(args + ["-o", tmp_path / "a"]).exit_code == 0
    other = pd.read_csv(tmp_path / "a" / "scores.csv")
    other["score"] = np.random.default_rng(0).random(len(other))  # a chance-level "method"
    other.to_csv(tmp_path / "other.csv", index=False)
    res = _run(args + ["-o", tmp_path / "b", "--compare", tmp_path / "other.csv", "--bootstrap", 50])
    assert res.exit_code == 0, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("compare: ")]
    cmp = json.loads((tmp_path / "b" / "compare.json").read_text())
    truth = {k: np.repeat(v, 16) for k, v in trained["truth"].items()}
    names = sorted(truth)
    y = np.concatenate([truth[n] for n in names])
    by_video = {v: g.sort_values("clip").score.to_numpy() for v, g in other.groupby("video")}
    from vadpipe.manifests.datasets import video_key

    x = np.concatenate([expand_scores(by_video[next(v for v in by_video if video_key(v) == n)]) for n in names])
    assert cmp["auc_b"] == pytest.approx(roc_auc(y, x), abs=1e-12) and cmp["resamples"] == 50
    assert cmp["diff"] == pytest.approx(cmp["auc_a"] - cmp["auc_b"]) and cmp["low"] > 0  # clearly better
    assert f"AUC this {cmp['auc_a']:.4f}, other {cmp['auc_b']:.4f}" in line
    other.iloc[1:].to_csv(tmp_path / "short.csv", index=False)  # one clip lost: not the same features
    bad = _run(args + ["-o", tmp_path / "c", "--compare", tmp_path / "short.csv"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output, bad.output


def test_eval_warns_of_gt_past_the_scores_and_strict_gt_stops(trained: dict, tmp_path: Path) -> None:
    gt = _intervals_csv(tmp_path / "gt.csv", trained["truth"])
    with open(gt, "a") as fh:
        fh.write(f"{next(iter(trained['truth']))},100000,100016\n")  # an event long after the video's end
    args = ["eval", "--checkpoint", trained["ckpt"], "--data", trained["test_csv"], "--gt", f"csv:{gt}",
            "--device", "cpu", "-o", tmp_path / "ev"]
    res = _run(args)
    assert res.exit_code == 0 and "WARNING: the GT of 1 video(s) reaches past" in res.output, res.output
    strict = _run(args + ["--strict-gt"])
    assert strict.exit_code == 2 and "(--strict-gt)" in strict.output and "Traceback" not in strict.output


def test_eval_does_not_import_stage_one(trained: dict, tmp_path: Path) -> None:
    """Evaluating scores needs no video decoding or backbone: no torchvision, no torch._dynamo,
    nothing of stage one is imported (each cost seconds at start-up)."""
    import subprocess
    import sys

    from tests.helpers.paths import REPO

    gt = _intervals_csv(tmp_path / "gt.csv", trained["truth"])
    code = ("import sys\nfrom vadpipe.cli import main\n"
            f"main(['eval', '--checkpoint', {str(trained['ckpt'])!r}, '--data', {str(trained['test_csv'])!r}, "
            f"'--gt', 'csv:{gt}', '--device', 'cpu', '-o', {str(tmp_path / 'ev')!r}], standalone_mode=False)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'decord', 'av', 'pytorchvideo')"
            " or m.startswith(('torch._dynamo', 'vadpipe.pipeline.extract', 'vadpipe.extractors'))))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_features_of_another_size_are_refused(trained: dict, tmp_path: Path) -> None:
    other, _ = make_dataset(tmp_path / "wide", 2, 2, dim=48, seed=9)
    res = _run(["apply", "--checkpoint", trained["ckpt"], "--data", other, "--device", "cpu", "-o", tmp_path / "a"])
    assert res.exit_code == 2 and "trained on 32-D features" in res.output and "48-D" in res.output


def test_official_rtfm_state_dict_imports_and_scores_identically(tmp_path: Path) -> None:
    torch.manual_seed(0)
    official = RTFMHead(RTFMConfig()).eval()
    torch.save(official.state_dict(), tmp_path / "rtfm_final.pkl")
    res = _run(["weights", "import", "rtfm", tmp_path / "rtfm_final.pkl", "-o", tmp_path / "rtfm.pt"])
    assert res.exit_code == 0, res.output
    feats = np.abs(np.random.default_rng(0).normal(size=(12, 10, 2048))).astype(np.float32)  # [T, crops, D]
    np.save(tmp_path / "v_i3d.npy", feats)
    write_dataset(tmp_path / "d.csv", [DatasetRow(video="v", feature_path="v_i3d.npy", label="anomalous")])
    res = _run(["apply", "--checkpoint", tmp_path / "rtfm.pt", "--data", tmp_path / "d.csv", "--device", "cpu",
                "-o", tmp_path / "out"])
    assert res.exit_code == 0, res.output
    ours = pd.read_csv(tmp_path / "out" / "scores.csv").score.to_numpy()
    with torch.no_grad():
        ref = official.snippet_scores(torch.from_numpy(feats).permute(1, 0, 2)[None])[0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-6)  # scores.csv keeps 6 significant digits
    bad = _run(["weights", "import", "rtfm", tmp_path / "d.csv", "-o", tmp_path / "x.pt"])
    assert bad.exit_code == 2


def test_real_sultani_c3d_samples_load_and_score(tmp_path: Path) -> None:
    samples = FIXTURES / "ucf_crime" / "SampleVideos"
    if not samples.is_dir():
        pytest.skip(f"shared fixtures not available at {samples}")
    rows = [DatasetRow(video=p.stem, feature_path=str(p), label="normal" if p.name.startswith("Normal") else "anomalous")
            for p in sorted(samples.glob("*.txt"))]
    write_dataset(tmp_path / "samples.csv", rows)
    torch.manual_seed(0)
    torch.save(SultaniHead(SultaniConfig()).state_dict(), tmp_path / "sultani.pt")
    assert _run(["weights", "import", "sultani", tmp_path / "sultani.pt", "-o", tmp_path / "s.pt"]).exit_code == 0
    res = _run(["apply", "--checkpoint", tmp_path / "s.pt", "--data", tmp_path / "samples.csv", "--device", "cpu",
                "-o", tmp_path / "out"])
    assert res.exit_code == 0, res.output
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    assert len(scores) == 10 * 32 and scores.groupby("video").size().eq(32).all()
    assert scores.score.between(0, 1).all() and scores.score.std() > 0


def test_manifest_import_of_the_real_rtfm_list(tmp_path: Path) -> None:
    lst = FIXTURES / "rtfm_lists" / "ucf-i3d.list"
    if not lst.exists():
        pytest.skip(f"shared fixtures not available at {lst}")
    res = _run(["manifest", "import", "rtfm-list", lst, "--feature-root", "/data/UCF_Train_ten_crop_i3d",
                "-o", tmp_path / "ucf_train.csv"])
    assert res.exit_code == 0, res.output
    assert "1610 videos (810 anomalous, 800 normal)" in res.output
    rows = read_dataset(tmp_path / "ucf_train.csv")
    assert rows[0].feature_path == "/data/UCF_Train_ten_crop_i3d/Abuse001_x264_i3d.npy"


def test_select_on_test_is_loudly_labelled(trained: dict, tmp_path: Path) -> None:
    root = trained["root"]
    gt = _intervals_csv(tmp_path / "gt.csv", trained["truth"])
    res = _run(["train", "--train", root / "train" / "dataset.csv", "--head", "sultani", "--steps", 20,
                "--eval-every", 10, "--set", "batch_size=4", "--device", "cpu", "-q", "-o", tmp_path / "run",
                "--select-on-test", trained["test_csv"], "--gt", f"csv:{gt}"])
    assert res.exit_code == 0, res.output
    assert "WARNING: MODEL SELECTED ON THE TEST SET" in res.output and "TEST AUC (optimistic)" in res.output
    ev = _run(["eval", "--checkpoint", tmp_path / "run" / "best.pt", "--data", trained["test_csv"],
               "--gt", f"csv:{gt}", "--device", "cpu", "-o", tmp_path / "ev"])
    assert ev.exit_code == 0 and ev.output.splitlines()[1].startswith("WARNING: MODEL SELECTED ON THE TEST SET")
    bad = _run(["eval", "--checkpoint", tmp_path / "run" / "best.pt", "--data", trained["test_csv"],
                "--gt", f"nope:{gt}", "--device", "cpu", "-o", tmp_path / "ev2"])
    assert bad.exit_code == 2 and "KIND one of ucf, xd, sh-masks, csv" in bad.output


def test_refine_mcr_wraps_the_base_head(trained: dict, tmp_path: Path) -> None:
    from vadpipe.pipeline.train.loop import load_checkpoint

    res = _run(["train", "--train", trained["root"] / "train" / "dataset.csv", "--head", "sultani", "--refine", "mcr",
                "--refine-set", "batch_size=4", "--refine-set", "windows=[1,3]", "--steps", 20, "--eval-every", 10,
                "--device", "cpu", "-q", "-o", tmp_path / "run"])
    assert res.exit_code == 0, res.output
    cfg = load_checkpoint(tmp_path / "run" / "last.pt")["head_config"]
    assert (cfg["base_head"], cfg["windows"], cfg["batch_size"]) == ("sultani", [1, 3], 4)
    ev = _run(["apply", "--checkpoint", tmp_path / "run" / "best.pt", "--data", trained["test_csv"], "--device", "cpu",
               "-o", tmp_path / "ap"])
    assert ev.exit_code == 0, ev.output
