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

from .base import Adapter, TuplePassThrough
from .bert import BertStyleMLP
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
class MPNetAdapter(BertStyleMLP, Adapter):  # the MLP is BERT's
    family = "mpnet"
    description = "transformers MPNet (MPNetModel, MPNetForSequenceClassification)"
    modality = "text"
    model_types = ("mpnet",)
    sequence_inputs = ("input_ids", "attention_mask")
    ort_optimizer = "bert"
    base_attrs = ("mpnet",)
    blocks_path = "encoder.layer"
    heads_path = "attention.attn"
    qkv_names = ("q", "k", "v")
    out_proj_path = "attention.attn.o"
    attention_norm_path = "attention.LayerNorm"  # post-norm: a block with no heads keeps LN(x + b_o)
    reduced_attention = ReducedMPNetAttention
    head_width_attrs = ("all_head_size", "attention_head_size")
    config_head_dim = None

    def position_offset(self) -> int:
        return 2  # MPNetEmbeddings: padding_idx = 1, positions start at padding_idx + 1

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
