"""transformers DINOv2 (Dinov2Model, Dinov2ForImageClassification), plain and SwiGLU MLP.

Pre-norm blocks with layer scale: ``h = x + g1 * attn(LN(x))`` then ``h + g2 * mlp(LN(h))``.

* Heads: ``q_proj`` / ``k_proj`` / ``v_proj`` rows and ``o_proj`` columns, as in ViT. Removing heads
  changes nothing about the layer scale ``g1`` (a per-channel scale of ``o_proj``'s output).
* Neurons: the plain MLP is ``fc2(act(fc1 x))``; the SwiGLU MLP (``use_swiglu_ffn``, the large
  DINOv2 variants) is ``down(silu(gate x) * up x)``, so one neuron is a row of ``gate_proj`` and the
  same row of ``up_proj`` (plus a column of ``down_proj``).
* A block that loses every head keeps ``x + g1 * b_o``; the layer scale is folded into that bias
  (``layer_scale1`` becomes an identity), likewise ``h + g2 * b_2`` for a block with no neurons, so
  an export of a reduced part is one ``Add`` of a constant.
"""

from __future__ import annotations

import torch
import transformers
from torch import nn

from .base import Adapter, BiasOnly, LayerParts
from .registry import register


class ReducedDinov2Attention(nn.Module):
    """A DINOv2 attention with no heads left: returns ``g1 * b_o`` (layer scale folded), broadcast."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.proj = BiasOnly(bias, bias.shape[0])

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        return self.proj(hidden_states), None


def _folded(bias: torch.Tensor | None, width: int, scale: nn.Module) -> torch.Tensor:
    b = bias.detach() if bias is not None else torch.zeros(width)
    g = getattr(scale, "lambda1", None)
    return b * g.detach() if isinstance(g, torch.Tensor) else b


@register
class HFDinov2Adapter(Adapter):
    family = "hf_dinov2"
    description = "transformers DINOv2 (Dinov2Model, Dinov2ForImageClassification; plain or SwiGLU MLP)"
    modality = "image"
    model_types = ("dinov2",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        cfg = getattr(model, "config", None)
        return getattr(cfg, "model_type", None) == "dinov2" and cls._base(model) is not None

    @staticmethod
    def _base(model):
        base = getattr(model, "dinov2", None) or model
        return base if hasattr(getattr(base, "encoder", None), "layer") else None

    def blocks(self):
        return self._base(self.model).encoder.layer

    def layer_parts(self, layer: int) -> LayerParts:
        blk = self.blocks()[layer]
        att, mlp = blk.attention, blk.mlp
        has_attn = not isinstance(att, ReducedDinov2Attention)
        has_mlp = not isinstance(mlp, BiasOnly)
        gated = has_mlp and hasattr(mlp, "gate_proj")
        return LayerParts(
            block=blk,
            attn=att if has_attn else None,
            out_proj=att.o_proj if has_attn else None,
            q=att.q_proj if has_attn else None,
            k=att.k_proj if has_attn else None,
            v=att.v_proj if has_attn else None,
            fc1=(mlp.gate_proj if gated else mlp.fc1) if has_mlp else None,
            fc2=(mlp.down_proj if gated else mlp.fc2) if has_mlp else None,
            up=mlp.up_proj if gated else None,
        )

    def num_heads(self, layer: int) -> int:
        att = self.blocks()[layer].attention
        return 0 if isinstance(att, ReducedDinov2Attention) else att.num_attention_heads

    def head_dim(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def set_num_heads(self, layer: int, n: int) -> None:
        self.blocks()[layer].attention.num_attention_heads = n

    def reduce_attention(self, layer: int) -> None:
        blk = self.blocks()[layer]
        blk.attention = ReducedDinov2Attention(_folded(blk.attention.o_proj.bias, self.hidden_size(), blk.layer_scale1))
        blk.layer_scale1 = nn.Identity()

    def reduce_mlp(self, layer: int) -> None:
        blk = self.blocks()[layer]
        fc2 = self.layer_parts(layer).fc2
        blk.mlp = BiasOnly(_folded(fc2.bias, fc2.out_features, blk.layer_scale2), fc2.out_features)
        blk.layer_scale2 = nn.Identity()

    def forward(self, inputs):
        return self.model(pixel_values=inputs["pixel_values"])

    def seq_len(self, inputs) -> int:
        h, w = inputs["pixel_values"].shape[-2:]
        p = self.model.config.patch_size
        p = p if isinstance(p, int) else p[0]
        return (h // p) * (w // p) + 1  # + the class token

    def token_mask(self, inputs) -> torch.Tensor:
        return torch.ones(inputs["pixel_values"].shape[0], self.seq_len(inputs), dtype=torch.bool)

    def mlp_residual(self, layer: int) -> nn.Module:
        return self.blocks()[layer].norm2

    def branch_scale(self, layer: int, part: str) -> torch.Tensor | None:
        ls = getattr(self.blocks()[layer], "layer_scale1" if part == "attn" else "layer_scale2")
        g = getattr(ls, "lambda1", None)
        return g.detach() if isinstance(g, torch.Tensor) else None

    def structure(self) -> dict:
        return {
            "family": self.family,
            "model_class": type(self.model).__name__,
            "config": self.model.config.to_dict(),
            "heads": self.heads_per_layer(),
            "neurons": self.neurons_per_layer(),
        }

    @classmethod
    def build_from_structure(cls, spec: dict) -> nn.Module:
        cfg = dict(spec["config"])
        config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        return getattr(transformers, spec["model_class"])(config)
