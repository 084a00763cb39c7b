"""Dense vs pruned MiniLM in onnxruntime (CPU, 2 threads), batch 8 x 128 tokens, interleaved.

Both models are exported to ONNX (parity-checked), then timed alternately so machine noise hits
both equally. Reports the p50 latencies, the measured speed-up, the MAC ratio of the pruned
encoder, the ideal speed-up (1 / MAC ratio) and the share of it achieved. Writes JSON to results/.

Usage::

    # two folders you already have (the pruned one written by optin-deploy prune / save_pruned)
    python benchmarks/onnx_speed.py --dense DENSE_DIR --pruned PRUNED_DIR
    # or let this script cut the dense model to --target (default 0.6) of its encoder MACs:
    #   --prune random : a random non-uniform structure at the MAC target (speed only, not accuracy)
    #   --prune optin  : the project's OPTIN pruning (optin_deploy.pruning.prune; slow: scoring)
    python benchmarks/onnx_speed.py --dense minilm-sentiment --prune random

``--dense`` takes a model folder, a zoo name or anything ``optin_deploy.models.load_model`` takes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_dense(spec: str) -> tuple[torch.nn.Module, str]:
    from optin_deploy import zoo
    from optin_deploy.models import load_model

    if spec in zoo.ZOO:
        folder = zoo.prepare(spec)
        return load_model(folder), str(folder)
    return load_model(spec), spec


def random_plan_at(model: torch.nn.Module, target: float, seq_len: int, seed: int = 0):
    """A random non-uniform plan whose encoder MACs are ~``target`` of the dense model's."""
    from optin_deploy.core.costs import mac_cost_model
    from optin_deploy.core.surgery import random_plan

    costs = mac_cost_model(model, seq_len)
    best = None
    for s in range(seed, seed + 200):  # random_plan centres each layer around `keep`; rescale keep until on target
        keep = target
        for _ in range(8):
            plan = random_plan(model, seed=s, keep=keep)
            h, n = plan.counts()
            ratio = costs.total(h, n) / costs.dense()
            keep *= target / max(ratio, 1e-6)
            keep = min(keep, 0.99)
        if best is None or abs(ratio - target) < abs(best[1] - target):
            best = (plan, ratio)
        if abs(ratio - target) < 0.01:
            break
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense", default="minilm-sentiment")
    ap.add_argument("--pruned", help="a pruned-model folder; without it the script prunes (see --prune)")
    ap.add_argument("--prune", choices=["random", "optin"], default="random")
    ap.add_argument("--target", type=float, default=0.6, help="encoder MAC ratio to prune to (default 0.6)")
    ap.add_argument("--calib", type=int, default=32, help="--prune optin: calibration samples")
    ap.add_argument("--scoring", default="auto", help="--prune optin: auto, exact or fast")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--optimize", action="store_true", help="benchmark the onnxruntime-optimised graphs when kept")
    ap.add_argument("--out", default=str(ROOT / "results"))
    args = ap.parse_args(argv)

    from optin_deploy.bench import benchmark, print_bench_table
    from optin_deploy.core.costs import mac_cost_model
    from optin_deploy.exporters import ShapeProfile, export_to_folder
    from optin_deploy.models import example_inputs_for_model
    from optin_deploy.runtimes import get_runtime

    torch.set_num_threads(args.threads)
    dense, dense_src = load_dense(args.dense)
    how = {"pruned_from": args.pruned}
    if args.pruned:
        from optin_deploy.models import load_model

        pruned = load_model(args.pruned)
    elif args.prune == "random":
        from optin_deploy.core.surgery import apply_plan

        plan, _ = random_plan_at(dense, args.target, args.seq_len)
        pruned = apply_plan(dense, plan)
        how = {"pruned_from": "random non-uniform plan (speed only)", "plan": plan.to_dict()}
    else:
        from optin_deploy.pruning import prune

        # calibration: the dense model's own example batch at the benchmark shape (or the task's data when a zoo name)
        calib = example_inputs_for_model(dense, args.calib, args.seq_len, model_dir=dense_src if Path(dense_src).is_dir() else None, seed=1)
        result = prune(dense, calib, flops=args.target, scoring=args.scoring)
        pruned = result.model
        how = {"pruned_from": "OPTIN (optin_deploy.pruning.prune)", "prune_summary": result.summary()}

    from optin_deploy.adapters import get_adapter

    costs = mac_cost_model(dense, args.seq_len)
    pa = get_adapter(pruned)
    mac_ratio = costs.total(pa.heads_per_layer(), pa.neurons_per_layer()) / costs.dense()
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in (("dense", dense), ("pruned", pruned))}

    profile = ShapeProfile(min_batch=1, opt_batch=args.batch, max_batch=max(64, args.batch), min_seq=1,
                           opt_seq=args.seq_len, max_seq=max(args.seq_len, 128))
    example = example_inputs_for_model(dense, args.batch, args.seq_len, model_dir=dense_src if Path(dense_src).is_dir() else None)
    work = Path(tempfile.mkdtemp(prefix="onnx_speed.", dir=os.environ.get("TMPDIR")))
    t0 = time.perf_counter()
    bundles = {}
    for label, model in (("dense", dense), ("pruned", pruned)):
        bundles[label] = export_to_folder(model, example, work / label, profile=profile, optimize=args.optimize, source=dense_src)
        print(f"exported {label}: parity max|diff| {bundles[label]['parity']['model.onnx']['max_abs_diff']:.2e}", flush=True)
    export_s = time.perf_counter() - t0

    # every position attended: the timed shape is exactly batch x seq_len
    inputs = {"input_ids": example["input_ids"].numpy(), "attention_mask": torch.ones_like(example["attention_mask"]).numpy()}
    targets = {l: (get_runtime("ort-cpu", threads=args.threads), b["artifact"]) for l, b in bundles.items()}
    res = benchmark(targets, inputs, warmup=args.warmup, iters=args.iters, interleave=True, baseline="dense")
    print_bench_table(res)
    speedup = res["speedup"]["pruned"]
    ideal = 1 / mac_ratio
    summary = {
        "what": "dense vs pruned, onnxruntime CPU, interleaved",
        "dense": dense_src,
        **how,
        "encoder_mac_ratio": mac_ratio,
        "params": params,
        "threads": args.threads,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "dense_p50_ms": res["models"]["dense"]["p50_ms"],
        "pruned_p50_ms": res["models"]["pruned"]["p50_ms"],
        "speedup_p50": speedup,
        "ideal_speedup": ideal,
        "share_of_ideal": (speedup - 1) / (ideal - 1) if ideal > 1 else None,
        "export_seconds": export_s,
        "parity": {l: b["parity"]["model.onnx"]["max_abs_diff"] for l, b in bundles.items()},
        "benchmark": res,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"encoder MACs {mac_ratio:.1%} of dense; speed-up {speedup:.2f}x (ideal {ideal:.2f}x, "
          f"{summary['share_of_ideal']:.0%} of the ideal gain)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"onnx_speed_{time.strftime('%Y%m%d-%H%M%S')}.json"
    f.write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
