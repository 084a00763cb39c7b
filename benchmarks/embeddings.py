"""Pruned sentence embeddings: OPTIN against weight magnitude and random, on ``minilm-embeddings``.

all-MiniLM-L6-v2 as shipped (mean pooling, normalised). For each scorer: score once on a calibration
batch of *training* texts (rotten-tomatoes + bbc-news), then for each MAC budget select (with the
CPU profile's multiples, as ``build`` does), slice, refit the kept units (the build default; off
with ``--no-reconstruct``), export to ONNX and, through onnxruntime on the CPU:

* embed held-out texts (``--eval-texts``, default a seeded 1,000 of the 1,490 test texts) with the
  dense and the pruned graphs: cosine between the two embeddings of each text (mean, 5th percentile)
  and recall@10 agreement (each text a query against all the others);
* time dense and pruned interleaved at batch 8 x 128 tokens (medians), the speed-up being the ratio.

Results are cached per (scorer, budget) in ``results/embeddings.json``; a rerun only computes what is
missing (``--force`` redoes it). Writes ``results/embeddings.md`` and ``results/embeddings.png``.

    python benchmarks/embeddings.py                       # everything
    python benchmarks/embeddings.py --report-only         # table and plot from the cached JSON
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from compare import OrtPair, write_json  # noqa: E402

from optin_deploy.core.scoring import ScoreSettings  # noqa: E402
from optin_deploy.embedding_eval import compare_embeddings, embed  # noqa: E402

OUT = ROOT / "results"
BUDGETS = [0.5, 0.6, 0.7, 0.8, 0.9]
SCORERS = ["optin", "magnitude", "random"]
FORMAT = 1


def log(msg: str) -> None:
    print(f"[embeddings] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def settings_of(args) -> dict:
    return {"format": FORMAT, "calib_samples": args.calib_samples, "calib_length": args.calib_length, "probes": args.probes,
            "reconstruct": not args.no_reconstruct, "profile": args.profile, "batch": args.batch, "repeats": args.repeats,
            "max_length": 128, "seed": args.seed, "eval_texts": args.eval_texts}


def run(args) -> dict:
    from optin_deploy.profiles import load_profile, selection_kwargs
    from optin_deploy.pruning import compute_scores, prune
    from optin_deploy.zoo import get_task

    path = OUT / f"embeddings_{'-'.join(args.scorers)}.json"  # one file per process: scorers may run side by side
    import json

    res = json.loads(path.read_text()) if path.exists() and not args.force else {}
    if res.get("settings") != settings_of(args):
        res = {"settings": settings_of(args), "runs": {}}
    torch.set_num_threads(args.threads)
    task = get_task("minilm-embeddings")
    model = task.model.eval()
    eval_len = task.max_length
    task.max_length = args.calib_length
    calib = task.calibration(args.calib_samples, seed=args.seed)
    task.max_length = eval_len
    texts = list(task.data.test.inputs)
    if args.eval_texts and args.eval_texts < len(texts):  # a seeded subset keeps the run affordable on a shared machine
        keep = np.random.default_rng(args.seed).choice(len(texts), args.eval_texts, replace=False)
        texts = [texts[i] for i in sorted(keep)]
    sel_kw = selection_kwargs(load_profile(args.profile))
    res["task"] = {"model": "minilm-embeddings", "pooling": model.pooling.to_dict(), "calibration": f"{args.calib_samples} training texts x {args.calib_length} tokens",
                   "held_out_texts": len(texts), "data": task.data.name, "selection": sel_kw}
    with tempfile.TemporaryDirectory(prefix="emb-bench-") as work:
        pair = OrtPair(task, model, Path(work), args.batch, args.repeats, args.threads)
        cached = OUT / "tmp" / "embeddings_dense.npz"  # the dense embeddings, reused across runs with the same texts
        key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
        if cached.exists() and str(np.load(cached)["key"]) == key:
            dense_emb = np.load(cached)["emb"]
        else:
            log(f"embedding {len(texts)} held-out texts with the dense ONNX model")
            dense_emb = embed(task, pair.dense, texts)
            cached.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cached, emb=dense_emb, key=np.array(key))
        for scorer in args.scorers:
            todo = [b for b in args.budgets if f"{scorer}@{b}" not in res["runs"]]
            if not todo:
                continue
            log(f"scoring with {scorer}")
            scores = compute_scores(model, calib, scoring="fast", scorer=scorer, settings=ScoreSettings(seed=args.seed), probes=args.probes)
            for b in todo:
                t0 = time.perf_counter()
                r = prune(model, calib, flops=b, scores=scores, reconstruct=not args.no_reconstruct, **sel_kw)
                rt = pair._load(r.model, "pruned.onnx")
                m = compare_embeddings(embed(task, rt, texts), dense_emb, k=10)
                td, tp = [], []
                for _ in range(args.repeats):
                    for rt_, ts in ((pair.dense, td), (rt, tp)):
                        t1 = time.perf_counter()
                        rt_.run(pair.feed)
                        ts.append((time.perf_counter() - t1) * 1e3)
                d_ms, p_ms = float(np.median(td)), float(np.median(tp))
                res["runs"][f"{scorer}@{b}"] = {
                    "scorer": scorer, "budget": b, "macs_ratio": round(r.pruned_macs / r.dense_macs, 4), **{k: round(v, 5) for k, v in m.items()},
                    "dense_ms": round(d_ms, 2), "pruned_ms": round(p_ms, 2), "speedup": round(d_ms / p_ms, 3),
                    "heads": sum(r.summary()["heads_per_layer"]), "neurons": sum(r.summary()["neurons_per_layer"]),
                    "scoring_seconds": round(scores[4], 1), "seconds": round(time.perf_counter() - t0, 1),
                }
                log(f"{scorer} @ {b}: " + ", ".join(f"{k} {v}" for k, v in res["runs"][f"{scorer}@{b}"].items() if k not in ("scorer", "budget")))
                write_json(path, res)
    return res


def merged() -> dict:
    """All runs of the per-process JSON files (with the same settings) in one result."""
    import json

    files = sorted(OUT.glob("embeddings_*.json"))
    if not files:
        raise SystemExit("no results/embeddings_*.json yet: run the benchmark first")
    parts = [json.loads(f.read_text()) for f in files]
    base = parts[0]
    out = {"settings": base["settings"], "task": base["task"], "runs": {}}
    for p in parts:
        if p["settings"] == base["settings"]:
            out["runs"].update(p["runs"])
    return out


NAMES = {"optin": "OPTIN (fast)", "magnitude": "weight magnitude", "random": "random"}


def markdown(res: dict) -> str:
    runs = res["runs"]
    budgets = sorted({r["budget"] for r in runs.values()})
    scorers = [s for s in SCORERS if any(r["scorer"] == s for r in runs.values())]
    lines = [f"minilm-embeddings: {res['task']['held_out_texts']} held-out texts, calibration {res['task']['calibration']}, "
             f"refit {'on' if res['settings']['reconstruct'] else 'off'}; speed-up: onnxruntime CPU, {res['settings']['batch']} x 128 tokens, "
             f"{res['settings']['repeats']} interleaved rounds, medians", ""]
    for key, title, fmt in (("cosine_mean", "mean cosine (dense vs pruned, same text)", "{:.4f}"), ("cosine_p5", "5th-percentile cosine", "{:.4f}"),
                            ("recall_at_10", "recall@10 agreement with the dense model's neighbours", "{:.3f}"), ("speedup", "onnxruntime CPU speed-up", "{:.2f}x")):
        lines += [f"**{title}**", "", "| scorer | " + " | ".join(f"{b:.1f}" for b in budgets) + " |", "|---|" + "---:|" * len(budgets)]
        for s in scorers:
            cells = [fmt.format(runs[f"{s}@{b}"][key]) if f"{s}@{b}" in runs else "" for b in budgets]
            lines.append(f"| {NAMES[s]} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = res["runs"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for s, color in zip(SCORERS, ("#1f77b4", "#ff7f0e", "#7f7f7f")):
        rs = sorted((r for r in runs.values() if r["scorer"] == s), key=lambda r: r["budget"])
        if not rs:
            continue
        x = [r["budget"] for r in rs]
        axes[0].plot(x, [r["cosine_mean"] for r in rs], "o-", color=color, label=f"{NAMES[s]} mean")
        axes[0].plot(x, [r["cosine_p5"] for r in rs], "x--", color=color, label=f"{NAMES[s]} 5th pct")
        axes[1].plot(x, [r["recall_at_10"] for r in rs], "o-", color=color, label=NAMES[s])
        axes[2].plot(x, [r["speedup"] for r in rs], "o-", color=color, label=NAMES[s])
    for ax, t in zip(axes, ("cosine to the dense embedding", "recall@10 agreement", "onnxruntime CPU speed-up")):
        ax.set_xlabel("fraction of encoder MACs kept")
        ax.set_title(t, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fig.suptitle("minilm-embeddings (all-MiniLM-L6-v2), held-out texts, pruned vs dense", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=lambda s: [float(x) for x in s.split(",")], default=BUDGETS)
    p.add_argument("--scorers", type=lambda s: s.split(","), default=SCORERS)
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-length", type=int, default=64)
    p.add_argument("--probes", type=int, default=64)
    p.add_argument("--profile", default="x86-cpu-ort")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--eval-texts", type=int, default=1000, help="held-out texts (a seeded subset of the 1,490; 0 = all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-reconstruct", action="store_true")
    p.add_argument("--force", action="store_true")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    import json

    if not args.report_only:
        run(args)
    res = merged()
    (OUT / "embeddings.md").write_text(markdown(res) + "\n")
    plot(res, OUT / "embeddings.png")
    print(markdown(res))


if __name__ == "__main__":
    main()
