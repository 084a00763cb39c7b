"""A fusion-friendly forward of a (pruned) BERT / RoBERTa sequence classifier, for export only.

transformers' own forward exports (``torch.onnx.export(dynamo=True)``) to a graph in which
onnxruntime's transformer optimizer fuses no ``Attention``: the reshapes use ``-1`` heads and the
softmax carries a NaN guard, so no head count can be read off the graph. This module computes the
same logits from the same parameters (it holds references, no copies) in the layout onnxruntime's
BERT fusions recognise:

* q / k / v reshaped to ``(B, T, h, dh)`` with the layer's head count ``h`` a constant (pruned
  layers differ), K permuted to ``(0, 2, 3, 1)``, scores divided by ``sqrt(dh)``;
* the padding mask as an additive ``(1 - mask) * -10000`` term;
* exact (erf) GELU, LayerNorm with the model's eps;
* a layer that lost every head keeps ``LayerNorm(x + b_o)``, one that lost every neuron
  ``LayerNorm(h + b_2)`` (the adapter's reduced modules).

Position ids follow the family: ``arange(T)`` for BERT, ``cumsum(ids != pad) * (ids != pad) + pad``
for RoBERTa. Parity with transformers' forward is checked by the exporter like any export.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _Layer(nn.Module):
    def __init__(self, blk: nn.Module, heads: int, head_dim: int, reduced_attn: type, reduced_out: type):
        super().__init__()
        self.heads, self.head_dim = int(heads), int(head_dim)
        att = blk.attention
        self.has_attn = not isinstance(att, reduced_attn) and self.heads > 0
        if self.has_attn:
            self.q, self.k, self.v = att.self.query, att.self.key, att.self.value
            self.o = att.output.dense
            self.ln1 = att.output.LayerNorm
        else:
            self.b_o = att.bias
            self.ln1 = att.LayerNorm
        self.has_mlp = not isinstance(blk.output, reduced_out)
        if self.has_mlp:
            self.fc1, self.fc2 = blk.intermediate.dense, blk.output.dense
            act = getattr(blk.intermediate, "intermediate_act_fn", None)
            self.act = act if act is not None else nn.GELU()
        else:
            self.b_2 = blk.output.bias
        self.ln2 = blk.output.LayerNorm
        self.scale = math.sqrt(self.head_dim)

    def forward(self, x: torch.Tensor, ext_mask: torch.Tensor) -> torch.Tensor:
        if self.has_attn:
            B, T = x.size(0), x.size(1)
            h, dh = self.heads, self.head_dim
            q = self.q(x).view(B, T, h, dh).permute(0, 2, 1, 3)
            k = self.k(x).view(B, T, h, dh).permute(0, 2, 3, 1)
            v = self.v(x).view(B, T, h, dh).permute(0, 2, 1, 3)
            s = torch.matmul(q, k) / self.scale + ext_mask
            p = torch.softmax(s, dim=-1)
            c = torch.matmul(p, v).permute(0, 2, 1, 3).reshape(B, T, h * dh)
            x = self.ln1(self.o(c) + x)
        else:
            x = self.ln1(x + self.b_o)
        if self.has_mlp:
            x = self.ln2(self.fc2(self.act(self.fc1(x))) + x)
        else:
            x = self.ln2(x + self.b_2)
        return x


class BertExportForward(nn.Module):
    """``forward(input_ids, attention_mask[, token_type_ids]) -> logits`` of a BERT/RoBERTa classifier."""

    def __init__(self, model: nn.Module, base: nn.Module, heads: list[int], head_dim: int, reduced_attn: type, reduced_out: type,
                 roberta: bool, input_names: list[str]):
        super().__init__()
        emb = base.embeddings
        self.word, self.pos, self.ln_emb = emb.word_embeddings, emb.position_embeddings, emb.LayerNorm
        self.tok = getattr(emb, "token_type_embeddings", None)
        self.roberta = roberta
        pad = getattr(emb, "padding_idx", None)  # 0 is a valid padding id (a config with pad_token_id = 0)
        self.pad = (1 if pad is None else int(pad)) if roberta else 0
        self.layers = nn.ModuleList(_Layer(b, h, head_dim, reduced_attn, reduced_out) for b, h in zip(base.encoder.layer, heads))
        self.input_names = list(input_names)
        cls = model.classifier
        if hasattr(cls, "out_proj"):  # RobertaClassificationHead: dense -> tanh -> out_proj on <s>
            self.head_dense, self.head_out, self.pooler = cls.dense, cls.out_proj, None
        else:  # BERT: pooler (dense + tanh on [CLS]) -> classifier
            pooler = getattr(base, "pooler", None)
            self.pooler = pooler.dense if pooler is not None else None
            self.head_dense, self.head_out = None, cls

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs))
        ids = named["input_ids"]
        mask = named.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(ids)
        T = ids.size(1)
        if self.roberta:
            nonpad = (ids != self.pad).to(torch.int64)
            pos = torch.cumsum(nonpad, dim=1) * nonpad + self.pad
        else:
            pos = torch.arange(T, device=ids.device).unsqueeze(0)
        x = self.word(ids) + self.pos(pos)
        if self.tok is not None:
            tt = named.get("token_type_ids")
            x = x + (self.tok(tt) if tt is not None else self.tok.weight[0])
        x = self.ln_emb(x)
        ext = (1.0 - mask.unsqueeze(1).unsqueeze(2).to(x.dtype)) * -10000.0  # the layout onnxruntime's mask matcher reads
        for layer in self.layers:
            x = layer(x, ext)
        first = x[:, 0]
        if self.head_dense is not None:
            return self.head_out(torch.tanh(self.head_dense(first)))
        if self.pooler is not None:
            first = torch.tanh(self.pooler(first))
        return self.head_out(first)
