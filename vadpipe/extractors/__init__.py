"""Stage-one backbones. Each module registers itself in :mod:`vadpipe.extractors.registry`."""

from vadpipe.extractors.registry import BackboneSpec, WeightsInfo, get_backbone, list_backbones

__all__ = ["BackboneSpec", "WeightsInfo", "get_backbone", "list_backbones"]
