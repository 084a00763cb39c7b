"""transformers ModernBERT encoders (``model_type`` ``modernbert``): ModernBertModel,
ModernBertForSequenceClassification and the other ModernBertFor* heads.

Pre-norm blocks: ``h = x + Wo(attn(attn_norm(x)))`` then ``y = h + Wo2(act(a) * g)`` with
``[a; g] = Wi(mlp_norm(h))``. Specifics handled here:

* q, k and v are one fused ``Wqkv`` (rows ``[q; k; v]``, each ``heads x head_dim``); the attention
  reshapes with ``-1`` heads, so a layer's head count follows from ``Wqkv``'s rows after slicing
  (no attribute holds it). Rotary embeddings act per head on q and k and have no weights; global and
  sliding-window (local) layers differ only in their mask, so both are sliced the same way.
* the MLP is gated: one neuron ``j`` is two rows of ``Wi`` (``j`` in the input half, ``I + j`` in the
  gate half) and column ``j`` of ``Wo``. Its cost is ``3 s d`` (two rows and a column).
* a block that loses every head keeps ``x + b_o`` (the output projection's bias, zero when the
  config has no attention bias); one that loses every neuron keeps ``h + b_2``. The norm in front of
  a removed sublayer goes too: nothing reads its output.

transformers 5 runs ModernBERT on padded batches (no unpadding) with sdpa on CPU, eager on request.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, BiasOnly
from .registry import register


class ModernBertReducedAttention(nn.Module):
    """The attention of a block with no heads left: adds the output bias (or nothing) to the residual."""

    def __init__(self, bias: torch.Tensor | None, width: int):
        super().__init__()
        self.out = BiasOnly(bias, width)

    def forward(self, hidden_states, *args, **kwargs):
        return self.out(hidden_states), None


class ModernBertSkipLayer(nn.Module):
    """Stands in for a block that a partial run skips; the encoder loop reads its ``attention_type``."""

    def __init__(self, attention_type: str):
        super().__init__()
        self.attention_type = attention_type

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@register
class ModernBertAdapter(Adapter):
    family = "modernbert"
    description = "transformers ModernBERT encoders (ModernBertModel, ModernBertForSequenceClassification...)"
    modality = "text"
    model_types = ("modernbert",)
    sequence_inputs = ("input_ids", "attention_mask")  # no token types
    base_attrs = ("model",)
    blocks_path = "layers"
    attention_attr = heads_path = "attn"
    qkv_names = ("Wqkv",)  # fused, rows [q; k; v]
    out_proj_path = "attn.Wo"
    reduced_attention = ModernBertReducedAttention
    fc1_path, fc2_path = "mlp.Wi", "mlp.Wo"
    fused_gate = True  # Wi's rows: the input half, then the gate half; a neuron costs 3 s d
    mlp_input_path = "mlp_norm"  # pre-norm: h + mlp(mlp_norm(h)), so the residual is mlp_norm's input
    bypassed_with_attention = ("attn_norm",)  # nothing reads a removed sublayer's norm
    bypassed_with_mlp = ("mlp_norm",)
    head_count_attr = "num_heads"  # the forward reshapes q/k/v with -1 heads and reads only head_dim; a readable count
    config_head_dim = None

    def num_heads(self, layer: int) -> int:  # no attribute holds it: Wqkv's rows
        if not self.has_attention(layer):
            return 0
        return self.blocks()[layer].attn.Wqkv.out_features // (3 * self.head_dim())

    def pass_through(self, layer: int) -> nn.Module:
        return ModernBertSkipLayer(self.blocks()[layer].attention_type)
