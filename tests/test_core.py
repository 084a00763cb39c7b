"""Core: surgery exactness, cost accounting, selection, scoring equivalence and determinism."""

from __future__ import annotations

import pytest
import torch

from optin_deploy.adapters import get_adapter
from optin_deploy.core.costs import counted_encoder_macs, mac_cost_model
from optin_deploy.core.masking import UnitMasks
from optin_deploy.core.scoring import ScoreSettings, exact_scores, reference_scores
from optin_deploy.core.selection import select
from optin_deploy.core.surgery import PrunePlan, apply_plan, plan_masks, random_plan
from optin_deploy.errors import OptinError
from optin_deploy.pruned_io import load_pruned, save_pruned

from conftest import FAMILIES, TEXT_FAMILIES, family_params, make_tiny_bert, make_tiny_text, text_inputs


def logits_of(model, inputs):
    a = get_adapter(model)
    with torch.no_grad():
        return a.logits(a.forward(inputs))


@pytest.mark.parametrize("seed", [0, 1])
def test_surgery_equals_masking(family_case, seed):
    name, model, inputs = family_case
    plan = random_plan(model, seed=seed, keep=0.5, empty_heads_layer=1, empty_mlp_layer=2)
    assert plan.counts()[0][1] == 0 and plan.counts()[1][2] == 0
    a = get_adapter(model)
    hm, nm = plan_masks(model, plan)
    with UnitMasks(a) as masks, torch.no_grad():
        masks.heads, masks.neurons = hm, nm
        masked = a.logits(a.forward(inputs))
    pruned = apply_plan(model, plan)
    pa = get_adapter(pruned)
    assert pa.heads_per_layer() == plan.counts()[0]
    assert pa.neurons_per_layer() == plan.counts()[1]
    # no hooks left behind, and the parameter count really shrank
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in pruned.modules())
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    out = logits_of(pruned, inputs)
    assert torch.allclose(out, masked, atol=1e-5), (out - masked).abs().max()


def test_save_load_roundtrip(family_case, tmp_path):
    name, model, inputs = family_case
    pruned = apply_plan(model, random_plan(model, seed=3, empty_heads_layer=0))
    save_pruned(pruned, tmp_path / "m")
    again = load_pruned(tmp_path / "m")
    assert get_adapter(again).heads_per_layer() == get_adapter(pruned).heads_per_layer()
    assert torch.equal(logits_of(again, inputs), logits_of(pruned, inputs))


