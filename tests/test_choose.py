"""Profiles that choose their target by measurement (``choose_from``; the default ``x86-cpu``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from optin_deploy.choose import Candidate, pick
from optin_deploy.errors import OptinError
from optin_deploy.profiles import DEFAULT_PROFILE, PROFILES_DIR, load_profile
from optin_deploy.target import resolve_target

from conftest import run_cli
from test_build import tiny_text_task  # noqa: F401 (the fixture: a tiny random BERT with the MiniLM tokenizer and a labelled CSV)

# a CPU-shaped profile on onnxruntime's CUDA provider: never runnable on a CPU-only onnxruntime
CUDA_AT_CPU_SHAPE = """
name = "cuda-small"
runtime = "onnxruntime-cuda"
device = "gpu"
precision = "fp32"
batch_size = 8
seq_len = 128
image_size = 224
threads = 2
head_multiple = 1
neuron_multiple = 8
"""


def write(folder: Path, name: str, text: str) -> Path:
    p = folder / name
    p.write_text(text)
    return p


def test_pick_keeps_the_fastest_equally_accurate_candidate_and_names_the_runner_up():
    cands = [Candidate("int8", "ort-cpu", "int8", p50_ms=27.0, metric=84.5), Candidate("bf16", "openvino-cpu-bf16", "bf16", p50_ms=20.0, metric=84.8),
             Candidate("fp32", "ort-cpu", "fp32", p50_ms=60.0, metric=84.9), Candidate("gpu", "ort-cuda", "fp32", skipped="cannot run here")]
    assert pick(cands, 0.5) == ("bf16", "int8")
    assert [c.eligible for c in cands] == [True, True, True, None]
    # a faster candidate that loses more than the tolerance is not chosen, however fast; it is still the runner-up by time
    cands[1].metric = 84.3
    assert pick(cands, 0.5) == ("int8", "bf16")
    assert cands[1].eligible is False
    # the tolerance is measured from the most accurate candidate, inclusive
    assert pick(cands, 0.6) == ("bf16", "int8")
    # no labelled metric anywhere: by time alone
    for c in cands:
        c.metric = None
    assert pick(cands, 0.5) == ("bf16", "int8")
    with pytest.raises(OptinError, match="no candidate"):
        pick([Candidate("gpu", "ort-cuda", "fp32", skipped="cannot run here")], 0.5)


def test_the_default_profile_chooses_between_onnxruntime_int8_and_openvino_bf16():
    p = load_profile(DEFAULT_PROFILE)
    assert p.is_choice and [c.name for c in p.choose_from] == ["x86-cpu-ort", "x86-amx-openvino-bf16"]
    assert p.equal_accuracy_points == 0.5
    t = resolve_target(DEFAULT_PROFILE)
    # until a build measures, the target is the first candidate (prune, sweep and lut take it)
    assert t.name == "x86-cpu-ort" and t.runtime_name == "ort-cpu" and t.chooser.name == "x86-cpu"
    assert [c.name for c in t.choices] == ["x86-cpu-ort", "x86-amx-openvino-bf16"]
    assert resolve_target("x86-cpu-ort").choices == ()
    assert p.to_dict()["choose_from"] == ["x86-cpu-ort", "x86-amx-openvino-bf16"]


@pytest.mark.parametrize("body, message", [
    ('name = "c"\nchoose_from = []', "non-empty list"),
    ('name = "c"\nchoose_from = ["x86-cpu-ort", "x86-cpu-ort"]', "twice"),
    ('name = "c"\nchoose_from = "x86-cpu-ort"', "must be a list"),
    ('name = "c"\nchoose_from = ["x86-cpu-or"]', "did you mean 'x86-cpu-ort'"),
    ('name = "c"\nchoose_from = ["x86-cpu"]', "chooses among profiles itself"),
    ('name = "c"\nchoose_from = ["self.toml"]', "lists itself"),
    ('name = "c"\nchoose_from = ["x86-cpu-ort", "arm-cpu-ort"]', "one shape"),
    ('name = "c"\nchoose_from = ["x86-cpu-ort"]\nruntime = "onnxruntime-cpu"', "unknown key 'runtime'"),
    ('name = "c"\nchoose_from = ["x86-cpu-ort"]\nequal_accuracy_points = -1', "out of range"),
])
def test_a_bad_choosing_profile_is_refused_in_one_line(tmp_path, body, message):
    path = write(tmp_path, "self.toml", body)
    with pytest.raises(OptinError, match=message) as exc:
        load_profile(path)
    assert "\n" not in str(exc.value)


def test_two_candidates_of_one_name_are_refused(tmp_path):
    write(tmp_path, "a.toml", CUDA_AT_CPU_SHAPE)
    write(tmp_path, "b.toml", CUDA_AT_CPU_SHAPE)
    with pytest.raises(OptinError, match="two profiles named 'cuda-small'"):
        load_profile(write(tmp_path, "c.toml", 'name = "c"\nchoose_from = ["a.toml", "b.toml"]\n'))


def test_candidates_are_found_by_name_or_by_a_path_relative_to_the_choosing_profile(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub", "cuda.toml", CUDA_AT_CPU_SHAPE)
    p = load_profile(write(tmp_path, "c.toml", 'name = "c"\ndescription = "d"\nchoose_from = ["x86-cpu-ort-fp32", "sub/cuda.toml"]\n'
                                                 "equal_accuracy_points = 1"))
    assert [c.name for c in p.choose_from] == ["x86-cpu-ort-fp32", "cuda-small"]
    assert (p.name, p.description, p.precision, p.equal_accuracy_points) == ("c", "d", "fp32", 1.0)
    assert p.choose_from[1].path == str(tmp_path / "sub" / "cuda.toml")
    shown = run_cli("profiles", "show", tmp_path / "c.toml").stdout
    assert "choose_from" in shown and "cuda-small" in shown
    assert "x86-cpu" in run_cli("profiles", "list").stdout


def test_a_choice_among_profiles_none_of_which_runs_here_fails_before_loading_anything(tmp_path):
    write(tmp_path, "cuda.toml", CUDA_AT_CPU_SHAPE)
    prof = write(tmp_path, "c.toml", 'name = "gpus-only"\nchoose_from = ["cuda.toml"]\n')
    out = tmp_path / "bundle"
    # the model does not exist: the profile is refused first
    proc = run_cli("build", "--profile", prof, "--model", tmp_path / "missing", "--out", out, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "none of the candidates of profile gpus-only can run here" in last and "cuda-small" in last
    assert not out.exists()


@pytest.mark.slow  # a whole build of a tiny model, three candidates
def test_a_build_measures_the_candidates_and_builds_for_the_fastest_equally_accurate_one(tiny_text_task, tmp_path, monkeypatch):
    from optin_deploy import build

    labels = []
    real_export = build.BuildContext.export

    def export(self, m, folder, label="pruned", **kw):
        labels.append(label)
        return real_export(self, m, folder, label, **kw)

    monkeypatch.setattr(build.BuildContext, "export", export)
    write(tmp_path, "cuda.toml", CUDA_AT_CPU_SHAPE)
    prof = write(tmp_path, "c.toml", 'name = "cpu-choice"\nchoose_from = ["x86-cpu-ort-fp32", "x86-cpu-ort", "cuda.toml"]\n'
                                     "equal_accuracy_points = 100\n")
    out = tmp_path / "bundle"
    run_cli("build", "--profile", prof, "--model", tiny_text_task / "model", "--data", tiny_text_task / "data.csv", "--flops", "0.6",
            "--select-by", "macs", "--calib-samples", "16", "--scoring", "exact", "--bench-iters", "5", "--no-baselines", "--out", out)
    report = json.loads((out / "report.json").read_text())
    ch = report["runtime_choice"]
    assert ch["chooser"] == "cpu-choice" and ch["metric"] == "accuracy" and ch["split"] == "validation"
    by = {c["profile"]: c for c in ch["candidates"]}
    assert list(by) == ["x86-cpu-ort-fp32", "x86-cpu-ort", "cuda-small"]
    assert by["cuda-small"]["skipped"].startswith("cannot run here") and by["cuda-small"]["p50_ms"] is None
    ran = [by["x86-cpu-ort-fp32"], by["x86-cpu-ort"]]
    assert all(c["p50_ms"] > 0 and 0 <= c["metric"] <= 100 and c["eligible"] is True and c["skipped"] is None for c in ran)
    fastest = min(ran, key=lambda c: c["p50_ms"])
    assert ch["chosen"] == fastest["profile"] and ch["runner_up"] == next(c["profile"] for c in ran if c is not fastest)
    # the build then ran for the chosen profile: its precision, its runtime, its name in the report
    assert report["profile"] == ch["chosen"] and report["precision"] == fastest["precision"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["profile"]["name"] == ch["chosen"] and manifest["chosen_by"] == "cpu-choice"
    assert (out / "onnx/pruned/model.onnx").is_file() and not (out / "runtime-choice").exists()
    assert not any("runtime-choice" in a for a in report["artifacts"])
    # the chosen candidate's dense export is the bundle's: exported once, parity checked, from the user's model
    assert labels.count("dense") == 0 and sorted(x for x in labels if x.startswith("dense (")) == [
        "dense (x86-cpu-ort)", "dense (x86-cpu-ort-fp32)"]
    dense = json.loads((out / "onnx/dense/export.json").read_text())
    assert "parity_deferred" not in dense and dense["parity"]["model.onnx"]["passed"] is True
    assert dense["artifacts"]["onnx"]["precision"] == fastest["precision"]
    assert Path(dense["source"]).resolve() == (tiny_text_task / "model").resolve()
    assert all(".tmp-" not in json.dumps(v) for v in dense.values())
    md = (out / "report.md").read_text()
    assert f"Target chosen by measurement (profile `cpu-choice`): **`{ch['chosen']}`**" in md and "runner-up" in md and "cannot run here" in md


@pytest.mark.slow  # a whole build
def test_a_candidate_less_accurate_than_the_tolerance_is_not_chosen_however_fast(tiny_text_task, tmp_path, monkeypatch):
    """Equal accuracy is measured, not assumed: a candidate whose validation metric is lower than the best by more than
    ``equal_accuracy_points`` loses even when it is the faster (here its metric is lowered after measuring)."""
    import optin_deploy.choose as choose

    real = choose._measure

    def measure_then_lower_int8(ctx, ctxs, runnable, root, split, exports):
        name = real(ctx, ctxs, runnable, root, split, exports)
        for c in runnable:
            if c.profile == "x86-cpu-ort":
                c.p50_ms, c.metric = 0.001, c.metric - 10.0  # the fastest by far, and 10 points worse
        return name

    monkeypatch.setattr(choose, "_measure", measure_then_lower_int8)
    prof = write(tmp_path, "c.toml", 'name = "cpu-choice"\nchoose_from = ["x86-cpu-ort", "x86-cpu-ort-fp32"]\n')
    out = tmp_path / "bundle"
    run_cli("build", "--profile", prof, "--model", tiny_text_task / "model", "--data", tiny_text_task / "data.csv", "--flops", "0.6",
            "--select-by", "macs", "--calib-samples", "16", "--scoring", "exact", "--bench-iters", "3", "--no-baselines", "--out", out)
    ch = json.loads((out / "report.json").read_text())["runtime_choice"]
    by = {c["profile"]: c for c in ch["candidates"]}
    assert by["x86-cpu-ort"]["eligible"] is False and by["x86-cpu-ort-fp32"]["eligible"] is True
    assert ch["chosen"] == "x86-cpu-ort-fp32" and ch["runner_up"] == "x86-cpu-ort"
    assert json.loads((out / "report.json").read_text())["precision"] == "fp32"


@pytest.mark.slow  # a whole build
def test_a_candidate_whose_runtime_cannot_run_the_model_is_skipped_and_the_build_goes_on(tiny_text_task, tmp_path, monkeypatch):
    """A runtime that cannot read or run a family's graph (OpenVINO with an operator it lacks, say) must not stop the
    build: that candidate is skipped with the runtime's reason and the others are measured."""
    from optin_deploy.runtimes.ort import OrtRuntime

    real = OrtRuntime.load

    def load(self, artifact):
        if "x86-cpu-ort-fp32" in str(artifact):  # the candidate's export folder is named after it
            raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an implementation for FancyOp(1)")
        return real(self, artifact)

    monkeypatch.setattr(OrtRuntime, "load", load)
    prof = write(tmp_path, "c.toml", 'name = "cpu-choice"\nchoose_from = ["x86-cpu-ort-fp32", "x86-cpu-ort"]\n')
    out = tmp_path / "bundle"
    run_cli("build", "--profile", prof, "--model", tiny_text_task / "model", "--data", tiny_text_task / "data.csv", "--flops", "0.6",
            "--select-by", "macs", "--calib-samples", "16", "--scoring", "exact", "--bench-iters", "3", "--no-baselines", "--out", out)
    report = json.loads((out / "report.json").read_text())
    by = {c["profile"]: c for c in report["runtime_choice"]["candidates"]}
    assert by["x86-cpu-ort-fp32"]["skipped"].startswith("ort-cpu cannot run the dense model: [ONNXRuntimeError]")
    assert by["x86-cpu-ort-fp32"]["p50_ms"] is None and by["x86-cpu-ort"]["p50_ms"] > 0
    assert report["runtime_choice"]["chosen"] == "x86-cpu-ort" and report["runtime_choice"]["runner_up"] is None
    assert report["profile"] == "x86-cpu-ort" and report["precision"] == "int8"


