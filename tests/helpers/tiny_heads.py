"""A Sultani head trained end to end on tiny-backbone features, for the `score` tests.

`vadpipe extract` (tiny backbone, random weights, 1 crop) on short synthetic videos, a dataset
CSV with alternating labels (the first two videos held out for validation), then `vadpipe
train`: the checkpoint records the extraction recipe and a validation threshold.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from click.testing import CliRunner

import tests.helpers.tiny_backbone  # noqa: F401  (registers the "tiny" backbone)
from tests.helpers import media
from vadpipe.cli import main

FPS = 25


def cli(args: list):
    """Run the vadpipe CLI in-process with every argument turned into a string."""
    return CliRunner().invoke(main, [str(a) for a in args])


def train_tiny_sultani(root: Path, n_videos: int = 8, steps: int = 10) -> dict[str, Path]:
    """``{"root", "vids", "ckpt"}``: videos ``v{i}.mp4`` of ``48 + 16 i`` frames at 25 fps
    and the ``best.pt`` of a Sultani head trained on their features."""
    vids = root / "vids"
    for i in range(n_videos):
        media.make_video(vids / f"v{i}.mp4", n_frames=48 + 16 * i, fps=FPS, seed=i)
    res = cli(["extract", vids, "-o", root / "feats", "--backbone", "tiny", "--random-weights", "--crops", "1",
               "--device", "cpu", "--workers", "0", "-q"])
    assert res.exit_code == 0, res.output
    m = pd.read_csv(root / "feats" / "features.csv")
    m["label"] = ["anomalous" if i % 2 else "normal" for i in range(len(m))]
    m["split"] = ["val" if i < 2 else "train" for i in range(len(m))]
    m["class"] = ""
    m[["video", "feature_path", "label", "split", "class"]].to_csv(root / "feats" / "ds.csv", index=False)
    res = cli(["train", "--train", root / "feats" / "ds.csv", "--head", "sultani", "--steps", steps,
               "--eval-every", max(1, steps // 2), "--device", "cpu", "-o", root / "run", "-q", "--set", "batch_size=2"])
    assert res.exit_code == 0, res.output
    return {"root": root, "vids": vids, "ckpt": root / "run" / "best.pt"}
