"""Runtimes: torch and onnxruntime agree; unavailable providers/back-ends are errors, never a fallback."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import image_inputs, make_tiny_bert, make_tiny_timm, text_inputs

from optin_deploy.errors import MissingRuntimeError, OptinError
from optin_deploy.exporters import ShapeProfile, get_exporter
from optin_deploy.runtimes import RUNTIMES, get_runtime
from optin_deploy.runtimes.base import TENSORRT_INSTALL, import_tensorrt, resolve_artifact

PROFILE = ShapeProfile(opt_batch=4, max_batch=16, opt_seq=16, max_seq=64)


@pytest.fixture(scope="module")
def bert_onnx(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    model = make_tiny_bert()
    get_exporter("onnx").export(model, text_inputs(), d / "model.onnx", profile=PROFILE)
    return model, d / "model.onnx"


def test_torch_and_ort_cpu_agree(bert_onnx):
    model, path = bert_onnx
    inputs = text_inputs(batch=5, seq=20, seed=3)
    t = get_runtime("torch-cpu", threads=1).load(model)
    o = get_runtime("ort-cpu", threads=2).load(path)
    a = t.run(inputs)
    b = o.run({k: v.numpy() for k, v in inputs.items()})
    assert a.dtype == np.float32 and b.dtype == np.float32 and a.shape == (5, 3)
    assert np.abs(a - b).max() < 1e-4
    d = o.describe()
    assert d["provider"] == "CPUExecutionProvider" and d["providers"][0] == "CPUExecutionProvider"
    assert d["threads"] == 2 and d["version"]
    assert t.describe()["device"] == "cpu"


def test_torch_runtime_timm_positional():
    model = make_tiny_timm()
    x = image_inputs(batch=2)
    out = get_runtime("torch-cpu").load(model).run(x)
    assert out.shape == (2, 5)
    assert np.allclose(out, model(x["pixel_values"]).detach().numpy(), atol=1e-6)


def test_ort_bundle_folder_and_wrong_input(bert_onnx):
    _, path = bert_onnx
    rt = get_runtime("ort-cpu").load(path.parent)  # a folder resolves to its model.onnx
    assert rt.input_names == ["input_ids", "attention_mask"]
    with pytest.raises(OptinError, match="needs input"):
        rt.run({"input_ids": np.ones((1, 4), np.int64)})


@pytest.mark.parametrize("name", ["ort-cuda", "ort-tensorrt"])
def test_unavailable_provider_is_an_error(name):
    import onnxruntime as ort

    provider = {"ort-cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}[name]
    if provider in ort.get_available_providers():
        pytest.skip(f"{provider} is available here")
    with pytest.raises(MissingRuntimeError) as ei:
        get_runtime(name)
    msg = str(ei.value)
    assert provider in msg and "onnxruntime-gpu" in msg and "\n" not in msg


def test_provider_silently_dropped_is_an_error(bert_onnx, monkeypatch):
    """If a session comes up on a different provider than requested, loading fails."""
    import onnxruntime as ort

    _, path = bert_onnx
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    real = ort.InferenceSession

    def session(p, sess_options=None, providers=None, **kw):
        return real(p, sess_options=sess_options, providers=["CPUExecutionProvider"], **kw)

    monkeypatch.setattr(ort, "InferenceSession", session)
    with pytest.raises(MissingRuntimeError, match="could not start CUDAExecutionProvider"):
        get_runtime("ort-cuda").load(path)


def test_torch_cuda_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    with pytest.raises(MissingRuntimeError, match="CUDA GPU"):
        get_runtime("torch-cuda")


def test_tensorrt_runtime_missing_message():
    try:
        import tensorrt  # noqa: F401

        if torch.cuda.is_available():
            pytest.skip("TensorRT and a GPU are present")
    except Exception:
        with pytest.raises(MissingRuntimeError) as ei:
            import_tensorrt()
        assert TENSORRT_INSTALL in str(ei.value) and "\n" not in str(ei.value)
    with pytest.raises(MissingRuntimeError):
        get_runtime("tensorrt")
    with pytest.raises(MissingRuntimeError):
        get_runtime("torch-tensorrt")


def test_registry_names():
    assert {"torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-tensorrt", "tensorrt"} <= set(RUNTIMES)
    with pytest.raises(OptinError, match="unknown runtime"):
        get_runtime("ort-gpu")


def test_resolve_artifact(bert_onnx, tmp_path):
    _, path = bert_onnx
    assert resolve_artifact(path)[0] == "ort-cpu"
    with pytest.raises(OptinError, match="does not exist"):  # a missing artifact is refused in one line (issue 12)
        resolve_artifact(tmp_path / "x.engine")
    (tmp_path / "x.engine").write_bytes(b"engine")
    assert resolve_artifact(tmp_path / "x.engine")[0] == "tensorrt"
    assert resolve_artifact("some/model_dir") == ("torch-cpu", "some/model_dir", None)
    with pytest.raises(OptinError, match="export it first"):
        resolve_artifact("some/model_dir", "ort-cpu")


_FLUSH_PROBE = r"""
import json, sys
import numpy as np
from onnx import TensorProto, helper
from optin_deploy.runtimes.ort import OrtRuntime

