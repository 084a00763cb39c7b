"""The least-squares refit of kept units after surgery (optin_deploy/core/reconstruct.py)."""

from __future__ import annotations

import pytest
import torch

from optin_deploy.adapters import get_adapter
from optin_deploy.core.reconstruct import FITS, reconstruct
from optin_deploy.core.surgery import PrunePlan, apply_plan, random_plan
from optin_deploy.pruned_io import load_pruned, save_pruned

from conftest import FAMILIES, family_params, make_tiny_timm
from test_build import tiny_text_task  # noqa: F401 (the fixture: a tiny random BERT with the MiniLM tokenizer and a labelled CSV)


def _logits(model, inputs):
    a = get_adapter(model)
    with torch.no_grad():
        return a.logits(a.forward(inputs))


def _case(name: str):
    make, make_inputs = FAMILIES[name]
    model = make()
    kwargs = {"batch": 16, "seq": 12} if name == "bert" else {"batch": 16}
    return model, make_inputs(**kwargs), make_inputs(**kwargs, seed=7)


def _attn_out(model, inputs, layer: int) -> torch.Tensor:
    """The output projection's output in block ``layer`` (what the attention adds to the residual)."""
    a = get_adapter(model)
    got = {}
    h = a.layer_parts(layer).out_proj.register_forward_hook(lambda m, i, o: got.update(o=o))
    with torch.no_grad():
        a.forward(inputs)
    h.remove()
    return got["o"]


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("name", family_params(FAMILIES))
def test_refit_lowers_every_sublayer_error_and_keeps_structure(name, fit):
    model, calib, _ = _case(name)
    plan = random_plan(model, seed=2, keep=0.5, empty_heads_layer=1, empty_mlp_layer=2)
    student = apply_plan(model, plan)
    before = get_adapter(student)
    heads, neurons = before.heads_per_layer(), before.neurons_per_layer()
    rep = reconstruct(model, student, calib, fit=fit, damp=0.1)
    assert rep.fit == fit
    after = get_adapter(student)
    assert after.heads_per_layer() == heads and after.neurons_per_layer() == neurons
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in student.modules())
    # every pruned sublayer that still has units was refitted, and only those
    expected = {(l, "attn") for l in range(before.num_layers) if 0 < heads[l] < get_adapter(model).num_heads(l)}
    expected |= {(l, "mlp") for l in range(before.num_layers) if 0 < neurons[l] < get_adapter(model).num_neurons(l)}
    assert {(r["layer"], r["part"]) for r in rep.layers} == expected
    for r in rep.layers:
        assert r["error_after"] <= r["error_before"] * (1 + 1e-6) + 1e-9, r
    assert any(r["error_after"] < 0.99 * r["error_before"] for r in rep.layers)


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("name", ["bert", "timm_vit"])
def test_reported_error_matches_a_direct_measurement(name, fit):
    """Block 0 sees the same input in both models, so the fitted error is just the attention output's."""
    model, calib, _ = _case(name)
    plan = random_plan(model, seed=5, keep=0.5)
    plan.heads[0] = plan.heads[0][:2]  # make sure block 0's attention is pruned
    student = apply_plan(model, plan)
    a = get_adapter(student)
    tok = a.token_mask(calib)
    target = _attn_out(model, calib, 0)[tok]
    bias = a.layer_parts(0).out_proj.bias.detach().clone()  # the affine fit changes the bias in place
    plain_err = float(((_attn_out(student, calib, 0)[tok] - target) ** 2).sum())
    rep = reconstruct(model, student, calib, fit=fit, damp=0.05)
    row = next(r for r in rep.layers if r["layer"] == 0 and r["part"] == "attn")
    bb = float(((target - bias) ** 2).sum())
    refit_err = float(((_attn_out(student, calib, 0)[tok] - target) ** 2).sum())
    assert row["error_before"] * bb == pytest.approx(plain_err, rel=1e-3)
    assert row["error_after"] * bb == pytest.approx(refit_err, rel=1e-3)
    assert refit_err < plain_err


def test_nothing_removed_means_nothing_changes():
    model, calib, _ = _case("bert")
    student = apply_plan(model, PrunePlan.full(model))
    rep = reconstruct(model, student, calib)
    assert rep.layers == []
    for (k, p), (_, q) in zip(model.state_dict().items(), student.state_dict().items()):
        assert torch.equal(p, q), k


