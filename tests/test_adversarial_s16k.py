"""Session 16k: the GPU paths that have never run (TensorRT, torch-tensorrt, onnxruntime's CUDA / TensorRT providers,
AOTInductor on CUDA), checked where no GPU and no TensorRT are needed: what onnxruntime is asked to run with, the
precision its TensorRT provider is timed at, how GPU memory is counted, the shape profiles the engines are built for,
and the one-line refusals where the library or the GPU is missing. Nothing here builds or fakes an engine or a timing."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from optin_deploy.errors import MissingRuntimeError, OptinError

HAS_CUDA = torch.cuda.is_available()
HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_TORCH_TRT = importlib.util.find_spec("torch_tensorrt") is not None


# ------------------------------------------------------------------ onnxruntime's providers


def test_tensorrt_provider_has_cuda_behind_it():
    """onnxruntime's TensorRT docs: register CUDA behind TensorRT so the nodes TensorRT does not take run on the GPU;
    the session had TensorRT then CPU only, so those nodes ran on the CPU (copies to the host and back, timed as TensorRT)."""
    from optin_deploy.runtimes.ort import session_providers

    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session_providers("TensorrtExecutionProvider", {"trt_fp16_enable": True}, gpu) == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": True}), "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session_providers("TensorrtExecutionProvider", None, ["TensorrtExecutionProvider", "CPUExecutionProvider"]) == [
        "TensorrtExecutionProvider", "CPUExecutionProvider"]
    assert session_providers("CUDAExecutionProvider", None, gpu) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert session_providers("CPUExecutionProvider", None, gpu) == ["CPUExecutionProvider"]


def test_tensorrt_provider_options_follow_the_precision():
    """A bf16 TensorRT profile's latency table was timed through onnxruntime's TensorRT provider in fp32 (only fp16 set a flag)."""
    from optin_deploy.runtimes.ort import tensorrt_ep_options

    assert tensorrt_ep_options("fp32") == {}
    assert tensorrt_ep_options("fp16") == {"trt_fp16_enable": True}
    assert tensorrt_ep_options("bf16") == {"trt_bf16_enable": True}
    with pytest.raises(OptinError, match="not int8"):
        tensorrt_ep_options("int8")


def test_gpu_providers_refused_in_one_line_without_onnxruntime_gpu():
    import onnxruntime as ort

    from optin_deploy.runtimes.base import get_runtime

    for name, provider in (("ort-cuda", "CUDAExecutionProvider"), ("ort-tensorrt", "TensorrtExecutionProvider")):
        if provider in ort.get_available_providers():
            continue
        with pytest.raises(MissingRuntimeError) as e:
            get_runtime(name)
        msg = str(e.value)
        assert "\n" not in msg and provider in msg and "onnxruntime-gpu" in msg


def test_lut_timing_runtime_for_trt_profile_is_the_tensorrt_provider():
    """The latency table of a TensorRT profile is timed with onnxruntime's TensorRT provider; missing here, one line."""
    import onnxruntime as ort

    from optin_deploy.lut import ort_runtime_for
    from optin_deploy.target import resolve_target

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime here has the TensorRT provider")
    for name in ("nvidia-dc-trt-fp16", "jetson-orin-trt-fp16"):
        with pytest.raises(MissingRuntimeError, match="TensorrtExecutionProvider"):
            ort_runtime_for(resolve_target(name))


# ------------------------------------------------------------------ GPU memory


def test_cuda_memory_counts_allocations_outside_pytorch():
    """PyTorch's max_memory_allocated alone read about 0 MB for onnxruntime CUDA, TensorRT and AOTInductor weights."""
    from optin_deploy.bench import cuda_peak_bytes

    MB = 2**20
    # onnxruntime / TensorRT: nothing through PyTorch, the device's used memory grew by 300 MB
    assert cuda_peak_bytes(0, 0, 0, 0, 1000 * MB, 1300 * MB) == 300 * MB
    # PyTorch eager: peak 100 MB above the start, its reserve grew 128 MB, all of the device's growth
    assert cuda_peak_bytes(10 * MB, 110 * MB, 0, 128 * MB, 1000 * MB, 1128 * MB) == 100 * MB
    # AOTInductor: weights cudaMalloc'd by the package (50 MB), activations through PyTorch (peak +20 MB, reserve +32 MB)
    assert cuda_peak_bytes(0, 20 * MB, 0, 32 * MB, 1000 * MB, 1082 * MB) == 70 * MB
    # PyTorch released cache to the device meanwhile: never a negative share
    assert cuda_peak_bytes(0, 5 * MB, 64 * MB, 0, 1000 * MB, 936 * MB) == 5 * MB


@pytest.mark.skipif(HAS_CUDA, reason="checks the machine without a usable CUDA")
def test_cuda_memory_probe_without_cuda_is_not_a_number():
    """A GPU runtime beside a torch without CUDA (onnxruntime-gpu, CPU torch): the probe says it did not measure
    instead of crashing the benchmark in torch.cuda.synchronize()."""
    from optin_deploy.bench import MemoryProbe

    with MemoryProbe("cuda") as mem:
        pass
    assert mem.delta is None and mem.method.startswith("not measured")


# ------------------------------------------------------------------ engines' shape profiles


