"""Bounded memory in stage one: a long video costs what a short one does.

The main check runs ``extract`` in a fresh process per video (peak RSS only goes up within a
process) on a "1-minute" and a "20-minute" 64x48 video (5 fps, a clip every 6 frames: 48
and 998 clips, 500 forward passes of the tiny backbone with 10 crops), once per decoder,
and bounds the difference of the two peaks. After the fix it was +19..+29 MiB with decord
(its own heap settles a little higher on a longer file early on, then stays flat; up to +81
when the two processes ran at once and competed for the CPU, hence one after the other) and
+2 MiB with PyAV and torchcodec. Before it (features kept as one
tensor per forward pass until the video ended) decord gave +260..+489 MiB on every run;
PyAV and torchcodec gave up to +460 MiB on some runs and nothing on others: that growth
is heap fragmentation, which depends on the allocator's history.

The other tests check the mechanisms deterministically: nothing holds a forward pass's
output, a decoded chunk or a clip batch once it has been used, and each video's features
go into one array sized up front.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
from tests.helpers.memory import make_long_video
from tests.helpers.paths import REPO
from vadpipe.errors import ConfigError
from vadpipe.pipeline.extract.clips import ClipSpec, count_clips
from vadpipe.pipeline.extract.config import ExtractConfig
from vadpipe.pipeline.extract.decode import check_backend, open_video
from vadpipe.pipeline.extract.model import FeatureBuffer, finished_videos
from vadpipe.pipeline.extract.sources import VideoJob
from vadpipe.pipeline.extract.stream import ClipBatch, ClipStream, VideoDone

#: Most a 20-minute video's peak RSS may exceed a 1-minute one's.
BOUND_MIB = 80


def _available(backend: str) -> bool:
    try:
        check_backend(backend)
    except ConfigError:
        return False
    return True


DECODERS = ["decord", "pyav",
            pytest.param("torchcodec", marks=pytest.mark.skipif(not _available("torchcodec"),
                                                                reason="torchcodec cannot run here"))]


@pytest.fixture(scope="module")
def minute_videos(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("memory")
    return {minutes: make_long_video(folder / f"{minutes}min.mp4", 60 * minutes) for minutes in (1, 20)}


def _peak_mib(video: Path, out: Path, decoder: str) -> dict:
    """Extract ``video`` in a fresh process (batches of 2 clips, 10 crops, a clip every 6 frames);
    its peak RSS."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "tests.helpers.memory", str(video), str(out), decoder, "2", "10", "6"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"] == 1, result["failures"]
    return result


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_20_minute_video_peaks_within_a_constant_of_a_1_minute_one(minute_videos, decoder: str,
                                                                      tmp_path: Path) -> None:
    # one after the other: decord's heap settles higher when its thread competes for the CPU
    short, long = (_peak_mib(minute_videos[m], tmp_path / f"out{m}", decoder) for m in (1, 20))
    assert (short["clips"], long["clips"]) == (48, 998)
    grown = long["peak_mib"] - short["peak_mib"]
    assert grown < BOUND_MIB, (f"{decoder}: peak RSS {long['peak_mib']:.0f} MiB for 20 minutes against "
                               f"{short['peak_mib']:.0f} MiB for 1 minute (+{grown:.0f} MiB)")