def test_load_corrupt_weights(tmp_path):
    model = make_tiny_bert()
    save_pruned(apply_plan(model, random_plan(model)), tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(OptinError, match="cannot load weights"):
        load_pruned(tmp_path / "m")
    with pytest.raises(OptinError, match="not a pruned-model folder"):
        load_pruned(tmp_path)


def test_unsupported_model():
    with pytest.raises(OptinError, match="unsupported model architecture Linear.*supports"):
        get_adapter(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("seed", [0, 1])
def test_analytic_macs_match_counted(family_case, seed):
    name, model, inputs = family_case
    pruned = apply_plan(model, random_plan(model, seed=seed, empty_heads_layer=2, empty_mlp_layer=0))
    for m in (model, pruned):
        a = get_adapter(m)
        analytic = a.encoder_macs(a.seq_len(inputs))
        counted = counted_encoder_macs(m, inputs)
        assert abs(analytic - counted) <= 0.01 * counted, (analytic, counted)


@pytest.mark.parametrize("budget", [0.3, 0.5, 0.6, 0.8, 1.0])
def test_selection_respects_budget(budget):
    model = make_tiny_bert()
    a = get_adapter(model)
    costs = mac_cost_model(model, 12)
    g = torch.Generator().manual_seed(0)
    hs = [torch.rand(h, generator=g) for h in a.heads_per_layer()]
    ns = [torch.rand(f, generator=g) for f in a.neurons_per_layer()]
    sel = select(hs, ns, costs, budget * costs.dense())
    pruned = apply_plan(model, sel.plan)
    real = get_adapter(pruned).encoder_macs(12)
    assert real <= budget * costs.dense() + 1e-6
    assert sel.cost == pytest.approx(real)
    # the budget is used: adding the best remaining neuron would overflow it (or nothing is left)
    assert budget * costs.dense() - real < costs.neuron[0] + costs.attn(0, 1) or budget == 1.0
    if budget == 1.0:
        assert sel.plan.counts() == (a.heads_per_layer(), a.neurons_per_layer())


def test_selection_keeps_top_scored_units():
    model = make_tiny_bert()
    a = get_adapter(model)
    costs = mac_cost_model(model, 12)
    hs = [torch.full((h,), 100.0) for h in a.heads_per_layer()]  # heads all matter a lot
    ns = [torch.zeros(f) for f in a.neurons_per_layer()]
    ns[1][:10] = 1.0
    sel = select(hs, ns, costs, 0.8 * costs.dense())  # all heads cost ~61% here
    assert sel.plan.counts()[0] == a.heads_per_layer()
    assert set(range(10)) <= set(sel.plan.neurons[1])


def test_selection_alignment():
    model = make_tiny_bert()
    a = get_adapter(model)
    costs = mac_cost_model(model, 12)
    g = torch.Generator().manual_seed(1)
    hs = [torch.rand(h, generator=g) for h in a.heads_per_layer()]
    ns = [torch.rand(f, generator=g) for f in a.neurons_per_layer()]
    for budget in (0.4, 0.7):
        sel = select(hs, ns, costs, budget * costs.dense(), neuron_multiple=8, head_multiple=2)
        assert all(len(n) % 8 == 0 for n in sel.plan.neurons)
        assert all(len(h) % 2 == 0 for h in sel.plan.heads)
        assert sel.cost <= budget * costs.dense()


TEXT = ["bert", *TEXT_FAMILIES]


def _close(x, y):
    """Equal to 1e-4 relative. KL terms of units that barely move the logits (1e-12 in float64,
    a thousandth of the largest) carry float64 cancellation noise of ~1e-15 absolute; a floor of
    1e-6 of the largest term keeps that noise out without loosening the others."""
    x, y = torch.cat(x), torch.cat(y)
    assert (x > 0).all()
    floor = 1e-6 * x.abs().max()
    assert torch.allclose(x, y, rtol=1e-4, atol=float(floor)), ((x - y).abs() / x).max()


@pytest.mark.parametrize("family", family_params(TEXT))
def test_exact_scoring_matches_reference(family):
    model = (make_tiny_bert(layers=3) if family == "bert" else make_tiny_text(family)).double()
    a = get_adapter(model)
    inputs = text_inputs(batch=5, seq=10)
    s = ScoreSettings(num_tokens=30, group=4)
    ref = reference_scores(a, inputs, s)
    fast = exact_scores(a, inputs, s)
    for x, y in [(ref.head_md, fast.head_md), (ref.head_kl, fast.head_kl), (ref.neuron_md, fast.neuron_md), (ref.neuron_kl, fast.neuron_kl)]:
        _close(x, y)


@pytest.mark.parametrize("family", family_params(TEXT))
def test_fast_scores_every_text_family(family):
    from optin_deploy.core.fast import fast_scores

    model = FAMILIES[family][0]()
    a = get_adapter(model)
    s = fast_scores(a, text_inputs(batch=4, seq=10), ScoreSettings(num_tokens=20), probes=4, kl_probes=2)
    assert [len(h) for h in s.head_md] == a.heads_per_layer() and [len(n) for n in s.neuron_md] == a.neurons_per_layer()
    for t in s.head_md + s.neuron_md + s.neuron_kl:
        assert torch.isfinite(t).all() and (t >= 0).all()
    assert all(float(t.sum()) > 0 for t in s.neuron_md)  # every layer's neurons got a signal


@pytest.mark.parametrize("family", family_params(["timm_vit", "hf_dinov2", "hf_dinov2_swiglu", "hf_swin"]))
def test_exact_scoring_matches_reference_vision(family):
    from conftest import FAMILIES

    make, make_inputs = FAMILIES[family]
    model = make().double()
    a = get_adapter(model)
    inputs = {"pixel_values": make_inputs(3)["pixel_values"].double()}
    s = ScoreSettings(num_tokens=20, group=3)
    ref, fast = reference_scores(a, inputs, s), exact_scores(a, inputs, s)
    for x, y in [(ref.head_md, fast.head_md), (ref.neuron_md, fast.neuron_md), (ref.neuron_kl, fast.neuron_kl)]:
        assert torch.allclose(torch.cat(x), torch.cat(y), rtol=1e-4, atol=0)


def test_scoring_is_deterministic():
    model = make_tiny_bert()
    a = get_adapter(model)
    inputs = text_inputs(batch=4, seq=12)
    s1 = exact_scores(a, inputs, ScoreSettings(num_tokens=16, seed=7))
    s2 = exact_scores(a, inputs, ScoreSettings(num_tokens=16, seed=7))
    assert all(torch.equal(x, y) for x, y in zip(s1.neuron_md + s1.head_md, s2.neuron_md + s2.head_md))
    s3 = exact_scores(a, inputs, ScoreSettings(num_tokens=16, seed=8))
    assert not all(torch.equal(x, y) for x, y in zip(s1.neuron_md, s3.neuron_md))
