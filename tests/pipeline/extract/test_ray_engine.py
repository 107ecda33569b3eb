"""``vadpipe extract --engine ray`` on a local Ray instance (2 CPUs) with the tiny backbone:
the same manifest and bit-identical features as the local engine, bad videos failing their
own rows, a crashed model actor retried, a persistently crashing one turning into failed
rows that a re-run completes, resume, and the CLI path. Plus the resource rule and the
out-of-order assembly, without Ray."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")

import tests.helpers.tiny_backbone as tiny  # noqa: E402  (registers the tiny backbone in this process)
from tests.helpers import media  # noqa: E402
from tests.helpers.paths import REPO  # noqa: E402
from vadpipe.cli import main  # noqa: E402
from vadpipe.errors import ConfigError  # noqa: E402
from vadpipe.manifests.features import COLUMNS, FeatureRow, read_manifest  # noqa: E402
from vadpipe.pipeline.extract.config import ExtractConfig  # noqa: E402
from vadpipe.pipeline.extract.engines import ray as ray_engine  # noqa: E402
from vadpipe.pipeline.extract.engines.ray import ActorPlan, _Features, _Video, plan_actors  # noqa: E402
from vadpipe.pipeline.extract.runner import extract  # noqa: E402
from vadpipe.pipeline.extract.sources import VideoJob, discover  # noqa: E402
from vadpipe.pipeline.extract.stream import VideoDone  # noqa: E402
from vadpipe.pipeline.extract.writer import ExtractSummary, RunContext, finish_video

CFG = ExtractConfig(backbone="tiny", crops=5, random_weights=True, device="cpu", batch_clips=2)
RAY_CFG = replace(CFG, engine="ray")
#: Columns that may differ between engines: wall time per video (measured differently:
#: the local engine from decode start, the Ray engine from the video's submission) and
#: when the feature files were written (their mtime stamp).
TIMING_COLUMNS = ("seconds", "file_stamp")


@pytest.fixture(scope="module")
def crash_file(tmp_path_factory) -> Path:
    """A local Ray instance for the module; returns the tiny backbone's crash-control file."""
    path = tmp_path_factory.mktemp("fault") / "crash"
    # Ray's memory monitor kills workers when the *machine* is nearly full (other processes
    # included): off here, so that the tests do not depend on what else the machine runs.
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             runtime_env={"env_vars": {"VADPIPE_TINY_CRASH_FILE": str(path), "PYTHONPATH": str(REPO)}},
             _system_config={"memory_monitor_refresh_ms": 0})
    yield path
    ray.shutdown()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("videos")
    media.make_video(root / "a.mp4", n_frames=50, seed=1)             # 3 clips: chunks of 2 + 1
    media.make_video(root / "sub" / "b.avi", n_frames=33, seed=2)     # 2 clips
    media.make_video(root / "c.mkv", n_frames=80, seed=3)             # 5 clips: 3 chunks
    media.make_bframes_mp4(root / "d.mp4", n_frames=40, seed=4)       # 2 clips, B-frames
    media.make_video(root / "e.mp4", n_frames=64, seed=5)             # 4 clips
    return root


@pytest.fixture(scope="module")
def bad_videos(tmp_path_factory, videos: Path) -> Path:
    root = tmp_path_factory.mktemp("bad")
    media.make_zero_byte(root / "zero.mp4")
    media.make_text_as_video(root / "text.mp4")
    media.make_video(root / "short.mp4", n_frames=10, seed=6)
    media.make_truncated(videos / "c.mkv", root / "truncated.mkv", 0.5)
    return root


@pytest.fixture(scope="module")
def local_summary(videos: Path, bad_videos: Path, tmp_path_factory) -> tuple[Path, ExtractSummary]:
    """The single-process engine's outputs for the good and bad videos, and its summary."""
    out = tmp_path_factory.mktemp("local")
    summary = extract(discover([videos, bad_videos]), out, CFG, progress=False)
    assert (summary.ok, summary.failed) == (5, 4), summary.failures
    return out, summary


@pytest.fixture(scope="module")
def local_run(local_summary: tuple[Path, ExtractSummary]) -> Path:
    return local_summary[0]


def _rows(folder: Path) -> dict[str, FeatureRow]:
    return {r.video: r for r in read_manifest(folder / "features.csv")}


def _assert_same_as_local(out: Path, local: Path, videos: list[str] | None = None) -> None:
    """Manifest rows equal apart from timing, features bit-identical."""
    ours, theirs = _rows(out), _rows(local)
    for video in videos or list(theirs):
        a, b = asdict(ours[video]), asdict(theirs[video])
        for column in COLUMNS:
            if column not in TIMING_COLUMNS:
                assert a[column] == b[column], (video, column, a[column], b[column])
        if b["status"] == "ok":
            got, want = np.load(out / a["feature_path"]), np.load(local / b["feature_path"])
            assert got.dtype == want.dtype == np.float32
            np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- without Ray


