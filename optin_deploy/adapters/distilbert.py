"""DistilBERT (``DistilBertModel``, ``DistilBertForSequenceClassification``).

Post-norm blocks: ``h = sa_layer_norm(x + out_lin(attn(q_lin, k_lin, v_lin)))`` then
``output_layer_norm(h + ffn.lin2(act(ffn.lin1(h))))``. Attention reshapes with ``-1`` heads, so
per-layer head counts can differ after slicing. A block that loses all heads keeps
``sa_layer_norm(x + b_out)``; one that loses all neurons keeps ``output_layer_norm(h + b_lin2)``.
DistilBERT takes no ``token_type_ids``; its task models keep the encoder under ``.distilbert`` and
the blocks under ``.transformer.layer``.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, BiasOnly, LayerParts
from .registry import register


class ReducedDistilBertAttention(nn.Module):
    """A DistilBERT attention with no heads left: the output projection bias, broadcast (the block
    adds the residual and applies ``sa_layer_norm``)."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.proj = BiasOnly(bias, bias.shape[0])

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        return self.proj(hidden_states), None


@register
class DistilBertAdapter(Adapter):
    family = "distilbert"
    description = "transformers DistilBERT (DistilBertModel, DistilBertForSequenceClassification)"
    modality = "text"
    model_types = ("distilbert",)
    sequence_inputs = ("input_ids", "attention_mask")
    ort_optimizer = "bert"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return cls.supports_config(getattr(model, "config", None)) and cls._transformer(model) is not None

    @staticmethod
    def _transformer(model):
        base = getattr(model, "distilbert", model)
        return getattr(base, "transformer", None)

    def blocks(self):
        return self._transformer(self.model).layer

    def layer_parts(self, layer: int) -> LayerParts:
        blk = self.blocks()[layer]
        att = blk.attention
        has_attn = not isinstance(att, ReducedDistilBertAttention)
        has_mlp = not isinstance(blk.ffn, BiasOnly)
        return LayerParts(
            block=blk,
            attn=att if has_attn else None,
            out_proj=att.out_lin if has_attn else None,
            q=att.q_lin if has_attn else None,
            k=att.k_lin if has_attn else None,
            v=att.v_lin if has_attn else None,
            fc1=blk.ffn.lin1 if has_mlp else None,
            fc2=blk.ffn.lin2 if has_mlp else None,
        )

    def num_heads(self, layer: int) -> int:
        att = self.blocks()[layer].attention
        return 0 if isinstance(att, ReducedDistilBertAttention) else att.n_heads

    def head_dim(self) -> int:
        cfg = self.model.config
        return cfg.dim // cfg.n_heads

    def hidden_size(self) -> int:
        return self.model.config.dim

    def set_num_heads(self, layer: int, n: int) -> None:
        self.blocks()[layer].attention.n_heads = n

    def reduce_attention(self, layer: int) -> None:
        blk = self.blocks()[layer]
        blk.attention = ReducedDistilBertAttention(blk.attention.out_lin.bias)

    def reduce_mlp(self, layer: int) -> None:
        blk = self.blocks()[layer]
        blk.ffn = BiasOnly(blk.ffn.lin2.bias, blk.ffn.lin2.out_features)

    def mlp_residual(self, layer: int) -> nn.Module:
        # post-norm: output_layer_norm(h + ffn(h)), so the residual is the FFN's input
        return self.blocks()[layer].ffn
