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
from torch import nn

from .base import Adapter, LayerParts
from .registry import register


@register
class HFDinov2Adapter(Adapter):
    family = "hf_dinov2"
    description = "transformers DINOv2 (Dinov2Model, Dinov2ForImageClassification; plain or SwiGLU MLP)"
    modality = "image"
    model_types = ("dinov2",)
    base_attrs = ("dinov2",)
    blocks_path = "encoder.layer"  # q_proj / k_proj / v_proj / o_proj under .attention (the defaults)
    mlp_input_path = "norm2"
    bypassed_with_attention = ("layer_scale1",)  # folded into the reduced part's bias (reduced_bias)
    bypassed_with_mlp = ("layer_scale2",)

    def layer_parts(self, layer: int) -> LayerParts:
        parts = super().layer_parts(layer)
        mlp = parts.block.mlp
        if hasattr(mlp, "gate_proj"):  # SwiGLU: a neuron is a row of gate_proj and of up_proj
            parts.fc1, parts.fc2, parts.up = mlp.gate_proj, mlp.down_proj, mlp.up_proj
        return parts

    def reduced_bias(self, layer: int, part: str, proj: nn.Linear) -> torch.Tensor:
        """The removed part's output bias times its layer scale (``g1 * b_o`` / ``g2 * b_2``)."""
        b = proj.bias.detach() if proj.bias is not None else torch.zeros(proj.out_features)
        g = self.branch_scale(layer, part)
        return b * g if g is not None else b

    def forward(self, inputs):
        return self.model(pixel_values=inputs["pixel_values"])

    def seq_len(self, inputs) -> int:
        h, w = inputs["pixel_values"].shape[-2:]
        p = self.model.config.patch_size
        p = p if isinstance(p, int) else p[0]
        return (h // p) * (w // p) + 1  # + the class token

    def token_mask(self, inputs) -> torch.Tensor:
        return torch.ones(inputs["pixel_values"].shape[0], self.seq_len(inputs), dtype=torch.bool)

    def branch_scale(self, layer: int, part: str) -> torch.Tensor | None:
        ls = getattr(self.blocks()[layer], "layer_scale1" if part == "attn" else "layer_scale2")
        g = getattr(ls, "lambda1", None)
        return g.detach() if isinstance(g, torch.Tensor) else None
