"""MPNet (``MPNetModel``, ``MPNetForSequenceClassification``; e.g. ``all-mpnet-base-v2``).

Post-norm BERT-like blocks with other names: ``attention.attn.{q,k,v,o}``, ``attention.LayerNorm``,
``intermediate.dense``, ``output.dense``. One thing is shared by all layers: the encoder's
``relative_attention_bias`` table (buckets x heads) is computed once per forward into a
``B x H x T x T`` bias and handed to every layer. After pruning, each layer keeps its own heads, so
it must add only *its* kept columns of that bias: a pruned layer's self-attention becomes
:class:`PrunedMPNetSelfAttention`, which holds the original indices of its kept heads as a buffer
(saved with the weights, and rebuilt from the structure's kept indices) and selects those columns
before adding the bias. The table itself stays whole, so unpruned layers are untouched.

MPNet's encoder loop reads ``layer_outputs[0]`` from every block, so a block skipped by a partial
scoring run (:meth:`MPNetAdapter.pass_through`) returns ``(hidden,)``: a bare tensor would lose one
axis per skipped block and fail once four blocks are skipped (base-size models, never 3-layer ones).

A block that loses all heads keeps ``LayerNorm(x + b_o)``; one that loses all neurons keeps
``LayerNorm(h + b_2)``. Position ids start at ``padding_idx + 1`` = 2, as in RoBERTa.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.mpnet.modeling_mpnet import MPNetSelfAttention

from .base import Adapter, LayerParts, TuplePassThrough
from .bert import BertReducedOutput, PassThrough
from .registry import register


class PrunedMPNetSelfAttention(MPNetSelfAttention):
    """MPNet self-attention with some heads removed: adds only its kept heads' columns of the
    shared relative-position bias (``kept_heads``: original head indices)."""

    kept_heads: torch.Tensor

    def forward(self, hidden_states, attention_mask=None, position_bias=None, output_attentions=False, **kwargs):
        if position_bias is not None:
            position_bias = position_bias.index_select(1, self.kept_heads)
        return super().forward(hidden_states, attention_mask, position_bias, output_attentions=output_attentions, **kwargs)


class ReducedMPNetAttention(nn.Module):
    """An MPNet attention with no heads left: ``LayerNorm(x + b_o)``."""

    def __init__(self, bias: torch.Tensor, layer_norm: nn.LayerNorm):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.LayerNorm = layer_norm

    def forward(self, hidden_states, attention_mask=None, position_bias=None, *args, **kwargs):
        return (self.LayerNorm(hidden_states + self.bias),)


@register
class MPNetAdapter(Adapter):
    family = "mpnet"
    description = "transformers MPNet (MPNetModel, MPNetForSequenceClassification)"
    modality = "text"
    model_types = ("mpnet",)
    sequence_inputs = ("input_ids", "attention_mask")
    ort_optimizer = "bert"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return cls.supports_config(getattr(model, "config", None)) and cls._encoder(model) is not None

    @staticmethod
    def _encoder(model):
        base = getattr(model, "mpnet", model)
        return getattr(base, "encoder", None)

    def blocks(self):
        return self._encoder(self.model).layer

    def layer_parts(self, layer: int) -> LayerParts:
        blk = self.blocks()[layer]
        has_attn = not isinstance(blk.attention, ReducedMPNetAttention)
        has_mlp = not isinstance(blk.output, BertReducedOutput)
        att = blk.attention.attn if has_attn else None
        return LayerParts(
            block=blk,
            attn=att,
            out_proj=att.o if has_attn else None,
            q=att.q if has_attn else None,
            k=att.k if has_attn else None,
            v=att.v if has_attn else None,
            fc1=blk.intermediate.dense if has_mlp else None,
            fc2=blk.output.dense if has_mlp else None,
        )

    def num_heads(self, layer: int) -> int:
        att = self.blocks()[layer].attention
        return 0 if isinstance(att, ReducedMPNetAttention) else att.attn.num_attention_heads

    def head_dim(self) -> int:
        cfg = self.model.config
        return cfg.hidden_size // cfg.num_attention_heads

    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def position_offset(self) -> int:
        return 2  # MPNetEmbeddings: padding_idx = 1, positions start at padding_idx + 1

    def set_num_heads(self, layer: int, n: int) -> None:
        att = self.blocks()[layer].attention.attn
        att.num_attention_heads = n
        att.all_head_size = n * att.attention_head_size

    def after_keep_heads(self, layer: int, keep: list[int]) -> None:
        att = self.blocks()[layer].attention
        if isinstance(att, ReducedMPNetAttention):
            return
        kept = torch.tensor(self.kept_heads(layer), dtype=torch.long, device=att.attn.q.weight.device)
        if not isinstance(att.attn, PrunedMPNetSelfAttention):
            att.attn.__class__ = PrunedMPNetSelfAttention  # same state, plus the kept-heads buffer
            att.attn.register_buffer("kept_heads", kept)
        else:
            att.attn.kept_heads = kept

    def pass_through(self, layer: int) -> nn.Module:
        return TuplePassThrough()  # MPNetEncoder: hidden_states = layer_module(...)[0]

    def reduce_attention(self, layer: int) -> None:
        blk = self.blocks()[layer]
        blk.attention = ReducedMPNetAttention(blk.attention.attn.o.bias, blk.attention.LayerNorm)

    def reduce_mlp(self, layer: int) -> None:
        blk = self.blocks()[layer]
        blk.intermediate = PassThrough()
        blk.output = BertReducedOutput(blk.output.dense.bias, blk.output.LayerNorm)

    def mlp_residual(self, layer: int) -> nn.Module:
        blk = self.blocks()[layer]
        return blk.intermediate.dense if not isinstance(blk.output, BertReducedOutput) else blk.output
