"""Is the reported (blocks) timing off, or is the host drifting? Session 15.

    python benchmarks/harness_modes.py BUNDLE [--shapes 8x64,1x128] [--repeats 2]
    python benchmarks/harness_modes.py BUNDLE --after openvino   # the same after an OpenVINO model ran in this process

For each shape and repeat, one process times the bundle's onnxruntime dense and pruned artefacts four ways, one
after the other: blocks of 10 with 50 ms settling (what ``bench`` / ``build`` report), the same with onnxruntime's
spinning off, one model at a time, and blocks with 200 ms settling. ``--after openvino``: blocks before and after an
OpenVINO bf16 model of the same dense graph ran 5 times in this process. Prints p50 ms per model; session 15's output
is ``results/harness_modes_s15.txt``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from deploy_latency import feeds_for  # noqa: E402
from optin_deploy.bench import benchmark  # noqa: E402
from optin_deploy.runtimes.ort import OrtRuntime  # noqa: E402

WAYS = [("blocks spin", "blocks", True, 0.05), ("blocks nospin", "blocks", False, 0.05),
        ("seq spin", "sequential", True, 0.05), ("blocks spin settle0.2", "blocks", True, 0.2)]


def timed(arts: dict, feed: dict, mode: str = "blocks", spinning: bool = True, settle: float = 0.05) -> dict:
    res = benchmark({l: (OrtRuntime("ort-cpu", threads=2, spinning=spinning), a) for l, a in arts.items()}, feed, warmup=5,
                    iters=60, mode=mode, block=10, baseline="dense", progress=False, settle_seconds=settle)
    return {l: round(res["models"][l]["p50_ms"], 1) for l in arts}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--shapes", default="8x64,1x128")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--after", choices=["openvino"], default=None)
    args = ap.parse_args()
    arts = {l: args.bundle / "onnx" / l / "model.onnx" for l in ("dense", "pruned")}
    for a in arts.values():
        if not a.exists():
            sys.exit(f"error: {a} not found: pass a bundle built for onnxruntime (optin-deploy build --profile x86-cpu-ort)")
    for shape in [tuple(map(int, s.split("x"))) for s in args.shapes.split(",")]:
        feed = feeds_for(args.bundle, *shape)
        if args.after == "openvino":
            from optin_deploy.runtimes.base import get_runtime

            print(shape, "fresh", timed(arts, feed), flush=True)
            ov = get_runtime("openvino-cpu-bf16", threads=2)
            ov.load(args.bundle / "onnx" / "dense" / "model.fp32.onnx")
            for _ in range(5):
                ov.run(feed)
            print(shape, "after openvino ran (object alive)", timed(arts, feed), flush=True)
            continue
        for rep in range(args.repeats):
            for name, mode, spin, settle in WAYS:
                print(shape, rep, name, timed(arts, feed, mode, spin, settle), flush=True)


if __name__ == "__main__":
    main()
