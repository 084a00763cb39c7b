"""Where the time goes: the runtime's own per-node profiler on a bundle's dense and pruned artefacts.

onnxruntime bundles are profiled with onnxruntime's profiler; a bundle whose deliverable runs on OpenVINO (the
default profile on an AMX host) with OpenVINO's performance counters (``PERF_COUNT``) at the bundle's inference
precision (:func:`profile_openvino`; OpenVINO renames fused nodes, so its nodes are classed by type and order).

For each artefact (the bundle's dense and pruned ``model.onnx``, and their fp32 graphs when the
bundle is int8) the session runs ``--runs`` times with ``enable_profiling``; every node's kernel
time is summed per run and assigned to a category by the node's name and operator:

* **heads** (prunable): Attention / QAttention and the output projection (``/o/``);
* **neurons** (prunable): the two MLP linears (``/fc1/``, ``/fc2/``) and their GELU;
* **residual + LayerNorm**, **quantise activations** (DynamicQuantizeLinear: int8 only),
  **embeddings + mask**, **classifier head**, **other**: what pruning cannot remove.

From the dense model's split it states the best speed-up pruning can give at the bundle's MAC
ratio if the prunable kernels shrank in proportion to their MACs
(``total / (fixed + ratio * prunable)``), and how close the measured one comes (the bundle's
report, and the profiled kernel totals). Writes ``results/op_profile.json`` / ``.md``.

    python benchmarks/op_profile.py --bundle optin-build --shape 8x128
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import re
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PRUNABLE = ("heads", "neurons")


def category(name: str, op: str) -> str:
    if op in ("Attention", "QAttention", "MultiHeadAttention") or "/o/" in name:
        return "heads"
    if "/fc1/" in name or "/fc2/" in name or op in ("BiasGelu", "FastGelu", "Gelu") or "Gelu" in name:
        return "neurons"
    if op == "DynamicQuantizeLinear":
        return "quantise activations"
    if "/pooler/" in name or "/head_" in name or op == "Tanh" or "classifier" in name:
        return "classifier head"
    if "/word/" in name or "/pos/" in name or "/tok/" in name or "ln_emb" in name or "Mask" in name or op in ("Shape", "Range", "Unsqueeze", "Cast", "ReduceSum", "Gather"):
        return "embeddings + mask"
    if op in ("LayerNormalization", "SkipLayerNormalization", "Add") or re.search(r"/layers\.\d+/Add", name):
        return "residual + LayerNorm"
    return "other"


def profile(path: Path, feed: dict, threads: int, runs: int, warmup: int) -> dict:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tmp, "p")
        from optin_deploy.runtimes.ort import CPU_DISABLED_OPTIMIZERS, CPU_FLUSH_DENORMALS, DENORMAL_AS_ZERO

        if CPU_FLUSH_DENORMALS:  # as the tool's CPU sessions run
            so.add_session_config_entry(DENORMAL_AS_ZERO, "1")

        s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"], disabled_optimizers=list(CPU_DISABLED_OPTIMIZERS))
        for _ in range(warmup):  # their runs are dropped below (only the last `runs` run ids count)
            s.run(None, feed)
        for _ in range(runs):
            s.run(None, feed)
        events = json.load(open(s.end_profiling()))
    # each kernel event belongs to the model_run whose time window holds it (onnxruntime 1.2x-1.3x records no run_id on
    # node events: reading a missing run_id as 0 summed every run, warm-up included, into one)
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    starts = [w[0] for w in windows]
    keep = set(range(len(windows))[-runs:])  # the warm-up runs are dropped
    per_run = defaultdict(lambda: defaultdict(float))  # run -> category -> ms
    nodes = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            run = bisect.bisect_right(starts, e["ts"]) - 1
            if run not in keep or e["ts"] > windows[run][1]:
                continue
            args = e.get("args", {})
            c = category(e["name"][: -len("_kernel_time")], args.get("op_name", ""))
            per_run[run][c] += e["dur"] / 1e3
            nodes[f"{args.get('op_name')}: {c}"] += e["dur"] / 1e3
    runs_cat = [dict(per_run[r]) for r in sorted(keep)]
    return summarise(runs_cat, [(b - a) / 1e3 for a, b in windows][-runs:], nodes)


def summarise(runs_cat: list[dict], totals: list[float], nodes: dict) -> dict:
    """Per-category medians over the runs (ms per run), their sum, the median run time and each operator's mean per run."""
    cats = sorted({c for r in runs_cat for c in r})
    med = {c: float(np.median([r.get(c, 0.0) for r in runs_cat])) for c in cats}
    n = max(len(runs_cat), 1)
    return {"categories_ms": med, "kernel_total_ms": float(sum(med.values())), "run_ms_p50": float(np.median(totals)) if totals else None,
            "by_op_ms_per_run": {k: v / n for k, v in sorted(nodes.items(), key=lambda t: -t[1])}}


