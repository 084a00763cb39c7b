"""Choose the build's target by measurement: the profile whose runtime runs the dense model fastest here.

A choosing profile (``choose_from = [...]``, e.g. the default ``x86-cpu``) names candidate profiles timed at one
shape. Before selection, :func:`choose_stage` exports the dense model for every candidate that can run on this
machine, evaluates each export on the validation split through its runtime (never the test split the report
states) and times them interleaved in blocks at the benchmark shape, then keeps the fastest whose metric is within
``equal_accuracy_points`` of the best candidate's; the next fastest is the runner-up the report names. The build then
runs for that profile (its latency table, alignment and precision). What the choice rests on is the dense model: it is
the figure a deployment engineer would ship without pruning, and the deliverable is measured against it afterwards.

Sentence-embedding models have no labelled metric: a candidate counts as equally accurate when its embeddings'
mean cosine to the first measured candidate's is at least ``1 - equal_accuracy_points / 100``. A candidate whose export,
runtime or evaluation fails on this model (a runtime that cannot read its graph) is skipped with the reason.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .errors import OptinError
from .exporters.export_folder import move_export
from .progress import console, step
from .safe_out import raise_if_storage


CHOICE_ITERS = 100  # timed runs per candidate, at most


@dataclass
class Candidate:
    """One candidate profile as measured (or why it was not)."""

    profile: str
    runtime: str
    precision: str
    p50_ms: float | None = None
    metric: float | None = None  # validation metric in points (embeddings: mean cosine to the first candidate x 100)
    skipped: str | None = None  # why it was not measured: cannot run here, or its export failed
    eligible: bool | None = None  # within equal_accuracy_points of the best


@dataclass
class RuntimeChoice:
    """What :func:`choose_stage` measured and chose (``report.json`` ``runtime_choice``)."""

    chooser: str
    chosen: str
    runner_up: str | None
    metric: str | None
    split: str
    equal_accuracy_points: float
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0
    note: str | None = None
    # the chosen candidate's dense export, moved to ``staging/<format>/dense`` (its manifest): the build does not export it again
    dense_export: dict | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "dense_export"}, "candidates": [asdict(c) for c in self.candidates]}

    def summary(self) -> str:
        """One line for the log and the report."""
        by = {c.profile: c for c in self.candidates}
        c = by[self.chosen]
        line = f"{self.chosen} ({c.runtime}, {c.precision}" + (f", dense {c.p50_ms:.2f} ms" if c.p50_ms is not None else "") + ")"
        if self.runner_up:
            r = by[self.runner_up]
            line += f"; runner-up {self.runner_up} ({r.runtime}, {r.precision}, dense {r.p50_ms:.2f} ms"
            if r.metric is not None and c.metric is not None:
                line += f", validation {r.metric:.2f} vs {c.metric:.2f}"
            line += ")"
        skipped = [f"{x.profile} ({x.skipped})" for x in self.candidates if x.skipped]
        if skipped:
            line += "; not measured: " + "; ".join(skipped)
        return line


def pick(candidates: list[Candidate], equal_accuracy_points: float) -> tuple[str, str | None]:
    """The fastest measured candidate whose metric is within ``equal_accuracy_points`` of the best one's (every
    measured candidate when none has a metric), and the runner-up: the fastest of the other measured candidates.
    Sets each measured candidate's ``eligible``."""
    measured = [c for c in candidates if c.skipped is None]
    if not measured:
        raise OptinError("no candidate profile could be measured here: " + "; ".join(f"{c.profile}: {c.skipped}" for c in candidates))
    scored = [c.metric for c in measured if c.metric is not None]
    best = max(scored) if scored else None
    for c in measured:
        c.eligible = best is None or (c.metric is not None and c.metric >= best - equal_accuracy_points - 1e-9)
    chosen = min((c for c in measured if c.eligible), key=lambda c: c.p50_ms)
    rest = sorted((c for c in measured if c is not chosen), key=lambda c: c.p50_ms)
    return chosen.profile, (rest[0].profile if rest else None)


