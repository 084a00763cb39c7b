"""timm VisionTransformer / DeiT (``timm.models.vision_transformer``), timm >= 1.0.24.

Pre-norm blocks with a fused ``qkv`` projection whose rows are ``[q; k; v]``, each ``num_heads x
head_dim``. After slicing, ``num_heads`` and ``attn_dim`` are set on the attention module. A block
that loses all heads keeps ``x + b_proj``; one that loses all neurons keeps ``h + b_fc2``.

timm rebuilds a pruned model bare, without the ``pretrained_cfg`` that ``timm.create_model`` gives
(input size, mean, std): :meth:`TimmViTAdapter.structure` saves it and ``build_from_structure`` puts it back.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import OptinError
from .base import Adapter, ReducedAttention
from .registry import register


class ReducedTimmAttention(ReducedAttention):
    """A timm attention with no heads left: returns the output projection bias, broadcast."""

    def forward(self, x, attn_mask=None, is_causal=False):
        return self.proj(x)


# the keys of timm's ``pretrained_cfg`` that say how an image is prepared for the model (what
# ``timm.data.resolve_data_config`` reads, and ``models.preprocessing``: input size, mean, std)
PREPROCESSING_KEYS = ("architecture", "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def _json_value(v):
    return [_json_value(x) for x in v] if isinstance(v, (tuple, list)) else v


def _timm_value(v):
    return tuple(_timm_value(x) for x in v) if isinstance(v, list) else v


def _vision_transformer_cls():
    try:
        from timm.models.vision_transformer import VisionTransformer
    except ImportError:  # timm is an optional extra
        return None
    return VisionTransformer


@register
class TimmViTAdapter(Adapter):
    family = "timm_vit"
    description = "timm VisionTransformer / DeiT (timm.models.vision_transformer)"
    modality = "image"
    ort_optimizer = "vit"
    rebuild_from_indices = False  # build_from_structure makes the MLPs only as wide as the widest kept one
    blocks_path = "blocks"
    attention_attr = heads_path = "attn"
    qkv_names = ("qkv",)  # fused, rows [q; k; v]
    out_proj_path = "attn.proj"
    reduced_attention = ReducedTimmAttention
    mlp_input_path = "norm2"  # pre-norm: x + mlp(norm2(x))
    head_count_attr = "num_heads"
    head_width_attrs = ("attn_dim", "head_dim")

    def __init__(self, model):
        super().__init__(model)
        for blk in model.blocks:
            att = blk.attn
            if not isinstance(att, ReducedTimmAttention) and not isinstance(getattr(att, "norm", nn.Identity()), nn.Identity):
                raise OptinError("timm ViTs with a scale-norm inside attention are not supported; use a standard ViT/DeiT")
            if not hasattr(att, "attn_dim") and not isinstance(att, ReducedTimmAttention):
                raise OptinError("this timm version reshapes attention by embedding width; upgrade to timm>=1.0.24")

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        vt = _vision_transformer_cls()
        return vt is not None and isinstance(model, vt)

    def head_dim(self) -> int:
        # a reduced attention keeps the head size it had (reduce_attention), so a model whose every block lost its heads,
        # reloaded from a pruned folder, still knows it
        return next((blk.attn.head_dim for blk in self.blocks() if hasattr(blk.attn, "head_dim")), None) or self._head_dim

    def hidden_size(self) -> int:
        return self.model.embed_dim

    def reduce_attention(self, layer: int) -> None:
        self._head_dim = self.blocks()[layer].attn.head_dim  # head_dim() once every block may be reduced
        super().reduce_attention(layer)
        self.blocks()[layer].attn.head_dim = self._head_dim  # kept on the model: a later adapter of it needs it too

    def forward(self, inputs):
        return self.model(inputs["pixel_values"])

    def image_shape(self) -> tuple[int, int, int]:
        pe = self.model.patch_embed
        h, w = pe.img_size
        return int(getattr(getattr(pe, "proj", None), "in_channels", 3)), int(h), int(w)

    def seq_len(self, inputs) -> int:
        return self.model.patch_embed.num_patches + self.model.num_prefix_tokens

    def branch_scale(self, layer: int, part: str) -> torch.Tensor | None:
        ls = getattr(self.blocks()[layer], "ls1" if part == "attn" else "ls2", None)
        gamma = getattr(ls, "gamma", None)
        return gamma.detach() if isinstance(gamma, torch.Tensor) else None

    def token_mask(self, inputs) -> torch.Tensor:
        return torch.ones(inputs["pixel_values"].shape[0], self.seq_len(inputs), dtype=torch.bool)

    def structure(self) -> dict:
        m = self.model
        heads, neurons = self.heads_per_layer(), self.neurons_per_layer()
        first_attn = next((b.attn for b in m.blocks if not isinstance(b.attn, ReducedTimmAttention)), None)
        kwargs = {
            "img_size": list(m.patch_embed.img_size),
            "patch_size": list(m.patch_embed.patch_size),
            "in_chans": m.patch_embed.proj.in_channels,
            "num_classes": m.num_classes,
            "global_pool": m.global_pool,
            "embed_dim": m.embed_dim,
            "depth": len(m.blocks),
            "num_heads": m.embed_dim // self.head_dim(),
            "mlp_ratio": (max(max(neurons), 1) + 0.5) / m.embed_dim,  # int(embed * ratio) == widest MLP
            "qkv_bias": bool(first_attn is None or first_attn.qkv.bias is not None),
            "class_token": m.cls_token is not None,
            "reg_tokens": getattr(m, "num_reg_tokens", 0),
            "no_embed_class": m.no_embed_class,
            "pre_norm": not isinstance(m.norm_pre, nn.Identity),
            "fc_norm": not isinstance(m.fc_norm, nn.Identity),
        }
        return {"family": self.family, "timm_kwargs": kwargs, "pretrained_cfg": self.preprocessing_cfg(), **self.kept_structure()}

    def preprocessing_cfg(self) -> dict:
        """How images are prepared for this model, as timm's ``pretrained_cfg`` keys (JSON lists for tuples):
        the model's own ``pretrained_cfg`` (``timm.create_model`` sets it), else the input size of its patch
        embedding with timm's VisionTransformer defaults (mean and std 0.5). Saved in the structure so that a
        pruned model, which timm rebuilds bare, is fed what the dense model was (like transformers' image
        models, whose config and ``preprocessor_config.json`` travel with the pruned folder)."""
        pcfg = getattr(self.model, "pretrained_cfg", None) or getattr(self.model, "default_cfg", None) or {}
        if not isinstance(pcfg, dict):  # a timm PretrainedCfg dataclass
            pcfg = pcfg.to_dict() if hasattr(pcfg, "to_dict") else {}
        c, h, w = self.image_shape()
        out = {"input_size": [c, h, w], "mean": [0.5] * c, "std": [0.5] * c}
        out.update({k: _json_value(pcfg[k]) for k in PREPROCESSING_KEYS if pcfg.get(k) is not None})
        return out

    @classmethod
    def build_from_structure(cls, spec: dict) -> nn.Module:
        vt = _vision_transformer_cls()
        if vt is None:
            raise OptinError("this pruned model is a timm ViT but timm is not installed: pip install 'optin-deploy[timm]'")
        kw = dict(spec["timm_kwargs"])
        kw["img_size"], kw["patch_size"] = tuple(kw["img_size"]), tuple(kw["patch_size"])
        model = vt(**kw)
        pcfg = spec.get("pretrained_cfg") or _architecture_cfg(spec)
        if pcfg:  # what timm.create_model would have set: models.preprocessing reads it (input size, mean, std)
            model.pretrained_cfg = model.default_cfg = {k: _timm_value(v) for k, v in pcfg.items()}
        return model


def _architecture_cfg(spec: dict) -> dict | None:
    """For a structure written before the preprocessing was saved: timm's default ``pretrained_cfg`` of the
    architecture the model was loaded as (``timm:ARCH@FILE``, recorded as the source), which is what
    ``timm.create_model(ARCH)`` gave the dense model; None when that is not known."""
    source = str((spec.get("extra") or {}).get("source") or "")
    if not source.startswith("timm:"):
        return None
    arch = source[len("timm:"):].split("@", 1)[0]
    try:
        import timm

        cfg = timm.models.get_pretrained_cfg(arch) if timm.is_model(arch) else None
    except Exception:  # noqa: BLE001 - an unknown or renamed architecture: nothing to restore
        return None
    cfg = cfg.to_dict() if cfg is not None and hasattr(cfg, "to_dict") else cfg
    return {k: cfg[k] for k in PREPROCESSING_KEYS if cfg.get(k) is not None} if cfg else None
