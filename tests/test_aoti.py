"""PyTorch AOTInductor packages (``export --format aoti``, runtime ``torch-aoti-cpu``) on tiny random BERTs.

Compiling a package runs the C++ compiler (10-60 s per model here), so the tests that compile share two
module-scoped bundles (dense, and pruned with uneven heads, a layer with no heads and a layer with no MLP
neurons) and are marked slow; the error paths run without compiling.
"""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert, run_cli, text_inputs
from test_build import tiny_text_task  # noqa: F401 - the tiny task (fixture) of the build tests

from optin_deploy.errors import MissingRuntimeError, OptinError
from optin_deploy.exporters import ShapeProfile, export_to_folder, parity_inputs
from optin_deploy.exporters.base import LogitsModel
from optin_deploy.runtimes import get_runtime

PROFILE = ShapeProfile(min_batch=1, opt_batch=4, max_batch=16, min_seq=1, opt_seq=16, max_seq=64)


def _pruned_tiny():
    from optin_deploy.core import surgery

    model = make_tiny_bert(layers=3)
    plan = surgery.random_plan(model, seed=3, empty_heads_layer=1, empty_mlp_layer=2)
    heads, neurons = plan.counts()
    assert heads[1] == 0 and neurons[2] == 0 and len(set(heads)) > 1
    return surgery.apply_plan(model, plan)


@pytest.fixture(scope="module")
def aoti_root(tmp_path_factory):
    """A build-like layout: ROOT/onnx/{dense,pruned} (int8 fused, the default CPU target) and ROOT/aoti/{dense,pruned}."""
    root = tmp_path_factory.mktemp("aoti")
    models = {"dense": make_tiny_bert(layers=3), "pruned": _pruned_tiny()}
    for label, m in models.items():
        export_to_folder(m, text_inputs(4, 16), root / "aoti" / label, fmt="aoti", profile=PROFILE)
        export_to_folder(m, text_inputs(4, 16), root / "onnx" / label, profile=PROFILE, precision="int8")
    return root, models


@pytest.mark.slow
@pytest.mark.parametrize("label", ["dense", "pruned"])
def test_aoti_package_parity_at_two_shapes(aoti_root, label):
    root, models = aoti_root
    b = root / "aoti" / label
    assert sorted(p.name for p in b.iterdir()) == ["export.json", "model.pt2", "parity.json"]
    m = json.loads((b / "export.json").read_text())
    meta = m["artifacts"]["aoti"]
    assert m["format"] == "aoti" and m["runtime"] == "torch-aoti-cpu" and meta["dynamic"] is True
    assert len(meta["sha256"]) == 64 and meta["torch_version"] == torch.__version__
    par = meta["parity"]
    shapes = [tuple(c["shapes"]["input_ids"]) for c in par["cases"]]
    assert par["passed"] and par["max_abs_diff"] <= 1e-4 and shapes[0] == (4, 16) and len(set(shapes)) >= 2  # export shape + unseen ones
    rt = get_runtime("torch-aoti-cpu", threads=1).load(b)
    ref = LogitsModel(models[label], ["input_ids", "attention_mask"])
    for inputs in parity_inputs(text_inputs(), batches=(3, 1), seq_lens=(40, 7)):  # shapes neither trace nor parity saw
        got = rt.run({k: v.numpy() for k, v in inputs.items()})
        want = ref(*inputs.values()).detach().numpy()
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4
    with pytest.raises(OptinError, match="axis 1 from 1 to 64"):
        rt.run({k: v.numpy() for k, v in text_inputs(2, 65).items()})
    big = parity_inputs(text_inputs(), batches=(20,), seq_lens=(9,))[0]  # above max_batch 16: run in chunks
    assert np.abs(rt.run({k: v.numpy() for k, v in big.items()}) - ref(*big.values()).detach().numpy()).max() <= 1e-4


@pytest.mark.slow
def test_aoti_refuses_packages_it_cannot_vouch_for(aoti_root, tmp_path):
    root, _ = aoti_root
    bad = tmp_path / "tampered"
    shutil.copytree(root / "aoti" / "pruned", bad)
    with open(bad / "model.pt2", "ab") as f:
        f.write(b"\0")
    with pytest.raises(OptinError, match="sha256"):
        get_runtime("torch-aoti-cpu").load(bad)
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(root / "aoti" / "pruned" / "model.pt2", bare / "model.pt2")
    with pytest.raises(OptinError, match="only AOTInductor bundles optin-deploy wrote"):
        get_runtime("torch-aoti-cpu").load(bare / "model.pt2")
    from optin_deploy.runtimes.base import resolve_artifact

    with pytest.raises(OptinError, match="bundle folder"):
        resolve_artifact(bare / "model.pt2")
    name, art, _ = resolve_artifact(root / "aoti" / "pruned")
    assert name == "torch-aoti-cpu" and art.name == "model.pt2"


@pytest.mark.slow
def test_bench_runtimes_includes_aoti(aoti_root, tmp_path):
    """bench --runtimes on a build-like folder: ORT int8 / fp32 and the AOTInductor packages, one interleaved run."""
    root, _ = aoti_root
    out = tmp_path / "sbs.json"
    run_cli("bench", root, "--runtimes", "ort-cpu,torch-aoti-cpu", "--threads", "1", "--iters", "4", "--block", "2", "--warmup", "1",
            "--batch", "2", "--seq-len", "16", "--json", out)
    s = json.loads(out.read_text())["side_by_side"]
    assert set(s["rows"]) == {f"{m}/{w}" for m in ("dense", "pruned") for w in ("ort-cpu/int8", "ort-cpu/fp32", "torch-aoti-cpu/fp32")}
    assert "pruned/torch-aoti-cpu/fp32" in s["speedup_same_way"]
    assert s["rows"]["pruned/torch-aoti-cpu/fp32"]["artifact"].endswith("aoti/pruned")


