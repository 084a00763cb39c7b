"""What flushing denormal floats to zero does to a bundle's onnxruntime CPU latency (real inputs).

Three ways, each in its own child processes (onnxruntime sets the calling thread's float mode once per process,
from the first session created, so the ways cannot share a process):

* ``default``: onnxruntime's default session (denormals kept);
* ``workers``: ``session.set_denormal_as_zero`` on the session, but an earlier session in the process did not ask
  for it, so only onnxruntime's worker threads flush and the calling thread (which also computes) does not;
* ``all``: the tool's session (``OrtRuntime`` on the CPU, the first session of the process): every thread flushes.

The bundle's dense and pruned ``model.onnx`` at one shape, on the same real-text batch ``bench`` and ``build`` time
(``bench_inputs``), ``--repeats`` rounds of the six children in rotating order; medians of each child's runs.
Also checks the outputs: the largest difference between ``default`` and ``all`` logits.

    python benchmarks/denormals.py --bundle optin-build --shape 8x128 --out results/denormals
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("default", "workers", "all")


def child(artifact: str, npz: str, way: str, threads: int, seconds: float, out: str) -> None:
    import onnxruntime as ort

    from optin_deploy.runtimes.ort import OrtRuntime

    if way == "workers":  # a first session without the option: the calling thread keeps denormals for the process
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        ort.InferenceSession(artifact, so, providers=["CPUExecutionProvider"])
    rt = OrtRuntime("ort-cpu", threads=threads, flush_denormals=way != "default").load(artifact)
    feed = dict(np.load(npz))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:  # warm up
        y = rt.run(feed)
    ms = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(ms) < 20:
        t = time.perf_counter()
        rt.run(feed)
        ms.append((time.perf_counter() - t) * 1e3)
    np.save(out, y)
    print(json.dumps({"p50_ms": float(np.median(ms)), "runs": len(ms)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("optin-build"))
    ap.add_argument("--shape", default="8x128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0, help="warm-up, then timing, at least this long per child")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "denormals")
    args = ap.parse_args()
    from optin_deploy.bench import bench_inputs

    B, T = (int(x) for x in args.shape.split("x"))
    bundle = args.bundle.resolve()
    models = {l: bundle / "onnx" / l / "model.onnx" for l in ("dense", "pruned")}
    res: dict = {l: {w: [] for w in WAYS} for l in models}
    diff = {}
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "feed.npz"
        np.savez(npz, **bench_inputs(bundle / "onnx" / "dense", B, T))
        jobs = [(l, w) for l in models for w in WAYS]
        for r in range(args.repeats):
            for l, w in jobs[r % len(jobs):] + jobs[: r % len(jobs)]:
                out = Path(tmp) / f"{l}-{w}.npy"
                p = subprocess.run([sys.executable, __file__, "--child", str(models[l]), str(npz), w, str(args.threads), str(args.seconds), str(out)],
                                   capture_output=True, text=True, check=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
                res[l][w].append(json.loads(p.stdout.strip().splitlines()[-1])["p50_ms"])
                print(f"{l} {w}: {res[l][w][-1]:.2f} ms", flush=True)
        for l in models:
            diff[l] = float(np.abs(np.load(Path(tmp) / f"{l}-default.npy") - np.load(Path(tmp) / f"{l}-all.npy")).max())
    med = {l: {w: float(np.median(v)) for w, v in ws.items()} for l, ws in res.items()}
    doc = {"bundle": str(bundle), "shape": args.shape, "threads": args.threads, "repeats": res, "median_ms": med, "max_abs_logit_diff": diff}
    lines = [f"Bundle `{bundle}`, {args.shape}, {args.threads} threads, real sentences; median of {args.repeats} child processes per cell (ms).", "",
             "| session | dense | pruned | dense / pruned |", "|---|---:|---:|---:|"]
    names = {"default": "onnxruntime's default (denormals kept)", "workers": "worker threads flush, the calling thread does not",
             "all": "every thread flushes (the tool's session)"}
    for w in WAYS:
        lines.append(f"| {names[w]} | {med['dense'][w]:.2f} | {med['pruned'][w]:.2f} | {med['dense'][w] / med['pruned'][w]:.2f}x |")
    lines += ["", f"Flushing: dense x{med['dense']['default'] / med['dense']['all']:.2f} faster, pruned x{med['pruned']['default'] / med['pruned']['all']:.2f}; "
              f"the flushed pruned model against the dense model in a default session x{med['dense']['default'] / med['pruned']['all']:.2f}. "
              f"Largest logit difference default vs flushed: dense {diff['dense']:.2e}, pruned {diff['pruned']:.2e}.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6]), sys.argv[7])
    else:
        main()
