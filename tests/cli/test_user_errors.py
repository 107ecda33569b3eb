"""Every user mistake is one ``error: ...`` line and exit code 2, never a traceback.

Each test drives the CLI (in-process with click's runner; one case also as a real
``python -m vadpipe`` process) with one mistake: a file that is not a vadpipe checkpoint
given to every command that takes one, a dataset that cannot be trained on, a ``--set``
value of the wrong type or range, an output folder that cannot be written.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tests.helpers.synthetic import make_dataset
from vadpipe.cli import main
from vadpipe.manifests.datasets import DatasetRow, read_dataset, write_dataset

#: A folder no one can create: procfs refuses new entries even to root (chmod would not stop root).
FORBIDDEN = "/proc/vadpipe-forbidden/out"


def _run(args: list) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_user_error(res, *needles: str) -> str:
    """Exit code 2, no traceback, exactly one ``error:`` line, naming every needle."""
    out = res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"raised {type(res.exception).__name__}: {res.exception}\n{out}")
    assert "Traceback" not in out, out
    assert res.exit_code == 2, out
    errors = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, out
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict:
    """A small dataset (4 + 4 videos, 2 crops, 32-D), a 2-step Sultani checkpoint trained on
    it, and one file per kind of non-checkpoint."""
    root = tmp_path_factory.mktemp("user_errors")
    csv, _ = make_dataset(root / "ds", 4, 4, seed=1)
    res = _run(["train", "--train", csv, "--head", "sultani", "--steps", 2, "--eval-every", 1, "--set", "batch_size=2",
                "--device", "cpu", "-q", "-o", root / "run"])
    assert res.exit_code == 0, res.output
    bad = root / "bad"
    bad.mkdir()
    (bad / "text.pt").write_text("this is not a checkpoint\n")
    (bad / "empty.pt").write_bytes(b"")
    (bad / "zip.pt").write_bytes(b"PK\x03\x04" + bytes(60))
    torch.save({"model": torch.nn.Linear(2, 2)}, bad / "pickled_module.pt")  # weights_only=True refuses it
    torch.save(OrderedDict(w=torch.zeros(2)), bad / "state_dict.pt")
    torch.save({"epoch": 3, "auc": 0.9}, bad / "other_dict.pt")
    torch.save([torch.zeros(1)], bad / "list.pt")
    good = torch.load(root / "run" / "best.pt", weights_only=True)
    torch.save({**good, "head": "no_such_head"}, bad / "unknown_head.pt")
    torch.save({**good, "format": "vadpipe-head/9"}, bad / "future_format.pt")
    torch.save({**good, "state_dict": {k: torch.zeros(3) for k in good["state_dict"]}}, bad / "wrong_weights.pt")
    torch.save({**good, "head_config": {**good["head_config"], "no_such_setting": 1}}, bad / "bad_settings.pt")
    video = root / "vids" / "v0.mp4"  # never decoded: the checkpoint is refused first
    video.parent.mkdir()
    video.write_bytes(b"")
    return {"root": root, "csv": csv, "ckpt": root / "run" / "best.pt", "bad": bad, "video": video}


BAD_CHECKPOINTS = {
    "text.pt": "not a file torch.save wrote",
    "empty.pt": "the file is empty",
    "zip.pt": "damaged or truncated zip archive",
    "pickled_module.pt": "torch.nn.modules.linear.Linear object, which a safe load (weights_only=True) refuses",
    "state_dict.pt": "bare PyTorch state dict without vadpipe's metadata",
    "other_dict.pt": "without vadpipe's 'format' entry",
    "list.pt": "it holds a list",
    "unknown_head.pt": "head 'no_such_head', which this vadpipe does not know",
    "future_format.pt": "format 'vadpipe-head/9'",
    "wrong_weights.pt": "its weights do not fit the sultani head",
    "bad_settings.pt": "its sultani settings are not valid",
}


def _checkpoint_command(command: str, ckpt: Path, ws: dict, tmp: Path) -> list:
    return {
        "apply": ["apply", "--checkpoint", ckpt, "--data", ws["csv"], "--device", "cpu", "-o", tmp / "a"],
        "eval": ["eval", "--checkpoint", ckpt, "--data", ws["csv"], "--gt", f"csv:{tmp / 'gt.csv'}", "--device", "cpu",
                 "-o", tmp / "e"],
        "train --resume": ["train", "--train", ws["csv"], "--head", "sultani", "--steps", 4, "--set", "batch_size=2",
                           "--device", "cpu", "-q", "-o", tmp / "t", "--resume", ckpt],
        "score": ["score", ws["video"], "--head", ckpt, "--device", "cpu", "-q", "-o", tmp / "s"],
        "bench score": ["bench", "score", "--head", ckpt, "--device", "cpu", "--runs", 1],
    }[command]


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("command", ["apply", "eval", "train --resume", "score", "bench score"])
@pytest.mark.parametrize("name", sorted(BAD_CHECKPOINTS))
def test_a_file_that_is_not_a_vadpipe_checkpoint_is_named(ws: dict, tmp_path: Path, command: str, name: str) -> None:
    path = ws["bad"] / name
    line = assert_user_error(_run(_checkpoint_command(command, path, ws, tmp_path)),
                             f"{path} is not a vadpipe checkpoint (", BAD_CHECKPOINTS[name])
    assert "vadpipe train" in line or "vadpipe weights import" in line or "vadpipe version" in line


def test_resuming_an_imported_checkpoint_says_what_to_resume_from(ws: dict, tmp_path: Path) -> None:
    good = torch.load(ws["ckpt"], weights_only=True)
    imported = {k: v for k, v in good.items() if k not in ("optimizer", "torch_rng", "bad_evals")}
    torch.save({**imported, "kind": "imported"}, tmp_path / "imported.pt")
    res = _run(_checkpoint_command("train --resume", tmp_path / "imported.pt", ws, tmp_path))
    assert_user_error(res, "cannot be resumed", "imported", "last.pt")


def test_a_real_process_prints_one_line_and_no_traceback(ws: dict, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-m", "vadpipe", "apply", "--checkpoint", str(ws["bad"] / "text.pt"),
                           "--data", str(ws["csv"]), "--device", "cpu", "-o", str(tmp_path / "a")],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {ws['bad'] / 'text.pt'} is not a vadpipe checkpoint (not a file torch.save wrote"), proc.stderr
    assert lines[0].endswith("train one with `vadpipe train` or pass the .pt file train wrote (OUT/best.pt or OUT/last.pt)")


# ----------------------------------------------------------------------------- datasets


def _variant(ws: dict, tmp: Path, mutate) -> Path:
    """A copy of the dataset with ``mutate(folder, rows)`` applied; returns its CSV."""
    import shutil

    folder = tmp / "variant"
    shutil.copytree(ws["csv"].parent, folder)
    mutate(folder, read_dataset(folder / "dataset.csv"))
    return folder / "dataset.csv"


def _resave(folder: Path, row: DatasetRow, change) -> None:
    path = folder / row.feature_path
    np.save(path, change(np.load(path)))


DATASET_MISTAKES = {
    "empty": (lambda f, rows: write_dataset(f / "dataset.csv", []), ["has no videos"]),
    "one class": (lambda f, rows: write_dataset(f / "dataset.csv", [r for r in rows if r.label == "normal"]),
                  ["has only normal videos (4:", "label some videos 'anomalous'"]),
    "mixed feature sizes": (lambda f, rows: _resave(f, rows[5], lambda a: np.ones((30, 2, 48), np.float32)),
                            ["mix feature sizes", "7 of 8 have 2 crops x 32-D", "abn1_005", "2 crops x 48-D"]),
    "mixed crop counts": (lambda f, rows: [_resave(f, r, lambda a: a[:, :1]) for r in rows[6:]],
                          ["mix crop counts", "6 of 8 have 2 crops x 32-D", "2 other(s)", "abn1_006", "abn1_007",
                           "1 crops x 32-D"]),
    "missing file": (lambda f, rows: (f / rows[2].feature_path).unlink(),
                     ["1 of 8 videos", "missing or unreadable", "nor1_002", "feature file not found"]),
    "unreadable file": (lambda f, rows: (f / rows[3].feature_path).write_bytes(b"garbage"),
                        ["1 of 8 videos", "missing or unreadable", "nor1_003", "cannot read feature file"]),
    "NaN": (lambda f, rows: _resave(f, rows[4], lambda a: np.where(np.arange(a.size).reshape(a.shape) < 3, np.nan, a)),
            ["1 of 8 videos", "NaN or Inf", "abn1_004", "3 NaN/Inf value(s)"]),
    "Inf": (lambda f, rows: [_resave(f, r, lambda a: np.full_like(a, np.inf)) for r in rows],
            ["8 of 8 videos", "NaN or Inf", "nor1_000", "and 3 more"]),
}


@pytest.mark.parametrize("mistake", sorted(DATASET_MISTAKES))
def test_train_refuses_a_bad_dataset_before_training(ws: dict, tmp_path: Path, mistake: str) -> None:
    mutate, needles = DATASET_MISTAKES[mistake]
    csv = _variant(ws, tmp_path, mutate)
    res = _run(["train", "--train", csv, "--head", "sultani", "--steps", 2, "--set", "batch_size=2", "--device", "cpu",
                "-q", "-o", tmp_path / "run"])
    assert_user_error(res, *needles)
    assert not (tmp_path / "run" / "last.pt").exists()  # refused before the first step


@pytest.mark.parametrize("mistake", ["empty", "mixed feature sizes", "NaN", "missing file"])
def test_apply_refuses_a_bad_dataset_before_scoring(ws: dict, tmp_path: Path, mistake: str) -> None:
    mutate, needles = DATASET_MISTAKES[mistake]
    csv = _variant(ws, tmp_path, mutate)
    res = _run(["apply", "--checkpoint", ws["ckpt"], "--data", csv, "--device", "cpu", "-o", tmp_path / "a"])
    assert_user_error(res, *needles)
    assert not (tmp_path / "a" / "scores.csv").exists()


def test_a_validation_set_of_one_class_is_refused_before_training(ws: dict, tmp_path: Path) -> None:
    rows = read_dataset(ws["csv"])
    write_dataset(tmp_path / "val.csv", [r for r in rows if r.label == "anomalous"][:2])
    for r in rows:  # the feature files beside the CSV
        (tmp_path / r.feature_path).symlink_to(ws["csv"].parent / r.feature_path)
    write_dataset(tmp_path / "train.csv", rows)
    res = _run(["train", "--train", tmp_path / "train.csv", "--val", tmp_path / "val.csv", "--head", "sultani",
                "--steps", 2, "--set", "batch_size=2", "--device", "cpu", "-q", "-o", tmp_path / "run"])
    assert_user_error(res, "validation set has only anomalous videos")


# ----------------------------------------------------------------------------- --set values

SET_MISTAKES = {
    "lr=abc": ("sultani", ["sultani setting lr='abc'", "expected a number >= 0"]),
    "lr=-1": ("sultani", ["lr=-1", "expected a number >= 0"]),
    "batch_size=-1": ("sultani", ["batch_size=-1", "expected an integer >= 1", "(default 30)"]),
    "batch_size=2.5": ("sultani", ["batch_size=2.5", "expected an integer >= 1"]),
    "batch_size=abc": ("sultani", ["batch_size='abc'", "expected an integer >= 1"]),
    "dropout=2": ("sultani", ["dropout=2", "expected a number in [0, 1)"]),
    "hidden_dims=abc": ("sultani", ["hidden_dims='abc'", "expected a list of 2 integers >= 1", "(default [512, 32])"]),
    "hidden_dims=[64]": ("sultani", ["hidden_dims=[64]", "a list of 2 integers"]),
    "l2_normalize=maybe": ("sultani", ["l2_normalize='maybe'", "expected true or false"]),
    "reduction=foo": ("sultani", ["reduction='foo'", "expected one of 'official', 'paired_mean'"]),
    "lrr=1": ("sultani", ["has no setting(s) ['lrr']", "known:"]),
    "alpha=abc": ("rtfm", ["rtfm setting alpha='abc'", "a number >= 0 or null"]),
    "max_steps=0": ("rtfm", ["max_steps=0", "an integer >= 1"]),
    "fc_dims=[32,-1]": ("rtfm", ["fc_dims=[32, -1]", "a list of 2 integers >= 1"]),
    "lr=1e300": ("sultani", ["lr=1e+300", "finite, at most 3.4e38"]),
}


@pytest.mark.parametrize("setting", sorted(SET_MISTAKES))
def test_set_values_are_checked_by_type_and_range(ws: dict, tmp_path: Path, setting: str) -> None:
    head, needles = SET_MISTAKES[setting]
    res = _run(["train", "--train", ws["csv"], "--head", head, "--steps", 2, "--set", setting, "--device", "cpu",
                "-q", "-o", tmp_path / "run"])
    assert_user_error(res, *needles)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_refine_settings_and_the_wrapped_heads_settings_are_checked(ws: dict, tmp_path: Path) -> None:
    base = ["train", "--train", ws["csv"], "--head", "rtfm", "--refine", "mcr", "--steps", 2, "--device", "cpu", "-q",
            "-o", tmp_path / "run"]
    assert_user_error(_run(base + ["--refine-set", "windows=3"]), "mcr setting windows=3", "a list of integers >= 1")
    assert_user_error(_run(base + ["--set", "lr=fast"]), "rtfm setting lr='fast'", "a number >= 0")


@pytest.mark.parametrize("head, settings", [("sultani", ["lr=1e38"]), ("rtfm", ["lr=1e30", "fc_dims=[8,4]"])])
def test_a_diverging_run_stops_with_a_hint_about_the_learning_rate(ws: dict, tmp_path: Path, head: str,
                                                                   settings: list[str]) -> None:
    """A loss that turns NaN, or a loss function that refuses NaN scores (RTFM's BCE)."""
    args = ["train", "--train", ws["csv"], "--head", head, "--steps", 4, "--eval-every", 2, "--set", "batch_size=2",
            "--device", "cpu", "-q", "-o", tmp_path / "run"]
    for setting in settings:
        args += ["--set", setting]
    assert_user_error(_run(args), "training diverged at step", "lower the learning rate", "e.g. --set lr=")


def test_good_set_values_are_converted(ws: dict, tmp_path: Path) -> None:
    """An integral float for an int, a string "false" for a bool: accepted and recorded as such."""
    res = _run(["train", "--train", ws["csv"], "--head", "sultani", "--steps", 2, "--eval-every", 2, "--set",
                "batch_size=2.0", "--set", "l2_normalize=False", "--device", "cpu", "-q", "-o", tmp_path / "run"])
    assert res.exit_code == 0, res.output
    cfg = torch.load(tmp_path / "run" / "best.pt", weights_only=True)["head_config"]
    assert cfg["batch_size"] == 2 and isinstance(cfg["batch_size"], int) and cfg["l2_normalize"] is False


# ----------------------------------------------------------------------------- output folders


def _blocker(tmp: Path) -> Path:
    (tmp / "a_file").write_text("x")
    return tmp / "a_file"


OUTPUTS = {
    "extract": lambda ws, out: ["extract", ws["video"], "-o", out, "--device", "cpu", "--random-weights", "-q"],
    "train": lambda ws, out: ["train", "--train", ws["csv"], "--head", "sultani", "--steps", 2, "--set", "batch_size=2",
                              "--device", "cpu", "-q", "-o", out],
    "apply": lambda ws, out: ["apply", "--checkpoint", ws["ckpt"], "--data", ws["csv"], "--device", "cpu", "-o", out],
    "eval": lambda ws, out: ["eval", "--checkpoint", ws["ckpt"], "--data", ws["csv"], "--gt", "csv:gt.csv",
                             "--device", "cpu", "-o", out],
    "features segments": lambda ws, out: ["features", "segments", ws["csv"], "-o", out],
    "manifest from-features": lambda ws, out: ["manifest", "from-features", ws["csv"], "--labels", ws["csv"],
                                               "-o", Path(out) / "ds.csv"],
    "weights import": lambda ws, out: ["weights", "import", "sultani", ws["bad"] / "state_dict.pt",
                                       "-o", Path(out) / "head.pt"],
    "score": lambda ws, out: ["score", ws["video"], "--head", _demo_head(), "-o", out, "--device", "cpu",
                              "--random-weights"],
    "score --stream": lambda ws, out: ["score", "--stream", ws["video"], "--head", _demo_head(), "-o", out,
                                       "--device", "cpu", "--random-weights"],
    "demo": lambda ws, out: ["demo", "-o", out, "--device", "cpu"],
}


def _demo_head() -> Path:
    """The bundled demo head (a real file of the installed package)."""
    from vadpipe.pipeline import demo

    with demo.data_path(demo.DEMO_HEAD) as path:
        return Path(path)


@pytest.mark.parametrize("where", ["procfs", "under a file"])
@pytest.mark.parametrize("command", sorted(OUTPUTS))
def test_an_output_folder_that_cannot_be_written_is_refused_first(ws: dict, tmp_path: Path, command: str,
                                                                   where: str) -> None:
    out = FORBIDDEN if where == "procfs" else _blocker(tmp_path) / "out"
    line = assert_user_error(_run(OUTPUTS[command](ws, out)), "cannot create output folder")
    assert str(Path(out).parent if command in ("manifest from-features", "weights import") else out) in line


@pytest.mark.parametrize("setting, needle", [("lr=abc", "sultani setting lr='abc': expected a number"),
                                             ("batch_size=-1", "batch_size=-1: expected an integer >= 1")])
def test_bench_train_checks_set_values_like_train(setting: str, needle: str) -> None:
    assert_user_error(_run(["bench", "train", "--head", "sultani", "--device", "cpu", "--set", setting]), needle)


def test_unknown_head_preset_names_the_presets(tmp_path: Path) -> None:
    csv, _ = make_dataset(tmp_path / "d", 3, 3, crops=1, dim=8)
    assert_user_error(_run(["train", "--train", csv, "--head", "lanet", "--preset", "avenue", "-o", tmp_path / "r"]),
                      "head 'lanet' has no preset 'avenue'", "ucf, xd")
    from vadpipe.heads.base import get_head

    assert get_head("lanet").preset("xd") == get_head("lanet").presets["xd"]
    assert get_head("lanet").preset("xd") is not get_head("lanet").presets["xd"]  # a copy
    assert get_head("rtfm").preset(None) == {}
