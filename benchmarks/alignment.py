"""Are aligned MLP widths faster than unaligned ones at (nearly) equal MACs?

For each base width ``w`` (a multiple of 64) the script times one MLP ``d -> w' -> d`` (GELU,
MiniLM's d = 384, batch x tokens from the profile: 8 x 128) for ``w' = w`` and for nearby widths
that are multiples of 8 only, of 4 only, and odd (``w + 8``, ``w - 4``, ``w + 1``, ``w - 1``), in
onnxruntime, all artifacts interleaved (rounds x iterations, medians). The figure of merit is the
time per 1,000 neurons relative to the aligned width: > 1 means the unaligned width is slower per
unit of work. The same script runs on a GPU with ``--provider cuda`` (onnxruntime-gpu).

    python benchmarks/alignment.py [--provider cpu|cuda] [--threads 2] [--bases 256,512,768,1024,1536]

Writes ``results/alignment_<provider>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


class MLP(nn.Module):
    def __init__(self, d: int, w: int):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(d, w), nn.Linear(w, d), nn.GELU()

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--bases", default="256,512,768,1024,1536")
    ap.add_argument("--offsets", default="0,8,-4,1,-1", help="width offsets from each base (0 = aligned)")
    ap.add_argument("--fp16", action="store_true", help="fp16 weights and inputs (GPU)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)

    from optin_deploy.lut import environment, export_block, time_interleaved
    from optin_deploy.runtimes.ort import OrtRuntime

    name = "ort-cpu" if args.provider == "cpu" else "ort-cuda"
    precision = "fp16" if args.fp16 else "fp32"
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.seq, args.hidden)
    bases = [int(b) for b in args.bases.split(",")]
    offsets = [int(o) for o in args.offsets.split(",")]
    widths = sorted({b + o for b in bases for o in offsets})
    runners, keep = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for w in widths:
            path = export_block(MLP(args.hidden, w).eval(), x, Path(tmp) / f"mlp{w}.onnx", precision)
            rt = OrtRuntime(name, threads=args.threads if name == "ort-cpu" else None).load(path)
            feed = {"hidden_states": x.numpy().astype(np.float32)}
            runners[w] = (lambda rt=rt, feed=feed: rt.session.run(None, feed))
            keep.append(rt)
        print(f"timing {len(runners)} MLPs ({args.batch} x {args.seq} x {args.hidden}) on {name}, {args.rounds} interleaved rounds ...", flush=True)
        res = time_interleaved(runners, rounds=args.rounds, iters=args.iters, warmup=3)
    ms = {w: res[w]["median_ms"] for w in widths}
    rows = []
    print(f"{'base':>6} {'width':>6} {'align':>6} {'ms':>9} {'us/neuron':>10} {'rel/neuron':>11}")
    for b in bases:
        per = ms[b] / b
        for o in offsets:
            w = b + o
            align = max(m for m in (64, 32, 16, 8, 4, 2, 1) if w % m == 0)
            rel = (ms[w] / w) / per
            rows.append({"base": b, "width": w, "alignment": align, "median_ms": ms[w], "us_per_neuron": ms[w] / w * 1e3,
                         "relative_time_per_neuron": rel, "n": res[w]["n"]})
            print(f"{b:>6} {w:>6} {align:>6} {ms[w]:>9.3f} {ms[w] / w * 1e3:>10.4f} {rel:>11.3f}")
    by_align = {}
    for r in rows:
        if r["width"] != r["base"]:
            by_align.setdefault(r["alignment"], []).append(r["relative_time_per_neuron"])
    summary = {str(k): float(np.median(v)) for k, v in sorted(by_align.items(), reverse=True)}
    print("median time per neuron relative to the 64-aligned base, by alignment of the width:", summary)
    out = args.out or ROOT / "results" / f"alignment_{args.provider}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "environment": environment(),
                               "rows": rows, "summary_relative_per_neuron_by_alignment": summary}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
