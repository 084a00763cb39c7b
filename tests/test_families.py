"""Family-specific checks that the shared invariant tests (test_core.py, test_export.py, which are
parametrised over conftest.FAMILIES) do not cover: refusal before loading, the bare encoder,
kept-index structures, MPNet's shared relative-position bias, and family knowledge staying in
adapters/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TEXT_FAMILIES, family_params, make_tiny_bert, make_tiny_text, text_inputs

from optin_deploy.adapters import ADAPTERS, get_adapter
from optin_deploy.core.surgery import apply_plan, random_plan
from optin_deploy.errors import OptinError
from optin_deploy.pruned_io import load_pruned, save_pruned

ROOT = Path(__file__).resolve().parents[1]


def _logits(model, inputs):
    a = get_adapter(model)
    with torch.no_grad():
        return a.logits(a.forward(inputs))


def test_no_model_type_outside_adapters():
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in (ROOT / "optin_deploy").rglob("*.py") if "adapters" not in p.parts
            for i, line in enumerate(p.read_text().splitlines(), 1) if "model_type" in line]
    assert hits == []


@pytest.mark.parametrize("family", list(TEXT_FAMILIES))
def test_bare_encoder_prunes_and_reloads(family, tmp_path):
    model = make_tiny_text(family, head=False)
    a = get_adapter(model)
    assert a.logits(a.forward(text_inputs())) is None  # no task head: nothing to read logits from
    plan = random_plan(model, seed=4, empty_heads_layer=0, empty_mlp_layer=1)
    pruned = apply_plan(model, plan)
    save_pruned(pruned, tmp_path / "m")
    again = load_pruned(tmp_path / "m")
    x = text_inputs()
    with torch.no_grad():
        assert torch.equal(again(**x).last_hidden_state, pruned(**x).last_hidden_state)


def test_structure_records_kept_indices(tmp_path):
    model = make_tiny_text("mpnet")
    plan = random_plan(model, seed=2, empty_heads_layer=1)
    pruned = apply_plan(model, plan)
    pa = get_adapter(pruned)
    assert [pa.kept_heads(i) for i in range(3)] == plan.to_dict()["heads"]
    assert [pa.kept_neurons(i) for i in range(3)] == plan.to_dict()["neurons"]
    save_pruned(pruned, tmp_path / "m")
    spec = json.loads((tmp_path / "m" / "optin_structure.json").read_text())
    assert spec["kept_heads"] == plan.to_dict()["heads"] and spec["kept_neurons"] == plan.to_dict()["neurons"]
    assert spec["heads"] == plan.counts()[0]
    # pruning a pruned model composes the indices (they stay indices into the dense model)
    again = apply_plan(pruned, random_plan(pruned, seed=5))
    ga = get_adapter(again)
    for i in range(3):
        assert set(ga.kept_heads(i)) <= set(pa.kept_heads(i)) and set(ga.kept_neurons(i)) <= set(pa.kept_neurons(i))


def test_counts_only_structure_still_loads(tmp_path):
    """Structure files written before kept indices were recorded (counts only) load as before."""
    model = make_tiny_bert()
    pruned = apply_plan(model, random_plan(model, seed=1, empty_mlp_layer=2))
    save_pruned(pruned, tmp_path / "m")
    f = tmp_path / "m" / "optin_structure.json"
    spec = json.loads(f.read_text())
    del spec["kept_heads"], spec["kept_neurons"]
    f.write_text(json.dumps(spec))
    assert torch.equal(_logits(load_pruned(tmp_path / "m"), text_inputs()), _logits(pruned, text_inputs()))


def test_mpnet_layers_keep_their_own_bias_columns():
    """The relative-position bias is one table for all layers; a pruned layer adds exactly its kept
    heads' columns (so keeping heads {1, 3} is not the same as keeping {0, 1})."""
    model = make_tiny_text("mpnet")
    x = text_inputs()
    hm = [torch.tensor([0.0, 1.0, 0.0, 1.0]), torch.ones(4), torch.ones(4)]
    from optin_deploy.core.masking import UnitMasks

    a = get_adapter(model)
    with UnitMasks(a) as masks, torch.no_grad():
        masks.heads = hm
        masked = a.logits(a.forward(x))
    pruned = apply_plan(model, type(random_plan(model))([[1, 3], [0, 1, 2, 3], [0, 1, 2, 3]], [list(range(48))] * 3))
    assert get_adapter(pruned).blocks()[0].attention.attn.kept_heads.tolist() == [1, 3]
    assert torch.allclose(_logits(pruned, x), masked, atol=1e-5)
    with torch.no_grad():  # the table itself is untouched and still shared
        assert pruned.mpnet.encoder.relative_attention_bias.weight.shape == model.mpnet.encoder.relative_attention_bias.weight.shape


def test_roberta_layout_usable_length():
    for fam in ("xlm-roberta", "camembert", "mpnet"):
        assert get_adapter(make_tiny_text(fam)).max_positions() == 64  # 66 rows, 2 reserved
    assert get_adapter(make_tiny_text("distilbert")).max_positions() == 64


