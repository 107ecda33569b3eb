"""No silent data loss between the decoding workers and the model (vadpipe issue 19).

A video's row is ``ok`` only when the clips written are the clips its decoder produced: a clip
batch lost on the way (a full ``/dev/shm``) fails the row with the reason, keeps no file, and a
re-run completes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from tests.helpers import media
from vadpipe.cli import main
from vadpipe.manifests.features import read_manifest
from vadpipe.pipeline.extract import stream
from vadpipe.pipeline.extract.stream import ClipBatch, VideoDone

#: 80 frames, 16/16 clips: 5 clips, in batches of 2, 2 and 1 with ``--batch-clips 2``.
N_FRAMES, N_CLIPS = 80, 5


def _args(tmp_path: Path, out: Path) -> list[str]:
    src = tmp_path / "videos"
    media.make_video(src / "a.mp4", n_frames=N_FRAMES, seed=7)
    return ["extract", str(src), "-o", str(out), "--backbone", "tiny", "--random-weights", "--crops", "1",
            "--device", "cpu", "--workers", "0", "--batch-clips", "2", "-q"]


def _tamper(monkeypatch, *, drop: int | None = None, extra_clips: int = 0) -> None:
    """The stream drops its ``drop``-th clip batch (0-based) on the way to the model, as a full
    ``/dev/shm`` does, and/or its :class:`VideoDone` reports ``extra_clips`` more clips."""
    real = stream.ClipStream._video

    def video(self, index, job):
        n = 0
        for item in real(self, index, job):
            if isinstance(item, ClipBatch):
                n += 1
                if n - 1 == drop:
                    continue
            elif isinstance(item, VideoDone):
                item.n_clips += extra_clips
            yield item

    monkeypatch.setattr(stream.ClipStream, "_video", video)


@pytest.mark.parametrize("drop, extra, reason", [
    (1, 0, "3 of the 5 clip(s) decoded reached the model (clip indices do not line up"),  # a hole
    (2, 0, "4 of the 5 clip(s) decoded reached the model: a clip batch was lost"),  # the last batch
    (0, 0, "3 of the 5 clip(s) decoded reached the model (clip indices do not line up"),  # the first
    (None, 1, "the decoder reported 6 clip(s) from 80 frame(s), which give 5 under the clip rule"),
])
def test_a_lost_batch_fails_the_row_and_a_rerun_completes_it(tmp_path: Path, monkeypatch, drop, extra,
                                                             reason) -> None:
    out = tmp_path / "out"
    args = _args(tmp_path, out)
    with monkeypatch.context() as m:
        _tamper(m, drop=drop, extra_clips=extra)
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    (row,) = read_manifest(out / "features.csv")
    assert row.status == "failed" and row.error.startswith("LostClipsError: ") and reason in row.error, row.error
    assert "re-run to retry" in row.error and row.feature_path == "" and row.n_clips == 0
    assert f"failed: {row.video}: LostClipsError" in res.output
    assert not list(out.glob("*.npy"))  # nothing kept as if it were the video's features

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "1 extracted, 0 already done" in again.output, again.output
    (row,) = read_manifest(out / "features.csv")
    assert row.status == "ok" and row.n_clips == N_CLIPS
    assert np.load(out / row.feature_path).shape == (N_CLIPS, 1, tests.helpers.tiny_backbone.TINY_DIM)


# ----------------------------------------------------------------------------- small /dev/shm (issue 19, part 2)


def test_the_transfer_plan_fits_the_free_shared_memory() -> None:
    from vadpipe.pipeline.extract.config import ExtractConfig
    from vadpipe.pipeline.extract.shm import HELD_BATCHES, PREFETCH, batch_bytes, plan_transfer

    config = ExtractConfig(workers=4, batch_clips=2)
    one = batch_bytes(config)
    assert one == 2 * 3 * 16 * 256 * 455  # the I3D preset at 1080p: 11 MB
    roomy = plan_transfer(config, free=10 * (4 * PREFETCH + HELD_BATCHES) * one)
    assert (roomy.workers, roomy.prefetch, roomy.warning) == (4, PREFETCH, "")
    tight = plan_transfer(config, free=int((4 * 2 + HELD_BATCHES) * one / 0.75) + 1)
    assert (tight.workers, tight.prefetch, tight.warning) == (4, 2, "")  # fewer prefetched batches, silently
    fewer = plan_transfer(config, free=int((2 + HELD_BATCHES) * one / 0.75) + 1)
    assert (fewer.workers, fewer.prefetch) == (2, 1) and "using 2 worker(s)" in fewer.warning
    none = plan_transfer(config, free=one)
    assert (none.workers, none.prefetch) == (0, None)
    assert "--workers 0" in none.warning and "--shm-size" in none.warning
    # Docker's default 64 MB: the CPU defaults (1 worker, 2 clips a batch) keep their worker
    docker = plan_transfer(ExtractConfig(workers=1, batch_clips=2), free=64 << 20)
    assert docker.workers == 1 and docker.warning == ""
    assert plan_transfer(ExtractConfig(workers=0), free=0) == type(none)(0, None)


def test_too_little_shared_memory_decodes_in_process_with_one_warning(tmp_path: Path, monkeypatch, caplog) -> None:
    """Mocked ``statvfs``: 1 MB free is less than one worker's batches need; the run decodes in
    its own process, warns once, and loses nothing."""
    import os

    from vadpipe.pipeline.extract import shm

    class Small:
        f_bavail, f_frsize = 256, 4096  # 1 MiB

    real = os.statvfs
    monkeypatch.setattr(shm.os, "statvfs", lambda p: Small() if p == shm.SHM_PATH else real(p))
    out = tmp_path / "out"
    args = [a if a != "0" else "1" for a in _args(tmp_path, out)]  # --workers 1
    assert "--workers" in args and args[args.index("--workers") + 1] == "1"
    with caplog.at_level("WARNING"):
        res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    warnings = [r.getMessage() for r in caplog.records if "/dev/shm" in r.getMessage()]
    assert len(warnings) == 1 and "decoding in the main process" in warnings[0], warnings
    (row,) = read_manifest(out / "features.csv")
    assert row.status == "ok" and row.n_clips == N_CLIPS


#: Runs ``vadpipe extract`` (argv after the script) with /dev/shm a tmpfs of ``VADPIPE_TEST_SHM``;
#: ``VADPIPE_TEST_NO_PLAN=1`` keeps the requested workers whatever fits (a planner that guessed
#: too small a batch, e.g. for a very wide video), so that the workers run out of shared memory.
SMALL_SHM_SCRIPT = r"""
import sys, os
import tests.helpers.tiny_backbone
from vadpipe.pipeline.extract import shm
from vadpipe.pipeline.extract.engines import local
shm.SHARE_WAIT_S = 1.0
if os.environ.get("VADPIPE_TEST_NO_PLAN"):
    local.plan_transfer = lambda config, *a, **k: shm.Transfer(config.workers, shm.PREFETCH)
