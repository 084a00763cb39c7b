"""OpenVINO CPU runtime: reads the exported ONNX files, matches onnxruntime, refuses what it cannot read in one
line; the missing package is one line naming the install; bench --runtimes times both side by side."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import make_tiny_bert, run_cli, text_inputs
from test_build import tiny_text_task  # noqa: F401 - the tiny task (fixture) of the build tests

from optin_deploy.errors import MissingRuntimeError, OptinError
from optin_deploy.exporters import ShapeProfile
from optin_deploy.exporters.export_folder import export_to_folder
from optin_deploy.runtimes import get_runtime
from optin_deploy.runtimes.base import resolve_artifact

PROFILE = ShapeProfile(opt_batch=4, max_batch=16, opt_seq=16, max_seq=64)


def _pruned_tiny():
    from optin_deploy.pruning import prune

    return prune(make_tiny_bert(), text_inputs(), flops=0.6, scorer="magnitude").model


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    pytest.importorskip("openvino")
    d = tmp_path_factory.mktemp("ov")
    model = make_tiny_bert()
    out = {}
    for name, m in (("dense", model), ("pruned", _pruned_tiny())):  # the default CPU target: fused graph, int8 + its fp32 graph
        export_to_folder(m, text_inputs(), d / name, profile=PROFILE, precision="int8", graph="fused")
        out[name] = d / name
    return out


@pytest.mark.parametrize("which", ["fused", pytest.param("dynamo", marks=pytest.mark.slow)])
def test_openvino_matches_onnxruntime(bundles, which, tmp_path):
    if which == "fused":  # com.microsoft Attention / BiasGelu
        f = bundles["pruned"] / "model.fp32.onnx"
    else:
        from optin_deploy.exporters import get_exporter

        f = get_exporter("onnx").export(make_tiny_bert(), text_inputs(), tmp_path / "model.onnx", profile=PROFILE, graph="dynamo").path
    x = {k: v.numpy() for k, v in text_inputs(batch=5, seq=20, seed=3).items()}
    a = get_runtime("ort-cpu", threads=1).load(f).run(x)
    rt = get_runtime("openvino-cpu", threads=1).load(f)
    b = rt.run(x)
    assert b.dtype == np.float32 and b.shape == a.shape == (5, 3)
    assert np.abs(a - b).max() < 1e-4
    assert rt.input_names == ["input_ids", "attention_mask"]
    d = rt.describe()
    assert d["backend"] == "openvino" and d["inference_precision"] == "f32" and d["threads"] == 1
    assert d["compiled"]["INFERENCE_NUM_THREADS"] == "1" and "float32" in d["compiled"]["INFERENCE_PRECISION_HINT"]
    b2 = rt.run({k: v[:2, :7] for k, v in x.items()})  # dynamic shapes; the output buffer is not shared between runs
    assert b2.shape == (2, 3) and np.abs(rt.run(x) - b).max() == 0
    with pytest.raises(OptinError, match="needs input"):
        rt.run({"input_ids": x["input_ids"]})


def test_openvino_int8_bundle_runs_its_fp32_graph(bundles):
    """onnxruntime's int8 fused graph holds QAttention, which OpenVINO cannot read: loading it is a one-line
    error naming the fp32 graph, and a bundle resolves to that graph for OpenVINO (onnxruntime keeps the int8 file)."""
    d = bundles["dense"]
    with pytest.raises(OptinError) as ei:
        get_runtime("openvino-cpu").load(d / "model.onnx")
    msg = str(ei.value)
    assert "QAttention" in msg and "model.fp32.onnx" in msg and "\n" not in msg
    name, art, _ = resolve_artifact(d, "openvino-cpu")
    assert name == "openvino-cpu" and art.name == "model.fp32.onnx"
    assert resolve_artifact(d, "ort-cpu")[1].name == "model.onnx"
    x = {k: v.numpy() for k, v in text_inputs(batch=3, seq=12).items()}
    a = get_runtime("ort-cpu", threads=1).load(art).run(x)
    assert np.abs(get_runtime("openvino-cpu", threads=1).load(art).run(x) - a).max() < 1e-4


def test_openvino_missing_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(MissingRuntimeError) as ei:
        get_runtime("openvino-cpu")
    msg = str(ei.value)
    assert "pip install" in msg and "openvino" in msg and "\n" not in msg
    from optin_deploy.bench_runtimes import installed_cpu_runtimes, parse_runtimes

    assert installed_cpu_runtimes() == ["ort-cpu", "torch-aoti-cpu"]  # torch is always there: AOTInductor packages run on it
    with pytest.raises(MissingRuntimeError, match="pip install"):
        parse_runtimes("ort-cpu,openvino-cpu")
    with pytest.raises(OptinError, match="choose from"):
        parse_runtimes("ort-cpu,tensorrt")


@pytest.mark.slow
def test_bench_side_by_side(bundles, tmp_path):
    """bench --runtimes: dense and pruned on onnxruntime (int8 artifact and fp32 graph) and OpenVINO (fp32 graph), one
    interleaved run; the JSON names the fastest way for each model and the runner-up, with same-way speed-ups."""
    out_json, out_md = tmp_path / "sbs.json", tmp_path / "sbs.md"
    proc = subprocess.run([sys.executable, "-m", "optin_deploy.cli", "bench", str(bundles["dense"]), str(bundles["pruned"]),
                           "--runtimes", "ort-cpu,openvino-cpu", "--threads", "1", "--iters", "4", "--block", "2", "--warmup", "1",
                           "--batch", "2", "--seq-len", "16", "--json", str(out_json), "--markdown", str(out_md)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out_json.read_text())
    s = r["side_by_side"]
    assert set(s["rows"]) == {f"{m}/{w}" for m in ("dense", "pruned") for w in ("ort-cpu/int8", "ort-cpu/fp32", "openvino-cpu/fp32")}
    assert r["mode"] == "blocks" and all(r["models"][k]["iters"] == 4 for k in s["rows"])
    for m in ("dense", "pruned"):
        assert s["fastest"][m] in s["rows"] and s["runner_up"][m] in s["rows"] and s["fastest"][m] != s["runner_up"][m]
        assert s["rows"][s["fastest"][m]]["p50_ms"] <= s["rows"][s["runner_up"][m]]["p50_ms"]
    assert set(s["speedup_same_way"]) == {"pruned/ort-cpu/int8", "pruned/ort-cpu/fp32", "pruned/openvino-cpu/fp32"}
    assert any("QAttention" in n for n in s["notes"])  # the int8 file was not timed on OpenVINO, and it says so
    assert r["models"]["pruned/openvino-cpu/fp32"]["runtime"]["backend"] == "openvino"
    md = out_md.read_text()
    assert "| openvino-cpu | fp32 |" in md and "| ort-cpu | int8 |" in md and "runner-up" in md
    assert "fastest for pruned" in proc.stdout


def test_bench_runtimes_bad_input(bundles):
    proc = run_cli("bench", bundles["dense"], "--runtimes", "ort-cpu", "--runtime", "ort-cpu", check=False)
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1].startswith("error:") and "Traceback" not in proc.stderr


def test_compile_snippet_runs_and_matches_the_runtime(bundles):
    """The recipe an OpenVINO bundle's report prints compiles the file and gives the runtime's outputs."""
    from optin_deploy.runtimes.openvino import compile_settings, compile_snippet

    f = bundles["pruned"] / "model.fp32.onnx"
    rt = get_runtime("openvino-cpu", threads=1).load(f)
    settings = compile_settings(rt.describe())
    assert settings["config"] == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
    assert compile_settings({"backend": "onnxruntime"}) is None
    ns: dict = {}
    exec(compile(compile_snippet(settings, str(f)), "snippet", "exec"), ns)  # noqa: S102 - our own generated recipe
    x = {k: v.numpy() for k, v in text_inputs(batch=2, seq=12, seed=4).items()}
    feed = {i.get_any_name(): x[i.get_any_name()] for i in ns["compiled"].inputs}
    out = ns["request"].infer(feed)[ns["compiled"].output(0)]
    assert np.abs(np.asarray(out) - rt.run(x)).max() < 1e-5


def test_openvino_profile():
    from optin_deploy.profiles import load_profile

    p = load_profile("x86-cpu-openvino-bf16")
    assert (p.runtime, p.precision, p.runtime_name, p.opt_batch) == ("openvino-cpu", "bf16", "openvino-cpu-bf16", 1)


@pytest.mark.slow
def test_build_on_the_openvino_profile(tiny_text_task, tmp_path):
    """A build whose profile runs on OpenVINO: the fp32 fused graph is exported and parity-checked (onnxruntime),
    then evaluated and timed through OpenVINO (bf16 where the CPU has it, else the profile is refused in one line)."""
    pytest.importorskip("openvino")
    try:
        get_runtime("openvino-cpu-bf16")
    except MissingRuntimeError:
        pytest.skip("this CPU has no bf16")
    task = tiny_text_task
    out = tmp_path / "b"
    run_cli("build", "--model", str(task / "model"), "--data", str(task / "data.csv"), "--flops", "0.5", "--profile", "x86-cpu-openvino-bf16",
            "--calib-samples", "16", "--bench-iters", "3", "--scoring", "exact", "--out", str(out))
    r = json.loads((out / "report.json").read_text())
    assert r["runtime"] == "openvino-cpu-bf16" and r["precision"] == "fp32" and r["graph"]["pruned"]["kind"] == "fused"
    assert r["latency_ms"]["pruned"]["p50"] > 0 and 0 <= r["accuracy"]["pruned"] <= 100
    # the dense alternatives a deployment engineer would otherwise ship were measured on onnxruntime beside it
    # (int8 included), and the deliverable's own way is not measured twice
    b = r["baselines"]
    assert {"dense-dynamo-fp32", "dense-fused-fp32", "dense-fused-int8", "dense-openvino-fp32", "pruned-openvino-fp32"} <= set(b["models"])
    assert "dense-openvino-bf16" not in b["models"] and "pruned-openvino-bf16" not in b["models"]
    assert b["models"]["dense-fused-int8"]["runtime"] == "ort-cpu" and b["models"]["dense-fused-int8"]["precision"] == "int8"
    # the deliverable quantised for onnxruntime int8 as well, ranked with the pruned model's other runtimes
    assert b["models"]["pruned-fused-int8"]["runtime"] == "ort-cpu" and b["models"]["pruned-fused-int8"]["precision"] == "int8"
    assert "pruned-fused-int8" in {x["label"] for x in b["pruned_runtimes"]["ranking"]} and b["fastest_dense"] != "pruned-fused-int8"
    assert b["models"]["pruned"]["precision"] == "bf16" and r["inference_precision"] == "bf16"
    assert b["models"]["dense"]["runtime"] == "openvino-cpu-bf16" and b["fastest_dense"] in b["models"]
    assert r["run_with"]["backend"] == "openvino" and r["run_with"]["config"]["INFERENCE_PRECISION_HINT"] == "bf16"
    # the bundle's export folders say which runtime they were built for: bench / eval of them run it that way
    from optin_deploy.runtimes.base import resolve_artifact

    for label in ("dense", "pruned"):
        assert resolve_artifact(out / "onnx" / label)[0] == "openvino-cpu-bf16"
    proc = run_cli("bench", out / "onnx" / "dense", out / "onnx" / "pruned", "--iters", "3", "--json", out.parent / "bench.json")
    assert {m["runtime"]["runtime"] for m in json.loads((out.parent / "bench.json").read_text())["models"].values()} == {"openvino-cpu-bf16"}
    assert "core.compile_model(" in (out / "report.md").read_text()
