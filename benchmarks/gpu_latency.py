"""GPU latency and accuracy of a bundle built with a GPU profile (``nvidia-gpu-aoti-fp16``), against what users
would otherwise run on the same GPU.

Given a bundle written by ``optin-deploy build --profile nvidia-gpu-aoti-fp16`` (dense and pruned AOTInductor
packages compiled for this GPU in fp16, ``B/aoti/{dense,pruned}``), this script times, at each shape
(``--shapes``, default 1x128, 8x128, 64x128, 256x128), dense and pruned each way, all in one run of interleaved
blocks per shape (``bench``'s timing: ``--block`` consecutive runs per model, medians over ``--iters`` blocks):

* the bundle's AOTInductor packages (fp16): the deliverable and the dense model built the same way;
* PyTorch eager on the GPU in fp32, fp16 and bf16 (the weights and activations cast; ``inference_mode``);
* ``torch.compile`` (inductor, dynamic shapes) in fp16;

Every way gets the batch as host (numpy) arrays and returns the logits to the host, as a server does; the copies
are inside the timings. Test accuracy is measured through each way except torch.compile (the same fp16
arithmetic as eager up to kernel choice; ``--no-accuracy`` skips all). The speed-ups are stated against the
dense model run the same way, and against the fastest dense way measured at that shape.

Writes ``results/gpu_latency.json`` and ``.md``.

Usage (on a CUDA host)::

    optin-deploy build --profile nvidia-gpu-aoti-fp16 --out gpu-build
    python benchmarks/gpu_latency.py --bundle gpu-build
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DELIVERABLE = "AOTInductor package, fp16 (the bundle's)"
EAGER = {"fp32": "PyTorch eager, fp32", "fp16": "PyTorch eager, fp16", "bf16": "PyTorch eager, bf16"}
COMPILED = "torch.compile (inductor, dynamic), fp16"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="a build folder with aoti/dense and aoti/pruned compiled for CUDA")
    ap.add_argument("--dense", help="without --bundle: the dense model (folder, zoo name); the PyTorch ways only")
    ap.add_argument("--pruned", type=Path, help="without --bundle: the pruned model folder (optin-deploy prune --out)")
    ap.add_argument("--shapes", default="1x128,8x128,64x128,256x128", help="BxT, comma-separated")
    ap.add_argument("--iters", type=int, default=40, help="timed blocks per model and shape")
    ap.add_argument("--block", type=int, default=10, help="consecutive timed runs per block")
    ap.add_argument("--no-compile", action="store_true", help="leave torch.compile out (it compiles for a minute or two)")
    ap.add_argument("--no-accuracy", action="store_true")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_latency")
    args = ap.parse_args()

    import torch

    sys.path.insert(0, str(ROOT))
    from optin_deploy.bench import bench_inputs, benchmark
    from optin_deploy.pruned_io import load_pruned
    from optin_deploy.runtimes.base import get_runtime, read_manifest

    if not torch.cuda.is_available():
        sys.exit("gpu_latency.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    bundle = args.bundle
    aoti, precision, report = {}, "fp16", {}
    from optin_deploy.models import load_model

    if bundle is not None:
        aoti = {l: bundle / "aoti" / l for l in ("dense", "pruned")}
        for l, d in aoti.items():
            m = read_manifest(d)
            if m is None or m.get("runtime") != "torch-aoti-cuda":
                sys.exit(f"{d} is not an AOTInductor package for CUDA; build with --profile nvidia-gpu-aoti-fp16")
        dm = read_manifest(aoti["dense"])
        precision = dm["precision"]
        report = json.loads((bundle / "report.json").read_text()) if (bundle / "report.json").exists() else {}
        src, pruned_dir = dm.get("source"), bundle / "pruned"
    elif args.dense and args.pruned:
        from optin_deploy.zoo import load_task

        src, pruned_dir = (load_task(args.dense, None, progress=False).model_source or args.dense), args.pruned
    else:
        sys.exit("pass --bundle, or --dense and --pruned")
    dense = load_model(src).eval()
    pruned = load_pruned(pruned_dir).eval()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]

    def targets(with_compile: bool) -> dict:
        t = {f"{DELIVERABLE.replace('fp16', precision)} | {l}": (get_runtime("torch-aoti-cuda"), d) for l, d in aoti.items()}
        if not aoti:  # the dense model as the first (the baseline) way
            t = {}
        for prec, way in EAGER.items():
            for l, m in (("dense", dense), ("pruned", pruned)):
                t[f"{way} | {l}"] = (get_runtime("torch-cuda", precision=prec), copy.deepcopy(m))
        if with_compile:
            for l, m in (("dense", dense), ("pruned", pruned)):
                t[f"{COMPILED} | {l}"] = (get_runtime("torch-cuda", precision="fp16", compile=True), copy.deepcopy(m))
        return t

    result = {"bundle": str(bundle) if bundle else None, "dense": str(src), "pruned": str(pruned_dir), "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version(),
              "precision": precision, "budget": report.get("budget"), "iters": args.iters, "block": args.block, "shapes": {}}
    loaded = {}  # loaded once, evaluated and timed at every shape (torch.compile compiles once, dynamic)
    for k, (rt, art) in targets(not args.no_compile).items():
        loaded[k] = rt.load(art)
    if not args.no_accuracy:
        from optin_deploy.evaluate import evaluate
        from optin_deploy.zoo import load_task

        task = load_task(src, None, progress=False)
        ev = evaluate(task, {k: (rt, None) for k, rt in loaded.items() if not k.startswith(COMPILED)}, split="test", progress=False)
        metric = "accuracy" if "accuracy" in next(iter(ev["models"].values())) else "spearman"
        result["accuracy_metric"] = metric
        result["accuracy"] = {k: round(100 * v[metric], 2) for k, v in ev["models"].items()}
        print(json.dumps(result["accuracy"], indent=1), flush=True)
    for B, T in shapes:
        feed = bench_inputs(aoti["dense"] if aoti else src, B, T)
        base = next(iter(loaded))
        t = {k: (rt, None) for k, rt in loaded.items()}
        res = benchmark(t, feed, warmup=5, iters=args.iters, mode="blocks", block=args.block, baseline=base, progress=False, settle_seconds=0.0)
        p50 = {k: res["models"][k]["p50_ms"] for k in t}
        ways = sorted({k.split(" | ")[0] for k in t})
        fastest_dense = min((k for k in t if k.endswith("| dense")), key=p50.get)
        deliverable = f"{DELIVERABLE.replace('fp16', precision)} | pruned" if aoti else min((k for k in t if k.endswith("| pruned")), key=p50.get)
        result["shapes"][f"{B}x{T}"] = {
            "p50_ms": p50,
            "pruned_vs_dense_same_way": {w: round(p50[f"{w} | dense"] / p50[f"{w} | pruned"], 3) for w in ways},
            "fastest_dense": fastest_dense,
            "deliverable": deliverable,
            "deliverable_vs_fastest_dense": round(p50[fastest_dense] / p50[deliverable], 3),
        }
        print(f"{B}x{T}: " + json.dumps(result["shapes"][f"{B}x{T}"]), flush=True)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))


def render(result: dict) -> str:
    lines = [f"{result['gpu']}, torch {result['torch']}; dense `{result['dense']}`, pruned `{result['pruned']}` (bundle {result['bundle']}, budget {result.get('budget')}); "
             f"p50 ms over {result['iters']} blocks of {result['block']} runs, dense and pruned interleaved", ""]
    acc = result.get("accuracy", {})
    for key, e in result["shapes"].items():
        lines += [f"**{key}** (fastest dense: {e['fastest_dense']}; {e['deliverable']} against it: **{e['deliverable_vs_fastest_dense']:.2f}x**)", "",
                  "| way | dense ms | pruned ms | pruned vs its dense | test acc dense / pruned |", "|---|---:|---:|---:|---:|"]
        for w, r in e["pruned_vs_dense_same_way"].items():
            a = (f"{acc[w + ' | dense']:.2f} / {acc[w + ' | pruned']:.2f}" if w + " | dense" in acc else "-")
            lines.append(f"| {w} | {e['p50_ms'][w + ' | dense']:.3f} | {e['p50_ms'][w + ' | pruned']:.3f} | {r:.2f}x | {a} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