@pytest.mark.slow  # a latency table and a whole build
def test_a_latency_table_given_with_lut_picks_the_candidate_it_was_measured_for(tiny_text_task, tmp_path):
    lut = tmp_path / "lut.json"
    run_cli("lut", "--profile", "x86-cpu-ort", "--model", tiny_text_task / "model", "--out", lut, "--rounds", "2", "--iters", "2")
    prof = write(tmp_path, "c.toml", 'name = "cpu-choice"\nchoose_from = ["x86-cpu-ort-fp32", "x86-cpu-ort"]\n')
    out = tmp_path / "bundle"
    run_cli("build", "--profile", prof, "--model", tiny_text_task / "model", "--data", tiny_text_task / "data.csv", "--flops", "0.6",
            "--lut", lut, "--select-by", "latency", "--calib-samples", "16", "--scoring", "exact", "--bench-iters", "3", "--no-baselines",
            "--out", out)
    report = json.loads((out / "report.json").read_text())
    ch = report["runtime_choice"]
    by = {c["profile"]: c for c in ch["candidates"]}
    assert ch["chosen"] == "x86-cpu-ort" and by["x86-cpu-ort-fp32"]["skipped"] == "--lut given" and "measured for 'x86-cpu-ort'" in ch["note"]
    assert report["profile"] == "x86-cpu-ort" and report["precision"] == "int8"


