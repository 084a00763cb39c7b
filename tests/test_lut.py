"""Latency tables: JSON round-trip -> CostModel, selection under a latency budget, the closed loop,
and one real (small) measurement on a tiny BERT."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from conftest import make_tiny_bert
from optin_deploy.errors import MissingRuntimeError, OptinError
from optin_deploy.lut import LatencyTable, LutMismatchWarning, load_lut, read_lut

TINY_PROFILE = """
name = "tiny-cpu"
runtime = "onnxruntime-cpu"
device = "cpu"
precision = "fp32"
batch_size = 2
seq_len = 16
threads = 1
head_multiple = 1
neuron_multiple = 8
[shapes]
max_batch = 4
max_seq = 32
"""


def synthetic_table(L=3, H=4, F=48) -> LatencyTable:
    """A made-up table for the tiny BERT: attention non-linear in heads, MLP linear-ish in width."""
    return LatencyTable(
        profile={"name": "tiny-cpu", "runtime": "onnxruntime-cpu", "precision": "fp32", "threads": 1},
        shapes={"batch": 2, "tokens": 16, "seq_len": 16, "image_size": None},
        model={"name": "tiny", "family": "bert", "num_layers": L, "heads": [H] * L, "neurons": [F] * L, "hidden_size": 32, "head_dim": 8},
        attn_ms=[0.0] + [0.5 + 0.25 * h for h in range(1, H + 1)],
        mlp_widths=[0, 16, 32, 48],
        mlp_ms=[0.0, 0.3, 0.5, 0.7],
        empty_model_ms=1.0,
        dense_model_ms=1.0 + L * (1.5 + 0.7),
    )


def scores(model, seed=0):
    from optin_deploy.adapters import get_adapter

    a = get_adapter(model)
    g = torch.Generator().manual_seed(seed)
    return ([torch.rand(h, generator=g, dtype=torch.float64) for h in a.heads_per_layer()],
            [torch.rand(f, generator=g, dtype=torch.float64) for f in a.neurons_per_layer()])


def test_table_predictions_and_cost_model():
    t = synthetic_table()
    assert t.mlp(24) == pytest.approx(0.4)  # piecewise-linear
    assert t.predict([4, 4, 4], [48, 48, 48]) == pytest.approx(t.dense_model_ms)
    cm = t.cost_model()
    assert cm.unit == "ms" and cm.num_layers == 3
    assert cm.attn(1, 2) == pytest.approx(1.0) and cm.attn(0, 0) == 0.0
    intercept, slope = t.linear_fit()
    assert slope == pytest.approx(0.2 / 16, rel=1e-6)
    assert cm.neuron == [pytest.approx(slope)] * 3
    assert cm.fixed == pytest.approx(1.0 + 3 * intercept)
    assert cm.dense() == pytest.approx(t.dense_model_ms, rel=0.02)


def test_a_noisy_table_never_gives_a_unit_a_negative_cost():
    """Timing noise on a tiny model can measure h heads faster than h-1 and fit a negative per-neuron slope; the cost
    model holds every unit's cost at >= 0, so removing everything costs exactly ``fixed`` and any budget at or above
    ``fixed`` has a plan (it crashed as "no plan fits the budget" in CI)."""
    from optin_deploy.core.selection import select

    base = synthetic_table()
    d = base.to_dict()
    d["attn_ms"] = [0.0, 0.9, 0.4, 1.1, 0.2]  # dips below earlier counts
    d["mlp_ms"] = [0.0, 0.9, 0.6, 0.3]  # wider measured faster: a fitted slope would be < 0
    t = LatencyTable.from_dict(d)
    assert t.attn_ms == [0.0, 0.9, 0.9, 1.1, 1.1] and t.mlp_ms == [0.0, 0.9, 0.9, 0.9]
    cm = t.cost_model()
    assert all(n == pytest.approx(0.0) for n in cm.neuron)
    assert cm.fixed == pytest.approx(1.0 + 3 * 0.9)
    # attention: the least-squares line through 1..4 heads (0.8 + 0.08 h), nothing without heads
    assert [cm.attn(0, h) for h in range(5)] == pytest.approx([0.0, 0.88, 0.96, 1.04, 1.12])
    assert cm.dense() >= cm.fixed and cm.dense() == pytest.approx(t.dense_predicted())
    model = make_tiny_bert()
    h, n = scores(model)
    sel = select(h, n, cm, cm.fixed + 0.5 * (cm.dense() - cm.fixed))
    assert sel.cost <= cm.fixed + 0.5 * (cm.dense() - cm.fixed) + 1e-9


def test_attention_costs_follow_a_line_so_timing_noise_does_not_move_the_plan():
    """One head's step is about the size of the timing noise: two tables of the same model measured minutes apart
    differ in their per-count steps, and the raw steps chose different plans. The cost model reads attention through
    a least-squares line (per-head cost + the cost of having attention at all), so a noisy table and its clean
    version keep the same heads."""
    from optin_deploy.core.selection import select

    clean = synthetic_table()
    d = clean.to_dict()
    rng = np.random.default_rng(3)
    d["attn_ms"] = [0.0] + [v + float(rng.normal(0, 0.04)) for v in d["attn_ms"][1:]]  # +-0.04 ms on 0.25 ms steps
    noisy = LatencyTable.from_dict(d)
    assert noisy.attn_ms != clean.attn_ms
    a, b = clean.attn_line()
    assert (a, b) == (pytest.approx(0.5), pytest.approx(0.25))
    model = make_tiny_bert()
    h, n = scores(model)
    for frac in (0.4, 0.6, 0.8):
        plans = []
        for t in (clean, noisy):
            cm = t.cost_model()
            sel = select(h, n, cm, cm.fixed + frac * (cm.dense() - cm.fixed))
            plans.append(([len(x) for x in sel.plan.heads], [len(x) for x in sel.plan.neurons]))
        # the head counts (where the noise sits) agree; the MLP widths move by at most a few neurons of 48
        assert plans[0][0] == plans[1][0], frac
        assert max(abs(x - y) for x, y in zip(plans[0][1], plans[1][1])) <= 4, frac


def test_json_round_trip(tmp_path):
    t = synthetic_table()
    path = t.save(tmp_path / "lut.json")
    d = json.loads(path.read_text())
    assert d["format"] == "optin-deploy-lut" and "fit" in d
    t2 = read_lut(path)
    assert t2.attn_ms == t.attn_ms and t2.mlp_widths == t.mlp_widths and t2.empty_model_ms == t.empty_model_ms
    a, b = t.cost_model(), load_lut(path)
    for heads, neurons in [([4, 4, 4], [48, 48, 48]), ([0, 2, 3], [8, 0, 40])]:
        assert a.total(heads, neurons) == pytest.approx(b.total(heads, neurons))


def test_bad_files(tmp_path):
    with pytest.raises(OptinError, match="does not exist"):
        read_lut(tmp_path / "none.json")
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(OptinError, match="not valid JSON"):
        read_lut(tmp_path / "x.json")
    (tmp_path / "y.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(OptinError, match="not an optin-deploy latency table"):
        read_lut(tmp_path / "y.json")


def test_mismatch_warnings_and_layer_error(tmp_path):
    t = synthetic_table()
    path = t.save(tmp_path / "lut.json")
    model = make_tiny_bert()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prof = tmp_path / "tiny.toml"
        prof.write_text(TINY_PROFILE)
        load_lut(path, model, prof)  # same profile, shapes and model: no warning
    with pytest.warns(LutMismatchWarning, match="profile 'tiny-cpu', used with 'x86-cpu-ort'"):
        cm = load_lut(path, model, "x86-cpu-ort")
    assert any("batch 2" in w for w in cm.info["warnings"])
    with pytest.raises(OptinError, match="3-layer model, this model has 2"):
        load_lut(path, make_tiny_bert(layers=2))


@pytest.mark.parametrize("fraction", [0.35, 0.6, 0.85])
@pytest.mark.parametrize("nm", [1, 8])
def test_select_under_a_latency_table_respects_budget(fraction, nm):
    from optin_deploy.core.selection import select

    model = make_tiny_bert()
    t = synthetic_table()
    cm = t.cost_model()
    hs, ns = scores(model)
    budget = fraction * cm.dense()
    sel = select(hs, ns, cm, budget, neuron_multiple=nm)
    heads, neurons = sel.plan.counts()
    assert cm.total(heads, neurons) <= budget * (1 + 1e-9)
    assert sel.cost <= budget * (1 + 1e-9)
    assert all(f % nm == 0 for f in neurons)
    assert sum(heads) + sum(neurons) > 0


def test_select_for_latency_tightens_until_within_target():
    from optin_deploy.latency_budget import select_for_latency

    model = make_tiny_bert()
    t = synthetic_table()
    calls = []

    def measure(pruned):  # a "target" 20 % slower than the table says
        from optin_deploy.adapters import get_adapter

        a = get_adapter(pruned)
        ms = 1.2 * t.predict(a.heads_per_layer(), a.neurons_per_layer())
        calls.append(ms)
        return ms

    target = 0.6 * t.dense_model_ms
    res = select_for_latency(model, scores(model), None, t, target, measure, max_rounds=4)
    assert res.rounds[0]["measured_ms"] > target  # the table alone overshoots
    assert res.met and res.measured_ms <= target
    assert len(res.rounds) >= 2 and len(calls) == len({(tuple(r["heads"]), tuple(r["neurons"])) for r in res.rounds})
    for r in res.rounds:
        assert {"budget_ms", "predicted_ms", "measured_ms", "measured_over_target"} <= set(r)
    from optin_deploy.adapters import get_adapter

    assert get_adapter(res.model).heads_per_layer() == res.plan.counts()[0]
    d = res.to_dict()
    assert d["measured_ms"] == res.measured_ms and len(d["rounds"]) == len(res.rounds)


def test_select_for_latency_loosens_when_far_under():
    from optin_deploy.latency_budget import select_for_latency

    model = make_tiny_bert()
    t = synthetic_table()

    def measure(pruned):  # the target is much faster than the table says
        from optin_deploy.adapters import get_adapter

        a = get_adapter(pruned)
        return 0.7 * t.predict(a.heads_per_layer(), a.neurons_per_layer())

    target = 0.6 * t.dense_model_ms
    res = select_for_latency(model, scores(model), None, t, target, measure, max_rounds=4)
    assert res.rounds[0]["measured_ms"] < 0.9 * target
    assert res.rounds[-1]["budget_ms"] > res.rounds[0]["budget_ms"]
    assert res.met and res.measured_ms >= res.rounds[0]["measured_ms"]


def test_select_for_latency_rejects_unreachable_target():
    from optin_deploy.latency_budget import select_for_latency

    model = make_tiny_bert()
    with pytest.raises(OptinError, match="below what pruning can reach.*; raise --latency-ms$"):
        select_for_latency(model, scores(model), None, synthetic_table(), 0.5, lambda m: 1.0)
    # a relative budget is told to change the flag it came from (it was told to raise a --latency-ms it never passed)
    with pytest.raises(OptinError, match="below what pruning can reach.*; lower --speedup$"):
        select_for_latency(model, scores(model), None, synthetic_table(), 0.5, lambda m: 1.0, advice="lower --speedup")


def test_gpu_profile_without_provider_errors_clearly():
    import onnxruntime as ort

    from optin_deploy.lut import ort_runtime_for
    from optin_deploy.target import resolve_target

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA provider present")
    with pytest.raises(MissingRuntimeError, match="CUDAExecutionProvider"):
        ort_runtime_for(resolve_target("nvidia-gpu-ort-cuda"))


def test_real_measurement_on_tiny_bert(tmp_path):
    """A real (small) table: structure only, no timing assertions."""
    from optin_deploy.core.selection import select
    from optin_deploy.lut import measure_lut

    prof = tmp_path / "tiny.toml"
    prof.write_text(TINY_PROFILE)
    model = make_tiny_bert()
    t = measure_lut(model, prof, mlp_step=24, rounds=2, iters=2, warmup=1)
    assert len(t.attn_ms) == 5 and t.attn_ms[0] == 0.0
    assert t.mlp_widths == [0, 24, 48] and t.mlp_ms[0] == 0.0
    assert t.empty_model_ms > 0 and t.dense_model_ms > 0 and t.scale > 0
    assert t.shapes == {"batch": 2, "tokens": 16, "seq_len": 16, "image_size": None}
    assert t.profile["name"] == "tiny-cpu" and t.model["heads"] == [4, 4, 4]
    env = t.environment
    assert env["device"]["cpu"] and env["versions"]["onnxruntime"] and env["versions"]["torch"]
    assert env["runtime"]["provider"] == "CPUExecutionProvider"
    path = t.save(tmp_path / "lut.json")
    cm = load_lut(path, model, prof)
    assert cm.info["warnings"] == []
    hs, ns = scores(model)
    budget = cm.fixed + 0.7 * (cm.dense() - cm.fixed)  # on a tiny model most of the time is what pruning cannot remove
    sel = select(hs, ns, cm, budget)
    assert sel.cost <= budget * (1 + 1e-9)


def test_real_measurement_through_openvino(tmp_path):
    """An OpenVINO profile's table is measured through OpenVINO (the fused fp32 graph it reads), not onnxruntime,
    and keys apart from onnxruntime's."""
    pytest.importorskip("openvino")
    from optin_deploy.lut import measure_lut, ort_runtime_for, table_key
    from optin_deploy.target import resolve_target

    prof = tmp_path / "tiny-ov.toml"
    prof.write_text(TINY_PROFILE.replace('name = "tiny-cpu"', 'name = "tiny-ov"').replace('runtime = "onnxruntime-cpu"', 'runtime = "openvino-cpu"'))
    target = resolve_target(prof)
    assert ort_runtime_for(target).name == "openvino-cpu"
    model = make_tiny_bert()
    t = measure_lut(model, prof, mlp_step=24, rounds=2, iters=2, warmup=1)
    assert t.environment["runtime"]["backend"] == "openvino" and t.environment["runtime"]["inference_precision"] == "f32"
    assert len(t.attn_ms) == 5 and t.mlp_widths == [0, 24, 48] and t.dense_model_ms > 0
    other = tmp_path / "tiny.toml"
    other.write_text(TINY_PROFILE)
    assert table_key(model, target) != table_key(model, resolve_target(other))


