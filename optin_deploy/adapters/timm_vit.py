"""timm VisionTransformer / DeiT (``timm.models.vision_transformer``), timm >= 1.0.24.

Pre-norm blocks with a fused ``qkv`` projection whose rows are ``[q; k; v]``, each ``num_heads x
head_dim``. After slicing, ``num_heads`` and ``attn_dim`` are set on the attention module. A block
that loses all heads keeps ``x + b_proj``; one that loses all neurons keeps ``h + b_fc2``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import OptinError
from .base import Adapter, ReducedAttention
from .registry import register


class ReducedTimmAttention(ReducedAttention):
    """A timm attention with no heads left: returns the output projection bias, broadcast."""

    def forward(self, x, attn_mask=None, is_causal=False):
        return self.proj(x)


def _vision_transformer_cls():
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # timm is an optional extra
        return None
    return VisionTransformer


@register
class TimmViTAdapter(Adapter):
    family = "timm_vit"
    description = "timm VisionTransformer / DeiT (timm.models.vision_transformer)"
    modality = "image"
    ort_optimizer = "vit"
    rebuild_from_indices = False  # build_from_structure makes the MLPs only as wide as the widest kept one
    blocks_path = "blocks"
    attention_attr = heads_path = "attn"
    qkv_names = ("qkv",)  # fused, rows [q; k; v]
    out_proj_path = "attn.proj"
    reduced_attention = ReducedTimmAttention
    mlp_input_path = "norm2"  # pre-norm: x + mlp(norm2(x))
    head_count_attr = "num_heads"
    head_width_attrs = ("attn_dim", "head_dim")

    def __init__(self, model):
        super().__init__(model)
        for blk in model.blocks:
            att = blk.attn
            if not isinstance(att, ReducedTimmAttention) and not isinstance(getattr(att, "norm", nn.Identity()), nn.Identity):
                raise OptinError("timm ViTs with a scale-norm inside attention are not supported; use a standard ViT/DeiT")
            if not hasattr(att, "attn_dim") and not isinstance(att, ReducedTimmAttention):
                raise OptinError("this timm version reshapes attention by embedding width; upgrade to timm>=1.0.24")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        vt = _vision_transformer_cls()
        return vt is not None and isinstance(model, vt)

    def head_dim(self) -> int:
        for blk in self.blocks():
            if not isinstance(blk.attn, ReducedTimmAttention):
                return blk.attn.head_dim
        return self._head_dim

    def hidden_size(self) -> int:
        return self.model.embed_dim

    def reduce_attention(self, layer: int) -> None:
        self._head_dim = self.blocks()[layer].attn.head_dim  # head_dim() once every block may be reduced
        super().reduce_attention(layer)

    def forward(self, inputs):
        return self.model(inputs["pixel_values"])

    def image_shape(self) -> tuple[int, int, int]:
        pe = self.model.patch_embed
        h, w = pe.img_size
        return int(getattr(getattr(pe, "proj", None), "in_channels", 3)), int(h), int(w)

    def seq_len(self, inputs) -> int:
        return self.model.patch_embed.num_patches + self.model.num_prefix_tokens

    def branch_scale(self, layer: int, part: str) -> torch.Tensor | None:
        ls = getattr(self.blocks()[layer], "ls1" if part == "attn" else "ls2", None)
        gamma = getattr(ls, "gamma", None)
        return gamma.detach() if isinstance(gamma, torch.Tensor) else None

    def token_mask(self, inputs) -> torch.Tensor:
        return torch.ones(inputs["pixel_values"].shape[0], self.seq_len(inputs), dtype=torch.bool)

    def structure(self) -> dict:
        m = self.model
        heads, neurons = self.heads_per_layer(), self.neurons_per_layer()
        first_attn = next((b.attn for b in m.blocks if not isinstance(b.attn, ReducedTimmAttention)), None)
        kwargs = {
            "img_size": list(m.patch_embed.img_size),
            "patch_size": list(m.patch_embed.patch_size),
            "in_chans": m.patch_embed.proj.in_channels,
            "num_classes": m.num_classes,
            "global_pool": m.global_pool,
            "embed_dim": m.embed_dim,
            "depth": len(m.blocks),
            "num_heads": m.embed_dim // self.head_dim(),
            "mlp_ratio": (max(max(neurons), 1) + 0.5) / m.embed_dim,  # int(embed * ratio) == widest MLP
            "qkv_bias": bool(first_attn is None or first_attn.qkv.bias is not None),
            "class_token": m.cls_token is not None,
            "reg_tokens": getattr(m, "num_reg_tokens", 0),
            "no_embed_class": m.no_embed_class,
            "pre_norm": not isinstance(m.norm_pre, nn.Identity),
            "fc_norm": not isinstance(m.fc_norm, nn.Identity),
        }
        return {"family": self.family, "timm_kwargs": kwargs, **self.kept_structure()}

    @classmethod
    def build_from_structure(cls, spec: dict) -> nn.Module:
        vt = _vision_transformer_cls()
        if vt is None:
            raise OptinError("this pruned model is a timm ViT but timm is not installed: pip install 'optin-deploy[timm]'")
        kw = dict(spec["timm_kwargs"])
        kw["img_size"], kw["patch_size"] = tuple(kw["img_size"]), tuple(kw["patch_size"])
        return vt(**kw)
