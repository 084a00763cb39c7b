"""How to combine head and neuron scores: the spec's raw sum vs per-kind normalisation vs lambda.

Selection settings are chosen on the VALIDATION split only (never on test). Uses the cached scores
of the default build (``--scoring fast``; run ``optin-deploy build`` first or this scores anew).

    python benchmarks/selection_variants.py [--budgets 0.5 0.6 0.7] [--scoring fast]

Writes ``results/selection_variants.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from optin_deploy.adapters import get_adapter  # noqa: E402
from optin_deploy.core.score_cache import score_model  # noqa: E402
from optin_deploy.core.costs import mac_cost_model  # noqa: E402
from optin_deploy.core.scoring import ScoreSettings, _combine  # noqa: E402
from optin_deploy.core.selection import select  # noqa: E402
from optin_deploy.core.surgery import apply_plan  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fast_vs_exact import accuracy  # noqa: E402  (PyTorch accuracy of a model on a task split)


def normalise(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    total = torch.cat(scores).sum()
    return [s / total for s in scores]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="minilm-sentiment")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    ap.add_argument("--scoring", default="fast")
    ap.add_argument("--split", default="validation")
    ap.add_argument("--seq-len", type=int, default=128, help="sequence length of the MAC cost model (the deployment shape)")
    ap.add_argument("--out", default="results/selection_variants.json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    from optin_deploy.zoo import load_task

    task = load_task(args.task, max_length=64)
    eval_len = task.max_length
    task.max_length = 64
    calib = task.calibration(128, seed=0)
    task.max_length = eval_len
    raw = score_model(task.model, calib, args.scoring, ScoreSettings(seed=0), probes=64)
    print("scores cached:", raw.info.get("cached"))
    costs = mac_cost_model(task.model, args.seq_len)
    variants = {
        "raw (spec, lambda=10)": raw.combined(10.0),
        "raw, lambda=1": raw.combined(1.0),
        "per-kind normalised": tuple(normalise(x) for x in raw.combined(10.0)),
        "KL only": (raw.head_kl, raw.neuron_kl),
    }
    dense_acc = accuracy(task, task.model, args.split)
    rows = []
    print(f"dense {args.split} accuracy {dense_acc:.2f}")
    for b in args.budgets:
        for name, (hs, ns) in variants.items():
            sel = select(hs, ns, costs, b * costs.dense(), neuron_multiple=8)
            pruned = apply_plan(task.model, sel.plan)
            acc = accuracy(task, pruned, args.split)
            a = get_adapter(pruned)
            rows.append({"budget": b, "variant": name, "accuracy": acc, "drop": dense_acc - acc, "heads": sum(a.heads_per_layer()),
                         "neurons": sum(a.neurons_per_layer()), "heads_per_layer": a.heads_per_layer(), "neurons_per_layer": a.neurons_per_layer()})
            print(f"budget {b:.2f} {name:26s} {args.split} acc {acc:.2f} (drop {dense_acc - acc:+.2f}) heads {rows[-1]['heads']} neurons {rows[-1]['neurons']}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"task": args.task, "split": args.split, "scoring": args.scoring, "dense_accuracy": dense_acc, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
