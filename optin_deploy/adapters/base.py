"""What the core needs to know about one family of transformer.

An adapter describes, for each transformer block, where its prunable units live:

* heads: the query/key/value projections (separate ``Linear``s, or one fused ``qkv`` ``Linear``
  with the q, k and v blocks stacked along the output rows) and the attention output projection
  whose input columns are grouped by head;
* FFN neurons: the first MLP ``Linear`` (rows) and the second (columns).

From that the generic machinery here masks units (hooks on the *inputs* of the output projection
and of the second MLP linear, i.e. exactly the head outputs and post-activation neurons), counts
their cost, and slices the weights. A family adapter adds only what is family-specific: how to find
the blocks, how to set the head count after slicing, how to replace a block part that lost all its
units by the reduced module the spec asks for, how to get logits, and how to rebuild the model from
a saved structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class LayerParts:
    """The prunable pieces of one transformer block."""

    block: nn.Module
    attn: nn.Module  # the module holding the head-count attributes
    out_proj: nn.Linear
    fc1: nn.Linear
    fc2: nn.Linear
    q: nn.Linear | None = None
    k: nn.Linear | None = None
    v: nn.Linear | None = None
    qkv: nn.Linear | None = None  # fused: rows [q; k; v]


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new ``Linear`` keeping ``index`` along ``dim`` (0: output rows, 1: input columns)."""
    index = index.to(linear.weight.device)
    w = linear.weight.index_select(dim, index).detach().clone()
    b = None
    if linear.bias is not None:
        b = (linear.bias.index_select(0, index) if dim == 0 else linear.bias).detach().clone()
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.weight.requires_grad_(linear.weight.requires_grad)
    return new


def _set_child(root: nn.Module, child: nn.Module, new: nn.Module) -> None:
    for name, mod in root.named_modules():
        for cname, c in mod.named_children():
            if c is child:
                setattr(mod, cname, new)
                return
    raise KeyError("module not found under root")


