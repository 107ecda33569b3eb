"""What every ``vadpipe bench`` stage shares: a measured rate, a synthetic video, a timing loop.

Timing lives in the ``bench`` modules of the stages, never in pass/fail tests.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["StageResult", "make_synthetic_video", "repeat_until", "timed_steps", "MIN_STAGE_SECONDS"]


@dataclass
class StageResult:
    stage: str
    amount: float
    unit: str
    seconds: float

    @property
    def rate(self) -> float:
        return self.amount / self.seconds if self.seconds > 0 else float("nan")

    def line(self) -> str:
        rate = f"{self.rate:.1f}" if self.rate >= 10 else f"{self.rate:.3g}"
        return f"{self.stage:<22} {rate:>10} {self.unit}/s   ({self.amount:g} {self.unit} in {self.seconds:.2f} s)"


def make_synthetic_video(path: str | Path, seconds: float = 10.0, width: int = 320, height: int = 240,
                         fps: int = 30, seed: int = 0) -> Path:
    """Write an H.264 MP4 with moving textured content (deterministic for ``seed``)."""
    import av

    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, size=(height * 2, width * 2, 3), dtype=np.uint8)
    n = int(round(seconds * fps))
    path = Path(path)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        for i in range(n):
            y, x = (i * 3) % height, (i * 5) % width
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(texture[y:y + height, x:x + width]), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


#: Short stages are repeated until they have run at least this long.
MIN_STAGE_SECONDS = 1.0


def repeat_until(one_pass, min_seconds: float = MIN_STAGE_SECONDS) -> tuple[int, float]:
    """Run ``one_pass() -> amount`` until ``min_seconds`` have passed; total amount and time."""
    amount, t = 0, time.perf_counter()
    while True:
        amount += one_pass()
        elapsed = time.perf_counter() - t
        if elapsed >= min_seconds:
            return amount, elapsed


def timed_steps(step, *, warmup: int, steps: int, device) -> float:
    """Seconds that ``steps`` calls of ``step()`` take on ``device`` after ``warmup`` untimed
    ones (CUDA synchronised before and after; the peak-memory counter reset after warm-up,
    so ``torch.cuda.max_memory_allocated`` afterwards is the timed steps' peak)."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t
