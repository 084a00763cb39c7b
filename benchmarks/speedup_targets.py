"""Relative latency budgets on a busy machine: ``optin-deploy build --speedup S`` for several S while a
CPU-bound process competes for the cores.

A latency table is measured first (``optin-deploy lut``, the profile's graph and precision), then a
busy-loop process is started and each target is built with ``--lut`` (no baselines, few benchmark
runs: the closed loop's own same-run measurements are what counts). Per target: the speed-up the
closed loop measured against the dense model in its chosen round, the build's own benchmark
speed-up, whether the selection kept fewer units than the dense model (it must: the loop never
ships the dense model as pruned), the test accuracy, and the rounds. Writes
``results/speedup_targets.json`` / ``.md``.

    python benchmarks/speedup_targets.py --targets 1.3,1.5,1.7
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="minilm-sentiment")
    ap.add_argument("--profile", default="x86-cpu-ort")
    ap.add_argument("--targets", default="1.3,1.5,1.7")
    ap.add_argument("--lut", type=Path, default=None, help="an existing latency table (else measured here first)")
    ap.add_argument("--no-load", action="store_true", help="do not start the competing CPU-bound process")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "speedup_targets")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OPTIN_DEPLOY_QUIET": "1"}
    cli = [sys.executable, "-m", "optin_deploy.cli"]
    work = Path(tempfile.mkdtemp(prefix="speedup-targets-"))
    lut = args.lut
    if lut is None:
        lut = work / "lut.json"
        subprocess.run(cli + ["lut", "--profile", args.profile, "--model", args.model, "--out", str(lut)], check=True, env=env)
    load = None if args.no_load else subprocess.Popen([sys.executable, "-c", "while True: pass"])
    rows = []
    try:
        for s in (float(x) for x in args.targets.split(",")):
            out = work / f"build-{s:g}"
            t0 = time.time()
            proc = subprocess.run(cli + ["build", "--model", args.model, "--profile", args.profile, "--speedup", str(s), "--lut", str(lut),
                                         "--no-baselines", "--bench-iters", "40", "--out", str(out)], capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                rows.append({"target": s, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"})
                continue
            rep = json.loads((out / "report.json").read_text())
            lb = rep["latency_budget"]
            rel = lb["relative"]
            chosen = lb["rounds"][lb["chosen_round"]]
            st = rep["structure"]
            rows.append({
                "target": s, "closed_loop_speedup": rel["measured_speedup"], "met": lb["met"],
                "bench_speedup": rep["baselines"]["speedup_vs_same_way"] if rep.get("baselines") else rep["throughput"]["speedup"],
                "rounds": len(lb["rounds"]), "stopped_at_dense": any(r.get("dense") for r in lb["rounds"]),
                "heads": sum(st["heads"]["pruned"]), "neurons": sum(st["neurons"]["pruned"]),
                "dense_units": [sum(st["heads"]["dense"]), sum(st["neurons"]["dense"])],
                "is_dense": st["heads"]["pruned"] == st["heads"]["dense"] and st["neurons"]["pruned"] == st["neurons"]["dense"],
                "accuracy": rep["accuracy"], "mac_ratio": rep["macs"]["ratio"], "chosen_round": chosen, "seconds": round(time.time() - t0),
                "history": rel["history"],
            })
            print(json.dumps(rows[-1])[:400], flush=True)
    finally:
        if load is not None:
            load.kill()
    res = {"model": args.model, "profile": args.profile, "lut": str(lut), "competing_process": not args.no_load,
           "machine": "2-core x86-64, shared with other jobs while measured", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    lines = [f"`build --speedup S` on {args.model}, profile {args.profile}, "
             f"{'with a competing CPU-bound process' if not args.no_load else 'no extra load'}; {res['machine']}.", "",
             "| target | closed-loop speed-up (same run as dense) | met | build benchmark speed-up | rounds | heads / neurons kept | MACs | test acc. dense -> pruned |",
             "|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| x{r['target']:g} | {r['error']} | | | | | | |")
            continue
        a = r["accuracy"]
        lines.append(f"| x{r['target']:g} | x{r['closed_loop_speedup']:.2f} | {'yes' if r['met'] else 'no'} | x{r['bench_speedup']:.2f} | {r['rounds']} | "
                     f"{r['heads']} / {r['neurons']} (dense {r['dense_units'][0]} / {r['dense_units'][1]}) | x{r['mac_ratio']:.2f} | {a['dense']:.2f} -> {a['pruned']:.2f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
