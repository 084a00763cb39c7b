"""transformers BERT encoders: BertModel, BertFor*; the base of every BERT-layout family
(RoBERTa, ELECTRA subclass it and change only what differs: names, position offset).

Post-norm blocks: ``LN(x + attn_out(x))`` then ``LN(h + fc2(act(fc1(h))))``. A block that loses all
heads keeps ``LN(x + b_o)`` (the output projection bias goes through the residual and LayerNorm);
one that loses all neurons keeps ``LN(h + b_2)``.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Adapter, LayerParts
from .registry import register


class BertReducedAttention(nn.Module):
    """A BERT attention block with no heads left: ``LayerNorm(x + b_o)``."""

    def __init__(self, bias: torch.Tensor, layer_norm: nn.LayerNorm):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.LayerNorm = layer_norm

    def forward(self, hidden_states, attention_mask=None, *args, **kwargs):
        return self.LayerNorm(hidden_states + self.bias), None


class PassThrough(nn.Module):
    """Stands in for ``intermediate`` when the MLP has no neurons: hands its input on unchanged."""

    def forward(self, hidden_states):
        return hidden_states


class BertReducedOutput(nn.Module):
    """A BERT FFN output with no neurons left: ``LayerNorm(h + b_2)``."""

    def __init__(self, bias: torch.Tensor, layer_norm: nn.LayerNorm):
        super().__init__()
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.LayerNorm = layer_norm

    def forward(self, hidden_states, input_tensor):
        return self.LayerNorm(input_tensor + self.bias)


@register
class BertAdapter(Adapter):
    family = "bert"
    description = "transformers BERT (BertModel, BertForSequenceClassification)"
    modality = "text"
    model_types = ("bert",)
    base_attrs: tuple[str, ...] = ("bert",)  # where the encoder sits in the task models
    ort_optimizer = "bert"

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        return cls.supports_config(getattr(model, "config", None)) and cls._encoder(model) is not None

    @classmethod
    def _encoder(cls, model):
        for attr in cls.base_attrs:
            base = getattr(model, attr, None)
            if base is not None:
                return base.encoder
        return getattr(model, "encoder", None)

    def blocks(self):
        return self._encoder(self.model).layer

    def layer_parts(self, layer: int) -> LayerParts:
        blk = self.blocks()[layer]
        att = blk.attention
        has_attn = not isinstance(att, BertReducedAttention)
        has_mlp = not isinstance(blk.output, BertReducedOutput)
        return LayerParts(
            block=blk,
            attn=att.self if has_attn else None,
            out_proj=att.output.dense if has_attn else None,
            q=att.self.query if has_attn else None,
            k=att.self.key if has_attn else None,
            v=att.self.value if has_attn else None,
            fc1=blk.intermediate.dense if has_mlp else None,
            fc2=blk.output.dense if has_mlp else None,
        )

    def num_heads(self, layer: int) -> int:
        att = self.blocks()[layer].attention
        return 0 if isinstance(att, BertReducedAttention) else att.self.num_attention_heads

    def head_dim(self) -> int:
        cfg = self.model.config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    def set_num_heads(self, layer: int, n: int) -> None:
        s = self.blocks()[layer].attention.self
        s.num_attention_heads = n
        s.all_head_size = n * s.attention_head_size

    def reduce_attention(self, layer: int) -> None:
        blk = self.blocks()[layer]
        out = blk.attention.output
        blk.attention = BertReducedAttention(out.dense.bias, out.LayerNorm)

    def reduce_mlp(self, layer: int) -> None:
        blk = self.blocks()[layer]
        blk.intermediate = PassThrough()
        blk.output = BertReducedOutput(blk.output.dense.bias, blk.output.LayerNorm)

    def mlp_residual(self, layer: int) -> nn.Module:
        # post-norm: LN(h + fc2(act(fc1(h)))), so the residual is fc1's input
        blk = self.blocks()[layer]
        return blk.intermediate.dense if not isinstance(blk.output, BertReducedOutput) else blk.output

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
