"""transformers BERT encoders: BertModel, BertFor*; the base of every BERT-layout family
(RoBERTa, ELECTRA subclass it and change only what differs: names, position offset).

Post-norm blocks: ``LN(x + attn_out(x))`` then ``LN(h + fc2(act(fc1(h))))``. A block that loses all
heads keeps ``LN(x + b_o)`` (the output projection bias goes through the residual and LayerNorm);
one that loses all neurons keeps ``LN(h + b_2)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Adapter
from .registry import register


class BertReducedAttention(nn.Module):
    """A BERT attention block with no heads left: ``LayerNorm(x + b_o)``."""

    def __init__(self, bias: torch.Tensor, layer_norm: nn.LayerNorm):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.LayerNorm = layer_norm

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        return self.LayerNorm(hidden_states + self.bias), None


class BertReducedOutput(nn.Module):
    """A BERT FFN output with no neurons left: ``LayerNorm(h + b_2)``."""

    def __init__(self, bias: torch.Tensor, layer_norm: nn.LayerNorm):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.LayerNorm = layer_norm

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(input_tensor + self.bias)


class BertStyleMLP:
    """The post-norm MLP layout BERT's descendants share (mixed into their adapters before
    :class:`Adapter`): ``output.LayerNorm(h + output.dense(act(intermediate.dense(h))))``; a block
    with no neurons left keeps ``LayerNorm(h + b_2)`` and its ``intermediate`` becomes a pass-through."""

    mlp_attr = "output"
    fc1_path, fc2_path = "intermediate.dense", "output.dense"
    mlp_norm_path = "output.LayerNorm"
    reduced_mlp = BertReducedOutput
    bypassed_with_mlp = ("intermediate",)
    mlp_input_path = "intermediate.dense"  # post-norm: the residual is fc1's input


@register
class BertAdapter(BertStyleMLP, Adapter):
    family = "bert"
    description = "transformers BERT (BertModel, BertForSequenceClassification)"
    modality = "text"
    model_types = ("bert",)
    ort_optimizer = "bert"
    base_attrs = ("bert",)  # where the task models keep the encoder
    blocks_path = "encoder.layer"
    heads_path = "attention.self"
    qkv_names = ("query", "key", "value")
    out_proj_path = "attention.output.dense"
    attention_norm_path = "attention.output.LayerNorm"  # post-norm: a block with no heads keeps LN(x + b_o)
    reduced_attention = BertReducedAttention
    head_width_attrs = ("all_head_size", "attention_head_size")

    def export_module(self, input_names: list[str]) -> nn.Module | None:
        """A fusion-friendly forward for export (:mod:`.bert_export`): per-layer head counts as
        constants, additive mask, so onnxruntime fuses Attention. None for models without a
        sequence-classification head (they export through transformers' forward)."""
        from .bert_export import BertExportForward

        model = self.model
        base = next((getattr(model, a) for a in ("bert", "roberta") if getattr(model, a, None) is not None), None)
        if base is None or getattr(model, "classifier", None) is None or not hasattr(base, "embeddings"):
            return None
        if getattr(model.config, "position_embedding_type", "absolute") not in (None, "absolute"):
            return None
        if set(input_names) - {"input_ids", "attention_mask", "token_type_ids"}:
            return None
        return BertExportForward(model, base, self.heads_per_layer(), self.head_dim(), BertReducedAttention, BertReducedOutput,
                                 self.position_offset() > 0, input_names).eval()  # RoBERTa layout: positions after padding_idx
