"""End-to-end ``optin-deploy build`` of a Swin and a DINOv2 classifier on an image folder, then a
longer interleaved onnxruntime CPU benchmark of the two ONNX files each build wrote.

    python benchmarks/vision_builds.py --data /tmp/fashion-folder --workdir /tmp/vision-builds

* ``--data``: an image folder (one sub-folder per class; ``benchmarks/fashion_image_folder.py`` writes
  one from Fashion-MNIST, which this script does itself when the folder does not exist).
* Swin: the zoo's ``swin-fashion-mnist`` (trained from scratch on Fashion-MNIST; prepared if missing).
* DINOv2: no DINOv2 checkpoint is reachable from this machine, so the script writes a seeded,
  randomly initialised ``Dinov2ForImageClassification`` with the SwiGLU MLP and layer scale
  (28x28 grey images, patch 4, hidden 128, 4 layers, 4 heads) to ``WORKDIR/dinov2-random``. Its
  accuracy is chance level and means nothing; its build shows the structure, MACs and speed.

Each build runs ``python -m optin_deploy.cli build --model M --data D --flops F --out WORKDIR/build-<family>``
(the x86-cpu-ort profile, batch 8 in its own benchmark), then ``optin-deploy bench`` times the
dense and pruned ONNX files interleaved at ``--batch`` (default 64: at batch 8 these models run in
about a millisecond and the ratio is noise). Writes ``results/vision_builds.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def log(msg: str) -> None:
    print(f"[vision-builds] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def make_dinov2(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import Dinov2Config, Dinov2ForImageClassification, ViTImageProcessor

    from optin_deploy.data.builtin import FASHION_LABELS, FASHION_MEAN, FASHION_STD

    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(seed)
    cfg = Dinov2Config(image_size=28, patch_size=4, num_channels=1, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                       mlp_ratio=4, use_swiglu_ffn=True, layerscale_value=0.5, num_labels=10,
                       id2label=dict(enumerate(FASHION_LABELS)), label2id={n: i for i, n in enumerate(FASHION_LABELS)})
    model = Dinov2ForImageClassification(cfg).eval()
    model.save_pretrained(folder)
    ViTImageProcessor(do_resize=True, size={"height": 28, "width": 28}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                      image_mean=[FASHION_MEAN], image_std=[FASHION_STD]).save_pretrained(folder)
    return folder


def run(cmd: list[str]) -> None:
    log(" ".join(cmd))
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--families", default="swin,dinov2")
    p.add_argument("--flops", type=float, default=0.6)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--out", default=str(ROOT / "results"))
    p.add_argument("--calib-samples", type=int, default=None, help="passed to build (default: build's 128)")
    p.add_argument("--reuse", action="store_true", help="keep an existing build in WORKDIR (only re-run the benchmark)")
    args = p.parse_args(argv)
    work, out = Path(args.workdir), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if not Path(args.data).exists():
        run([sys.executable, str(ROOT / "benchmarks" / "fashion_image_folder.py"), "--out", args.data])
    py = [sys.executable, "-m", "optin_deploy.cli"]
    results_file = out / "vision_builds.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    for fam in [f for f in args.families.split(",") if f]:
        if fam == "swin":
            from optin_deploy import zoo

            model = str(zoo.prepare("swin-fashion-mnist"))
        elif fam == "dinov2":
            model = str(make_dinov2(work / "dinov2-random"))
        else:
            raise SystemExit(f"unknown family {fam!r}")
        build = work / f"build-{fam}"
        t0 = time.perf_counter()
        if args.reuse and (build / "report.json").exists():
            log(f"{fam}: reusing the build in {build}")
        else:
            extra = ["--calib-samples", str(args.calib_samples)] if args.calib_samples else []
            run(py + ["build", "--model", model, "--data", args.data, "--flops", str(args.flops), "--out", str(build)] + extra)
        build_s = json.loads((build / "report.json").read_text()).get("build_seconds", time.perf_counter() - t0)
        bench_json = work / f"bench-{fam}.json"
        run(py + ["bench", str(build / "onnx" / "dense" / "model.onnx"), str(build / "onnx" / "pruned" / "model.onnx"), "--batch", str(args.batch),
                  "--iters", str(args.iters), "--threads", "2", "--json", str(bench_json)])
        rep = json.loads((build / "report.json").read_text())
        bench = json.loads(bench_json.read_text())
        results[fam] = {"model": model, "data": args.data, "flops": args.flops, "build_seconds": round(build_s, 1),
                        "report": {k: rep.get(k) for k in ("model", "budget", "macs", "accuracy", "latency_ms", "throughput",
                                                            "scoring_seconds", "structure", "parity")},
                        "bench": bench, "bench_batch": args.batch, "bench_iters": args.iters,
                        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": "2-core x86-64 CPU, shared with other jobs"}
        out.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(results, indent=1, default=str))
        log(f"{fam}: wrote {results_file}")
    (out / "vision_builds.md").write_text(markdown(results))
    log(f"wrote {out / 'vision_builds.md'}")


def _speedup(bench: dict) -> str:
    m = bench["models"]
    d, q = m["dense"]["p50_ms"], m["pruned"]["p50_ms"]
    return f"{d:.2f} -> {q:.2f} ms (x{d / q:.2f})"


def markdown(results: dict) -> str:
    lines = ["# End-to-end builds of vision families beyond plain ViT", "",
             "`python benchmarks/vision_builds.py --data DATA --workdir WORK` on a 2-core x86-64 CPU shared with other jobs "
             "(absolute times are noisy; ratios come from interleaved runs).", "",
             "| family | model | MACs dense -> pruned | accuracy dense -> pruned (onnxruntime, test split of the folder) | "
             "build bench p50, batch 8 | `optin-deploy bench` p50 | kept heads / neurons per layer |",
             "|---|---|---|---|---|---|---|"]
    for fam, r in results.items():
        rep = r["report"]
        macs, acc, lat = rep.get("macs") or {}, rep.get("accuracy") or {}, rep.get("latency_ms") or {}
        st = rep.get("structure") or {}
        b8 = f"{lat['dense']['p50']:.2f} -> {lat['pruned']['p50']:.2f} ms (x{lat['dense']['p50'] / lat['pruned']['p50']:.2f})"
        kept = f"{st['heads']['pruned']} / {st['neurons']['pruned']} of {st['heads']['dense']} / {st['neurons']['dense']}"
        a = f"{acc['dense']:.2f} -> {acc['pruned']:.2f} (agreement {acc['agreement']:.1f}%)"
        lines.append(f"| {fam} | `{Path(r['model']).name}` | {macs.get('dense'):,} -> {macs.get('pruned'):,} (x{macs.get('ratio')}) | {a} | "
                     f"{b8} | {_speedup(r['bench'])} at batch {r['bench_batch']}, {r['bench_iters']} rounds | {kept} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
