"""Shared fixtures: tiny randomly initialised models of each supported family, and their inputs."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Every test (and every subprocess it starts) uses a temporary cache, never the user's.

    Registry wheels already downloaded into the user's cache are copied in (read, never written),
    so the suite does not fetch them again.
    """
    user = Path(os.environ.get("OPTIN_DEPLOY_CACHE") or Path.home() / ".cache" / "optin-deploy")
    cache = tmp_path_factory.mktemp("optin-cache")
    if (user / "wheels").is_dir():
        shutil.copytree(user / "wheels", cache / "wheels")
    old = os.environ.get("OPTIN_DEPLOY_CACHE")
    os.environ["OPTIN_DEPLOY_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("OPTIN_DEPLOY_CACHE", None)
    else:
        os.environ["OPTIN_DEPLOY_CACHE"] = old


@pytest.fixture
def quiet_cache(tmp_path, monkeypatch):
    """A cache of the test's own (under tmp_path), the Hugging Face hub offline, no debug tracebacks: for tests that run
    the CLI on small models of their own (modules opt in with ``pytestmark = pytest.mark.usefixtures("quiet_cache")``)."""
    monkeypatch.setenv("OPTIN_DEPLOY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("OPTIN_DEPLOY_DEBUG", raising=False)


def copy_tokenizer(src, dst) -> None:
    """Copy a saved WordPiece tokenizer's files (e.g. the MiniLM asset's) from folder ``src`` into model folder ``dst``."""
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def save_word_tokenizer(folder, vocab_size: int = 120) -> None:
    """Save a WordPiece tokenizer of ``vocab_size`` entries (5 special tokens, then made-up words) into a tiny
    model's folder, so that it loads as a text model (a folder without a tokenizer is refused)."""
    from transformers import BertTokenizerFast

    folder = Path(folder)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(vocab_size - 5))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)


