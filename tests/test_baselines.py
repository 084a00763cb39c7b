"""Baseline scorers (random, magnitude, Fisher) and the scorer registry, on tiny models."""

from __future__ import annotations

import pytest
import torch

from optin_deploy.adapters import get_adapter
from optin_deploy.core.baselines import (
    SCORERS,
    UnitScores,
    fisher_bruteforce,
    fisher_scores,
    magnitude_scores,
    random_scores,
    score_units,
    unit_weight_counts,
)
from optin_deploy.core.costs import mac_cost_model
from optin_deploy.core.masking import UnitMasks
from optin_deploy.core.selection import select
from optin_deploy.core.surgery import apply_plan
from optin_deploy.errors import OptinError

from conftest import FAMILIES, make_tiny_bert, make_tiny_timm, text_inputs


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Scores cached by ``core.score_cache`` go to a temporary folder, not the user's cache."""
    monkeypatch.setenv("OPTIN_DEPLOY_CACHE", str(tmp_path / "cache"))


def _close(a: UnitScores, b: UnitScores, rtol=1e-4, atol=1e-9):
    for x, y in zip(a.heads + a.neurons, b.heads + b.neurons):
        assert torch.allclose(x, y, rtol=rtol, atol=atol * max(1.0, float(y.abs().max()) if y.numel() else 1.0)), (x, y)


def _zero_head(adapter, layer, h):
    parts = adapter.layer_parts(layer)
    dh, nh = adapter.head_dim(), adapter.num_heads(layer)
    rows = torch.arange(h * dh, (h + 1) * dh)
    with torch.no_grad():
        if parts.qkv is not None:
            for j in range(3):
                parts.qkv.weight[rows + j * nh * dh] = 0
                parts.qkv.bias[rows + j * nh * dh] = 0
        else:
            for lin in (parts.q, parts.k, parts.v):
                lin.weight[rows] = 0
                lin.bias[rows] = 0
        parts.out_proj.weight[:, rows] = 0


@pytest.mark.parametrize("name", list(SCORERS))
def test_shapes_every_family(family_case, name):
    fam, model, inputs = family_case
    if name == "optin" and fam in ("hf_vit", "hf_deit"):
        pytest.skip("OPTIN itself is covered by test_core; the wrapper is family-independent")
    a = get_adapter(model)
    s = score_units(name, model, inputs, seed=0)
    assert s.method == name
    assert [t.numel() for t in s.heads] == a.heads_per_layer()
    assert [t.numel() for t in s.neurons] == a.neurons_per_layer()
    assert all(torch.isfinite(t).all() for t in s.heads + s.neurons)
    heads, neurons = s  # unpacks like RawScores.combined()
    assert heads is s.heads and neurons is s.neurons
    again = UnitScores.from_dict(s.to_dict())
    _close(again, s, rtol=1e-6)


def test_determinism():
    model, x = make_tiny_bert(), text_inputs()
    _close(random_scores(model, 3), random_scores(model, 3), rtol=0)
    assert not torch.equal(random_scores(model, 3).heads[0], random_scores(model, 4).heads[0])
    _close(magnitude_scores(model), magnitude_scores(model), rtol=0)
    _close(fisher_scores(model, x), fisher_scores(model, x), rtol=1e-6)


def test_random_scaled_by_size():
    a = get_adapter(make_tiny_bert())
    wh, wn = unit_weight_counts(a)
    d, dh = a.hidden_size(), a.head_dim()
    assert wh[0][0] == 3 * dh * (d + 1) + d * dh
    assert wn[0][0] == d + 1 + d
    s = random_scores(a, 0)
    assert all((h <= wh[0][0]).all() for h in s.heads) and all((n <= wn[0][0]).all() for n in s.neurons)
    plain = random_scores(a, 0, scale_by_size=False)
    assert all(((h >= 0) & (h < 1)).all() for h in plain.heads)


