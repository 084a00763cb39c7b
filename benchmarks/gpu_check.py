"""One short run of every GPU path that can run on a lent CUDA host, each step in its own process with its own
time limit, results as JSON (``benchmarks/gpu_check.sh`` runs it; nothing here is a claim until a run's JSON is read).

Steps (``python benchmarks/gpu_check.py STEP OUT_DIR``):

* ``env``: GPU, driver, torch / CUDA / Triton / compiler versions, which GPU libraries import (onnxruntime's
  providers, tensorrt, torch_tensorrt).
* ``aoti_probe``: why (or whether) ``aoti_load_package`` crashes on CUDA packages (session 14: SIGSEGV on every one,
  torch 2.11.0+cu130 on an H200). A one-layer package is compiled here, then loaded in fresh processes: plain, with
  ``torch.cuda.init()`` first, with ``device_index=0``, with ``run_single_threaded``, and the kernels embedded in the
  .so; each child's exit status, its Python stack from faulthandler, the .so's ``ldd`` (which libtorch / libcuda /
  libstdc++ it binds) and, where gdb is installed, the native backtrace. ``torch.compile`` of the same layer tells a
  Triton / driver problem (both fail) from a loader problem (only the package fails).
* ``timing``: a MiniLM-sized BERT classifier (6 layers, 384 wide, 12 heads, random weights: latency does not depend on
  the values) timed with optin-deploy's own benchmark (blocks, warm-up, host arrays in and logits back inside each
  timing; runs return host arrays, so every timing ends after the GPU finished) at 8 x 128 and 64 x 128 on each way
  that runs here: PyTorch eager fp32 / fp16 / bf16, torch.compile fp16, the AOTInductor fp16 package
  (``export --format aoti --device cuda``, parity-checked against eager fp32), onnxruntime's CUDA provider (fp32
  ONNX) and TensorRT provider, and a TensorRT fp16 engine, where those libraries are installed. A way that fails is
  recorded with its one-line reason; the others go on. Peak GPU memory per way as bench reports it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _run(cmd, timeout=120, **kw) -> dict:
    t = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        return {"cmd": " ".join(map(str, cmd)), "rc": p.returncode, "seconds": round(time.time() - t, 1),
                "stdout": p.stdout[-3000:], "stderr": p.stderr[-4000:]}
    except subprocess.TimeoutExpired:
        return {"cmd": " ".join(map(str, cmd)), "rc": "timeout", "seconds": timeout}
    except OSError as exc:
        return {"cmd": " ".join(map(str, cmd)), "rc": "not run", "error": str(exc)}


def step_env(out: Path) -> dict:
    import torch

    d: dict = {"python": platform.python_version(), "torch": torch.__version__, "cuda_build": torch.version.cuda,
               "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        d["gpu"] = torch.cuda.get_device_name()
        d["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        d["mem_total_gb"] = round(torch.cuda.mem_get_info()[1] / 2**30, 1)
    for mod in ("triton", "onnxruntime", "tensorrt", "torch_tensorrt", "transformers", "onnx"):
        try:
            m = __import__(mod)
            d[mod] = getattr(m, "__version__", "?")
            if mod == "onnxruntime":
                d["onnxruntime_providers"] = m.get_available_providers()
        except Exception as exc:  # noqa: BLE001
            d[mod] = f"not importable: {type(exc).__name__}: {str(exc)[:160]}"
    d["nvidia_smi"] = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"], 30).get("stdout", "")
    d["cxx"] = _run([os.environ.get("CXX", "g++"), "--version"], 30).get("stdout", "").split("\n")[0]
    d["gdb"] = shutil.which("gdb")
    try:  # the ptxas Triton compiles the kernels with (a package's cubins need a driver that loads its output)
        import triton

        ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
        d["ptxas"] = _run([str(ptxas) if ptxas.exists() else "ptxas", "--version"], 30).get("stdout", "")[-200:]
    except Exception as exc:  # noqa: BLE001
        d["ptxas"] = f"unknown ({type(exc).__name__})"
    return d


LOAD_CHILD = r"""
import faulthandler, sys, torch
faulthandler.enable()
path, variant = sys.argv[1], sys.argv[2]
if variant == "init_first":
    torch.cuda.init(); torch.empty(1, device="cuda")
kw = {"dev0": {"device_index": 0}, "single": {"run_single_threaded": True}}.get(variant, {})
m = torch._inductor.aoti_load_package(path, **kw)
print("loaded", flush=True)
y = m(torch.randn(2, 64, device="cuda"))
torch.cuda.synchronize()
print("ran", tuple(y.shape), flush=True)
"""

COMPILE_CHILD = r"""
import sys, torch
class M(torch.nn.Module):
    def __init__(s):
        super().__init__(); s.l = torch.nn.Linear(64, 64)
    def forward(s, x):
        return torch.nn.functional.gelu(s.l(x))
m = M().cuda().eval()
x = torch.randn(4, 64, device="cuda")
if sys.argv[1] == "compile_fn":
    y = torch.compile(m)(x); torch.cuda.synchronize(); print("torch.compile ran", tuple(y.shape)); sys.exit(0)
