"""DistilBERT (``DistilBertModel``, ``DistilBertForSequenceClassification``).

Post-norm blocks: ``h = sa_layer_norm(x + out_lin(attn(q_lin, k_lin, v_lin)))`` then
``output_layer_norm(h + ffn.lin2(act(ffn.lin1(h))))``. Attention reshapes with ``-1`` heads, so
per-layer head counts can differ after slicing. A block that loses all heads keeps
``sa_layer_norm(x + b_out)``; one that loses all neurons keeps ``output_layer_norm(h + b_lin2)``.
DistilBERT takes no ``token_type_ids``; its task models keep the encoder under ``.distilbert`` and
the blocks under ``.transformer.layer``.
"""

from __future__ import annotations

from .base import Adapter
from .registry import register


@register
class DistilBertAdapter(Adapter):
    family = "distilbert"
    description = "transformers DistilBERT (DistilBertModel, DistilBertForSequenceClassification)"
    modality = "text"
    model_types = ("distilbert",)
    sequence_inputs = ("input_ids", "attention_mask")
    ort_optimizer = "bert"
    base_attrs = ("distilbert",)
    blocks_path = "transformer.layer"
    qkv_names = ("q_lin", "k_lin", "v_lin")
    out_proj_path = "attention.out_lin"  # no heads left: sa_layer_norm(x + b_out) (ReducedAttention returns b_out)
    mlp_attr = "ffn"  # no neurons left: output_layer_norm(h + b_lin2) (BiasOnly returns b_lin2)
    fc1_path, fc2_path = "ffn.lin1", "ffn.lin2"
    mlp_input_path = "ffn"  # post-norm: output_layer_norm(h + ffn(h)), so the residual is the FFN's input
    head_count_attr = "n_heads"
    config_hidden_size, config_num_heads, config_head_dim = "dim", "n_heads", None