def test_select_for_latency_stops_at_the_dense_model_and_never_ships_it():
    """Pruned models measuring far under the target (the table over-predicts them) make the loop raise the budget
    until the selection is the dense model: the dense model is measured once; when it misses the target it is the
    upper end of the bracket and a pruned round is returned (session 15: the loop stopped there and shipped the first,
    far smaller round; when the dense model meets the target too there is nothing to prune,
    tests/test_adversarial_s15b.py)."""
    from optin_deploy.adapters import get_adapter
    from optin_deploy.latency_budget import select_for_latency

    model = make_tiny_bert()
    t = synthetic_table()

    def measure(m):
        dense = get_adapter(m).heads_per_layer() == [4, 4, 4] and get_adapter(m).neurons_per_layer() == [48, 48, 48]
        return t.dense_model_ms if dense else 0.1 * t.dense_model_ms

    res = select_for_latency(model, scores(model), None, t, 0.9 * t.dense_model_ms, measure, max_rounds=20)
    assert any(r.get("dense") for r in res.rounds) and len(res.rounds) <= 20
    assert res.met and not res.rounds[res.chosen_round].get("dense")
    a = get_adapter(res.model)
    assert (a.heads_per_layer(), a.neurons_per_layer()) != ([4, 4, 4], [48, 48, 48])
    # a target the dense model already meets is nothing to prune
    with pytest.raises(OptinError, match="the dense model already meets --latency-ms"):
        select_for_latency(model, scores(model), None, t, 2 * t.dense_model_ms, lambda m: 1.0)


