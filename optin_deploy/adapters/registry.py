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


def get_adapter(model: nn.Module):
    for cls in ADAPTERS.values():
        if cls.matches(model):
            return cls(model)
    raise OptinError(
        f"unsupported model architecture {type(model).__name__}: optin-deploy supports {supported_families()}"
    )


def adapter_class(family: str):
    try:
        return ADAPTERS[family]
    except KeyError:
        raise OptinError(f"unknown model family {family!r} in structure spec; known: {', '.join(ADAPTERS)}") from None
