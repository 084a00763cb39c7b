"""transformers DeBERTa-v2 / DeBERTa-v3 encoders (``model_type`` ``deberta-v2``): DebertaV2Model,
DebertaV2ForSequenceClassification and the other DebertaV2For* heads.

Post-norm blocks like BERT: ``LN(x + attn_out(x))`` then ``LN(h + fc2(act(fc1(h))))``. The
attention is disentangled: besides content-to-content scores, each head scores content against
relative-position embeddings (``c2p``) and positions against content (``p2c``), through per-head
position projections of the shared relative-embedding table: ``pos_key_proj`` / ``pos_query_proj``,
or, with ``share_att_key`` (DeBERTa-v3), the head's own ``key_proj`` / ``query_proj`` rows applied
to that table. A head's rows in those projections belong to the head alone, so keeping a head keeps
its rows of ``pos_key_proj`` / ``pos_query_proj`` too (with ``share_att_key`` slicing
``query_proj`` / ``key_proj`` already does it); the shared table itself is untouched.

A block that loses all heads keeps ``LN(x + b_o)`` (the output projection bias through the residual
and LayerNorm); one that loses all neurons keeps ``LN(h + b_2)``.

Cost of one head at sequence length ``s`` (batch 1): the spec's ``4 s d dh + 2 s^2 dh`` plus, for
the ``R = 2 * att_span`` rows of the relative table, the head's position projections (``R d dh``
each: one per position type, or both ``query_proj`` and ``key_proj`` with ``share_att_key``) and
the ``s R dh`` score product of each position type.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, slice_linear
from .bert import BertStyleMLP
from .registry import register


class DebertaReducedAttention(nn.Module):
    """A DeBERTa attention block with no heads left: ``LayerNorm(x + b_o)``."""

    def __init__(self, bias: torch.Tensor, layer_norm: nn.Module):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.LayerNorm = layer_norm

    def forward(self, hidden_states, attention_mask=None, output_attentions=False, query_states=None, relative_pos=None,
                rel_embeddings=None):
        residual = hidden_states if query_states is None else query_states
        return self.LayerNorm(residual + self.bias), None


class DebertaSkipLayer(nn.Module):
    """Stands in for a block that a partial run skips; DeBERTa's encoder unpacks ``(hidden, attn)``."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states, None


@register
class DebertaV2Adapter(BertStyleMLP, Adapter):  # the MLP is BERT's
    family = "deberta-v2"
    description = "transformers DeBERTa-v2 / v3 encoders (DebertaV2Model, DebertaV2ForSequenceClassification...)"
    modality = "text"
    model_types = ("deberta-v2",)  # DeBERTa-v3 checkpoints carry model_type deberta-v2 too
    base_attrs = ("deberta",)
    blocks_path = "encoder.layer"
    heads_path = "attention.self"
    qkv_names = ("query_proj", "key_proj", "value_proj")
    out_proj_path = "attention.output.dense"
    attention_norm_path = "attention.output.LayerNorm"  # post-norm: a block with no heads keeps LN(x + b_o)
    reduced_attention = DebertaReducedAttention
    head_width_attrs = ("all_head_size", "attention_head_size")
    config_head_dim = "attention_head_size"

    # ----- per-head position projections ---------------------------------------------------
    @staticmethod
    def _position_projections(s) -> list[nn.Linear]:
        """The head-sliced projections of the relative-position table that ``query_proj`` /
        ``key_proj`` slicing does not already cover (absent with ``share_att_key``)."""
        if not getattr(s, "relative_attention", False) or getattr(s, "share_att_key", False):
            return []
        return [p for p in (getattr(s, "pos_key_proj", None), getattr(s, "pos_query_proj", None)) if p is not None]

    def keep_heads(self, layer: int, keep: list[int]) -> None:
        n = self.num_heads(layer)
        kept = sorted(set(int(h) for h in keep))
        if 0 < len(kept) < n and all(0 <= h < n for h in kept):
            dh = self.head_dim()
            idx = torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in kept])
            for proj in self._position_projections(self.layer_parts(layer).attn):
                self._replace(proj, slice_linear(proj, idx, 0))
        super().keep_heads(layer, keep)

    def _position_rows(self) -> int:
        """Rows of the relative-embedding table the attention projects (``2 * att_span``)."""
        cfg = self.model.config
        if not getattr(cfg, "relative_attention", False):
            return 0
        span = getattr(cfg, "max_relative_positions", -1)
        if span < 1:
            span = cfg.max_position_embeddings
        buckets = getattr(cfg, "position_buckets", -1)
        if buckets > 0:
            span = buckets
        return 2 * span

    def head_mac(self, s: int, layer: int = 0) -> int:
        d, dh = self.hidden_size(), self.head_dim()
        base = 4 * s * d * dh + 2 * s * s * dh
        rows = self._position_rows()
        if not rows:
            return base
        cfg = self.model.config
        types = [t for t in (getattr(cfg, "pos_att_type", None) or []) if t in ("c2p", "p2c")]
        projections = 2 if getattr(cfg, "share_att_key", False) else len(types)
        return base + projections * rows * d * dh + len(types) * s * rows * dh

    def pass_through(self, layer: int) -> nn.Module:
        return DebertaSkipLayer()