@pytest.mark.parametrize("fit", FITS)
def test_heavy_damping_is_plain_surgery(fit):
    model, calib, held_out = _case("bert")
    plan = random_plan(model, seed=1, keep=0.5)
    plain = apply_plan(model, plan)
    student = apply_plan(model, plan)
    reconstruct(model, student, calib, fit=fit, damp=1e9)
    assert torch.allclose(_logits(student, held_out), _logits(plain, held_out), atol=1e-5)
    with pytest.raises(ValueError):
        reconstruct(model, apply_plan(model, plan), calib, fit=fit, damp=0.0)
    with pytest.raises(ValueError):
        reconstruct(model, apply_plan(model, plan), calib, fit="bogus")


def _last_block(model, inputs) -> torch.Tensor:
    a = get_adapter(model)
    got = {}
    h = a.blocks()[-1].register_forward_hook(lambda m, i, o: got.update(o=o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        a.forward(inputs)
    h.remove()
    return got["o"]


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("name", ["bert", "hf_vit"])
def test_refit_brings_held_out_features_closer_to_dense(name, fit):
    """On inputs not used for the fit, the refitted encoder output is closer to the dense one than plain surgery's."""
    model, calib, held_out = _case(name)
    plan = random_plan(model, seed=3, keep=0.6)
    plain = apply_plan(model, plan)
    student = apply_plan(model, plan)
    reconstruct(model, student, calib, fit=fit, damp=0.1 if fit == "scales" else 1.0)
    dense = _last_block(model, held_out)
    assert (_last_block(student, held_out) - dense).norm() < (_last_block(plain, held_out) - dense).norm()


@pytest.mark.parametrize("fit", FITS)
def test_layerscale_is_taken_into_account(fit):
    torch.manual_seed(0)
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, mlp_ratio=1.5, num_classes=5,
                              init_values=0.3).eval()
    with torch.no_grad():  # non-uniform LayerScale, so a wrong scaling would show
        for blk in model.blocks:
            blk.ls1.gamma.uniform_(0.1, 2.0)
            blk.ls2.gamma.uniform_(0.1, 2.0)
    _, calib, _ = _case("timm_vit")
    plan = random_plan(model, seed=4, keep=0.5)
    plan.heads[0] = plan.heads[0][:2]
    student = apply_plan(model, plan)
    # block 0 sees identical inputs: what its attention adds to the residual is gamma * proj(...)
    gamma = model.blocks[0].ls1.gamma.detach()
    target = _attn_out(model, calib, 0) * gamma
    bias = student.blocks[0].attn.proj.bias.detach() * gamma
    plain_err = float(((_attn_out(student, calib, 0) * gamma - target) ** 2).sum())
    rep = reconstruct(model, student, calib, fit=fit, damp=0.1)
    assert rep.layers and all(r["error_after"] <= r["error_before"] * (1 + 1e-6) for r in rep.layers)
    row = next(r for r in rep.layers if r["layer"] == 0 and r["part"] == "attn")
    bb = float(((target - bias) ** 2).sum())
    assert row["error_before"] * bb == pytest.approx(plain_err, rel=1e-3)
    assert row["error_after"] * bb == pytest.approx(float(((_attn_out(student, calib, 0) * gamma - target) ** 2).sum()), rel=1e-3)
    assert get_adapter(make_tiny_timm()).branch_scale(0, "attn") is None


def test_refitted_model_saves_and_reloads(tmp_path):
    model, calib, held_out = _case("hf_vit")
    student = apply_plan(model, random_plan(model, seed=6, empty_heads_layer=0))
    reconstruct(model, student, calib)
    save_pruned(student, tmp_path / "m")
    assert torch.equal(_logits(load_pruned(tmp_path / "m"), held_out), _logits(student, held_out))


def test_cli_defaults_match_the_core():
    """The CLI options are declared without importing torch; their defaults must be the core's."""
    from optin_deploy.commands import options
    from optin_deploy.core.reconstruct import DEFAULT_DAMP, DEFAULT_FIT

    from optin_deploy.pruning import REFIT_SAMPLES

    assert (options.RECONSTRUCT.default, options.RECONSTRUCT_FIT.default, options.RECONSTRUCT_DAMP.default) == (True, DEFAULT_FIT, DEFAULT_DAMP)
    assert options.REFIT_SAMPLES.default == REFIT_SAMPLES


def test_the_refit_batch_extends_the_scoring_draw_within_the_split_and_the_memory_cap(tiny_text_task):
    """The refit fits on more samples than the scores are computed on: the same seeded draw, extended (so every
    scoring sample is in it), never more than the training split holds, fewer when the dense model's captures
    would pass the memory cap, and the scoring batch itself when no more is asked or allowed."""
    from optin_deploy.adapters import get_adapter
    from optin_deploy.pruning import refit_batch
    from optin_deploy.zoo import load_task

    task = load_task(str(tiny_text_task / "model"), str(tiny_text_task / "data.csv"), max_length=None)
    task.max_length = 32
    calib = task.calibration(16, seed=3)
    n_train = len(task.data.train)

    def rows(batch):
        return {tuple(r.tolist()) for r in batch["input_ids"]}

    assert refit_batch(task, task.model, calib, 0, 3) is calib and refit_batch(task, task.model, calib, 16, 3) is calib
    big = refit_batch(task, task.model, calib, 64, 3)
    assert big["input_ids"].shape[0] == 64 and rows(calib) <= rows(big)
    assert refit_batch(task, task.model, calib, 10 ** 6, 3)["input_ids"].shape[0] == n_train  # the whole training split
    a = get_adapter(task.model)
    per_sample = 16 * sum(int(a.layer_token_mask(calib, l).sum()) * a.layer_hidden_size(l) for l in range(a.num_layers)) / 16
    capped = refit_batch(task, task.model, calib, 64, 3, memory=40 * per_sample)
    assert 38 <= capped["input_ids"].shape[0] <= 40 and rows(calib) <= rows(capped)
    assert refit_batch(task, task.model, calib, 64, 3, memory=8 * per_sample) is calib  # the cap leaves no more than the scoring batch


@pytest.mark.parametrize("name", ["bert", "timm_vit"])
def test_shared_teacher_cache_gives_the_same_refit(name):
    """A budget search refits many students of one teacher on one batch, sharing the teacher's captures."""
    model, calib, _ = _case(name)
    cache: dict = {}
    for seed, keep in ((2, 0.5), (3, 0.7)):
        plan = random_plan(model, seed=seed, keep=keep)
        a, b = apply_plan(model, plan), apply_plan(model, plan)
        reconstruct(model, a, calib)
        reconstruct(model, b, calib, teacher_cache=cache)
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.equal(pa, pb)
    assert cache and all(set(v) <= {"x", "y", "attn_out", "mlp_out"} for v in cache.values())


@pytest.mark.parametrize("name", family_params(FAMILIES))
def test_replaying_finished_blocks_gives_the_same_refit(name, monkeypatch):
    """Captures replay the recorded outputs of blocks whose refit is finished instead of running the model from
    the embeddings each time: the refit is the same, the first block computes only a few times, and no block
    is left patched."""
    from optin_deploy.core import reconstruct as rc

    model, calib, _ = _case(name)
    plan = random_plan(model, seed=4, keep=0.6, empty_heads_layer=1, empty_mlp_layer=2)
    fast, slow = apply_plan(model, plan), apply_plan(model, plan)

    def first_block_passes(student, **kw):
        n = [0]
        # a replayed block still fires its own hooks, so count a linear layer inside it: it runs only when the block computes
        lin = next(m for m in get_adapter(student).blocks()[0].modules() if isinstance(m, torch.nn.Linear))
        h = lin.register_forward_pre_hook(lambda *_: n.__setitem__(0, n[0] + 1))
        try:
            with torch.no_grad():
                get_adapter(student).forward(calib)
            per_pass, n[0] = n[0], 0  # some families call a block's linear more than once per pass (DeBERTa's positions)
            reconstruct(model, student, calib, **kw)
        finally:
            h.remove()
        return n[0] / per_pass / len(rc.length_chunks(get_adapter(student), calib))  # passes over the whole batch

    with_replay = first_block_passes(fast)
    with monkeypatch.context() as m:
        m.setattr(rc._Replay, "arm", lambda self, final_below: [])
        without = first_block_passes(slow)
    for pa, pb in zip(fast.parameters(), slow.parameters()):
        assert torch.allclose(pa, pb, rtol=1e-6, atol=1e-7)
    assert with_replay <= 3 < without, (with_replay, without)  # layer 0's two captures + the first pass that records it
    for mod in list(fast.modules()) + list(model.modules()):
        assert "forward" not in mod.__dict__ and not mod._forward_hooks and not mod._forward_pre_hooks


@pytest.mark.parametrize("name", family_params(FAMILIES))
def test_attention_only_capture_records_what_the_full_capture_does(name):
    """The refit's attention capture stops at the output projection: same input, head contexts and
    attention output as a capture that runs the whole block, and nothing of the MLP."""
    from optin_deploy.core.reconstruct import _capture

    model, calib, _ = _case(name)
    a = get_adapter(model)
    layer = a.num_layers - 1
    full = _capture(model, calib, layer)
    short = _capture(model, calib, layer, attention_only=True)
    assert set(short) == {"x", "ctx", "attn_out"} and {"x", "ctx", "attn_out"} <= set(full)
    for k in short:
        assert torch.equal(short[k], full[k]), k


def _ragged(batch: int = 16, seq: int = 20, seed: int = 0) -> dict:
    """Right-padded text of lengths 3..seq (a real calibration batch: padded to its longest sample)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (batch, seq), generator=g)
    lens = torch.randint(3, seq + 1, (batch,), generator=g)
    lens[0] = seq
    mask = (torch.arange(seq)[None, :] < lens[:, None]).long()
    return {"input_ids": ids * mask, "attention_mask": mask}


def test_length_chunks_cover_every_sample_once_cut_to_their_longest():
    from optin_deploy.core.reconstruct import length_chunks

    model = FAMILIES["bert"][0]()
    batch = _ragged()
    chunks = length_chunks(get_adapter(model), batch, chunks=4)
    assert len(chunks) == 4
    lens = batch["attention_mask"].sum(1)
    seen = []
    for c in chunks:
        assert c["input_ids"].shape == c["attention_mask"].shape
        assert c["attention_mask"].shape[1] == int(c["attention_mask"].sum(1).max())  # no all-padding column left
        seen += sorted(c["attention_mask"].sum(1).tolist())
    assert sorted(seen) == sorted(lens.tolist()) and sum(c["input_ids"].shape[1] * len(c["input_ids"]) for c in chunks) < batch["input_ids"].numel()
    # left padding, images and a single sample are not cut
    left = {k: v.flip(1) for k, v in batch.items()}
    assert length_chunks(get_adapter(model), left) == [left]
    assert len(length_chunks(get_adapter(make_tiny_timm()), {"pixel_values": torch.randn(4, 3, 16, 16)})) == 1
    one = {k: v[:1] for k, v in batch.items()}
    assert length_chunks(get_adapter(model), one) == [one]


@pytest.mark.parametrize("name", [n for n in FAMILIES if FAMILIES[n][1].__name__ == "text_inputs"])
def test_refit_on_length_chunks_equals_the_refit_on_the_padded_batch(name, monkeypatch):
    """Padding changes no real token's activations, so refitting on chunks of similar lengths (each cut to its
    longest sample) gives the refit of the whole padded batch."""
    from optin_deploy.core import reconstruct as rc

    model = FAMILIES[name][0]()
    batch = _ragged(seed=3)
    plan = random_plan(model, seed=5, keep=0.5, empty_heads_layer=1, empty_mlp_layer=2)
    chunked, whole = apply_plan(model, plan), apply_plan(model, plan)
    rep_c = reconstruct(model, chunked, batch)
    with monkeypatch.context() as m:
        m.setattr(rc, "length_chunks", lambda adapter, inputs, chunks=4: [inputs])
        rep_w = reconstruct(model, whole, batch)
    assert len(rc.length_chunks(get_adapter(chunked), batch)) > 1
    for a, b in zip(rep_c.layers, rep_w.layers):
        assert a["error_after"] == pytest.approx(b["error_after"], rel=1e-3, abs=1e-6)
    for pa, pb in zip(chunked.parameters(), whole.parameters()):
        assert torch.allclose(pa, pb, rtol=1e-4, atol=1e-5)