def test_relative_measure_times_against_the_dense_model(tmp_path):
    from optin_deploy.core import surgery
    from optin_deploy.lut import make_relative_measure_fn

    prof = tmp_path / "tiny.toml"
    prof.write_text(TINY_PROFILE)
    model = make_tiny_bert()
    from optin_deploy.target import resolve_target

    fn = make_relative_measure_fn(resolve_target(prof), model, reference_ms=10.0, rounds=2, block=2, warmup=1)
    pruned = surgery.apply_plan(model, surgery.random_plan(model, seed=1))
    ms = fn(pruned)
    h = fn.history[-1]
    assert ms == pytest.approx(10.0 * h["candidate_ms"] / h["dense_ms"]) and h["dense_ms"] > 0


def test_grouped_table_predicts_per_layer():
    """A table for a model whose layers differ (Swin's stages): one table per group of equal layers."""
    t = synthetic_table(L=4, H=4, F=48)
    t.model.update(heads=[2, 2, 4, 4], neurons=[24, 24, 48, 48])
    t.groups = [{"layers": [0, 1], "attn_ms": [0.0, 0.2, 0.3], "mlp_widths": [0, 24], "mlp_ms": [0.0, 0.2]},
                {"layers": [2, 3], "attn_ms": [0.0, 0.5, 0.75, 1.0, 1.25], "mlp_widths": [0, 16, 32, 48], "mlp_ms": [0.0, 0.3, 0.5, 0.7]}]
    assert t.predict([2, 1, 4, 0], [24, 12, 48, 0]) == pytest.approx(1.0 + 0.3 + 0.2 + 0.2 + 0.1 + 1.25 + 0.7)
    cm = t.cost_model()
    assert cm.attn(0, 2) == pytest.approx(0.3) and cm.attn(3, 2) == pytest.approx(0.75)
    assert cm.neuron[0] == pytest.approx(0.2 / 24) and cm.neuron[2] != cm.neuron[0]
    again = LatencyTable.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again.predict([2, 1, 4, 0], [24, 12, 48, 0]) == pytest.approx(t.predict([2, 1, 4, 0], [24, 12, 48, 0]))


