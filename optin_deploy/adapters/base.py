"""What the core needs to know about one family of transformer.

An adapter describes, for each transformer block, where its prunable units live:

* heads: the query/key/value projections (separate ``Linear``s, or one fused ``qkv`` ``Linear``
  with the q, k and v blocks stacked along the output rows) and the attention output projection
  whose input columns are grouped by head;
* FFN neurons: the first MLP ``Linear`` (rows) and the second (columns); in a gated MLP
  (SwiGLU: ``fc2(act(fc1 x) * up x)``) one neuron is a row of ``fc1`` and the same row of ``up``.

Sizes may differ from layer to layer (hierarchical models such as Swin change the hidden size,
head size and token count from stage to stage, and window attention lets a query see only its
window). The per-layer methods (``layer_hidden_size``, ``layer_head_dim``, ``layer_tokens``,
``attention_tokens``, ``attention_span``, ``layer_token_mask``) default to the single-size ones, so a
family with equal layers implements only ``hidden_size`` / ``head_dim`` / ``seq_len`` / ``token_mask``.

A family describes its layout as data, in class attributes (the way Hugging Face Optimum's
exporters describe each architecture): where the task models keep the base model and where its
blocks are, the paths inside a block of the attention / MLP, the q/k/v (or fused qkv), output and
MLP linears, the modules a removed part becomes (its ``Reduced*`` classes), the attribute holding the
head count and the config fields giving the sizes. From that the generic machinery here finds the
parts of every block, counts and sets heads, masks units (hooks on the *inputs* of the output
projection and of the second MLP linear, i.e. exactly the head outputs and post-activation neurons),
counts their cost, slices the weights and reduces a part that lost every unit. A family overrides a
method only where its layout really differs (ModernBERT's fused ``Wqkv`` with no head-count
attribute and gated ``Wi``, Swin's staged window attention, DINOv2's layer scale), plus what is not
layout: inputs, logits, and how the model is rebuilt from a saved structure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..errors import OptinError


@dataclass
class LayerParts:
    """The prunable pieces of one transformer block."""

    block: nn.Module
    attn: nn.Module  # the module holding the head-count attributes
    out_proj: nn.Linear
    fc1: nn.Linear
    fc2: nn.Linear
    q: nn.Linear | None = None
    k: nn.Linear | None = None
    v: nn.Linear | None = None
    qkv: nn.Linear | None = None  # fused: rows [q; k; v]
    up: nn.Linear | None = None  # gated MLP: second first-layer linear, same neuron rows as fc1


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new ``Linear`` keeping ``index`` along ``dim`` (0: output rows, 1: input columns)."""
    index = index.to(linear.weight.device)
    w = linear.weight.index_select(dim, index).detach().clone()
    b = None
    if linear.bias is not None:
        b = (linear.bias.index_select(0, index) if dim == 0 else linear.bias).detach().clone()
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    new.weight.requires_grad_(linear.weight.requires_grad)
    return new


def module_at(root: Any, path: str) -> Any:
    """The attribute at dotted ``path`` under ``root`` (``""``: ``root`` itself), or None where a step is missing."""
    for name in path.split(".") if path else ():
        root = getattr(root, name, None)
        if root is None:
            return None
    return root


def _set_child(root: nn.Module, child: nn.Module, new: nn.Module) -> None:
    for name, mod in root.named_modules():
        for cname, c in mod.named_children():
            if c is child:
                setattr(mod, cname, new)
                return
    raise KeyError("module not found under root")


TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the tokenizer conventions text families draw from
TEXT_PAIR_FLAG = "optin_text_pair"  # set in a model's config when its task is sentence pairs (saved with a pruned model)


def mark_text_pair(model) -> None:
    """Record in ``model.config`` that its inputs are sentence pairs, so that the segment ids become a
    model input (exported, fed, saved with the pruned model's config)."""
    cfg = getattr(model, "config", None)
    if cfg is not None:
        setattr(cfg, TEXT_PAIR_FLAG, True)