from vadpipe.cli import main
main(sys.argv[1:])
"""


def _in_small_shm(size: str, args: list[str], **env: str):
    import os
    import shutil
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[3]
    if not shutil.which("unshare") or subprocess.run(
            ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /dev/shm"],
            capture_output=True).returncode != 0:
        pytest.skip("cannot mount a private tmpfs on /dev/shm here (needs root and unshare -m)")
    cmd = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec "$@"', "sh",
           sys.executable, "-c", SMALL_SHM_SCRIPT, *args]
    return subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(repo), **env})


def test_a_real_small_dev_shm_fails_the_video_not_the_run_and_never_hangs(tmp_path: Path) -> None:
    """A real 100 KB /dev/shm, smaller than one 200 KB batch. Without the planner, the worker
    cannot send its batch: the video fails with the reason, after a bounded wait, with no
    traceback. With it (the default) the same run decodes in process and completes."""
    out = tmp_path / "out"
    args = [a if a != "0" else "1" for a in _args(tmp_path, out)]  # --workers 1
    res = _in_small_shm("100k", args, VADPIPE_TEST_NO_PLAN="1")
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    (row,) = read_manifest(out / "features.csv")
    assert row.status == "failed" and row.error.startswith("SharedMemoryError: could not put a 0.2 MB clip batch")
    assert "--shm-size" in row.error and not list(out.glob("*.npy"))

    again = _in_small_shm("100k", args)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("/dev/shm has") == 1 and "decoding in the main process" in again.stderr
    (row,) = read_manifest(out / "features.csv")
    assert row.status == "ok" and row.n_clips == N_CLIPS
