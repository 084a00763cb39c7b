"""Does this torch load AOTInductor CUDA packages on this GPU host? (no project code needed)

Compiles a one-layer Linear+GELU package for CUDA two ways (default: cubins beside the .so; embed: cubins inside
it) and loads each in fresh processes several ways, printing each child's exit code (-11: the loader crashed with
SIGSEGV). On the H200 host of session 14 (torch 2.11.0+cu130) the default package crashed on load with the default
options and with run_single_threaded=True; the other rows did not run before that step's time limit.

Usage, on a CUDA host from a checkout::

    python benchmarks/aoti_cuda_load_probe.py compile && python benchmarks/aoti_cuda_load_probe.py loads
"""
import subprocess, sys, time, zipfile

import torch

mode = sys.argv[1]
if mode == "compile":
    class M(torch.nn.Module):
        def __init__(s):
            super().__init__()
            s.l = torch.nn.Linear(64, 64)

        def forward(s, x):
            return torch.nn.functional.gelu(s.l(x))

    m = M().cuda().eval()
    ep = torch.export.export(m, (torch.randn(4, 64, device="cuda"),))
    for name, cfg in [("default", {}), ("embed", {"aot_inductor.embed_kernel_binary": True})]:
        t = time.time()
        try:
            torch._inductor.aoti_compile_and_package(ep, package_path=f"/tmp/diag_{name}.pt2", inductor_configs=cfg)
            print(name, "compiled", round(time.time() - t, 1), [n for n in zipfile.ZipFile(f"/tmp/diag_{name}.pt2").namelist()][:12], flush=True)
        except Exception as e:
            print(name, "compile failed", type(e).__name__, str(e)[:300], flush=True)
elif mode == "load":
    path, variant = sys.argv[2], sys.argv[3]
    if variant == "ort":
        import onnx, onnxruntime  # noqa: F401
    if variant == "optin":
        sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
        import optin_deploy.exporters.export_folder  # noqa: F401
    kw = {"single": {"run_single_threaded": True}, "dev0": {"device_index": 0}}.get(variant, {})
    torch.cuda.init()
    m = torch._inductor.aoti_load_package(path, **kw)
    print("loaded", flush=True)
    print("ran", tuple(m(torch.randn(2, 64, device="cuda")).shape), flush=True)
else:
    for pkg, v in (("default", "plain"), ("default", "single"), ("default", "optin"), ("embed", "plain"), ("embed", "optin")):
        if True:
            p = subprocess.run([sys.executable, __file__, "load", f"/tmp/diag_{pkg}.pt2", v], capture_output=True, text=True, timeout=90)
            print(pkg, v, "rc", p.returncode, p.stdout.strip().replace("\n", " | "), (p.stderr.strip().splitlines() or [""])[-1][:200], flush=True)
