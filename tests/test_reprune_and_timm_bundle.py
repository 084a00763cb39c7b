"""Re-pruning an already-pruned model (layers whose attention or MLP an earlier budget emptied), and a
pruned timm ViT that keeps its image preprocessing (input size, mean, std, channels) on disk.

* Defect B: exact OPTIN scoring of a model with a layer reduced to its attention bias crashed in the
  neuron shortcut (``parts.attn`` is None there). An emptied part now simply has no units to score;
  the scores of everything else equal the plain one-pass-per-unit reference; selection and surgery of
  the pruned model agree with masking, and its ONNX export matches torch.
* Defect A: timm rebuilds a pruned ViT bare (no ``pretrained_cfg``), so the pruned folder was taken
  for a text model and lost timm's mean / std / size. The structure now records them and the load
  restores them; a bundle's eval / export / bench need no extra flags and give report.json's figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from optin_deploy.adapters import get_adapter
from optin_deploy.core.costs import mac_cost_model
from optin_deploy.core.fast import fast_scores
from optin_deploy.core.masking import UnitMasks
from optin_deploy.core.scoring import ScoreSettings, exact_scores, reference_scores
from optin_deploy.core.selection import select
from optin_deploy.core.surgery import PrunePlan, apply_plan, plan_masks, random_plan
from optin_deploy.models import preprocessing
from optin_deploy.pruned_io import STRUCTURE_FILE, load_pruned, save_pruned

from conftest import FAMILIES, image_inputs, make_tiny_bert, make_tiny_timm, make_tiny_vit, run_cli, save_word_tokenizer, text_inputs

try:
    import timm
except ImportError:  # an optional extra: the timm tests skip, the others run
    timm = None
needs_timm = pytest.mark.skipif(timm is None, reason="timm is not installed (pip install 'optin-deploy[timm]')")


def fams(*names):
    return [pytest.param(n, marks=needs_timm) if n.startswith("timm") else n for n in names]


def logits_of(model, inputs):
    a = get_adapter(model)
    with torch.no_grad():
        return a.logits(a.forward(inputs))


# ----------------------------------------------------------------------------------------------------------------------
# Defect B: scoring, selection and surgery of an already-pruned model


def _pruned_model(family: str, tmp_path: Path, empty_heads_layer: int | None = 1, empty_mlp_layer: int | None = 2):
    """A tiny 3-layer model of ``family`` pruned with layer 1's attention and layer 2's MLP emptied, saved and
    reloaded as a pruned-model folder (what `optin-deploy prune FOLDER` re-prunes)."""
    make, inputs = FAMILIES[family]
    if family == "bert":
        make = lambda: make_tiny_bert(layers=3)  # noqa: E731
    model = make()
    plan = random_plan(model, seed=2, keep=0.6, empty_heads_layer=empty_heads_layer, empty_mlp_layer=empty_mlp_layer)
    save_pruned(apply_plan(model, plan), tmp_path / "p1")
    return load_pruned(tmp_path / "p1"), inputs


@pytest.mark.parametrize("family", fams("bert", "hf_vit", "timm_vit"))
def test_exact_scores_of_a_pruned_model_equal_the_reference(family, tmp_path):
    model, make_inputs = _pruned_model(family, tmp_path)
    model = model.double()
    a = get_adapter(model)
    assert a.num_heads(1) == 0 and a.num_neurons(2) == 0 and a.layer_parts(1).attn is None and a.layer_parts(2).fc2 is None
    inputs = {k: (v.double() if v.is_floating_point() else v) for k, v in make_inputs(batch=3).items()}
    s = ScoreSettings(num_tokens=20, group=3)
    ref, ex = reference_scores(a, inputs, s), exact_scores(a, inputs, s)
    for raw in (ref, ex):
        # an emptied unit group has no units: empty score tensors, the others one score per unit
        assert [len(t) for t in raw.head_md] == [len(t) for t in raw.head_kl] == a.heads_per_layer()
        assert [len(t) for t in raw.neuron_md] == [len(t) for t in raw.neuron_kl] == a.neurons_per_layer()
        assert raw.head_md[1].numel() == 0 and raw.neuron_md[2].numel() == 0
    for x, y in [(ref.head_md, ex.head_md), (ref.neuron_md, ex.neuron_md), (ref.neuron_kl, ex.neuron_kl)]:
        x, y = torch.cat(x), torch.cat(y)
        assert (x > 0).all()
        assert torch.allclose(x, y, rtol=1e-4, atol=float(1e-6 * x.abs().max())), ((x - y).abs() / x).max()
    # the neuron shortcut ran through layer 1, whose attention is its bias only, and left no patched forward behind
    assert all("forward" not in vars(m) for m in model.modules())


@pytest.mark.parametrize("family", fams("bert", "timm_vit"))
def test_fast_scores_of_a_pruned_model(family, tmp_path):
    model, make_inputs = _pruned_model(family, tmp_path)
    a = get_adapter(model)
    inputs = make_inputs(batch=3)
    s = ScoreSettings(num_tokens=20, group=4)
    fast = fast_scores(a, inputs, s, probes=4, kl_probes=2)
    ex = exact_scores(a, inputs, s, kinds=("head",))
    assert [len(t) for t in fast.head_md] == a.heads_per_layer() and [len(t) for t in fast.neuron_md] == a.neurons_per_layer()
    assert fast.head_md[1].numel() == 0 and fast.neuron_md[2].numel() == 0 and fast.neuron_kl[2].numel() == 0
    assert all(torch.equal(x, y) for x, y in zip(fast.head_md, ex.head_md))  # heads exact in fast scoring
    for t in fast.neuron_md + fast.neuron_kl:
        assert torch.isfinite(t).all() and (t >= 0).all()
    assert all(float(t.sum()) > 0 for t in fast.neuron_md if t.numel())


def test_scores_when_every_mlp_or_every_attention_is_emptied():
    """No neuron left anywhere (fast scoring's probes have nothing to differentiate), or no head left anywhere."""
    model = make_tiny_bert(layers=3)
    a = get_adapter(model)
    inputs = text_inputs(batch=3, seq=10)
    s = ScoreSettings(num_tokens=16, group=4)
    no_mlp = apply_plan(model, PrunePlan([list(range(h)) for h in a.heads_per_layer()], [[] for _ in range(3)]))
    na = get_adapter(no_mlp)
    fast, ex = fast_scores(na, inputs, s, probes=2, kl_probes=1), exact_scores(na, inputs, s)
    assert [t.numel() for t in fast.neuron_md + fast.neuron_kl + ex.neuron_md] == [0] * 9
    assert all(torch.equal(x, y) for x, y in zip(fast.head_md, ex.head_md)) and all(t.numel() == 4 for t in ex.head_md)
    no_attn = apply_plan(model, PrunePlan([[] for _ in range(3)], [list(range(f)) for f in a.neurons_per_layer()]))
    xa = get_adapter(no_attn)
    ref, ex = reference_scores(xa, inputs, s), exact_scores(xa, inputs, s)
    assert [t.numel() for t in ex.head_md] == [0, 0, 0] and [t.numel() for t in ex.neuron_md] == a.neurons_per_layer()
    assert torch.allclose(torch.cat(ref.neuron_md), torch.cat(ex.neuron_md), rtol=1e-4)


@pytest.mark.parametrize("family", fams("bert", "timm_vit"))
def test_reprune_selects_slices_and_exports_like_torch(family, tmp_path):
    """Select on a pruned model's scores under a budget, slice it, save / reload it, export it to ONNX:
    the twice-pruned model equals the pruned one masked the same way, and onnxruntime matches torch."""
    import onnxruntime as ort

    from optin_deploy.exporters import ShapeProfile, get_exporter

    model, make_inputs = _pruned_model(family, tmp_path)
    a = get_adapter(model)
    inputs = make_inputs(batch=4)
    raw = exact_scores(a, inputs, ScoreSettings(num_tokens=20, group=4))
    costs = mac_cost_model(model, a.seq_len(inputs) if family == "timm_vit" else 12)
    heads = [m + k for m, k in zip(raw.head_md, raw.head_kl)]
    neurons = [m + k for m, k in zip(raw.neuron_md, raw.neuron_kl)]
    sel = select(heads, neurons, costs, 0.7 * costs.dense())
    assert sel.plan.heads[1] == [] and sel.plan.neurons[2] == []  # nothing selected in an emptied group
    assert sel.cost <= 0.7 * costs.dense() + 1e-6
    hm, nm = plan_masks(model, sel.plan)
    with UnitMasks(a) as masks, torch.no_grad():
        masks.heads, masks.neurons = hm, nm
        masked = a.logits(a.forward(inputs))
    twice = apply_plan(model, sel.plan)
    assert get_adapter(twice).heads_per_layer() == sel.plan.counts()[0]
    assert torch.allclose(logits_of(twice, inputs), masked, atol=1e-5)
    save_pruned(twice, tmp_path / "p2")
    again = load_pruned(tmp_path / "p2")
    assert torch.equal(logits_of(again, inputs), logits_of(twice, inputs))
    profile = ShapeProfile(min_batch=1, opt_batch=4, max_batch=16, min_seq=1, opt_seq=16, max_seq=64)
    get_exporter("onnx").export(again, inputs, tmp_path / "x" / "model.onnx", profile=profile)
    sess = ort.InferenceSession(str(tmp_path / "x" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, {n: inputs[n].numpy() for n in names})[0]
    assert np.allclose(got, logits_of(again, inputs).numpy(), atol=1e-4), np.abs(got - logits_of(again, inputs).numpy()).max()


# ----------------------------------------------------------------------------------------------------------------------
# Defect A: a pruned timm ViT records and restores its image preprocessing

IMAGENET_CFG = {"architecture": "tiny_vit_for_tests", "input_size": (3, 16, 16), "fixed_input_size": True, "interpolation": "bicubic",
                "crop_pct": 0.9, "crop_mode": "center", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                "num_classes": 1000, "url": "", "first_conv": "patch_embed.proj", "classifier": "head"}


def _timm_with_cfg(classes: int = 2):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    m = VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, mlp_ratio=1.5, num_classes=classes).eval()
    m.pretrained_cfg = m.default_cfg = dict(IMAGENET_CFG)  # what timm.create_model sets
    return m


def _image_folder(root: Path, per_class: int = 10) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("neg", "pos"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


@needs_timm
def test_pruned_timm_folder_restores_its_preprocessing(tmp_path):
    from optin_deploy.data.loaders import load_data
    from optin_deploy.zoo import load_task

    dense = _timm_with_cfg()
    want = preprocessing(dense)
    assert want == {"modality": "image", "image_size": (16, 16), "image_mean": [0.485, 0.456, 0.406],
                    "image_std": [0.229, 0.224, 0.225], "num_channels": 3}
    pruned = apply_plan(dense, random_plan(dense, seed=1, empty_heads_layer=1, empty_mlp_layer=2))
    save_pruned(pruned, tmp_path / "p")
    spec = json.loads((tmp_path / "p" / STRUCTURE_FILE).read_text())
    assert spec["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406] and spec["pretrained_cfg"]["input_size"] == [3, 16, 16]
    again = load_pruned(tmp_path / "p")
    assert preprocessing(again, tmp_path / "p") == want
    assert again.pretrained_cfg["crop_pct"] == 0.9 and again.pretrained_cfg["mean"] == IMAGENET_CFG["mean"]
    # re-pruning the folder keeps it
    save_pruned(apply_plan(again, random_plan(again, seed=4)), tmp_path / "p2")
    assert preprocessing(load_pruned(tmp_path / "p2")) == want
    # the task of the pruned folder reads images exactly as for the dense model (size, mean, std), and the model's
    # predictions on them are the pruned model's
    img = _image_folder(tmp_path / "img")
    task = load_task(str(tmp_path / "p"), str(img), progress=False)
    ref = load_data(img, image_size=(16, 16), image_mean=want["image_mean"], image_std=want["image_std"], num_channels=3)
    assert task.data.modality == "image" and torch.equal(task.data.test.inputs, ref.test.inputs)
    plain = load_data(img, image_size=(16, 16), image_mean=0.5, image_std=0.5, num_channels=3)
    assert not torch.allclose(ref.test.inputs, plain.test.inputs)  # the mean/std really matter here
    x = {"pixel_values": ref.test.inputs}
    assert torch.equal(logits_of(task.model, x), logits_of(pruned, x))


@needs_timm
def test_pruned_timm_folder_without_recorded_preprocessing(tmp_path):
    """A folder written before the preprocessing was saved: timm's default cfg of the architecture it was loaded as
    (its recorded source timm:ARCH@FILE); a bare VisionTransformer (no cfg anywhere): its own size, mean/std 0.5."""
    bare = make_tiny_timm()
    assert getattr(bare, "pretrained_cfg", None) is None
    assert preprocessing(bare) == {"modality": "image", "image_size": (16, 16), "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
                                   "num_channels": 3}
    save_pruned(apply_plan(bare, random_plan(bare, seed=1, empty_heads_layer=0)), tmp_path / "p")
    assert preprocessing(load_pruned(tmp_path / "p")) == preprocessing(bare)
    f = tmp_path / "p" / STRUCTURE_FILE
    spec = json.loads(f.read_text())
    del spec["pretrained_cfg"]
    f.write_text(json.dumps(spec))
    assert preprocessing(load_pruned(tmp_path / "p")) == preprocessing(bare)
    spec["extra"] = {"source": "timm:deit_tiny_patch16_224@/somewhere/w.safetensors"}
    f.write_text(json.dumps(spec))
    arch = timm.models.get_pretrained_cfg("deit_tiny_patch16_224").to_dict()
    got = preprocessing(load_pruned(tmp_path / "p"))
    assert got["image_mean"] == list(arch["mean"]) and got["image_std"] == list(arch["std"])
    assert got["image_size"] == tuple(arch["input_size"][1:])


@needs_timm
def test_timm_with_every_attention_emptied_saves_and_reloads(tmp_path):
    """The head size survives on the model when no block keeps attention (a reloaded model's adapter needs it)."""
    m = _timm_with_cfg()
    a = get_adapter(m)
    p = apply_plan(m, PrunePlan([[] for _ in range(3)], [list(range(f)) for f in a.neurons_per_layer()]))
    save_pruned(p, tmp_path / "p")
    again = load_pruned(tmp_path / "p")
    assert get_adapter(again).head_dim() == 8
    save_pruned(again, tmp_path / "p2")
    x = image_inputs()
    assert torch.equal(logits_of(load_pruned(tmp_path / "p2"), x), logits_of(p, x))


def test_hf_vit_pattern_is_unchanged(tmp_path):
    """transformers ViT keeps its preprocessing through its config (and a copied preprocessor_config.json)."""
    m = make_tiny_vit()
    save_pruned(apply_plan(m, random_plan(m, seed=1)), tmp_path / "p")
    assert preprocessing(load_pruned(tmp_path / "p"), tmp_path / "p") == preprocessing(m)


# ----------------------------------------------------------------------------------------------------------------------
# End to end through the command line (the two repro scripts)


def test_cli_reprune_a_folder_with_an_emptied_attention(tmp_path):
    """prune to a budget that empties attention, then prune (and build from) that folder again."""
    model = make_tiny_bert(num_labels=2, layers=2)
    model.save_pretrained(tmp_path / "tiny")
    save_word_tokenizer(tmp_path / "tiny")
    g = np.random.default_rng(0)
    rows = ["text,label"] + [" ".join(f"w{k}" for k in g.integers(0, 100, 6)) + f",{i % 2}" for i in range(120)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    run_cli("prune", tmp_path / "tiny", "--data", tmp_path / "d.csv", "--flops", "0.2", "--calib-samples", "8", "--out", tmp_path / "p1")
    p1 = get_adapter(load_pruned(tmp_path / "p1"))
    assert 0 in p1.heads_per_layer()
    r = run_cli("prune", tmp_path / "p1", "--flops", "0.8", "--calib-samples", "8", "--out", tmp_path / "p2")
    p2 = get_adapter(load_pruned(tmp_path / "p2"))
    assert all(h2 <= h1 for h1, h2 in zip(p1.heads_per_layer(), p2.heads_per_layer()))
    assert all(f2 <= f1 for f1, f2 in zip(p1.neurons_per_layer(), p2.neurons_per_layer()))
    assert sum(p2.neurons_per_layer()) < sum(p1.neurons_per_layer())
    assert "internal error" not in r.stderr
    # the warning names only what this budget emptied, not the parts p1 had already lost
    before = {l for l, h in enumerate(p1.heads_per_layer()) if h == 0}
    newly = [l for l, h in enumerate(p2.heads_per_layer()) if h == 0 and l not in before]
    warned = [ln for ln in r.stderr.splitlines() if "empties layer" in ln]
    assert bool(warned) == bool(newly or [l for l, f in enumerate(p2.neurons_per_layer()) if f == 0 and p1.neurons_per_layer()[l] > 0]), r.stderr
    for l in before:
        assert not any(f"layer {l} (attention" in w or f", {l} (attention" in w for w in warned), warned
    run_cli("eval", tmp_path / "p2")


@pytest.mark.slow
@needs_timm
def test_cli_timm_bundle_eval_export_bench(tmp_path):
    """repro_7: a timm:ARCH@FILE build, then eval / export / bench of the bundle without extra flags."""
    import safetensors.torch as st

    st.save_file(timm.create_model("test_vit", pretrained=False, num_classes=2).state_dict(), str(tmp_path / "vit.safetensors"))
    img = _image_folder(tmp_path / "img", per_class=20)
    b = tmp_path / "b"
    run_cli("build", "--model", f"timm:test_vit@{tmp_path / 'vit.safetensors'}", "--data", img, "--profile", "x86-cpu-ort",
            "--select-by", "macs", "--flops", "0.5", "--calib-samples", "8", "--bench-iters", "5", "--no-baselines", "--out", b)
    report = json.loads((b / "report.json").read_text())
    assert json.loads((b / "pruned" / STRUCTURE_FILE).read_text())["pretrained_cfg"]["input_size"] == [3, 160, 160]
    for args in (["eval", b], ["eval", b / "onnx" / "dense", b / "onnx" / "pruned", "--data", img]):
        run_cli(*args, "--json", tmp_path / "ev.json")
        ev = json.loads((tmp_path / "ev.json").read_text())["models"]
        assert ev["dense"]["accuracy"] * 100 == pytest.approx(report["accuracy"]["dense"])
        assert ev["pruned"]["accuracy"] * 100 == pytest.approx(report["accuracy"]["pruned"])
        assert ev["pruned"]["agreement_vs_baseline"] * 100 == pytest.approx(report["accuracy"]["agreement"])
        (tmp_path / "ev.json").unlink()
    run_cli("export", b / "pruned", "--format", "onnx", "--out", tmp_path / "exp")
    assert (tmp_path / "exp" / "model.onnx").is_file()
    run_cli("bench", b, "--iters", "3")