def test_distilbert_takes_no_token_type_ids():
    a = get_adapter(make_tiny_text("distilbert"))
    assert "token_type_ids" not in a.input_names() and "token_type_ids" not in a.sequence_inputs
    out = a.forward({**text_inputs(), "token_type_ids": torch.zeros(4, 12, dtype=torch.long)})  # dropped, not passed on
    assert out.logits.shape == (4, 3)


def test_unsupported_family_refused_before_loading(tmp_path, capsys):
    from transformers import GPT2Config

    from optin_deploy.models import load_model

    GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"never read")  # loading it would fail differently
    with pytest.raises(OptinError) as ei:
        load_model(tmp_path)
    msg = str(ei.value)
    assert "\n" not in msg and "'gpt2' is not supported" in msg
    for fam in ("bert", "distilbert", "electra", "xlm-roberta", "camembert", "mpnet"):
        assert fam in msg


@pytest.mark.parametrize("family", list(TEXT_FAMILIES))
def test_text_family_loads_from_a_folder(family, tmp_path):
    from optin_deploy.models import load_model

    model = make_tiny_text(family)
    model.save_pretrained(tmp_path)
    again = load_model(tmp_path)
    assert type(again) is type(model) and get_adapter(again).family == get_adapter(model).family
    assert torch.equal(_logits(again, text_inputs()), _logits(model, text_inputs()))


def test_every_adapter_declares_its_family():
    for name, cls in ADAPTERS.items():
        assert cls.family == name and cls.description and cls.modality in ("text", "image")
        assert cls.modality == "image" or cls.model_types


@pytest.mark.parametrize("family", family_params(TEXT_FAMILIES))
def test_scoring_starts_deep_in_the_model(family):
    """Exact scoring runs the model "from block l on", with blocks 0..l-1 swapped for the adapter's
    pass_through. MPNet's encoder loop takes ``[0]`` of what a block returns, so a bare-tensor
    pass-through lost one axis per skipped block and failed with ``IndexError: invalid index of a
    0-dim tensor`` once four blocks were skipped: every base-size (12-layer) build, never the 3-layer
    test models. Five layers, units of the last one, against the plain one-pass-per-unit reference."""
    from optin_deploy.core.scoring import ScoreSettings, exact_unit_scores, record_teacher, reference_unit_scores

    model = make_tiny_text(family, layers=5).double()
    a = get_adapter(model)
    s = ScoreSettings(num_tokens=16, group=4)
    teacher = record_teacher(a, text_inputs(batch=3, seq=8), s)
    units = [("head", 4, h) for h in range(a.num_heads(4))] + [("neuron", 4, j) for j in (0, 7)]
    got = torch.tensor(exact_unit_scores(a, teacher, units, s), dtype=torch.float64)
    ref = torch.tensor(reference_unit_scores(a, teacher, units, s), dtype=torch.float64)
    assert (ref[:, 0] > 0).all()
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


def test_wrong_pass_through_form_is_caught_not_computed_on(monkeypatch):
    """A family whose pass_through does not return what its encoder loop expects is stopped with a
    message naming the adapter (here MPNet with a bare-tensor stand-in, on 3 layers, where the loop
    would otherwise compute on silently reshaped values)."""
    from optin_deploy.adapters.base import PassThrough
    from optin_deploy.adapters.mpnet import MPNetAdapter
    from optin_deploy.core.scoring import ScoreSettings, exact_unit_scores, record_teacher

    monkeypatch.setattr(MPNetAdapter, "pass_through", lambda self, layer: PassThrough())
    a = get_adapter(make_tiny_text("mpnet").double())
    s = ScoreSettings(num_tokens=16, group=4)
    teacher = record_teacher(a, text_inputs(batch=3, seq=8), s)
    with pytest.raises(RuntimeError, match="MPNetAdapter.pass_through"):
        exact_unit_scores(a, teacher, [("head", 2, 0)], s)


@pytest.mark.parametrize("pad_token_id", [0, 1, 5])
def test_fused_export_forward_keeps_roberta_positions_for_any_padding_id(pad_token_id):
    """The fused export forward of a RoBERTa-layout model (here XLM-RoBERTa) counts positions after the
    config's own padding id, 0 included (a model trained with a BERT vocabulary), and equals transformers'
    forward with padded rows."""
    import transformers

    from optin_deploy.adapters import get_adapter

    torch.manual_seed(0)
    cfg = transformers.XLMRobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=48, max_position_embeddings=66, pad_token_id=pad_token_id, num_labels=2)
    m = transformers.XLMRobertaForSequenceClassification(cfg).eval()
    fwd = get_adapter(m).export_module(["input_ids", "attention_mask"])
    assert fwd is not None
    ids = torch.randint(0, 120, (3, 16))
    mask = torch.ones_like(ids)
    ids[1, 9:], mask[1, 9:] = pad_token_id, 0
    with torch.no_grad():
        assert torch.allclose(m(input_ids=ids, attention_mask=mask).logits, fwd(ids, mask), atol=1e-5)
