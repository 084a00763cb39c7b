"""One registry of model families. Adding a family is one new module that calls ``@register``
(and is imported in ``adapters/__init__.py``'s package scan, which picks up every module)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import OptinError

ADAPTERS: dict[str, type] = {}


def register(cls):
    ADAPTERS[cls.family] = cls
    return cls


def supported_families() -> str:
    return "; ".join(f"{c.description}" for c in ADAPTERS.values())


def supported_model_types() -> list[str]:
    return sorted({t for c in ADAPTERS.values() for t in c.model_types})


def _family_class(model: nn.Module):
    for cls in ADAPTERS.values():
        if cls.matches(model):
            return cls
    return None


def get_adapter(model: nn.Module):
    from .embedding import SentenceEmbedder, embedding_adapter

    if isinstance(model, SentenceEmbedder):  # a sentence-embedding model: its encoder's family, pooling on top
        cls = _family_class(model.backbone)
        if cls is not None:
            return embedding_adapter(model, cls)
        model = model.backbone
    cls = _family_class(model)
    if cls is not None:
        return cls(model)
    raise OptinError(
        f"unsupported model architecture {type(model).__name__}: optin-deploy supports {supported_families()}"
    )


def adapter_for_config(config: Any, what: str = "model"):
    """The adapter class for a transformers config, checked before any weights are loaded; a model
    of another family is refused in one line naming the supported ones."""
    for cls in ADAPTERS.values():
        if cls.supports_config(config):
            return cls
    kind = getattr(config, "model_type", None) or type(config).__name__
    others = [c.description.split(" (")[0] for c in ADAPTERS.values() if not c.model_types]
    raise OptinError(f"{what}: model family {kind!r} is not supported; optin-deploy supports model_type "
                     f"{', '.join(supported_model_types())}" + (f", and {'; '.join(others)}" if others else ""))


def refuse_unknown_family(raw_config: dict, where: str, what: str = "model") -> None:
    """A ``config.json`` (as a dict, ``where`` its path) that transformers could not read: when the cause is its family
    (no ``model_type``, or one no adapter supports), refuse it in the one line naming the supported ones."""
    from types import SimpleNamespace

    kind = raw_config.get("model_type")
    if not kind:
        raise OptinError(f"{where} has no model_type, so its model family is unknown; set \"model_type\" to the model's "
                         f"family (optin-deploy supports {', '.join(supported_model_types())})")
    if not isinstance(kind, str) or kind not in supported_model_types():
        adapter_for_config(SimpleNamespace(model_type=kind if isinstance(kind, str) else repr(kind)), what)


def adapter_for_inputs(names) -> type | None:
    """The first family whose inputs are exactly ``names`` (for artifacts without a model at hand)."""
    names = list(names)
    for cls in ADAPTERS.values():
        if cls.modality == "text" and set(names) <= set(cls.sequence_inputs):
            return cls
    return None


def sequence_input_names() -> set[str]:
    """Every input name that some registered family gives a sequence axis."""
    return {n for c in ADAPTERS.values() if c.modality == "text" for n in c.sequence_inputs}


def adapter_class(family: str):
    try:
        return ADAPTERS[family]
    except KeyError:
        raise OptinError(f"unknown model family {family!r} in structure spec; known: {', '.join(ADAPTERS)}") from None
