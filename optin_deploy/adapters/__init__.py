"""Model adapters, one module per family, all in one registry."""

from . import bert, deberta_v2, hf_vit, modernbert, timm_vit  # noqa: F401  (register the families)
from .base import Adapter, BiasOnly, LayerParts, slice_linear
from .registry import ADAPTERS, adapter_class, get_adapter, supported_families

__all__ = ["Adapter", "BiasOnly", "LayerParts", "slice_linear", "ADAPTERS", "adapter_class", "get_adapter", "supported_families"]
