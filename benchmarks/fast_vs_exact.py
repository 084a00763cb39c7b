"""Fast scoring against exact OPTIN: rank correlation over ALL units and accuracy at equal budgets.

    python benchmarks/fast_vs_exact.py --calib-samples 32      # exact in full takes ~30-60 min on 2 cores

Exact scores of all 9,288 MiniLM units on 128 x 64 calibration tokens take hours on 2 CPU cores,
so this comparison uses a smaller calibration batch (``--calib-samples``, default 32, same 64-token
cap) for BOTH methods: it measures how well the fast estimator reproduces the exact scores and the
exact selection at equal settings. (``benchmarks/scoring_speed.py`` measures the speed at 128 x 64
and the rank correlation on a sample of units there.) Accuracy is measured in PyTorch on the test
split, with the validation split alongside; nothing is tuned here.

Writes ``results/fast_vs_exact.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optin_deploy.adapters import get_adapter  # noqa: E402
from optin_deploy.core.score_cache import score_model  # noqa: E402
from optin_deploy.core.costs import mac_cost_model  # noqa: E402
from optin_deploy.core.scoring import ScoreSettings, spearman  # noqa: E402
from optin_deploy.core.selection import select  # noqa: E402
from optin_deploy.core.surgery import apply_plan  # noqa: E402
from optin_deploy.progress import progress_bar  # noqa: E402


def accuracy(task, model, split: str) -> float:
    from optin_deploy.zoo import predict

    orig, task.model = task.model, model
    try:
        with torch.no_grad():
            pred = predict(task, split)
    finally:
        task.model = orig
    return 100.0 * float(pred.eq(getattr(task.data, split).labels).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="minilm-sentiment")
    ap.add_argument("--calib-samples", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--probes", type=int, default=64)
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    ap.add_argument("--seq-len", type=int, default=128, help="sequence length of the MAC cost model")
    ap.add_argument("--out", default="results/fast_vs_exact.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from optin_deploy.zoo import get_task

    task = get_task(args.task)
    eval_len, task.max_length = task.max_length, args.max_length
    calib = task.calibration(args.calib_samples, seed=0)
    task.max_length = eval_len
    settings = ScoreSettings(seed=0)
    with progress_bar("fast scoring") as up:
        fast = score_model(task.model, calib, "fast", settings, probes=args.probes, progress=up)
    with progress_bar("exact scoring") as up:
        exact = score_model(task.model, calib, "exact", settings, progress=up)
    fh, fn = fast.combined(settings.lam)
    eh, en = exact.combined(settings.lam)
    rho_all = spearman(torch.cat(eh + en), torch.cat(fh + fn))
    rho_neurons = spearman(torch.cat(en), torch.cat(fn))
    rho_heads = spearman(torch.cat(eh), torch.cat(fh))
    costs = mac_cost_model(task.model, args.seq_len)
    dense = {s: accuracy(task, task.model, s) for s in ("validation", "test")}
    rows = []
    for b in args.budgets:
        row = {"budget": b}
        plans = {}
        for name, (hs, ns) in (("exact", (eh, en)), ("fast", (fh, fn))):
            sel = select(hs, ns, costs, b * costs.dense())
            plans[name] = sel.plan
            pruned = apply_plan(task.model, sel.plan)
            row[name] = {s: accuracy(task, pruned, s) for s in ("validation", "test")}
            row[name]["heads"] = sum(get_adapter(pruned).heads_per_layer())
            row[name]["neurons"] = sum(get_adapter(pruned).neurons_per_layer())
        kept = lambda p: {(l, j) for l, js in enumerate(p.neurons) for j in js}  # noqa: E731
        ke, kf = kept(plans["exact"]), kept(plans["fast"])
        row["neuron_set_agreement"] = len(ke & kf) / max(len(ke | kf), 1)
        row["test_diff_fast_minus_exact"] = row["fast"]["test"] - row["exact"]["test"]
        rows.append(row)
        print(f"budget {b:.1f}: exact test {row['exact']['test']:.2f} / fast test {row['fast']['test']:.2f} "
              f"(diff {row['test_diff_fast_minus_exact']:+.2f}); kept-neuron Jaccard {row['neuron_set_agreement']:.3f}", flush=True)
    out = {
        "task": args.task, "calibration": list(calib["input_ids"].shape), "probes": args.probes,
        "exact_seconds": exact.seconds, "fast_seconds": fast.seconds, "exact_cached": exact.info.get("cached"), "fast_cached": fast.info.get("cached"),
        "spearman": {"all_units": rho_all, "neurons": rho_neurons, "heads": rho_heads},
        "dense_accuracy": dense, "rows": rows,
    }
    print(f"Spearman fast vs exact: all {rho_all:.3f}, neurons {rho_neurons:.3f}, heads {rho_heads:.3f}; "
          f"exact {exact.seconds:.0f} s vs fast {fast.seconds:.0f} s")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
