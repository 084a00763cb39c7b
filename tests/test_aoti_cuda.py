"""AOTInductor packages compiled for a CUDA GPU (``export --format aoti --device cuda``, runtime ``torch-aoti-cuda``,
profile ``nvidia-gpu-aoti-fp16``).

Without a GPU: the refusals (one line, non-zero exit, nothing written) and the checks that need no compile. With one
(marked ``gpu``): tiny random BERTs, dense and pruned with uneven heads, compiled in fp16 and bf16, parity-checked,
run and timed through the package, and a whole build on the GPU profile.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert, run_cli, text_inputs
from test_build import tiny_text_task  # noqa: F401 - the tiny task (fixture) of the build tests

from optin_deploy.errors import MissingRuntimeError, OptinError
from optin_deploy.exporters import ShapeProfile, export_to_folder
from optin_deploy.runtimes import get_runtime

PROFILE = ShapeProfile(min_batch=1, opt_batch=4, max_batch=16, min_seq=1, opt_seq=16, max_seq=64)
HAS_CUDA = torch.cuda.is_available()
no_cuda = pytest.mark.skipif(HAS_CUDA, reason="checks the refusal on a machine without a CUDA GPU")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def test_gpu_aoti_profile():
    from optin_deploy.profiles import load_profile

    p = load_profile("nvidia-gpu-aoti-fp16")
    assert (p.runtime, p.runtime_name, p.precision, p.device, p.is_gpu) == ("torch-aoti-cuda", "torch-aoti-cuda", "fp16", "gpu", True)


@pytest.mark.parametrize("change, match", [
    ({"precision": "int8"}, "precision int8"),
    ({"device": "cpu"}, "needs a GPU"),
])
def test_gpu_aoti_profile_refusals(change, match):
    from optin_deploy.profiles import parse_profile

    base = {"name": "g", "runtime": "torch-aoti-cuda", "device": "gpu", "precision": "fp16", "batch_size": 8, "threads": 1,
            "head_multiple": 1, "neuron_multiple": 8}
    assert parse_profile(dict(base)).precision == "fp16"
    for prec in ("fp32", "bf16"):
        assert parse_profile({**base, "precision": prec}).precision == prec
    with pytest.raises(OptinError, match=match):
        parse_profile({**base, **change})
    with pytest.raises(OptinError, match="torch-aoti-cuda"):  # fp16 on the CPU package names the GPU one
        parse_profile({**base, "runtime": "torch-aoti-cpu", "device": "cpu"})


def test_cpu_package_precisions_and_device_are_checked(tmp_path):
    m = make_tiny_bert(layers=1)
    with pytest.raises(OptinError, match="--device cuda"):
        export_to_folder(m, text_inputs(4, 16), tmp_path / "a", fmt="aoti", precision="fp16", profile=PROFILE)
    with pytest.raises(OptinError, match="--format aoti"):
        export_to_folder(m, text_inputs(4, 16), tmp_path / "b", fmt="onnx", device="cuda", profile=PROFILE)
    with pytest.raises(OptinError, match="cpu or cuda"):
        export_to_folder(m, text_inputs(4, 16), tmp_path / "c", fmt="aoti", device="mps", profile=PROFILE)
    assert not any(tmp_path.iterdir()) or all(not any(p.iterdir()) for p in tmp_path.iterdir())


@no_cuda
def test_cuda_package_without_a_gpu_is_one_line(tmp_path):
    with pytest.raises(MissingRuntimeError, match="CUDA GPU"):
        export_to_folder(make_tiny_bert(layers=1), text_inputs(4, 16), tmp_path / "b", fmt="aoti", device="cuda", precision="fp16", profile=PROFILE)
    with pytest.raises(MissingRuntimeError, match="CUDA GPU"):
        get_runtime("torch-aoti-cuda")
    model_dir = tmp_path / "m"
    make_tiny_bert(layers=1).save_pretrained(model_dir)
    proc = run_cli("export", model_dir, "--format", "aoti", "--device", "cuda", "--precision", "fp16", "--out", tmp_path / "out", check=False)
    assert proc.returncode != 0 and "CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


@no_cuda
def test_gpu_profile_build_stops_before_any_work(tiny_text_task, tmp_path):
    task = tiny_text_task
    out = tmp_path / "b"
    proc = run_cli("build", "--model", str(task / "model"), "--data", str(task / "data.csv"), "--profile", "nvidia-gpu-aoti-fp16",
                   "--out", str(out), check=False)
    assert proc.returncode != 0 and "CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert "scoring" not in proc.stderr and not out.exists()


def test_cuda_package_members_are_accepted(tmp_path):
    """A CUDA package carries the kernels' cubins (at any depth under data/aotinductor/model/); foreign files stay refused."""
    from optin_deploy.runtimes.aoti import package_members_error

    p = tmp_path / "model.pt2"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("model/archive_format", "pt2")
        z.writestr("model/data/aotinductor/model/x.wrapper.so", b"\x7fELF")
        z.writestr("model/data/aotinductor/model/c1f/triton_poi_fused_0.cubin", b"\0")
        z.writestr("model/data/aotinductor/model/k.fatbin", b"\0")
    assert package_members_error(p) is None
    with zipfile.ZipFile(p, "a") as z:
        z.writestr("model/data/aotinductor/model/weights.pkl", b"\x80")
    assert "weights.pkl" in package_members_error(p)


