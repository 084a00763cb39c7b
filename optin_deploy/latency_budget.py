"""Selection under a latency budget, closed-loop on the target runtime.

:func:`select_for_latency` selects with a latency table (``optin_deploy.lut``) as the cost model,
builds the pruned model, measures it with the caller's ``measure_fn`` (pruned model -> ms on the
target runtime), and corrects the budget it hands to the selection until the measured latency lies
in ``[low * target, target]`` or ``max_rounds`` is reached::

    from optin_deploy.latency_budget import select_for_latency
    from optin_deploy.lut import make_measure_fn
    from optin_deploy.target import resolve_target

    target = resolve_target("x86-cpu-ort")  # once, at the entry point
    res = select_for_latency(model, (head_scores, neuron_scores), target, "lut.json",
                             target_ms=40.0, measure_fn=make_measure_fn(target))
    res.plan, res.model, res.measured_ms, res.met, res.rounds

Each round: ``budget <- budget * aim / measured`` with ``aim = (low + 1) / 2 * target`` (the middle of
the accepted band), kept strictly inside the bracket of budgets already seen to be over / under
the target (bisection when the multiplicative step would leave it). The result is the best round
that met the target (the highest measured latency <= target, i.e. the most units kept); if none
did, the fastest round, with ``met = False``.

The loop stops as soon as a selection keeps every unit (the dense model): that round is never
measured as "pruned" and never returned; if no pruned round met the target, :class:`OptinError`
says the target cannot be met by pruning on this table.

Relative targets (``build --speedup S``): :func:`optin_deploy.lut.make_relative_measure_fn` times
each candidate against the dense model in the same interleaved blocks and returns
``candidate / dense`` scaled to the table's dense latency, so a machine that slows down between
the table and the target slows both sides alike and the target stays ``dense / S``.
"""

from __future__ import annotations

import math

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .core.costs import CostModel
from .core.selection import Selection, select
from .core.surgery import PrunePlan, apply_plan
from .errors import OptinError
from .profiles import selection_kwargs
from .target import Target


@dataclass
class LatencySelection:
    target_ms: float
    plan: PrunePlan
    selection: Selection
    model: nn.Module  # the pruned model of the chosen round
    predicted_ms: float  # the table's prediction for the chosen plan
    measured_ms: float
    met: bool  # measured <= target
    in_band: bool = False  # low * target <= measured <= target
    rounds: list[dict] = field(default_factory=list)
    chosen_round: int = 0

    def to_dict(self) -> dict:
        return {
            "target_ms": self.target_ms, "predicted_ms": self.predicted_ms, "measured_ms": self.measured_ms,
            "measured_over_target": self.measured_ms / self.target_ms, "met": self.met, "in_band": self.in_band, "chosen_round": self.chosen_round,
            "rounds": self.rounds, "plan": self.plan.to_dict(),
        }