def check_any_available(target) -> None:
    """Fail before any expensive work when none of a choosing profile's candidates can run here."""
    from .build import check_target_available

    reasons = []
    for t in target.choices:
        try:
            check_target_available(t)
            return
        except OptinError as exc:
            reasons.append(f"{t.name}: {_why(exc)}")
    raise OptinError(f"none of the candidates of profile {target.chooser.name} can run here ({'; '.join(reasons)}); pick a profile "
                     f"that runs on this machine (optin-deploy profiles list)")


def choose_stage(ctx, staging: Path):
    """When the build's profile chooses among candidates: measure them and return ``(ctx for the chosen profile,
    RuntimeChoice)``; otherwise ``(ctx, None)``. The candidates' exports are written under ``staging`` and removed."""
    from .build import check_target_available
    from .int8 import check_quantization_options

    target, opts = ctx.target, ctx.opts
    if not target.choices:
        return ctx, None
    chooser = target.chooser
    t0 = time.perf_counter()
    cands: list[Candidate] = []
    ctxs = {}
    for t in target.choices:
        c = Candidate(t.name, t.runtime_name, t.precision)
        cands.append(c)
        try:
            check_target_available(t)
        except OptinError as exc:
            c.skipped = f"cannot run here: {_why(exc)}"
            continue
        try:  # --quantization / --int8-max-drop ask for an int8 deliverable: the other candidates are not what was asked
            check_quantization_options(opts.quantization, opts.int8_max_drop, t)
        except OptinError as exc:
            c.skipped = f"not what the options ask for: {str(exc).split(';')[0][:200]}"
            continue
        ctxs[t.name] = replace(ctx, target=t, sel_kwargs=t.selection_kwargs, _costs=None, cost_info={})
    metric_name = None
    split = "validation"
    note = None
    if opts.lut:  # a latency table belongs to one profile: build for the candidate it was measured for (else the first that runs)
        from .build import given_lut

        measured_for = given_lut(opts).profile.get("name")
        ok = [c for c in cands if c.skipped is None]
        keep = next((c for c in ok if c.profile == measured_for), ok[0] if ok else None)
        note = (f"--lut given: the table was measured for {measured_for!r}, so that candidate was taken without measuring the others"
                if keep is not None and keep.profile == measured_for else
                f"--lut given (measured for {measured_for!r}, not a candidate that runs here): the first candidate that runs here was taken")
        for c in ok:
            if c is not keep:
                c.skipped = "--lut given"
    runnable = [c for c in cands if c.skipped is None]
    if not runnable:
        raise OptinError(f"none of the candidates of profile {chooser.name} can run here: "
                         + "; ".join(f"{c.profile}: {c.skipped}" for c in cands))
    root = staging / "runtime-choice"
    exports: dict[str, dict] = {}
    try:
        if len(runnable) > 1:
            step(f"profile {chooser.name}: choosing among {', '.join(c.profile for c in runnable)} by measuring the dense model on each "
                 f"(validation split, then timed interleaved)")
            metric_name = _measure(ctx, ctxs, runnable, root, split, exports)
        chosen, runner_up = pick(cands, chooser.equal_accuracy_points)
        dense_export = None
        if chosen in exports:  # the chosen candidate's dense export is the bundle's: moved there, not exported again
            cx = ctxs[chosen]
            dense_export = move_export(root / chosen, staging / cx.fmt / "dense")
            if dense_export.get("parity_deferred"):
                dense_export = cx.check_parity(ctx.model, staging / cx.fmt / "dense", dense_export)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    choice = RuntimeChoice(chooser.name, chosen, runner_up, metric_name, split, chooser.equal_accuracy_points, cands,
                           round(time.perf_counter() - t0, 1), note, dense_export)
    step(f"target chosen by measurement: {choice.summary()}")
    return (replace(ctxs[chosen], dense_export=dense_export) if dense_export is not None else ctxs[chosen]), choice