@pytest.mark.slow
def test_real_measurement_on_tiny_swin(tmp_path):
    """Swin's two stages get a table each, measured in context; selection under it stays in budget."""
    from conftest import make_tiny_swin
    from optin_deploy.core.selection import select
    from optin_deploy.lut import measure_lut

    prof = tmp_path / "tiny.toml"
    prof.write_text(TINY_PROFILE)
    model = make_tiny_swin()
    t = measure_lut(model, prof, mlp_step=24, rounds=2, iters=2, warmup=1)
    assert [g["layers"] for g in t.groups] == [[0, 1], [2, 3]]
    assert [len(g["attn_ms"]) for g in t.groups] == [4, 4] and [g["mlp_widths"] for g in t.groups] == [[0, 24], [0, 24, 48]]
    assert t.model["hidden_sizes"] == [24, 24, 48, 48] and t.scale > 0
    cm = load_lut(t.save(tmp_path / "lut.json"), model, prof)
    assert cm.info["warnings"] == []
    assert cm.dense() == pytest.approx(t.dense_predicted())
    hs, ns = scores(model)
    budget = cm.fixed + 0.7 * (cm.dense() - cm.fixed)  # on a tiny model most of the time is what pruning cannot remove
    sel = select(hs, ns, cm, budget)
    assert sel.cost <= budget * (1 + 1e-9)


