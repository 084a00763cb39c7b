"""True latencies and honest baselines of a build bundle (issue 17's two tables, from the tool's own artefacts).

Given a bundle written by ``optin-deploy build`` (default profile: fused graph, int8), this script

1. **times the bundle's dense and pruned artefacts four ways** at each shape (``--shapes``, default
   1x128, 8x128, 8x64): one run per model round-robin in one process (how the tool used to time),
   round-robin with onnxruntime's intra-op spinning off, interleaved blocks of 10 consecutive runs
   per model (how ``bench`` / ``build`` time now: the figure a report states), and **standalone**: a
   fresh process that loads only that one model (``--standalone-runs`` runs, median). The reported
   blocks and the two standalone processes alternate in time, ``--standalone-repeats`` times, so a
   drifting machine moves both alike; it reports the median over the repeats of the ratio reported
   p50 (blocks) / standalone p50, which must be within 10 %. Also timed: one model at a time in the
   same process (all runs of dense, then all of pruned);
2. **times what users would otherwise ship** with the same weights, all in one interleaved-blocks
   run per shape: onnxruntime on the plain dynamo export (fp32), on the fused graph (fp32), on the
   fused graph in int8, OpenVINO on the fused fp32 graph (fp32, and bf16 where the CPU has it; when installed), and
   PyTorch eager, dense and pruned each, with test accuracy measured
   through each artefact (``--no-accuracy`` skips it);
3. writes ``results/deploy_latency.json`` and ``results/deploy_latency.md`` (the two tables).

The machine is shared: every figure is a median, ratios come from the same interleaved run.

Usage::

    optin-deploy build --flops 0.6 --out optin-build
    python benchmarks/deploy_latency.py --bundle optin-build
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def standalone_main(artifact: str, npz: str, threads: int, runs: int, warmup: int, seconds: float = 0.0, flush: bool = True,
                    runtime: str = "ort-cpu") -> None:
    """Child process: load one model alone, warm it up, time consecutive runs, print the median (ms) as JSON.

    Warm-up and timing each last at least ``seconds`` as well as their run counts: a server runs
    continuously, and 35 runs of a 4 ms model (140 ms) end before the process is in its steady state
    (measured: a 1 x 128 standalone median 25-60% above the same model's blocks in the parent)."""
    from optin_deploy.runtimes.base import get_runtime
    from optin_deploy.runtimes.ort import OrtRuntime

    # flush=False: onnxruntime's default session (denormal floats kept), what a server gets without the tool's settings
    rt = (OrtRuntime("ort-cpu", threads=threads, flush_denormals=flush) if runtime == "ort-cpu" else get_runtime(runtime, threads=threads)).load(artifact)
    feed = dict(np.load(npz))
    t_start, n = time.perf_counter(), 0
    while n < warmup or time.perf_counter() - t_start < seconds:
        rt.run(feed)
        n += 1
    ms = []
    t_start = time.perf_counter()
    while len(ms) < runs or time.perf_counter() - t_start < seconds:
        t0 = time.perf_counter()
        rt.run(feed)
        ms.append((time.perf_counter() - t0) * 1e3)
    print(json.dumps({"p50_ms": float(np.median(ms)), "min_ms": float(min(ms)), "runs": len(ms), "warmup_runs": n, "seconds": seconds}))


def standalone(artifact: Path, feed: dict, threads: int, runs: int, warmup: int, workdir: Path, seconds: float = 0.0, flush: bool = True,
               runtime: str = "ort-cpu") -> float:
    npz = workdir / "feed.npz"
    np.savez(npz, **feed)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, __file__, "--standalone", str(artifact), str(npz), str(threads), str(runs), str(warmup), str(seconds), "1" if flush else "0", runtime],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["p50_ms"]


def feeds_for(bundle: Path, batch: int, seq: int) -> dict:
    from optin_deploy.bench import bench_inputs

    return bench_inputs(bundle / "onnx" / "dense", batch, seq)


