"""Does OpenVINO run a bundle faster compiled for one static shape than with the exported dynamic shapes?

A server that pads to a few fixed shapes can compile one model per shape (``model.reshape`` before
``compile_model``). This times the bundle's dense and pruned ONNX files both ways, interleaved in blocks of 10
consecutive runs (30 rounds after 3 warm-up runs each), OpenVINO bf16 inference, 2 threads, LATENCY hint:

    python benchmarks/ov_static_shapes.py --bundle optin-build --shapes 1x128,8x128

Prints one line per shape: p50 ms of each, and the dense / pruned ratio both ways.
"""

from __future__ import annotations

import argparse
import statistics as st
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bundle", required=True)
    p.add_argument("--shapes", default="1x128,8x128")
    p.add_argument("--precision", default="bf16", help="OpenVINO INFERENCE_PRECISION_HINT: bf16 or f32")
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    import openvino as ov

    core = ov.Core()
    cfg = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": args.precision, "INFERENCE_NUM_THREADS": 2}

    def compiled(path: str, shape=None):
        m = core.read_model(path)
        if shape:
            m.reshape({i.get_any_name(): ov.PartialShape(list(shape)) for i in m.inputs})
        return core.compile_model(m, "CPU", cfg).create_infer_request()

    for spec in args.shapes.split(","):
        b, s = (int(x) for x in spec.split("x"))
        rng = np.random.default_rng(0)
        feed = {"input_ids": rng.integers(1000, 2000, (b, s)).astype(np.int64), "attention_mask": np.ones((b, s), np.int64)}
        reqs = {f"{k}-{m}": compiled(f"{args.bundle}/onnx/{k}/model.onnx", (b, s) if m == "static" else None)
                for k in ("dense", "pruned") for m in ("dynamic", "static")}
        t = {k: [] for k in reqs}
        for _ in range(args.rounds):
            for k, q in reqs.items():
                for _ in range(3):
                    q.infer(feed)
                for _ in range(10):
                    t0 = time.perf_counter()
                    q.infer(feed)
                    t[k].append(1000 * (time.perf_counter() - t0))
        med = {k: st.median(v) for k, v in t.items()}
        print(f"{spec}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items())
              + f"; dense/pruned dynamic {med['dense-dynamic'] / med['pruned-dynamic']:.3f}x, static {med['dense-static'] / med['pruned-static']:.3f}x", flush=True)


if __name__ == "__main__":
    main()
