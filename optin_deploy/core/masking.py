"""Masks, partial runs and recording, all through hooks: the model's code is never edited.

* Head masks act on the input of the attention output projection (the concatenated head outputs),
  neuron masks on the input of the second MLP linear (the post-activation neurons), by
  multiplication. A mask is ``(n_units,)`` (shared by the batch, e.g. autograd leaves) or
  ``(B', n_units)`` (one row per sample, used to stack several masked copies along the batch).
* :func:`start_at` runs a model "from block l on": the blocks before ``l`` are swapped for a
  pass-through and block ``l`` receives a given hidden state (the teacher's, cached), so blocks
  that a mask in layer ``l`` cannot change are not recomputed.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from ..adapters.base import Adapter


class UnitMasks:
    """Context manager installing head/neuron mask hooks on every block of a model."""

    def __init__(self, adapter: Adapter):
        self.adapter = adapter
        n = adapter.num_layers
        self.heads: list[torch.Tensor | None] = [None] * n
        self.neurons: list[torch.Tensor | None] = [None] * n
        self._handles = []
        self._dh = [adapter.layer_head_dim(l) for l in range(n)]

    def clear(self) -> None:
        self.heads = [None] * len(self.heads)
        self.neurons = [None] * len(self.neurons)

    def _head_hook(self, layer: int):
        def hook(module, args):
            m = self.heads[layer]
            if m is None:
                return None
            m = m.repeat_interleave(self._dh[layer], dim=-1)
            if m.dim() == 2:
                rows = args[0].shape[0]
                if rows != m.shape[0] and rows % m.shape[0] == 0:
                    # window attention sees each sample as several rows, sample-major (Swin: B x windows)
                    m = m.repeat_interleave(rows // m.shape[0], dim=0)
                m = m[:, None, :]
            return (args[0] * m,) + tuple(args[1:])

        return hook

    def _neuron_hook(self, layer: int):
        def hook(module, args):
            m = self.neurons[layer]
            if m is None:
                return None
            if m.dim() == 2:
                m = m[:, None, :]
            return (args[0] * m,) + tuple(args[1:])

        return hook

    def __enter__(self) -> "UnitMasks":
        for layer in range(self.adapter.num_layers):
            parts = self.adapter.layer_parts(layer)
            if parts.out_proj is not None:
                self._handles.append(parts.out_proj.register_forward_pre_hook(self._head_hook(layer)))
            if parts.fc2 is not None:
                self._handles.append(parts.fc2.register_forward_pre_hook(self._neuron_hook(layer)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@contextmanager
def start_at(adapter: Adapter, layer: int, hidden: torch.Tensor):
    """Within the context, a forward pass starts at block ``layer`` with input ``hidden``."""
    blocks = adapter.blocks()
    saved = [blocks[i] for i in range(layer)]

    def feed(module, args, kwargs):
        key = "hidden_states" if "hidden_states" in kwargs else "x"
        got = args[0] if args else kwargs.get(key)
        if layer > 0 and isinstance(got, torch.Tensor) and got.dim() != hidden.dim():
            # the skipped blocks' stand-ins hand on a tensor of another rank: the encoder loop
            # transforms what a block returns (e.g. takes [0] of it), so the family's pass_through
            # does not return the form the loop expects; fail here rather than compute on it
            raise RuntimeError(f"{type(adapter).__name__}.pass_through: block {layer} received a {got.dim()}-d tensor "
                               f"after {layer} skipped blocks, not {hidden.dim()}-d; return what the encoder loop expects from a block")
        if args:
            return (hidden,) + tuple(args[1:]), kwargs
        kwargs = dict(kwargs)
        kwargs[key] = hidden
        return args, kwargs

    handle = blocks[layer].register_forward_pre_hook(feed, with_kwargs=True)
    try:
        for i in range(layer):
            blocks[i] = adapter.pass_through(i)
        yield
    finally:
        for i, b in enumerate(saved):
            blocks[i] = b
        handle.remove()


class BlockRecorder:
    """Records each block's input and output during a forward pass (``inputs[l]``, ``outputs[l]``)."""

    def __init__(self, adapter: Adapter, record_inputs: bool = False):
        self.adapter = adapter
        self.record_inputs = record_inputs
        self.inputs: dict[int, torch.Tensor] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._handles = []

    def __enter__(self) -> "BlockRecorder":
        for i, blk in enumerate(self.adapter.blocks()):
            self._handles.append(blk.register_forward_hook(self._out_hook(i)))
            if self.record_inputs:
                self._handles.append(blk.register_forward_pre_hook(self._in_hook(i), with_kwargs=True))
        return self

    def _out_hook(self, i):
        def hook(module, args, output):
            self.outputs[i] = output[0] if isinstance(output, tuple) else output

        return hook

    def _in_hook(self, i):
        def hook(module, args, kwargs):
            self.inputs[i] = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))

        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
