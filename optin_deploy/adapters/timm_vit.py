"""timm VisionTransformer / DeiT (``timm.models.vision_transformer``), timm >= 1.0.24.

Pre-norm blocks with a fused ``qkv`` projection whose rows are ``[q; k; v]``, each ``num_heads x
head_dim``. After slicing, ``num_heads`` and ``attn_dim`` are set on the attention module. A block
that loses all heads keeps ``x + b_proj``; one that loses all neurons keeps ``h + b_fc2``.

timm rebuilds a pruned model bare, without the ``pretrained_cfg`` that ``timm.create_model`` gives
(input size, mean, std): :meth:`TimmViTAdapter.structure` saves it and ``build_from_structure`` puts it back.

A pruned model is rebuilt from its structure: ``timm.create_model(ARCH)`` of the architecture it was
created as (its ``pretrained_cfg``), which brings everything the architecture sets besides the sizes
(LayerScale, RMSNorm, QuickGELU, post-norm blocks, a distillation token, a latent-attention pool), with
the recorded sizes and flags on top; a model without a timm architecture name is rebuilt as a plain
``VisionTransformer`` from those flags. What neither reproduces (an activation, norm or block passed to
timm by hand) would reload as another function, so :meth:`TimmViTAdapter.check_rebuild` compares the
rebuilt module tree (types, settings, tensor shapes) with the model's when it is loaded and again when it
is saved, and refuses a difference in one line. Blocks other than attention ``attn.qkv`` / ``attn.proj``
plus an MLP ``mlp.fc1`` / ``mlp.fc2`` (timm's parallel blocks, gated / SwiGLU MLPs, a norm inside the MLP)
are refused when the adapter is made.
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
            _check_block_layout(blk)
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
        spec = self._structure()
        self.check_rebuild("the pruned model", spec)  # a folder that would reload as another function is never written
        return spec

    def _structure(self) -> dict:
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
            "mlp_ratio": (self._mlp_width(neurons) + 0.5) / m.embed_dim,  # int(embed * ratio) == widest MLP
            "qkv_bias": bool(first_attn is None or first_attn.qkv.bias is not None),
            "proj_bias": bool(first_attn is None or first_attn.proj.bias is not None),
            "qk_norm": any(not isinstance(getattr(b.attn, "q_norm", nn.Identity()), nn.Identity) for b in m.blocks),
            "init_values": self._layer_scale_init(),  # LayerScale's gamma is loaded; its init only decides that it exists
            "final_norm": not isinstance(m.norm, nn.Identity) or not isinstance(m.fc_norm, nn.Identity),
            "pool_include_prefix": bool(getattr(m, "pool_include_prefix", False)),
            "dynamic_img_size": bool(getattr(m, "dynamic_img_size", False)),
            "class_token": m.cls_token is not None,
            "reg_tokens": getattr(m, "num_reg_tokens", 0),
            "no_embed_class": m.no_embed_class,
            "pre_norm": not isinstance(m.norm_pre, nn.Identity),
            "fc_norm": not isinstance(m.fc_norm, nn.Identity),
        }
        return {"family": self.family, "timm_kwargs": kwargs, "pretrained_cfg": self.preprocessing_cfg(), **self.kept_structure()}

    def _layer_scale_init(self) -> float | None:
        ls = next((ls for b in self.model.blocks for ls in (getattr(b, "ls1", None), getattr(b, "ls2", None))
                   if isinstance(getattr(ls, "gamma", None), torch.Tensor)), None)
        return None if ls is None else float(getattr(ls, "init_values", 1.0) or 1.0)

    def _mlp_width(self, neurons: list[int]) -> int:
        """The MLP width the rebuilt model is made with (every layer is then cut to its count): the widest kept
        MLP, or the latent-attention pool's (``global_pool='map'``), whose MLP timm sizes with the blocks' ratio
        and which pruning never cuts."""
        pool = getattr(getattr(self.model, "attn_pool", None), "mlp", None)
        pool_width = getattr(getattr(pool, "fc1", None), "out_features", 0) or 0
        return max(max(neurons, default=0), pool_width, 1)

    def check_layout(self, what: str = "the model") -> None:
        super().check_layout(what)
        self.check_rebuild(what)

    def check_rebuild(self, what: str = "the model", spec: dict | None = None) -> None:
        """Refuse a model that its structure would rebuild as another function: the model rebuilt (on the meta
        device, no weights) from :meth:`structure` must have the same modules, settings and tensor shapes."""
        from ..pruned_io import build_from_spec

        spec = spec if spec is not None else self._structure()
        try:
            with torch.device("meta"):
                rebuilt = build_from_spec(spec)
            diff = _first_difference(_signature(self.model), _signature(rebuilt))
        except OptinError:
            raise
        except Exception as exc:  # noqa: BLE001 - timm refused the recorded arguments
            diff = f"timm cannot rebuild it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        if diff:
            arch = (spec.get("pretrained_cfg") or {}).get("architecture")
            raise OptinError(
                f"{what}: this timm {type(self.model).__name__}{f' ({arch})' if arch else ''} cannot be saved pruned and "
                f"reloaded as the same function: rebuilt from what optin-deploy records, {diff}; optin-deploy supports "
                f"timm ViTs as timm.create_model(NAME) makes them (load them as timm:NAME@CHECKPOINT), without layers "
                f"passed by hand (act_layer, norm_layer, block_fn, mlp_layer)")

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
        pcfg = spec.get("pretrained_cfg") or _architecture_cfg(spec)
        arch = (pcfg or {}).get("architecture")
        import timm

        # the architecture's own layers (LayerScale, norms, activations, block type), the recorded sizes on top
        model = timm.create_model(arch, pretrained=False, **kw) if isinstance(arch, str) and timm.is_model(arch) else vt(**kw)
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


#: modules that compute the identity at inference (a model fine-tuned with dropout / stochastic depth has them)
_INFERENCE_IDENTITY = ("Identity", "Dropout", "DropPath")


def _check_block_layout(blk: nn.Module) -> None:
    """Refuse a block this adapter cannot prune: it must be an attention ``attn`` with a fused ``qkv`` and a
    ``proj`` (or its reduced form) and an MLP ``mlp`` whose ``fc1`` rows are ``fc2``'s columns, with nothing
    normalising across the neurons (or its reduced form)."""
    from .base import BiasOnly

    att, mlp = getattr(blk, "attn", None), getattr(blk, "mlp", None)
    att_ok = isinstance(att, ReducedTimmAttention) or (isinstance(getattr(att, "qkv", None), nn.Linear)
                                                       and isinstance(getattr(att, "proj", None), nn.Linear))
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    mlp_ok = isinstance(mlp, BiasOnly) or (
        isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear) and fc1.out_features == fc2.in_features
        and not hasattr(mlp, "fc1_g") and isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity))
    if att_ok and mlp_ok:
        return
    if not att_ok or mlp is None:
        what = f"{type(blk).__name__} blocks"
    elif not isinstance(getattr(mlp, "norm", nn.Identity()), nn.Identity):
        what = f"a norm inside the MLP ({type(mlp).__name__}.norm, across its neurons)"
    else:
        what = f"a {type(mlp).__name__} MLP (gated, or not fc1 -> act -> fc2)"
    raise OptinError(f"timm ViTs with {what} are not supported: optin-deploy prunes blocks of an attention (attn.qkv, attn.proj) "
                     f"and a plain MLP (mlp.fc1, mlp.fc2); use a standard ViT/DeiT")


def _plain(v) -> bool:
    if isinstance(v, (tuple, list)):
        return all(_plain(x) for x in v)
    return v is None or isinstance(v, (bool, int, float, str))


def _signature(model: nn.Module) -> dict:
    """What decides the function a model computes besides its weights' values: every module's type and plain
    settings (``eps``, ``approximate``, head counts, pooling...), and every tensor's shape."""
    sig = {}
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if kind in _INFERENCE_IDENTITY:
            sig[f"module {name or 'model'}"] = "Identity"
            continue
        attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(mod).items()
                 if not k.startswith("_") and k not in ("training", "pretrained_cfg", "default_cfg") and _plain(v)}
        sig[f"module {name or 'model'}"] = f"{kind}({', '.join(f'{k}={v!r}' for k, v in sorted(attrs.items()))})"
    for name, t in model.state_dict().items():
        sig[f"tensor {name}"] = f"shape {list(t.shape)}"
    return sig


def _first_difference(have: dict, rebuilt: dict) -> str | None:
    for key, value in have.items():
        if key not in rebuilt:
            return f"it has no {key} (here: {value})"
        if rebuilt[key] != value:
            return f"its {key} is {rebuilt[key]} where the model has {value}"
    extra = next((k for k in rebuilt if k not in have), None)
    return f"it has a {extra} ({rebuilt[extra]}) the model lacks" if extra else None
