"""The budget currency: cost of heads and neurons, per layer.

A :class:`CostModel` gives the cost of layer ``l`` with ``h`` heads and ``f`` neurons as
``attn(l, h) + f * neuron[l]`` plus a constant ``fixed`` part that pruning cannot remove. With MACs
(``shared/OPTIN.md``) ``attn(l, h) = h * head_mac[l]`` and ``fixed = 0``, where a head's and a
neuron's MACs depend on the layer's hidden size, head size and token count (equal in every layer of
a plain ViT / BERT, different per stage in Swin); the budget is still one number for the whole
model. A latency table
(``optin-deploy lut``) gives measured, possibly non-linear ``attn`` and per-neuron slopes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from ..adapters import get_adapter


@dataclass
class CostModel:
    num_layers: int
    head_counts: list[int]
    neuron_counts: list[int]
    attn: Callable[[int, int], float]  # (layer, kept heads) -> cost
    neuron: list[float]  # cost of one neuron, per layer
    fixed: float = 0.0
    unit: str = "MACs"
    info: dict = field(default_factory=dict)

    def total(self, heads: list[int], neurons: list[int]) -> float:
        return self.fixed + sum(self.attn(l, heads[l]) + neurons[l] * self.neuron[l] for l in range(self.num_layers))

    def dense(self) -> float:
        return self.total(self.head_counts, self.neuron_counts)


def mac_cost_model(model: nn.Module, seq_len: int) -> CostModel:
    """Encoder MACs of the prunable parts when the model sees ``seq_len`` tokens (spec formulas, per layer)."""
    a = get_adapter(model)
    L = a.num_layers
    hm = [float(a.head_mac(seq_len, l)) for l in range(L)]
    nm = [float(a.neuron_mac(seq_len, l)) for l in range(L)]
    return CostModel(L, a.heads_per_layer(), a.neurons_per_layer(), lambda l, h: h * hm[l], nm, 0.0, "MACs",
                     {"seq_len": seq_len, "head_macs": hm, "neuron_macs": nm})


def counted_encoder_macs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """MACs of the transformer blocks, counted by ``torch.utils.flop_counter`` on a real pass.

    Counts the matmuls inside the blocks only (embeddings and task head are not prunable), with
    eager attention so the score/weighted-sum matmuls are visible to the counter. Batch 1.
    """
    from torch.utils.flop_counter import FlopCounterMode

    a = get_adapter(model)
    cfg = getattr(model, "config", None)
    old_impl = getattr(cfg, "_attn_implementation", None)
    if cfg is not None:
        cfg._attn_implementation = "eager"
    fused = []
    for blk in a.blocks():
        att = getattr(blk, "attn", None)
        if att is not None and hasattr(att, "fused_attn"):
            fused.append((att, att.fused_attn))
            att.fused_attn = False
    inputs = {k: v[:1] for k, v in inputs.items()}
    totals: list[int] = []
    handles = []
    counter = FlopCounterMode(display=False)

    def pre(module, args, kwargs):
        counter.__enter__()

    def post(module, args, output):
        counter.__exit__(None, None, None)
        totals.append(counter.get_total_flops())

    try:

        for blk in a.blocks():
            handles.append(blk.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(blk.register_forward_hook(post))
        with torch.no_grad():
            a.forward(inputs)
    finally:
        for h in handles:
            h.remove()
        if cfg is not None:
            cfg._attn_implementation = old_impl
        for att, f in fused:
            att.fused_attn = f
    return sum(totals) // 2
