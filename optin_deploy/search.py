"""Ask for the outcome, not the budget: search the MAC budget for the fastest pruned model that keeps
the accuracy you need (``--max-accuracy-drop P``), or the most accurate one that is fast enough
(``--min-speedup S``).

Scores do not depend on the budget (and are cached), so a candidate budget costs only a selection,
the slicing, the reconstruction of the kept units, one export, an evaluation on the validation split (all
of it when one pass of the dense model takes at most ``eval_seconds``, else a fixed subset: :func:`auto_subset_size`)
and a short benchmark interleaved with the dense model on the target runtime. The search:

1. **bracket**: measure a first budget (accuracy: 0.6; speed: the budget a fixed-cost latency model
   predicts for ``S``), then step towards the limit until one candidate meets it and one does not.
   The dense model is a known end point (budget 1: drop 0, speed-up 1), so an accuracy search is
   bracketed after its first miss.
2. **interpolate**: regula falsi on the shortfall (accuracy drop minus ``P``, or latency ratio minus
   ``1/S``) between the two bracketing candidates, kept inside the middle of the bracket so that it
   shrinks at every step, until the bracket is narrower than ``tol`` or ``max_candidates`` were
   measured.
   An accuracy search also stops when the next budget, in the middle of the bracket, would cost less than
   ``tie`` (relative) below the budget that meets the limit: a gain the timing cannot resolve.
3. **speed**: an accuracy search plans on accuracy alone; its candidates are then timed all together with
   the dense model in one interleaved run (``rounds`` runs each, lasting at least ``joint_seconds``),
   and the fastest candidate meeting the limit wins. Speed mode times each candidate against dense as it
   goes and picks the most accurate candidate meeting the speed-up.
4. **verify**: the choice is re-checked on the full validation split (the next preferred candidate
   is tried when it fails); when the candidates were evaluated on all of it, that evaluation is the
   check. Test data is never looked at here.

:func:`plan_next` (the budget choice) and :func:`run_search` (the loop) are pure: they work on any
``measure(budget, phase) -> Candidate`` and are unit-tested without a model. :class:`CandidateLab`
measures real candidates for a build (:class:`optin_deploy.build.BuildContext`); :func:`search_build`
and :func:`sweep` are what ``optin-deploy build`` and ``optin-deploy sweep`` call.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .errors import OptinError
from .report import metric_label

FRONTIER_FORMAT = "optin-deploy-frontier"
FRONTIER_VERSION = 1
OBJECTIVES = ("max_accuracy_drop", "min_speedup")


# ------------------------------------------------------------------------------------ data types


@dataclass
class Objective:
    """What the user asked for: ``max_accuracy_drop`` (points on validation) or ``min_speedup`` (x, p50)."""

    kind: str
    limit: float

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise OptinError(f"unknown search objective {self.kind!r}; choose from {', '.join(OBJECTIVES)}")
        if self.kind == "max_accuracy_drop" and not (math.isfinite(self.limit) and self.limit >= 0):
            raise OptinError(f"--max-accuracy-drop must be >= 0 points (and finite), got {self.limit}")
        if self.kind == "min_speedup" and not (math.isfinite(self.limit) and self.limit > 1):
            raise OptinError(f"--min-speedup must be above 1 (the dense model runs at 1x) and finite, got {self.limit}")

    def shortfall(self, c: "Candidate") -> float:
        """How far ``c`` misses the limit (<= 0: met). Accuracy: drop - P; speed: latency ratio - 1/S."""
        if self.kind == "max_accuracy_drop":
            return c.drop - self.limit
        return 1.0 / c.speedup - 1.0 / self.limit

    def met(self, c: "Candidate") -> bool:
        return self.shortfall(c) <= 1e-9

    @property
    def feasible_high(self) -> bool:
        """True when larger budgets are the feasible side (accuracy), False for speed."""
        return self.kind == "max_accuracy_drop"

    def anchor(self) -> tuple[float, float]:
        """The dense model as a known point: budget 1, drop 0, speed-up 1."""
        return (1.0, -self.limit) if self.kind == "max_accuracy_drop" else (1.0, 1.0 - 1.0 / self.limit)

    def preference(self, c: "Candidate") -> tuple:
        """Sort key, best first: fastest (accuracy mode) or most accurate (speed mode)."""
        if self.kind == "max_accuracy_drop":
            return (-c.speedup, c.macs_ratio)
        return (c.drop, -c.speedup)

    def describe(self) -> str:
        if self.kind == "max_accuracy_drop":
            return f"validation accuracy drop <= {self.limit:g} points"
        return f"speed-up >= {self.limit:g}x"

    def to_dict(self) -> dict:
        return {"kind": self.kind, "limit": self.limit, "description": self.describe()}


@dataclass
class Candidate:
    """One pruned model measured during a search or sweep."""

    id: int
    budget: float  # fraction of the dense encoder MACs handed to the selection
    phase: str  # bracket | interpolate | sweep | reference
    scorer: str = "optin"
    macs_ratio: float = float("nan")  # measured MACs of the sliced model / dense
    heads: int = 0
    neurons: int = 0
    accuracy: float = float("nan")  # % on the validation subset (the task's metric x 100)
    dense_accuracy: float = float("nan")  # % of the dense model on the same subset
    drop: float = float("nan")  # points, dense - pruned, same samples
    drop_se: float | None = None  # paired standard error of the drop, points
    agreement: float | None = None  # % of predictions equal to the dense model's
    latency_ms: float = float("nan")  # p50 of the pruned model in its interleaved run
    dense_latency_ms: float = float("nan")  # p50 of the dense model in the same run
    speedup: float = float("nan")  # dense p50 / pruned p50, same run
    speedup_iqr: list | None = None  # 25th / 75th percentile of the per-round ratios: the run-to-run noise of ``speedup``
    met: bool | None = None  # meets the objective (None in a sweep)
    seconds: float = 0.0  # time spent on this candidate (select, slice, reconstruct, export, evaluate, time)
    verification: dict | None = None  # full-validation re-check

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = None if math.isnan(v) else round(v, 5)
        return d


@dataclass
class SearchSettings:
    """Knobs of the budget search (``optin-deploy build --search-*``)."""

    lo: float = 0.1  # smallest budget tried
    hi: float = 0.99  # largest budget tried (1.0 is the dense model)
    tol: float = 0.02  # stop when the bracket is narrower than this (fraction of MACs)
    max_candidates: int = 5
    start: float | None = None  # first budget (default: 0.6, or the latency-model guess for a speed-up)
    samples: int = 0  # validation subset size (the whole split when smaller); 0: sized by time, see :func:`auto_subset_size`
    eval_seconds: float = 2.0  # ... so that one pass of the dense model over it takes at most this long
    rounds: int = 12  # interleaved benchmark rounds per candidate
    seconds: float = 0.25  # ... lasting at least this long (whole rounds): 12 runs of a 0.5 ms model are 6 ms
    warmup: int = 3
    tie: float = 0.04  # the timing's resolution: an accuracy search stops when the next budget would cost less than this (relative) below the best met
    reference_rounds: int = 60  # runs per model of the comparison with the reference budgets (--search-reference)
    joint_seconds: float = 1.0  # the joint run timing an accuracy search's candidates lasts at least this long (a 0.7 ms ViT: ~250 runs each)
    contest_seconds: float = 2.0  # the comparison with the reference budgets lasts at least this long
    fixed_fraction: float = 0.2  # assumed share of latency pruning cannot remove (first speed-up guess)
    reference: list[float] = field(default_factory=list)  # fixed budgets also measured, for comparison only

    def check(self) -> None:
        if not (0 < self.lo < self.hi < 1):
            raise OptinError(f"--search-range must satisfy 0 < low < high < 1, got {self.lo}:{self.hi}")
        if not (math.isfinite(self.tol) and 0 < self.tol < 1):
            raise OptinError(f"--search-tol must be a fraction of the dense MACs in (0, 1) such as 0.02, got {self.tol}")
        if self.max_candidates < 1:
            raise OptinError(f"--search-candidates must be at least 1, got {self.max_candidates}")
        if self.samples != 0 and self.samples < 10:
            raise OptinError(f"--search-samples must be 0 (sized by time) or at least 10, got {self.samples}")
        if self.rounds < 3:
            raise OptinError(f"--search-rounds must be at least 3, got {self.rounds}")
        for b in self.reference:
            if not 0 < b <= 1:
                raise OptinError(f"reference budgets must be in (0, 1], got {b}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchOutcome:
    """The candidates a search measured and why it stopped (the pure loop's result)."""

    candidates: list[Candidate]
    stop_reason: str
    seconds: float

    def to_dict(self) -> dict:
        return {"candidates": [c.to_dict() for c in self.candidates], "stop_reason": self.stop_reason, "seconds": round(self.seconds, 2)}


# ------------------------------------------------------------------------------------ the search


CLAMP = 0.25  # regula falsi keeps the next budget at least this share of the bracket away from its ends
NARROW = 5  # a bracket at most this many tolerances wide stops when its ends' drops are within their standard error


def _round_budget(b: float) -> float:
    return round(float(b), 4)


def plan_next(objective: Objective, measured: Sequence[Candidate], settings: SearchSettings) -> tuple[float, str] | tuple[None, str]:
    """The next budget to measure and the phase it belongs to, or ``(None, reason)`` to stop.

    Only ``(budget, shortfall)`` pairs matter, plus the dense anchor at budget 1.
    """
    lo, hi = settings.lo, settings.hi
    if not measured:
        if settings.start is not None:
            b = settings.start
        elif objective.kind == "max_accuracy_drop":
            b = 0.6
        else:  # latency ratio ~ c + (1 - c) * budget
            c = settings.fixed_fraction
            b = (1.0 / objective.limit - c) / (1.0 - c)
        return _round_budget(min(hi, max(lo, b))), "bracket"
    if len(measured) >= settings.max_candidates:
        return None, f"measured the maximum of {settings.max_candidates} candidates"
    pts = [(c.budget, objective.shortfall(c)) for c in measured]
    seen = {_round_budget(b) for b, _ in pts}
    ab, asf = objective.anchor()
    good = [(b, s) for b, s in pts if s <= 1e-9]
    bad = [(b, s) for b, s in pts if s > 1e-9]
    if objective.feasible_high:
        # feasible side: high budgets; the dense anchor (1, -P) is always feasible
        g = min(good, default=(ab, asf))
        below = [p for p in bad if p[0] < g[0]]
        if not below:  # every measured budget meets the limit: go lower
            if g[0] <= lo + 1e-9:
                return None, f"the limit is met at the lowest budget searched ({lo:g})"
            return _extend(g, sorted(good + [(ab, asf)]), lo, seen, down=True)
        x = max(below)
    else:
        # feasible side: low budgets; the dense anchor (1, 1 - 1/S) is never feasible
        if not good:
            lowest = min(bad + [(ab, asf)])
            if lowest[0] <= lo + 1e-9:
                return None, f"no budget down to the lowest searched ({lo:g}) meets the limit"
            return _extend(lowest, sorted(bad + [(ab, asf)]), lo, seen, down=True)
        g = max(good)
        above = [p for p in bad + [(ab, asf)] if p[0] > g[0]]
        x = min(above)
    a, b = sorted((g[0], x[0]))
    if b - a <= settings.tol:
        return None, f"bracket [{a:.4f}, {b:.4f}] narrower than the tolerance {settings.tol:g}"
    if objective.feasible_high and (b - a) / 2 < settings.tie * g[0]:
        # the budget is the cost the selection is given (MACs, or the latency table's time): a candidate in the middle
        # of the bracket would be at most this much cheaper than the one meeting the limit, and measured latency
        # shrinks no faster than that; below the timing's resolution, one more candidate cannot pay for itself
        return None, (f"the next budget, in the middle of the bracket [{a:.4f}, {b:.4f}], would cost {(b - a) / 2 / g[0]:.1%} less than "
                      f"{g[0]:.4f} (which meets the limit): under the timing's resolution ({settings.tie:.0%})")
    if objective.kind == "max_accuracy_drop" and b - a <= NARROW * settings.tol:
        # a narrow bracket whose two ends the validation subset cannot tell apart: a budget between them would be
        # chosen by noise (a wide one is still worth splitting: its ends differ in speed, and the drop may rise late)
        se = {_round_budget(c.budget): c.drop_se for c in measured if c.drop_se is not None and not math.isnan(c.drop_se)}
        if _round_budget(g[0]) in se and _round_budget(x[0]) in se:
            gap, noise = abs(x[1] - g[1]), max(se[_round_budget(g[0])], se[_round_budget(x[0])])
            if gap <= noise:
                return None, (f"the bracket's ends ({a:.4f}, {b:.4f}) differ by {gap:.2f} points of drop, within the subset's "
                              f"standard error ({noise:.2f}): a budget between them cannot be told apart")
    # regula falsi between the bracketing points, kept in the middle half of the bracket
    (b1, s1), (b2, s2) = g, x
    t = b1 + (b2 - b1) * (0 - s1) / (s2 - s1) if s2 != s1 else (b1 + b2) / 2
    w = b - a
    t = min(b - CLAMP * w, max(a + CLAMP * w, t))
    t = min(hi, max(lo, t))
    if x[0] >= 1.0 and t > hi:  # bracketed only by the dense anchor
        t = hi
    t = _round_budget(t)
    if t in seen:
        if hi in seen and t >= hi:
            return None, f"no budget up to the highest searched ({hi:g}) meets the limit"
        return None, f"the next budget {t:g} was already measured"
    return t, "interpolate"


def _extend(edge: tuple[float, float], pts: list[tuple[float, float]], lo: float, seen: set, down: bool) -> tuple[float | None, str]:
    """Step below ``edge`` (the lowest budget measured): extrapolate the shortfall linearly from the
    two lowest points when its slope points the right way, at least 0.05 and at most 0.25 below."""
    b0, s0 = edge
    step = 0.15
    higher = [p for p in pts if p[0] > b0 + 1e-9]
    if higher:
        b1, s1 = min(higher)
        slope = (s1 - s0) / (b1 - b0)  # shortfall per unit budget
        if slope < -1e-9:  # the shortfall grows as the budget falls, as expected
            step = -s0 / -slope if s0 < 0 else 0.05
            # overshoot a little so the next point is likely on the other side
            step *= 1.2
    step = min(0.25, max(0.05, step))
    t = _round_budget(max(lo, b0 - step))
    if t in seen:
        return None, f"the next budget {t:g} was already measured"
    return t, "bracket"


def run_search(measure: Callable[[float, str], Candidate], objective: Objective, settings: SearchSettings,
               progress: Callable[[str], None] | None = None) -> SearchOutcome:
    """Measure budgets chosen by :func:`plan_next` until it says stop."""
    t0 = time.perf_counter()
    measured: list[Candidate] = []
    while True:
        b, why = plan_next(objective, measured, settings)
        if b is None:
            break
        c = measure(b, why)
        c.met = objective.met(c)
        measured.append(c)
        if progress:
            progress(f"candidate {len(measured)} ({why}): budget {b:.4f} -> MACs x{c.macs_ratio:.3f}, drop {c.drop:+.2f} pts"
                     + (f" (+-{c.drop_se:.2f})" if c.drop_se is not None else "") + ("" if math.isnan(c.speedup) else f", {c.speedup:.2f}x")
                     + f": {'meets' if c.met else 'misses'} the limit")
    return SearchOutcome(measured, why, time.perf_counter() - t0)


def ranked(objective: Objective, candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates that meet the objective, best first."""
    return sorted((c for c in candidates if objective.met(c)), key=objective.preference)


def best_effort(objective: Objective, candidates: Sequence[Candidate]) -> Candidate | None:
    """When nothing meets the limit: the candidate that comes closest to it."""
    return min(candidates, key=objective.shortfall, default=None)


# ------------------------------------------------------------------------------------ statistics


SUBSET_FLOOR = 400  # the smallest validation subset an automatically sized search uses (the whole split when smaller)


def auto_subset_size(total: int, dense_pass_seconds: float, eval_seconds: float) -> int:
    """How many validation samples each candidate is evaluated on when ``--search-samples`` is 0: the whole split
    when one pass of the dense model over it took at most ``eval_seconds`` (candidates are smaller, so faster), else
    the share of it that fits in that time, but at least :data:`SUBSET_FLOOR`. The whole split is what the chosen
    candidate is judged on; a subset decides by noise near the limit (400 samples: a drop's standard error is about
    0.7 points, against a typical limit of 1 point)."""
    if dense_pass_seconds <= eval_seconds:
        return total
    return min(total, max(SUBSET_FLOOR, int(total * eval_seconds / dense_pass_seconds)))


def paired_drop_se(dense_ok: np.ndarray, pruned_ok: np.ndarray) -> float:
    """Standard error (points) of the accuracy drop measured on the same samples (paired)."""
    n = len(dense_ok)
    d = dense_ok.astype(np.float64) - pruned_ok.astype(np.float64)
    if n < 2:
        return float("nan")
    return float(100 * d.std(ddof=1) / math.sqrt(n))


def accuracy_se(acc_pct: float, n: int) -> float:
    p = acc_pct / 100
    return float(100 * math.sqrt(max(p * (1 - p), 0.0) / n)) if n else float("nan")


# ------------------------------------------------------------------------------------ frontier


@dataclass
class Frontier:
    """Everything a search or sweep measured; written as ``frontier.json`` (schema in the README)."""

    model: str
    task: str
    metric: str
    profile: str
    runtime: str
    validation: dict  # split, samples, total, seed, dense accuracy, standard errors
    dense: dict  # accuracy (subset), latency_ms (median over the candidates' runs)
    bench: dict  # rounds, warmup, inputs
    candidates: list[Candidate]
    objective: Objective | None = None  # None for a sweep
    chosen: int | None = None
    reachable: bool | None = None
    search: dict | None = None  # candidates_measured, seconds, stop_reason, settings
    verification: list[dict] = field(default_factory=list)
    contest: dict | None = None
    reference: dict | None = None
    message: str | None = None
    budget: dict | None = None  # what a candidate's budget is a fraction of: select_by (macs | latency) and seq_len

    def dense_latency(self) -> float:
        vals = [c.dense_latency_ms for c in self.candidates if not math.isnan(c.dense_latency_ms)]
        return float(np.median(vals)) if vals else float("nan")

    def to_dict(self) -> dict:
        return {
            "format": FRONTIER_FORMAT, "version": FRONTIER_VERSION,
            "model": self.model, "task": self.task, "metric": self.metric, "profile": self.profile, "runtime": self.runtime,
            "budget": self.budget, "objective": self.objective.to_dict() if self.objective else None,
            "validation": self.validation, "dense": {**self.dense, "latency_ms": _r(self.dense_latency())}, "bench": self.bench,
            "candidates": [c.to_dict() for c in self.candidates],
            "chosen": self.chosen, "reachable": self.reachable, "message": self.message,
            "search": self.search, "verification": self.verification, "contest": self.contest, "reference": self.reference,
        }

    def write(self, folder: Path, plot_name: str = "frontier.png") -> dict[str, str]:
        """``frontier.json`` and the plot into ``folder``; returns their names."""
        folder.mkdir(parents=True, exist_ok=True)
        from .safe_out import write_json

        write_json(folder / "frontier.json", self.to_dict())  # strict JSON, as report.json: a NaN / inf figure becomes null
        plot_frontier(self, folder / plot_name)
        return {"json": "frontier.json", "plot": plot_name}

    def markdown(self, plot: str | None = None) -> list[str]:
        return frontier_markdown(self.to_dict(), plot)


def _iqr(iqr) -> str:
    return f" ({iqr[0]:.2f}-{iqr[1]:.2f})" if iqr else ""


def _f(x, fmt: str, empty: str = "") -> str:
    return empty if x is None else format(x, fmt)


def frontier_markdown(fr: dict, plot: str | None = None) -> list[str]:
    """A ``frontier.json`` document as a Markdown section (report.md, ``optin-deploy sweep``'s frontier.md)."""
    v, obj, s = fr["validation"], fr.get("objective"), fr.get("search") or {}
    lines = ["## Accuracy / speed frontier", ""]
    if obj:
        lines.append(f"Objective: **{obj['description']}**. The search measured **{s.get('candidates_measured')} candidates** "
                     f"in **{s.get('seconds', float('nan')):.1f} s** (stopped: {s.get('stop_reason')}).")
    where = (f"the whole validation split (**{v['total']}** samples)" if v["samples"] == v["total"]
             else f"a fixed validation subset of **{v['samples']}** of {v['total']} samples (seed {v['seed']})")
    sized = f" ({v['sized']})" if v.get("sized") else ""
    lines.append(f"Candidates were evaluated on {where}{sized}: standard error of the dense accuracy on it {v['accuracy_se']:.2f} points, of a candidate's paired drop "
                 f"{_f(v.get('drop_se_median'), '.2f', '?')} points (median). Speed-up: dense p50 over candidate p50, timed interleaved in one run "
                 f"({fr['bench']['rounds']} rounds, batch {fr['bench']['inputs']}, {fr['runtime']}).")
    lines += ["", f"| # | phase | scorer | budget | MACs | heads | neurons | {metric_label(fr['metric'])} | drop (pts) | +- | agreement (%) | speed-up (rounds IQR) | meets |",
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines.append(f"| | dense | | 1 | 1.000 | | | {fr['dense']['accuracy']:.2f} | 0 | | 100 | 1.00x | |")
    for c in sorted(fr["candidates"], key=lambda c: (c["scorer"], c["phase"] == "reference", c["budget"])):
        mark = "**chosen**" if c["id"] == fr.get("chosen") else {True: "yes", False: "no"}.get(c["met"], "")
        lines.append(f"| {c['id']} | {c['phase']} | {c['scorer']} | {c['budget']:.4f} | {_f(c['macs_ratio'], '.3f')} | {c['heads']} | {c['neurons']} | "
                     f"{_f(c['accuracy'], '.2f')} | {_f(c['drop'], '+.2f')} | {_f(c['drop_se'], '.2f')} | {_f(c['agreement'], '.1f')} | "
                     f"{_f(c['speedup'], '.2f')}x{_iqr(c.get('speedup_iqr'))} | {mark} |")
    lines.append("")
    if (fr.get("contest") or {}).get("joint"):
        ct = fr["contest"]
        lines.append(f"The {len(ct['speedups'])} candidates were timed after the search, together with the dense model in one interleaved run "
                     f"({ct['runs_per_model']} runs each): the speed-ups above come from that one run.")
    for ver in fr.get("verification") or []:
        what = "Full-validation figures" if v["samples"] == v["total"] else "Full-validation re-check"
        lines.append(f"{what} of #{ver['candidate']}: {ver['accuracy']:.2f}% against dense {ver['dense_accuracy']:.2f}% "
                     f"on {ver['samples']} samples, drop {ver['drop']:+.2f} points: **{'passed' if ver['passed'] else 'failed'}**.")
    r = fr.get("reference")
    if r:
        if r.get("best_budget") is not None:
            lines.append(f"Reference: fixed budgets {r['budgets']} measured in the same run (never chosen), judged on the full validation split; "
                         f"the best meeting the limit is budget {r['best_budget']}: {r['best_speedup']:.3f}x against the chosen model's "
                         f"{r['chosen_speedup']:.3f}x, timed together with dense over {r['rounds']} interleaved rounds"
                         + (" (that fixed budget selects the very model the search chose: same kept heads and neurons)." if r.get("same_model") else "."))
        else:
            lines.append(f"Reference: none of the fixed budgets {r['budgets']} meets the limit on the full validation split.")
    if fr.get("message"):
        lines.append(f"**{fr['message']}**")
    if plot:
        lines += ["", f"![frontier]({plot})"]
    return lines + [""]


def _r(x: float, nd: int = 4):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def plot_frontier(fr: Frontier, path: Path) -> None:
    """Accuracy against measured latency: dense, every candidate (one series per scorer and phase),
    the chosen one marked, the limit drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ref = fr.dense_latency()
    fig, ax = plt.subplots(figsize=(7, 4.4))
    ax.scatter([ref], [fr.dense["accuracy"]], marker="s", s=60, color="black", label="dense", zorder=4)
    groups: dict[str, list[Candidate]] = {}
    for c in fr.candidates:
        groups.setdefault(c.scorer if c.phase in ("sweep",) else (c.phase if c.phase == "reference" else "search"), []).append(c)
    for name, cs in groups.items():
        cs = sorted(cs, key=lambda c: c.budget)
        xs = [ref / c.speedup for c in cs]
        ys = [c.accuracy for c in cs]
        style = dict(marker="o", linestyle="-" if name not in ("search",) else "none")
        if name == "reference":
            style = dict(marker="x", linestyle=":")
        ax.plot(xs, ys, label=name + (" (fixed budgets)" if name == "reference" else ""), **style)
        for c, x, y in zip(cs, xs, ys):
            ax.annotate(f"{c.budget:.2f}", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
    if fr.chosen is not None:
        c = next(c for c in fr.candidates if c.id == fr.chosen)
        ax.scatter([ref / c.speedup], [c.accuracy], s=220, facecolors="none", edgecolors="red", linewidths=2, label="chosen", zorder=5)
    if fr.objective is not None:
        if fr.objective.kind == "max_accuracy_drop":
            ax.axhline(fr.dense["accuracy"] - fr.objective.limit, color="red", linestyle="--", linewidth=1,
                       label=f"limit: drop {fr.objective.limit:g} pts")
        else:
            ax.axvline(ref / fr.objective.limit, color="red", linestyle="--", linewidth=1, label=f"limit: {fr.objective.limit:g}x")
    ax.set_xlabel(f"latency p50 (ms, {fr.runtime}, {fr.bench['inputs']}; dense = {ref:.1f} ms, candidates scaled by their interleaved ratio)", fontsize=7)
    ax.set_ylabel(f"validation {metric_label(fr.metric)}, {fr.validation['samples']} samples")
    ax.set_title(f"{Path(str(fr.model)).name or fr.model}: {fr.metric} vs measured latency", fontsize=10)  # a path: its last part
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------ real candidates


class CandidateLab:
    """Measures candidate budgets of one build: prune + reconstruct, export, validation subset, interleaved timing.

    Uses the build's own stages (:class:`optin_deploy.build.BuildContext`): the same selection,
    surgery, reconstruction, exporter, runtime, evaluation and benchmark as a fixed-budget build.
    """

    def __init__(self, ctx, workdir: Path, settings: SearchSettings, dense_export: dict | None = None, defer_parity: bool = False):
        """``defer_parity``: export the candidates without their parity checks; :meth:`adopt` runs them on the one
        that becomes the deliverable (a search build; a sweep keeps every export checked)."""
        from .data.types import Split

        self.ctx, self.settings, self.workdir = ctx, settings, Path(workdir)
        self.defer_parity = defer_parity
        self.workdir.mkdir(parents=True, exist_ok=True)
        task = ctx.task
        from .evaluate import headline_metric

        self.metric = headline_metric(task.data.task_type)
        val = task.data.require_labels("validation")
        n = len(val)
        self.val_total = n
        self.full, full_order = self._split(val, np.arange(n))
        self.dense_export = dense_export or ctx.export(ctx.model, self.workdir / "dense", "dense")
        self.dense_rt = ctx.runtime(self.dense_export)[0].load(self.dense_export["artifact"])
        self._predict(self.dense_rt, self.subset_of(self.full, 8), "dense, warm-up")  # the first runs of a session are slow
        t0 = time.perf_counter()
        self.dense_logits_full = self._predict(self.dense_rt, self.full, "dense, validation")
        self.dense_pass_seconds = time.perf_counter() - t0
        size = settings.samples or auto_subset_size(n, self.dense_pass_seconds, settings.eval_seconds)
        self.sized = "fixed by --search-samples" if settings.samples else \
            f"sized by time: one dense pass over the whole split took {self.dense_pass_seconds:.2f} s (at most {settings.eval_seconds:g} s wanted)"
        g = np.random.default_rng(ctx.opts.seed)
        self.subset_idx = np.sort(g.permutation(n)[: min(size, n)])
        self.whole = len(self.subset_idx) == n  # candidates are evaluated on the whole split: their re-check is that evaluation
        self.subset, subset_order = self._split(val, self.subset_idx)
        pos = {int(i): k for k, i in enumerate(full_order)}
        self.dense_logits_subset = self.dense_logits_full[[pos[int(i)] for i in subset_order]]
        self.logits_subset: dict[int, np.ndarray] = {}
        self.candidates: list[Candidate] = []
        self.models: dict[int, object] = {}
        self.exports: dict[int, dict] = {}
        self.results: dict[int, object] = {}
        self.runtimes: dict[int, object] = {}  # each candidate's loaded session, reused when it is timed

    @staticmethod
    def _split(val, idx: np.ndarray):
        """The validation split restricted to ``idx``, ordered by text length (less padding per
        batch), and the order used."""
        import torch

        from .data.types import Split, text_size

        idx = np.asarray(idx)
        if isinstance(val.inputs, (list, tuple)):
            idx = idx[np.argsort([text_size(val.inputs[int(i)]) for i in idx], kind="stable")]
            inputs = [val.inputs[int(i)] for i in idx]
        else:
            inputs = val.inputs[torch.as_tensor(idx)]
        return Split(inputs, val.labels[torch.as_tensor(idx)]), idx

    @staticmethod
    def subset_of(split, k: int):
        """``k`` samples spread over ``split`` (ordered by length: short and long ones)."""
        from .data.types import Split

        step = max(1, len(split) // k)
        return Split(split.inputs[::step][:k], split.labels[::step][:k])

    def _predict(self, rt, split, what: str) -> np.ndarray:
        from .evaluate import predict

        logits, _ = predict(self.ctx.task, rt, split, progress=False, description=what)
        return logits

    def _score(self, logits: np.ndarray, split, dense_logits: np.ndarray) -> dict:
        from .evaluate import agreement, task_metrics

        t = self.ctx.task.data
        y = split.labels.numpy()
        m = task_metrics(logits, y, t.task_type, t.num_labels)
        md = task_metrics(dense_logits, y, t.task_type, t.num_labels)
        out = {"accuracy": 100 * m[self.metric], "dense_accuracy": 100 * md[self.metric], "n": len(y)}
        out["drop"] = out["dense_accuracy"] - out["accuracy"]
        if t.task_type == "classification":
            ok_p, ok_d = logits.argmax(1) == y, dense_logits.argmax(1) == y
            out["drop_se"] = paired_drop_se(ok_d, ok_p)
            out["agreement"] = 100 * agreement(logits, dense_logits, t.task_type)["agreement_vs_baseline"]
        else:
            out["drop_se"], out["agreement"] = None, None
        return out

    def dense_summary(self) -> dict:
        s = self._score(self.dense_logits_subset, self.subset, self.dense_logits_subset)
        full = self._score(self.dense_logits_full, self.full, self.dense_logits_full)
        return {"accuracy": round(s["dense_accuracy"], 4), "accuracy_full_validation": round(full["dense_accuracy"], 4)}

    def measure(self, budget: float, phase: str, scores: tuple | None = None, scorer: str = "optin", timed: bool = True) -> Candidate:
        """Select, slice, refit, export and evaluate one budget on the validation subset; ``timed``: also time it against
        the dense model (else :meth:`time_together` times it later, with the others)."""
        from .adapters import get_adapter
        from .bench import benchmark
        from .progress import step

        t0 = time.perf_counter()
        ctx, st = self.ctx, self.settings
        cid = len(self.candidates)
        ctx.selection_costs()  # what the fraction is of: MACs, or the prunable latency of the table (said, not assumed)
        of = "the dense model's prunable latency on the table" if ctx.cost_info.get("select_by") == "latency" else "the dense MACs"
        step(f"candidate #{cid} ({phase}, {scorer}): budget {budget:.4f} of {of}")
        res = ctx.prune_fraction(budget, scores)
        pruned = res.model
        exp = ctx.export(pruned, self.workdir / f"cand-{cid}", f"candidate #{cid}", parity=not self.defer_parity)
        rt = ctx.runtime(exp)[0].load(exp["artifact"])
        logits = self._predict(rt, self.subset, f"candidate #{cid}, validation " + ("split" if self.whole else "subset"))
        self.logits_subset[cid] = logits
        sc = self._score(logits, self.subset, self.dense_logits_subset)
        d = p = float("nan")
        iqr = None
        if timed:
            bench = benchmark({"dense": (self.dense_rt, None), "pruned": (rt, None)}, ctx.bench_np, warmup=st.warmup, iters=st.rounds, min_seconds=st.seconds,
                              baseline="dense", progress=False)
            d, p = bench["models"]["dense"]["p50_ms"], bench["models"]["pruned"]["p50_ms"]
            iqr = bench["models"]["pruned"].get("speedup_iqr")
        pa = get_adapter(pruned)
        macs = pa.encoder_macs(ctx.seq) / get_adapter(ctx.model).encoder_macs(ctx.seq)  # at the benchmark shape, like the build report
        c = Candidate(id=cid, budget=budget, phase=phase, scorer=scorer, macs_ratio=macs,
                      heads=sum(pa.heads_per_layer()), neurons=sum(pa.neurons_per_layer()), accuracy=sc["accuracy"], dense_accuracy=sc["dense_accuracy"],
                      drop=sc["drop"], drop_se=sc["drop_se"], agreement=sc["agreement"], latency_ms=p, dense_latency_ms=d, speedup=d / p,
                      speedup_iqr=iqr, seconds=time.perf_counter() - t0)
        self.candidates.append(c)
        self.models[cid], self.exports[cid], self.results[cid], self.runtimes[cid] = pruned, exp, res, rt
        return c

    def verify(self, c: Candidate, limit: float) -> dict:
        """Re-check ``c`` on the full validation split (when the candidates were evaluated on all of it, that
        evaluation is the re-check: the same samples, the same artefact)."""
        if self.whole:
            sc = self._score(self.logits_subset[c.id], self.subset, self.dense_logits_subset)
        else:
            rt = self._runtime(c.id)
            logits = self._predict(rt, self.full, f"candidate #{c.id}, full validation")
            sc = self._score(logits, self.full, self.dense_logits_full)
        v = {"candidate": c.id, "samples": sc["n"], "accuracy": round(sc["accuracy"], 4), "dense_accuracy": round(sc["dense_accuracy"], 4),
             "drop": round(sc["drop"], 4), "drop_se": _r(sc["drop_se"]) if sc["drop_se"] is not None else None,
             "limit": limit, "passed": bool(sc["drop"] <= limit + 1e-9)}
        c.verification = v
        return v

    def _runtime(self, cid: int):
        """Candidate ``cid``'s loaded session: the one :meth:`measure` ran the validation split with, else loaded anew."""
        if cid not in self.runtimes:
            self.runtimes[cid] = self.ctx.runtime(self.exports[cid])[0].load(self.exports[cid]["artifact"])
        return self.runtimes[cid]

    def _with_dense(self, cands: Sequence[Candidate], rounds: int, min_seconds: float) -> dict:
        """One interleaved benchmark of the dense model and the candidates ``cands`` (labels ``dense``, ``#id``). Their
        sessions are the ones that just ran the validation split: one warm-up run each settles the benchmark's shape."""
        from .bench import benchmark

        rts = {"dense": (self.dense_rt, None)}
        for c in cands:
            rts[f"#{c.id}"] = (self._runtime(c.id), None)
        return benchmark(rts, self.ctx.bench_np, warmup=min(1, self.settings.warmup), iters=rounds, baseline="dense", progress=False,
                         min_seconds=min_seconds)

    def contest(self, cands: Sequence[Candidate], rounds: int) -> dict[int, float]:
        """Time several candidates together with the dense model in one interleaved run."""
        bench = self._with_dense(cands, rounds, self.settings.contest_seconds)
        return {c.id: bench["speedup"][f"#{c.id}"] for c in cands}

    def time_together(self, cands: Sequence[Candidate], rounds: int) -> dict:
        """Time every candidate in ``cands`` with the dense model in one interleaved run and record each one's
        latency and speed-up (dense p50 / candidate p50, same run): one run ranks them fairly, and costs fewer
        runs than a dense-vs-candidate run per candidate."""
        # at least as much measurement as the candidates' own runs against dense would have had (``seconds`` each)
        bench = self._with_dense(cands, rounds, max(self.settings.joint_seconds, self.settings.seconds * len(cands)))
        d = bench["models"]["dense"]["p50_ms"]
        for c in cands:
            c.latency_ms, c.dense_latency_ms = bench["models"][f"#{c.id}"]["p50_ms"], d
            c.speedup = d / c.latency_ms
            c.speedup_iqr = bench["models"][f"#{c.id}"].get("speedup_iqr")
        return {"rounds": rounds, "runs_per_model": bench["models"]["dense"]["iters"], "models": len(cands) + 1, "joint": True,
                "speedups": {str(c.id): round(c.speedup, 4) for c in cands}}

    def validation_info(self) -> dict:
        dense = self.dense_summary()
        ses = [c.drop_se for c in self.candidates if c.drop_se is not None and not math.isnan(c.drop_se)]
        return {"split": "validation", "samples": int(len(self.subset_idx)), "total": int(self.val_total), "seed": self.ctx.opts.seed,
                "sized": self.sized, "dense_pass_seconds": round(self.dense_pass_seconds, 3),
                "accuracy_se": round(accuracy_se(dense["accuracy"], len(self.subset_idx)), 3),
                "drop_se_median": round(float(np.median(ses)), 3) if ses else None,
                "dense_accuracy_full": dense["accuracy_full_validation"]}

    def frontier(self, **kw) -> Frontier:
        ctx = self.ctx
        joint = (kw.get("contest") or {}).get("joint")
        return Frontier(model=ctx.task.model_source or ctx.opts.model or "minilm-sentiment", task=ctx.task.data.name, metric=self.metric,
                        profile=ctx.profile.name, runtime=ctx.runtime_name(self.dense_export), validation=self.validation_info(),
                        budget={"select_by": ctx.cost_info.get("select_by") or ctx.select_by, "seq_len": ctx.seq},
                        dense={"accuracy": self.dense_summary()["accuracy"]},
                        bench={"rounds": kw["contest"]["rounds"] if joint else self.settings.rounds, "warmup": self.settings.warmup, "interleaved": True,
                               "timing": "every candidate and the dense model in one interleaved run" if joint
                               else "each candidate against the dense model in its own interleaved run",
                               "inputs": "x".join(str(d) for d in next(iter(ctx.bench_np.values())).shape[:2])},
                        candidates=list(self.candidates), **kw)

    def adopt(self, c: Candidate, folder: Path) -> dict:
        """Move candidate ``c``'s export folder to ``folder`` (no second export); returns its manifest
        with the paths updated."""
        from .exporters.export_folder import move_export

        manifest = move_export(self.workdir / f"cand-{c.id}", folder)
        if manifest.get("parity_deferred"):
            manifest = self.ctx.check_parity(self.models[c.id], folder, manifest)
        self.exports[c.id] = manifest
        return manifest

    def cleanup(self) -> None:
        self.runtimes.clear()  # the sessions hold the candidates' files open
        shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class SearchBuildResult:
    """What :func:`search_build` hands back to the build: the chosen model and the frontier."""

    model: object
    candidate: Candidate
    frontier: Frontier
    selection_cost: float
    reconstruction: dict | None
    reachable: bool
    message: str | None
    dense_export: dict | None = None
    pruned_export: dict | None = None

    def to_dict(self) -> dict:
        return {"chosen": self.candidate.to_dict(), "reachable": self.reachable, "message": self.message,
                "frontier": "frontier.json", **{k: v for k, v in self.frontier.to_dict().items() if k in ("objective", "validation", "search", "verification", "contest", "reference")}}


def search_build(ctx, staging: Path, objective: Objective, settings: SearchSettings) -> SearchBuildResult:
    """Run the search inside a build: pick the candidate, verify it on the full validation split,
    write ``frontier.json`` and ``plots/frontier.png`` into ``staging``. The dense model is exported
    once, into the bundle (``staging/<format>/dense``)."""
    from .progress import step

    settings.check()
    t0 = time.perf_counter()
    dense_export = ctx.dense_export or ctx.export(ctx.model, staging / ctx.fmt / "dense", "dense")
    lab = CandidateLab(ctx, staging / ".search", settings, dense_export=dense_export, defer_parity=ctx.can_defer_parity)
    step(f"searching the budget for {objective.describe()}: candidates on {len(lab.subset_idx)} of {lab.val_total} validation samples "
         f"({lab.sized}), {settings.rounds} interleaved rounds each")
    # an accuracy limit is searched on accuracy alone: the candidates are timed afterwards, all together with the
    # dense model in one interleaved run (fewer runs than one dense-vs-candidate run each, and one run ranks them
    # fairly); a speed-up limit needs each candidate's speed to plan the next one
    timed = objective.kind != "max_accuracy_drop"
    outcome = run_search(lambda b, phase: lab.measure(b, phase, timed=timed), objective, settings, progress=step)
    contest = None
    if not timed and outcome.candidates:
        rounds = settings.rounds
        step(f"timing the {len(outcome.candidates)} candidates together with the dense model: one interleaved run, "
             f"{rounds} runs each (at least {settings.joint_seconds:g} s in all)")
        contest = lab.time_together(outcome.candidates, rounds)
    ordered = ranked(objective, outcome.candidates)
    verification = []
    chosen = None
    for c in ordered:
        if not lab.whole:
            step(f"re-checking candidate #{c.id} (budget {c.budget:.4f}) on the full validation split ({lab.val_total} samples)")
        v = lab.verify(c, objective.limit) if objective.kind == "max_accuracy_drop" else lab.verify(c, float("inf"))
        verification.append(v)
        if v["passed"]:
            chosen = c
            break
        step(f"candidate #{c.id} drops {v['drop']:.2f} points on the full validation split: over the limit, trying the next one")
    search_seconds = time.perf_counter() - t0
    reachable = chosen is not None
    message = None
    if not reachable:
        chosen = best_effort(objective, outcome.candidates)
        if chosen is not None and chosen.verification is None:
            verification.append(lab.verify(chosen, objective.limit if objective.kind == "max_accuracy_drop" else float("inf")))
        what = (f"keeps the validation accuracy drop within {objective.limit:g} points" if objective.kind == "max_accuracy_drop"
                else f"reaches a {objective.limit:g}x speed-up")
        fix = "raise --max-accuracy-drop (or accept a larger model)" if objective.kind == "max_accuracy_drop" else "lower --min-speedup"
        n = len(outcome.candidates)
        if n >= settings.max_candidates and outcome.stop_reason.startswith("measured the maximum"):
            # stopped by the candidate limit, not by the curve: the untried budgets are not ruled out, so say only
            # what was measured, and name the limit as the first thing to raise
            found = (f"none of the {n} budgets measured in [{settings.lo:g}, {settings.hi:g}] {what}; the search stopped at its limit "
                     f"of {n} candidates (--search-candidates) before ruling the rest of the range out")
            fix = f"raise --search-candidates, or {fix}"
        else:
            found = f"no budget in [{settings.lo:g}, {settings.hi:g}] {what} ({n} candidates measured)"
        message = (f"{found}; "
                   f"best candidate: budget {chosen.budget:.4f}, MACs x{chosen.macs_ratio:.3f}, drop {chosen.drop:+.2f} points on "
                   f"{len(lab.subset_idx)} validation samples, {chosen.speedup:.2f}x; {fix}")
    reference = _reference(lab, objective, settings, chosen) if settings.reference else None
    fr = lab.frontier(objective=objective, chosen=chosen.id, reachable=reachable, verification=verification, contest=contest, reference=reference,
                      message=message,
                      search={"candidates_measured": len(outcome.candidates), "seconds": round(search_seconds, 2), "stop_reason": outcome.stop_reason,
                              "settings": settings.to_dict(), "candidate_seconds": round(sum(c.seconds for c in outcome.candidates), 2)})
    (staging / "plots").mkdir(parents=True, exist_ok=True)
    fr.write(staging, plot_name="plots/frontier.png")
    res = lab.results[chosen.id]
    model = lab.models[chosen.id]
    pruned_export = lab.adopt(chosen, staging / ctx.fmt / "pruned")  # the chosen candidate's export becomes the bundle's
    lab.cleanup()
    return SearchBuildResult(model=model, candidate=chosen, frontier=fr, selection_cost=res.selection.cost, reconstruction=res.reconstruction,
                             reachable=reachable, message=message, dense_export=dense_export, pruned_export=pruned_export)


def _reference(lab: CandidateLab, objective: Objective, settings: SearchSettings, chosen: Candidate) -> dict:
    """Measure fixed budgets the same way (for comparison only: never chosen), judge them on the full
    validation split, and time the best one against the chosen one in one interleaved run."""
    from .progress import step

    step(f"reference: fixed budgets {settings.reference}, measured the same way (not candidates of the search)")
    t0 = time.perf_counter()
    refs = [lab.measure(b, "reference") for b in settings.reference]
    for c in refs:
        c.met = objective.met(c)
        lab.verify(c, objective.limit if objective.kind == "max_accuracy_drop" else float("inf"))
    ok = [c for c in refs if c.verification["passed"] and (objective.kind == "max_accuracy_drop" or c.speedup >= objective.limit)]
    out = {"budgets": list(settings.reference), "candidates": [c.id for c in refs], "rule": "meets the limit on the full validation split"}
    if not ok:
        return {**out, "best_budget": None, "seconds": round(time.perf_counter() - t0, 2)}
    best = min(ok, key=lambda c: c.budget) if objective.kind == "max_accuracy_drop" else max(ok, key=lambda c: c.budget)
    rounds = settings.reference_rounds
    step(f"reference: timing the chosen candidate #{chosen.id} against the best fixed budget {best.budget} and dense, {rounds} interleaved rounds")
    # a fixed budget can select exactly the chosen model (same kept heads and neurons): then it is one model,
    # timed once; two copies of one model timed side by side differ only by noise
    same = best.id == chosen.id or lab.results[best.id].selection.plan.to_dict() == lab.results[chosen.id].selection.plan.to_dict()
    sp = lab.contest([chosen] if same else [chosen, best], rounds)
    if same:
        sp[best.id] = sp[chosen.id]
    return {**out, "best_budget": best.budget, "best_candidate": best.id, "best_speedup": round(sp[best.id], 4), "chosen_speedup": round(sp[chosen.id], 4),
            "rounds": rounds, "same_model": bool(same), "chosen_at_least_as_fast": bool(sp[chosen.id] >= sp[best.id]),
            "seconds": round(time.perf_counter() - t0, 2)}


def sweep(ctx, out: Path, budgets: Sequence[float], scorers: Sequence[str], settings: SearchSettings) -> Frontier:
    """Measure every (scorer, budget) without choosing; write frontier.json, frontier.png and frontier.md into ``out``."""
    from .core.scoring import ScoreSettings
    from .pruning import compute_scores

    settings.check()
    t0 = time.perf_counter()
    from .pruning import check_keeps_something

    costs = ctx.selection_costs()  # a budget that keeps no unit is refused before any candidate, as build / prune do
    for b in budgets:
        check_keeps_something(costs, ctx.fraction_budget(float(b)), f"--budgets {b}", ctx.sel_kwargs.get("head_multiple", 1),
                              ctx.sel_kwargs.get("neuron_multiple", 1))
    lab = CandidateLab(ctx, out / ".sweep", settings)
    try:
        for scorer in scorers:
            scores = ctx.scores if scorer == ctx.opts.scorer else compute_scores(ctx.model, ctx.calib, scoring=ctx.opts.scoring, scorer=scorer,
                                                                                   settings=ScoreSettings(seed=ctx.opts.seed), probes=ctx.opts.probes)
            for b in budgets:
                lab.measure(float(b), "sweep", scores=scores, scorer=scorer)
        fr = lab.frontier(search={"candidates_measured": len(lab.candidates), "seconds": round(time.perf_counter() - t0, 2),
                                  "stop_reason": "sweep (no choice)", "budgets": list(budgets), "scorers": list(scorers), "settings": settings.to_dict()})
    finally:
        lab.cleanup()
    fr.write(out)
    (out / "frontier.md").write_text("\n".join([f"# Frontier: {fr.model} on {fr.task}", ""] + fr.markdown("frontier.png")))
    return fr


def run_sweep(opts, budgets: Sequence[float], scorers: Sequence[str]) -> tuple[Frontier, Path]:
    """``optin-deploy sweep``: load and score like a build, measure every (scorer, budget), write
    ``frontier.json``, ``frontier.png`` and ``frontier.md`` into ``opts.out`` (assembled beside it and
    moved into place when complete; an existing folder is replaced only when it holds a previous sweep)."""
    from .build import check_select_by, check_target_available, load_context, search_settings
    from .progress import step
    from .pruning import SCORERS
    from .target import resolve_target

    for s in scorers:
        if s not in SCORERS:
            raise OptinError(f"unknown --scorer {s!r}; choose from {', '.join(SCORERS)} (comma-separated for several)")
    if not scorers:
        raise OptinError("--scorer is empty; pass one or more of " + ", ".join(SCORERS) + " (comma-separated)")
    if not budgets:
        raise OptinError("--budgets is empty; pass fractions of the dense model's cost such as 0.5,0.6,0.7")
    for flag, items in (("--scorer", list(scorers)), ("--budgets", [float(b) for b in budgets])):
        twice = sorted({x for x in items if items.count(x) > 1}, key=str)
        if twice:
            raise OptinError(f"{flag} lists {', '.join(map(str, twice))} more than once; each is measured once, so list it once")
    from .pruning import check_seed

    check_seed(opts.seed)
    check_select_by(getattr(opts, "select_by", None))
    settings = search_settings(opts)
    settings.check()
    target = resolve_target(opts.profile)  # the one place the profile is read
    from .safe_out import check_out, staged_output

    out = Path(opts.out).expanduser().resolve()
    legacy = out.is_dir() and (out / "frontier.json").is_file()  # a sweep folder written before the marker existed
    out = check_out(out, force=legacy or bool(getattr(opts, "force", False)), protect=[opts.model, opts.data, opts.lut])
    with staged_output(out, kind="sweep", checked=True, log=step) as staging:
        check_target_available(target)
        ctx = load_context(opts, target, scorer=scorers[0], need_labels="sweep")
        ctx.opts.scorer = scorers[0]
        fr = sweep(ctx, staging, budgets, scorers, settings)
    return fr, out
