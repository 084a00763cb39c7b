"""End to end ``optin-deploy build`` on base-sized, randomly initialised DeBERTa-v2, DeBERTa-v3 and
ModernBERT models (12 layers, hidden 768, 12 heads, MLP 3072; real checkpoints cannot be fetched
here), with a small labelled CSV and the MiniLM (BERT) tokenizer.

For each family: write the model folder and the CSV, run ``optin-deploy build --flops 0.6`` (prune
with OPTIN scores, refit, export to ONNX, evaluate through onnxruntime, and time dense and pruned
exports interleaved, medians), and collect the measured onnxruntime CPU speed-up from the bundle's
``report.json`` into ``results/byo_encoders.json``. Random weights make the accuracy figures
meaningless; the speed-up and the structure are what this measures.

    python benchmarks/byo_encoders.py                       # all three (long: scoring base models)
    python benchmarks/byo_encoders.py --families modernbert --bench-iters 30
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
sys.path.insert(0, str(ROOT))

BASE = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, num_labels=2)
WORDS = (["good", "great", "fine", "superb", "lovely", "fun"], ["bad", "awful", "poor", "dull", "boring", "weak"])


def make_model(family: str):
    import torch
    import transformers

    torch.manual_seed(0)
    if family == "deberta-v2":  # DeBERTa-v2 layout: separate position projections, absolute positions too
        cfg = transformers.DebertaV2Config(**BASE, max_position_embeddings=512, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                           max_relative_positions=-1, type_vocab_size=0)
        return transformers.DebertaV2ForSequenceClassification(cfg)
    if family == "deberta-v3":  # deberta-v3-base's layout
        cfg = transformers.DebertaV2Config(**BASE, max_position_embeddings=512, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                           max_relative_positions=-1, position_buckets=256, share_att_key=True, norm_rel_ebd="layer_norm",
                                           position_biased_input=False, type_vocab_size=0)
        return transformers.DebertaV2ForSequenceClassification(cfg)
    if family == "modernbert":  # ModernBERT-base's layout, biases off as released
        base = {**BASE, "intermediate_size": 1152}  # ModernBERT-base: 1152 gated neurons (2304 rows of Wi) per layer
        cfg = transformers.ModernBertConfig(**base, max_position_embeddings=8192, pad_token_id=0, bos_token_id=101, eos_token_id=102,
                                            cls_token_id=101, sep_token_id=102, global_attn_every_n_layers=3, local_attention=128)
        return transformers.ModernBertForSequenceClassification(cfg)
    raise SystemExit(f"unknown family {family!r}")


def write_task(family: str, root: Path) -> tuple[Path, Path]:
    from optin_deploy.data import assets

    model = make_model(family).eval()
    folder = root / family
    model.save_pretrained(folder)
    tok = Path(assets.minilm().path)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tok / name).is_file():
            shutil.copy2(tok / name, folder / name)
    rng = random.Random(0)
    data = root / "data.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(400):
            pos = i % 2 == 0
            words = rng.choices(WORDS[0] if pos else WORDS[1], k=6) + rng.choices(["the", "film", "was", "a", "plot", "and", "acting"], k=10)
            rng.shuffle(words)
            w.writerow([" ".join(words), "fresh" if pos else "rotten"])
    return folder, data


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", nargs="+", default=["deberta-v2", "deberta-v3", "modernbert"])
    ap.add_argument("--flops", type=float, default=0.6)
    ap.add_argument("--bench-iters", type=int, default=60)
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--calib-length", type=int, default=32)
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "byo_encoders.json")
    ap.add_argument("--keep", type=Path, default=None, help="keep the model folders and bundles here")
    args = ap.parse_args()

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    work = Path(tempfile.mkdtemp(prefix="byo-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    try:
        for family in args.families:
            folder, data = write_task(family, work)
            bundle = work / f"bundle-{family}"
            cmd = [sys.executable, "-m", "optin_deploy.cli", "build", "--model", str(folder), "--data", str(data), "--flops", str(args.flops),
                   "--calib-samples", str(args.calib_samples), "--calib-length", str(args.calib_length), "--probes", str(args.probes),
                   "--bench-iters", str(args.bench_iters), "--out", str(bundle)]
            print(f"[byo] {time.strftime('%H:%M:%S')} {family}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                results[family] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
                continue
            rep = json.loads((bundle / "report.json").read_text())
            results[family] = {
                "config": {k: v for k, v in json.loads((folder / "config.json").read_text()).items()
                           if k in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                                    "share_att_key", "position_buckets", "pos_att_type", "layer_types")},
                "command": "optin-deploy " + " ".join(cmd[3:]),
                "seconds": round(time.perf_counter() - t0, 1),
                "report": {k: rep[k] for k in ("macs", "latency_ms", "throughput", "structure", "bench", "accuracy", "scoring", "scoring_seconds", "parity") if k in rep},
            }
            print(f"[byo] {family}: {json.dumps(results[family]['report'].get('throughput'))}", file=sys.stderr, flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
