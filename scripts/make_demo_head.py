#!/usr/bin/env python
"""Train the bundled demo head: ``vadpipe/data/demo_head.pt`` and ``vadpipe/data/demo_head.json``.

    python scripts/make_demo_head.py [--work DIR] [--device cpu] [--seed 0] [--steps 300]

What it does (all in :mod:`vadpipe.pipeline.demo`, which ``vadpipe demo --retrain`` runs too):

1. builds the training and validation videos with PyAV from the two bundled real videos
   (``vadpipe/data/bikes.mp4``, ``vadpipe/data/carphone_pristine.mp4``), planting the one
   anomaly kind (a shaken camera) at seeded, recorded frames (:func:`vadpipe.pipeline.demo.training_plan`);
2. extracts real Kinetics-400 Inception-I3D features, 1 centre crop per 16-frame clip, with
   :func:`vadpipe.pipeline.extract.runner.extract` (so the checkpoint records the recipe);
3. trains a Sultani MIL head with :func:`vadpipe.pipeline.train.loop.train` (seeded; validation
   on held-out footage measures the video-level AUC and sets the event threshold);
4. writes the checkpoint without its optimiser/RNG state (scoring needs neither; it halves
   the file) and a JSON record: data, planted intervals, settings, validation AUC, timings,
   date and this command.

Deterministic: the same seed on the same kind of machine gives the same decoded training
videos (they are stored losslessly: lossy x264 gave run-to-run different bits on the 176×144
video), features and weights on the CPU; two runs here wrote byte-identical checkpoints.

How the anomaly kind was chosen (measured on 2026-11-24 with this training plan, 1-crop I3D
features of crf-18 training videos, one offset sequence for all videos; "probe" = ROC-AUC on
the validation clips of a logistic regression trained on the training clips' L2-normalised
features, C = 1 / 100, a clip counts as planted when at least half of it is; "MIL" = best
validation video-level AUC of the Sultani head, 300 steps, validated every 25):

    kind                                           probe (C=1 / 100)   MIL
    upside down (vertical flip)                    0.84 / 0.92         0.94
    colour negative, steady                        0.97 / 0.95         1.00 (weak margins)
    colour-negative strobe, every other frame      0.97 / 0.99         1.00  (flashes at 12.5 Hz)
    colour-negative strobe, 5 frames on/5 off      0.89 / 0.91         0.92
    lens covered (dark box over 3/4 of the frame)  0.96 / 0.96         1.00 (weak margins)
    camera shaken (±1/8 frame random offsets)      0.99 / 1.00         1.00  <- chosen
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vadpipe.extractors.weights import sha256_file  # noqa: E402
from vadpipe.pipeline import demo  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one, removed)")
    ap.add_argument("--device", default="cpu", help="cpu (default: reproducible), cuda, auto")
    ap.add_argument("--seed", type=int, default=demo.SEED)
    ap.add_argument("--steps", type=int, default=demo.STEPS)
    ap.add_argument("--out", type=Path, default=ROOT / "vadpipe" / "data", help="where the .pt and .json go")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="vadpipe-demo-head-"))
    try:
        trained = demo.train_demo_head(work, device=args.device, seed=args.seed, steps=args.steps)
        pt = demo.export_checkpoint(trained.checkpoint, args.out / demo.DEMO_HEAD)
        record = dict(trained.record)
        record["command"] = " ".join(["python", "scripts/make_demo_head.py", *map(shlex.quote, argv)])
        record["checkpoint"] = {"file": f"vadpipe/data/{demo.DEMO_HEAD}", "sha256": sha256_file(pt),
                                "bytes": pt.stat().st_size,
                                "note": "best.pt of the run without its optimiser and RNG state"}
        meta = args.out / demo.DEMO_META
        meta.write_text(json.dumps(record, indent=2) + "\n")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {pt} ({pt.stat().st_size / 1e6:.2f} MB) and {meta}")
    print(f"validation video-level AUC {record['validation_auc']:.4f}, threshold {record['threshold']:.4g}; "
          f"seconds: {record['seconds']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