# y = x * x: 1e-20 squared is 1e-40, a denormal float32; flushed to zero when FTZ is on
g = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"])], "g",
                      [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
path = sys.argv[1]
open(path, "wb").write(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
flush = {"default": None, "on": True, "off": False}[sys.argv[2]]
rt = OrtRuntime("ort-cpu", threads=2, flush_denormals=flush).load(path)
y = rt.run({"x": np.full(2_000_000, 1e-20, np.float32)})
print(json.dumps({"zeros": int((y == 0).sum()), "size": int(y.size), "flush": rt.describe()["flush_denormals"],
                  "settings": rt.session_settings()}))
"""


@pytest.mark.parametrize("mode", ["default", "off"])
def test_ort_cpu_flushes_denormals_on_every_thread(tmp_path, mode):
    """The CPU runtime flushes denormals to zero by default (real text makes a transformer's softmax produce
    them; x86 multiplies them slowly), on onnxruntime's worker threads *and* the calling thread: every
    element of a parallel elementwise op whose exact result is denormal comes back 0. With
    ``flush_denormals=False`` none does. A fresh process each: onnxruntime sets the calling thread's mode
    once per process, from the first session."""
    import json
    import subprocess
    import sys

    script = tmp_path / "probe.py"
    script.write_text(_FLUSH_PROBE)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "mul.onnx"), mode], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if mode == "default":
        assert r["flush"] is True and r["zeros"] == r["size"]
        assert r["settings"]["session_config"] == {"session.set_denormal_as_zero": "1"}
    else:
        assert r["flush"] is False and r["zeros"] == 0
        assert r["settings"]["session_config"] == {}
    assert r["settings"]["intra_op_num_threads"] == 2 and r["settings"]["providers"] == ["CPUExecutionProvider"]


def test_session_snippet_runs_and_matches_the_runtime(bert_onnx):
    """The recipe a bundle report prints opens a session that gives the runtime's outputs."""
    from optin_deploy.runtimes.ort import session_snippet

    _, path = bert_onnx
    o = get_runtime("ort-cpu", threads=2).load(path)
    code = session_snippet(o.session_settings(), str(path))
    assert "session.set_denormal_as_zero" in code and "SkipLayerNormFusion" in code
    ns: dict = {}
    exec(compile(code, "snippet", "exec"), ns)  # noqa: S102 - our own generated recipe
    inputs = {k: v.numpy() for k, v in text_inputs(batch=3, seq=12, seed=5).items()}
    feed = {i.name: inputs[i.name] for i in ns["session"].get_inputs()}
    assert np.abs(ns["session"].run(None, feed)[0] - o.run(inputs)).max() < 1e-5