def ov_category(node: str, op: str, following: list[str]) -> str:
    """The category of one OpenVINO CPU node: by name where OpenVINO kept the ONNX one (``/layers.N/o/``, ``/fc2/``),
    else by type, and a FullyConnected by what follows it (a Split: the fused Q/K/V projection; else the MLP's first)."""
    if op == "FullyConnected":
        if "/pooler/" in node or "classifier" in node or "/head_" in node:
            return "classifier head"
        if "/o/" in node:
            return "heads"
        if "/fc1/" in node or "/fc2/" in node:
            return "neurons"
        nxt = next((f for f in following if f not in ("Reorder", "Convert")), "")
        return "heads" if nxt in ("Split", "Transpose", "Subgraph", "Reshape") else "neurons"
    if op in ("Subgraph", "Split", "Transpose", "Softmax", "ScaledDotProductAttention", "MatMul"):
        return "heads"
    if op in ("MVN", "Add", "MulAdd", "Multiply", "Eltwise"):
        return "residual + LayerNorm"
    if op in ("Gather", "Range", "ReduceSum", "Broadcast", "GreaterEqual", "Convert", "PowerStatic", "Select", "ShapeOf"):
        return "embeddings + mask"
    if op == "Tanh":
        return "classifier head"
    return "other"


def profile_openvino(path: Path, feed: dict, threads: int, runs: int, warmup: int, precision: str) -> dict:
    """OpenVINO's CPU performance counters per run (``PERF_COUNT``), the same compile settings as the tool's runtime."""
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"PERF_COUNT": True, "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads,
                                                      "PERFORMANCE_HINT": "LATENCY"})
    req = compiled.create_infer_request()
    names = {i.get_any_name() for i in compiled.inputs}
    feed = {k: v for k, v in feed.items() if k in names}
    import time

    for _ in range(warmup):
        req.infer(feed)
    runs_cat, totals = [], []
    nodes = defaultdict(float)
    for _ in range(runs):
        t0 = time.perf_counter()
        req.infer(feed)
        totals.append((time.perf_counter() - t0) * 1e3)
        info = [p for p in req.get_profiling_info() if p.status == p.Status.EXECUTED]
        cats = defaultdict(float)
        for i, p in enumerate(info):
            c = ov_category(p.node_name, p.node_type, [q.node_type for q in info[i + 1:i + 4]])
            ms = p.real_time.total_seconds() * 1e3
            cats[c] += ms
            nodes[f"{p.node_type}: {c}"] += ms
        runs_cat.append(dict(cats))
    return summarise(runs_cat, totals, nodes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("optin-build"))
    ap.add_argument("--shape", default="8x128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "op_profile")
    args = ap.parse_args()
    from optin_deploy.bench import bench_inputs
    from optin_deploy.runtimes.base import read_manifest

    bundle = args.bundle.resolve()
    report = json.loads((bundle / "report.json").read_text())
    B, T = (int(x) for x in args.shape.split("x"))
    feed = bench_inputs(bundle / "onnx" / "dense", B, T)
    ratio = report["macs"]["ratio"]
    arts = {}
    openvino = str(report.get("runtime", "")).startswith("openvino")
    prec = report.get("inference_precision") or report.get("precision")
    for label in ("dense", "pruned"):
        folder = bundle / "onnx" / label
        arts[f"{label} ({prec})"] = folder / "model.onnx"
        if (folder / "model.fp32.onnx").exists():
            arts[f"{label} (fp32)"] = folder / "model.fp32.onnx"
    out = {"bundle": str(bundle), "shape": args.shape, "mac_ratio": ratio, "threads": args.threads, "runs": args.runs,
           "machine": "2-core x86-64, shared with other jobs while measured", "models": {}}
    for _ in range(1):
        for label, path in arts.items():
            out["models"][label] = (profile_openvino(path, feed, args.threads, args.runs, args.warmup, prec) if openvino
                                    else profile(path, feed, args.threads, args.runs, args.warmup))
            print(label, json.dumps(out["models"][label]["categories_ms"]), flush=True)
    out["profiler"] = f"OpenVINO performance counters ({report.get('runtime')})" if openvino else "onnxruntime profiler"
    lines = [f"{out['profiler']}, {args.shape}, {args.threads} threads, {args.runs} runs (median per category, ms per run); "
             f"bundle MAC ratio {ratio:.3f}; {out['machine']}.", ""]
    cats = sorted({c for m in out["models"].values() for c in m["categories_ms"]}, key=lambda c: (c not in PRUNABLE, c))
    lines += ["| category | " + " | ".join(out["models"]) + " |", "|---|" + "---:|" * len(out["models"])]
    for c in cats:
        cells = []
        for m in out["models"].values():
            v = m["categories_ms"].get(c, 0.0)
            cells.append(f"{v:.2f} ({100 * v / m['kernel_total_ms']:.0f}%)")
        lines.append(f"| {c}{' (prunable)' if c in PRUNABLE else ''} | " + " | ".join(cells) + " |")
    lines.append("| kernel total | " + " | ".join(f"{m['kernel_total_ms']:.2f}" for m in out["models"].values()) + " |")
    lines.append("")
    for prec in sorted({k.split("(")[1][:-1] for k in out["models"]}):
        d, p = out["models"].get(f"dense ({prec})"), out["models"].get(f"pruned ({prec})")
        if not d or not p:
            continue
        prunable = sum(d["categories_ms"].get(c, 0.0) for c in PRUNABLE)
        fixed = d["kernel_total_ms"] - prunable
        best = d["kernel_total_ms"] / (fixed + ratio * prunable)
        got = d["kernel_total_ms"] / p["kernel_total_ms"]
        shrink = {c: p["categories_ms"].get(c, 0.0) / d["categories_ms"][c] for c in PRUNABLE if d["categories_ms"].get(c)}
        out.setdefault("limits", {})[prec] = {"prunable_share": prunable / d["kernel_total_ms"], "best_speedup_at_ratio": best,
                                               "profiled_speedup": got, "prunable_time_kept": shrink}
        lines.append(f"- {prec}: the prunable units hold {100 * prunable / d['kernel_total_ms']:.0f}% of the dense kernel time; "
                     f"if they shrank with their MACs (x{ratio:.2f}) the best speed-up would be **x{best:.2f}**; the profiled kernels give x{got:.2f} "
                     f"(heads keep {100 * shrink.get('heads', float('nan')):.0f}% of their time, neurons {100 * shrink.get('neurons', float('nan')):.0f}%).")
    b = report.get("baselines") or {}
    if b:
        lines.append(f"- the build's own timing: x{b.get('speedup_vs_same_way')} against the dense model run the same way.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1))
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
