"""Static against dynamic int8 on the default model: one table from two builds and one interleaved bench.

Reads the bundles of ``optin-deploy build --flops 0.6 --quantization static|dynamic --no-baselines`` (test accuracy
through each int8 artefact, how it was quantised) and the ``optin-deploy bench ... --json`` of their four int8
artefacts timed in one interleaved run, and writes ``results/quant_static.{json,md}``::

    flock /tmp/optin-cpu.lock optin-deploy build --flops 0.6 --quantization static --no-baselines --bench-iters 40 --out /work/runs/q8-static
    flock /tmp/optin-cpu.lock optin-deploy build --flops 0.6 --quantization dynamic --no-baselines --bench-iters 40 --out /work/runs/q8-dynamic
    flock /tmp/optin-cpu.lock optin-deploy bench /work/runs/q8-dynamic/onnx/dense /work/runs/q8-static/onnx/dense \\
        /work/runs/q8-dynamic/onnx/pruned /work/runs/q8-static/onnx/pruned --iters 40 \\
        --labels dense-dynamic,dense-static,pruned-dynamic,pruned-static --json results/quant_static_bench.json
    python benchmarks/quant_static_summary.py /work/runs/q8-static /work/runs/q8-dynamic results/quant_static_bench.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(static: str, dynamic: str, bench: str, out: str = "results/quant_static") -> None:
    rep = {m: json.loads((Path(p) / "report.json").read_text()) for m, p in (("static", static), ("dynamic", dynamic))}
    b = json.loads(Path(bench).read_text())
    models = b["models"]
    rows = {}
    for label in ("dense", "pruned"):
        for m in ("dynamic", "static"):
            exp = json.loads((Path(static if m == "static" else dynamic) / "onnx" / label / "export.json").read_text())
            rows[f"{label}-{m}"] = {"p50_ms": round(models[f"{label}-{m}"]["p50_ms"], 2),
                                    "test_accuracy": rep[m]["accuracy"][label],
                                    "method": exp["quantization"]["method"], "excluded": exp["quantization"].get("excluded", [])}
    ratio = {label: round(rows[f"{label}-dynamic"]["p50_ms"] / rows[f"{label}-static"]["p50_ms"], 3) for label in ("dense", "pruned")}
    same = rep["static"]["structure"]["heads"]["pruned"] == rep["dynamic"]["structure"]["heads"]["pruned"] and \
        rep["static"]["structure"]["neurons"]["pruned"] == rep["dynamic"]["structure"]["neurons"]["pruned"]
    res = {"shape": models["dense-dynamic"].get("input_shapes"), "mode": b.get("mode"), "iters": b.get("iters"), "rows": rows,
           "dynamic_over_static_p50": ratio, "same_pruned_structure": same,
           "pruned_vs_dense_same_way": {m: round(rows[f"dense-{m}"]["p50_ms"] / rows[f"pruned-{m}"]["p50_ms"], 3) for m in ("dynamic", "static")},
           "builds": {"static": static, "dynamic": dynamic}, "bench": bench,
           "note": "one interleaved run (blocks) on a shared, loaded 2-core machine: read the ratios, not the milliseconds"}
    Path(out + ".json").write_text(json.dumps(res, indent=1))
    lines = ["# Static against dynamic int8, default model (all-MiniLM-L6-v2 sentiment), --flops 0.6, onnxruntime CPU, 2 threads", "",
             "| model | int8 | p50 ms (8 x 128, one interleaved run) | test accuracy % | how |", "|---|---|---:|---:|---|"]
    for k, r in rows.items():
        label, m = k.split("-")
        lines.append(f"| {label} | {m} | {r['p50_ms']:.2f} | {r['test_accuracy']:.2f} | {r['method']} |")
    lines += ["", f"dynamic p50 / static p50: dense x{ratio['dense']:.3f}, pruned x{ratio['pruned']:.3f} (above 1: static faster); "
              f"pruned against its dense, same way: dynamic x{res['pruned_vs_dense_same_way']['dynamic']:.3f}, "
              f"static x{res['pruned_vs_dense_same_way']['static']:.3f}; same pruned structure in both builds: {same}.", "",
              res["note"] + "."]
    Path(out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
