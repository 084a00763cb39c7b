"""Glue from a model and calibration data to a physically pruned model: score, select, slice.

Kept out of :mod:`optin_deploy.core` only because it also picks the scorer and prints; the core
stays free of any runtime or UI.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from rich.table import Table
from torch import nn

from .adapters import get_adapter
from .core.score_cache import estimate_exact_seconds, score_model
from .core.costs import CostModel, mac_cost_model
from .core.reconstruct import DEFAULT_DAMP, DEFAULT_FIT, FITS, reconstruct
from .core.scoring import RawScores, ScoreSettings
from .core.selection import Selection, select
from .core.surgery import apply_plan
from .errors import OptinError
from .profiles import DEFAULT_PROFILE
from .progress import console, progress_bar, step, warn

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


def check_reconstruct(fit: str, damp: float) -> None:
    if fit not in FITS:
        raise OptinError(f"unknown --reconstruct-fit {fit!r}; choose from {', '.join(FITS)}")
    if not (math.isfinite(damp) and damp > 0):  # inf made every refit weight NaN (0 * inf), written with exit 0
        raise OptinError(f"--reconstruct-damp must be positive and finite, got {damp}")


def warn_unused_refit(reconstruct: bool, fit: str, damp: float, refit_samples: int) -> list[str]:
    """With ``--no-reconstruct`` the refit's settings do nothing: say so (they were dropped without a word)."""
    if reconstruct:
        return []
    given = [flag for flag, value, default in (("--reconstruct-fit", fit, DEFAULT_FIT), ("--reconstruct-damp", damp, DEFAULT_DAMP),
                                               ("--refit-samples", refit_samples, REFIT_SAMPLES)) if value != default]
    if given:
        warn(f"{', '.join(given)} {'has' if len(given) == 1 else 'have'} no effect with --no-reconstruct (no refit runs); "
             f"drop --no-reconstruct to refit the kept units")
    return given


REFIT_SAMPLES = 0  # training samples the refit fits on (a superset of the scoring batch); 0: the scoring batch (512 measured no better: README)
# what the dense model's per-layer captures of the refit batch may take (4 tensors of hidden-size rows per real token
# and layer, fp32; a budget search keeps them for every layer): a wider or deeper model, or longer inputs, fit on fewer
REFIT_MEMORY = 2 * 2 ** 30