@pytest.mark.slow  # a whole build
def test_the_default_build_measures_onnxruntime_int8_and_openvino_bf16_where_it_can(tiny_text_task, tmp_path):
    """The real default path: int8 is always measured; OpenVINO bf16 is measured where OpenVINO is installed and the CPU
    has bf16, else skipped with the reason; the bundle is built for the candidate the measurements favour."""
    from optin_deploy.runtimes.openvino import bf16_supported

    out = tmp_path / "bundle"
    run_cli("build", "--model", tiny_text_task / "model", "--data", tiny_text_task / "data.csv", "--flops", "0.6", "--select-by", "macs",
            "--calib-samples", "16", "--scoring", "exact", "--bench-iters", "3", "--no-baselines", "--out", out)
    report = json.loads((out / "report.json").read_text())
    ch = report["runtime_choice"]
    by = {c["profile"]: c for c in ch["candidates"]}
    assert ch["chooser"] == "x86-cpu" and list(by) == ["x86-cpu-ort", "x86-amx-openvino-bf16"]
    assert by["x86-cpu-ort"]["skipped"] is None and by["x86-cpu-ort"]["precision"] == "int8"
    ov = by["x86-amx-openvino-bf16"]
    if bf16_supported():
        assert ov["skipped"] is None and ov["p50_ms"] > 0 and by["x86-cpu-ort"]["p50_ms"] > 0
        eligible = [c for c in by.values() if c["eligible"]]
        assert ch["chosen"] == min(eligible, key=lambda c: c["p50_ms"])["profile"] and ch["runner_up"] in by
    else:
        assert ov["skipped"].startswith("cannot run here") and ch["chosen"] == "x86-cpu-ort" and ch["runner_up"] is None
    assert report["profile"] == ch["chosen"] and report["inference_precision"] == by[ch["chosen"]]["precision"]