ep = torch.export.export(m, (x,))
cfg = {"aot_inductor.embed_kernel_binary": True} if sys.argv[1] == "embed" else {}
print(torch._inductor.aoti_compile_and_package(ep, package_path=sys.argv[2], inductor_configs=cfg))
"""


def step_aoti_probe(out: Path) -> dict:
    import zipfile

    d: dict = {"compile": {}, "loads": {}}
    work = Path("/tmp/gpu_check_aoti")
    work.mkdir(exist_ok=True)
    d["torch_compile_same_layer"] = _run([sys.executable, "-c", COMPILE_CHILD, "compile_fn"], 150)
    for kind in ("default", "embed"):
        pkg = work / f"{kind}.pt2"
        d["compile"][kind] = _run([sys.executable, "-c", COMPILE_CHILD, kind, str(pkg)], 240)
        if not pkg.is_file():
            continue
        names = zipfile.ZipFile(pkg).namelist()
        d["compile"][kind]["members"] = names[:30]
        so = [n for n in names if n.endswith(".so")]
        if so:  # which libraries the compiled model binds to (a libtorch / libstdc++ / libcuda mismatch shows here)
            ex = work / f"{kind}_x"
            zipfile.ZipFile(pkg).extract(so[0], ex)
            d["compile"][kind]["ldd"] = _run(["ldd", str(ex / so[0])], 30).get("stdout", "")[-2500:]
        variants = ("plain", "init_first", "dev0", "single") if kind == "default" else ("plain",)
        for v in variants:
            r = _run([sys.executable, "-X", "faulthandler", "-c", LOAD_CHILD, str(pkg), v], 90)
            d["loads"][f"{kind}/{v}"] = r
        if shutil.which("gdb") and d["loads"][f"{kind}/plain"].get("rc") not in (0, "timeout"):
            d["loads"][f"{kind}/plain"]["gdb"] = _run(
                ["gdb", "-batch", "-ex", "run", "-ex", "bt 25", "--args", sys.executable, "-c", LOAD_CHILD, str(pkg), "plain"], 150
            ).get("stdout", "")[-4000:]
    return d


def step_timing(out: Path) -> dict:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from optin_deploy.bench import benchmark
    from optin_deploy.exporters import ShapeProfile, export_to_folder
    from optin_deploy.runtimes.base import get_runtime

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                     max_position_embeddings=512, num_labels=2)
    model = BertForSequenceClassification(cfg).eval()
    shapes = [(8, 128), (64, 128)]
    profile = ShapeProfile(min_batch=1, opt_batch=64, max_batch=64, min_seq=1, opt_seq=128, max_seq=128)
    ex = {"input_ids": torch.randint(0, 30522, (8, 128)), "attention_mask": torch.ones(8, 128, dtype=torch.long)}
    work = Path("/tmp/gpu_check_timing")
    work.mkdir(exist_ok=True)
    ways: dict = {}
    errors: dict = {}
    exports: dict = {}

    def add(label, make):
        t = time.time()
        try:
            ways[label] = make()
        except Exception as exc:  # noqa: BLE001 - a way that cannot run here: its reason, the others go on
            errors[label] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        exports[label] = round(time.time() - t, 1)
        partial()

    def partial():  # what is known so far, in case the step's time limit ends it
        (out / "gpu_check_timing.partial.json").write_text(json.dumps(
            {"setup_seconds": exports, "not_run": errors, "shapes": res.get("shapes", {})}, indent=1, default=str))

    res: dict = {}

    for prec in ("fp32", "fp16", "bf16"):
        add(f"eager {prec}", lambda prec=prec: get_runtime("torch-cuda", precision=prec).load(model))
    add("torch.compile fp16", lambda: get_runtime("torch-cuda", precision="fp16", compile=True).load(model))

    def aoti():
        export_to_folder(model, ex, work / "aoti", fmt="aoti", device="cuda", precision="fp16", profile=profile)
        return get_runtime("torch-aoti-cuda").load(work / "aoti")

    add("AOTInductor package fp16", aoti)

    def onnx():
        if not (work / "onnx" / "export.json").exists():
            export_to_folder(model, ex, work / "onnx", fmt="onnx", profile=profile)
        return work / "onnx"

    add("onnxruntime CUDA fp32", lambda: get_runtime("ort-cuda").load(onnx()))
    add("onnxruntime TensorRT fp16", lambda: get_runtime("ort-tensorrt", provider_options={"trt_fp16_enable": True}).load(onnx()))
    add("TensorRT engine fp16", lambda: (export_to_folder(model, ex, work / "trt", fmt="tensorrt", precision="fp16", profile=profile),
                                         get_runtime("tensorrt").load(work / "trt"))[1])
    res.update({"model": "BertForSequenceClassification 6 x 384, 12 heads, random weights", "setup_seconds": exports,
                "not_run": errors, "shapes": {}})
    for b, s in shapes:
        feed = {"input_ids": torch.randint(0, 30522, (b, s)).numpy(), "attention_mask": torch.ones(b, s, dtype=torch.long).numpy()}
        try:
            r = benchmark({k: (rt, None) for k, rt in ways.items()}, feed, warmup=10, iters=30, mode="blocks", block=10,
                          progress=False, baseline="eager fp32" if "eager fp32" in ways else None)
            res["shapes"][f"{b}x{s}"] = {k: {"p50_ms": round(v["p50_ms"], 3), "p90_ms": None if v["p90_ms"] is None else round(v["p90_ms"], 3),
                                             "peak_memory_mb": v.get("peak_memory_mb"), "memory_method": v.get("memory_method"),
                                             "runtime": v.get("runtime")} for k, v in r["models"].items()}
        except Exception as exc:  # noqa: BLE001
            res["shapes"][f"{b}x{s}"] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}", "trace": traceback.format_exc()[-2000:]}
        partial()
    return res


STEPS = {"env": step_env, "aoti_probe": step_aoti_probe, "timing": step_timing}

if __name__ == "__main__":
    step, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    try:
        result = STEPS[step](out)
    except Exception as exc:  # noqa: BLE001
        result = {"error": f"{type(exc).__name__}: {str(exc)[:500]}", "trace": traceback.format_exc()[-3000:]}
    result["step_seconds"] = round(time.time() - t0, 1)
    (out / f"gpu_check_{step}.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({"step": step, "seconds": result["step_seconds"], "error": result.get("error")}), flush=True)
