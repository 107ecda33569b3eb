"""Peak memory of stage one on long videos, for ``tests/pipeline/extract/test_memory.py``.

:func:`make_long_video` writes a long, tiny H.264 video in seconds (a "20-minute" video is
a few thousand 32x32 frames). Run as a script, this module extracts one video with the
``tiny`` test backbone in a fresh process and prints that process's peak RSS as JSON::

    python -m tests.helpers.memory VIDEO OUT_DIR DECODER [BATCH_CLIPS] [CROPS] [STRIDE] [WORKERS]

so that each measurement starts from an empty heap (peak RSS never goes down in a process).
With ``WORKERS`` > 0 decoding runs in worker processes, whose memory is not counted.
"""

from __future__ import annotations

import json
import os
import resource
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def make_long_video(path: str | os.PathLike, seconds: float, fps: int = 5, width: int = 64,
                    height: int = 48) -> Path:
    """An H.264 MP4 of ``width`` x ``height`` frames, ``seconds`` long at ``fps``: a moving
    smooth pattern (cheap to encode and decode, and never two equal consecutive frames).
    (decord cannot decode some tiny sizes, 32x32 for one.)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:height, 0:width]
    period = 64
    frames = [np.stack([(xx * 8 + 4 * i) % 256, (yy * 8 + 8 * i) % 256, ((xx + yy) * 4 + 12 * i) % 256],
                       axis=-1).astype(np.uint8) for i in range(period)]
    n = int(round(seconds * fps))
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(fps))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(10 * fps), "threads": "1"}  # same bytes on every machine
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(frames[i % period], format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**20 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere


def main(argv: list[str]) -> None:
    video, out, decoder = argv[:3]
    batch_clips = int(argv[3]) if len(argv) > 3 else 1
    crops = int(argv[4]) if len(argv) > 4 else 10
    stride = int(argv[5]) if len(argv) > 5 else 16
    workers = int(argv[6]) if len(argv) > 6 else 0
    import torch

    import tests.helpers.tiny_backbone  # noqa: F401  (registers "tiny")
    from vadpipe.pipeline.extract.clips import ClipSpec
    from vadpipe.pipeline.extract.config import ExtractConfig
    from vadpipe.pipeline.extract.runner import extract
    from vadpipe.pipeline.extract.sources import discover

    torch.set_num_threads(1)
    config = ExtractConfig(backbone="tiny", random_weights=True, device="cpu", decoder=decoder, crops=crops,
                           batch_clips=batch_clips, workers=workers, clip=ClipSpec(length=16, stride=stride))
    summary = extract(discover([video]), out, config, progress=False)
    print(json.dumps({"peak_mib": peak_rss_mib(), "clips": summary.clips, "ok": summary.ok,
                      "failures": summary.failures}))


if __name__ == "__main__":
    main(sys.argv[1:])
