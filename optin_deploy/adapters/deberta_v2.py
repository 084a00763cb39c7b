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

from .base import Adapter, LayerParts, slice_linear
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


class DebertaPassThrough(nn.Module):
    """Stands in for ``intermediate`` when the MLP has no neurons: hands its input on unchanged."""

    def forward(self, hidden_states):
        return hidden_states


class DebertaReducedOutput(nn.Module):
    """A DeBERTa FFN output with no neurons left: ``LayerNorm(h + b_2)``."""

    def __init__(self, bias: torch.Tensor, layer_norm: nn.Module):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.LayerNorm = layer_norm

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(input_tensor + self.bias)


class DebertaSkipLayer(nn.Module):
    """Stands in for a block that a partial run skips; DeBERTa's encoder unpacks ``(hidden, attn)``."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states, None


@register
class DebertaV2Adapter(Adapter):
    family = "deberta-v2"
    description = "transformers DeBERTa-v2 / v3 encoders (DebertaV2Model, DebertaV2ForSequenceClassification...)"
    modality = "text"
    model_types = ("deberta-v2",)  # DeBERTa-v3 checkpoints carry model_type deberta-v2 too

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return cls.supports_config(getattr(model, "config", None)) and cls._encoder(model) is not None

    @staticmethod
    def _encoder(model):
        base = getattr(model, "deberta", None)
        if base is not None:
            return base.encoder
        enc = getattr(model, "encoder", None)
        return enc if enc is not None and hasattr(enc, "layer") else None

    def blocks(self):
        return self._encoder(self.model).layer

    def _self(self, layer: int):
        att = self.blocks()[layer].attention
        return None if isinstance(att, DebertaReducedAttention) else att.self

    def layer_parts(self, layer: int) -> LayerParts:
        blk = self.blocks()[layer]
        att = blk.attention
        has_attn = not isinstance(att, DebertaReducedAttention)
        has_mlp = not isinstance(blk.output, DebertaReducedOutput)
        return LayerParts(
            block=blk,
            attn=att.self if has_attn else None,
            out_proj=att.output.dense if has_attn else None,
            q=att.self.query_proj if has_attn else None,
            k=att.self.key_proj if has_attn else None,
            v=att.self.value_proj if has_attn else None,
            fc1=blk.intermediate.dense if has_mlp else None,
            fc2=blk.output.dense if has_mlp else None,
        )

    def num_heads(self, layer: int) -> int:
        s = self._self(layer)
        return 0 if s is None else s.num_attention_heads

    def head_dim(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "attention_head_size", None) or cfg.hidden_size // cfg.num_attention_heads

    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def set_num_heads(self, layer: int, n: int) -> None:
        s = self._self(layer)
        s.num_attention_heads = n
        s.all_head_size = n * s.attention_head_size

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
            for proj in self._position_projections(self._self(layer)):
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

    # ----- reduced blocks ------------------------------------------------------------------
    def reduce_attention(self, layer: int) -> None:
        blk = self.blocks()[layer]
        out = blk.attention.output
        blk.attention = DebertaReducedAttention(out.dense.bias, out.LayerNorm)

    def reduce_mlp(self, layer: int) -> None:
        blk = self.blocks()[layer]
        blk.intermediate = DebertaPassThrough()
        blk.output = DebertaReducedOutput(blk.output.dense.bias, blk.output.LayerNorm)

    def pass_through(self, layer: int) -> nn.Module:
        return DebertaSkipLayer()

    def mlp_residual(self, layer: int) -> nn.Module:
        # post-norm: LN(h + fc2(act(fc1(h)))), so the residual is fc1's input
        blk = self.blocks()[layer]
        return blk.intermediate.dense if not isinstance(blk.output, DebertaReducedOutput) else blk.output
