"""`optin-deploy build` end to end on a base-sized random model of every registered text family.

For each ``model_type`` of every registered text adapter (the registry, not a list here: a new
family's adapter file is enough for it to be measured), this script:

1. makes a randomly initialised ``AutoModelForSequenceClassification`` of that type at BERT-base
   size (12 layers, hidden 768, 12 heads, intermediate 3072; vocabulary and padding id from the
   BERT WordPiece tokenizer shipped with the built-in MiniLM asset) and saves it, with that
   tokenizer, to a folder, as a user's fine-tuned checkpoint would be;
2. writes a small labelled CSV (two classes of short synthetic reviews);
3. runs ``optin-deploy build --flops 0.6 --no-baselines`` on it in a subprocess (prune, refit, export
   to ONNX, parity, evaluate through onnxruntime, interleaved dense/pruned benchmark on the default
   profile's runtime and precision: x86-cpu-ort, int8, batch 8 x 128 tokens, 2 threads; the dense
   alternatives of ``--baselines`` only with ``--baselines``);
4. collects from ``report.json`` the MAC ratio, the onnxruntime CPU speed-up and latencies, the
   kept heads / neurons, and how long each stage took.

The weights are random, so accuracy figures mean nothing and are not reported; speed depends only
on the shapes. Scoring is kept cheap (``--scoring fast`` with few probes, 16 calibration samples):
it changes which units are kept, not how many, so the speed-up at a MAC budget is representative.

    python benchmarks/families.py                       # every registered text model_type
    python benchmarks/families.py --types distilbert mpnet --bench-iters 30

DeBERTa-v2 is built in deberta-v3-base's layout (relative attention on) and ModernBERT in
ModernBERT-base's (see ``LAYOUTS``); the other types use transformers' default config at base size.

Writes ``results/families.json`` and ``results/families.md`` (merged with earlier runs of other
types, so families can be measured one at a time).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072)
POS = ["good", "great", "fine", "superb", "lovely", "fun", "moving", "sharp"]
NEG = ["bad", "awful", "poor", "dull", "boring", "weak", "messy", "flat"]
LABELS = ("rotten", "fresh")  # the CSV's label names, recorded in the config as a fine-tuned checkpoint would
# Layouts people deploy, where transformers' default config for a model_type is not one: DeBERTa's
# default has relative attention off, so deberta-v2 is built as deberta-v3-base is laid out (c2p/p2c
# disentangled attention through the shared key/query projections, 256 log buckets, LayerNorm on the
# relative table); ModernBERT as ModernBERT-base (1152 gated neurons = 2304 rows of Wi per layer, a
# global-attention layer every third, 128-token sliding window elsewhere, no biases).
LAYOUTS = {
    "deberta-v2": dict(relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=-1, position_buckets=256,
                       share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0),
    "modernbert": dict(intermediate_size=1152, max_position_embeddings=8192, global_attn_every_n_layers=3, local_attention=128),
}
FILL = ["the", "film", "was", "a", "plot", "cast", "story", "and", "its", "ending"]


def text_model_types() -> list[str]:
    from optin_deploy.adapters import ADAPTERS

    return [t for cls in ADAPTERS.values() if cls.modality == "text" for t in cls.model_types]


def make_model_folder(model_type: str, folder: Path, seed: int = 0) -> dict:
    import torch
    import transformers

    from optin_deploy.data import assets

    tok_dir = Path(assets.minilm().path)
    tok = transformers.AutoTokenizer.from_pretrained(str(tok_dir))
    special = {f"{k}_token_id": tok.convert_tokens_to_ids(t) for k, t in (("bos", "[CLS]"), ("cls", "[CLS]"), ("eos", "[SEP]"), ("sep", "[SEP]"))}
    extra = {**special, **LAYOUTS[model_type]} if model_type == "modernbert" else LAYOUTS.get(model_type, {})
    cfg = transformers.AutoConfig.for_model(model_type, **{**BASE, **extra}, vocab_size=len(tok), pad_token_id=tok.pad_token_id, num_labels=2,
                                          id2label=dict(enumerate(LABELS)), label2id={l: i for i, l in enumerate(LABELS)})
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    layout = {k: v for k, v in cfg.to_dict().items() if k in (*BASE, *LAYOUTS.get(model_type, {}))}
    return {"model_class": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()), "layout": layout}


def write_csv(path: Path, rows: int = 400, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(rows):
            pos = i % 2 == 0
            words = rng.choices(POS if pos else NEG, k=3) + rng.choices(FILL, k=rng.randint(6, 20))
            rng.shuffle(words)
            w.writerow([" ".join(words), "fresh" if pos else "rotten"])


def build(model_dir: Path, data: Path, out: Path, args) -> tuple[dict, float, str]:
    cmd = [sys.executable, "-m", "optin_deploy.cli", "build", "--model", str(model_dir), "--data", str(data),
           "--flops", str(args.flops), "--scoring", "fast", "--probes", str(args.probes), "--calib-samples", str(args.calib_samples),
           "--bench-iters", str(args.bench_iters), "--select-by", args.select_by, "--out", str(out)]
    if not args.baselines:
        cmd.insert(-2, "--no-baselines")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OPTIN_DEPLOY_QUIET": "1"})
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"build failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    return json.loads((out / "report.json").read_text()), took, " ".join(["optin-deploy", *cmd[3:]])


def summarise(model_type: str, info: dict, report: dict, took: float, command: str) -> dict:
    lat, thr = report["latency_ms"], report["throughput"]
    s = report.get("structure", {})
    return {
        "model_type": model_type,
        "family": report.get("family") or None,
        **info,
        "macs_ratio": report["macs"]["ratio"],
        "speedup_throughput": thr["speedup"],
        "latency_p50_ms": {"dense": lat["dense"]["p50"], "pruned": lat["pruned"]["p50"]},
        "speedup_p50": lat["dense"]["p50"] / lat["pruned"]["p50"],
        "heads_pruned": s.get("heads", {}).get("pruned"),
        "neurons_pruned": s.get("neurons", {}).get("pruned"),
        "runtime": report.get("runtime"),
        "profile": report.get("profile"),
        "precision": report.get("precision"),
        "graph": {k: (v or {}).get("kind") for k, v in (report.get("graph") or {}).items() if k in ("dense", "pruned")},
        "bench": {k: report.get("bench", {}).get(k) for k in ("iters", "block", "mode", "interleaved")},
        "bench_inputs": report.get("bench", {}).get("inputs"),
        "build_seconds": round(took, 1),
        "scoring_seconds": report.get("scoring_seconds"),
        "command": command,
    }


def write_results(rows: dict, args) -> None:
    """Merge ``rows`` into results/families.json (re-read first, so runs of other types in parallel
    are kept) and rewrite results/families.md from all of them."""
    out_json, out_md = ROOT / "results" / "families.json", ROOT / "results" / "families.md"
    if out_json.exists():
        rows = {**json.loads(out_json.read_text())["families"], **rows}
    out_json.write_text(json.dumps({"settings": {"size": BASE, "layouts": LAYOUTS, "flops": args.flops, "scoring": "fast",
                                                 "per_row": "each row's command holds its own probes / calibration / bench settings",
                                                 "profile": "x86-cpu-ort (onnxruntime CPU, int8, 2 threads, batch 8 x 128 tokens)",
                                                 "note": "random weights: accuracy is meaningless and not reported; "
                                                         "measured on a 2-core machine shared with other jobs"},
                                    "families": rows}, indent=1, default=float))
    lines = ["| model_type | adapter | model class | graph (dense / pruned), precision | MACs kept | dense p50 ms | pruned p50 ms | speed-up (p50) | kept heads / neurons | build s |",
             "|---|---|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows.values():
        g = r.get("graph") or {}
        kept = ""
        if r.get("heads_pruned") is not None:
            kept = f"{sum(r['heads_pruned'])} / {sum(r['neurons_pruned'])}"
        lines.append(f"| {r['model_type']} | {r.get('family') or ''} | {r['model_class']} | {g.get('dense', '?')} / {g.get('pruned', '?')}, "
                     f"{r.get('precision') or '?'} | {r['macs_ratio']:.3f} | {r['latency_p50_ms']['dense']:.0f} | {r['latency_p50_ms']['pruned']:.0f} | "
                     f"**{r['speedup_p50']:.2f}x** | {kept} | {r['build_seconds']:.0f} |")
    out_md.write_text("# optin-deploy build at --flops 0.6 on base-sized random models, per family\n\n"
                      "Settings: 12 layers, hidden 768, 12 heads, intermediate 3072 (ModernBERT: 1152 gated neurons, its base layout; "
                      "DeBERTa-v2: deberta-v3-base's relative-attention layout), random weights; each row's exact command is in "
                      "`results/families.json`. Default profile x86-cpu-ort (onnxruntime CPU, int8 dynamic quantisation, 2 threads, "
                      "batch 8 x 128); dense and pruned timed in interleaved blocks in the same run, speed-up = dense p50 / pruned p50. "
                      "Accuracy is meaningless with random weights and is not reported. "
                      "The 2-core machine was shared with other jobs while measuring: absolute ms are inflated, the ratios are what count.\n\n"
                      "Reproduce: `python benchmarks/families.py --types MODEL_TYPE` (one family per run)\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", nargs="*", help="model_type values (default: every registered text model_type)")
    ap.add_argument("--flops", type=float, default=0.6)
    ap.add_argument("--select-by", default="macs", choices=["macs", "latency"],
                    help="build's --select-by; macs by default here: the same budget for every family, and no 26-model latency table "
                         "to measure per base-sized family (the default profile would measure one)")
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--bench-iters", type=int, default=30)
    ap.add_argument("--baselines", action="store_true", help="also export and time the dense alternatives (build's --baselines; off here: "
                    "the speed-up reported is pruned against the dense model run the same way)")
    ap.add_argument("--keep", type=Path, help="keep the model folders and bundles here")
    args = ap.parse_args()
    types = args.types or text_model_types()
    unknown = sorted(set(types) - set(text_model_types()))
    if unknown:
        sys.exit(f"error: not a registered text model_type: {', '.join(unknown)}; registered: {', '.join(text_model_types())}")
    rows: dict = {}
    work = args.keep or Path(tempfile.mkdtemp(prefix="optin-families-"))
    try:
        data = work / "data.csv"
        work.mkdir(parents=True, exist_ok=True)
        write_csv(data)
        for t in types:
            print(f"[families] {t}: making a base-sized random model", flush=True)
            info = make_model_folder(t, work / f"model-{t}")
            report, took, cmd = build(work / f"model-{t}", data, work / f"bundle-{t}", args)
            rows[t] = summarise(t, info, report, took, cmd)
            r = rows[t]
            print(f"[families] {t}: MACs x{r['macs_ratio']:.3f}, speed-up p50 {r['speedup_p50']:.2f}x "
                  f"(throughput {r['speedup_throughput']:.2f}x), build {took:.0f} s", flush=True)
            write_results(rows, args)
            if not args.keep:
                shutil.rmtree(work / f"model-{t}", ignore_errors=True)
                shutil.rmtree(work / f"bundle-{t}", ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
