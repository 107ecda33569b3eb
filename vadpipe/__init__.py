"""vadpipe: weakly-supervised video anomaly detection from raw videos to anomaly scores.

The public Python API (:mod:`vadpipe.api`, ``docs/api.md``)::

    import vadpipe
    vadpipe.extract(["videos/"], "features", recipe="rtfm-i3d-r50-10crop")
    run = vadpipe.train("train.csv", head="rtfm", out="runs/rtfm")
    vadpipe.evaluate(run.best_path, "test.csv", gt="ucf:Temporal_Anomaly_Annotation.txt")
    vadpipe.Detector(run.best_path).score(frames)       # uint8 [T, H, W, 3]
    vadpipe.export(run.best_path, "detector.onnx")      # then vadpipe.OnnxDetector("detector.onnx")

The names are imported when first used, so ``import vadpipe`` stays light (no torch).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: The public API, defined in :mod:`vadpipe.api`.
API = ("extract", "load_backbone", "train", "evaluate", "score", "export", "Detector", "OnnxDetector")
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name in API:
        from vadpipe import api

        return getattr(api, name)
    raise AttributeError(f"module 'vadpipe' has no attribute {name!r}")
