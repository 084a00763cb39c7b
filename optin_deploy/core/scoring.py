"""OPTIN trajectory scores (``shared/OPTIN.md``).

``score(u) = sum_{k >= l} MD_k + lambda_kl * KL`` where ``MD_k`` is the manifold distillation
distance between the teacher's and the masked model's block-``k`` token features (Gram matrices of
L2-normalised features at ``K`` fixed token positions) and ``KL`` the temperature-scaled KL
divergence of the logits. For a sentence-embedding model (no logits) the output term is
``sum_batch (1 - cos(e_dense, e_masked))`` of the pooled embeddings instead (:func:`output_term`);
it is stored in the same ``*_kl`` fields and balanced against MD by the same rule. The two raw components are kept separately (:class:`RawScores`) so that
``lambda_kl`` (set per unit kind so that the mean KL term is ``1/lambda`` of the mean MD term) can
be applied later, and cached scores serve any budget.

Three ways to compute them, all on the same teacher record (same batch, same token positions):

* :func:`reference_scores` - the plain definition: one full masked forward pass per unit.
* :func:`exact_scores` - identical numbers, faster: blocks before the unit's layer are not re-run
  (their teacher outputs are reused) and ``group`` masked copies share one pass, stacked along the
  batch.
* :func:`fast_scores` (see :mod:`.fast`) - a Gauss-Newton / Hutchinson estimate for neurons.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ..adapters.base import Adapter
from .masking import BlockRecorder, UnitMasks, start_at

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class ScoreSettings:
    num_tokens: int = 768  # K token positions for the Gram matrices
    temperature: float = 4.0
    lam: float = 10.0  # mean KL term = mean MD term / lam
    seed: int = 0
    group: int = 8  # masked copies per forward pass (exact scoring)

    def key(self) -> dict:
        return {"num_tokens": self.num_tokens, "temperature": self.temperature, "seed": self.seed}


@dataclass
class RawScores:
    """Per-unit MD (summed over blocks) and KL, for heads and neurons, layer by layer."""

    head_md: list[torch.Tensor]
    head_kl: list[torch.Tensor]
    neuron_md: list[torch.Tensor]
    neuron_kl: list[torch.Tensor]
    method: str = "exact"
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def combined(self, lam: float = 10.0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """OPTIN scores: ``md + lambda_kl * kl`` with ``lambda_kl`` chosen per unit kind."""
        return _combine(self.head_md, self.head_kl, lam), _combine(self.neuron_md, self.neuron_kl, lam)

    def to_dict(self) -> dict:
        return {
            "head_md": [t.tolist() for t in self.head_md],
            "head_kl": [t.tolist() for t in self.head_kl],
            "neuron_md": [t.tolist() for t in self.neuron_md],
            "neuron_kl": [t.tolist() for t in self.neuron_kl],
            "method": self.method,
            "seconds": self.seconds,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "RawScores":
        t = lambda xs: [torch.tensor(x, dtype=torch.float64) for x in xs]  # noqa: E731
        return cls(t(d["head_md"]), t(d["head_kl"]), t(d["neuron_md"]), t(d["neuron_kl"]), d["method"], d["seconds"], d.get("info", {}))


def _combine(md: list[torch.Tensor], kl: list[torch.Tensor], lam: float) -> list[torch.Tensor]:
    all_md = torch.cat([m.flatten() for m in md]) if md else torch.zeros(0)
    all_kl = torch.cat([k.flatten() for k in kl]) if kl else torch.zeros(0)
    if all_kl.numel() == 0 or float(all_kl.mean()) <= 0:
        return [m.clone() for m in md]
    lam_kl = float(all_md.mean()) / (lam * float(all_kl.mean()))
    return [m + lam_kl * k for m, k in zip(md, kl)]


# --------------------------------------------------------------------------------------------
# Teacher record and distances
# --------------------------------------------------------------------------------------------


@dataclass
class Teacher:
    inputs: dict[str, torch.Tensor]
    block_inputs: list[torch.Tensor]
    grams: list[torch.Tensor]  # K x K per block
    logits: torch.Tensor | None
    positions: list[torch.Tensor]  # per block: K indices into its flattened B*T_block tokens
    batch: int
    attn_out: list = field(default_factory=list)  # per layer: the attention module's return value
    fc2_in: list = field(default_factory=list)  # per layer: post-activation neurons (B x T x F)
    fc2_out: list = field(default_factory=list)  # per layer: second MLP linear's output


def token_positions(adapter: Adapter, inputs: dict[str, torch.Tensor], k: int, seed: int, layer: int | None = None) -> torch.Tensor:
    """A fixed random sample of ``k`` real-token positions (all of them if fewer) of block ``layer``'s
    output (``None``: the model's token mask, the same in every block of a plain transformer)."""
    mask = adapter.token_mask(inputs) if layer is None else adapter.layer_token_mask(inputs, layer)
    valid = mask.flatten().nonzero().flatten()
    if valid.numel() <= k:
        return valid
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(valid.numel(), generator=g)[:k].sort().values
    return valid[pick]


def gram(features: torch.Tensor, positions: torch.Tensor, copies: int) -> torch.Tensor:
    """``copies x K x K`` Gram matrices of L2-normalised token features at ``positions``."""
    f = features.reshape(copies, -1, features.shape[-1])[:, positions]
    f = F.normalize(f, dim=-1)
    return f @ f.transpose(1, 2)


def kl_term(zt: torch.Tensor, zs: torch.Tensor, temperature: float, copies: int) -> torch.Tensor:
    """``T^2 KL(softmax(zt/T) || softmax(zs/T))`` summed over the batch, one value per copy."""
    # Written as KL = log E_p[exp(u)] with u = D/T - E_p[D/T], D = zs - zt (exact rewriting): the
    # first-order terms cancel analytically, not in floating point, so a tiny KL (logits that barely
    # move) keeps its relative precision instead of drowning in the rounding of log p - log q.
    t = temperature
    zt = zt.double()
    p = F.softmax(zt / t, dim=-1)
    d = (zs.double().reshape(copies, *zt.shape) - zt) / t
    u = d - (p * d).sum(-1, keepdim=True)
    return (t * t) * torch.log1p((p * torch.expm1(u)).sum(-1)).sum(-1)


def cosine_term(et: torch.Tensor, es: torch.Tensor, copies: int) -> torch.Tensor:
    """``1 - cos(e_t, e_s)`` between dense and masked sentence embeddings, summed over the batch, one
    value per copy (equal to ``||n(e_s) - n(e_t)||^2 / 2`` with ``n`` the L2 normalisation)."""
    es = es.double().reshape(copies, *et.shape)
    return (1.0 - F.cosine_similarity(es, et.double().unsqueeze(0), dim=-1)).sum(dim=1)


def output_term(adapter: Adapter, zt: torch.Tensor, zs: torch.Tensor, temperature: float, copies: int) -> torch.Tensor:
    """OPTIN's final-output term: the temperature-scaled KL of the logits, or, for a model whose
    output is a sentence embedding (``adapter.output_kind == "embedding"``), ``1 - cosine``."""
    if adapter.output_kind == "embedding":
        return cosine_term(zt, zs, copies)
    return kl_term(zt, zs, temperature, copies)


def _store2(xs: list, ys: list, i: int, x, y) -> None:
    xs[i], ys[i] = x, y


@torch.no_grad()
def record_teacher(adapter: Adapter, inputs: dict[str, torch.Tensor], settings: ScoreSettings) -> Teacher:
    n = adapter.num_layers
    attn_out, fc2_in, fc2_out = [None] * n, [None] * n, [None] * n
    handles = []
    for l in range(n):
        parts = adapter.layer_parts(l)
        if parts.attn is not None:
            handles.append(parts.attn.register_forward_hook(lambda m, a, o, l=l: attn_out.__setitem__(l, o)))
        if parts.fc2 is not None:
            handles.append(parts.fc2.register_forward_hook(lambda m, a, o, l=l: _store2(fc2_in, fc2_out, l, a[0], o)))
    try:
        with BlockRecorder(adapter, record_inputs=True) as rec:
            out = adapter.forward(inputs)
    finally:
        for h in handles:
            h.remove()
    positions = layer_positions(adapter, inputs, settings)
    grams = [gram(rec.outputs[i], positions[i], 1)[0] for i in range(n)]
    logits = adapter.logits(out)
    batch = next(iter(inputs.values())).shape[0]
    return Teacher(inputs, [rec.inputs[i] for i in range(n)], grams, None if logits is None else logits.detach(), positions, batch,
                   attn_out, fc2_in, fc2_out)


def layer_positions(adapter: Adapter, inputs: dict[str, torch.Tensor], settings: ScoreSettings) -> list[torch.Tensor]:
    """Per block, the ``K`` token positions its Gram matrix uses (one draw per distinct token mask)."""
    drawn: dict[tuple, torch.Tensor] = {}
    out = []
    for layer in range(adapter.num_layers):
        mask = adapter.layer_token_mask(inputs, layer)
        key = (tuple(mask.shape), mask.flatten().nonzero().flatten().numpy().tobytes())
        if key not in drawn:
            drawn[key] = token_positions(adapter, inputs, settings.num_tokens, settings.seed, layer)
        out.append(drawn[key])
    return out


def _repeat(inputs: dict[str, torch.Tensor], copies: int) -> dict[str, torch.Tensor]:
    return {k: _rep(v, copies) for k, v in inputs.items()}


def _distances(adapter, teacher: Teacher, rec: BlockRecorder, out, first: int, copies: int, settings) -> tuple[torch.Tensor, torch.Tensor]:
    md = torch.zeros(copies, dtype=torch.float64)
    for k in range(first, adapter.num_layers):
        ms = gram(rec.outputs[k], teacher.positions[k], copies)
        md += ((ms - teacher.grams[k]) ** 2).sum(dim=(1, 2)).double()
    kl = torch.zeros(copies, dtype=torch.float64)
    if teacher.logits is not None:
        kl = output_term(adapter, teacher.logits, adapter.logits(out), settings.temperature, copies)
    return md, kl


# --------------------------------------------------------------------------------------------
# Unit enumeration
# --------------------------------------------------------------------------------------------


def all_units(adapter: Adapter) -> list[tuple[str, int, int]]:
    """Every prunable unit as ``(kind, layer, index)``, kind in {"head", "neuron"}."""
    units = []
    for layer in range(adapter.num_layers):
        units += [("head", layer, h) for h in range(adapter.num_heads(layer))]
        units += [("neuron", layer, j) for j in range(adapter.num_neurons(layer))]
    return units


def empty_scores(adapter: Adapter) -> RawScores:
    z = lambda counts: [torch.zeros(c, dtype=torch.float64) for c in counts]  # noqa: E731
    return RawScores(z(adapter.heads_per_layer()), z(adapter.heads_per_layer()), z(adapter.neurons_per_layer()), z(adapter.neurons_per_layer()))


# --------------------------------------------------------------------------------------------
# Reference: one full masked pass per unit
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def reference_unit_scores(adapter: Adapter, teacher: Teacher, units: Iterable[tuple[str, int, int]], settings: ScoreSettings, progress: Progress | None = None) -> list[tuple[float, float]]:
    """The plain definition: for each unit, a full forward pass with that unit masked."""
    units = list(units)
    results = []
    with UnitMasks(adapter) as masks, BlockRecorder(adapter) as rec:
        for i, (kind, layer, idx) in enumerate(units):
            masks.clear()
            n = adapter.num_heads(layer) if kind == "head" else adapter.num_neurons(layer)
            m = torch.ones(n)
            m[idx] = 0.0
            (masks.heads if kind == "head" else masks.neurons)[layer] = m
            out = adapter.forward(teacher.inputs)
            md, kl = _distances(adapter, teacher, rec, out, 0, 1, settings)
            results.append((float(md[0]), float(kl[0])))
            if progress:
                progress(i + 1, len(units))
    return results


def reference_scores(adapter: Adapter, inputs: dict[str, torch.Tensor], settings: ScoreSettings | None = None, progress: Progress | None = None) -> RawScores:
    settings = settings or ScoreSettings()
    t0 = time.perf_counter()
    teacher = record_teacher(adapter, inputs, settings)
    units = all_units(adapter)
    vals = reference_unit_scores(adapter, teacher, units, settings, progress)
    raw = empty_scores(adapter)
    for (kind, layer, idx), (md, kl) in zip(units, vals):
        (raw.head_md if kind == "head" else raw.neuron_md)[layer][idx] = md
        (raw.head_kl if kind == "head" else raw.neuron_kl)[layer][idx] = kl
    raw.method, raw.seconds = "reference", time.perf_counter() - t0
    return raw


# --------------------------------------------------------------------------------------------
# Optimised exact scoring


def _rep(x, copies: int):
    if isinstance(x, torch.Tensor):
        return x.repeat(copies, *([1] * (x.dim() - 1)))
    if isinstance(x, tuple):
        return tuple(_rep(v, copies) for v in x)
    return x


@contextmanager
def neuron_shortcut(adapter: Adapter, teacher: Teacher, layer: int, neurons: list[int]):
    """Compute block ``layer`` of ``len(neurons)`` stacked copies, copy ``c`` with neuron
    ``neurons[c]`` removed, from the teacher's cached values instead of re-running it.

    Masking a neuron changes nothing in the block before the second MLP linear, whose output
    moves by exactly ``-a_j w_j`` (the neuron's activation times its weight column). So the
    attention returns the teacher's output, the first MLP linear is skipped, and the second
    returns the teacher's output minus that rank-one term; the rest of the block (residual,
    LayerNorm) runs as usual.
    """
    parts = adapter.layer_parts(layer)
    if parts is None or parts.fc2 is None or not neurons:
        raise ValueError(f"layer {layer} has no MLP neurons to score")  # an emptied MLP has no units: callers never ask
    copies = len(neurons)
    idx = torch.tensor(neurons)
    act = teacher.fc2_in[layer][..., idx]  # B x T x G
    col = parts.fc2.weight[:, idx]  # d x G
    corr = act.permute(2, 0, 1).unsqueeze(-1) * col.t()[:, None, None, :]  # G x B x T x d
    fc2_out = (teacher.fc2_out[layer].unsqueeze(0) - corr).reshape(-1, *teacher.fc2_out[layer].shape[1:])
    first = [m for m in (parts.fc1, parts.up) if m is not None]
    saved = {m: m.forward for m in (*first, parts.fc2)}
    if parts.attn is not None:
        # an attention reduced to its bias (a layer pruned to no heads earlier) is None here: it is cheap, and no
        # neuron mask changes it, so it simply runs on the stacked copies
        attn_out = _rep(teacher.attn_out[layer], copies)
        saved[parts.attn] = parts.attn.forward
        parts.attn.forward = lambda *a, **k: attn_out
    for m in first:
        m.forward = lambda x: x[..., :2]  # two columns: a fused gated MLP (ModernBERT's Wi) still splits into input and gate
    parts.fc2.forward = lambda x: fc2_out
    try:
        yield
    finally:
        for m in saved:
            del m.forward  # back to the class's forward



# --------------------------------------------------------------------------------------------


@torch.no_grad()
def exact_unit_scores(adapter: Adapter, teacher: Teacher, units: Iterable[tuple[str, int, int]], settings: ScoreSettings, progress: Progress | None = None, shortcut_ok: bool = True) -> list[tuple[float, float]]:
    """Exact scores of ``units``: reuse the teacher's block inputs, ``group`` masked copies a
    pass, and (neurons) the rank-one shortcut through the unit's own block."""
    units = list(units)
    order = sorted(range(len(units)), key=lambda i: (units[i][1], units[i][0]))
    results: list[tuple[float, float] | None] = [None] * len(units)
    g = max(1, settings.group)
    done = 0
    with UnitMasks(adapter) as masks, BlockRecorder(adapter) as rec:
        i = 0
        while i < len(order):
            kind, layer = units[order[i]][0], units[order[i]][1]
            chunk = [order[i]]
            while len(chunk) < g and i + len(chunk) < len(order) and units[order[i + len(chunk)]][:2] == (kind, layer):
                chunk.append(order[i + len(chunk)])
            copies = len(chunk)
            n = adapter.num_heads(layer) if kind == "head" else adapter.num_neurons(layer)
            m = torch.ones(copies, n)
            for c, u in enumerate(chunk):
                m[c, units[u][2]] = 0.0
            masks.clear()
            hidden = _rep(teacher.block_inputs[layer], copies)
            shortcut = kind == "neuron" and shortcut_ok
            if shortcut:
                ctx = neuron_shortcut(adapter, teacher, layer, [units[u][2] for u in chunk])
            else:
                (masks.heads if kind == "head" else masks.neurons)[layer] = m.repeat_interleave(teacher.batch, dim=0)
                ctx = nullcontext()
            with start_at(adapter, layer, hidden), ctx:
                out = adapter.forward(_repeat(teacher.inputs, copies))
            md, kl = _distances(adapter, teacher, rec, out, layer, copies, settings)
            for c, u in enumerate(chunk):
                results[u] = (float(md[c]), float(kl[c]))
            i += copies
            done += copies
            if progress:
                progress(done, len(units))
    return results  # type: ignore[return-value]


def exact_scores(adapter: Adapter, inputs: dict[str, torch.Tensor], settings: ScoreSettings | None = None, progress: Progress | None = None, kinds: tuple[str, ...] = ("head", "neuron")) -> RawScores:
    settings = settings or ScoreSettings()
    t0 = time.perf_counter()
    teacher = record_teacher(adapter, inputs, settings)
    units = [u for u in all_units(adapter) if u[0] in kinds]
    vals = exact_unit_scores(adapter, teacher, units, settings, progress)
    raw = empty_scores(adapter)
    for (kind, layer, idx), (md, kl) in zip(units, vals):
        (raw.head_md if kind == "head" else raw.neuron_md)[layer][idx] = md
        (raw.head_kl if kind == "head" else raw.neuron_kl)[layer][idx] = kl
    raw.method, raw.seconds = "exact", time.perf_counter() - t0
    raw.info = {"units": len(units), "group": settings.group}
    return raw


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    r = spearmanr(a.numpy(), b.numpy()).statistic
    return float(r) if not math.isnan(r) else 0.0
