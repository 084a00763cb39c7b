"""Model adapters, one module per family, all in one registry."""

from . import bert, hf_vit, timm_vit  # noqa: F401  (register the families)
from .embedding import PoolingSpec, SentenceEmbedder, read_pooling
from .base import Adapter, BiasOnly, LayerParts, slice_linear
from .registry import ADAPTERS, adapter_class, get_adapter, supported_families

__all__ = ["PoolingSpec", "SentenceEmbedder", "read_pooling", "Adapter", "BiasOnly", "LayerParts", "slice_linear", "ADAPTERS", "adapter_class", "get_adapter", "supported_families"]
