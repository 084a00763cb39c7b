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

from .base import Adapter, BiasOnly, LayerParts, slice_linear
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

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return cls.supports_config(getattr(model, "config", None)) and cls._base(model) is not None

    @staticmethod
    def _base(model):
        base = getattr(model, "model", None)
        if base is not None and hasattr(base, "layers"):
            return base
        return model if hasattr(model, "layers") and hasattr(model, "rotary_emb") else None

    def blocks(self):
        return self._base(self.model).layers

    def _has_attn(self, layer: int) -> bool:
        return not isinstance(self.blocks()[layer].attn, ModernBertReducedAttention)

    def _has_mlp(self, layer: int) -> bool:
        return not isinstance(self.blocks()[layer].mlp, BiasOnly)

    def layer_parts(self, layer: int) -> LayerParts:
        blk = self.blocks()[layer]
        has_attn, has_mlp = self._has_attn(layer), self._has_mlp(layer)
        return LayerParts(
            block=blk,
            attn=blk.attn if has_attn else None,
            out_proj=blk.attn.Wo if has_attn else None,
            qkv=blk.attn.Wqkv if has_attn else None,
            fc1=blk.mlp.Wi if has_mlp else None,
            fc2=blk.mlp.Wo if has_mlp else None,
        )

    def num_heads(self, layer: int) -> int:
        if not self._has_attn(layer):
            return 0
        return self.blocks()[layer].attn.Wqkv.out_features // (3 * self.head_dim())

    def num_neurons(self, layer: int) -> int:
        return self.blocks()[layer].mlp.Wo.in_features if self._has_mlp(layer) else 0

    def head_dim(self) -> int:
        cfg = self.model.config
        return cfg.hidden_size // cfg.num_attention_heads

    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def set_num_heads(self, layer: int, n: int) -> None:
        # the forward reshapes q/k/v with -1 heads and reads only head_dim; keep a readable count
        self.blocks()[layer].attn.num_heads = n

    def neuron_mac(self, s: int, layer: int = 0) -> int:
        return 3 * s * self.hidden_size()  # input row, gate row, output column

    def keep_neurons(self, layer: int, keep: list[int]) -> None:
        n = self.num_neurons(layer)
        keep = sorted(set(int(j) for j in keep))
        if any(j < 0 or j >= n for j in keep):
            raise ValueError(f"layer {layer}: neuron index out of range 0..{n - 1}")
        if len(keep) == n:
            return
        self._record_kept(layer, "neurons", keep, n)
        if not keep:
            self.reduce_mlp(layer)
            return
        mlp = self.blocks()[layer].mlp
        idx = torch.tensor(keep, dtype=torch.long)
        mlp.Wi = slice_linear(mlp.Wi, torch.cat([idx, idx + n]), 0)  # input half, then gate half
        mlp.Wo = slice_linear(mlp.Wo, idx, 1)

    def pass_through(self, layer: int) -> nn.Module:
        return ModernBertSkipLayer(self.blocks()[layer].attention_type)

    def reduce_attention(self, layer: int) -> None:
        blk = self.blocks()[layer]
        blk.attn = ModernBertReducedAttention(blk.attn.Wo.bias, self.hidden_size())
        blk.attn_norm = nn.Identity()

    def reduce_mlp(self, layer: int) -> None:
        blk = self.blocks()[layer]
        blk.mlp = BiasOnly(blk.mlp.Wo.bias, self.hidden_size())
        blk.mlp_norm = nn.Identity()

    def mlp_residual(self, layer: int) -> nn.Module:
        # pre-norm: h + mlp(mlp_norm(h)), so the residual is mlp_norm's input
        return self.blocks()[layer].mlp_norm
