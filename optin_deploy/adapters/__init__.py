"""Model adapters, one module per family, all in one registry.

Every module in this package is imported here, so a new family is one new file that defines an
:class:`Adapter` subclass decorated with ``@register``: nothing else needs an edit.
"""

import importlib
import pkgutil

from .base import Adapter, BiasOnly, LayerParts, slice_linear
from .registry import (
    ADAPTERS,
    adapter_class,
    adapter_for_config,
    adapter_for_inputs,
    get_adapter,
    sequence_input_names,
    supported_families,
    supported_model_types,
)

for _name in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _name not in ("base", "registry"):
        importlib.import_module(f"{__name__}.{_name}")

__all__ = ["PoolingSpec", "SentenceEmbedder", "read_pooling", "Adapter", "BiasOnly", "LayerParts", "slice_linear", "ADAPTERS", "adapter_class", "adapter_for_config",
           "adapter_for_inputs", "get_adapter", "sequence_input_names", "supported_families", "supported_model_types"]

from .embedding import PoolingSpec, SentenceEmbedder, read_pooling  # noqa: E402  (sentence-embedding wrapper, not a family)