def time_ways(arts: dict[str, Path], feed: dict, threads: int, iters: int, args, workdir: Path, runtime: str = "ort-cpu") -> dict:
    """The bundle's dense and pruned artefacts timed several ways. The reported way (blocks, as ``bench`` /
    ``build`` time) and the standalone processes alternate in time, ``--standalone-repeats`` times (blocks,
    dense alone, pruned alone; then the order of the two processes is swapped): a machine whose speed drifts
    over minutes (a shared host) then shifts both sides of the reported / standalone ratio alike. Each
    repeat gives one ratio; the table shows the medians. ``runtime``: the deliverable's (an OpenVINO bundle is timed through
    OpenVINO, blocks and standalone; the round-robin / spinning / default-session ways are onnxruntime's and left out)."""
    from optin_deploy.bench import benchmark
    from optin_deploy.runtimes.base import get_runtime
    from optin_deploy.runtimes.ort import OrtRuntime

    ort = runtime == "ort-cpu"

    def rt():
        return OrtRuntime("ort-cpu", threads=threads) if ort else get_runtime(runtime, threads=threads)

    out = {}
    for way, mode, spinning in () if not ort else (("round-robin", "interleaved", True), ("round-robin, spinning off", "interleaved", False),
                                ("one model at a time (same process)", "sequential", True)):
        res = benchmark({l: (OrtRuntime("ort-cpu", threads=threads, spinning=spinning), a) for l, a in arts.items()}, feed,
                        warmup=5, iters=iters, mode=mode, block=10, baseline="dense", progress=False)
        out[way] = {l: res["models"][l]["p50_ms"] for l in arts}
    reported = {l: [] for l in arts}
    alone = {l: [] for l in arts}
    kept = {l: [] for l in arts}  # standalone, onnxruntime's default session: denormals not flushed
    for r in range(args.standalone_repeats):
        res = benchmark({l: (rt(), a) for l, a in arts.items()}, feed,
                        warmup=5, iters=iters, mode="blocks", block=10, baseline="dense", progress=False, settle_seconds=args.settle_ms / 1e3)
        for l in arts:
            reported[l].append(res["models"][l]["p50_ms"])
        for store, flush in ((alone, True), (kept, False)) if ort else ((alone, True),):
            for l, a in (list(arts.items()) if r % 2 == 0 else list(arts.items())[::-1]):
                store[l].append(standalone(a, feed, threads, args.standalone_runs, 5, workdir, args.standalone_seconds, flush=flush, runtime=runtime))
    out["blocks of 10 (reported)"] = {l: float(np.median(v)) for l, v in reported.items()}
    out["standalone (one process per model)"] = {l: float(np.median(v)) for l, v in alone.items()}
    if ort:
        out[KEPT_WAY] = {l: float(np.median(v)) for l, v in kept.items()}
    out["standalone_repeats"] = alone
    out["standalone_kept_repeats"] = kept
    out["reported_repeats"] = reported
    out["reported_over_standalone"] = {l: float(np.median([x / y for x, y in zip(reported[l], alone[l])])) for l in arts}
    return out