def test_a_package_runs_only_on_the_device_it_was_compiled_for(tmp_path):
    from optin_deploy.data.assets import sha256_file
    from optin_deploy.runtimes.aoti import AotiRuntime

    p = tmp_path / "model.pt2"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("model/data/aotinductor/model/x.wrapper.so", b"\x7fELF")
    meta = {"sha256": sha256_file(p), "torch_version": torch.__version__, "device": "cuda"}
    with pytest.raises(OptinError, match="torch-aoti-cuda"):
        AotiRuntime("torch-aoti-cpu").load_package(p, meta)


def test_a_crashing_loader_is_one_line_not_a_crash(tmp_path, monkeypatch):
    """A CUDA package is loaded first in a child process: a loader that segfaults (torch 2.11 on an H200 host did, for
    every package) gives a one-line error instead of killing the build."""
    import optin_deploy.exporters.aoti as aoti

    pkg = tmp_path / "model.pt2"
    pkg.write_bytes(b"\0")
    monkeypatch.setattr(aoti, "PROBE_CODE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(OptinError, match="crashed \\(SIGSEGV\\).*model.pt2.*ONNX / TensorRT") as ei:
        aoti.probe_load(pkg)
    assert "\n" not in str(ei.value)
    monkeypatch.setattr(aoti, "PROBE_CODE", "import sys; sys.exit('RuntimeError: no kernel image for this device')")
    with pytest.raises(OptinError, match="no kernel image"):
        aoti.probe_load(pkg)
    monkeypatch.setattr(aoti, "PROBE_CODE", "import sys; assert sys.argv[1].endswith('model.pt2')")
    aoti.probe_load(pkg)


# ---- on a CUDA GPU ----------------------------------------------------------------------------------------------

def _pruned_tiny():
    from optin_deploy.core import surgery

    model = make_tiny_bert(layers=3)
    plan = surgery.random_plan(model, seed=3, empty_heads_layer=1)
    return surgery.apply_plan(model, plan)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_package_parity_and_run(tmp_path, precision):
    for label, model in (("dense", make_tiny_bert(layers=3)), ("pruned", _pruned_tiny())):
        b = tmp_path / label
        m = export_to_folder(model, text_inputs(4, 16), b, fmt="aoti", device="cuda", precision=precision, profile=PROFILE)
        meta = m["artifacts"]["aoti"]
        assert m["runtime"] == "torch-aoti-cuda" and meta["device"] == "cuda" and meta["precision"] == precision
        assert meta["parity"]["passed"] and len(meta["parity"]["cases"]) >= 2
        assert next(model.parameters()).device.type == "cpu" and next(model.parameters()).dtype == torch.float32  # left as it was
        rt = get_runtime("torch-aoti-cuda").load(b)
        x = {k: v.numpy() for k, v in text_inputs(3, 12).items()}
        got = rt.run(x)
        with torch.inference_mode():
            want = model.eval()(**{k: torch.from_numpy(v) for k, v in x.items()}).logits.numpy()
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got - want).max() < 0.05
        assert rt.describe()["device"] == "cuda" and rt.describe()["precision"] == precision
        with pytest.raises(OptinError, match="torch-aoti-cuda"):
            get_runtime("torch-aoti-cpu").load(b)
        assert json.loads((b / "export.json").read_text())["runtime"] == "torch-aoti-cuda"


@pytest.mark.gpu
@pytest.mark.slow
@needs_cuda
def test_build_on_the_gpu_aoti_profile(tiny_text_task, tmp_path):
    task = tiny_text_task
    out = tmp_path / "b"
    run_cli("build", "--model", str(task / "model"), "--data", str(task / "data.csv"), "--flops", "0.5", "--profile", "nvidia-gpu-aoti-fp16",
            "--calib-samples", "16", "--bench-iters", "5", "--scoring", "exact", "--out", str(out))
    r = json.loads((out / "report.json").read_text())
    assert r["runtime"] == "torch-aoti-cuda" and r["precision"] == "fp16"
    assert r["latency_ms"]["pruned"]["p50"] > 0 and 0 <= r["accuracy"]["pruned"] <= 100
    for label in ("dense", "pruned"):
        m = json.loads((out / "aoti" / label / "export.json").read_text())
        assert m["runtime"] == "torch-aoti-cuda" and m["artifacts"]["aoti"]["parity"]["passed"]
    proc = run_cli("bench", str(out), "--iters", "5", "--batch", "4", "--seq-len", "16")
    assert "torch-aoti-cuda" in proc.stdout
