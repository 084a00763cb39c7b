"""transformers ViT and DeiT (ViTModel, ViTForImageClassification, DeiTForImageClassification...).

Pre-norm blocks: ``x + attn(LN(x))`` then ``h + mlp(LN(h))``. A block that loses all heads keeps
``x + b_o``; one that loses all neurons keeps ``h + b_2``.
"""

from __future__ import annotations

import torch
import transformers
from torch import nn

from .base import Adapter, BiasOnly, LayerParts
from .registry import register


class ReducedViTAttention(nn.Module):
    """A ViT attention with no heads left: returns the output projection bias, broadcast."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.proj = BiasOnly(bias, bias.shape[0])

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        return self.proj(hidden_states), None


@register
class HFViTAdapter(Adapter):
    family = "hf_vit"
    description = "transformers ViT / DeiT (ViTForImageClassification, DeiTForImageClassification, ViTModel...)"
    modality = "image"
    model_types = ("vit", "deit")
    ort_optimizer = "vit"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        cfg = getattr(model, "config", None)
        return cls.supports_config(cfg) and cls._base(model) is not None

    @staticmethod
    def _base(model):
        for attr in ("vit", "deit"):
            if getattr(model, attr, None) is not None:
                return getattr(model, attr)
        return model if hasattr(model, "layers") else None

    def blocks(self):
        return self._base(self.model).layers

    def layer_parts(self, layer: int) -> LayerParts:
        blk = self.blocks()[layer]
        att = blk.attention
        has_attn = not isinstance(att, ReducedViTAttention)
        has_mlp = not isinstance(blk.mlp, BiasOnly)
        return LayerParts(
            block=blk,
            attn=att if has_attn else None,
            out_proj=att.o_proj if has_attn else None,
            q=att.q_proj if has_attn else None,
            k=att.k_proj if has_attn else None,
            v=att.v_proj if has_attn else None,
            fc1=blk.mlp.fc1 if has_mlp else None,
            fc2=blk.mlp.fc2 if has_mlp else None,
        )

    def num_heads(self, layer: int) -> int:
        att = self.blocks()[layer].attention
        return 0 if isinstance(att, ReducedViTAttention) else att.num_attention_heads

    def head_dim(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def set_num_heads(self, layer: int, n: int) -> None:
        self.blocks()[layer].attention.num_attention_heads = n

    def reduce_attention(self, layer: int) -> None:
        blk = self.blocks()[layer]
        blk.attention = ReducedViTAttention(blk.attention.o_proj.bias)

    def reduce_mlp(self, layer: int) -> None:
        blk = self.blocks()[layer]
        blk.mlp = BiasOnly(blk.mlp.fc2.bias, blk.mlp.fc2.out_features)

    def forward(self, inputs):
        return self.model(pixel_values=inputs["pixel_values"])

    def seq_len(self, inputs) -> int:
        cfg = self.model.config
        n = (cfg.image_size // cfg.patch_size) ** 2
        return n + (2 if cfg.model_type == "deit" else 1)

    def mlp_residual(self, layer: int) -> nn.Module:
        # pre-norm: x + mlp(layernorm_after(x))
        return self.blocks()[layer].layernorm_after

    def token_mask(self, inputs) -> torch.Tensor:
        return torch.ones(inputs["pixel_values"].shape[0], self.seq_len(inputs), dtype=torch.bool)
