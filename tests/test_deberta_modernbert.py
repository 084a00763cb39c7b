"""DeBERTa-v2/v3 and ModernBERT adapters: what the shared invariant tests (test_core.py,
test_export.py, test_families.py, parametrised over ``conftest.FAMILIES`` / ``TEXT_FAMILIES``, where
these families have their entries) do not cover: the refit on them (ModernBERT has no output
biases), surgery equals masking on the bare encoders, the per-head position projections and their
cost, the gated MLP's row pairs and the pre-norm reduced blocks."""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, make_tiny_deberta, make_tiny_modernbert, text_inputs

from optin_deploy.adapters import get_adapter
from optin_deploy.core.masking import UnitMasks
from optin_deploy.core.reconstruct import reconstruct
from optin_deploy.core.surgery import apply_plan, plan_masks, random_plan
from optin_deploy.pruned_io import load_pruned, save_pruned

FAMS = ["deberta-v2", "deberta-v3", "modernbert", "modernbert-bias"]


def _model(family, **kw):
    make, inputs = FAMILIES[family]
    return make(**kw), inputs()


@pytest.mark.parametrize("family", FAMS)
def test_reconstruct_runs_and_does_not_hurt(family):
    model, inputs = _model(family)
    pruned = apply_plan(model, random_plan(model, seed=2, empty_heads_layer=1, empty_mlp_layer=2))
    rep = reconstruct(model, pruned, inputs)
    assert rep.layers and all(r["error_after"] <= r["error_before"] + 1e-9 for r in rep.layers)


@pytest.mark.parametrize("make", [lambda: make_tiny_deberta(head=False), lambda: make_tiny_deberta(head=False, v3=True),
                                  lambda: make_tiny_modernbert(head=False, bias=True)], ids=["deberta-v2", "deberta-v3", "modernbert"])
def test_bare_encoder(make, tmp_path):
    """The bare encoders (no task head): surgery equals masking on the last hidden state, save/reload
    (kept indices in the structure) exact."""
    model = make()
    inputs = text_inputs()
    a = get_adapter(model)
    assert a.logits(a.forward(inputs)) is None
    plan = random_plan(model, seed=4, empty_heads_layer=0, empty_mlp_layer=1)
    hm, nm = plan_masks(model, plan)
    with UnitMasks(a) as masks, torch.no_grad():
        masks.heads, masks.neurons = hm, nm
        masked = a.forward(inputs).last_hidden_state
    pruned = apply_plan(model, plan)
    with torch.no_grad():
        out = get_adapter(pruned).forward(inputs).last_hidden_state
    assert torch.allclose(out, masked, atol=1e-5)
    save_pruned(pruned, tmp_path / "m")
    again = load_pruned(tmp_path / "m")
    assert type(again) is type(model)
    with torch.no_grad():
        assert torch.equal(get_adapter(again).forward(inputs).last_hidden_state, out)


def test_deberta_position_projections_are_sliced_per_head():
    model = make_tiny_deberta()
    dh = get_adapter(model).head_dim()
    att = model.deberta.encoder.layer[0].attention.self
    pk, pq = att.pos_key_proj.weight.clone(), att.pos_query_proj.weight.clone()
    pruned = apply_plan(model, random_plan(model, seed=0))
    keep = random_plan(model, seed=0).heads[0]
    s = pruned.deberta.encoder.layer[0].attention.self
    rows = torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in keep])
    assert s.num_attention_heads == len(keep) and s.all_head_size == len(keep) * dh
    assert torch.equal(s.pos_key_proj.weight, pk[rows]) and torch.equal(s.pos_query_proj.weight, pq[rows])
    # the shared relative-position table is one for all layers and stays whole
    assert torch.equal(pruned.deberta.encoder.rel_embeddings.weight, model.deberta.encoder.rel_embeddings.weight)


def test_deberta_head_cost_counts_position_projections():
    """The per-head cost includes the head's share of the relative-position projections and the
    c2p / p2c score products; without them the analytic count would be off by far more than 1%."""
    from optin_deploy.core.costs import counted_encoder_macs

    for v3 in (False, True):
        model = make_tiny_deberta(v3=v3)
        a = get_adapter(model)
        inputs = text_inputs(seq=12)
        counted = counted_encoder_macs(model, inputs)
        d, dh, s = a.hidden_size(), a.head_dim(), 12
        plain = sum(a.heads_per_layer()) * (4 * s * d * dh + 2 * s * s * dh) + sum(a.neurons_per_layer()) * a.neuron_mac(s)
        assert abs(a.encoder_macs(s) - counted) <= 0.01 * counted
        assert abs(plain - counted) > 0.05 * counted


def test_modernbert_gated_neuron_is_two_rows():
    model = make_tiny_modernbert(bias=True)
    a = get_adapter(model)
    n = a.num_neurons(0)
    assert n == model.config.intermediate_size and model.model.layers[0].mlp.Wi.out_features == 2 * n
    wi = model.model.layers[0].mlp.Wi.weight.clone()
    keep = [1, 5, 7]
    a.keep_neurons(0, keep)
    mlp = model.model.layers[0].mlp
    assert a.num_neurons(0) == 3 and mlp.Wi.out_features == 6 and mlp.Wo.in_features == 3
    assert torch.equal(mlp.Wi.weight, wi[[1, 5, 7, n + 1, n + 5, n + 7]])
    assert a.neuron_mac(10) == 3 * 10 * a.hidden_size()


def test_modernbert_reduced_blocks_are_pre_norm():
    """No heads: ``x + b_o``; no neurons: ``h + b_2``; no zero-width Linear anywhere."""
    model = make_tiny_modernbert(bias=True)
    pruned = apply_plan(model, random_plan(model, seed=1, empty_heads_layer=0, empty_mlp_layer=0))
    blk = pruned.model.layers[0]
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        out = blk(x, attention_mask=None, position_embeddings=None)
        want = x + model.model.layers[0].attn.Wo.bias + model.model.layers[0].mlp.Wo.bias
    assert torch.allclose(out, want, atol=1e-6)
    assert all(m.in_features > 0 and m.out_features > 0 for m in pruned.modules() if isinstance(m, torch.nn.Linear))
