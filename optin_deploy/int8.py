"""How a build quantises to int8 on onnxruntime CPU: dynamic, static, or both measured (``auto``), with layers left
in fp32 where accuracy needs it.

The exporter writes the parity-checked fp32 graph (``model.fp32.onnx``) and the int8 graph (``model.onnx``) in the
profile's mode (``quantization = "static"``: activation ranges from the build's calibration batch, the same
unlabelled samples the scores used). When the profile asks for ``auto`` or an accuracy tolerance
(``int8_max_drop``, or ``build --int8-max-drop``), :func:`settle_int8` then, for the dense and the pruned model
alike, each against the fp32 graph of the same model:

1. quantises the fp32 graph each way asked (``auto``: dynamic and static) and measures the task metric of each
   int8 graph and of the fp32 graph on the validation split (a fixed subset of ``--search-samples``);
2. where the drop exceeds the tolerance, re-quantises leaving nodes in fp32 (``nodes_to_exclude``), the last
   quantised nodes first (the classifier side), doubling how many each round (1, 2, 4, ...) until the drop is
   within the tolerance or every node is excluded;
3. with more than one way left, times them interleaved in blocks on the benchmark shape and keeps the fastest
   among those within the tolerance (the least drop when none is);
4. moves the kept graph to ``model.onnx``, re-checks its parity against PyTorch, and records every way's timing,
   accuracy and excluded nodes, and why it was kept, in the export manifest (``quantization.choice``).

The refit (reconstruction of the kept units) ran before: this quantises the refit model's graph. The test-split
accuracy in the report, and the quality gate, are measured through the kept int8 artefact as for every export.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from .errors import OptinError
from .progress import step


def wants_settling(quantization: str, max_drop: float | None) -> bool:
    return quantization == "auto" or max_drop is not None


class ValidationMetric:
    """The task metric (x100) of an onnxruntime graph on a fixed validation subset, ordered by length."""

    def __init__(self, ctx, samples: int):
        from .evaluate import headline_metric
        from .search import CandidateLab

        task = ctx.task
        self.ctx, self.name = ctx, headline_metric(task.data.task_type)
        val = task.data.require_labels("validation")
        n = len(val)
        from .search import SUBSET_FLOOR

        idx = np.sort(np.random.default_rng(ctx.opts.seed).permutation(n)[: min(samples or SUBSET_FLOOR, n)])
        self.split, _ = CandidateLab._split(val, idx)
        self.samples, self.total = len(idx), n

    def __call__(self, path: Path) -> float:
        from .evaluate import predict, task_metrics
        from .runtimes.base import get_runtime

        rt = get_runtime("ort-cpu", threads=self.ctx.target.threads).load(path)
        logits, y = predict(self.ctx.task, rt, self.split, progress=False, description=f"int8 check {path.name}")
        t = self.ctx.task.data
        return 100.0 * task_metrics(logits, y, t.task_type, t.num_labels)[self.name]


def _time_interleaved(ctx, paths: dict[str, Path]) -> dict[str, float]:
    from .bench import benchmark
    from .runtimes.base import get_runtime

    rts = {k: (get_runtime("ort-cpu", threads=ctx.target.threads), str(p)) for k, p in paths.items()}
    o = ctx.opts
    b = benchmark(rts, ctx.bench_np, warmup=max(2, o.bench_warmup // 2), iters=max(20, o.bench_iters // 2), block=o.bench_block, progress=False)
    return {k: b["models"][k]["p50_ms"] for k in paths}


def settle_int8(ctx, export: dict, model, label: str, quantization: str, max_drop: float | None, metric: ValidationMetric | None = None) -> dict:
    """Quantise ``export``'s fp32 graph as :mod:`this module <optin_deploy.int8>` says, keep the way chosen as the
    export's ``model.onnx`` (parity re-checked) and return the updated manifest (``export.json`` rewritten)."""
    from .exporters.base import LogitsModel, ordered_inputs
    from .exporters.export_folder import write_export_files
    from .exporters.onnx import calibration_batches, onnx_parity_runner, quantizable_nodes, quantize_int8
    from .exporters.parity import check_parity, parity_inputs

    art = Path(export["artifact"])
    onnx_meta = export["artifacts"]["onnx"]
    fp32 = art.parent / onnx_meta["fp32_file"]
    names = list(export["input_names"])
    modes = ["dynamic", "static"] if quantization == "auto" else [quantization]
    calib = calibration_batches(ctx.calib, names) if "static" in modes else None
    accuracy_on = None
    if ctx.embedding:  # no labels: nothing to hold a tolerance against; auto keeps the faster way
        metric = None
        if max_drop is not None:
            step(f"{label}: int8 tolerance not applied (a sentence-embedding model has no labelled metric)")
    else:
        metric = metric or ValidationMetric(ctx, ctx.opts.search_samples)
        accuracy_on = {"split": "validation", "samples": metric.samples, "total": metric.total, "metric": metric.name}
    fp32_acc = metric(fp32) if metric else None
    # parity against PyTorch (the exporter's check, recorded there, not fatal): an int8 graph that fails it is not the model
    # whatever its validation figure says (a pruned model near chance can score as well as its fp32 graph with other
    # predictions), so nodes are left in fp32 until it passes, as for the tolerance
    reference = LogitsModel(model.eval(), names)
    plist = parity_inputs(ordered_inputs(ctx.example(), names), task=ctx.task, profile=ctx.shape())

    def parity_of(path: Path) -> dict:
        rt = onnx_parity_runner(path, ctx.target.threads)
        par = check_parity(reference, rt.run, plist, precision="int8", raise_on_fail=False)
        par["runtime"] = rt.describe()
        return par

    ways: dict[str, dict] = {}
    for mode in modes:
        order = list(reversed(quantizable_nodes(fp32, mode)))  # the last nodes (the classifier first) are left in fp32 first
        path = art.parent / f"model.int8-{mode}.onnx"
        excluded: list[str] = []
        history = []
        while True:
            info = quantize_int8(fp32, path, mode=mode, calibration=calib, exclude=excluded)
            acc = metric(path) if metric else None
            drop = None if acc is None else fp32_acc - acc
            par = parity_of(path)
            history.append({"excluded": len(excluded), "accuracy": _r(acc), "drop": _r(drop), "parity_passed": par["passed"],
                            "parity_agreement": _r(par.get("agreement"), 4)})
            step(f"{label} int8 {mode}: {len(excluded)} node(s) in fp32"
                 + ("" if acc is None else f", validation {metric.name} {acc:.2f} (fp32 graph {fp32_acc:.2f}, drop {drop:+.2f})")
                 + ("" if par["passed"] else f"; parity against PyTorch failed ({par['failures'][0]})"))
            within = max_drop is None or drop is None or drop <= max_drop
            if (within and par["passed"]) or len(excluded) >= len(order):
                break
            excluded = order[: min(len(order), max(1, 2 * len(excluded)))]
        ways[mode] = {"path": path, "info": info, "accuracy": _r(acc), "drop": _r(drop), "excluded": excluded, "history": history,
                      "within_tolerance": True if (max_drop is None or drop is None) else bool(drop <= max_drop), "parity": par,
                      "quantized_nodes": len(order) - len(excluded), "quantizable_nodes": len(order)}
    timings = _time_interleaved(ctx, {m: w["path"] for m, w in ways.items()}) if len(ways) > 1 else {}
    ok = [m for m in ways if ways[m]["within_tolerance"] and ways[m]["parity"]["passed"]]
    if len(ways) == 1:
        kept, why = modes[0], f"the profile asks for {modes[0]}"
    elif ok:
        kept = min(ok, key=lambda m: timings[m])
        others = [m for m in ways if m != kept]
        why = (f"{kept} measured faster ({timings[kept]:.2f} ms p50 against "
               + ", ".join(f"{m} {timings[m]:.2f} ms" for m in others) + ", interleaved)"
               + ("" if max_drop is None else f" among the ways within {max_drop:g} points of the fp32 graph"))
        if len(ok) < len(ways):
            why += "; " + ", ".join(f"{m} was outside the tolerance" for m in ways if m not in ok)
    else:
        kept = min(ways, key=lambda m: (not ways[m]["parity"]["passed"], ways[m]["drop"] or 0.0))
        why = (f"no way was within {max_drop:g} points" if max_drop is not None else "no way passed its parity check") + f"; {kept} lost the least accuracy"
    if max_drop is not None and not ways[kept]["within_tolerance"]:
        why += " (outside the tolerance even with every node in fp32)"
    if not ways[kept]["quantized_nodes"]:
        why += "; every quantisable node is left in fp32: this graph computes in fp32"
    step(f"{label}: int8 {kept} kept: {why}" + (f"; left in fp32: {', '.join(ways[kept]['excluded'])}" if ways[kept]["excluded"] else ""))
    os.replace(ways[kept]["path"], art)
    for m, w in ways.items():
        if m != kept:
            Path(w["path"]).unlink(missing_ok=True)
    # parity through the kept artefact, as the exporter checks it (measured above on the same file)
    par = ways[kept]["parity"]
    if not par["passed"]:  # cannot happen with every node in fp32 unless the fp32 graph itself failed: refused, not shipped
        raise OptinError(f"parity check failed for int8 ONNX export of {type(model).__name__} ({label}, int8 {kept} with "
                         f"{len(ways[kept]['excluded'])} node(s) left in fp32): {par['failures'][0]}; build in fp32 (--profile x86-cpu-ort-fp32)")
    choice = {"asked": quantization, "kept": kept, "why": why, "max_drop": max_drop, "accuracy_on": accuracy_on,
              "fp32_accuracy": _r(fp32_acc),
              "ways": {m: {"p50_ms": _r(timings.get(m)), "accuracy": w["accuracy"], "drop": w["drop"], "within_tolerance": w["within_tolerance"],
                           "parity_passed": w["parity"]["passed"], "excluded": w["excluded"], "history": w["history"], "method": w["info"]["method"],
                           "quantized_nodes": w["quantized_nodes"], "quantizable_nodes": w["quantizable_nodes"]} for m, w in ways.items()}}
    q = {**ways[kept]["info"], "choice": choice, "quantized_nodes": ways[kept]["quantized_nodes"], "quantizable_nodes": ways[kept]["quantizable_nodes"]}
    onnx_meta["quantization"], onnx_meta["parity"] = q, par
    export["quantization"] = q
    if not q["quantized_nodes"]:  # nothing is int8 any more: labelled as what it computes in (report, baselines, OpenVINO)
        export["precision"] = onnx_meta["precision"] = "fp32"
        q["note"] = "every quantisable node left in fp32: the artefact is the fp32 graph"
    export["parity"]["model.onnx"] = par
    write_export_files(art.parent, export)
    return export


def _r(x, nd: int = 3):
    return None if x is None else round(float(x), nd)


def check_quantization_options(quantization: str | None, max_drop: float | None, target) -> None:
    """``build --quantization / --int8-max-drop``: one-line errors before any work."""
    from .profiles import QUANTIZATIONS

    if quantization is not None and quantization not in QUANTIZATIONS:
        raise OptinError(f"--quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    if max_drop is not None and not (0.0 <= max_drop <= 100.0):
        raise OptinError(f"--int8-max-drop must be in 0..100 accuracy points, got {max_drop}")
    if (quantization is not None or max_drop is not None) and (target.precision != "int8" or target.runtime_name != "ort-cpu"):
        flag = "--quantization" if quantization is not None else "--int8-max-drop"
        raise OptinError(f"{flag} applies to int8 profiles on onnxruntime CPU; profile {target.name!r} is {target.precision} on "
                         f"{target.runtime_name} (use --profile x86-cpu-ort)")
