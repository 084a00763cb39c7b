"""How a model is called, shared by the exporters and the runtimes (neither imports the other for it):
which inputs have a sequence axis, the input names in export order, the graph's output name, and
:class:`LogitsModel`, the wrapper that takes the named inputs positionally and returns the logits."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .errors import OptinError

#: precision name -> the torch dtype a model computes in (LogitsModel's ``compute_dtype``)
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def is_text_input(name: str) -> bool:
    """Whether an input has a sequence axis (some registered text family says so)."""
    from .adapters import sequence_input_names

    return name in sequence_input_names()


def is_text(inputs: Mapping[str, object] | Sequence[str]) -> bool:
    return any(is_text_input(n) for n in inputs)


def _is_transformers_model(model: torch.nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except Exception:  # pragma: no cover - transformers is a hard dependency
        return False
    return isinstance(model, PreTrainedModel)


class LogitsModel(torch.nn.Module):
    """Wraps a classifier so that ``forward(*inputs)`` takes the named inputs positionally and
    returns the logits tensor (what exporters and runtimes need).

    transformers models get the inputs as keyword arguments and return ``.logits``; other models
    (timm) get them positionally and return a tensor. With ``compute_dtype`` (fp16/bf16) the wrapped
    model is cast and float inputs are cast inside the graph, while the graph's inputs and the logits
    stay float32, so an exported graph carries its precision explicitly (strongly typed).
    """

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.compute_dtype = compute_dtype
        self._kwargs = _is_transformers_model(model)
        if compute_dtype is not None and compute_dtype != torch.float32:
            self.model.to(compute_dtype)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is not None:
            inputs = tuple(x.to(self.compute_dtype) if x.is_floating_point() else x for x in inputs)
        if self._kwargs:
            out = self.model(**dict(zip(self.input_names, inputs)))
        else:
            out = self.model(*inputs)
        if isinstance(out, torch.Tensor):
            logits = out
        elif hasattr(out, "logits"):
            logits = out.logits
        elif isinstance(out, (tuple, list)):
            logits = out[0]
        else:
            raise OptinError(f"cannot find logits in the output of {type(self.model).__name__} ({type(out).__name__})")
        return logits.float() if self.compute_dtype not in (None, torch.float32) else logits


def output_name_for(model: torch.nn.Module) -> str:
    """The graph's output name: ``logits`` for classifiers, ``sentence_embedding`` for embedding models."""
    return str(getattr(model, "output_name", None) or "logits")


def input_names_for(model: torch.nn.Module) -> list[str]:
    """The input names a model takes, in export order (its family adapter says)."""
    from .adapters import get_adapter

    return get_adapter(model).input_names()
