"""Physical removal: turn a keep-plan into a smaller model with sliced weights.

Per-layer head counts and MLP widths may all differ. A block that keeps no heads (or no neurons)
has that part replaced by its reduced form (see the adapters). The result runs in plain PyTorch:
no hooks, no masks.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..adapters import get_adapter


@dataclass
class PrunePlan:
    """Indices of the heads and neurons to KEEP, per layer (indices into the dense model)."""

    heads: list[list[int]]
    neurons: list[list[int]]

    def counts(self) -> tuple[list[int], list[int]]:
        return [len(h) for h in self.heads], [len(n) for n in self.neurons]

    def to_dict(self) -> dict:
        return {"heads": [sorted(map(int, h)) for h in self.heads], "neurons": [sorted(map(int, n)) for n in self.neurons]}

    @classmethod
    def from_dict(cls, d: dict) -> "PrunePlan":
        return cls([list(h) for h in d["heads"]], [list(n) for n in d["neurons"]])

    @classmethod
    def full(cls, model: nn.Module) -> "PrunePlan":
        a = get_adapter(model)
        return cls([list(range(h)) for h in a.heads_per_layer()], [list(range(f)) for f in a.neurons_per_layer()])


def apply_plan(model: nn.Module, plan: PrunePlan, inplace: bool = False) -> nn.Module:
    """Slice ``model`` down to ``plan`` (a copy unless ``inplace``)."""
    if not inplace:
        model = copy.deepcopy(model)
    adapter = get_adapter(model)
    if len(plan.heads) != adapter.num_layers or len(plan.neurons) != adapter.num_layers:
        raise ValueError(f"plan has {len(plan.heads)} layers, model has {adapter.num_layers}")
    for layer in range(adapter.num_layers):
        adapter.keep_heads(layer, plan.heads[layer])
        adapter.keep_neurons(layer, plan.neurons[layer])
    return model


def plan_masks(model: nn.Module, plan: PrunePlan) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """0/1 masks equivalent to ``plan`` (for checking surgery against masking)."""
    a = get_adapter(model)
    hm, nm = [], []
    for layer in range(a.num_layers):
        h = torch.zeros(a.num_heads(layer))
        h[list(plan.heads[layer])] = 1.0
        n = torch.zeros(a.num_neurons(layer))
        n[list(plan.neurons[layer])] = 1.0
        hm.append(h)
        nm.append(n)
    return hm, nm


def random_plan(model: nn.Module, seed: int = 0, keep: float = 0.5, empty_heads_layer: int | None = None, empty_mlp_layer: int | None = None) -> PrunePlan:
    """A random non-uniform plan (for tests): each layer keeps a random share around ``keep``."""
    a = get_adapter(model)
    g = torch.Generator().manual_seed(seed)
    heads, neurons = [], []
    for layer in range(a.num_layers):
        H, Fn = a.num_heads(layer), a.num_neurons(layer)
        nh = 0 if layer == empty_heads_layer else max(1, int(round(H * float(torch.empty(1).uniform_(keep * 0.5, min(1.0, keep * 1.5), generator=g)))))
        nf = 0 if layer == empty_mlp_layer else max(1, int(round(Fn * float(torch.empty(1).uniform_(keep * 0.5, min(1.0, keep * 1.5), generator=g)))))
        heads.append(sorted(torch.randperm(H, generator=g)[: min(nh, H)].tolist()))
        neurons.append(sorted(torch.randperm(Fn, generator=g)[: min(nf, Fn)].tolist()))
    return PrunePlan(heads, neurons)