def _split_scores(scores: Any, lam: float = 10.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    if hasattr(scores, "combined"):  # core.scoring.RawScores
        return scores.combined(lam)
    if isinstance(scores, dict) and "heads" in scores:
        return [torch.as_tensor(s, dtype=torch.float64) for s in scores["heads"]], [torch.as_tensor(s, dtype=torch.float64) for s in scores["neurons"]]
    hs, ns = scores
    return [torch.as_tensor(s) for s in hs], [torch.as_tensor(s) for s in ns]


def check_reachable(costs: CostModel, target_ms: float, advice: str = "raise --latency-ms") -> float:
    """The latency with every head and neuron removed on this table (what pruning cannot go below); a target at or
    under it is refused in one line."""
    floor = costs.fixed + sum(costs.attn(l, 0) for l in range(costs.num_layers))
    if target_ms <= floor:
        raise OptinError(
            f"target {target_ms:g} ms is below what pruning can reach on this table ({floor:.3g} ms with every head and "
            f"neuron removed); {advice}"
        )
    return floor


def check_table_up_front(lut: Any, model: nn.Module, target: Target | None, target_ms: float | None = None,
                         advice: str = "raise --latency-ms") -> None:
    """Refuse before scoring a ``--lut`` that cannot serve this model and target (another layer count, text against
    images, a damaged file) or a ``target_ms`` below what pruning can reach on it; the mismatch warnings are left
    to the selection, which reads the table again."""
    import warnings

    from .lut import load_lut

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        costs = load_lut(lut, model, target)
    if target_ms is not None:
        check_reachable(costs, target_ms, advice)


def select_for_latency(
    model: nn.Module,
    scores: Any,
    target: Target | None,
    lut: Any,
    target_ms: float,
    measure_fn: Callable[[nn.Module], float],
    max_rounds: int = 6,
    *,
    low: float = 0.9,
    lam: float = 10.0,
    progress: Callable[[str], None] | None = None,
    advice: str = "raise --latency-ms",
) -> LatencySelection:
    """Prune ``model`` so that its latency measured by ``measure_fn`` is at most ``target_ms``.

    ``scores``: :class:`~optin_deploy.core.scoring.RawScores` (combined with ``lam``), a
    ``(head_scores, neuron_scores)`` pair of per-layer tensors, or ``{"heads": ..., "neurons": ...}``.
    ``advice``: what the refusals tell the user to change (the flag the budget came from).
    ``lut``: a latency table path, :class:`~optin_deploy.lut.LatencyTable` or a ms
    :class:`~optin_deploy.core.costs.CostModel`. ``target`` (resolved once by the caller) gives the alignment multiples.
    ``measure_fn(pruned_model) -> ms`` measures on the target runtime (see
    :func:`optin_deploy.lut.make_measure_fn`). Every round's budget, predicted and measured latency
    is in ``result.rounds``.
    """
    from .lut import LatencyTable, load_lut

    log = progress or (lambda s: None)
    if not (math.isfinite(target_ms) and target_ms > 0):
        raise OptinError(f"--latency-ms must be a positive, finite number of milliseconds, got {target_ms}")
    if max_rounds < 1:
        raise OptinError("max_rounds must be at least 1")
    table = None
    if isinstance(lut, CostModel):
        costs = lut
        table = costs.info.get("lut")
    else:
        if isinstance(lut, LatencyTable):
            table = lut
        costs = load_lut(lut, model, target)
        table = costs.info.get("lut", table)
    if costs.unit != "ms":
        raise OptinError(f"select_for_latency needs a latency cost model (ms), got one in {costs.unit}")
    hs, ns = _split_scores(scores, lam)
    kw = target.selection_kwargs if target is not None else selection_kwargs(None)
    floor = check_reachable(costs, target_ms, advice)
    dense_ms: float | None = None  # the dense model's measured latency, once measured

    def dense_meets() -> float:
        """Measure the dense model (once); refuse when it already meets the target: nothing to prune."""
        nonlocal dense_ms
        if dense_ms is None:
            dense_ms = float(measure_fn(model))
        if dense_ms <= target_ms:
            raise OptinError(
                f"the dense model already meets --latency-ms {target_ms:g} (measured {dense_ms:.3g} ms here, table {costs.dense():.3g} ms); "
                f"nothing to prune: pass a smaller --latency-ms or a --flops budget"
            )
        return dense_ms

    if costs.dense() <= target_ms:  # the table says the dense model fits: measure it to be sure, then stop
        dense_meets()

    def predict(plan: PrunePlan, sel: Selection) -> float:
        if table is not None:
            h, n = plan.counts()
            return float(table.predict(h, n))
        return float(sel.cost)

    rounds: list[dict] = []
    built: dict[tuple, tuple[Selection, nn.Module, float]] = {}
    lo, hi = None, None  # largest budget measured within target, smallest measured over
    lo_m = hi_m = 0.0  # their measured latencies
    budget = float(target_ms)
    aim = (1.0 + low) / 2.0 * target_ms
    dense_counts = (list(costs.head_counts), list(costs.neuron_counts))
    for r in range(max_rounds):
        try:
            sel = select(hs, ns, costs, budget, **kw)
        except ValueError:
            raise OptinError(f"no plan fits a budget of {budget:.3g} ms on this latency table; {advice}") from None
        if tuple(map(list, sel.plan.counts())) == tuple(dense_counts):
            if lo is None:
                rounds.append({"round": r, "budget_ms": budget, "dense": True, "stopped": "the selection is the dense model"})
                log(f"round {r}: budget {budget:.3f} ms selects the dense model: stop")
                break
            # A pruned round came in under the target and the budget grew into the dense model: the table over-predicts
            # here. The dense model is measured (once): if it meets the target there is nothing to prune (the build
            # stopped here and shipped the far faster, far smaller first round); else it is the upper end of the bracket.
            measured = dense_meets()
            rounds.append({"round": r, "budget_ms": budget, "dense": True, "measured_ms": measured,
                           "stopped": None, "note": "the selection is the dense model: measured as the bracket's upper end"})
            log(f"round {r}: budget {budget:.3f} ms selects the dense model, measured {measured:.3f} ms (target {target_ms:g}): "
                f"the target lies between it and the rounds under it")
            if hi is None or budget < hi:
                hi, hi_m = budget, measured
            frac = (aim - lo_m) / (hi_m - lo_m) if hi_m > lo_m else 0.5
            budget = max(lo + min(max(frac, 0.15), 0.85) * (hi - lo), floor * 1.0001)
            continue
        key = (tuple(map(tuple, sel.plan.heads)), tuple(map(tuple, sel.plan.neurons)))
        if key in built:
            sel, pruned, measured = built[key]
            reused = True
        else:
            pruned = apply_plan(model, sel.plan)
            measured = float(measure_fn(pruned))
            built[key] = (sel, pruned, measured)
            reused = False
        pred = predict(sel.plan, sel)
        h, n = sel.plan.counts()
        rounds.append({
            "round": r, "budget_ms": budget, "predicted_ms": pred, "selection_cost_ms": float(sel.cost), "measured_ms": measured,
            "measured_over_target": measured / target_ms, "prediction_error": (pred - measured) / measured,
            "heads": h, "neurons": n, "reused_measurement": reused,
        })
        log(f"round {r}: budget {budget:.3f} ms -> predicted {pred:.3f} ms, measured {measured:.3f} ms (target {target_ms:g})")
        if measured <= target_ms:
            if lo is None or budget > lo:
                lo, lo_m = budget, measured
        else:
            if hi is None or budget < hi:
                hi, hi_m = budget, measured
        if low * target_ms <= measured <= target_ms:
            break
        if lo is not None and hi is not None:
            # bracketed: interpolate budget -> measured latency between the two closest measurements
            # (regula falsi), kept away from the ends so the bracket keeps shrinking
            frac = (aim - lo_m) / (hi_m - lo_m) if hi_m > lo_m else 0.5
            new = lo + min(max(frac, 0.15), 0.85) * (hi - lo)
        else:
            new = budget * aim / measured
        budget = max(new, floor * 1.0001)

    measured_rounds = [(i, rd) for i, rd in enumerate(rounds) if not rd.get("dense")]
    if not measured_rounds:
        raise OptinError(f"a budget of {target_ms:g} ms selects the dense model on this latency table (it predicts "
                         f"{costs.total(*dense_counts):.3g} ms for it): nothing to prune; ask for less (lower --latency-ms, higher --speedup)")
    ok = [(i, rd) for i, rd in measured_rounds if rd["measured_ms"] <= target_ms]
    if ok:
        idx = max(ok, key=lambda t: (t[1]["measured_ms"], -t[0]))[0]
    else:
        idx = min((i for i, _ in measured_rounds), key=lambda i: rounds[i]["measured_ms"])
    rd = rounds[idx]
    sel_key = None
    for key, (sel, pruned, measured) in built.items():
        if list(map(len, key[0])) == rd["heads"] and list(map(len, key[1])) == rd["neurons"] and measured == rd["measured_ms"]:
            sel_key = key
            break
    sel, pruned, measured = built[sel_key]
    met = measured <= target_ms
    return LatencySelection(target_ms, sel.plan, sel, pruned, rd["predicted_ms"], measured, met,
                            met and measured >= low * target_ms, rounds, idx)