def test_bench_runtimes_notes_a_missing_package(tmp_path):
    from optin_deploy.bench_runtimes import parse_runtimes, variants

    assert "torch-aoti-cpu" in parse_runtimes("all") and parse_runtimes("ort-cpu,torch-aoti-cpu") == ["ort-cpu", "torch-aoti-cpu"]
    export_to_folder(make_tiny_bert(layers=1), text_inputs(4, 16), tmp_path / "onnx" / "dense", profile=PROFILE)
    vs, notes = variants(str(tmp_path / "onnx" / "dense"), "torch-aoti-cpu")
    assert vs == [] and "--format aoti" in notes[0]


def test_missing_compiler_is_one_line(tmp_path):
    import torch._inductor.config as cfg
    from torch._inductor.cpp_builder import cpp_compiler_search

    # cfg.patch, not monkeypatch: monkeypatch's undo deletes the key from inductor's config module for the session
    with cfg.patch({"cpp.cxx": (None, "no-such-cxx-optin")}):
        cpp_compiler_search.cache_clear()
        _missing_compiler_checks(tmp_path)
    cpp_compiler_search.cache_clear()
    assert cfg.cpp.cxx != (None, "no-such-cxx-optin")


def _missing_compiler_checks(tmp_path):
    with pytest.raises(MissingRuntimeError, match="C\\+\\+ compiler") as ei:
        export_to_folder(make_tiny_bert(layers=1), text_inputs(4, 16), tmp_path / "b", fmt="aoti", profile=PROFILE)
    assert "\n" not in str(ei.value)
    assert not (tmp_path / "b" / "model.pt2").exists()
    model_dir = tmp_path / "m"
    make_tiny_bert(layers=1).save_pretrained(model_dir)
    proc = run_cli("export", model_dir, "--format", "aoti", "--out", tmp_path / "out", check=False)
    assert proc.returncode != 0 and "C++ compiler" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_bad_requests_are_one_line(tmp_path):
    with pytest.raises(OptinError, match="fp32"):
        export_to_folder(make_tiny_bert(layers=1), text_inputs(4, 16), tmp_path / "b", fmt="aoti", precision="int8", profile=PROFILE)
    export_to_folder(make_tiny_bert(layers=1), text_inputs(4, 16), tmp_path / "onnx", profile=PROFILE)
    with pytest.raises(OptinError, match="only AOTInductor bundles"):
        get_runtime("torch-aoti-cpu").load(tmp_path / "onnx")


def test_package_with_foreign_members_is_refused(tmp_path):
    from optin_deploy.runtimes.aoti import package_members_error

    p = tmp_path / "model.pt2"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("model/archive_format", "pt2")
        z.writestr("model/data/aotinductor/model/x.wrapper.so", b"\x7fELF")
        z.writestr("model/models/model.json", "{}")  # an exported program aoti_load_package would deserialise
    assert "never holds" in package_members_error(p)
    p.write_bytes(b"not a zip")
    assert "not a readable" in package_members_error(p)


@pytest.mark.slow
def test_static_fallback_when_dynamic_export_fails(tmp_path, monkeypatch):
    """A family torch.export cannot trace dynamically is exported static at the example shape, and says so."""
    real = torch.export.export

    def no_dynamic(*a, **kw):
        if kw.get("dynamic_shapes") is not None:
            raise RuntimeError("Constraints violated (sequence)! simulated")
        return real(*a, **kw)

    monkeypatch.setattr(torch.export, "export", no_dynamic)
    model = make_tiny_bert(layers=1)
    m = export_to_folder(model, text_inputs(4, 16), tmp_path / "b", fmt="aoti", profile=PROFILE)
    meta = m["artifacts"]["aoti"]
    assert meta["dynamic"] is False and "simulated" in meta["dynamic_error"]
    assert [c["shapes"]["input_ids"] for c in meta["parity"]["cases"]] == [[4, 16]] and meta["parity"]["passed"]
    rt = get_runtime("torch-aoti-cpu").load(tmp_path / "b")
    with pytest.raises(OptinError, match="exported static"):
        rt.run({k: v.numpy() for k, v in text_inputs(2, 16).items()})


def test_aoti_profile():
    from optin_deploy.profiles import load_profile

    p = load_profile("x86-cpu-aoti")
    assert (p.runtime, p.precision, p.runtime_name) == ("torch-aoti-cpu", "fp32", "torch-aoti-cpu")


@pytest.mark.slow
def test_build_on_the_aoti_profile(tiny_text_task, tmp_path):
    """A build whose profile asks for AOTInductor: dense and pruned packages in aoti/, evaluated and timed through them."""
    task = tiny_text_task
    out = tmp_path / "b"
    run_cli("build", "--model", str(task / "model"), "--data", str(task / "data.csv"), "--flops", "0.5", "--profile", "x86-cpu-aoti",
            "--calib-samples", "16", "--bench-iters", "3", "--scoring", "exact", "--out", str(out))
    r = json.loads((out / "report.json").read_text())
    assert r["runtime"] == "torch-aoti-cpu" and r["precision"] == "fp32"
    assert r["latency_ms"]["pruned"]["p50"] > 0 and 0 <= r["accuracy"]["pruned"] <= 100
    for label in ("dense", "pruned"):
        m = json.loads((out / "aoti" / label / "export.json").read_text())
        assert m["format"] == "aoti" and m["artifacts"]["aoti"]["parity"]["passed"]
    rt = get_runtime("torch-aoti-cpu").load(out / "aoti" / "pruned")  # the moved bundle still verifies
    assert rt.run({k: v.numpy() for k, v in text_inputs(2, 12).items()}).shape == (2, 2)