@pytest.mark.slow  # a whole build
def test_without_openvino_the_default_builds_for_onnxruntime_int8_and_says_why(tiny_text_task, tmp_path, monkeypatch):
    import optin_deploy.runtimes.openvino as ovrt
    from optin_deploy.errors import MissingRuntimeError

    def missing(*a, **k):
        raise MissingRuntimeError("OpenVINO is not installed: pip install \"optin-deploy[openvino]\"")

    monkeypatch.setattr(ovrt, "import_openvino", missing)
    out = tmp_path / "bundle"
    run_cli("build", "--model", tiny_text_task / "model", "--data", tiny_text_task / "data.csv", "--flops", "0.6", "--select-by", "macs",
            "--calib-samples", "16", "--scoring", "exact", "--bench-iters", "3", "--no-baselines", "--out", out)
    report = json.loads((out / "report.json").read_text())
    ch = report["runtime_choice"]
    ov = next(c for c in ch["candidates"] if c["profile"] == "x86-amx-openvino-bf16")
    assert ov["skipped"].startswith("cannot run here") and "pip install" in ov["skipped"]
    assert ch["chosen"] == "x86-cpu-ort" and ch["runner_up"] is None and report["precision"] == "int8"
    assert "cannot run here" in (out / "report.md").read_text()


def test_every_builtin_choosing_profile_lists_builtins_that_exist():
    for path in PROFILES_DIR.glob("*.toml"):
        p = load_profile(path)
        for c in p.choose_from:
            assert Path(c.path).parent == PROFILES_DIR, (p.name, c.path)