class Adapter:
    """Base class: the generic part of every family."""

    family: ClassVar[str] = ""
    description: ClassVar[str] = ""
    modality: ClassVar[str] = "text"

    def __init__(self, model: nn.Module):
        self.model = model

    # ----- to implement per family -------------------------------------------------------
    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        raise NotImplementedError

    def blocks(self) -> nn.ModuleList | nn.Sequential:
        raise NotImplementedError

    def layer_parts(self, layer: int) -> LayerParts | None:
        """The prunable parts of block ``layer``; parts that were reduced away are None."""
        raise NotImplementedError

    def num_heads(self, layer: int) -> int:
        raise NotImplementedError

    def head_dim(self) -> int:
        raise NotImplementedError

    def hidden_size(self) -> int:
        raise NotImplementedError

    def set_num_heads(self, layer: int, n: int) -> None:
        raise NotImplementedError

    def reduce_attention(self, layer: int) -> None:
        """Replace block ``layer``'s attention (all heads removed) by its reduced form."""
        raise NotImplementedError

    def reduce_mlp(self, layer: int) -> None:
        """Replace block ``layer``'s MLP (all neurons removed) by its reduced form."""
        raise NotImplementedError

    def logits(self, outputs: Any) -> torch.Tensor | None:
        """The logits from the model's forward output (None for a model without a task head)."""
        if isinstance(outputs, torch.Tensor):
            return outputs
        return getattr(outputs, "logits", None)

    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        return self.model(**inputs)

    def export_module(self, input_names: list[str]) -> nn.Module | None:
        """An export-only module ``forward(*inputs) -> logits`` computing the same logits from the
        same parameters in a layout the runtimes fuse better, or None (the default): the exporter
        then traces the model's own forward (``torch.onnx.export(dynamo=True)``)."""
        return None

    def seq_len(self, inputs: dict[str, torch.Tensor]) -> int:
        """Tokens per sequence seen by the blocks (incl. special / class tokens)."""
        raise NotImplementedError

    def token_mask(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``B x T`` bool mask of real (non-padding) tokens in the block outputs."""
        raise NotImplementedError

    def mlp_residual(self, layer: int) -> nn.Module:
        """The module whose first input is the residual stream the MLP's output is added to."""
        raise NotImplementedError

    def branch_scale(self, layer: int, part: str) -> torch.Tensor | None:
        """Per-channel scale applied to a sublayer's output ("attn" or "mlp") before the residual add
        (timm's LayerScale); None when there is none."""
        return None

    def structure(self) -> dict:
        """Everything needed to rebuild the (possibly pruned) architecture without weights."""
        raise NotImplementedError

    @classmethod
    def build_from_structure(cls, spec: dict) -> nn.Module:
        raise NotImplementedError

    # ----- generic ----------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.blocks())

    def num_neurons(self, layer: int) -> int:
        parts = self.layer_parts(layer)
        return 0 if parts is None or parts.fc1 is None else parts.fc1.out_features

    def heads_per_layer(self) -> list[int]:
        return [self.num_heads(i) for i in range(self.num_layers)]

    def neurons_per_layer(self) -> list[int]:
        return [self.num_neurons(i) for i in range(self.num_layers)]

    def head_mac(self, s: int) -> int:
        """Multiply-accumulates of one head at sequence length ``s`` (spec: 4 s d dh + 2 s^2 dh)."""
        d, dh = self.hidden_size(), self.head_dim()
        return 4 * s * d * dh + 2 * s * s * dh

    def neuron_mac(self, s: int) -> int:
        return 2 * s * self.hidden_size()

    def encoder_macs(self, s: int) -> int:
        return sum(self.heads_per_layer()) * self.head_mac(s) + sum(self.neurons_per_layer()) * self.neuron_mac(s)

    # slicing -------------------------------------------------------------------------------
    def keep_heads(self, layer: int, keep: list[int]) -> None:
        """Keep only heads ``keep`` (indices into the current heads) of block ``layer``."""
        n = self.num_heads(layer)
        keep = sorted(set(int(h) for h in keep))
        if any(h < 0 or h >= n for h in keep):
            raise ValueError(f"layer {layer}: head index out of range 0..{n - 1}")
        if len(keep) == n:
            return
        if not keep:
            self.reduce_attention(layer)
            return
        parts = self.layer_parts(layer)
        dh = self.head_dim()
        idx = torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in keep])
        if parts.qkv is not None:
            width = n * dh
            rows = torch.cat([idx + j * width for j in range(3)])
            self._replace(parts.qkv, slice_linear(parts.qkv, rows, 0))
        else:
            for lin in (parts.q, parts.k, parts.v):
                self._replace(lin, slice_linear(lin, idx, 0))
        self._replace(parts.out_proj, slice_linear(parts.out_proj, idx, 1))
        self.set_num_heads(layer, len(keep))

    def keep_neurons(self, layer: int, keep: list[int]) -> None:
        n = self.num_neurons(layer)
        keep = sorted(set(int(j) for j in keep))
        if any(j < 0 or j >= n for j in keep):
            raise ValueError(f"layer {layer}: neuron index out of range 0..{n - 1}")
        if len(keep) == n:
            return
        if not keep:
            self.reduce_mlp(layer)
            return
        parts = self.layer_parts(layer)
        idx = torch.tensor(keep, dtype=torch.long)
        self._replace(parts.fc1, slice_linear(parts.fc1, idx, 0))
        self._replace(parts.fc2, slice_linear(parts.fc2, idx, 1))

    def _replace(self, old: nn.Module, new: nn.Module) -> None:
        _set_child(self.model, old, new)


class BiasOnly(nn.Module):
    """What is left of a projection whose every input unit was removed: its bias, broadcast.

    Exports as an ``Expand`` of a constant, never as a zero-width matmul.
    """

    def __init__(self, bias: torch.Tensor | None, width: int):
        super().__init__()
        b = bias.detach().clone() if bias is not None else torch.zeros(width)
        self.bias = nn.Parameter(b, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*x.shape[:-1], self.bias.shape[0])
