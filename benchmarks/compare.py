"""OPTIN against baseline scorers (random, weight magnitude, Kwon-style Fisher) under MAC budgets.

For each task and scorer: score once on a calibration batch drawn from the *training* split (the
Fisher scorer also uses those samples' training labels, as Kwon et al. do), then for each budget
select with :func:`optin_deploy.core.selection.select`, slice with
:func:`optin_deploy.core.surgery.apply_plan` and measure PyTorch validation and test accuracy of the
pruned model (optionally also the onnxruntime CPU speed-up over the dense model). Nothing is tuned
on test.

Results are cached per (task, scorer, budget) in ``results/compare_<task>.json``; scores in
``results/tmp/scores/``. A rerun only computes what is missing (``--force`` redoes it). Writes the
markdown table ``results/compare.md`` and plots ``results/compare_<task>.png``.

    python benchmarks/compare.py --tasks vit-fashion-mnist --quick
    python benchmarks/compare.py                      # everything (long)
    python benchmarks/compare.py --report-only        # table and plots from the cached JSON
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optin_deploy.adapters import get_adapter  # noqa: E402
from optin_deploy.core.baselines import SCORERS, UnitScores, score_units  # noqa: E402
from optin_deploy.core.costs import mac_cost_model  # noqa: E402
from optin_deploy.core.selection import select  # noqa: E402
from optin_deploy.core.surgery import apply_plan  # noqa: E402

OUT = ROOT / "results"  # --out changes it
TASKS = ["minilm-sentiment", "minilm-bbc-news", "vit-fashion-mnist", "swin-fashion-mnist"]
BUDGETS = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
FORMAT = 1


def log(msg: str) -> None:
    print(f"[compare] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------ data


def calibration(task, n: int, seed: int):
    """``task.calibration(n, seed)`` and the training labels of the same samples."""
    inputs = task.calibration(n, seed)
    train = task.data.train
    g = torch.Generator().manual_seed(seed)  # the same draw as Task.calibration
    idx = torch.randperm(len(train), generator=g)[:n].sort().values
    labels = None if train.labels is None else train.labels[idx]
    return inputs, labels


def take(split, idx):
    """The samples ``idx`` of a labelled split."""
    from optin_deploy.data.types import Split

    inputs = split.inputs[idx] if isinstance(split.inputs, torch.Tensor) else [split.inputs[int(i)] for i in idx]
    return Split(inputs, None if split.labels is None else split.labels[idx])


def subset(split, limit: int | None):
    if not limit or len(split) <= limit:
        return split
    g = torch.Generator().manual_seed(1234)
    return take(split, torch.randperm(len(split), generator=g)[:limit].sort().values)


def predict(task, model, split) -> torch.Tensor:
    from optin_deploy import zoo

    return zoo.predict(dataclasses.replace(task, model=model), split, batch_size=64)


def accuracy(task, model, split) -> float:
    return float((predict(task, model, split) == split.labels.long()).float().mean())


def seq_len_for(task, adapter, calib) -> int:
    return int(task.max_length) if task.modality == "text" and task.max_length else adapter.seq_len(calib)


# ----------------------------------------------------------------------------------------- speed


class OrtPair:
    """The dense model's onnxruntime session, kept open so every pruned model is timed interleaved with it."""

    def __init__(self, task, dense, workdir: Path, batch: int, repeats: int, threads: int):
        from optin_deploy.exporters.base import ShapeProfile

        self.task, self.workdir, self.repeats, self.threads = task, workdir, repeats, threads
        self.ex = task.example_inputs(batch, task.max_length)
        seq = int(self.ex["input_ids"].shape[1]) if "input_ids" in self.ex else 1
        self.prof = ShapeProfile(min_batch=1, opt_batch=batch, max_batch=max(batch, 8), min_seq=1, opt_seq=max(seq, 1), max_seq=max(seq, 1))
        self.feed = {k: v.numpy() for k, v in self.ex.items()}
        self.dense = self._load(dense, "dense.onnx")

    def _load(self, model, name: str):
        from optin_deploy.exporters.onnx import OnnxExporter
        from optin_deploy.runtimes.ort import OrtRuntime

        path = self.workdir / name
        OnnxExporter().export(model, self.ex, path, input_names=self.task.input_names, profile=self.prof, parity=False)
        rt = OrtRuntime(threads=self.threads).load(path)
        for _ in range(3):
            rt.run(self.feed)
        return rt

    def speedup(self, pruned) -> tuple[float, float]:
        """(dense median ms, pruned median ms), dense and pruned run alternately ``repeats`` times."""
        rt = self._load(pruned, "pruned.onnx")
        td, tp = [], []
        for _ in range(self.repeats):
            for rt_, ts in ((self.dense, td), (rt, tp)):
                t0 = time.perf_counter()
                rt_.run(self.feed)
                ts.append((time.perf_counter() - t0) * 1e3)
        return sorted(td)[len(td) // 2], sorted(tp)[len(tp) // 2]


# ------------------------------------------------------------------------------------------- run


def optin_options(args, adapter) -> dict:
    method = args.optin_method
    if method == "auto":  # exact is ~1 masked pass per unit: affordable for the small ViT only
        units = sum(adapter.heads_per_layer()) + sum(adapter.neurons_per_layer())
        method = "exact" if units <= 4000 else "fast"
    return {"method": method}


def score_key(task, name: str, args, adapter) -> tuple[str, dict]:
    opts = optin_options(args, adapter) if name == "optin" else {}
    return f"{task.name}-{name}-n{args.calib_samples}-s{args.seed}" + (f"-{opts['method']}" if opts else ""), opts


def scores_for(task, name: str, args, adapter, calib, labels) -> UnitScores:
    key, opts = score_key(task, name, args, adapter)
    path = OUT / "tmp" / "scores" / f"{key}.json"
    if path.exists() and not args.force:
        return UnitScores.from_dict(json.loads(path.read_text()))
    log(f"{task.name}: scoring with {name} {opts or ''} on {args.calib_samples} calibration samples")
    last = [0.0]

    def progress(done, total):
        if time.perf_counter() - last[0] > 30:
            last[0] = time.perf_counter()
            log(f"  {name}: {done}/{total}")

    kw = dict(labels=labels if name == "fisher" else None, seed=args.seed, progress=progress, **opts)
    s = score_units(name, task.model, calib, **kw)
    s.info["calib_samples"] = args.calib_samples
    if name == "fisher":
        s.info["fisher_labels"] = "training labels" if labels is not None else "predicted"
    write_json(path, s.to_dict())
    log(f"  {name}: {s.seconds:.1f} s")
    return s


def run_task(name: str, args) -> dict:
    from optin_deploy import zoo

    out = OUT / f"compare_{name}.json"
    res = json.loads(out.read_text()) if out.exists() else {}
    settings = {"calib_samples": args.calib_samples, "seed": args.seed, "eval_limit": args.eval_limit, "format": FORMAT}
    if res.get("settings") != settings or args.force:
        if res:
            log(f"{name}: settings changed, starting {out.name} afresh")
        res = {"task": name, "settings": settings, "scorers": {}}
    task = zoo.get_task(name)
    model = task.model.eval()
    adapter = get_adapter(model)
    val = subset(task.data.require_labels("validation"), args.eval_limit)
    test = subset(task.data.require_labels("test"), args.eval_limit)
    calib, labels = calibration(task, args.calib_samples, args.seed)
    s = seq_len_for(task, adapter, calib)
    costs = mac_cost_model(model, s)
    res.update({"seq_len": s, "dense_macs": costs.dense(), "n_val": len(val), "n_test": len(test),
                "heads": adapter.heads_per_layer(), "neurons": adapter.neurons_per_layer(), "threads": torch.get_num_threads()})
    if "dense" not in res:
        log(f"{name}: dense accuracy")
        res["dense"] = {"val_acc": accuracy(task, model, val), "test_acc": accuracy(task, model, test)}
        write_json(out, res)
    pair_dir = tempfile.TemporaryDirectory() if args.ort else None
    pair = OrtPair(task, model, Path(pair_dir.name), args.ort_batch, args.ort_repeats, torch.get_num_threads()) if args.ort else None
    log(f"{name}: dense val {res['dense']['val_acc']:.4f} test {res['dense']['test_acc']:.4f}")

    for scorer in args.scorers:
        key, _ = score_key(task, scorer, args, adapter)
        entry = res["scorers"].get(scorer)
        if not entry or entry.get("key") != key:
            entry = res["scorers"][scorer] = {"key": key, "budgets": {}}
        sc = scores_for(task, scorer, args, adapter, calib, labels)
        entry.update({"score_seconds": sc.seconds, "info": sc.info})
        for b in args.budgets:
            key = f"{b:.2f}"
            row = entry["budgets"].get(key)
            if row and (not args.ort or "ort_dense_ms" in row):  # speed-ups are measured interleaved with the dense model
                continue
            sel = select(sc.heads, sc.neurons, costs, b * costs.dense())
            pruned = apply_plan(model, sel.plan)
            hc, nc = sel.plan.counts()
            row = row or {
                "budget": b, "macs_ratio": sel.ratio, "heads_kept": sum(hc), "neurons_kept": sum(nc),
                "heads_per_layer": hc, "neurons_per_layer": nc,
                "val_acc": accuracy(task, pruned, val), "test_acc": accuracy(task, pruned, test),
            }
            if args.ort:
                row["ort_dense_ms"], row["ort_ms"] = pair.speedup(pruned)
                row["ort_speedup"] = row["ort_dense_ms"] / row["ort_ms"]
            entry["budgets"][key] = row
            write_json(out, res)
            log(f"{name} {scorer} budget {b}: MACs {sel.ratio:.3f} heads {sum(hc)} neurons {sum(nc)} "
                f"val {row['val_acc']:.4f} test {row['test_acc']:.4f}" + (f" ort x{row['ort_speedup']:.2f}" if args.ort else ""))
    return res


# ---------------------------------------------------------------------------------------- report


def ordered(scorers: dict) -> list[tuple[str, dict]]:
    """Scorer entries in registry order (optin first), unknown names last."""
    rank = {n: i for i, n in enumerate(SCORERS)}
    return sorted(scorers.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def markdown(results: list[dict]) -> str:
    lines = ["# OPTIN vs baseline scorers", "",
             "PyTorch accuracy of the physically pruned model, no retraining. Budget = fraction of the dense "
             "encoder MACs (spec formulas at the task's max sequence length). Calibration: training samples only "
             "(Fisher also uses their training labels). Scoring time on this 2-core CPU machine (shared, noisy).", ""]
    for r in results:
        st = r["settings"]
        lines += [f"## {r['task']}", "",
                  f"Dense: val {100 * r['dense']['val_acc']:.2f}, test {100 * r['dense']['test_acc']:.2f} "
                  f"(n_val {r['n_val']}, n_test {r['n_test']}); calibration {st['calib_samples']} samples, seq len {r['seq_len']}.", ""]
        budgets = sorted({k for e in r["scorers"].values() for k in e["budgets"]})
        has_ort = any("ort_speedup" in row for e in r["scorers"].values() for row in e["budgets"].values())
        lines += ["| scorer | scoring s | " + " | ".join(f"{b} test / val" for b in budgets) + " |",
                  "|---|---:|" + "---:|" * len(budgets)]
        for name, e in ordered(r["scorers"]):
            cells = []
            for b in budgets:
                row = e["budgets"].get(b)
                cells.append("" if not row else f"{100 * row['test_acc']:.1f} / {100 * row['val_acc']:.1f}")
            tag = name + (f" ({e['info'].get('method')})" if name == "optin" and e.get("info", {}).get("method") else "")
            lines.append(f"| {tag} | {e.get('score_seconds', float('nan')):.1f} | " + " | ".join(cells) + " |")
        if has_ort:
            lines += ["", "onnxruntime CPU speed-up over dense (median latency ratio, each pruned model timed interleaved with the dense one):", "",
                      "| scorer | " + " | ".join(budgets) + " |", "|---|" + "---:|" * len(budgets)]
            for name, e in ordered(r["scorers"]):
                lines.append(f"| {name} | " + " | ".join(f"{e['budgets'][b]['ort_speedup']:.2f}x" if b in e["budgets"] and "ort_speedup" in e["budgets"][b] else "" for b in budgets) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, split in zip(axes, ("test_acc", "val_acc")):
        for name, e in ordered(r["scorers"]):
            rows = sorted(e["budgets"].values(), key=lambda x: x["macs_ratio"])
            if rows:
                ax.plot([x["macs_ratio"] for x in rows], [100 * x[split] for x in rows], marker="o", label=name)
        ax.axhline(100 * r["dense"][split], color="k", ls="--", lw=1, label="dense")
        ax.set_xlabel("encoder MACs / dense")
        ax.set_title(f"{r['task']}: {split.split('_')[0]}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(tasks: list[str]) -> None:
    results = []
    found = {p.stem[len("compare_"):]: p for p in OUT.glob("compare_*.json")}
    for t in [t for t in TASKS if t in found] + sorted(t for t in found if t not in TASKS):
        r = json.loads(found[t].read_text())
        results.append(r)
        plot(r, OUT / f"compare_{t}.png")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "compare.md").write_text(markdown(results))
    log(f"wrote {OUT / 'compare.md'} and {len(results)} plot(s)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    p.add_argument("--scorers", default=",".join(SCORERS))
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--optin-method", choices=["auto", "exact", "fast"], default="auto",
                   help="auto: exact when the model has at most 4000 units, else fast")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on a fixed random subset of this size")
    p.add_argument("--ort", action="store_true", help="also measure the onnxruntime CPU speed-up (slow)")
    p.add_argument("--ort-batch", type=int, default=8)
    p.add_argument("--ort-repeats", type=int, default=20)
    p.add_argument("--quick", action="store_true", help="32 calibration samples, budgets 0.5,0.7,0.9, at most 500 eval samples")
    p.add_argument("--force", action="store_true", help="recompute cached scores and results")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--train-missing", action="store_true", help="train zoo models that are not prepared yet (else skip them)")
    p.add_argument("--out", default=str(ROOT / "results"), help="results folder (default: results/)")
    args = p.parse_args(argv)
    global OUT
    OUT = Path(args.out)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.scorers = [s for s in args.scorers.split(",") if s]
    args.budgets = [float(b) for b in args.budgets.split(",") if b]
    unknown = [s for s in args.scorers if s not in SCORERS]
    if unknown:
        p.error(f"unknown scorer(s) {unknown}; choose from {list(SCORERS)}")
    if args.quick:
        if args.calib_samples == 128:
            args.calib_samples = 32
        if args.budgets == BUDGETS:
            args.budgets = [0.5, 0.7, 0.9]
        args.eval_limit = args.eval_limit or 500
    if not args.report_only:
        from optin_deploy import zoo

        zoo.set_threads()
        for t in args.tasks:
            if t in zoo.ZOO and zoo.info(t) is None and not args.train_missing:
                log(f"{t}: zoo model not prepared yet, skipped (optin-deploy zoo prepare {t}, or --train-missing)")
                continue
            run_task(t, args)
    report(args.tasks)


if __name__ == "__main__":
    main()
