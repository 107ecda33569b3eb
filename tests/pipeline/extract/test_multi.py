"""Several devices on one machine (``vadpipe extract --devices cpu,cpu``): the same manifest
and the same bytes as the single-process run, bad videos failing alone, a killed worker
failing only the videos it held, a killed driver, start-up errors, and the CLI."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, replace
from pathlib import Path

import pytest

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from tests.helpers import media
from tests.helpers.paths import REPO
from vadpipe.errors import ConfigError
from vadpipe.extractors.registry import get_backbone
from vadpipe.manifests.features import FeatureRow, read_manifest
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.engines.multi import LOOKAHEAD, shard_order
from vadpipe.pipeline.extract.runner import extract
from vadpipe.pipeline.extract.sources import VideoJob, discover
from vadpipe.pipeline.extract.writer import RunContext, WriteContext

CFG = ExtractConfig(backbone="tiny", crops=5, random_weights=True, device="cpu", batch_clips=2, workers=0)
TWO = replace(CFG, devices=("cpu", "cpu"))
#: frames of the six videos: 1, 4, 2, 6, 3 and 1 clips of 16 frames
LENGTHS = (20, 70, 33, 100, 48, 16)
DEATH = re.compile(r"^worker for cpu#[01] died \(exit -9, SIGKILL\) while processing; re-run to retry$")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multi_videos")
    for i, n in enumerate(LENGTHS):
        media.make_video(root / ("sub" if i % 2 else "") / f"v{i}.mp4", n_frames=n, seed=20 + i)
    return root


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("multi_bad")
    return [media.make_text_as_video(root / "text.mp4"), media.make_zero_byte(root / "zero.mp4")]


@pytest.fixture(scope="module")
def reference(videos: Path, bad: list[Path], tmp_path_factory) -> Path:
    """The single-process run of the good and the bad videos."""
    out = tmp_path_factory.mktemp("multi_reference")
    summary = extract(discover([videos, *bad]), out, CFG, progress=False)
    assert (summary.ok, summary.failed) == (len(LENGTHS), len(bad))
    return out


def _rows(out: Path) -> dict[str, dict]:
    """Manifest rows by video, without the timing column."""
    return {r.video: {k: v for k, v in asdict(r).items() if k not in ("seconds", "file_stamp")}
            for r in read_manifest(out / "features.csv")}


def _assert_same_as(out: Path, reference: Path, videos: list[str] | None = None) -> None:
    """Rows (apart from seconds and file stamps) and feature-file bytes equal the reference's, for ``videos``
    (default: every row of ``out``)."""
    got, want = _rows(out), _rows(reference)
    for v in got if videos is None else videos:
        assert got[v] == want[v], v
        if got[v]["status"] == "ok":
            for f in FeatureRow(**got[v]).feature_files(out):
                assert f.read_bytes() == (reference / f.relative_to(out)).read_bytes(), f
    assert not list(out.rglob("*.vadpipe-tmp-*"))


def _no_workers_left() -> bool:
    return not [p for p in multiprocessing.active_children() if p.name.startswith("vadpipe-extract")]


def test_videos_go_out_largest_file_first(tmp_path: Path) -> None:
    for name, size in (("a", 10), ("b", 30), ("c", 20), ("d", 30)):
        (tmp_path / f"{name}.mp4").write_bytes(b"x" * size)
    todo = [VideoJob(str(tmp_path / f"{n}.mp4"), n) for n in "abcd"] + [VideoJob(str(tmp_path / "gone.mp4"), "gone")]
    assert [todo[i].rel_name for i in shard_order(todo)] == ["b", "d", "c", "a", "gone"]


def test_the_write_context_pickles_its_backbone_by_name(tmp_path: Path) -> None:
    spec = get_backbone("tiny")
    ctx = WriteContext(root=tmp_path, config=CFG, spec=spec, config_hash="h", weights_sha256="random")
    back = pickle.loads(pickle.dumps(ctx))
    assert back.spec is spec and (back.root, back.config, back.config_hash) == (tmp_path, CFG, "h")
    state = ctx.__getstate__()
    assert state["spec_ref"] == ("tiny", "tests.helpers.tiny_backbone") and "spec" not in state
    with pytest.raises(ConfigError, match="no_such_plugin"):
        WriteContext.__new__(WriteContext).__setstate__({**state, "spec_ref": ("x", "no_such_plugin")})


def test_two_devices_write_the_same_manifest_and_bytes_and_bad_videos_fail_alone(
        videos: Path, bad: list[Path], reference: Path, tmp_path: Path) -> None:
    # two decoding processes per device pull from its queue; clips are batched across videos
    summary = extract(discover([videos, *bad]), tmp_path, replace(TWO, workers=2), progress=False)
    assert (summary.ok, summary.failed, summary.skipped, summary.exit_code) == (len(LENGTHS), 2, 0, 1)
    assert summary.clips == sum(n // 16 for n in LENGTHS)
    _assert_same_as(tmp_path, reference)
    rows = _rows(tmp_path)
    assert len(rows) == len(LENGTHS) + 2
    for b in bad:
        assert rows[str(b)]["status"] == "failed" and "VideoDecodeError" in rows[str(b)]["error"]
    assert set(summary.per_device) == {"cpu#0", "cpu#1"}
    assert sum(d["videos"] for d in summary.per_device.values()) == len(LENGTHS) + 2
    assert sum(d["clips"] for d in summary.per_device.values()) == summary.clips
    (run,) = tmp_path.glob("extract-*.json")
    record = json.loads(run.read_text())
    assert record["device"] == "cpu,cpu" and set(record["per_device"]) == {"cpu#0", "cpu#1"}
    assert _no_workers_left()


def test_a_killed_worker_fails_only_its_videos_and_a_rerun_completes(
        videos: Path, reference: Path, tmp_path: Path, monkeypatch) -> None:
    marker = tmp_path / "killed.pid"
    monkeypatch.setenv("VADPIPE_TINY_KILL_ONCE", str(marker))
    monkeypatch.setenv("VADPIPE_TINY_KILL_AFTER", "2")  # SIGKILL at its second forward pass
    monkeypatch.setenv("VADPIPE_TINY_SLEEP", "0.05")
    out = tmp_path / "out"
    jobs = discover([videos])
    first = extract(jobs, out, TWO, progress=False)
    assert marker.exists(), "one worker should have been killed"
    rows = _rows(out)
    lost = sorted(v for v, r in rows.items() if r["status"] == "failed")
    done = sorted(v for v, r in rows.items() if r["status"] == "ok")
    assert len(rows) == len(LENGTHS) and len(lost) + len(done) == len(LENGTHS)
    # the dead worker held at most LOOKAHEAD unfinished videos; the other one did the rest
    assert 1 <= len(lost) <= LOOKAHEAD and (first.failed, first.ok) == (len(lost), len(done))
    assert all(DEATH.match(rows[v]["error"]) for v in lost), [rows[v]["error"] for v in lost]
    assert all(rows[v]["feature_path"] == "" and rows[v]["config_hash"] for v in lost)
    assert sorted(d.get("exit") for d in first.per_device.values() if "exit" in d) == [-9]
    _assert_same_as(out, reference, done)
    assert _no_workers_left()

    monkeypatch.delenv("VADPIPE_TINY_KILL_ONCE")
    again = extract(jobs, out, TWO, progress=False)
    assert (again.ok, again.skipped, again.failed) == (len(lost), len(done), 0)
    _assert_same_as(out, reference)
    assert len(read_manifest(out / "features.csv")) == len(LENGTHS)


def test_a_worker_that_cannot_start_raises_its_own_error(videos: Path, tmp_path: Path) -> None:
    cfg = replace(CFG, devices=("cpu", "cuda:99"))
    t = time.time()
    with pytest.raises(ConfigError, match="cuda:99"):
        extract(discover([videos]), tmp_path, cfg, progress=False)
    assert time.time() - t < 60
    rows = read_manifest(tmp_path / "features.csv")  # whole; unfinished videos stay "skipped"
    assert len(rows) == len(LENGTHS) and all(r.status in ("ok", "skipped") for r in rows)
    assert _no_workers_left()


def test_ctrl_c_in_the_driver_stops_the_workers_and_keeps_the_manifest_whole(
        videos: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("VADPIPE_TINY_SLEEP", "0.1")
    record = RunContext.record

    def record_then_interrupt(ctx: RunContext, row: FeatureRow) -> None:
        record(ctx, row)
        # Ctrl-C lands on the driver after its first row. Raised here rather than sent with
        # os.kill(SIGINT): a process-directed signal may be taken by a helper thread (queue
        # feeders), and the main thread then raises at a later, unpredictable point.
        raise KeyboardInterrupt

    monkeypatch.setattr(RunContext, "record", record_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        extract(discover([videos]), tmp_path, TWO, progress=False)
    rows = read_manifest(tmp_path / "features.csv")
    assert len(rows) == len(LENGTHS) and [r.status for r in rows].count("ok") >= 1
    assert all(r.status in ("ok", "skipped") for r in rows)
    assert _no_workers_left()
    assert not list(tmp_path.rglob("*.vadpipe-tmp-*"))  # terminated workers clean up their temporary files


def _processes_with_env(marker: str) -> list[int]:
    """Pids of this user's processes whose environment holds ``marker`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_killed_cli_driver_leaves_no_workers_and_a_resume_gives_the_same_results(
        videos: Path, reference: Path, tmp_path: Path) -> None:
    tag = f"VADPIPE_TEST_RUN={uuid.uuid4().hex}"
    env = {**os.environ, "VADPIPE_PLUGINS": "tests.helpers.tiny_backbone", "PYTHONPATH": str(REPO),
           tag.split("=")[0]: tag.split("=")[1]}
    env.pop("VADPIPE_TINY_KILL_ONCE", None)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "vadpipe.cli", "extract", str(videos), "--backbone", "tiny", "--random-weights",
           "--crops", "5", "--devices", "cpu,cpu", "--workers", "0", "--batch-clips", "2", "-q", "-o", str(out)]
    proc = subprocess.Popen(cmd, env={**env, "VADPIPE_TINY_SLEEP": "0.3"}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(out.rglob("v*_tiny.npy"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = read_manifest(out / "features.csv")  # whole, even after SIGKILL
    done = sum(r.status == "ok" for r in before)
    assert 1 <= done < len(LENGTHS), "the kill should land part-way through the run"
    assert len(before) == len(LENGTHS) and all(r.status in ("ok", "skipped") for r in before)
    deadline = time.time() + 20  # the workers notice their driver is gone and exit
    while time.time() < deadline and _processes_with_env(tag):
        time.sleep(0.1)
    assert not _processes_with_env(tag), "orphaned worker processes"

    resumed = extract(discover([videos]), out, TWO, progress=False)
    assert (resumed.ok, resumed.skipped, resumed.failed) == (len(LENGTHS) - done, done, 0)
    _assert_same_as(out, reference)
    assert len(read_manifest(out / "features.csv")) == len(LENGTHS)


def test_the_driver_reads_the_weights_sha_from_the_entry_without_building_a_model(
        videos: Path, tmp_path: Path, monkeypatch) -> None:
    from tests.helpers.tiny_backbone import save_tiny_weights
    from vadpipe.pipeline.extract import runner

    home = tmp_path / "home"
    (home / "weights").mkdir(parents=True)
    monkeypatch.setenv("VADPIPE_HOME", str(home))  # inherited by the workers
    sha = save_tiny_weights(home / "weights" / "tiny-file.pt")

    def no_model_here(*args, **kwargs):
        raise AssertionError("the driver of a multi-device run built a model")

    monkeypatch.setattr(runner, "FeatureModel", no_model_here)
    out = tmp_path / "out"
    cfg = replace(TWO, backbone="tiny-file", random_weights=False)
    summary = extract(discover([videos / "v0.mp4", videos / "sub" / "v1.mp4"]), out, cfg, progress=False)
    assert (summary.ok, summary.failed) == (2, 0)
    # every row records the file the workers loaded, whose sha256 the driver took from the entry
    assert {r.weights_sha256 for r in read_manifest(out / "features.csv")} == {sha}
    (run,) = out.glob("extract-*.json")
    assert json.loads(run.read_text())["weights_sha256"] == sha