def run_cli(*args, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """``optin-deploy ARGS`` in this process (``optin_deploy.cli.main``), quiet, with stdout, stderr and
    the exit code captured as a :class:`subprocess.CompletedProcess` (what a subprocess would give,
    without importing torch again). ``check``: raise on a non-zero exit, showing both streams."""
    from optin_deploy import cli

    args = [str(a) for a in args]
    env = {"OPTIN_DEPLOY_QUIET": "1", **(env or {})}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            cli.main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    proc = subprocess.CompletedProcess(["optin-deploy", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"exit {code}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def run_cli_subprocess(*args, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """``python -m optin_deploy.cli ARGS`` in a real subprocess (for exit codes as the shell sees them)."""
    env = {**os.environ, "OPTIN_DEPLOY_QUIET": "1"}
    proc = subprocess.run([sys.executable, "-m", "optin_deploy.cli", *map(str, args)], capture_output=True, text=True, env=env, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def make_tiny_bert(num_labels: int = 3, layers: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48,
                     max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(cfg).eval()


TINY_TEXT = dict(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                 max_position_embeddings=64)

# text families: transformers config class name, its SequenceClassification class, config overrides.
# A new family adds one entry here (and its adapter file); the invariant tests in test_core.py and
# test_export.py are parametrised over FAMILIES.
TEXT_FAMILIES = {
    "distilbert": ("DistilBertConfig", "DistilBertForSequenceClassification",
                   dict(vocab_size=120, dim=32, n_layers=3, n_heads=4, hidden_dim=48, max_position_embeddings=64)),
    "electra": ("ElectraConfig", "ElectraForSequenceClassification", dict(TINY_TEXT, embedding_size=24)),
    "xlm-roberta": ("XLMRobertaConfig", "XLMRobertaForSequenceClassification", dict(TINY_TEXT, max_position_embeddings=66)),
    "camembert": ("CamembertConfig", "CamembertForSequenceClassification", dict(TINY_TEXT, max_position_embeddings=66)),
    "mpnet": ("MPNetConfig", "MPNetForSequenceClassification", dict(TINY_TEXT, max_position_embeddings=66)),
    # DeBERTa-v2 layout: relative attention with c2p and p2c through separate position projections
    "deberta-v2": ("DebertaV2Config", "DebertaV2ForSequenceClassification",
                   dict(TINY_TEXT, relative_attention=True, pos_att_type=["p2c", "c2p"], max_relative_positions=24, type_vocab_size=2)),
    # DeBERTa-v3 layout: position projections shared with key/query, log buckets, LayerNorm on the table
    "deberta-v3": ("DebertaV2Config", "DebertaV2ForSequenceClassification",
                   dict(TINY_TEXT, relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=True, position_buckets=16,
                        max_relative_positions=64, norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0)),
    # ModernBERT as released (no biases), alternating global / sliding-window layers
    "modernbert": ("ModernBertConfig", "ModernBertForSequenceClassification",
                   dict(TINY_TEXT, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2,
                        global_attn_every_n_layers=2, local_attention=8, initializer_range=0.1)),
}


def make_tiny_text(family: str, num_labels: int = 3, layers: int = 3, seed: int = 0, head: bool = True, **over):
    """A tiny randomly initialised model of a text family (``head=False``: the bare encoder)."""
    import transformers

    cfg_name, cls_name, kw = TEXT_FAMILIES[family]
    kw = dict(kw, **over)
    kw["n_layers" if "n_layers" in kw else "num_hidden_layers"] = layers
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_name)(num_labels=num_labels, **kw)
    cls = getattr(transformers, cls_name if head else cls_name.replace("ForSequenceClassification", "Model"))
    return cls(cfg).eval()


def make_tiny_deberta(v3: bool = False, **kw):
    return make_tiny_text("deberta-v3" if v3 else "deberta-v2", **kw)


def make_tiny_modernbert(bias: bool = False, **kw):
    """ModernBERT; ``bias`` turns on the attention and MLP biases (off in the released checkpoints)
    and draws them at random (transformers initialises them to zero), so the reduced blocks'
    ``x + b`` is really tested."""
    model = make_tiny_text("modernbert", **({"attention_bias": True, "mlp_bias": True} if bias else {}), **kw)
    if bias:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("bias") and ("Wqkv" in name or ".Wo." in name or ".Wi." in name):
                    p.normal_(0, 0.1)
    return model


def make_tiny_vit(seed: int = 0, deit: bool = False):
    from transformers import DeiTConfig, DeiTForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    kw = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48, image_size=16, patch_size=4,
              num_channels=3, num_labels=5)
    if deit:
        return DeiTForImageClassification(DeiTConfig(**kw)).eval()
    return ViTForImageClassification(ViTConfig(**kw)).eval()


def make_tiny_timm(seed: int = 0):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(img_size=16, patch_size=4, embed_dim=32, depth=3, num_heads=4, mlp_ratio=1.5, num_classes=5).eval()


def make_tiny_dinov2(seed: int = 0, swiglu: bool = False):
    from transformers import Dinov2Config, Dinov2ForImageClassification

    torch.manual_seed(seed)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, mlp_ratio=2, image_size=16, patch_size=4,
                       num_channels=3, num_labels=5, use_swiglu_ffn=swiglu, layerscale_value=0.5)
    m = Dinov2ForImageClassification(cfg).eval()
    with torch.no_grad():  # layer scales away from their constant init, so a wrong fold shows
        for blk in m.dinov2.encoder.layer:
            for ls in (blk.layer_scale1, blk.layer_scale2):
                ls.lambda1.uniform_(0.2, 1.5)
    return m


def make_tiny_swin(seed: int = 0):
    """Two stages (hidden 24 then 48, head size 8 then 16), 28x28 grey images, patch 4, window 4:
    the 7x7 first-stage grid is padded to 8x8 windows; the 4x4 second stage is one window."""
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(seed)
    cfg = SwinConfig(image_size=28, patch_size=4, num_channels=1, embed_dim=24, depths=[2, 2], num_heads=[3, 3], window_size=4,
                     mlp_ratio=1.0, num_labels=5)
    m = SwinForImageClassification(cfg).eval()
    with torch.no_grad():  # the relative-position tables start at zero: give each head its own bias
        for p in m.parameters():
            if p.dim() == 2 and p.shape[1] == 3 and p.shape[0] == 49:
                p.normal_(0, 0.5)
    return m


def grey_inputs(batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 1, 28, 28, generator=g)}


def text_inputs(batch: int = 4, seq: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 120, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[0, seq - 3 :] = 0  # some padding
    return {"input_ids": ids, "attention_mask": mask}


def image_inputs(batch: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}


FAMILIES = {
    "bert": (make_tiny_bert, text_inputs),
    "hf_vit": (make_tiny_vit, image_inputs),
    "hf_deit": (lambda seed=0: make_tiny_vit(seed, deit=True), image_inputs),
    "timm_vit": (make_tiny_timm, image_inputs),
    "hf_dinov2": (make_tiny_dinov2, image_inputs),
    "hf_dinov2_swiglu": (lambda seed=0: make_tiny_dinov2(seed, swiglu=True), image_inputs),
    "hf_swin": (make_tiny_swin, grey_inputs),
    **{f: ((lambda f: lambda seed=0: make_tiny_text(f, seed=seed))(f), text_inputs) for f in TEXT_FAMILIES},
    "modernbert-bias": (lambda seed=0: make_tiny_modernbert(bias=True, seed=seed), text_inputs),
}


# The families the fast tier (``pytest -m "not slow"``) runs the expensive per-family invariants on
# (exact scoring against the reference, fast scoring, ONNX export parity, the refit, OPTIN scores' shapes):
# post-norm text (BERT), pre-norm transformers ViT, timm. The full suite runs them on every family; the
# cheap invariants (surgery equals masking, analytic MACs, save/reload, the baselines' shapes) run on
# every family in both.
FAST_FAMILIES = {"bert", "hf_vit", "timm_vit"}


def family_params(names) -> list:
    """``names`` as pytest params, those outside :data:`FAST_FAMILIES` marked slow."""
    return [pytest.param(n, marks=() if n in FAST_FAMILIES else pytest.mark.slow) for n in names]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """OPTIN and Fisher scoring of every family through ``family_case`` (test_baselines' shapes and
    brute-force tests) are slow outside :data:`FAST_FAMILIES`; marked here, before ``-m`` deselects."""
    for item in items:
        cs = getattr(item, "callspec", None)
        if cs is None or cs.params.get("family_case") in (None, *FAST_FAMILIES):
            continue
        if cs.params.get("name") == "optin" or item.originalname == "test_fisher_matches_bruteforce":
            item.add_marker(pytest.mark.slow)


@pytest.fixture(params=list(FAMILIES))
def family_case(request):
    make, inputs = FAMILIES[request.param]
    return request.param, make(), inputs()
