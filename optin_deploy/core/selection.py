"""Selection under a budget (``shared/OPTIN.md``).

For each candidate number of kept heads ``n_h`` (all heads down to the minimum): keep the ``n_h``
highest-scoring heads, spend what is left of the budget on the highest-scoring neurons, and sum the
scores of everything kept. The ``n_h`` with the largest total wins.

Hardware alignment: a profile may ask for kept neurons per layer in multiples of ``m`` (and heads in
multiples of ``mh``). Then units are taken in aligned groups: within a layer, neurons are grouped
by descending score into blocks of ``m`` and each block is one selectable item whose score is the
block's sum and whose cost is ``m`` neurons. The budget is never exceeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .costs import CostModel
from .surgery import PrunePlan


@dataclass
class Selection:
    plan: PrunePlan
    cost: float
    dense_cost: float
    total_score: float
    candidates: list[dict]

    @property
    def ratio(self) -> float:
        return self.cost / self.dense_cost if self.dense_cost else 0.0


def _groups(scores: torch.Tensor, multiple: int) -> tuple[list[list[int]], torch.Tensor]:
    """Indices grouped by descending score into blocks of ``multiple`` and the blocks' scores."""
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    m = max(1, multiple)
    full = (len(order) // m) * m
    if full == 0 and order:  # a layer narrower than the multiple: all or nothing
        return [order], scores[order].sum().reshape(1)
    blocks = [order[i : i + m] for i in range(0, full, m)]
    return blocks, torch.stack([scores[b].sum() for b in blocks]) if blocks else torch.zeros(0)


def select(
    head_scores: list[torch.Tensor],
    neuron_scores: list[torch.Tensor],
    costs: CostModel,
    budget: float,
    *,
    head_multiple: int = 1,
    neuron_multiple: int = 1,
    min_heads: int = 0,
) -> Selection:
    """Best plan whose cost is at most ``budget`` (in the cost model's unit, absolute)."""
    L = costs.num_layers
    dense = costs.dense()
    # Heads: aligned groups within layers, ranked globally by group score (per head).
    h_items = []  # (score, layer, indices)
    for l in range(L):
        blocks, bs = _groups(head_scores[l].double(), head_multiple)
        h_items += [(float(s), l, b) for s, b in zip(bs, blocks)]
    h_items.sort(key=lambda t: (-t[0], t[1]))
    # Neurons: one item per aligned group; ranked by score (ties: cheaper layer first).
    n_score, n_cost, n_layer, n_idx = [], [], [], []
    for l in range(L):
        blocks, bs = _groups(neuron_scores[l].double(), neuron_multiple)
        for s, b in zip(bs.tolist(), blocks):
            n_score.append(s)
            n_cost.append(len(b) * costs.neuron[l])
            n_layer.append(l)
            n_idx.append(b)
    n_score_t = torch.tensor(n_score, dtype=torch.float64)
    n_cost_t = torch.tensor(n_cost, dtype=torch.float64)
    order = torch.argsort(n_score_t, descending=True, stable=True)
    cum_cost = torch.cumsum(n_cost_t[order], 0)
    cum_score = torch.cumsum(n_score_t[order], 0)

    best = None
    candidates = []
    states = [(0, [0] * L, 0.0)]
    for i, (s, l, b) in enumerate(h_items):
        kept_heads = list(states[-1][1])
        kept_heads[l] += len(b)
        states.append((i + 1, kept_heads, states[-1][2] + s))
    for n_items, counts, hs in reversed(states):
        if sum(counts) < min_heads:
            continue
        attn_cost = costs.fixed + sum(costs.attn(l, counts[l]) for l in range(L))
        left = budget - attn_cost
        if left < 0:
            candidates.append({"heads": sum(counts), "feasible": False})
            continue
        k = int(torch.searchsorted(cum_cost, torch.tensor([left + 1e-9 * max(1.0, abs(left))], dtype=torch.float64), right=True)[0]) if len(cum_cost) else 0
        ns = float(cum_score[k - 1]) if k > 0 else 0.0
        total = hs + ns
        spent = attn_cost + (float(cum_cost[k - 1]) if k > 0 else 0.0)
        candidates.append({"heads": sum(counts), "neurons_items": k, "score": total, "cost": spent, "feasible": True})
        if best is None or total > best[0]:
            best = (total, n_items, k, spent)
    if best is None:
        raise ValueError("no plan fits the budget: even removing every head and neuron costs more")
    total, n_items, k, spent = best
    heads: list[list[int]] = [[] for _ in range(L)]
    for s, l, b in h_items[:n_items]:
        heads[l] += b
    neurons: list[list[int]] = [[] for _ in range(L)]
    for j in order[:k].tolist():
        neurons[n_layer[j]] += n_idx[j]
    plan = PrunePlan([sorted(h) for h in heads], [sorted(n) for n in neurons])
    return Selection(plan, spent, dense, total, candidates)
