"""Usage: ``python benchmarks/standalone_probe.py BUNDLE 8x128 REPEATS SECONDS`` (session 5: ``3 2`` on the default bundle,
output in ``results/standalone_probe_s5.txt``).

Why is a standalone process slower than the blocks the parent times? Alternate, several times:
A: this process, one session alone, consecutive runs for S seconds (after S seconds of warm-up);
B: a child process doing the same (benchmarks/deploy_latency.py --standalone);
C: this process, blocks of 10 of dense and pruned (bench.benchmark, as build reports)."""
import json, sys, tempfile, time
from pathlib import Path
import numpy as np
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import deploy_latency as dl
from optin_deploy.bench import benchmark
from optin_deploy.runtimes.ort import OrtRuntime

bundle = Path(sys.argv[1]); B, T = map(int, sys.argv[2].split("x")); reps = int(sys.argv[3]); S = float(sys.argv[4])
feed = dl.feeds_for(bundle, B, T)
arts = {l: bundle / "onnx" / l / "model.onnx" for l in ("dense", "pruned")}

def alone_here(path):
    rt = OrtRuntime("ort-cpu", threads=2).load(path)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < S: rt.run(feed)
    ms = []; t0 = time.perf_counter()
    while time.perf_counter() - t0 < S or len(ms) < 40:
        t = time.perf_counter(); rt.run(feed); ms.append((time.perf_counter() - t) * 1e3)
    del rt
    return float(np.median(ms))

rows = []
tmp = Path(tempfile.mkdtemp(prefix="probe-"))
for r in range(reps):
    row = {}
    res = benchmark({l: (OrtRuntime("ort-cpu", threads=2), a) for l, a in arts.items()}, feed, warmup=5, iters=60, mode="blocks", block=10, baseline="dense", progress=False)
    row["C_blocks"] = {l: res["models"][l]["p50_ms"] for l in arts}
    row["A_here"] = {l: alone_here(a) for l, a in arts.items()}
    row["B_child"] = {l: dl.standalone(a, feed, 2, 40, 5, tmp, S) for l, a in arts.items()}
    rows.append(row)
    print(json.dumps(row), flush=True)
for way in ("C_blocks", "A_here", "B_child"):
    print(way, {l: round(float(np.median([r[way][l] for r in rows])), 2) for l in arts})
