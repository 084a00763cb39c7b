"""transformers Swin (SwinModel, SwinForImageClassification).

A hierarchy of stages; stage ``k`` has ``depths[k]`` pre-norm blocks of width ``embed_dim * 2^k`` on
a ``(H / 2^k) x (W / 2^k)`` token grid, followed (except the last) by a patch merging layer that
halves the grid and doubles the width. Blocks are numbered through all stages (layer 0 is the first
block of stage 0); patch merging is never pruned and is left untouched.

* Heads: window attention (``(shifted) windows of window_size^2 tokens``) with ``q_proj`` /
  ``k_proj`` / ``v_proj`` / ``o_proj`` and a learned relative-position bias table with one column per
  head: slicing heads keeps the kept heads' columns of that table.
* Neurons: ``mlp.fc1`` rows / ``mlp.fc2`` columns.
* Per-layer sizes: hidden size, head size and token count change from stage to stage. The attention
  projects the grid padded to a multiple of the window, and each query sees its window's
  ``window_size^2`` keys, so a head costs ``4 T_pad d dh + 2 T_pad w^2 dh`` MACs (scores counted
  per window) and a neuron ``2 T d``.
* A block that loses every head keeps ``x + b_o`` (the attention returns its output bias); one that
  loses every neuron keeps ``h + b_2``.

transformers' Swin needs every stage's grid to be at least the window (otherwise its relative
position table and the clamped window disagree), so pick ``window_size`` accordingly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .base import Adapter, PassThrough
from .registry import register


class SwinPassThrough(PassThrough):
    """Stands in for a Swin block: the stage unpacks ``(hidden_states, attention_weights)``."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states, None


class _FlatBlocks:
    """The blocks of every stage as one indexable, assignable sequence."""

    def __init__(self, stages: nn.ModuleList):
        self.where = [(s, j) for s, st in enumerate(stages) for j in range(len(st.blocks))]
        self.stages = stages

    def __len__(self) -> int:
        return len(self.where)

    def __getitem__(self, i: int) -> nn.Module:
        s, j = self.where[i]
        return self.stages[s].blocks[j]

    def __setitem__(self, i: int, module: nn.Module) -> None:
        s, j = self.where[i]
        self.stages[s].blocks[j] = module

    def __iter__(self):
        return (self[i] for i in range(len(self)))


@register
class HFSwinAdapter(Adapter):
    family = "hf_swin"
    description = "transformers Swin (SwinModel, SwinForImageClassification)"
    modality = "image"
    model_types = ("swin",)
    base_attrs = ("swin",)
    blocks_path = "encoder.layers"  # the stages; q_proj / k_proj / v_proj / o_proj under .attention (the defaults)
    mlp_input_path = "layernorm_after"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self._grid: tuple[int, int] | None = None
        self.for_export()  # the same attention path in PyTorch (scoring, reconstruction) as in the export

    def for_export(self) -> None:
        """Window attention runs through transformers' eager path: its sdpa path does not export to
        ONNX with a dynamic batch (torch 2.14 / transformers 5.24: "Cannot view a tensor ...").
        The windows are small (window_size^2 tokens), so eager costs nothing here."""
        for m in self.model.modules():
            cfg = getattr(m, "config", None)
            if cfg is not None and getattr(cfg, "_attn_implementation", "eager") != "eager":
                cfg._attn_implementation = "eager"

    def blocks(self):
        stages = self.find_blocks(self.model)
        return None if stages is None else _FlatBlocks(stages)

    def _stage(self, layer: int) -> int:
        return self.blocks().where[layer][0]

    # sizes ---------------------------------------------------------------------------------
    def layer_hidden_size(self, layer: int) -> int:
        return int(self.model.config.embed_dim * 2 ** self._stage(layer))

    def layer_head_dim(self, layer: int) -> int:
        s = self._stage(layer)
        return self.layer_hidden_size(layer) // self.model.config.num_heads[s]

    def hidden_size(self) -> int:
        return self.layer_hidden_size(0)

    def head_dim(self) -> int:
        return self.layer_head_dim(0)

    def _stage_grid(self, layer: int, s: int) -> tuple[int, int]:
        """Token grid of block ``layer``'s stage when stage 0 has ``s`` tokens."""
        if self._grid is not None and self._grid[0] * self._grid[1] == s:
            h, w = self._grid
        else:
            r = math.isqrt(s)
            if r * r == s:
                h = w = r
            else:
                g = self._config_grid()
                h, w = g if g[0] * g[1] == s else (s, 1)
        for _ in range(self._stage(layer)):
            h, w = (h + 1) // 2, (w + 1) // 2  # patch merging pads odd sides
        return h, w

    def _config_grid(self) -> tuple[int, int]:
        cfg = self.model.config
        size = cfg.image_size if isinstance(cfg.image_size, (list, tuple)) else (cfg.image_size, cfg.image_size)
        p = cfg.patch_size if isinstance(cfg.patch_size, (list, tuple)) else (cfg.patch_size, cfg.patch_size)
        return -(-size[0] // p[0]), -(-size[1] // p[1])

    def _window(self, layer: int, s: int) -> int:
        h, w = self._stage_grid(layer, s)
        return min(self.model.config.window_size, h, w)

    def layer_tokens(self, layer: int, s: int) -> int:
        h, w = self._stage_grid(layer, s)
        return h * w

    def attention_tokens(self, layer: int, s: int) -> int:
        h, w = self._stage_grid(layer, s)
        win = self._window(layer, s)
        return (-(-h // win) * win) * (-(-w // win) * win)

    def attention_span(self, layer: int, s: int) -> int:
        return self._window(layer, s) ** 2

    def seq_len(self, inputs) -> int:
        """Tokens of the first stage (the patch grid); later stages follow from it."""
        h, w = inputs["pixel_values"].shape[-2:]
        p = self.model.config.patch_size
        p = p if isinstance(p, (list, tuple)) else (p, p)
        self._grid = (-(-int(h) // p[0]), -(-int(w) // p[1]))
        return self._grid[0] * self._grid[1]

    def token_mask(self, inputs) -> torch.Tensor:
        return self.layer_token_mask(inputs, 0)

    def layer_token_mask(self, inputs, layer: int) -> torch.Tensor:
        s = self.seq_len(inputs)
        return torch.ones(inputs["pixel_values"].shape[0], self.layer_tokens(layer, s), dtype=torch.bool)

    def pass_through(self, layer: int) -> nn.Module:
        return SwinPassThrough()

    def attention_in_token_layout(self, layer: int) -> bool:
        return False  # (shifted) windows, padded to whole windows

    # slicing -------------------------------------------------------------------------------
    def keep_heads(self, layer: int, keep: list[int]) -> None:
        keep = sorted(set(int(h) for h in keep))
        n = self.num_heads(layer)
        super().keep_heads(layer, keep)
        if keep and len(keep) < n:  # the relative-position bias table: one column per head
            rpb = self.blocks()[layer].attention.relative_position_bias
            table = rpb.relative_position_bias_table
            new = nn.Parameter(table.detach()[:, keep].clone(), requires_grad=table.requires_grad)
            rpb.relative_position_bias_table = new

    def forward(self, inputs):
        return self.model(pixel_values=inputs["pixel_values"])