@pytest.mark.parametrize("name, want", [
    ("nvidia-dc-trt-fp16", {"min": [1, 1], "opt": [64, 128], "max": [256, 512]}),
    ("jetson-orin-trt-fp16", {"min": [1, 1], "opt": [1, 128], "max": [8, 256]}),
    ("nvidia-gpu-ort-cuda", {"min": [1, 1], "opt": [32, 128], "max": [128, 512]}),
    ("nvidia-gpu-aoti-fp16", {"min": [1, 1], "opt": [64, 128], "max": [256, 512]}),
])
def test_gpu_profiles_shape_ranges(name, want):
    """What a TensorRT optimisation profile is built with (set_shape(name, min, opt, max)) for each text input; the
    benchmark shape is the opt shape."""
    from optin_deploy.target import resolve_target

    t = resolve_target(name)
    ids = torch.zeros(2, 8, dtype=torch.long)
    shapes = t.profile.shape_profile().shapes({"input_ids": ids, "attention_mask": ids})
    assert shapes["input_ids"] == want and shapes["attention_mask"] == want
    assert [t.batch, t.seq_len] == want["opt"]
    assert t.profile.is_gpu


def test_trt_profile_clamped_to_the_models_positions():
    """A 64-position model on a 512-token profile: the engine's max sequence is 64 (TensorRT would fail at build time
    on a position-embedding Gather out of range otherwise)."""
    from conftest import make_tiny_bert

    from optin_deploy.target import resolve_target

    m = make_tiny_bert(layers=1)
    maxpos = m.config.max_position_embeddings
    s = resolve_target("nvidia-dc-trt-fp16").shape(m)
    assert s.max_seq == maxpos and s.opt_seq <= maxpos and s.max_batch == 256


def test_image_profile_keeps_channels_and_size():
    from optin_deploy.exporters.base import ShapeProfile

    px = torch.zeros(2, 3, 224, 224)
    s = ShapeProfile(1, 64, 256, 1, 128, 512).shapes({"pixel_values": px})
    assert s["pixel_values"] == {"min": [1, 3, 224, 224], "opt": [64, 3, 224, 224], "max": [256, 3, 224, 224]}


# ------------------------------------------------------------------ refusals without TensorRT / a GPU


@pytest.mark.skipif(HAS_TRT and HAS_CUDA, reason="TensorRT and a GPU are here")
def test_tensorrt_refused_in_one_line(tmp_path):
    from conftest import make_tiny_bert, text_inputs

    from optin_deploy.exporters.base import get_exporter
    from optin_deploy.runtimes.base import get_runtime

    with pytest.raises(MissingRuntimeError) as e:
        get_runtime("tensorrt")
    assert "\n" not in str(e.value) and ("pypi.nvidia.com" in str(e.value) or "CUDA GPU" in str(e.value))
    with pytest.raises(MissingRuntimeError):
        get_exporter("tensorrt").export(make_tiny_bert(layers=1), text_inputs(2, 8), tmp_path / "m.engine")
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(HAS_TORCH_TRT and HAS_CUDA, reason="torch-tensorrt and a GPU are here")
def test_torch_tensorrt_refused_in_one_line(tmp_path):
    from conftest import make_tiny_bert, text_inputs

    from optin_deploy.exporters.base import get_exporter
    from optin_deploy.runtimes.base import get_runtime

    with pytest.raises(MissingRuntimeError) as e:
        get_runtime("torch-tensorrt")
    assert "\n" not in str(e.value)
    with pytest.raises(MissingRuntimeError):
        get_exporter("torch-tensorrt").export(make_tiny_bert(layers=1), text_inputs(2, 8), tmp_path / "m.ep")
    assert not any(tmp_path.iterdir())


def test_torch_tensorrt_loaded_program_is_run_as_a_module():
    """torch_tensorrt.load returns the ExportedProgram of a .ep file (run through .module()) or a TorchScript module
    (callable as it is); anything else is one line."""
    from optin_deploy.runtimes.tensorrt import loaded_module

    lin = torch.nn.Linear(4, 2).eval()
    x = torch.randn(3, 4)
    ep = torch.export.export(lin, (x,))
    mod = loaded_module(ep)
    assert torch.allclose(mod(x), lin(x))
    assert loaded_module(lin) is lin
    with pytest.raises(OptinError, match="not a program"):
        loaded_module({"not": "a module"})


def test_tensorrt_dtype_table_knows_int64_inputs():
    """TensorRT 10 keeps int64 token ids as int64 I/O (8.x cast them to int32); the runner sizes its buffers from the
    engine's own types, so both are taken. Checked against the real enum when TensorRT is installed."""
    if not HAS_TRT:
        pytest.skip("TensorRT is not installed here")
    import tensorrt as trt

    from optin_deploy.runtimes.tensorrt import trt_to_torch_dtype

    assert trt_to_torch_dtype(trt, trt.int32) == torch.int32
    if hasattr(trt, "int64"):
        assert trt_to_torch_dtype(trt, trt.int64) == torch.int64


def test_torch_cuda_runtime_refuses_half_precision_on_cpu():
    from optin_deploy.runtimes.base import get_runtime

    with pytest.raises(OptinError, match="runs in fp32"):
        get_runtime("torch-cpu", precision="fp16")
    if not HAS_CUDA:
        with pytest.raises(MissingRuntimeError, match="CUDA GPU"):
            get_runtime("torch-cuda", precision="bf16")


def test_session_settings_recipe_for_gpu_providers():
    """The serving recipe names CUDA behind TensorRT, as the session runs it."""
    from optin_deploy.runtimes.ort import session_settings

    d = session_settings({"backend": "onnxruntime", "runtime": "ort-tensorrt", "provider": "TensorrtExecutionProvider",
                          "providers": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]})
    assert d["providers"] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    d = session_settings({"backend": "onnxruntime", "runtime": "ort-cuda", "provider": "CUDAExecutionProvider"})
    assert d["providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert np.asarray(d["session_config"] == {}).all()