@pytest.mark.parametrize("make", [make_tiny_bert, make_tiny_timm], ids=["bert", "timm"])
def test_magnitude_hand_built(make):
    model = make()
    a = get_adapter(model)
    _zero_head(a, 1, 2)
    parts = a.layer_parts(2)
    with torch.no_grad():
        parts.fc1.weight[7] = 0
        parts.fc1.bias[7] = 0
        parts.fc2.weight[:, 7] = 0
        parts.fc1.weight[9] *= 10  # a much larger neuron
    s = magnitude_scores(model)
    assert s.heads[1][2] == 0 and int(torch.cat(s.heads).argmin()) == 1 * 4 + 2
    assert s.neurons[2][7] == 0 and int(s.neurons[2].argmin()) == 7
    assert int(s.neurons[2].argmax()) == 9
    # explicit value of one neuron and the L2 variant
    want = (parts.fc1.weight[3] ** 2).sum() + parts.fc1.bias[3] ** 2 + (parts.fc2.weight[:, 3] ** 2).sum()
    assert torch.isclose(s.neurons[2][3], want.double(), rtol=1e-5)
    assert torch.allclose(magnitude_scores(model, squared=False).neurons[2], s.neurons[2].sqrt())
    # the least important head is the first to go under a budget of all but one head
    cm = mac_cost_model(model, 8)
    sel = select(s.heads, s.neurons, cm, cm.dense() - cm.attn(0, 1))
    assert 2 not in sel.plan.heads[1] and sum(len(h) for h in sel.plan.heads) == sum(a.heads_per_layer()) - 1


def test_fisher_matches_bruteforce(family_case):
    fam, model, inputs = family_case
    _close(fisher_scores(model, inputs, chunk=3), fisher_bruteforce(model, inputs), rtol=1e-3, atol=1e-6)
    labels = torch.arange(next(iter(inputs.values())).shape[0]) % 3
    f = fisher_scores(model, inputs, labels)
    assert f.info["target"] == "labels"
    _close(f, fisher_bruteforce(model, inputs, labels), rtol=1e-3, atol=1e-6)


def test_fisher_finite_differences():
    model = make_tiny_bert().double()
    a = get_adapter(model)
    x = text_inputs(batch=3)
    with torch.no_grad():
        labels = a.logits(a.forward(x)).argmax(-1)
    f = fisher_scores(model, x)  # predicted labels = the labels fixed above
    assert f.info["target"] == "predicted"
    eps = 1e-5

    def losses(kind, layer, idx, delta):
        m = torch.ones(a.num_heads(layer) if kind == "head" else a.num_neurons(layer), dtype=torch.float64)
        m[idx] += delta
        with UnitMasks(a) as masks, torch.no_grad():
            (masks.heads if kind == "head" else masks.neurons)[layer] = m
            z = a.logits(a.forward(x))
        return torch.nn.functional.cross_entropy(z, labels, reduction="none")

    for kind, layer, idx in [("head", 0, 1), ("head", 2, 3), ("neuron", 1, 5), ("neuron", 2, 40)]:
        g = (losses(kind, layer, idx, eps) - losses(kind, layer, idx, -eps)) / (2 * eps)  # per sample
        want = float((g ** 2).sum())
        got = float((f.heads if kind == "head" else f.neurons)[layer][idx])
        assert got == pytest.approx(want, rel=1e-5, abs=1e-12), (kind, layer, idx)


def test_fisher_batches_and_chunks_agree():
    model, x = make_tiny_bert(), text_inputs(batch=6)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    one = fisher_scores(model, x, y, chunk=6)
    _close(fisher_scores(model, x, y, chunk=1), one, rtol=1e-4, atol=1e-6)
    pairs = [({k: v[:2] for k, v in x.items()}, y[:2]), ({k: v[2:] for k, v in x.items()}, y[2:])]
    _close(fisher_scores(model, pairs), one, rtol=1e-4, atol=1e-6)
    # parameters' requires_grad and the training flag are restored
    assert all(p.requires_grad for p in model.parameters()) and not model.training


def test_fisher_dead_head_is_zero():
    model, x = make_tiny_bert(), text_inputs()
    a = get_adapter(model)
    _zero_head(a, 0, 1)
    f = fisher_scores(model, x, label_mode="sampled")
    assert f.heads[0][1] == 0 and (torch.cat(f.heads) > 0).sum() == sum(a.heads_per_layer()) - 1


def test_fisher_regression_without_labels():
    model, x = make_tiny_bert(num_labels=1), text_inputs()
    f = fisher_scores(model, x)
    assert f.info["target"] == "model-gaussian"
    assert all((t >= 0).all() for t in f.heads + f.neurons) and float(torch.cat(f.neurons).sum()) > 0