def check_seed(seed) -> None:
    """Seeds seed torch's and numpy's generators: an integer from 0 to 2**32 - 1."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise OptinError(f"--seed must be an integer from 0 to {2**32 - 1}, got {seed}")


def check_refit_samples(n: int) -> None:
    if n < 0:
        raise OptinError(f"--refit-samples must be 0 or more (0: the scoring batch), got {n}")


def refit_batch(task, model: nn.Module, calib: dict[str, torch.Tensor], refit_samples: int, seed: int = 0, *,
                memory: float = REFIT_MEMORY) -> dict[str, torch.Tensor]:
    """The batch the refit fits on: the scoring batch's seeded draw extended to ``refit_samples`` training samples
    (the same order, so it holds the scoring batch), fewer when the training split is smaller or the dense model's
    captures would take more than ``memory`` bytes; the scoring batch itself when that leaves no more samples.
    A least-squares fit of a few thousand columns over a few thousand rows overfits the batch; more rows fit the
    units' outputs on more of the data (on MiniLM sentiment: README, "Refitting the kept units")."""
    n_cal = int(next(iter(calib.values())).shape[0])
    if refit_samples <= n_cal:
        return calib
    a = get_adapter(model)
    try:
        per_sample = 16.0 * sum(int(a.layer_token_mask(calib, l).sum()) * a.layer_hidden_size(l) for l in range(a.num_layers)) / n_cal
    except Exception:  # noqa: BLE001 - a family without a per-layer token mask from inputs alone: the scoring batch
        return calib
    n = min(refit_samples, len(task.data.train), int(memory // max(per_sample, 1.0)))
    return task.calibration(n, seed=seed) if n > n_cal else calib


def check_budget(flops: float) -> None:
    if not (0.0 < flops <= 1.0):
        raise OptinError(f"--flops must be in (0, 1] (the fraction of the dense encoder's MACs to keep), got {flops}")


def check_keeps_something(costs: CostModel, budget: float, what: str, head_multiple: int = 1, neuron_multiple: int = 1) -> None:
    """Refuse, before any scoring, a budget too small to keep even one head or one block of neurons."""
    empty = costs.total([0] * costs.num_layers, [0] * costs.num_layers)
    cheapest = min(
        [costs.attn(l, min(head_multiple, costs.head_counts[l])) - costs.attn(l, 0) for l in range(costs.num_layers) if costs.head_counts[l]]
        + [min(neuron_multiple, costs.neuron_counts[l]) * costs.neuron[l] for l in range(costs.num_layers) if costs.neuron_counts[l]]
        or [0.0]
    )
    if budget < empty + cheapest:
        smallest = (empty + cheapest) / costs.dense()
        raise OptinError(f"{what} would remove every head and neuron of the model (the smallest budget that keeps one unit is "
                         f"{smallest:.4f} of the dense cost); raise it")


def warn_unreachable_units(model: nn.Module, head_multiple: int = 1, neuron_multiple: int = 1, profile: str | None = None) -> list[str]:
    """Warn, one line per kind, when the profile's alignment can never keep every unit of a layer: kept heads / neurons
    are whole multiples of ``head_multiple`` / ``neuron_multiple``, so a layer of 4 heads under ``head_multiple = 3``
    keeps at most 3, even at ``--flops 1.0`` (a layer narrower than the multiple keeps all or nothing). It was silent:
    ``--flops 1.0`` returned a model with a head less per layer. Returns the lines."""
    a = get_adapter(model)
    where = f"profile {profile}'s " if profile else ""
    lines = []
    for what, unit, m, counts in (("head_multiple", "heads", head_multiple, a.heads_per_layer()),
                                  ("neuron_multiple", "MLP neurons", neuron_multiple, a.neurons_per_layer())):
        m = max(1, int(m))
        lost = {n: (n // m) * m for n in counts if n > m and n % m}
        if lost:
            kept = ", ".join(f"{k} of {n}" for n, k in sorted(lost.items()))
            lines.append(f"{where}{what} {m} does not divide the {unit} per layer: a layer keeps at most {kept}, even at --flops 1.0; "
                         f"pick a {what} that divides them to be able to keep them all")
    for line in lines:
        warn(line)
    return lines


def report_emptied(dense: nn.Module, pruned: nn.Module) -> None:
    """Refuse a pruned model with no unit left; warn, one line, when this budget empties a layer's attention or
    MLP (a part the input model had already lost, re-pruning a pruned model, is not news)."""
    p, d = get_adapter(pruned), get_adapter(dense)
    heads, neurons = p.heads_per_layer(), p.neurons_per_layer()
    had_heads, had_neurons = d.heads_per_layer(), d.neurons_per_layer()
    if sum(heads) == 0 and sum(neurons) == 0:
        raise OptinError("the budget removes every head and neuron of the model; raise the budget")
    emptied = []
    for l, (h, f) in enumerate(zip(heads, neurons)):
        parts = [name for name, now, before in (("attention", h, had_heads[l]), ("MLP", f, had_neurons[l])) if now == 0 and before > 0]
        if parts:
            emptied.append(f"{l} ({' and '.join(parts)})")
    if emptied:
        warn(f"the budget empties layer {', '.join(emptied)}: only the bias of those parts is left; accuracy may suffer, consider a larger budget")


@dataclass
class Scores:
    """The score stage's output: per-layer head and neuron scores (higher = keep) of one scorer, the
    raw OPTIN terms (None for a baseline scorer), the method used, the seconds the scores took to
    compute (also when loaded from the cache) and notes for the report. Unpacks as the 6-tuple
    ``heads, neurons, raw, method, seconds, notes``."""

    heads: list
    neurons: list
    raw: RawScores | None
    method: str
    seconds: float
    notes: list[str] = field(default_factory=list)

    def __iter__(self):
        return iter((self.heads, self.neurons, self.raw, self.method, self.seconds, self.notes))

    @property
    def cached(self) -> bool:
        return bool(self.raw is not None and self.raw.info.get("cached"))

    def to_dict(self) -> dict:
        return {"method": self.method, "seconds": round(self.seconds, 2), "cached": self.cached, "notes": list(self.notes)}


def compute_scores(model: nn.Module, calib: dict[str, torch.Tensor], *, scoring: str = "auto", scorer: str = "optin",
                   settings: ScoreSettings | None = None, probes: int = 64) -> Scores:
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
        return Scores(hs, ns, None, scorer, time.perf_counter() - t0, notes)
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
    if raw.info.get("cache_discarded"):
        warn(f"the score cache entry {raw.info.get('cache_file')} was corrupt ({raw.info['cache_discarded']}); it was discarded and the scores recomputed")
    hs, ns = raw.combined(settings.lam)
    # the time the scores took to compute, also when this run loaded them from the cache
    return Scores(hs, ns, raw, method, raw.seconds, notes)


def prune(model: nn.Module, calib: dict[str, torch.Tensor], *, flops: float | None = 0.6, costs: CostModel | None = None, budget: float | None = None,
          scoring: str = "auto", scorer: str = "optin", settings: ScoreSettings | None = None, probes: int = 64,
          head_multiple: int = 1, neuron_multiple: int = 1, scores=None, reconstruct: bool = False,
          fit: str = DEFAULT_FIT, damp: float = DEFAULT_DAMP, teacher_cache: dict | None = None,
          refit_calib: dict[str, torch.Tensor] | None = None) -> PruneResult:
    """Score (or reuse ``scores``), select under the budget, slice, and optionally reconstruct the kept units
    (:mod:`optin_deploy.core.reconstruct`) on ``refit_calib`` (default: the scoring batch ``calib``). ``model`` is
    not modified."""
    a = get_adapter(model)
    # MACs are reported at the length the given cost model counts them at (else the calibration's)
    seq = (costs.info.get("seq_len") if costs is not None else None) or a.seq_len(calib)
    if costs is None:
        check_budget(flops)
        costs = mac_cost_model(model, seq)
        budget = flops * costs.dense()
        check_keeps_something(costs, budget, f"--flops {flops}", head_multiple, neuron_multiple)
    if probes < 1:
        raise OptinError(f"--probes must be at least 1, got {probes}")
    if scores is None:
        scores = compute_scores(model, calib, scoring=scoring, scorer=scorer, settings=settings, probes=probes)
    hs, ns, raw, method, secs, notes = scores
    try:
        sel = select(hs, ns, costs, budget, head_multiple=head_multiple, neuron_multiple=neuron_multiple)
    except ValueError as exc:
        raise OptinError(f"budget too small: {exc}; raise the budget") from None
    pruned = apply_plan(model, sel.plan).eval()
    rec = (reconstruct_kept_units(model, pruned, calib if refit_calib is None else refit_calib, fit, damp, teacher_cache=teacher_cache)
           if reconstruct else None)
    pa = get_adapter(pruned)
    return PruneResult(pruned, sel, raw, method, secs, costs, a.encoder_macs(seq), pa.encoder_macs(seq), notes, rec)


def reconstruct_kept_units(dense: nn.Module, pruned: nn.Module, calib: dict[str, torch.Tensor], fit: str = DEFAULT_FIT, damp: float = DEFAULT_DAMP,
          teacher_cache: dict | None = None) -> dict:
    """Reconstruction: a least-squares refit of the kept units' output weights of ``pruned`` (in place) on the
    calibration batch, so each pruned sublayer adds what the dense one added (:mod:`optin_deploy.core.reconstruct`)."""
    check_reconstruct(fit, damp)
    n = int(next(iter(calib.values())).shape[0])
    step(f"reconstructing the kept units: least-squares fit of their output {fit}, layer by layer on {n} calibration samples (damping {damp})")
    with progress_bar("reconstruct") as update:
        rep = reconstruct(dense, pruned, calib, fit=fit, damp=damp, progress=update, teacher_cache=teacher_cache)
    out = {**rep.to_dict(), "samples": n}
    if rep.layers:
        before = sum(r["error_before"] for r in rep.layers) / len(rep.layers)
        after = sum(r["error_after"] for r in rep.layers) / len(rep.layers)
        out.update({"mean_error_before": round(before, 5), "mean_error_after": round(after, 5)})
        step(f"reconstructed {len(rep.layers)} sublayers in {rep.seconds:.1f}s: mean relative reconstruction error {before:.4f} -> {after:.4f}")
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


def prune_to_folder(model_spec: str, data: str | None, out, *, flops: float = 0.6, calib_samples: int = 128, calib_length: int = 64,
                    scoring: str = "auto", scorer: str = "optin", probes: int = 64, reconstruct: bool = True, fit: str = DEFAULT_FIT,
                    damp: float = DEFAULT_DAMP, seed: int = 0, text_column: str = "text", label_column: str = "label",
                    force: bool = False, profile=DEFAULT_PROFILE, refit_samples: int = REFIT_SAMPLES) -> dict:
    """``optin-deploy prune``: load the task, score, select under ``flops`` of the dense encoder MACs, slice,
    reconstruct, and save the pruned model to ``out`` (atomically). Bad input fails before any work. Returns
    the summary. The MACs are counted at ``budget.seq_len`` (recorded): with a ``profile`` (a name, a file or a
    :class:`~optin_deploy.target.Target`) at the length ``build`` counts them at (:meth:`Target.mac_seq_len`),
    with its head / neuron multiples, so the structure is ``build --profile P --select-by macs --flops F``'s
    (default: build's default profile); ``profile=None``: at the calibration length, no multiples."""
    from .pruned_io import save_pruned, task_hint
    from .safe_out import check_out
    from .target import resolve_target
    from .zoo import load_task

    target = resolve_target(profile) if profile is not None else None  # a bad profile fails before any work
    check_budget(flops)
    check_reconstruct(fit, damp)
    check_refit_samples(refit_samples)
    warn_unused_refit(reconstruct, fit, damp, refit_samples)
    check_seed(seed)
    if calib_samples < 1:
        raise OptinError(f"--calib-samples must be at least 1, got {calib_samples}")
    if probes < 1:
        raise OptinError(f"--probes must be at least 1, got {probes}")
    if calib_length < 1:
        raise OptinError(f"--calib-length must be at least 1, got {calib_length}")
    out = check_out(out, force=force, protect=[model_spec, data])
    task = load_task(model_spec, data, max_length=None, text_column=text_column, label_column=label_column)
    eval_len = task.max_length
    if task.max_length is not None:
        task.max_length = calib_length
    calib = task.calibration(calib_samples, seed=seed)
    refit = refit_batch(task, task.model, calib, refit_samples, seed) if reconstruct else None
    seq = target.mac_seq_len(task.model) if target is not None else get_adapter(task.model).seq_len(calib)
    costs, kw = mac_cost_model(task.model, seq), (target.selection_kwargs if target is not None else {})
    warn_unreachable_units(task.model, kw.get("head_multiple", 1), kw.get("neuron_multiple", 1), target.name if target is not None else None)
    check_keeps_something(costs, flops * costs.dense(), f"--flops {flops}", kw.get("head_multiple", 1), kw.get("neuron_multiple", 1))
    result = prune(task.model, calib, costs=costs, budget=flops * costs.dense(), scoring=scoring, scorer=scorer, settings=ScoreSettings(seed=seed),
                   probes=probes, reconstruct=reconstruct, fit=fit, damp=damp, refit_calib=refit, **kw)
    print_layer_table(task.model, result.model)
    report_emptied(task.model, result.model)
    budget = {"flops": flops, "seq_len": seq, **({"profile": target.name} if target is not None else {})}
    summary = {"model": task.model_source or model_spec, "budget": budget, **result.summary()}
    summary["macs"]["seq_len"] = seq
    save_pruned(result.model, out, extra={"source": task.model_source or model_spec, "source_dir": task.model_source, "task": task.data.name,
                                          "max_length": eval_len, "prune": summary, "label_names": task.data.label_names},
                checked=True, task_hint=task_hint(task, data, text_column, label_column, eval_len), tokenizer=task.tokenizer)
    step(f"pruned model written to {out} (MACs {summary['macs']['ratio']:.1%} of dense, scoring {result.scoring_seconds:.1f}s)")
    return summary
