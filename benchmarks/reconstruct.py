"""Does refitting the kept units (``--reconstruct``, optin_deploy/core/reconstruct.py) help, and by how much?

For each task, calibration seed and budget: OPTIN scores on a calibration batch of training inputs
(the same scores as benchmarks/compare.py, cached in results/tmp/scores/), selection, surgery, then
PyTorch accuracy of the plain pruned model and of the same model after the least-squares refit (on
the same calibration batch), for each damping. Decisions are read off VALIDATION accuracy; test
accuracy is recorded for the README only. Two calibration seeds, because one draw moves the
pruned accuracy by about half a point on its own.

    python benchmarks/reconstruct.py                                   # three tasks, seeds 0 1
    python benchmarks/reconstruct.py --tasks minilm-sentiment --seeds 0

Writes results/reconstruct.json and results/reconstruct.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare  # noqa: E402  (task loading, calibration, cached scores, accuracy)
from optin_deploy.adapters import get_adapter  # noqa: E402
from optin_deploy.core.costs import mac_cost_model  # noqa: E402
from optin_deploy.core.reconstruct import reconstruct  # noqa: E402
from optin_deploy.core.selection import select  # noqa: E402
from optin_deploy.core.surgery import apply_plan  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tasks", default=",".join(compare.TASKS))
    p.add_argument("--budgets", default="0.5,0.6,0.7")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--damps", default="0.01,0.1,1.0")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--neuron-multiple", type=int, default=8, help="as the CPU profile does")
    p.add_argument("--out", default=str(ROOT / "results"))
    args = p.parse_args()
    torch.set_num_threads(2)
    from optin_deploy import zoo

    budgets = [float(b) for b in args.budgets.split(",")]
    damps = [float(d) for d in args.damps.split(",")]
    out = Path(args.out)
    rows = []
    for name in args.tasks.split(","):
        task = zoo.get_task(name)
        model = task.model.eval()
        adapter = get_adapter(model)
        val, test = task.data.require_labels("validation"), task.data.require_labels("test")
        dense = {"val": compare.accuracy(task, model, val), "test": compare.accuracy(task, model, test)}
        compare.log(f"{name}: dense val {dense['val']:.4f} test {dense['test']:.4f}")
        for seed in [int(s) for s in args.seeds.split(",")]:
            cargs = argparse.Namespace(calib_samples=args.calib_samples, seed=seed, optin_method="auto", force=False)
            calib, labels = compare.calibration(task, args.calib_samples, seed)
            costs = mac_cost_model(model, compare.seq_len_for(task, adapter, calib))
            sc = compare.scores_for(task, "optin", cargs, adapter, calib, labels)
            for b in budgets:
                sel = select(sc.heads, sc.neurons, costs, b * costs.dense(), neuron_multiple=args.neuron_multiple)
                plain = apply_plan(model, sel.plan)
                row = {"task": name, "seed": seed, "budget": b, "macs_ratio": sel.ratio, "dense": dense,
                       "plain": {"val": compare.accuracy(task, plain, val), "test": compare.accuracy(task, plain, test)}, "refit": {}}
                for d in damps:
                    student = apply_plan(model, sel.plan)
                    t0 = time.perf_counter()
                    rep = reconstruct(model, student, calib, damp=d)
                    secs = time.perf_counter() - t0
                    row["refit"][str(d)] = {"val": compare.accuracy(task, student, val), "test": compare.accuracy(task, student, test),
                                            "seconds": secs, "mean_error_ratio": statistics.mean(
                                                r["error_after"] / max(r["error_before"], 1e-30) for r in rep.layers) if rep.layers else 1.0}
                rows.append(row)
                compare.log(f"{name} seed {seed} budget {b}: plain val {row['plain']['val']:.4f} | " + " | ".join(
                    f"damp {d}: val {v['val']:.4f} ({v['seconds']:.1f}s)" for d, v in row["refit"].items()))
                compare.write_json(out / "reconstruct.json", {"calib_samples": args.calib_samples, "rows": rows})
    (out / "reconstruct.md").write_text(markdown(rows, damps))
    print(markdown(rows, damps))


def markdown(rows: list[dict], damps: list[float]) -> str:
    lines = ["# Refitting kept units after surgery (`--reconstruct`)", "",
             "Accuracy (%) of the OPTIN-pruned model, plain surgery vs least-squares refit at each damping, "
             "validation / test. Mean gain is over calibration seeds and budgets, on validation.", "",
             "| task | seed | budget | plain | " + " | ".join(f"refit damp {d}" for d in damps) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(damps)]
    for r in rows:
        cells = [f"{100 * r['refit'][str(d)]['val']:.2f} / {100 * r['refit'][str(d)]['test']:.2f}" for d in damps]
        lines.append(f"| {r['task']} | {r['seed']} | {r['budget']} | {100 * r['plain']['val']:.2f} / {100 * r['plain']['test']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "| task | " + " | ".join(f"mean val gain, damp {d}" for d in damps) + " |", "|---|" + "---:|" * len(damps)]
    for t in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == t]
        lines.append(f"| {t} | " + " | ".join(
            f"{100 * statistics.mean(r['refit'][str(d)]['val'] - r['plain']['val'] for r in rs):+.2f}" for d in damps) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
