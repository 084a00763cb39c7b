"""Static int8 of the fused graph: QOperator or QDQ? (the choice recorded at ``STATIC_FORMAT`` in exporters/onnx.py)

Quantises one fp32 fused graph (a build's ``onnx/dense/model.fp32.onnx``) four ways with the library's own
:func:`quantize_int8` (dynamic; static QOperator; static QDQ; each static one with the fused Attention quantised
dynamically, as the library does), calibrated on the default task's calibration samples, and times them with
the fp32 graph in interleaved blocks on onnxruntime CPU (8 x 128, 2 threads, real test samples). Speed only.

    flock /tmp/optin-cpu.lock python benchmarks/quant_format.py /work/runs/q8-dynamic/onnx/dense/model.fp32.onnx \
        --json results/quant_format.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from optin_deploy.bench import benchmark
from optin_deploy.exporters import onnx as ox
from optin_deploy.runtimes import get_runtime
from optin_deploy.target import resolve_target
from optin_deploy.zoo import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32", type=Path, help="the fp32 fused graph (model.fp32.onnx of a build)")
    ap.add_argument("--calib-samples", type=int, default=128)
    ap.add_argument("--iters", type=int, default=40)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    task = load_task(None, None, max_length=None)
    eval_len = task.max_length
    task.max_length = 64
    calib = ox.calibration_batches(task.calibration(a.calib_samples, seed=0), ["input_ids", "attention_mask"])
    task.max_length = eval_len
    target = resolve_target("x86-cpu-ort")
    x = {k: v.numpy() for k, v in target.example_inputs(task.model, task).items()}
    work = Path(tempfile.mkdtemp(prefix="qfmt-"))
    files, infos = {"fp32": a.fp32}, {}
    infos["dynamic"] = ox.quantize_int8(a.fp32, work / "dynamic.onnx", mode="dynamic")
    files["dynamic"] = work / "dynamic.onnx"
    for fmt in ("QOperator", "QDQ"):
        ox.STATIC_FORMAT = fmt
        infos[f"static-{fmt}"] = ox.quantize_int8(a.fp32, work / f"static-{fmt}.onnx", mode="static", calibration=calib)
        files[f"static-{fmt}"] = work / f"static-{fmt}.onnx"
    rts = {k: (get_runtime("ort-cpu", threads=target.threads), str(p)) for k, p in files.items()}
    b = benchmark(rts, x, warmup=5, iters=a.iters, baseline="fp32", progress=False)
    rows = {k: {"p50_ms": round(b["models"][k]["p50_ms"], 2), "x_vs_fp32": round(b["speedup"][k], 3),
                "method": infos.get(k, {}).get("method", "fp32")} for k in files}
    for k, r in rows.items():
        print(f"{k:18s} {r['p50_ms']:8.2f} ms  x{r['x_vs_fp32']:.2f} vs fp32   {r['method']}")
    if a.json:
        a.json.write_text(json.dumps({"graph": str(a.fp32), "shape": {k: list(v.shape) for k, v in x.items()}, "threads": target.threads,
                                      "iters": a.iters, "mode": b.get("mode"), "calibration_samples": a.calib_samples, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
