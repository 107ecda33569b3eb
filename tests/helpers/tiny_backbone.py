"""A tiny, fast backbone for pipeline tests (registered as ``tiny``).

Import this module, or name it in ``VADPIPE_PLUGINS=tests.helpers.tiny_backbone`` for a
subprocess, to register it. ``VADPIPE_TINY_SLEEP`` (seconds per forward) slows it down so
that tests can kill a run part-way. ``VADPIPE_TINY_CRASH_FILE`` (a path; Ray engine tests)
makes forwards kill their own process while that file exists: every forward when the file
says ``always``; only the first one (which renames the file away) when it says ``once``.
``VADPIPE_TINY_KILL_ONCE=<path>`` with ``VADPIPE_TINY_KILL_AFTER=N`` (default 1; multi-device
tests): the first process to reach its N-th forward creates ``<path>`` (holding its pid) and
SIGKILLs itself, as an out-of-memory kill would; processes that find ``<path>`` run on.
``VADPIPE_TINY_DISK_FULL_AFTER=N`` (multi-device tests): in a spawned worker process (never
in the process that runs the tests), ``np.save`` fails with ENOSPC from its ``N + 1``-th call
on, after writing a few bytes, as a disk that fills up would. ``VADPIPE_TINY_KILL_WRITING=1``
(multi-device tests): in a spawned worker process, the first ``np.save`` writes a few bytes and
SIGKILLs its own process, as a worker killed mid-write would (its temporary file stays).
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import signal
import time

import numpy as np
import torch
from torch import nn

from vadpipe.errors import WeightsNotFoundError
from vadpipe.extractors.presets import ClipPreset
from vadpipe.extractors.registry import BackboneSpec, Weights, register_backbone

TINY_DIM = 8
TINY_PRESET = ClipPreset(resize=40, crop_size=32, crop_order="torchvision", value_range=(-1.0, 1.0))


def _crash_if_asked() -> None:
    """The ``VADPIPE_TINY_CRASH_FILE`` hook (see the module docstring)."""
    path = os.environ.get("VADPIPE_TINY_CRASH_FILE")
    if not path or not os.path.exists(path):
        return
    with open(path) as f:
        mode = f.read().strip()
    if mode == "once":
        try:
            os.rename(path, path + ".fired")  # atomic: exactly one process fires
        except OSError:
            return
    elif mode != "always":
        return
    os._exit(77)


_forwards = 0


def _fill_disk_if_asked() -> None:
    """The ``VADPIPE_TINY_DISK_FULL_AFTER`` hook (see the module docstring)."""
    after = os.environ.get("VADPIPE_TINY_DISK_FULL_AFTER")
    if after is None or multiprocessing.parent_process() is None:
        return
    real_save, calls = np.save, [0]

    def save(fh, array, *args, **kwargs):
        calls[0] += 1
        if calls[0] > int(after):
            fh.write(b"\x93NUMPY partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(fh, array, *args, **kwargs)

    np.save = save


_fill_disk_if_asked()


def _kill_writing_if_asked() -> None:
    """The ``VADPIPE_TINY_KILL_WRITING`` hook (see the module docstring)."""
    if os.environ.get("VADPIPE_TINY_KILL_WRITING") != "1" or multiprocessing.parent_process() is None:
        return

    def save(fh, array, *args, **kwargs):
        fh.write(b"\x93NUMPY partial")
        os.kill(os.getpid(), signal.SIGKILL)

    np.save = save


_kill_writing_if_asked()


def _sigkill_once_if_asked() -> None:
    """The ``VADPIPE_TINY_KILL_ONCE`` hook (see the module docstring)."""
    global _forwards
    marker = os.environ.get("VADPIPE_TINY_KILL_ONCE")
    if not marker:
        return
    _forwards += 1
    if _forwards < int(os.environ.get("VADPIPE_TINY_KILL_AFTER", "1")):
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: exactly one process dies
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


class TinyBackbone(nn.Module):
    """``[B, 3, T, 32, 32]`` → ``[B, 8]``: one strided Conv3d, ReLU, global mean."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv3d(3, TINY_DIM, kernel_size=3, stride=2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=g) * 0.1)
            self.conv.bias.copy_(torch.randn(self.conv.bias.shape, generator=g) * 0.1)
        self.weights_sha256 = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _crash_if_asked()
        _sigkill_once_if_asked()
        delay = float(os.environ.get("VADPIPE_TINY_SLEEP", "0"))
        if delay:
            time.sleep(delay)
        return torch.relu(self.conv(x)).mean(dim=(2, 3, 4))


class TinyNodes(TinyBackbone):
    """``[B, 3, T, 32, 32]`` → ``[B, 3, 8]``: three "patch nodes" (the left, right and whole
    halves of the conv map), for the node-backbone path of the runner."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fmap = torch.relu(self.conv(x))
        half = fmap.shape[-1] // 2
        regions = (fmap[..., :half], fmap[..., half:], fmap)
        return torch.stack([r.mean(dim=(2, 3, 4)) for r in regions], dim=1)


def _register(name: str, model: type[nn.Module], suffix: str, nodes: int = 1) -> BackboneSpec:
    def build(*, weights: Weights | None) -> nn.Module:
        if weights is not None:
            raise WeightsNotFoundError(f"the {name} test backbone has no pretrained weights; pass --random-weights")
        return model().eval()

    entry = Weights(name="none", source="tests", license="n/a", how_to_get="pass --random-weights",
                    file_name="", preset=TINY_PRESET, feature_dim=TINY_DIM)
    return register_backbone(
        BackboneSpec(name=name, clip_len=16, weights=entry, build=build, file_suffix=suffix, nodes=nodes)
    )


SPEC = _register("tiny", TinyBackbone, "tiny")
NODES_SPEC = _register("tiny-nodes", TinyNodes, "nodes", nodes=3)

#: Weights of the ``tiny-file`` backbone: a torch state dict of :class:`TinyBackbone` that
#: tests write to ``<VADPIPE_HOME>/weights/tiny-file.pt`` (see :func:`save_tiny_weights`).
TINY_FILE_WEIGHTS = Weights(name="tiny-file-test", source="tests", license="n/a",
                            how_to_get="call tests.helpers.tiny_backbone.save_tiny_weights",
                            file_name="tiny-file.pt", env="VADPIPE_TINY_FILE_CKPT", preset=TINY_PRESET,
                            feature_dim=TINY_DIM)


def _build_from_file(*, weights: Weights | None = TINY_FILE_WEIGHTS) -> nn.Module:
    from vadpipe.extractors.weights import locate_weight_file, sha256_file
    from vadpipe.loading import load_checked, read_state_dict

    model = TinyBackbone()
    if weights is not None:
        path = locate_weight_file(weights)
        load_checked(model, read_state_dict(path), source=f"tiny weights {path}")
        model.weights_sha256 = sha256_file(path)
    return model.eval()


def save_tiny_weights(path, seed: int = 1) -> str:
    """Write random :class:`TinyBackbone` weights (seeded) to ``path``; returns their sha256."""
    from vadpipe.extractors.weights import sha256_file

    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(v.shape, generator=g) for k, v in TinyBackbone().state_dict().items()}
    torch.save(sd, path)
    return sha256_file(path)


FILE_SPEC = register_backbone(BackboneSpec(name="tiny-file", clip_len=16, weights=TINY_FILE_WEIGHTS,
                                           build=_build_from_file, file_suffix="tiny"))
