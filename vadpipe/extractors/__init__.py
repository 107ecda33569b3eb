"""Stage-one backbones. Each module registers itself in :mod:`vadpipe.extractors.registry`.

The registry's names are imported on first use (PEP 562), so that importing a light
submodule such as :mod:`vadpipe.extractors.presets` does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BACKBONES", "BackboneSpec", "Weights", "get_backbone", "list_backbones"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("vadpipe.extractors.registry"), name)
    raise AttributeError(f"module 'vadpipe.extractors' has no attribute {name!r}")
