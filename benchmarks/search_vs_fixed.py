"""Budget search against fixed budgets, per task: time and result.

For each task it runs, one after the other on the same machine (or, with ``--concurrent``, both at
the same time, so that both see the same load on a shared machine; the scores must then be cached):

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


def start(args: list[str], out: Path):
    cmd = [sys.executable, "-m", "optin_deploy.cli", "build", *args, "--out", str(out)]
    print("$", " ".join(cmd[2:]), flush=True)
    return subprocess.Popen(cmd, env={**os.environ, "OPTIN_DEPLOY_QUIET": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), time.perf_counter()


def finish(started, out: Path) -> tuple[dict, float]:
    proc, t0 = started
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    proc.stdout, proc.stderr = stdout, stderr
    if proc.returncode not in (0, 4):
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
        raise SystemExit(f"build failed ({proc.returncode})")
    if proc.returncode == 4:
        print(proc.stderr.strip().splitlines()[-1], flush=True)
    return json.loads((out / "report.json").read_text()), wall


def build(args: list[str], out: Path) -> tuple[dict, float]:
    return finish(start(args, out), out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="minilm-sentiment")
    ap.add_argument("--max-drop", type=float, default=1.0)
    ap.add_argument("--flops", type=float, default=0.6, help="budget of the fixed-budget build timed against the search")
    ap.add_argument("--reference", default="0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--work", default="/tmp/optin-search-bench")
    ap.add_argument("--extra", default="", help="extra flags for both builds, space-separated")
    ap.add_argument("--search-extra", default="", help="extra flags for the search build, space-separated")
    ap.add_argument("--concurrent", action="store_true", help="run the fixed and the search build at the same time (scores must be cached)")
    ap.add_argument("--collect-only", action="store_true", help="only summarise bundles already in --work")
    ap.add_argument("--label", default="", help="store the rows as 'TASK (LABEL)', beside the unlabelled ones (e.g. the same tasks with other --extra flags)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(exist_ok=True)
    out_json = RESULTS / "search_vs_fixed.json"
    all_rows = json.loads(out_json.read_text()) if out_json.exists() else {}
    extra, sextra = a.extra.split(), a.search_extra.split()
    for task in a.tasks.split(","):
        fixed_runs = []
        fixed_args = ["--model", task, "--flops", str(a.flops), *extra]
        search_args = ["--model", task, "--max-accuracy-drop", str(a.max_drop), "--search-reference", a.reference, *extra, *sextra]
        if a.collect_only:
            rep_f, wall_f = json.loads((work / f"fixed-{task}" / "report.json").read_text()), float("nan")
            rep_s, wall_s = json.loads((work / f"search-{task}" / "report.json").read_text()), float("nan")
        elif a.concurrent:
            f, s_ = start(fixed_args, work / f"fixed-{task}"), start(search_args, work / f"search-{task}")
            (rep_f, wall_f), (rep_s, wall_s) = finish(f, work / f"fixed-{task}"), finish(s_, work / f"search-{task}")
        else:
            rep_f, wall_f = build(fixed_args, work / f"fixed-{task}")
            rep_s, wall_s = build(search_args, work / f"search-{task}")
        fixed_runs.append({"wall_s": round(wall_f, 1), "build_seconds": rep_f["build_seconds"], "scores_cached": rep_f["scoring"]["cached"],
                           "speedup": rep_f["throughput"]["speedup"], "test_drop": rep_f["accuracy"]["drop"]})
        if not rep_f["scoring"]["cached"] and not a.collect_only:  # the first fixed build computed the scores: time a cached one too
            rep_f2, wall_f2 = build(fixed_args, work / f"fixed-{task}")
            fixed_runs.append({"wall_s": round(wall_f2, 1), "build_seconds": rep_f2["build_seconds"], "scores_cached": rep_f2["scoring"]["cached"],
                               "speedup": rep_f2["throughput"]["speedup"], "test_drop": rep_f2["accuracy"]["drop"]})
        cached = [r for r in fixed_runs if r["scores_cached"]]
        fixed_s = cached[-1]["build_seconds"] if cached else None
        fixed_wall = cached[-1]["wall_s"] if cached else None
        fr = json.loads((work / f"search-{task}" / "frontier.json").read_text())
        s = rep_s["search"]
        ref = fr.get("reference") or {}
        ref_s = ref.get("seconds", 0.0)
        search_build_s = rep_s["build_seconds"] - ref_s
        chosen = next(c for c in fr["candidates"] if c["id"] == fr["chosen"])
        ver = next((v for v in fr["verification"] if v["candidate"] == chosen["id"]), None)
        refs = [c for c in fr["candidates"] if c["phase"] == "reference"]
        row = {
            "task": task, "mode": "concurrent" if a.concurrent else ("collected" if a.collect_only else "sequential"),
            "fixed_command": "optin-deploy build " + " ".join(fixed_args), "search_command": "optin-deploy build " + " ".join(search_args),
            "max_accuracy_drop": a.max_drop, "fixed_flops": a.flops, "fixed_runs": fixed_runs,
            "fixed_build_seconds_cached": fixed_s,
            "search_build_seconds": round(search_build_s, 1), "search_build_seconds_with_reference": rep_s["build_seconds"],
            "reference_seconds": ref_s, "time_ratio": round(search_build_s / fixed_s, 3) if fixed_s else None,
            # what the user waits for (process start to exit, imports included), the reference's time taken out
            "fixed_wall_s": fixed_wall, "search_wall_s": round(wall_s - ref_s, 1),
            "time_ratio_wall": round((wall_s - ref_s) / fixed_wall, 3) if fixed_wall and wall_s == wall_s else None,
            "search_seconds": fr["search"]["seconds"], "candidates_measured": fr["search"]["candidates_measured"],
            "stop_reason": fr["search"]["stop_reason"], "reachable": fr["reachable"],
            "validation_subset": fr["validation"]["samples"], "validation_total": fr["validation"]["total"],
            "accuracy_se": fr["validation"]["accuracy_se"], "drop_se_median": fr["validation"]["drop_se_median"],
            "chosen": {k: chosen[k] for k in ("budget", "macs_ratio", "heads", "neurons", "drop", "drop_se", "speedup")},
            "chosen_full_validation": ver,
            "reference": [{k: c[k] for k in ("budget", "macs_ratio", "drop", "speedup")} | {"full_validation_drop": c["verification"]["drop"],
                                                                                         "meets": c["verification"]["passed"]} for c in refs],
            "reference_best": {k: ref.get(k) for k in ("best_budget", "best_speedup", "chosen_speedup", "rounds", "same_model", "chosen_at_least_as_fast")},
            "test": {"dense": rep_s["accuracy"]["dense"], "pruned": rep_s["accuracy"]["pruned"], "drop": rep_s["accuracy"]["drop"],
                     "agreement": rep_s["accuracy"]["agreement"], "speedup": rep_s["throughput"]["speedup"],
                     "p50_ms": {k: rep_s["latency_ms"][k]["p50"] for k in ("dense", "pruned")}},
            "bundle": str(work / f"search-{task}"),
        }
        all_rows[f"{task} ({a.label})" if a.label else task] = row
        if not a.label:
            shutil.copy2(work / f"search-{task}" / "plots" / "frontier.png", RESULTS / f"frontier_{task}.png")
            shutil.copy2(work / f"search-{task}" / "frontier.json", RESULTS / f"frontier_{task}.json")
        out_json.write_text(json.dumps(all_rows, indent=1))
        print(json.dumps(row, indent=1), flush=True)
    write_md(all_rows)


def write_md(rows: dict) -> None:
    lines = ["# Budget search against fixed budgets (`python benchmarks/search_vs_fixed.py`)", "",
             "| task | fixed build (s, cached scores) | search build (s) | ratio | ratio, wall clock | candidates | search (s) | chosen budget (MACs) | "
             "full-val drop | best fixed budget meeting the limit | speed-up chosen / best fixed (joint run) | test acc. dense -> pruned | test speed-up |",
             "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|---|---:|"]
    for t, r in rows.items():
        rb, ch, v = r["reference_best"], r["chosen"], r["chosen_full_validation"] or {}
        lines.append(f"| {t} | {r['fixed_build_seconds_cached']} | {r['search_build_seconds']} | {r['time_ratio']}x | {r.get('time_ratio_wall') or '?'}x | {r['candidates_measured']} | "
                     f"{r['search_seconds']:.0f} | {ch['budget']:.3f} ({ch['macs_ratio']:.3f}) | {v.get('drop', float('nan')):+.2f} | "
                     f"{rb.get('best_budget')} | {rb.get('chosen_speedup')}x / {rb.get('best_speedup')}x | "
                     f"{r['test']['dense']:.2f} -> {r['test']['pruned']:.2f} ({-r['test']['drop']:+.2f}) | {r['test']['speedup']:.2f}x |")
    (RESULTS / "search_vs_fixed.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
