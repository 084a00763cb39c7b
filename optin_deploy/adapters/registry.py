"""One registry of model families. Adding a family is one new module that calls ``@register``."""

from __future__ import annotations

from torch import nn

from ..errors import OptinError

ADAPTERS: dict[str, type] = {}


def register(cls):
    ADAPTERS[cls.family] = cls
    return cls


def supported_families() -> str:
    return "; ".join(f"{c.description}" for c in ADAPTERS.values())


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


def adapter_class(family: str):
    try:
        return ADAPTERS[family]
    except KeyError:
        raise OptinError(f"unknown model family {family!r} in structure spec; known: {', '.join(ADAPTERS)}") from None