def test_missing_ray_is_an_actionable_config_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'vadpipe\[ray\]'"):
        ray_engine._import_ray()


def test_plan_actors_rule() -> None:
    cpu = ExtractConfig(device="cpu")
    assert plan_actors(cpu, {"CPU": 2.0}) == ActorPlan(n_actors=1, use_gpu=False, actor_cpus=1.0, threads=1,
                                                       decode_cpus=1.0, max_videos=2)
    two = plan_actors(replace(cpu, devices=("cpu", "cpu")), {"CPU": 2.0})
    assert (two.n_actors, two.actor_cpus, two.threads, two.decode_cpus) == (2, 0.5, 1, 1.0)
    big = plan_actors(cpu, {"CPU": 16.0, "GPU": 4.0})  # --device cpu keeps CPU actors beside GPUs
    assert (big.use_gpu, big.n_actors, big.actor_cpus, big.threads, big.decode_cpus) == (False, 1, 12.0, 12, 4.0)
    gpu = plan_actors(ExtractConfig(device="auto"), {"CPU": 16.0, "GPU": 4.0})
    assert (gpu.use_gpu, gpu.n_actors, gpu.actor_cpus, gpu.decode_cpus, gpu.max_videos) == (True, 4, 1.0, 12.0, 13)
    few_cpus = plan_actors(ExtractConfig(device="cuda"), {"CPU": 4.0, "GPU": 4.0})
    assert (few_cpus.actor_cpus, few_cpus.decode_cpus) == (0.0, 4.0)
    listed = plan_actors(ExtractConfig(devices=("cuda:0", "cuda:1")), {"CPU": 8.0, "GPU": 4.0})
    assert (listed.use_gpu, listed.n_actors) == (True, 2)
    assert not plan_actors(ExtractConfig(device="auto"), {"CPU": 4.0}).use_gpu
    with pytest.raises(ConfigError, match="no GPU"):
        plan_actors(ExtractConfig(device="cuda"), {"CPU": 8.0})
    with pytest.raises(ConfigError, match="at least 2"):
        plan_actors(cpu, {"CPU": 1.0})
    with pytest.raises(ConfigError, match="has 1 GPU"):
        plan_actors(ExtractConfig(devices=("cuda:0", "cuda:1")), {"CPU": 8.0, "GPU": 1.0})


def test_chunks_are_assembled_whatever_their_order(tmp_path: Path) -> None:
    video = _Video(index=0, job=VideoJob(path="/x/v.mp4", rel_name="v"), started=0.0)
    feats = np.arange(5 * 5 * 8, dtype=np.float32).reshape(5, 5, 8)
    video.add(VideoDone(job=0, video=video.job, started=5.0, n_frames=80, fps=25.0, decoder="pyav", n_clips=5,
                        n_batches=3))
    for start in (4, 0):
        video.add(_Features(start=start, feats=feats[start:start + 2]))
        assert not video.complete
    video.add(_Features(start=2, feats=feats[2:4]))
    assert video.complete
    spec = tiny.SPEC
    ctx = RunContext(root=tmp_path, config=CFG.with_preset(spec.preset), spec=spec,
                                config_hash="h", weights_sha256="random", rows={}, manifest=tmp_path / "features.csv",
                                summary=ExtractSummary())
    row = finish_video(ctx, video.job, video.record_item(), video.parts)
    assert (row.status, row.n_clips, row.n_frames, row.decoder) == ("ok", 5, 80, "pyav")
    np.testing.assert_array_equal(np.load(tmp_path / row.feature_path), feats)
    # a decoding error completes the video at once; an override error wins over a clean record
    broken = _Video(index=1, job=video.job, started=0.0)
    broken.add(VideoDone(job=0, video=video.job, started=5.0, n_frames=3, fps=25.0, decoder="pyav",
                         error="VideoDecodeError: x"))
    assert broken.complete
    # a stream that ended (gen None) with no call out and no record is caught, not waited on forever
    assert _Video(index=2, job=video.job, started=0.0).lost and not broken.lost and not video.lost
    assert video.record_item("RayActorError: gone").error == "RayActorError: gone"
    assert video.record_item().started == 0.0  # timed on the driver's clock, not the node's (5.0)


# ----------------------------------------------------------------------------- on Ray


