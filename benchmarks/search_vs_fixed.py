"""Budget search against fixed budgets, per task: time and result.

For each task it runs, one after the other on the same machine:

1. ``optin-deploy build --model M --flops F`` (a fixed-budget build; the first run of a task may
   compute and cache the scores, so it is repeated after the search when its scores were not cached);
2. ``optin-deploy build --model M --max-accuracy-drop P --search-reference 0.5,0.6,0.7,0.8,0.9``:
   the search, plus the five fixed budgets measured the same way in the same process (never chosen;
   judged on the full validation split), and the chosen model timed against the best of them and the
   dense model in one interleaved run. The search's time is the build's time minus the reference's.

Writes ``results/search_vs_fixed.json`` / ``.md`` and copies each frontier plot to
``results/frontier_<task>.png``. Usage::

    python benchmarks/search_vs_fixed.py --tasks minilm-sentiment,minilm-bbc-news,vit-fashion-mnist
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def build(args: list[str], out: Path) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "optin_deploy.cli", "build", *args, "--out", str(out)]
    print("$", " ".join(cmd[2:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, "OPTIN_DEPLOY_QUIET": "1"}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 4):
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"build failed ({proc.returncode})")
    if proc.returncode == 4:
        print(proc.stderr.strip().splitlines()[-1], flush=True)
    return json.loads((out / "report.json").read_text()), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="minilm-sentiment")
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--flops", type=float, default=0.6, help="budget of the fixed-budget build timed against the search")
    ap.add_argument("--reference", default="0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--work", default="/tmp/optin-search-bench")
    ap.add_argument("--extra", default="", help="extra build flags, space-separated")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    out_json = RESULTS / "search_vs_fixed.json"
    all_rows = json.loads(out_json.read_text()) if out_json.exists() else {}
    extra = a.extra.split()
    for task in a.tasks.split(","):
        fixed_runs = []
        rep_f, wall_f = build(["--model", task, "--flops", str(a.flops), *extra], work / f"fixed-{task}")
        fixed_runs.append({"wall_s": round(wall_f, 1), "build_seconds": rep_f["build_seconds"], "scores_cached": rep_f["scoring"]["cached"],
                           "speedup": rep_f["throughput"]["speedup"], "test_drop": rep_f["accuracy"]["drop"]})
        rep_s, wall_s = build(["--model", task, "--max-accuracy-drop", str(a.max_drop), "--search-reference", a.reference, *extra], work / f"search-{task}")
        if not rep_f["scoring"]["cached"]:  # the first fixed build computed the scores: time a cached one too
            rep_f2, wall_f2 = build(["--model", task, "--flops", str(a.flops), *extra], work / f"fixed-{task}")
            fixed_runs.append({"wall_s": round(wall_f2, 1), "build_seconds": rep_f2["build_seconds"], "scores_cached": rep_f2["scoring"]["cached"],
                               "speedup": rep_f2["throughput"]["speedup"], "test_drop": rep_f2["accuracy"]["drop"]})
        cached = [r for r in fixed_runs if r["scores_cached"]]
        fixed_s = cached[-1]["build_seconds"] if cached else None
        fr = json.loads((work / f"search-{task}" / "frontier.json").read_text())
        s = rep_s["search"]
        ref = fr.get("reference") or {}
        ref_s = ref.get("seconds", 0.0)
        search_build_s = rep_s["build_seconds"] - ref_s
        chosen = next(c for c in fr["candidates"] if c["id"] == fr["chosen"])
        ver = next((v for v in fr["verification"] if v["candidate"] == chosen["id"]), None)
        refs = [c for c in fr["candidates"] if c["phase"] == "reference"]
        row = {
            "task": task, "max_accuracy_drop": a.max_drop, "fixed_flops": a.flops, "fixed_runs": fixed_runs,
            "fixed_build_seconds_cached": fixed_s,
            "search_build_seconds": round(search_build_s, 1), "search_build_seconds_with_reference": rep_s["build_seconds"],
            "reference_seconds": ref_s, "time_ratio": round(search_build_s / fixed_s, 3) if fixed_s else None,
            "search_seconds": fr["search"]["seconds"], "candidates_measured": fr["search"]["candidates_measured"],
            "stop_reason": fr["search"]["stop_reason"], "reachable": fr["reachable"],
            "validation_subset": fr["validation"]["samples"], "validation_total": fr["validation"]["total"],
            "accuracy_se": fr["validation"]["accuracy_se"], "drop_se_median": fr["validation"]["drop_se_median"],
            "chosen": {k: chosen[k] for k in ("budget", "macs_ratio", "heads", "neurons", "drop", "drop_se", "speedup", "contest_speedup")},
            "chosen_full_validation": ver,
            "reference": [{k: c[k] for k in ("budget", "macs_ratio", "drop", "speedup")} | {"full_validation_drop": c["verification"]["drop"],
                                                                                         "meets": c["verification"]["passed"]} for c in refs],
            "reference_best": {k: ref.get(k) for k in ("best_budget", "best_speedup", "chosen_speedup", "rounds", "chosen_at_least_as_fast")},
            "test": {"dense": rep_s["accuracy"]["dense"], "pruned": rep_s["accuracy"]["pruned"], "drop": rep_s["accuracy"]["drop"],
                     "agreement": rep_s["accuracy"]["agreement"], "speedup": rep_s["throughput"]["speedup"],
                     "p50_ms": {k: rep_s["latency_ms"][k]["p50"] for k in ("dense", "pruned")}},
            "bundle": str(work / f"search-{task}"),
        }
        all_rows[task] = row
        shutil.copy2(work / f"search-{task}" / "plots" / "frontier.png", RESULTS / f"frontier_{task}.png")
        shutil.copy2(work / f"search-{task}" / "frontier.json", RESULTS / f"frontier_{task}.json")
        out_json.write_text(json.dumps(all_rows, indent=1))
        print(json.dumps(row, indent=1), flush=True)
    write_md(all_rows)


def write_md(rows: dict) -> None:
    lines = ["# Budget search against fixed budgets (`python benchmarks/search_vs_fixed.py`)", "",
             "| task | fixed build (s, cached scores) | search build (s) | ratio | candidates | search (s) | chosen budget (MACs) | "
             "full-val drop | best fixed budget meeting the limit | speed-up chosen / best fixed (joint run) | test acc. dense -> pruned | test speed-up |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---|---|---:|"]
    for t, r in rows.items():
        rb, ch, v = r["reference_best"], r["chosen"], r["chosen_full_validation"] or {}
        lines.append(f"| {t} | {r['fixed_build_seconds_cached']} | {r['search_build_seconds']} | {r['time_ratio']}x | {r['candidates_measured']} | "
                     f"{r['search_seconds']:.0f} | {ch['budget']:.3f} ({ch['macs_ratio']:.3f}) | {v.get('drop', float('nan')):+.2f} | "
                     f"{rb.get('best_budget')} | {rb.get('chosen_speedup')}x / {rb.get('best_speedup')}x | "
                     f"{r['test']['dense']:.2f} -> {r['test']['pruned']:.2f} ({-r['test']['drop']:+.2f}) | {r['test']['speedup']:.2f}x |")
    (RESULTS / "search_vs_fixed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
