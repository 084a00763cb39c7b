"""transformers ViT and DeiT (ViTModel, ViTForImageClassification, DeiTForImageClassification...).

Pre-norm blocks: ``x + attn(LN(x))`` then ``h + mlp(LN(h))``. A block that loses all heads keeps
``x + b_o``; one that loses all neurons keeps ``h + b_2``.
"""

from __future__ import annotations

import torch

from .base import Adapter
from .registry import register


@register
class HFViTAdapter(Adapter):
    family = "hf_vit"
    description = "transformers ViT / DeiT (ViTForImageClassification, DeiTForImageClassification, ViTModel...)"
    modality = "image"
    model_types = ("vit", "deit")
    ort_optimizer = "vit"
    base_attrs = ("vit", "deit")
    blocks_path = "layers"  # q_proj / k_proj / v_proj / o_proj under .attention, fc1 / fc2 under .mlp (the defaults)
    mlp_input_path = "layernorm_after"  # pre-norm: x + mlp(layernorm_after(x))

    def forward(self, inputs):
        return self.model(pixel_values=inputs["pixel_values"])

    def export_module(self, input_names: list[str]):
        """The classifier's own forward, exported with the TorchScript exporter and fused by onnxruntime's ViT
        optimizer (the ``fused`` graph). transformers' ViT reshapes with the layer's own head count (a constant per
        pruned layer), so nothing needs rewriting; the TorchScript exporter traces it in about 0.1 s where
        ``torch.onnx.export(dynamo=True)`` takes about 2 s, paid by every export and every candidate of a budget
        search. None for a model without a classification head (exported through ``dynamo``)."""
        from ..model_io import LogitsModel

        if list(input_names) != ["pixel_values"] or getattr(self.model, "classifier", None) is None:
            return None
        return LogitsModel(self.model, input_names).eval()

    def seq_len(self, inputs) -> int:
        cfg = self.model.config
        n = (cfg.image_size // cfg.patch_size) ** 2
        return n + (2 if cfg.model_type == "deit" else 1)

    def token_mask(self, inputs) -> torch.Tensor:
        return torch.ones(inputs["pixel_values"].shape[0], self.seq_len(inputs), dtype=torch.bool)
