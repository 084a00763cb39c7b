"""Hardware profiles: parsing, validation, CLI and alignment in selection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optin_deploy.errors import OptinError
from optin_deploy.profiles import PROFILES_DIR, Profile, list_profiles, load_profile, parse_profile, selection_kwargs

BUILTINS = {"x86-cpu-ort", "arm-cpu-ort", "nvidia-gpu-ort-cuda", "nvidia-dc-trt-fp16", "jetson-orin-trt-fp16"}

GOOD = """
name = "t"
runtime = "onnxruntime-cpu"
device = "cpu"
precision = "fp32"
batch_size = 4
seq_len = 64
threads = 2
head_multiple = 1
neuron_multiple = 8
[shapes]
min_batch = 1
opt_batch = 4
max_batch = 16
min_seq = 1
opt_seq = 64
max_seq = 128
[budget]
latency_ms = 12.5
"""


def write(tmp_path: Path, text: str, name: str = "p.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_builtins_load_and_are_found_relative_to_the_package():
    assert PROFILES_DIR == Path(__file__).resolve().parents[1] / "profiles"
    profiles = {p.name: p for p in list_profiles()}
    assert BUILTINS <= set(profiles)
    for p in profiles.values():
        assert p.path.endswith(f"{p.name}.toml")  # file name == profile name
        assert p.min_batch <= p.opt_batch <= p.max_batch
        assert p.batch_size >= 1 and p.threads >= 1
    x86 = load_profile("x86-cpu-ort")
    assert (x86.runtime, x86.device, x86.precision, x86.threads, x86.batch_size, x86.seq_len) == ("onnxruntime-cpu", "cpu", "int8", 2, 8, 128)
    assert x86.runtime_name == "ort-cpu"
    dc = load_profile("nvidia-dc-trt-fp16")
    assert (dc.neuron_multiple, dc.head_multiple, dc.precision, dc.runtime) == (64, 1, "fp16", "tensorrt")
    assert load_profile("jetson-orin-trt-fp16").device == "jetson"
    sp = x86.shape_profile()
    assert (sp.opt_batch, sp.opt_seq) == (8, 128)


def test_load_by_path_and_budget(tmp_path):
    p = load_profile(write(tmp_path, GOOD))
    assert isinstance(p, Profile)
    assert p.budget_latency_ms == 12.5 and p.budget_flops is None
    assert p.max_seq == 128
    assert load_profile(p) is p


@pytest.mark.parametrize(
    "old,new,message",
    [
        ("threads = 2", "thread = 2", "unknown key 'thread' in profile .*did you mean 'threads'\\?"),
        ("max_batch = 16", "max_btch = 16", "unknown key shapes.'max_btch'.*did you mean 'max_batch'"),
        ("threads = 2", 'threads = "2"', "threads in profile .* must be an integer"),
        ("batch_size = 4", "batch_size = 4.5", "batch_size in profile .* must be an integer"),
        ("threads = 2", "threads = true", "must be an integer"),
        ("threads = 2", "threads = 0", "threads = 0 .* out of range"),
        ("latency_ms = 12.5", "flops = 1.5", "flops = 1.5 .* out of range"),
        ("latency_ms = 12.5", "flops = 0", "flops = 0 .* out of range"),
        ("latency_ms = 12.5", "latency_ms = -1", "out of range"),
        ("latency_ms = 12.5", "latency_ms = 1.0\nflops = 0.5", "not both"),
        ('precision = "fp32"', 'precision = "fp8"', "precision = 'fp8' .* choose one of fp32, int8, fp16, bf16"),
        ('runtime = "onnxruntime-cpu"', 'runtime = "onnxruntime-cpus"', "did you mean 'onnxruntime-cpu'"),
        ('device = "cpu"', 'device = "gpu"', "runs on the CPU"),
        ("max_batch = 16", "max_batch = 2", "min_batch <= opt_batch <= max_batch, got 1 / 4 / 2"),
        ("min_seq = 1", "min_seq = 100", "min_seq <= opt_seq <= max_seq"),
        ("seq_len = 64", "seq_len = 512", "seq_len = 512 .* outside"),
        ('name = "t"', "", "lacks the required key name"),
        ("neuron_multiple = 8", "neuron_multiple = 8\n[x]\na = 1", "unknown key 'x'"),
        # session 13: NaN passed every range check (a build then shipped the dense model as pruned, exit 0)
        ("latency_ms = 12.5", "flops = nan", "budget.flops = nan .* out of range"),
        ("latency_ms = 12.5", "latency_ms = nan", "budget.latency_ms = nan .* out of range"),
        ("latency_ms = 12.5", "latency_ms = inf", "budget.latency_ms = inf .* out of range"),
        # precisions the runtime would not run in (the build shipped fp32 and reported bf16)
        ('precision = "fp32"', 'precision = "bf16"', "precision bf16 .* not for runtime onnxruntime-cpu.*openvino-cpu"),
        ('precision = "fp32"', 'precision = "fp16"', "precision fp16 .* not for runtime onnxruntime-cpu"),
        ('runtime = "onnxruntime-cpu"\ndevice = "cpu"\nprecision = "fp32"', 'runtime = "onnxruntime-cuda"\ndevice = "gpu"\nprecision = "fp16"',
         "precision fp16 .* not for runtime onnxruntime-cuda.*runtime = \"tensorrt\""),
        # bench's PyTorch runtimes are no deployment target (the build failed after scoring, on its own staging file)
        ('runtime = "onnxruntime-cpu"', 'runtime = "torch-cpu"', "runtime = 'torch-cpu' .* not a deployment target.*torch-aoti-cpu"),
    ],
)
def test_validation_errors_are_one_line(tmp_path, old, new, message):
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(OptinError, match=message) as ei:
        load_profile(path)
    assert "\n" not in str(ei.value)


def test_missing_file_unknown_name_and_bad_toml(tmp_path):
    with pytest.raises(OptinError, match="does not exist"):
        load_profile(tmp_path / "nope.toml")
    with pytest.raises(OptinError, match="did you mean 'x86-cpu-ort'"):
        load_profile("x86-cpu-or")
    with pytest.raises(OptinError, match="not valid TOML"):
        load_profile(write(tmp_path, "name = [", "bad.toml"))
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(GOOD.replace('name = "t"', 'name = "t"\ndescription = "Caf\u00e9"').encode("latin-1"))
    with pytest.raises(OptinError, match="is not UTF-8 text .* save it as UTF-8"):
        load_profile(latin1)


def test_a_chooser_with_a_nan_tolerance_is_refused_on_load(tmp_path):
    """equal_accuracy_points = nan passed the range check and the build crashed after timing every candidate."""
    path = write(tmp_path, 'name = "c"\nchoose_from = ["x86-cpu-ort", "x86-cpu-ort-fp32"]\nequal_accuracy_points = nan\n')
    with pytest.raises(OptinError, match="equal_accuracy_points = nan .* out of range"):
        load_profile(path)


def test_selection_kwargs():
    assert selection_kwargs(None) == {"head_multiple": 1, "neuron_multiple": 1}
    assert selection_kwargs(load_profile("nvidia-dc-trt-fp16")) == {"head_multiple": 1, "neuron_multiple": 64}


def test_cli_list_and_show():
    from typer.testing import CliRunner

    from optin_deploy.cli import app

    r = CliRunner().invoke(app, ["profiles", "list"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for name in BUILTINS:
        assert name in r.output
    r = CliRunner().invoke(app, ["profiles", "show", "nvidia-dc-trt-fp16"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert "neuron_multiple" in r.output and "64" in r.output and "shapes.max_batch" in r.output


# ----------------------------------------------------------------------------------- alignment


def _scores(model, seed=0):
    from optin_deploy.adapters import get_adapter

    a = get_adapter(model)
    g = torch.Generator().manual_seed(seed)
    return ([torch.rand(h, generator=g, dtype=torch.float64) for h in a.heads_per_layer()],
            [torch.rand(f, generator=g, dtype=torch.float64) for f in a.neurons_per_layer()])


@pytest.mark.parametrize("hm,nm", [(1, 8), (2, 16), (1, 64)])
@pytest.mark.parametrize("fraction", [0.3, 0.55, 0.8])
def test_selection_respects_multiples_and_budget(tmp_path, hm, nm, fraction):
    from conftest import make_tiny_bert

    from optin_deploy.core.costs import mac_cost_model
    from optin_deploy.core.selection import select

    model = make_tiny_bert()
    costs = mac_cost_model(model, 16)
    hs, ns = _scores(model)
    prof = load_profile(write(tmp_path, GOOD.replace("head_multiple = 1", f"head_multiple = {hm}").replace("neuron_multiple = 8", f"neuron_multiple = {nm}")))
    budget = fraction * costs.dense()
    sel = select(hs, ns, costs, budget, **selection_kwargs(prof))
    heads, neurons = sel.plan.counts()
    assert costs.total(heads, neurons) <= budget * (1 + 1e-9)
    for f, F in zip(neurons, costs.neuron_counts):
        assert f % nm == 0 or f == F  # aligned, or a layer narrower than the multiple kept whole
    for h, H in zip(heads, costs.head_counts):
        assert h % hm == 0 or h == H
    # the unaligned selection is at least as good (alignment only constrains)
    free = select(hs, ns, costs, budget)
    assert free.total_score >= sel.total_score - 1e-9
