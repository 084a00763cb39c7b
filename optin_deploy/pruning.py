"""Glue from a model and calibration data to a physically pruned model: score, select, slice.

Kept out of :mod:`optin_deploy.core` only because it also picks the scorer and prints; the core
stays free of any runtime or UI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from rich.table import Table
from torch import nn

from .adapters import get_adapter
from .core.api import estimate_exact_seconds, score_model
from .core.costs import CostModel, mac_cost_model
from .core.reconstruct import DEFAULT_DAMP, DEFAULT_FIT, FITS, reconstruct
from .core.scoring import RawScores, ScoreSettings
from .core.selection import Selection, select
from .core.surgery import apply_plan
from .errors import OptinError
from .progress import console, progress_bar, step

SCORING_CHOICES = ("auto", "exact", "fast")
SCORERS = ("optin", "random", "magnitude", "fisher")
AUTO_EXACT_LIMIT_S = 300.0  # "auto" picks exact scoring only when it should finish in 5 minutes


@dataclass
class PruneResult:
    model: nn.Module
    selection: Selection
    scores: RawScores | None
    scoring: str
    scoring_seconds: float
    cost_model: CostModel
    dense_macs: int
    pruned_macs: int
    notes: list[str] = field(default_factory=list)
    reconstruction: dict | None = None

    def summary(self) -> dict:
        a = get_adapter(self.model)
        return {
            "scoring": self.scoring,
            "scoring_seconds": round(self.scoring_seconds, 2),
            "scores_cached": bool(self.scores and self.scores.info.get("cached")),
            "heads_per_layer": a.heads_per_layer(),
            "neurons_per_layer": a.neurons_per_layer(),
            "macs": {"dense": self.dense_macs, "pruned": self.pruned_macs, "ratio": round(self.pruned_macs / self.dense_macs, 4)},
            "budget_cost": self.selection.cost,
            "budget_unit": self.cost_model.unit,
            "notes": self.notes,
            "reconstruction": self.reconstruction,
        }


def check_refit(fit: str, damp: float) -> None:
    if fit not in FITS:
        raise OptinError(f"unknown --reconstruct-fit {fit!r}; choose from {', '.join(FITS)}")
    if not damp > 0:
        raise OptinError(f"--reconstruct-damp must be positive, got {damp}")


def check_budget(flops: float) -> None:
    if not (0.0 < flops <= 1.0):
        raise OptinError(f"--flops must be in (0, 1] (the fraction of the dense encoder's MACs to keep), got {flops}")


def compute_scores(model: nn.Module, calib: dict[str, torch.Tensor], *, scoring: str = "auto", scorer: str = "optin",
                   settings: ScoreSettings | None = None, probes: int = 64) -> tuple[list, list, RawScores | None, str, float, list[str]]:
    """Head and neuron scores (higher = keep) for the chosen scorer."""
    notes: list[str] = []
    settings = settings or ScoreSettings()
    t0 = time.perf_counter()
    if scorer != "optin":
        from .core import baselines

        if scorer not in baselines.SCORERS:
            raise OptinError(f"unknown --scorer {scorer!r}; choose from {', '.join(SCORERS)}")
        step(f"scoring heads and neurons with the {scorer} baseline")
        hs, ns = baselines.SCORERS[scorer](get_adapter(model), calib, seed=settings.seed)
        return hs, ns, None, scorer, time.perf_counter() - t0, notes
    if scoring not in SCORING_CHOICES:
        raise OptinError(f"unknown --scoring {scoring!r}; choose from {', '.join(SCORING_CHOICES)}")
    method = scoring
    if scoring == "auto":
        est = estimate_exact_seconds(model, calib)
        method = "exact" if est <= AUTO_EXACT_LIMIT_S else "fast"
        if method == "fast":
            notes.append(f"exact scoring would take about {est / 60:.0f} min here, so fast scoring (exact heads, Hutchinson neurons, {probes} probes) was used")
            step(notes[-1])
    a = get_adapter(model)
    n_units = sum(a.heads_per_layer()) + sum(a.neurons_per_layer())
    step(f"OPTIN {method} scoring of {n_units} units on {next(iter(calib.values())).shape[0]} calibration samples")
    with progress_bar(f"scoring ({method})") as update:
        raw = score_model(model, calib, method, settings, probes=probes, progress=update)
    if raw.info.get("cached"):
        step(f"scores loaded from cache {raw.info.get('cache_file')}")
    hs, ns = raw.combined(settings.lam)
    # the time the scores took to compute, also when this run loaded them from the cache
    return hs, ns, raw, method, raw.seconds, notes


def prune(model: nn.Module, calib: dict[str, torch.Tensor], *, flops: float | None = 0.6, costs: CostModel | None = None, budget: float | None = None,
          scoring: str = "auto", scorer: str = "optin", settings: ScoreSettings | None = None, probes: int = 64,
          head_multiple: int = 1, neuron_multiple: int = 1, scores=None, reconstruct: bool = False,
          fit: str = DEFAULT_FIT, damp: float = DEFAULT_DAMP, teacher_cache: dict | None = None) -> PruneResult:
    """Score (or reuse ``scores``), select under the budget, slice, and optionally refit the kept units
    (:mod:`optin_deploy.core.reconstruct`). ``model`` is not modified."""
    a = get_adapter(model)
    seq = a.seq_len(calib)
    macs = mac_cost_model(model, seq)
    if costs is None:
        check_budget(flops)
        costs, budget = macs, flops * macs.dense()
    if scores is None:
        scores = compute_scores(model, calib, scoring=scoring, scorer=scorer, settings=settings, probes=probes)
    hs, ns, raw, method, secs, notes = scores
    try:
        sel = select(hs, ns, costs, budget, head_multiple=head_multiple, neuron_multiple=neuron_multiple)
    except ValueError as exc:
        raise OptinError(f"budget too small: {exc}; raise the budget") from None
    pruned = apply_plan(model, sel.plan).eval()
    rec = refit(model, pruned, calib, fit, damp, teacher_cache=teacher_cache) if reconstruct else None
    pa = get_adapter(pruned)
    return PruneResult(pruned, sel, raw, method, secs, costs, a.encoder_macs(seq), pa.encoder_macs(seq), notes, rec)


def refit(dense: nn.Module, pruned: nn.Module, calib: dict[str, torch.Tensor], fit: str = DEFAULT_FIT, damp: float = DEFAULT_DAMP,
          teacher_cache: dict | None = None) -> dict:
    """Least-squares refit of the kept units of ``pruned`` (in place) on the calibration batch."""
    check_refit(fit, damp)
    step(f"refitting the kept units' output {fit} layer by layer on the calibration batch (damping {damp})")
    with progress_bar("refit") as update:
        rep = reconstruct(dense, pruned, calib, fit=fit, damp=damp, progress=update, teacher_cache=teacher_cache)
    out = rep.to_dict()
    if rep.layers:
        before = sum(r["error_before"] for r in rep.layers) / len(rep.layers)
        after = sum(r["error_after"] for r in rep.layers) / len(rep.layers)
        out.update({"mean_error_before": round(before, 5), "mean_error_after": round(after, 5)})
        step(f"refit {len(rep.layers)} sublayers in {rep.seconds:.1f}s: mean relative reconstruction error {before:.4f} -> {after:.4f}")
    return out


def layer_table(dense: nn.Module, pruned: nn.Module, title: str = "kept per layer") -> Table:
    d, p = get_adapter(dense), get_adapter(pruned)
    t = Table(title=title)
    for col in ("layer", "heads", "MLP width", "note"):
        t.add_column(col, justify="right" if col != "note" else "left")
    for l in range(d.num_layers):
        h0, h1, f0, f1 = d.num_heads(l), p.num_heads(l), d.num_neurons(l), p.num_neurons(l)
        note = []
        if h1 == 0:
            note.append("attention reduced to its bias")
        if f1 == 0:
            note.append("MLP reduced to its bias")
        t.add_row(str(l), f"{h1}/{h0}", f"{f1}/{f0}", ", ".join(note))
    t.add_row("all", f"{sum(p.heads_per_layer())}/{sum(d.heads_per_layer())}", f"{sum(p.neurons_per_layer())}/{sum(d.neurons_per_layer())}", "")
    return t


def print_layer_table(dense: nn.Module, pruned: nn.Module) -> None:
    console.print(layer_table(dense, pruned))