@pytest.mark.parametrize("name", list(SCORERS))
@pytest.mark.parametrize("budget", [0.4, 0.7])
def test_selection_with_each_scorer(name, budget):
    model, x = make_tiny_bert(), text_inputs()
    heads, neurons = score_units(name, model, x, seed=0)
    a = get_adapter(model)
    cm = mac_cost_model(model, a.seq_len(x))
    sel = select(heads, neurons, cm, budget * cm.dense())
    assert sel.cost <= budget * cm.dense() + 1e-6
    pruned = apply_plan(model, sel.plan)
    pa = get_adapter(pruned)
    assert pa.encoder_macs(a.seq_len(x)) == pytest.approx(sel.cost)
    with torch.no_grad():
        assert torch.isfinite(pa.logits(pa.forward(x))).all()


def test_optin_fast_wrapper():
    model, x = make_tiny_bert(), text_inputs()
    s = score_units("optin", model, x, method="fast", probes=4, kl_probes=2)
    assert s.info["method"] == "fast"
    assert [t.numel() for t in s.neurons] == get_adapter(model).neurons_per_layer()
    again = score_units("optin", model, x, method="fast", probes=4, kl_probes=2)
    _close(again, s, rtol=1e-9)
    assert again.info["via"] == "score_cache.score_model"  # the one OPTIN entry point, cached
    assert again.info.get("cached") and again.seconds == pytest.approx(s.info["raw_seconds"])


def test_optin_matches_exact_scores():
    from optin_deploy.core.scoring import ScoreSettings, exact_scores

    model, x = make_tiny_bert(), text_inputs()
    heads, neurons = exact_scores(get_adapter(model), x, ScoreSettings()).combined(10.0)
    s = score_units("optin", model, x)
    for u, v in zip(s.heads + s.neurons, heads + neurons):
        assert torch.allclose(u, v.double(), rtol=1e-6, atol=1e-12)


def test_unknown_scorer():
    with pytest.raises(OptinError, match="unknown scorer 'taylor'"):
        score_units("taylor", make_tiny_bert())
    with pytest.raises(ValueError, match="needs calibration inputs"):
        score_units("fisher", make_tiny_bert())


def test_compare_benchmark_smoke(tmp_path, monkeypatch):
    """benchmarks/compare.py end to end on a tiny fake image task, then resumed from its cache."""
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import compare
    import optin_deploy.zoo as zoo
    from optin_deploy.data.types import Split, Task, TaskData

    from conftest import make_tiny_vit

    def fake_task(name, **kw):
        g = torch.Generator().manual_seed(0)
        mk = lambda n: Split(torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g))  # noqa: E731
        return Task(name, make_tiny_vit(), TaskData("fake", "image", "classification", list("abcde"), mk(40), mk(20), mk(20)))

    monkeypatch.setattr(zoo, "get_task", fake_task)
    monkeypatch.setattr(zoo, "set_threads", lambda: 1)
    argv = ["--tasks", "fake", "--out", str(tmp_path), "--scorers", "random,magnitude,fisher", "--budgets", "0.5,0.8", "--calib-samples", "8"]
    compare.main(argv)
    res = json.loads((tmp_path / "compare_fake.json").read_text())
    assert set(res["scorers"]) == {"random", "magnitude", "fisher"}
    assert res["scorers"]["fisher"]["info"]["fisher_labels"] == "training labels"
    for e in res["scorers"].values():
        assert set(e["budgets"]) == {"0.50", "0.80"}
        assert all(r["macs_ratio"] <= r["budget"] + 1e-9 for r in e["budgets"].values())
    assert (tmp_path / "compare_fake.png").stat().st_size > 0
    assert "| fisher |" in (tmp_path / "compare.md").read_text()
    # resumed: nothing is recomputed, a new budget is added
    monkeypatch.setattr(compare, "score_units", lambda *a, **k: pytest.fail("scores should come from the cache"))
    compare.main(argv[:-4] + ["--budgets", "0.5,0.6", "--calib-samples", "8"])
    res = json.loads((tmp_path / "compare_fake.json").read_text())
    assert set(res["scorers"]["random"]["budgets"]) == {"0.50", "0.60", "0.80"}