AOTI_WAY = "PyTorch AOTInductor package (fp32)"
OV_WAYS = {"openvino-cpu": "OpenVINO, fused graph (fp32)", "openvino-cpu-bf16": "OpenVINO, fused graph (bf16 inference)"}
KEPT_WAY = "standalone, onnxruntime's default session (denormals kept)"
NOT_WAYS = ("standalone_repeats", "reported_repeats", "reported_over_standalone", "standalone_kept_repeats")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, default=Path("optin-build"))
    ap.add_argument("--shapes", default="1x128,8x128,8x64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=60, help="timed runs per model and way")
    ap.add_argument("--standalone-runs", type=int, default=40)
    ap.add_argument("--standalone-repeats", type=int, default=2)
    ap.add_argument("--standalone-seconds", type=float, default=2.0,
                    help="the standalone process warms up for at least this long, then times for at least this long")
    ap.add_argument("--settle-ms", type=float, default=None,
                    help="untimed runs before each block of the reported (blocks) timing, in ms (default: what bench and build use)")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--skip-ways", action="store_true", help="only the baselines table")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "deploy_latency")
    ap.add_argument("--omp-passive", action="store_true",
                    help="OMP_WAIT_POLICY=PASSIVE (set before torch is imported): PyTorch's idle OpenMP threads sleep instead of "
                         "spinning, so they do not steal the cores from the onnxruntime model timed next in the same process")
    args = ap.parse_args()
    if args.settle_ms is None:
        from optin_deploy.bench import DEFAULT_SETTLE_S

        args.settle_ms = DEFAULT_SETTLE_S * 1e3
    if args.omp_passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

    import torch

    torch.set_num_threads(args.threads)
    from optin_deploy.bench import benchmark
    from optin_deploy.exporters.export_folder import export_to_folder
    from optin_deploy.runtimes.base import read_manifest
    from optin_deploy.pruned_io import load_pruned
    from optin_deploy.runtimes.base import get_runtime
    from optin_deploy.runtimes.ort import OrtRuntime

    bundle = args.bundle.resolve()
    report = json.loads((bundle / "report.json").read_text())
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    dense_dir, pruned_dir = bundle / "onnx" / "dense", bundle / "onnx" / "pruned"
    result = {"bundle": str(bundle), "report_precision": report.get("precision"), "runtime": report.get("runtime") or "ort-cpu", "threads": args.threads, "shapes": {},
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
              "machine": f"{os.cpu_count()}-core {platform.machine()}", "load_average_at_start": os.getloadavg()[0], "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "settings": {"iters": args.iters, "standalone_runs": args.standalone_runs, "standalone_repeats": args.standalone_repeats,
                           "standalone_seconds": args.standalone_seconds, "settle_ms": args.settle_ms}}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the pruned model in the plain dynamo fp32 export (the bundle has the dense one among its baselines)
        pruned_model = load_pruned(bundle / "pruned")
        ex = feeds_for(bundle, 8, 128)
        import torch as _t

        example = {k: _t.from_numpy(v) for k, v in ex.items()}
        extra = tmp / "pruned-dynamo-fp32"
        export_to_folder(pruned_model, example, extra, precision="fp32", graph="dynamo", threads=args.threads)
        dm = read_manifest(dense_dir)
        pm = read_manifest(pruned_dir)
        # manifests record the paths where the bundle was assembled; the files sit in the bundle's folders
        dm["artifact"], pm["artifact"] = str(dense_dir / Path(dm["artifact"]).name), str(pruned_dir / Path(pm["artifact"]).name)
        int8 = report.get("precision") == "int8"
        arts = {  # (dense, pruned) per way of running
            "onnxruntime, dynamo export (fp32)": (bundle / "baselines" / "dense-dynamo-fp32" / "model.onnx", extra / "model.onnx"),
            "onnxruntime, fused graph (fp32)": ((bundle / "baselines" / "dense-fused-fp32" / "model.onnx") if int8 else dense_dir / "model.onnx",
                                                (pruned_dir / "model.fp32.onnx") if int8 else pruned_dir / "model.onnx"),
            "onnxruntime, fused graph + int8 (quantize_dynamic)": (Path(dm["artifact"]), Path(pm["artifact"])),
        }
        if report.get("precision") != "int8":  # the build quantised the deliverable for onnxruntime too when its runtime is OpenVINO
            p8 = bundle / "baselines" / "pruned-fused-int8" / "model.onnx"
            arts["onnxruntime, fused graph + int8 (quantize_dynamic)"] = (bundle / "baselines" / "dense-fused-int8" / "model.onnx", p8 if p8.exists() else None)
        arts = {k: v for k, v in arts.items() if v[0] is not None and v[0].exists() and (v[1] is None or v[1].exists())}
        dense_torch = None
        src = (read_manifest(dense_dir) or {}).get("source")
        if src:
            from optin_deploy.models import load_model

            dense_torch = load_model(src).eval()

        # the PyTorch artefact (AOTInductor package, fp32) when the bundle has one (optin-deploy export --format aoti)
        aoti = {l: bundle / "aoti" / l for l in ("dense", "pruned")}
        aoti = aoti if all((d / "export.json").exists() for d in aoti.values()) else None
        # OpenVINO on the fused fp32 graphs, when installed: fp32, and bf16 where the CPU has it (on AMX the fastest way)
        ov_ways = {}
        fused = arts.get("onnxruntime, fused graph (fp32)")
        if fused is not None:
            from optin_deploy.runtimes.openvino import bf16_supported

            try:
                get_runtime("openvino-cpu")
                ov_ways[OV_WAYS["openvino-cpu"]] = ("openvino-cpu", fused)
                if bf16_supported():
                    ov_ways[OV_WAYS["openvino-cpu-bf16"]] = ("openvino-cpu-bf16", fused)
            except Exception:  # noqa: BLE001 - OpenVINO not installed: onnxruntime and PyTorch ways only
                ov_ways = {}

        accuracy = {}
        if not args.no_accuracy:
            from optin_deploy.evaluate import evaluate
            from optin_deploy.zoo import load_task

            task = load_task(src, None, progress=False)
            rts = {}
            for way, (d, p) in arts.items():
                rts[f"{way} | dense"] = (OrtRuntime("ort-cpu", threads=args.threads), d)
                if p is not None:
                    rts[f"{way} | pruned"] = (OrtRuntime("ort-cpu", threads=args.threads), p)
            if aoti:
                for l, d in aoti.items():
                    rts[f"{AOTI_WAY} | {l}"] = (get_runtime("torch-aoti-cpu", threads=args.threads), d)
            for way, (name, (d, p)) in ov_ways.items():
                rts[f"{way} | dense"] = (get_runtime(name, threads=args.threads), d)
                rts[f"{way} | pruned"] = (get_runtime(name, threads=args.threads), p)
            ev = evaluate(task, rts, split="test", baseline=next(iter(rts)))
            metric = "accuracy" if "accuracy" in next(iter(ev["models"].values())) else "spearman"
            accuracy = {k: 100 * v[metric] for k, v in ev["models"].items()}
            result["accuracy_metric"] = metric
        result["accuracy"] = accuracy

        for B, T in shapes:
            feed = feeds_for(bundle, B, T)
            key = f"{B}x{T}"
            entry = {}
            if not args.skip_ways:
                entry["ways"] = time_ways({"dense": Path(dm["artifact"]), "pruned": Path(pm["artifact"])}, feed, args.threads, args.iters, args, tmp,
                                          runtime=result["runtime"])
            targets = {}
            for way, (d, p) in arts.items():
                targets[f"{way} | dense"] = (OrtRuntime("ort-cpu", threads=args.threads), d)
                if p is not None:
                    targets[f"{way} | pruned"] = (OrtRuntime("ort-cpu", threads=args.threads), p)
            if aoti:
                for l, d in aoti.items():
                    targets[f"{AOTI_WAY} | {l}"] = (get_runtime("torch-aoti-cpu", threads=args.threads), d)
            for way, (name, (d, p)) in ov_ways.items():
                targets[f"{way} | dense"] = (get_runtime(name, threads=args.threads), d)
                targets[f"{way} | pruned"] = (get_runtime(name, threads=args.threads), p)
            if dense_torch is not None:
                targets["PyTorch eager (inference_mode) | dense"] = (get_runtime("torch-cpu", threads=args.threads), dense_torch)
                targets["PyTorch eager (inference_mode) | pruned"] = (get_runtime("torch-cpu", threads=args.threads), pruned_model)
            res = benchmark(targets, feed, warmup=5, iters=args.iters, mode="blocks", block=10, baseline=next(iter(targets)), progress=False,
                            settle_seconds=args.settle_ms / 1e3)
            entry["baselines"] = {k: res["models"][k]["p50_ms"] for k in targets}
            result["shapes"][key] = entry
            print(f"{key}: done", flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(render(result, report))
    print(render(result, report))


def render(result: dict, report: dict) -> str:
    lines = [f"Bundle `{result['bundle']}` ({report.get('inference_precision') or report.get('precision')} deliverable, budget {report.get('budget')}), "
             f"true latencies through `{result.get('runtime', 'ort-cpu')}`, {result['threads']} threads, medians; "
             f"each block after {result.get('settings', {}).get('settle_ms', 0):g} ms of untimed runs; OpenMP wait policy {result.get('omp_wait_policy', 'default')}; "
             f"{result['machine']}"
             + (f", load average {result['load_average_at_start']:.1f} at the start" if "load_average_at_start" in result else "") + ".", ""]
    shapes = list(result["shapes"])
    if any("ways" in e for e in result["shapes"].values()):
        lines += ["**True latencies** (the bundle's dense / pruned artefacts, p50 ms):", "",
                  "| shape | " + " | ".join(w for w in next(e for e in result["shapes"].values() if "ways" in e)["ways"] if w not in NOT_WAYS)
                  + " | reported / standalone (dense, pruned; median of the paired repeats) |",
                  "|---|" + "---:|" * (1 + len([w for w in next(e for e in result["shapes"].values() if "ways" in e)["ways"] if w not in NOT_WAYS]))]
        for s in shapes:
            w = result["shapes"][s].get("ways")
            if not w:
                continue
            ways = [k for k in w if k not in NOT_WAYS]
            cells = [f"{w[k]['dense']:.1f} / {w[k]['pruned']:.1f}" for k in ways]
            rep, alone = w["blocks of 10 (reported)"], w["standalone (one process per model)"]
            ratio = w.get("reported_over_standalone") or {l: rep[l] / alone[l] for l in ("dense", "pruned")}
            lines.append(f"| {s} | " + " | ".join(cells) + f" | {ratio['dense']:.2f}, {ratio['pruned']:.2f} |")
        lines.append("")
        for s in shapes:
            w = result["shapes"][s].get("ways") or {}
            if KEPT_WAY in w:
                alone, kept = w["standalone (one process per model)"], w[KEPT_WAY]
                lines.append(f"- {s}: flushing denormals (the tool's session) against onnxruntime's default session, standalone: dense "
                             f"{kept['dense']:.1f} -> {alone['dense']:.1f} ms (x{kept['dense'] / alone['dense']:.2f}), pruned {kept['pruned']:.1f} -> "
                             f"{alone['pruned']:.1f} ms (x{kept['pruned'] / alone['pruned']:.2f}); the deliverable against the dense model in a "
                             f"default session: **x{kept['dense'] / alone['pruned']:.2f}**")
        lines.append("")
    acc = result.get("accuracy") or {}
    for s in shapes:
        b = result["shapes"][s]["baselines"]
        ways = []
        for k in b:
            w = k.split(" | ")[0]
            if w not in ways:
                ways.append(w)
        ref = b.get("onnxruntime, dynamo export (fp32) | dense")
        fastest = min((v, k) for k, v in b.items() if k.endswith("| dense"))
        lines += [f"**Against what users would otherwise ship** ({s}, interleaved blocks of 10, p50 ms; accuracy on the test split through each artefact):", "",
                  "| how the same weights run | dense | pruned | pruned vs its dense | pruned vs the dynamo fp32 dense export | pruned vs the fastest dense | test acc. dense / pruned (%) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for w in ways:
            d, p = b.get(f"{w} | dense"), b.get(f"{w} | pruned")
            a = f"{acc[w + ' | dense']:.2f} / {acc[w + ' | pruned']:.2f}" if f"{w} | pruned" in acc else ""
            lines.append(f"| {w} | {d:.1f} | " + (f"{p:.1f} | {d / p:.2f}x | {ref / p:.2f}x | {fastest[0] / p:.2f}x" if p else "| | | |") + f" | {a} |")
        lines += ["", f"Fastest dense alternative at {s}: {fastest[1].split(' | ')[0]} ({fastest[0]:.1f} ms).", ""]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--standalone":
        standalone_main(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7]) if len(sys.argv) > 7 else 0.0,
                        sys.argv[8] != "0" if len(sys.argv) > 8 else True, sys.argv[9] if len(sys.argv) > 9 else "ort-cpu")
    else:
        main()