def _why(exc: BaseException) -> str:
    """A skip reason: the error's first line (errors.short_reason: at most 200 characters, cut at a word), else its type."""
    from .errors import short_reason

    return short_reason(exc) or type(exc).__name__


def _measure(ctx, ctxs: dict, runnable: list[Candidate], root: Path, split: str, exports: dict) -> str | None:
    """Export, evaluate and time the dense model for every runnable candidate (in place; each measured export's
    manifest into ``exports``); returns the metric's name.
    A candidate whose export, runtime or evaluation fails (a runtime that cannot read or run this family's graph) is
    skipped with the reason; the others are still measured."""
    from .bench import benchmark, print_bench_table
    from .evaluate import evaluate, headline_metric

    loaded = {}
    for c in runnable:
        cx = ctxs[c.profile]
        try:
            export = cx.export(ctx.model, root / c.profile, f"dense ({c.profile})", parity=not cx.can_defer_parity)
        except OptinError as exc:
            raise_if_storage(exc, str(root / c.profile))  # a full disk is no property of the candidate: never skip it for that
            c.skipped = f"export failed: {_why(exc)}"
            continue
        rt, artifact = cx.runtime(export)
        try:  # load it and run it once at the benchmark shape
            rt.load(artifact)
            rt.run(ctx.bench_np)
        except Exception as exc:  # noqa: BLE001 - any runtime's failure to read or run the graph skips this candidate only
            raise_if_storage(exc, str(root / c.profile))
            c.skipped = f"{c.runtime} cannot run the dense model: {_why(exc)}"
            continue
        loaded[c.profile] = rt
        exports[c.profile] = export
    metric_name = None
    if ctx.embedding:
        from .embedding_eval import cosine_rows, embed

        texts = list(getattr(ctx.task.data, split).inputs)
        embs = {}
        for c in [c for c in runnable if c.profile in loaded]:
            try:
                embs[c.profile] = embed(ctx.task, loaded[c.profile], texts)
            except Exception as exc:  # noqa: BLE001
                c.skipped = f"evaluation failed: {_why(exc)}"
                del loaded[c.profile]
        if embs:
            metric_name = "cosine_to_first_x100"
            first = embs[next(iter(embs))]
            for c in runnable:
                if c.profile in embs:
                    c.metric = round(100.0 * float(cosine_rows(embs[c.profile], first).mean()), 4)
    else:
        metric = headline_metric(ctx.task.data.task_type)
        values = {}
        for c in [c for c in runnable if c.profile in loaded]:
            try:
                values[c.profile] = evaluate(ctx.task, {c.profile: (loaded[c.profile], None)}, split=split)["models"][c.profile].get(metric)
            except Exception as exc:  # noqa: BLE001
                c.skipped = f"evaluation failed: {_why(exc)}"
                del loaded[c.profile]
        if values and all(v is not None for v in values.values()):  # an unlabelled validation split: chosen by time alone
            metric_name = metric
            for c in runnable:
                if c.profile in values:
                    c.metric = round(100.0 * float(values[c.profile]), 3)
    if not loaded:
        return metric_name
    o = ctx.opts
    # the build's timing settings, at most CHOICE_ITERS runs each: the choice needs the order, the report's figures come later
    bench = benchmark({name: (rt, None) for name, rt in loaded.items()}, ctx.bench_np, warmup=min(o.bench_warmup, CHOICE_ITERS),
                      iters=min(o.bench_iters, CHOICE_ITERS), baseline=next(iter(loaded)), block=o.bench_block, min_seconds=o.bench_min_seconds)
    print_bench_table(bench, console=console, title="the dense model on each candidate profile")  # stderr, as all of the build's progress
    for c in runnable:
        if c.profile in loaded:
            c.p50_ms = round(float(bench["models"][c.profile]["p50_ms"]), 3)
    return metric_name