def test_cached_lut_measures_once_and_keys_on_structure(tmp_path, monkeypatch):
    """The build's latency table is measured once per (model structure, profile, machine) and then read
    from the cache; another structure or precision is another entry."""
    import optin_deploy.lut as lut_mod
    from optin_deploy.lut import cached_lut, table_key

    monkeypatch.setenv("OPTIN_DEPLOY_CACHE", str(tmp_path / "cache"))
    prof = tmp_path / "tiny.toml"
    prof.write_text(TINY_PROFILE)
    model = make_tiny_bert()
    calls = []

    def fake_measure(m, p, **kw):  # the measurement itself is tested above; here only the caching
        calls.append(1)
        return synthetic_table()

    monkeypatch.setattr(lut_mod, "measure_lut", fake_measure)
    t1, path, measured = cached_lut(model, prof)
    assert measured and path.is_file() and path.parent == tmp_path / "cache" / "luts"
    t2, path2, measured2 = cached_lut(model, prof)
    assert not measured2 and path2 == path and len(calls) == 1 and t2.to_dict() == t1.to_dict()
    torch.manual_seed(1)
    assert table_key(make_tiny_bert(), prof) == table_key(model, prof)  # weights do not matter, structure does
    prof2 = tmp_path / "tiny2.toml"
    prof2.write_text(TINY_PROFILE.replace('precision = "fp32"', 'precision = "int8"').replace('name = "tiny-cpu"', 'name = "tiny-int8"'))
    assert table_key(model, prof2) != table_key(model, prof)
    path.write_text("{not json")  # a damaged entry is measured again, not an error
    _, _, measured3 = cached_lut(model, prof)
    assert measured3 and len(calls) == 2



def test_time_interleaved_settles_each_runner_before_timing():
    """Each runner gets untimed runs lasting settle_seconds (at least one) before its timed runs of a round."""
    from optin_deploy.lut import time_interleaved

    calls = {"a": 0, "b": 0}

    def runner(name):
        def run():
            calls[name] += 1
        return run

    res = time_interleaved({"a": runner("a"), "b": runner("b")}, rounds=2, iters=3, warmup=1, settle_seconds=0)
    assert calls == {"a": 1 + 2 * (1 + 3), "b": 1 + 2 * (1 + 3)} and res["a"]["n"] == 6
    calls.update(a=0, b=0)
    res = time_interleaved({"a": runner("a"), "b": runner("b")}, rounds=2, iters=3, warmup=1, settle_seconds=0.02)
    assert min(calls.values()) > 1 + 2 * (1 + 3) + 10 and res["b"]["n"] == 6  # settling runs, untimed
