"""Does refitting the kept units (``--reconstruct``, optin_deploy/core/reconstruct.py) help, and by how much?

For each task, calibration seed and budget: OPTIN scores on a calibration batch of training inputs
(the same scores as benchmarks/compare.py, cached in results/tmp/scores/), selection, surgery, then
PyTorch accuracy of the plain pruned model and of the same model after each least-squares refit
(on the same calibration batch), plus how often its predictions agree with the dense model's.
Measured on the validation split and on up to 4,000 held-out *training* samples (outside the
calibration draw; the model saw them in fine-tuning, so their accuracy is high, but the change
caused by pruning is measured on 3x more samples than validation has). Decisions are read off these
two; test accuracy is recorded for the README only. Two calibration seeds, because one draw moves
the pruned accuracy by about half a point on its own.

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
    p.add_argument("--fits", default="scales:0.1,weights:0.1,weights:1.0",
                   help="FIT:DAMP pairs; FIT:DAMP@N refits on N calibration samples (the calibration draw's first N) instead of the scoring batch")
    p.add_argument("--heldout", type=int, default=4000, help="held-out training samples (outside the largest calibration draw)")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--neuron-multiple", type=int, default=8, help="as the CPU profile does")
    p.add_argument("--out", default=str(ROOT / "results"))
    args = p.parse_args()
    torch.set_num_threads(2)
    from optin_deploy import zoo

    budgets = [float(b) for b in args.budgets.split(",")]
    damps = args.fits.split(",")
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
            perm = torch.randperm(len(task.data.train), generator=torch.Generator().manual_seed(seed))  # the calibration draw's order
            first = max([args.calib_samples] + [int(f.partition("@")[2]) for f in damps if "@" in f])  # outside every refit batch
            held = compare.take(task.data.train, perm[first:first + args.heldout].sort().values)
            dense_pred = {k: compare.predict(task, model, sp) for k, sp in (("val", val), ("held", held))}
            refit_batches: dict[int, dict] = {}
            for b in budgets:
                sel = select(sc.heads, sc.neurons, costs, b * costs.dense(), neuron_multiple=args.neuron_multiple)
                plain = apply_plan(model, sel.plan)
                row = {"task": name, "seed": seed, "budget": b, "macs_ratio": sel.ratio, "dense": dense, "n_heldout": len(held),
                       "plain": measure(task, plain, val, test, held, dense_pred), "refit": {}}
                for fd in damps:
                    fit, d = fd.split(":")
                    d, _, n_fit = d.partition("@")  # FIT:DAMP@N: the refit on N calibration samples (the same draw's first N)
                    fit_batch = refit_batches.setdefault(int(n_fit), compare.calibration(task, int(n_fit), seed)[0]) if n_fit else calib
                    student = apply_plan(model, sel.plan)
                    t0 = time.perf_counter()
                    rep = reconstruct(model, student, fit_batch, fit=fit, damp=float(d))
                    secs = time.perf_counter() - t0
                    row["refit"][fd] = {**measure(task, student, val, test, held, dense_pred), "seconds": secs, "mean_error_ratio": statistics.mean(
                        r["error_after"] / max(r["error_before"], 1e-30) for r in rep.layers) if rep.layers else 1.0}
                rows.append(row)
                compare.log(f"{name} seed {seed} budget {b}: plain val {row['plain']['val']:.4f} held {row['plain']['held']:.4f} | " + " | ".join(
                    f"{fd}: val {v['val']:.4f} held {v['held']:.4f} agree {v['held_agree']:.4f} ({v['seconds']:.1f}s)" for fd, v in row["refit"].items()))
                compare.write_json(out / "reconstruct.json", {"calib_samples": args.calib_samples, "rows": rows})
    (out / "reconstruct.md").write_text(markdown(rows, damps))
    print(markdown(rows, damps))


def measure(task, model, val, test, held, dense_pred) -> dict:
    out = {"test": compare.accuracy(task, model, test)}
    for key, split in (("val", val), ("held", held)):
        p = compare.predict(task, model, split)
        out[key] = float((p == split.labels.long()).float().mean())
        out[f"{key}_agree"] = float((p == dense_pred[key]).float().mean())
    return out


def markdown(rows: list[dict], fits: list[str]) -> str:
    cols = ["plain"] + fits
    lines = ["# Refitting kept units after surgery (`--reconstruct`)", "",
             "OPTIN-pruned model, plain surgery vs least-squares refits (`FIT:DAMP`). Per cell: accuracy (%) on "
             "validation / held-out training samples / test, then agreement (%) with the dense model on the held-out "
             "training samples. Settings are chosen on validation and held-out training data; test is reported only.", "",
             "| task | seed | budget | " + " | ".join(cols) + " |", "|---|---:|---:|" + "---:|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r["plain"] if c == "plain" else r["refit"][c]
            cells.append(f"{100 * v['val']:.2f} / {100 * v['held']:.2f} / {100 * v['test']:.2f}, agree {100 * v['held_agree']:.1f}")
        lines.append(f"| {r['task']} | {r['seed']} | {r['budget']} | " + " | ".join(cells) + " |")
    lines += ["", "Mean change against plain surgery over seeds and budgets (points): validation accuracy / held-out accuracy / "
              "held-out agreement with dense / test accuracy.", "", "| task | " + " | ".join(fits) + " |", "|---|" + "---:|" * len(fits)]
    for t in dict.fromkeys(r["task"] for r in rows):
        rs = [r for r in rows if r["task"] == t]
        cells = []
        for f in fits:
            d = {k: 100 * statistics.mean(r["refit"][f][k] - r["plain"][k] for r in rs) for k in ("val", "held", "held_agree", "test")}
            cells.append(f"{d['val']:+.2f} / {d['held']:+.2f} / {d['held_agree']:+.2f} / {d['test']:+.2f}")
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