def test_same_manifest_and_features_as_the_local_engine(crash_file: Path, videos: Path, bad_videos: Path,
                                                        local_summary: tuple[Path, ExtractSummary],
                                                        tmp_path: Path) -> None:
    local_run, local = local_summary
    jobs = discover([videos, bad_videos])
    # two model actors: chunks of one video are spread over both and come back in any order
    summary = extract(jobs, tmp_path, replace(RAY_CFG, devices=("cpu", "cpu")), progress=False)
    assert (summary.ok, summary.failed, summary.skipped, summary.exit_code) == (5, 4, 0, 1)
    assert summary.clips == local.clips  # every clip the model ran, the truncated video's included
    assert sorted(summary.failures) == sorted(local.failures)
    _assert_same_as_local(tmp_path, local_run)
    rows = {Path(r.video).name: r for r in read_manifest(tmp_path / "features.csv")}
    assert "VideoTooShortError" in rows["short.mp4"].error and "--tail pad" in rows["short.mp4"].error
    assert "is empty (0 bytes)" in rows["zero.mp4"].error
    assert rows["truncated.mkv"].status == "failed" and rows["c.mkv"].status == "ok"
    (record,) = tmp_path.glob("extract-*.json")
    assert json.loads(record.read_text())["engine"] == "ray"
    # a re-run resumes: finished videos are skipped, the failed ones tried (and failing) again
    again = extract(jobs, tmp_path, RAY_CFG, progress=False)  # one actor now: speed-only, same config hash
    assert (again.ok, again.failed, again.skipped) == (0, 4, 5)
    _assert_same_as_local(tmp_path, local_run)


def test_a_model_actor_crash_is_retried(crash_file: Path, videos: Path, local_run: Path, tmp_path: Path) -> None:
    crash_file.write_text("once")
    try:
        summary = extract(discover([videos]), tmp_path, RAY_CFG, progress=False)
    finally:
        crash_file.unlink(missing_ok=True)
    assert Path(f"{crash_file}.fired").exists(), "the actor should have crashed once"
    Path(f"{crash_file}.fired").unlink()
    assert (summary.ok, summary.failed) == (5, 0), summary.failures
    _assert_same_as_local(tmp_path, local_run, list(_rows(tmp_path)))


def test_a_persistent_crash_fails_rows_and_a_rerun_completes_them(crash_file: Path, videos: Path, local_run: Path,
                                                                  tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ray_engine, "MAX_RETRIES", 1)  # 2 incarnations x 2 actors per slot: keeps the test short
    jobs = discover([videos])
    crash_file.write_text("always")
    try:
        summary = extract(jobs, tmp_path, RAY_CFG, progress=False)
    finally:
        crash_file.unlink()
    assert (summary.ok, summary.failed, summary.exit_code) == (0, 5, 1)
    rows = _rows(tmp_path)
    errors = [r.error for r in rows.values()]
    assert len(rows) == 5 and all(r.status == "failed" for r in rows.values())
    assert all("the worker process died" in e and "re-run to retry this video" in e for e in errors), errors
    # each of the 2 actors of the slot takes at most 2 videos (max_videos) down with it; the rest are not tried
    died = [e for e in errors if e.startswith("ActorDiedError:")]
    assert 2 <= len(died) <= 4 and all("again after 1 restart(s)" in e for e in died), errors
    not_tried = [e for e in errors if e not in died]
    assert all(e.startswith("RayActorError: not processed: the model actors kept dying") for e in not_tried)
    assert not list(tmp_path.rglob("*.npy"))
    rerun = extract(jobs, tmp_path, RAY_CFG, progress=False)
    assert (rerun.ok, rerun.failed, rerun.skipped) == (5, 0, 0)
    _assert_same_as_local(tmp_path, local_run, list(_rows(tmp_path)))


def test_workers_that_cannot_build_the_backbone_stop_the_run(crash_file: Path, videos: Path, tmp_path: Path,
                                                             monkeypatch) -> None:
    from vadpipe.extractors import registry

    def build(*, weights: object) -> tiny.TinyBackbone:
        return tiny.TinyBackbone()

    build.__module__ = "tests.not_on_the_workers"  # registered here only: workers cannot import it
    monkeypatch.setitem(registry.BACKBONES._entries, "tiny-here", replace(tiny.SPEC, name="tiny-here", build=build))
    with pytest.raises(ConfigError, match="must be importable on every node"):
        extract(discover([videos / "a.mp4"]), tmp_path, replace(RAY_CFG, backbone="tiny-here"), progress=False)
    (row,) = read_manifest(tmp_path / "features.csv")
    assert row.status == "skipped"  # not processed: the next run does it


def test_cli_engine_ray(crash_file: Path, videos: Path, tmp_path: Path) -> None:
    args = ["extract", str(videos), "--engine", "ray", "--backbone", "tiny", "--random-weights", "--crops", "1",
            "--device", "cpu", "-q", "-o", str(tmp_path)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "5 extracted, 0 already done, 0 failed" in res.output
    assert len(list(tmp_path.rglob("*_tiny.npy"))) == 5
    assert np.load(tmp_path / "a_tiny.npy").shape == (3, 1, tiny.TINY_DIM)


def test_ray_runs_leave_the_callers_print_alone() -> None:
    """Ray's progress-bar manager would replace builtins.print; the engine turns that off."""
    import builtins

    assert builtins.print.__module__ == "builtins"
