"""A tiny, fast backbone for pipeline tests (registered as ``tiny``).

Import this module, or name it in ``VADPIPE_PLUGINS=tests.helpers.tiny_backbone`` for a
subprocess, to register it. ``VADPIPE_TINY_SLEEP`` (seconds per forward) slows it down so
that tests can kill a run part-way. ``VADPIPE_TINY_CRASH_FILE`` (a path; Ray engine tests)
makes forwards kill their own process while that file exists: every forward when the file
says ``always``; only the first one (which renames the file away) when it says ``once``.
``VADPIPE_TINY_KILL_ONCE=<path>`` with ``VADPIPE_TINY_KILL_AFTER=N`` (default 1; multi-device
tests): the first process to reach its N-th forward creates ``<path>`` (holding its pid) and
SIGKILLs itself, as an out-of-memory kill would; processes that find ``<path>`` run on.
"""

from __future__ import annotations

import os
import signal
import time

import torch
from torch import nn

from vadpipe.errors import WeightsNotFoundError
from vadpipe.extractors.presets import ClipPreset
from vadpipe.extractors.registry import BackboneSpec, WeightsInfo, register_backbone

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
    def build(pretrained: bool) -> nn.Module:
        if pretrained:
            raise WeightsNotFoundError(f"the {name} test backbone has no pretrained weights; pass --random-weights")
        return model().eval()

    return register_backbone(
        BackboneSpec(name=name, feature_dim=TINY_DIM, clip_len=16, preset=TINY_PRESET,
                     weights=WeightsInfo(name="none", source="tests", license="n/a"),
                     build=build, file_suffix=suffix, nodes=nodes)
    )


SPEC = _register("tiny", TinyBackbone, "tiny")
NODES_SPEC = _register("tiny-nodes", TinyNodes, "nodes", nodes=3)
