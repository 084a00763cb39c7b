"""Shared fixtures: tiny randomly initialised models of each supported family, and their inputs."""

from __future__ import annotations

import os
import shutil
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


def make_tiny_bert(num_labels: int = 3, layers: int = 3, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, intermediate_size=48,
                     max_position_embeddings=64, num_labels=num_labels)
    return BertForSequenceClassification(cfg).eval()


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
}


@pytest.fixture(params=list(FAMILIES))
def family_case(request):
    make, inputs = FAMILIES[request.param]
    return request.param, make(), inputs()