def test_large_frames_are_resized_before_clips_are_batched(tmp_path: Path) -> None:
    """Workers resize each decoded chunk before cutting clips, so a batch holds resized clips:
    with 1080p frames, 4 overlapping clips per batch peak like 1 (measured: +6 MiB; before,
    +494 MiB: a 16-frame 1080p clip is 95 MiB at full size, and each pending clip was held at
    full size, then stacked, then resized)."""
    from tests.helpers.tricky import make_encoded

    video = make_encoded(tmp_path / "hd.mp4", n_frames=28, width=1920, height=1080, options={"preset": "ultrafast"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    peaks = []
    for batch in (1, 4):  # a clip every 4 frames: 4 clips
        cmd = [sys.executable, "-m", "tests.helpers.memory", str(video), str(tmp_path / f"out{batch}"), "pyav",
               str(batch), "1", "4"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert (result["ok"], result["clips"]) == (1, 4), result
        peaks.append(result["peak_mib"])
    assert peaks[1] - peaks[0] < 64, f"peak RSS {peaks[0]:.0f} MiB with 1 clip per batch, {peaks[1]:.0f} MiB with 4"


# ----------------------------------------------------------------------------- what is kept, deterministically


class _Model:
    """A stand-in for FeatureModel: ``[n, crops, D]`` features from the clips' first pixel,
    with a weak reference to every output it returned."""

    def __init__(self) -> None:
        self.outputs: list[weakref.ref] = []

    def __call__(self, resized: list[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(resized).float()
        out = x[:, 0, 0, 0, 0].reshape(-1, 1, 1).repeat(1, 2, 3)  # [n, 2, 3]: the clip's value
        self.outputs.append(weakref.ref(out))
        return out


def _stream(lengths: dict[int, int], per_batch: int):
    """Clip batches of several videos, interleaved as several decoding workers deliver them,
    then each video's VideoDone; clip ``k`` of video ``j`` carries the value ``100 j + k``."""
    jobs = {j: iter(range(0, n, per_batch)) for j, n in lengths.items()}
    while jobs:
        for j in list(jobs):
            start = next(jobs[j], None)
            if start is None:
                del jobs[j]
                yield VideoDone(job=j, video=VideoJob(path=f"v{j}.mp4", rel_name=f"v{j}"), started=0.0,
                                n_clips=lengths[j])
                continue
            n = min(per_batch, lengths[j] - start)
            data = (100 * j + torch.arange(start, start + n, dtype=torch.uint8)).view(n, 1, 1, 1, 1)
            yield ClipBatch(job=j, start=start, data=data.expand(n, 3, 2, 2, 2).contiguous(), n_clips_hint=lengths[j])


def test_finished_videos_keeps_no_forward_output_and_puts_every_clip_in_place() -> None:
    lengths = {0: 23, 1: 7, 2: 40}
    model = _Model()
    alive: list[int] = []

    def watched():  # how many forward outputs are still alive whenever the next item is taken
        for item in _stream(lengths, 3):
            alive.append(sum(r() is not None for r in model.outputs))
            yield item

    got = {}
    for done, parts in finished_videos(watched(), model, batch_clips=4):
        ((start, feats),) = parts
        assert start == 0 and isinstance(feats, np.ndarray) and feats.dtype == np.float32
        got[done.job] = feats
    # every forward pass's output was copied out and released at once, not kept until its video ended
    assert len(model.outputs) >= 10 and max(alive) == 0
    # every clip's features in place: clip k of video j carries 100 j + k
    assert got.keys() == lengths.keys()
    for j, n in lengths.items():
        assert got[j].shape == (n, 2, 3)
        np.testing.assert_array_equal(got[j], np.broadcast_to((100 * j + np.arange(n))[:, None, None], (n, 2, 3)))


def test_finished_videos_gives_no_parts_for_a_video_without_clips() -> None:
    done = VideoDone(job=0, video=VideoJob(path="bad.mp4", rel_name="bad"), started=0.0, error="VideoDecodeError: x")
    assert list(finished_videos([done, "idle"], _Model(), batch_clips=2)) == [(done, [])]


def test_feature_buffer_fills_one_array_in_any_order() -> None:
    feats = np.arange(10 * 2 * 3, dtype=np.float32).reshape(10, 2, 3)
    buf = FeatureBuffer(capacity=10)
    buf.add(4, torch.from_numpy(feats[4:7]))
    storage = buf._data
    for start, stop in ((0, 4), (7, 10)):
        buf.add(start, torch.from_numpy(feats[start:stop]))
    assert buf._data is storage  # sized once from the hint
    assert (buf.rows, buf.batches, buf.end) == (10, 3, 10)
    np.testing.assert_array_equal(buf.array(), feats)
    # without a (right) hint it grows by doubling, keeping what it holds
    small = FeatureBuffer(capacity=2)
    for start in range(0, 10, 3):
        small.add(start, feats[start:start + 3])  # host arrays (the Ray driver's) stay NumPy
    assert isinstance(small._data, np.ndarray) and small._data.shape[0] >= 10
    ((start, out),) = small.parts()
    assert start == 0
    np.testing.assert_array_equal(out, feats)
    assert FeatureBuffer().array() is None and FeatureBuffer().parts() == []
    gap = FeatureBuffer()
    gap.add(3, feats[3:5])
    with pytest.raises(RuntimeError, match="missing or was added twice"):
        gap.array()
    with pytest.raises(ValueError, match="per clip"):
        gap.add(0, feats[:1, :1])


def _video(tmp_path: Path) -> Path:
    return make_long_video(tmp_path / "two_minutes.mp4", 120, fps=10)  # 1200 frames


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("fps", [None, 4])
def test_readers_keep_no_chunk_and_know_the_frame_count_up_front(tmp_path: Path, decoder: str, fps) -> None:
    with open_video(_video(tmp_path), backend=decoder, fps=fps, chunk_size=16) as reader:
        assert reader.info.backend == decoder
        expected = reader.expected_frames
        chunks: list[weakref.ref] = []
        most_alive = 0
        for chunk in reader.iter_chunks():
            chunks.append(weakref.ref(chunk))
            del chunk
            most_alive = max(most_alive, sum(r() is not None for r in chunks))
        assert reader.frames_read == expected == (1200 if fps is None else 480)
    assert len(chunks) == expected // 16 and most_alive <= 2  # the chunk in hand (and the one before)


@pytest.mark.parametrize("decoder", DECODERS)
def test_clip_stream_releases_each_batch_and_hints_the_clip_count(tmp_path: Path, decoder: str) -> None:
    video = _video(tmp_path)
    config = ExtractConfig(backbone="tiny", decoder=decoder, batch_clips=3, clip=ClipSpec(16, 8)).with_preset(
        tests.helpers.tiny_backbone.TINY_PRESET)
    refs: list[weakref.ref] = []
    most_alive = 0
    done = None
    for item in ClipStream([VideoJob(path=str(video), rel_name="v")], config):
        if isinstance(item, VideoDone):
            done = item
            continue
        assert item.n_clips_hint == count_clips(1200, config.clip)
        refs.append(weakref.ref(item.data))
        del item
        most_alive = max(most_alive, sum(r() is not None for r in refs))
    assert done is not None and not done.error and done.n_clips == count_clips(1200, config.clip) == 149
    assert len(refs) == done.n_batches == 50 and most_alive <= 1


# ----------------------------------------------------------------------------- the bench reports it


def test_bench_extract_reports_peak_rss_per_stage(tmp_path: Path) -> None:
    from vadpipe.pipeline.extract.bench import peak_rss_mib, reset_peak_rss, run_extract_bench

    # In a fresh process (a long-running test process may hold freed memory that a new block
    # reuses): where the peak can be reset (Linux), a stage's peak is its own.
    code = (
        "import numpy as np\n"
        "from vadpipe.pipeline.extract.bench import peak_rss_mib, reset_peak_rss\n"
        "if reset_peak_rss():\n"
        "    before = peak_rss_mib()\n"
        "    block = np.ones(64 << 20, dtype=np.uint8)\n"
        "    assert peak_rss_mib() >= before + 60, (before, peak_rss_mib())\n"
        "    del block\n"
        "    reset_peak_rss()\n"
        "    assert peak_rss_mib() < before + 30, (before, peak_rss_mib())\n"
        "    print('reset works')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert reset_peak_rss() == ("reset works" in proc.stdout) and peak_rss_mib() > 0
    lines: list[str] = []
    config = ExtractConfig(backbone="tiny", random_weights=True, device="cpu", crops=1, workers=0)
    video = make_long_video(tmp_path / "v.mp4", 20)  # 100 frames: 6 clips
    run_extract_bench(str(video), config, seconds=0, model_iters=1, stages=("e2e",), echo=lines.append)
    (e2e,) = [ln for ln in lines if ln.startswith("end to end")]
    assert "(6 clips in" in e2e and "peak RSS" in e2e and e2e.endswith("MiB")