# what example inputs are tokenised from when a model has a tokenizer but no task (exports and benchmarks of bare folders)
SAMPLE_TEXTS = [
    "A gripping, beautifully shot film that never loses its nerve.",
    "Tedious and overlong; the jokes land with a thud.",
    "The performances are strong, but the script is a mess.",
    "An instant classic.",
    "I wanted to like it more than I did, yet the final act is genuinely moving and the score soars.",
    "Flat characters, predictable twists and a soundtrack that won't quit.",
    "Funny, warm and surprisingly sharp about growing older.",
    "Not worth the price of the ticket.",
]


class BiasOnly(nn.Module):
    """What is left of a projection whose every input unit was removed: its bias, broadcast.

    Exports as an ``Expand`` of a constant, never as a zero-width matmul.
    """

    def __init__(self, bias: torch.Tensor | None, width: int):
        super().__init__()
        b = bias.detach().clone() if bias is not None else torch.zeros(width)
        self.bias = nn.Parameter(b, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(*x.shape[:-1], self.bias.shape[0])


class ReducedAttention(nn.Module):
    """An attention with no heads left: its output projection's bias (zeros without one), broadcast,
    and no attention weights; the block adds the residual (pre-norm families: ``x + b_o``)."""

    def __init__(self, bias: torch.Tensor | None, width: int):
        super().__init__()
        self.proj = BiasOnly(bias, width)

    def forward(self, hidden_states, *args, **kwargs):
        return self.proj(hidden_states), None


class Adapter:
    """Base class: the generic part of every family.

    Besides the block layout, an adapter owns everything else the tool must know about its family:
    the inputs the model takes (:meth:`input_names`, :attr:`sequence_inputs`), the usable maximum
    sequence length (:meth:`max_positions`), how inputs are made (:meth:`encode`,
    :meth:`example_inputs`, :meth:`random_inputs`), how logits are read (:meth:`logits`), which
    config ``model_type`` values it accepts before any weight is loaded (:attr:`model_types`), and
    how the model is rebuilt from a saved structure (:meth:`structure`, :meth:`build_from_structure`).
    """

    family: ClassVar[str] = ""
    description: ClassVar[str] = ""
    modality: ClassVar[str] = "text"
    model_types: ClassVar[tuple[str, ...]] = ()  # transformers config.model_type values this adapter takes
    sequence_inputs: ClassVar[tuple[str, ...]] = TEXT_INPUTS  # inputs with a (dynamic) sequence axis
    ort_optimizer: ClassVar[str | None] = None  # onnxruntime.transformers optimizer kind ("bert", "vit"), if any
    # build_from_structure gives the dense architecture, cut down by the saved kept indices; False:
    # it already has the widest kept sizes, and layers are cut to the saved counts
    rebuild_from_indices: ClassVar[bool] = True
    # what the model's forward pass ends in: "logits" (a task head; OPTIN's output term is the KL of the
    # logits) or "embedding" (a pooled sentence vector, adapters/embedding.py; the output term is 1 - cosine)
    output_kind: ClassVar[str] = "logits"

    # ----- the block layout, as data (dotted attribute paths) ---------------------------------
    base_attrs: ClassVar[tuple[str, ...]] = ()  # where task models keep the base model (first present; else the model itself)
    blocks_path: ClassVar[str] = ""  # from the base model to its list of blocks
    attention_attr: ClassVar[str] = "attention"  # a block's attention: becomes reduced_attention when every head goes
    heads_path: ClassVar[str] = "attention"  # in a block: the module holding the head count and the q/k/v linears
    qkv_names: ClassVar[tuple[str, ...]] = ("q_proj", "k_proj", "v_proj")  # in heads_path: q, k, v; or one fused [q; k; v]
    out_proj_path: ClassVar[str] = "attention.o_proj"  # in a block: the attention's output projection
    mlp_attr: ClassVar[str] = "mlp"  # a block's MLP (post-norm: its output part): becomes reduced_mlp when every neuron goes
    fc1_path: ClassVar[str] = "mlp.fc1"  # in a block: the first MLP linear (a neuron is a row)
    fc2_path: ClassVar[str] = "mlp.fc2"  # in a block: the second MLP linear (a neuron is a column)
    mlp_input_path: ClassVar[str] = "layernorm_after"  # in a block: the module whose first input is the MLP's residual
    fused_gate: ClassVar[bool] = False  # fc1 holds the input rows, then the gate rows (a neuron: rows j and I + j)
    # what a removed part becomes: built as cls(bias, layer_norm) when the *_norm_path is set (post-norm
    # blocks keep LayerNorm(x + b)), else cls(bias, width); the bias is the part's output projection's
    reduced_attention: ClassVar[type] = ReducedAttention
    reduced_mlp: ClassVar[type] = BiasOnly
    attention_norm_path: ClassVar[str | None] = None
    mlp_norm_path: ClassVar[str | None] = None
    # block attributes that become an nn.Identity with the removed part (BERT's intermediate, a pre-norm)
    bypassed_with_attention: ClassVar[tuple[str, ...]] = ()
    bypassed_with_mlp: ClassVar[tuple[str, ...]] = ()
    head_count_attr: ClassVar[str] = "num_attention_heads"  # on the heads module
    head_width_attrs: ClassVar[tuple[str, str] | None] = None  # (total, per head): total set to heads x per head after slicing
    config_hidden_size: ClassVar[str] = "hidden_size"  # config fields giving the sizes
    config_num_heads: ClassVar[str] = "num_attention_heads"
    config_head_dim: ClassVar[str | None] = "head_dim"  # when the config sets it; else hidden size // heads

    def __init__(self, model: nn.Module):
        self.model = model

    # ----- the layout, from the class attributes (override where a family differs) ------------
    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether ``model`` (already loaded) belongs to this family: its config's type and its blocks."""
        return cls.supports_config(getattr(model, "config", None)) and cls.find_blocks(model) is not None

    @classmethod
    def supports_config(cls, config: Any) -> bool:
        """Whether a transformers config (read before any weights) belongs to this family."""
        return getattr(config, "model_type", None) in cls.model_types

    @classmethod
    def find_blocks(cls, model: nn.Module) -> Any:
        """The list of blocks (``blocks_path`` under the first of ``base_attrs`` present, else under the model), or None."""
        base = next((b for b in (getattr(model, a, None) for a in cls.base_attrs) if b is not None), model)
        return module_at(base, cls.blocks_path)

    def blocks(self) -> nn.ModuleList | nn.Sequential:
        return self.find_blocks(self.model)

    def has_attention(self, layer: int) -> bool:
        """Whether block ``layer`` still has heads (its attention is not the reduced module)."""
        return not isinstance(getattr(self.blocks()[layer], self.attention_attr), self.reduced_attention)

    def has_mlp(self, layer: int) -> bool:
        return not isinstance(getattr(self.blocks()[layer], self.mlp_attr), self.reduced_mlp)

    def layer_parts(self, layer: int) -> LayerParts | None:
        """The prunable parts of block ``layer``; parts that were reduced away are None."""
        blk = self.blocks()[layer]
        parts = LayerParts(block=blk, attn=None, out_proj=None, fc1=None, fc2=None)
        if self.has_attention(layer):
            parts.attn = module_at(blk, self.heads_path)
            parts.out_proj = module_at(blk, self.out_proj_path)
            projections = [getattr(parts.attn, n) for n in self.qkv_names]
            if len(projections) == 1:
                parts.qkv = projections[0]
            else:
                parts.q, parts.k, parts.v = projections
        if self.has_mlp(layer):
            parts.fc1, parts.fc2 = module_at(blk, self.fc1_path), module_at(blk, self.fc2_path)
        return parts

    def num_heads(self, layer: int) -> int:
        if not self.has_attention(layer):
            return 0
        return int(getattr(module_at(self.blocks()[layer], self.heads_path), self.head_count_attr))

    def head_dim(self) -> int:
        if self.head_width_attrs:  # the attention modules' own per-head width: what their forward reshapes by (a BERT
            for layer in range(self.num_layers):  # ignores a config's "head_dim"; DeBERTa reads attention_head_size)
                if self.has_attention(layer):
                    dh = getattr(module_at(self.blocks()[layer], self.heads_path), self.head_width_attrs[1], None)
                    if isinstance(dh, int) and dh > 0:
                        return dh
        cfg = self.model.config
        dh = getattr(cfg, self.config_head_dim, None) if self.config_head_dim else None
        return dh or getattr(cfg, self.config_hidden_size) // getattr(cfg, self.config_num_heads)

    def check_layout(self, what: str = "the model") -> None:
        """Refuse a model whose attention cannot run: its heads x head size must be the width its q/k/v projections
        produce and its output projection takes. A config.json that sets a head size (DeBERTa's
        ``attention_head_size``, ViT's ``head_dim``) other than hidden size / heads builds such a model; its own
        forward fails too, so it is the config, not the tool, that is wrong."""
        for layer in range(self.num_layers):
            if not self.has_attention(layer):
                continue
            p = self.layer_parts(layer)
            width = p.qkv.out_features // 3 if p.qkv is not None else p.v.out_features
            heads, dh = self.num_heads(layer), self.layer_head_dim(layer)
            if width == p.out_proj.in_features == heads * dh:
                continue
            cfg = getattr(self.model, "config", None)
            named = self.config_head_dim if self.config_head_dim and getattr(cfg, self.config_head_dim, None) else None
            hidden, n = getattr(cfg, self.config_hidden_size, None), getattr(cfg, self.config_num_heads, None)
            fix = (f"; set {named} to {self.config_hidden_size} / {self.config_num_heads} ({hidden // n}) or remove it"
                   if named and isinstance(hidden, int) and isinstance(n, int) and n > 0 and hidden % n == 0
                   else "; make its head count and sizes agree")
            raise OptinError(
                f"{what} has an inconsistent config.json: layer {layer}'s attention has {heads} heads of {dh}"
                f"{f' ({named})' if named else ''} = {heads * dh} features and its q/k/v give {width}, but its output "
                f"projection takes {p.out_proj.in_features}, so the model cannot run (transformers' own forward fails too)" + fix)

    def hidden_size(self) -> int:
        return getattr(self.model.config, self.config_hidden_size)

    def set_num_heads(self, layer: int, n: int) -> None:
        heads = module_at(self.blocks()[layer], self.heads_path)
        setattr(heads, self.head_count_attr, n)
        if self.head_width_attrs:
            total, per_head = self.head_width_attrs
            setattr(heads, total, n * getattr(heads, per_head))

    def reduce_attention(self, layer: int) -> None:
        """Replace block ``layer``'s attention (all heads removed) by its reduced form."""
        self._reduce(layer, "attn", self.layer_parts(layer).out_proj, self.attention_attr, self.reduced_attention,
                     self.attention_norm_path, self.bypassed_with_attention)

    def reduce_mlp(self, layer: int) -> None:
        """Replace block ``layer``'s MLP (all neurons removed) by its reduced form."""
        self._reduce(layer, "mlp", self.layer_parts(layer).fc2, self.mlp_attr, self.reduced_mlp,
                     self.mlp_norm_path, self.bypassed_with_mlp)

    def _reduce(self, layer: int, part: str, proj: nn.Linear, attr: str, reduced: type, norm_path: str | None,
                bypassed: tuple[str, ...]) -> None:
        blk = self.blocks()[layer]
        bias = self.reduced_bias(layer, part, proj)
        setattr(blk, attr, reduced(bias, module_at(blk, norm_path)) if norm_path else reduced(bias, proj.out_features))
        for name in bypassed:
            setattr(blk, name, nn.Identity())

    def reduced_bias(self, layer: int, part: str, proj: nn.Linear) -> torch.Tensor | None:
        """The bias a removed part (``"attn"`` / ``"mlp"``) leaves: its output projection's (DINOv2 folds
        its layer scale in)."""
        return proj.bias

    def mlp_residual(self, layer: int) -> nn.Module:
        """The module whose first input is the residual stream the MLP's output is added to
        (``mlp_input_path``; once a post-norm MLP is reduced, the reduced module)."""
        blk = self.blocks()[layer]
        found = module_at(blk, self.mlp_input_path)
        return found if found is not None else getattr(blk, self.mlp_attr)

    # ----- per-layer sizes (defaults: every layer alike) -----------------------------------
    def layer_hidden_size(self, layer: int) -> int:
        """Width of the residual stream in block ``layer``."""
        return self.hidden_size()

    def layer_head_dim(self, layer: int) -> int:
        return self.head_dim()

    def layer_tokens(self, layer: int, s: int) -> int:
        """Tokens per sample in block ``layer`` when the model sees ``s`` (= :meth:`seq_len`) tokens."""
        return s

    def attention_tokens(self, layer: int, s: int) -> int:
        """Tokens the attention of block ``layer`` projects (window attention: incl. window padding)."""
        return self.layer_tokens(layer, s)

    def attention_span(self, layer: int, s: int) -> int:
        """Keys each query attends to (the window's area for window attention)."""
        return self.attention_tokens(layer, s)

    def layer_token_mask(self, inputs: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
        """``B x T_layer`` bool mask of real tokens in block ``layer``'s output."""
        return self.token_mask(inputs)

    def for_export(self) -> None:
        """Switch the model to a code path that exports (called by the exporters; default: nothing)."""

    def attention_in_token_layout(self, layer: int) -> bool:
        """Whether block ``layer``'s attention projections see the residual stream's ``B x T`` tokens
        (False for window attention, whose rows are windows of shifted / padded tokens)."""
        return True

    def pass_through(self, layer: int) -> nn.Module:
        """A module that stands in for block ``layer`` and returns its input unchanged, in the
        form the model's code expects a block's output (a tensor unless a family says otherwise)."""
        return PassThrough()

    def logits(self, outputs: Any) -> torch.Tensor | None:
        """The logits from the model's forward output (None for a model without a task head)."""
        if isinstance(outputs, torch.Tensor):
            return outputs
        return getattr(outputs, "logits", None)

    def forward(self, inputs: dict[str, torch.Tensor]) -> Any:
        """Run the model on named inputs (text: the ones the family takes, others ignored)."""
        if self.modality == "text":
            return self.model(**{k: v for k, v in inputs.items() if k in self.sequence_inputs})
        return self.model(**inputs)

    def export_module(self, input_names: list[str]) -> nn.Module | None:
        """An export-only module ``forward(*inputs) -> logits`` computing the same logits from the
        same parameters in a layout the runtimes fuse better, or None (the default): the exporter
        then traces the model's own forward (``torch.onnx.export(dynamo=True)``)."""
        return None

    def seq_len(self, inputs: dict[str, torch.Tensor]) -> int:
        """Tokens per sequence seen by the blocks (incl. special / class tokens)."""
        if self.modality == "text":
            return int(inputs[self.input_names()[0]].shape[1])
        raise NotImplementedError

    def token_mask(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``B x T`` bool mask of real (non-padding) tokens in the block outputs."""
        if self.modality == "text":
            if "attention_mask" in inputs:
                return inputs["attention_mask"].bool()
            return torch.ones_like(inputs[self.input_names()[0]], dtype=torch.bool)
        raise NotImplementedError

    def branch_scale(self, layer: int, part: str) -> torch.Tensor | None:
        """Per-channel scale applied to a sublayer's output ("attn" or "mlp") before the residual add
        (timm's LayerScale); None when there is none."""
        return None

    def structure(self) -> dict:
        """Everything needed to rebuild the (possibly pruned) architecture without weights: the dense
        architecture (here: a transformers class and its config) plus, per layer, the kept head and
        neuron indices (``kept_heads`` / ``kept_neurons``; ``heads`` / ``neurons`` are their counts)."""
        return {
            "family": self.family,
            "model_class": type(self.model).__name__,
            "config": self.model.config.to_dict(),
            **self.kept_structure(),
        }

    def kept_structure(self) -> dict:
        return {
            "heads": self.heads_per_layer(),
            "neurons": self.neurons_per_layer(),
            "kept_heads": [self.kept_heads(i) for i in range(self.num_layers)],
            "kept_neurons": [self.kept_neurons(i) for i in range(self.num_layers)],
        }

    @classmethod
    def build_from_structure(cls, spec: dict) -> nn.Module:
        """The dense architecture of ``spec`` with fresh weights (pruned_io then cuts it down)."""
        import transformers

        cfg = dict(spec["config"])
        config = transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        return getattr(transformers, spec["model_class"])(config)

    # ----- generic ----------------------------------------------------------------------
    @property
    def root(self) -> nn.Module:
        """The whole model the caller holds (``self.model`` is the part the family methods act on;
        for a sentence-embedding model that is the wrapped encoder, and ``root`` the wrapper)."""
        return self.model

    @property
    def num_layers(self) -> int:
        return len(self.blocks())

    def num_neurons(self, layer: int) -> int:
        parts = self.layer_parts(layer)
        return 0 if parts is None or parts.fc2 is None else parts.fc2.in_features

    def uniform(self) -> bool:
        """Whether every layer has the same hidden size, head size and token count."""
        return len({(self.layer_hidden_size(l), self.layer_head_dim(l), self.layer_tokens(l, 1 << 10)) for l in range(self.num_layers)}) <= 1

    def heads_per_layer(self) -> list[int]:
        return [self.num_heads(i) for i in range(self.num_layers)]

    def neurons_per_layer(self) -> list[int]:
        return [self.num_neurons(i) for i in range(self.num_layers)]

    def head_mac(self, s: int, layer: int = 0) -> int:
        """Multiply-accumulates of one head of block ``layer`` when the model sees ``s`` tokens.

        Spec: ``4 T d dh + 2 T w dh`` with ``T`` the tokens the attention projects, ``d`` the hidden
        size, ``dh`` the head size and ``w`` the keys per query (``w = T`` for global attention,
        giving ``4 s d dh + 2 s^2 dh``; the window's area for window attention, i.e. the score and
        weighted-sum matmuls counted per window).
        """
        d, dh = self.layer_hidden_size(layer), self.layer_head_dim(layer)
        t, w = self.attention_tokens(layer, s), self.attention_span(layer, s)
        return 4 * t * d * dh + 2 * t * w * dh

    def neuron_mac(self, s: int, layer: int = 0) -> int:
        """``2 T d`` (a row of ``fc1``, a column of ``fc2``); ``3 T d`` in a gated MLP (also a row of ``up``,
        or of ``fc1``'s gate half)."""
        parts = self.layer_parts(layer)
        k = 3 if self.fused_gate or (parts is not None and parts.up is not None) else 2
        return k * self.layer_tokens(layer, s) * self.layer_hidden_size(layer)

    def encoder_macs(self, s: int) -> int:
        return sum(h * self.head_mac(s, l) + f * self.neuron_mac(s, l)
                   for l, (h, f) in enumerate(zip(self.heads_per_layer(), self.neurons_per_layer())))

    # slicing -------------------------------------------------------------------------------
    def keep_heads(self, layer: int, keep: list[int]) -> None:
        """Keep only heads ``keep`` (indices into the current heads) of block ``layer``."""
        n = self.num_heads(layer)
        keep = self._to_keep(layer, "heads", keep, n)
        if keep is None:
            return
        if not keep:
            self.reduce_attention(layer)
            self.after_keep_heads(layer, keep)
            return
        parts = self.layer_parts(layer)
        dh = self.layer_head_dim(layer)
        idx = torch.cat([torch.arange(h * dh, (h + 1) * dh) for h in keep])
        if parts.qkv is not None:
            width = n * dh
            rows = torch.cat([idx + j * width for j in range(3)])
            self._replace(parts.qkv, slice_linear(parts.qkv, rows, 0))
        else:
            for lin in (parts.q, parts.k, parts.v):
                self._replace(lin, slice_linear(lin, idx, 0))
        self._replace(parts.out_proj, slice_linear(parts.out_proj, idx, 1))
        self.set_num_heads(layer, len(keep))
        self.after_keep_heads(layer, keep)

    def keep_neurons(self, layer: int, keep: list[int]) -> None:
        n = self.num_neurons(layer)
        keep = self._to_keep(layer, "neurons", keep, n)
        if keep is None:
            return
        if not keep:
            self.reduce_mlp(layer)
            return
        parts = self.layer_parts(layer)
        idx = torch.tensor(keep, dtype=torch.long)
        self._replace(parts.fc1, slice_linear(parts.fc1, torch.cat([idx, idx + n]) if self.fused_gate else idx, 0))
        if parts.up is not None:
            self._replace(parts.up, slice_linear(parts.up, idx, 0))
        self._replace(parts.fc2, slice_linear(parts.fc2, idx, 1))

    def _to_keep(self, layer: int, kind: str, keep: list[int], n: int) -> list[int] | None:
        """``keep`` sorted and checked against the ``n`` current units (``kind``: "heads" / "neurons"),
        recorded as kept; None when it keeps them all (nothing to cut)."""
        keep = sorted(set(int(i) for i in keep))
        if any(i < 0 or i >= n for i in keep):
            raise ValueError(f"layer {layer}: {kind[:-1]} index out of range 0..{n - 1}")
        if len(keep) == n:
            return None
        self._record_kept(layer, kind, keep, n)
        return keep

    def _replace(self, old: nn.Module, new: nn.Module) -> None:
        _set_child(self.model, old, new)

    def after_keep_heads(self, layer: int, keep: list[int]) -> None:
        """Called after block ``layer`` kept heads ``keep`` (indices into its heads before this cut):
        the place for per-head tables that live outside the sliced projections (MPNet's shared
        relative-attention bias). :meth:`kept_heads` already holds the new original indices."""

    # which units were kept (indices into the dense model), remembered on the block -------------
    def _record_kept(self, layer: int, kind: str, keep: list[int], n: int) -> None:
        blk = self.blocks()[layer]
        attr = f"_optin_kept_{kind}"
        before = getattr(blk, attr, None) or list(range(n))
        setattr(blk, attr, [int(before[i]) for i in keep])

    def kept_heads(self, layer: int) -> list[int]:
        """Original indices of the heads block ``layer`` still has (all of them if never cut)."""
        got = getattr(self.blocks()[layer], "_optin_kept_heads", None)
        return list(got) if got is not None else list(range(self.num_heads(layer)))

    def kept_neurons(self, layer: int) -> list[int]:
        got = getattr(self.blocks()[layer], "_optin_kept_neurons", None)
        return list(got) if got is not None else list(range(self.num_neurons(layer)))

    # ----- inputs: names, lengths, example batches ---------------------------------------------
    def input_names(self) -> list[str]:
        """The model's inputs in the order exporters and runtimes use (``token_type_ids`` too for a
        sentence-pair task on a model with segment embeddings: :meth:`uses_token_types`)."""
        if self.modality != "text":
            return ["pixel_values"]
        return ["input_ids", "attention_mask", *(["token_type_ids"] if self.uses_token_types() else [])]

    def uses_token_types(self) -> bool:
        """Whether the segment ids are a model input: the model was marked for sentence pairs
        (:func:`mark_text_pair`, recorded in its config) and has more than one token type to embed.
        A single-text task feeds all-zero segment ids, which the graph then holds as a constant."""
        cfg = getattr(self.model, "config", None)
        return bool(getattr(cfg, TEXT_PAIR_FLAG, False)) and int(getattr(cfg, "type_vocab_size", 0) or 0) > 1

    def max_positions(self) -> int | None:
        """The longest sequence the model takes (text), or None when unbounded / not text."""
        if self.modality != "text":
            return None
        n = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        return None if n is None else int(n) - self.position_offset()

    def position_offset(self) -> int:
        """Position-embedding rows a family reserves before the first token (RoBERTa: padding_idx + 1)."""
        return 0

    def vocab_size(self) -> int:
        return int(getattr(getattr(self.model, "config", None), "vocab_size", 1000) or 1000)

    def encode(self, tokenizer, texts: Sequence[str], *, max_length: int | None, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        """Tokenise ``texts`` into this model's inputs (padding to the longest, or to ``pad_to``)."""
        limit = self.max_positions()
        length = pad_to or max_length
        if limit is not None and length is not None:
            length = min(length, limit)
        texts = list(texts)
        pairs = bool(texts) and not isinstance(texts[0], str)
        enc = tokenizer(*([[t[0] for t in texts], [t[1] for t in texts]] if pairs else [texts]),
                        padding="max_length" if pad_to else "longest", truncation=True, max_length=length, return_tensors="pt")
        return {n: (enc[n] if n in enc else torch.zeros_like(enc["input_ids"])).long() for n in self.input_names()}

    @classmethod
    def inputs_for(cls, names: Sequence[str], batch: int, seq_len: int, vocab: int | None, *, tokenizer=None,
                   texts: Sequence[str] | None = None, seed: int = 0, padded: bool = True) -> dict[str, torch.Tensor]:
        """Text inputs ``names`` of exactly ``batch`` x ``seq_len``, the one place they are made without a
        task: ``texts`` (default :data:`SAMPLE_TEXTS`, cycled) through ``tokenizer`` when one is given,
        else seeded random ids below ``vocab`` (:meth:`random_inputs`). Used for a model at hand
        (:meth:`example_inputs`) and for an exported artifact whose family is known only by its input names."""
        if tokenizer is not None:
            texts = list(texts or SAMPLE_TEXTS)
            texts = (texts * (-(-batch // len(texts))))[:batch]
            enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
            return {n: (enc[n] if n in enc else torch.zeros_like(enc["input_ids"])).long() for n in names}
        return cls.random_inputs(names, batch, seq_len, vocab or 100, seed=seed, padded=padded)

    @classmethod
    def random_inputs(cls, names: Sequence[str], batch: int, seq_len: int, vocab: int, *, seed: int = 0,
                      padded: bool = True) -> dict[str, torch.Tensor]:
        """Seeded random token ids (``padded``: rows after the first end early, masked out)."""
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(min(5, vocab - 1), max(vocab, 6), (batch, seq_len), generator=g)
        mask = torch.ones_like(ids)
        if padded:
            lengths = torch.randint(max(seq_len // 2, 1), seq_len + 1, (batch,), generator=g)
            lengths[0] = seq_len
            for i, n in enumerate(lengths.tolist()):
                mask[i, n:] = 0
                ids[i, n:] = 0
        made = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
        return {n: made[n] for n in names}

    @classmethod
    def resize_inputs(cls, inputs: dict[str, torch.Tensor], batch: int, seq: int) -> dict[str, torch.Tensor]:
        """Text inputs repeated to ``batch`` rows and cut or padded to ``seq`` tokens; added tokens
        are padding (the example's pad id, mask 0, token type 0)."""
        rows = {n: t.repeat(-(-batch // t.shape[0]), 1)[:batch] for n, t in inputs.items()}
        if seq <= next(iter(rows.values())).shape[1]:
            return {n: t[:, :seq].contiguous() for n, t in rows.items()}
        mask = rows.get("attention_mask")
        out = {}
        for n, t in rows.items():
            fill = 0
            if n == "input_ids" and mask is not None and bool((mask == 0).any()):
                fill = int(t[mask == 0][0])
            out[n] = torch.cat([t, torch.full((batch, seq - t.shape[1]), fill, dtype=t.dtype)], dim=1)
        return out

    def example_inputs(self, batch: int, seq_len: int = 128, *, tokenizer=None, texts: Sequence[str] | None = None,
                       seed: int = 0, padded: bool = True) -> dict[str, torch.Tensor]:
        """Inputs of an exact shape for this model: text through :meth:`inputs_for` (``texts``, default
        :data:`SAMPLE_TEXTS`, through ``tokenizer`` when one is given, else seeded random ids), at most the
        model's positions; images are seeded standard-normal pixels of the model's size."""
        if self.modality == "text":
            limit = self.max_positions()
            if limit is not None:
                seq_len = min(seq_len, limit)
            return self.inputs_for(self.input_names(), batch, seq_len, self.vocab_size(), tokenizer=tokenizer, texts=texts, seed=seed, padded=padded)
        c, h, w = self.image_shape()
        return {self.input_names()[0]: torch.randn(batch, c, h, w, generator=torch.Generator().manual_seed(seed))}

    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of an image model's input."""
        cfg = getattr(self.model, "config", None)
        size = getattr(cfg, "image_size", 224)
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(getattr(cfg, "num_channels", 3)), int(h), int(w)


class PassThrough(nn.Module):
    """Stands in for a block: returns its hidden-state input unchanged."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class TuplePassThrough(nn.Module):
    """Stands in for a block of an encoder whose loop reads ``layer_outputs[0]`` (MPNet): returns
    ``(hidden_states,)``, so the loop gets its input back unchanged rather than its first row."""

    def forward(self, hidden_states, *args, **kwargs):
        return (hidden_states,)
