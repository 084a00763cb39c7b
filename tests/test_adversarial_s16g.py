"""Session 16g: models users bring that the tool had not seen (timm ViT variants, other heads and layouts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from optin_deploy.adapters import get_adapter
from optin_deploy.core.masking import UnitMasks
from optin_deploy.core.surgery import apply_plan, plan_masks, random_plan
from optin_deploy.errors import OptinError
from optin_deploy.pruned_io import load_pruned, save_pruned

from conftest import run_cli

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("quiet_cache")

SMALL = dict(img_size=32, patch_size=8, num_classes=3)


def _logits(model, x):
    a = get_adapter(model)
    with torch.no_grad():
        return a.logits(a.forward(x))


def _timm(arch: str, **kw):
    torch.manual_seed(0)
    m = timm.create_model(arch, pretrained=False, **{**SMALL, **kw}).eval()
    with torch.no_grad():  # layer scales and biases away from their constant init, so a lost one shows
        for name, p in m.named_parameters():
            if "gamma" in name or name.endswith("bias"):
                p.normal_(0, 0.3)
    return m


# architectures whose pruned folder used to reload as another model: timm.create_model(ARCH) gives them layers the
# recorded VisionTransformer kwargs did not (LayerScale, RMSNorm, a latent-attention pool, post-norm blocks, QuickGELU,
# a distillation token); the first four failed to load, post-norm and QuickGELU loaded silently as other functions
REBUILT = [
    ("test_vit2", {}),  # LayerScale, a register token, average pooling
    ("test_vit3", {}),  # LayerScale, latent-attention ('map') pooling sized by the blocks' MLP ratio
    ("test_vit4", {}),  # RMSNorm
    ("vit_base_patch16_rpn_224", dict(embed_dim=32, depth=3, num_heads=4)),  # ResPostBlock: post-norm
    ("vit_base_patch32_clip_quickgelu_224", dict(embed_dim=32, depth=3, num_heads=4)),  # QuickGELU, eps 1e-5, pre-norm
    ("deit_tiny_distilled_patch16_224", dict(embed_dim=32, depth=3, num_heads=4)),  # distillation token and head
]


@pytest.mark.parametrize("arch,kw", REBUILT, ids=[a for a, _ in REBUILT])
def test_pruned_timm_variant_reloads_as_the_same_function(arch, kw, tmp_path):
    m = _timm(arch, **kw)
    x = {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))}
    a = get_adapter(m)
    a.check_layout("the model")  # accepted when loaded
    plan = random_plan(m, seed=1, keep=0.5, empty_heads_layer=1, empty_mlp_layer=2)
    hm, nm = plan_masks(m, plan)
    with UnitMasks(a) as masks, torch.no_grad():
        masks.heads, masks.neurons = hm, nm
        masked = a.logits(a.forward(x))
    pruned = apply_plan(m, plan)
    out = _logits(pruned, x)
    assert torch.allclose(out, masked, atol=1e-5)
    save_pruned(pruned, tmp_path / "p")
    again = load_pruned(tmp_path / "p")
    assert type(again) is type(m)
    assert torch.allclose(_logits(again, x), out, atol=1e-6), (_logits(again, x) - out).abs().max()


def test_timm_vit_with_layers_passed_by_hand_is_refused_when_loaded():
    """An activation (or norm) that the architecture name does not give would be rebuilt as timm's default: refused in
    one line naming the module, before any scoring, instead of a pruned folder that reloads as another function."""
    from timm.models.vision_transformer import VisionTransformer

    for m, shown in ((_timm("test_vit", act_layer="quick_gelu"), "QuickGELU"),
                     (VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, act_layer=torch.nn.ReLU), "ReLU")):
        with pytest.raises(OptinError) as e:
            get_adapter(m).check_layout("model M")
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith("model M: ") and shown in msg and "blocks.0.mlp.act" in msg
        with pytest.raises(OptinError, match="cannot be saved pruned"):  # nor written when pruned in Python
            get_adapter(apply_plan(m, random_plan(m, seed=0))).structure()


@pytest.mark.parametrize("kw,named", [
    (dict(block_fn="ParallelScalingBlock"), "ParallelScalingBlock blocks"),
    (dict(mlp_layer="SwiGLUPacked"), "GluMlp MLP"),
    (dict(scale_mlp_norm=True), "a norm inside the MLP"),
])
def test_timm_vit_blocks_the_adapter_cannot_prune_are_refused_in_one_line(kw, named):
    """Parallel blocks (no .attn: an AttributeError traceback), a gated MLP (fc1 holds two rows per neuron: sliced as one)
    and a norm across the MLP's neurons (its width is the neurons') are refused when the adapter is made."""
    import timm.layers
    from timm.models import vision_transformer as vt

    kw = {k: getattr(vt, v, None) or getattr(timm.layers, v) if k in ("block_fn", "mlp_layer") else v for k, v in kw.items()}
    m = _timm("test_vit", **kw)
    with pytest.raises(OptinError) as e:
        get_adapter(m)
    assert "\n" not in str(e.value) and named in str(e.value) and "not supported" in str(e.value)


def _image_folder(root: Path, per_class: int = 12) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("neg", "pos"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray((rng.random((20, 20, 3)) * 255).astype(np.uint8)).save(root / c / f"{i}.png")
    return root


@pytest.mark.slow  # a build
def test_timm_layerscale_bundle_pruned_folder_computes_the_deliverable(tmp_path):
    """timm:test_vit2@FILE (LayerScale): the bundle's pruned/ folder did not load ('Unexpected key(s) ... ls1.gamma'), so
    `eval BUNDLE/pruned` and re-pruning it failed. It loads now and computes what the exported fp32 graph computes."""
    import onnxruntime as ort
    import safetensors.torch as st

    m = _timm("test_vit2", img_size=160, patch_size=16, num_classes=2)
    st.save_file(m.state_dict(), str(tmp_path / "w.safetensors"))
    img = _image_folder(tmp_path / "img")
    b = tmp_path / "b"
    run_cli("build", "--model", f"timm:test_vit2@{tmp_path / 'w.safetensors'}", "--data", img, "--profile", "x86-cpu-ort",
            "--select-by", "macs", "--flops", "0.6", "--calib-samples", "8", "--bench-iters", "3", "--no-baselines", "--out", b)
    report = json.loads((b / "report.json").read_text())
    pruned = load_pruned(b / "pruned")
    assert get_adapter(pruned).heads_per_layer() == [len(h) for h in json.loads((b / "pruned" / "optin_structure.json").read_text())["kept_heads"]]
    assert report["macs"]["ratio"] < 0.7
    x = torch.randn(4, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    sess = ort.InferenceSession(str(b / "onnx" / "pruned" / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(got, _logits(pruned, {"pixel_values": x}).numpy(), atol=1e-4)
    run_cli("eval", b / "pruned", "--data", img)


def _hf_image_folder(tmp_path, cfg_name, cls_name, processor, **kw):
    import transformers

    torch.manual_seed(0)
    folder = tmp_path / cls_name
    cfg = getattr(transformers, cfg_name)(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, patch_size=4, num_labels=2,
                                          id2label={0: "neg", 1: "pos"}, label2id={"neg": 0, "pos": 1}, **kw)
    getattr(transformers, cls_name)(cfg).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_image_processor_that_centre_crops_gives_the_models_input_size(tmp_path):
    """DeiT's image processor (every hub DeiT) resizes to 256 x 256 and centre-crops 224 x 224; the size read was the
    resize's, so a DeiT got 256 x 256 images: 'internal error ValueError: Input image size (256*256) doesn't match model'.
    DINOv2's (shortest edge 256, crop 224) has no height, so the config's image_size (518 on the hub) was used: 5x the
    tokens of what the classifier was trained on. The crop is the model's input size."""
    import transformers

    from optin_deploy.models import load_model, preprocessing
    from optin_deploy.zoo import load_task

    deit = _hf_image_folder(tmp_path, "DeiTConfig", "DeiTForImageClassificationWithTeacher",
                            transformers.DeiTImageProcessor(size={"height": 20, "width": 20}, crop_size={"height": 16, "width": 16}),
                            image_size=16, intermediate_size=48)
    assert tuple(preprocessing(load_model(deit), deit)["image_size"]) == (16, 16)
    task = load_task(str(deit), str(_image_folder(tmp_path / "img")), progress=False)
    assert tuple(task.data.test.inputs.shape[-2:]) == (16, 16)
    dino = _hf_image_folder(tmp_path, "Dinov2Config", "Dinov2ForImageClassification",
                            transformers.BitImageProcessor(size={"shortest_edge": 20}, crop_size={"height": 16, "width": 16}),
                            image_size=40, mlp_ratio=2)
    assert tuple(preprocessing(load_model(dino), dino)["image_size"]) == (16, 16)
    # no centre crop: the resize is the input size, as before
    vit = _hf_image_folder(tmp_path, "ViTConfig", "ViTForImageClassification",
                           transformers.ViTImageProcessor(size={"height": 16, "width": 16}), image_size=16, intermediate_size=48)
    assert tuple(preprocessing(load_model(vit), vit)["image_size"]) == (16, 16)
