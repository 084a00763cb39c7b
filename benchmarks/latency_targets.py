"""Latency targets on this machine's CPU profile (issue #6 acceptance).

MiniLM (the ``minilm-sentiment`` zoo model when it is cached, else the raw all-MiniLM-L6-v2 weights
with a random 2-class head: speed does not depend on the head) at the profile's batch x sequence
(x86-cpu-ort: 8 x 128, onnxruntime CPU, 2 threads). Steps: measure the latency table, then for
targets of 50 / 70 / 90 % of the dense model's measured onnxruntime latency select under the table,
build the pruned model, export it and measure it (``select_for_latency``, up to 4 rounds).
Prints ``target, predicted, measured, measured/target`` and writes ``results/latency_targets.json``.

Acceptance: measured <= target and >= 85 % of it; the table predicts measured within 10 %.

    python benchmarks/latency_targets.py [--profile x86-cpu-ort] [--scores FILE] [--lut FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_minilm():
    """(model, calibration text inputs, description)."""
    from optin_deploy import zoo

    folder = zoo.task_dir("minilm-sentiment")
    if (folder / "config.json").exists():
        task = zoo.get_task("minilm-sentiment", progress=False)
        task.max_length = 64  # the build's calibration: 128 training snippets, up to 64 tokens, seed 0
        return task.model.eval(), task.calibration(128, seed=0), f"zoo minilm-sentiment ({folder})"
    from transformers import AutoTokenizer

    from optin_deploy.data import assets
    from optin_deploy.data.builtin import load_builtin
    from optin_deploy.models import load_model

    path = assets.minilm().path
    torch.manual_seed(0)
    model = load_model(path, num_labels=2).eval()
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    data = load_builtin("rotten-tomatoes", seed=0)
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(data.train), generator=g)[:8].tolist()
    enc = tok([data.train.inputs[i] for i in idx], padding="longest", truncation=True, max_length=32, return_tensors="pt")
    calib = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    return model, calib, f"raw all-MiniLM-L6-v2 + random 2-class head ({path})"


def get_scores(model, calib, scores_path: Path | None, cache: Path, exact: bool):
    """(scores, source). Latency does not depend much on which units are kept, so without real
    OPTIN scores (a file, the lead's cached scorer, or --exact) weight-magnitude scores stand in."""
    from optin_deploy.core.scoring import RawScores

    for p in (scores_path, cache):
        if p is not None and p.exists():
            d = json.loads(p.read_text())
            print(f"scores from {p}")
            return (RawScores.from_dict(d) if "head_md" in d else d), f"file {p}"
    try:  # the lead's cached scorer, when it exists
        from optin_deploy.core.score_cache import score_model  # type: ignore

        print("OPTIN fast scores via optin_deploy.core.score_cache.score_model (cached after the default build)")
        s = score_model(model, calib, "fast", probes=64)
        source = f"OPTIN --scoring fast (exact heads + Hutchinson neurons), cached={s.info.get('cached')}"
        return s, source
    except ImportError:
        if not exact:
            from optin_deploy.core.baselines import magnitude_scores

            print("no OPTIN scores given (--scores) and no cached scorer: weight-magnitude scores stand in (pass --exact for exact OPTIN)")
            return magnitude_scores(model), "weight magnitude (stand-in)"
        from optin_deploy.adapters import get_adapter
        from optin_deploy.core.scoring import exact_scores

        print(f"exact OPTIN scores on {calib['input_ids'].shape[0]} x {calib['input_ids'].shape[1]} calibration tokens ...", flush=True)
        t0 = time.time()
        s = exact_scores(get_adapter(model), calib)
        print(f"  {time.time() - t0:.0f} s")
        source = "exact OPTIN (8 x 32 calibration tokens)"
    if hasattr(s, "head_md"):
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(s.to_dict()))
    return s, source


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="x86-cpu-ort")
    ap.add_argument("--scores", type=Path, help="RawScores JSON (else the cached fast OPTIN scores of the default build)")
    ap.add_argument("--lut", type=Path, help="an existing latency table (else measured and saved to results/)")
    ap.add_argument("--exact", action="store_true", help="compute exact OPTIN scores when none are given (slow: ~9k units)")
    ap.add_argument("--targets", default="0.5,0.7,0.9")
    ap.add_argument("--rounds", type=int, default=6, help="select_for_latency rounds")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "latency_targets.json")
    args = ap.parse_args(argv)

    from optin_deploy.latency_budget import select_for_latency
    from optin_deploy.lut import measure_lut, make_measure_fn, read_lut
    from optin_deploy.target import resolve_target

    torch.set_num_threads(2)
    prof = resolve_target(args.profile)  # the profile, resolved once into its shapes
    model, calib, what = load_minilm()
    print(f"model: {what}")
    scores, scores_source = get_scores(model, calib, args.scores, None, args.exact)

    lut_path = args.lut or ROOT / "results" / f"lut_{prof.name}_minilm.json"
    if args.lut:
        table = read_lut(lut_path)
    else:
        t0 = time.time()
        table = measure_lut(model, prof, model_name="all-MiniLM-L6-v2", progress=lambda s: print("  " + s, flush=True))
        table.save(lut_path)
        print(f"latency table: {time.time() - t0:.0f} s -> {lut_path}")
    print(f"table: dense {table.dense_model_ms:.2f} ms (measured), not prunable {table.empty_model_ms:.2f} ms, scale {table.scale:.3f}")

    measure = make_measure_fn(prof)
    dense_ms = measure(model)
    print(f"dense model measured again: {dense_ms:.2f} ms")
    rows = []
    for frac in [float(x) for x in args.targets.split(",")]:
        target = frac * dense_ms
        res = select_for_latency(model, scores, prof, table, target, measure, max_rounds=args.rounds,
                                 progress=lambda s: print("    " + s, flush=True))
        h, n = res.plan.counts()
        row = {"fraction": frac, "target_ms": target, "predicted_ms": res.predicted_ms, "measured_ms": res.measured_ms,
               "measured_over_target": res.measured_ms / target, "prediction_error": (res.predicted_ms - res.measured_ms) / res.measured_ms,
               "met": res.met, "in_band_85": res.met and res.measured_ms >= 0.85 * target, "rounds_used": len(res.rounds),
               "heads": h, "neurons": n, "rounds": res.rounds}
        rows.append(row)
        print(f"  target {frac:.0%}: {target:.2f} ms -> predicted {res.predicted_ms:.2f}, measured {res.measured_ms:.2f} "
              f"({row['measured_over_target']:.3f} of target) heads {sum(h)} neurons {sum(n)}")

    print()
    print(f"{'target':>8} {'target ms':>10} {'predicted':>10} {'measured':>10} {'meas/target':>12} {'pred err':>9} {'rounds':>7}")
    for r in rows:
        print(f"{r['fraction']:>8.0%} {r['target_ms']:>10.2f} {r['predicted_ms']:>10.2f} {r['measured_ms']:>10.2f} "
              f"{r['measured_over_target']:>12.3f} {r['prediction_error']:>+9.1%} {r['rounds_used']:>7}")
    from optin_deploy.lut import environment

    out = {"profile": prof.profile.to_dict(), "model": what, "scores": scores_source, "dense_ms": dense_ms, "lut": str(lut_path), "lut_dense_ms": table.dense_model_ms,
           "lut_empty_ms": table.empty_model_ms, "lut_scale": table.scale, "environment": environment(), "rows": rows,
           "command": "python benchmarks/latency_targets.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
