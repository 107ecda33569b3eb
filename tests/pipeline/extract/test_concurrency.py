"""Two runs on one output folder: the second is refused at once with who holds it, the first
finishes with every video listed once, and a killed holder never leaves the folder locked."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import media
from tests.helpers.paths import REPO
from vadpipe.errors import ConfigError
from vadpipe.manifests.atomic import LOCK_NAME, folder_lock
from vadpipe.manifests.features import read_manifest

HOLD = ("import sys, time\n"
        "from vadpipe.manifests.atomic import folder_lock\n"
        "with folder_lock(sys.argv[1], 'a test holder'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n")


@contextlib.contextmanager
def _holder(folder: Path, script: str = HOLD) -> Iterator[subprocess.Popen]:
    """Another process holding ``folder`` (by running ``script``) until the block ends, then killed."""
    proc = subprocess.Popen([sys.executable, "-c", script, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def _held(folder: Path) -> bool:
    lock = folder / LOCK_NAME
    return lock.is_file() and bool(lock.read_text())


def test_a_held_folder_is_refused_naming_the_holder_and_free_again_once_it_is_killed(tmp_path: Path) -> None:
    with _holder(tmp_path) as proc:
        with pytest.raises(ConfigError, match=rf"is in use by pid {proc.pid} \(a test holder\)"):
            with folder_lock(tmp_path, "second"):
                pass
    with folder_lock(tmp_path, "after the kill"):  # the system dropped the killed holder's lock
        assert f"pid {os.getpid()} (after the kill)" == (tmp_path / LOCK_NAME).read_text()
    # released on exit, also within one process
    with folder_lock(tmp_path, "again"):
        pass


def test_a_second_extract_on_the_same_folder_is_refused_and_the_first_lists_every_video_once(tmp_path: Path) -> None:
    src = tmp_path / "videos"
    for i in range(4):
        media.make_video(src / f"v{i}.mp4", n_frames=32, seed=30 + i)
    out = tmp_path / "out"
    env = {**os.environ, "VADPIPE_PLUGINS": "tests.helpers.tiny_backbone", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "vadpipe.cli", "extract", str(src), "--backbone", "tiny", "--random-weights",
           "--crops", "1", "--device", "cpu", "--workers", "0", "--batch-clips", "1", "-q", "-o", str(out)]
    first = subprocess.Popen(cmd, env={**env, "VADPIPE_TINY_SLEEP": "2.0"}, cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not _held(out):
            time.sleep(0.05)
        second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr
        assert f"is in use by pid {first.pid} (vadpipe extract)" in second.stderr
    finally:
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    rows = read_manifest(out / "features.csv")
    assert sorted(Path(r.video).name for r in rows) == [f"v{i}.mp4" for i in range(4)]
    assert all(r.status == "ok" for r in rows)
    again = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)  # free once the first is done
    assert again.returncode == 0 and "4 already done" in again.stderr, again.stderr


NESTED = ("import sys, time\n"
          "from vadpipe.manifests.atomic import folder_lock\n"
          "with folder_lock(sys.argv[1], 'outer'):\n"
          "    with folder_lock(sys.argv[1], 'inner'):\n"
          "        pass\n"
          "    print('held', flush=True)\n"
          "    time.sleep(60)\n")


def test_a_nested_lock_of_the_same_folder_does_not_drop_the_outer_one(tmp_path: Path) -> None:
    """POSIX locks drop when any descriptor of the file closes: re-locking a folder this
    process holds (score writing features into its own output folder) must not open it again."""
    with _holder(tmp_path, NESTED) as proc:
        with pytest.raises(ConfigError, match=rf"in use by pid {proc.pid} \(outer\)"):
            with folder_lock(tmp_path, "second"):
                pass


@pytest.mark.parametrize("stream", [False, True])
def test_score_refuses_a_held_output_folder_before_any_work(tmp_path: Path, stream: bool) -> None:
    from vadpipe.pipeline.extract.sources import discover
    from vadpipe.pipeline.score.batch import score_videos
    from vadpipe.pipeline.score.stream import stream_score

    video = media.make_video(tmp_path / "v.mp4", n_frames=16)
    out = tmp_path / "out"
    out.mkdir()
    with _holder(out) as proc:
        with pytest.raises(ConfigError, match=rf"is in use by pid {proc.pid}"):  # not "no such checkpoint"
            if stream:
                stream_score(str(video), tmp_path / "missing.pt", out, echo=None)
            else:
                score_videos(discover([video]), tmp_path / "missing.pt", out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
