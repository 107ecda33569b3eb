"""A tiny, fast backbone for pipeline tests (registered as ``tiny``).

Import this module, or name it in ``VADPIPE_PLUGINS=tests.tiny_backbone`` for a
subprocess, to register it. ``VADPIPE_TINY_SLEEP`` (seconds per forward) slows it down so
that tests can kill a run part-way.
"""

from __future__ import annotations

import os
import time

import torch
from torch import nn

from vadpipe.errors import WeightsNotFoundError
from vadpipe.extractors.registry import BackboneSpec, WeightsInfo, register_backbone
from vadpipe.pipeline.transforms import ClipPreset

TINY_DIM = 8
TINY_PRESET = ClipPreset(resize=40, crop_size=32, crop_order="torchvision", value_range=(-1.0, 1.0))


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
