"""Baseline unit scorers, interchangeable with OPTIN (issue #7).

Every scorer returns :class:`UnitScores`: per-layer head scores and neuron scores, higher = more
important, in exactly the shape OPTIN's ``RawScores.combined()`` gives, so they go through the same
:func:`~optin_deploy.core.selection.select` and :func:`~optin_deploy.core.surgery.apply_plan`.

* ``random`` - seeded uniform noise, scaled by the unit's weight count (see :func:`random_scores`).
* ``magnitude`` - squared L2 norm of the unit's weights (see :func:`magnitude_scores`).
* ``fisher`` - diagonal empirical Fisher information of mask variables, the importance Kwon et al.
  2022 ("A Fast Post-Training Pruning Framework for Transformers") use for their mask search
  (see :func:`fisher_scores`). Only the scoring step is reproduced: Kwon's mask rearrangement
  (block-diagonal Fisher) and mask tuning (layer-wise least squares) are not.
* ``optin`` - OPTIN trajectory scores through the score cache (:func:`~optin_deploy.core.score_cache.score_model`,
  the one OPTIN entry point; exact or fast).

:data:`SCORERS` maps these names to callables with one signature::

    scorer(model_or_adapter, inputs, *, labels=None, seed=0, progress=None, **options) -> UnitScores

``inputs`` is one calibration batch (a dict of model inputs) or an iterable of batches (dicts or
``(inputs, labels)`` pairs); scorers that need no data (random, magnitude) ignore it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..adapters import get_adapter
from ..adapters.base import Adapter, LayerParts
from .masking import UnitMasks

Progress = Callable[[int, int], None]
Batches = Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor] | tuple[Mapping[str, torch.Tensor], torch.Tensor | None]]


@dataclass
class UnitScores:
    """Per-layer head and neuron scores (higher = more important) from one scorer."""

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    method: str
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def __iter__(self):  # ``heads, neurons = scores``
        return iter((self.heads, self.neurons))

    def to_dict(self) -> dict:
        return {
            "heads": [t.tolist() for t in self.heads],
            "neurons": [t.tolist() for t in self.neurons],
            "method": self.method,
            "seconds": self.seconds,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "UnitScores":
        t = lambda xs: [torch.tensor(x, dtype=torch.float64) for x in xs]  # noqa: E731
        return cls(t(d["heads"]), t(d["neurons"]), d["method"], d.get("seconds", 0.0), d.get("info", {}))


def _adapter(model_or_adapter: nn.Module | Adapter) -> Adapter:
    return model_or_adapter if isinstance(model_or_adapter, Adapter) else get_adapter(model_or_adapter)


# ------------------------------------------------------------------------------------------ weights


def _head_rows(parts: LayerParts, n_heads: int, dh: int, h: int) -> list[tuple[nn.Linear, torch.Tensor]]:
    """(linear, row indices) of head ``h``'s query/key/value outputs."""
    rows = torch.arange(h * dh, (h + 1) * dh)
    if parts.qkv is not None:
        width = n_heads * dh
        return [(parts.qkv, torch.cat([rows + j * width for j in range(3)]))]
    return [(lin, rows) for lin in (parts.q, parts.k, parts.v)]


def unit_weight_counts(adapter: Adapter) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Number of weights (incl. biases) that removing each head / neuron deletes."""
    heads, neurons = [], []
    for layer in range(adapter.num_layers):
        parts = adapter.layer_parts(layer)
        nh, nf = adapter.num_heads(layer), adapter.num_neurons(layer)
        if nh:
            dh = adapter.layer_head_dim(layer)
            per_head = sum(len(r) * (l.in_features + (l.bias is not None)) for l, r in _head_rows(parts, nh, dh, 0))
            per_head += dh * parts.out_proj.out_features
        else:
            per_head = 0
        # a fused gated first linear (ModernBERT's Wi) holds each neuron as one row per stacked block
        per_neuron = sum((l.out_features // nf) * (l.in_features + (l.bias is not None)) for l in (parts.fc1, parts.up) if l is not None) + parts.fc2.out_features if nf else 0
        heads.append(torch.full((nh,), float(per_head), dtype=torch.float64))
        neurons.append(torch.full((nf,), float(per_neuron), dtype=torch.float64))
    return heads, neurons


def random_scores(model_or_adapter: nn.Module | Adapter, seed: int = 0, *, scale_by_size: bool = True) -> UnitScores:
    """Seeded uniform random scores.

    With ``scale_by_size`` (the default) a unit's score is ``U(0,1) x (its weight count)``, so the
    score per unit of cost has the same distribution for heads and neurons and selection drops
    both kinds in about equal proportion. Plain ``U(0,1)`` would make a head (about 70 neurons'
    cost) worth one neuron's score, and selection would remove every head before any neuron.
    """
    t0 = time.perf_counter()
    a = _adapter(model_or_adapter)
    g = torch.Generator().manual_seed(int(seed))
    wh, wn = unit_weight_counts(a)
    heads, neurons = [], []
    for layer in range(a.num_layers):
        h = torch.rand(a.num_heads(layer), generator=g, dtype=torch.float64)
        n = torch.rand(a.num_neurons(layer), generator=g, dtype=torch.float64)
        heads.append(h * wh[layer] if scale_by_size else h)
        neurons.append(n * wn[layer] if scale_by_size else n)
    return UnitScores(heads, neurons, "random", time.perf_counter() - t0, {"seed": int(seed), "scale_by_size": scale_by_size})


@torch.no_grad()
def magnitude_scores(model_or_adapter: nn.Module | Adapter, *, squared: bool = True) -> UnitScores:
    """Weight magnitude of each unit.

    Head: the q/k/v weight rows and biases of the head plus its input columns of the attention
    output projection. Neuron: its ``fc1`` row and bias plus its ``fc2`` column. The score is the
    squared L2 norm over those weights (``squared=False``: the L2 norm). Squared norms add up over
    weights, so a head's score is on the same per-weight scale as a neuron's, which keeps the
    head/neuron trade-off in :func:`select` meaningful; the order within a kind is the same either way.
    """
    t0 = time.perf_counter()
    a = _adapter(model_or_adapter)
    heads, neurons = [], []
    for layer in range(a.num_layers):
        parts = a.layer_parts(layer)
        nh, nf = a.num_heads(layer), a.num_neurons(layer)
        dh = a.layer_head_dim(layer)
        hs = torch.zeros(nh, dtype=torch.float64)
        if nh:
            w_out = parts.out_proj.weight.double()  # d x (nh*dh)
            out_cols = (w_out ** 2).sum(0).reshape(nh, dh).sum(1)
            row_sq = {}  # per linear: squared norm of each output row incl. its bias
            for h in range(nh):
                s = out_cols[h]
                for lin, rows in _head_rows(parts, nh, dh, h):
                    if id(lin) not in row_sq:
                        r = (lin.weight.double() ** 2).sum(1)
                        row_sq[id(lin)] = r + lin.bias.double() ** 2 if lin.bias is not None else r
                    s = s + row_sq[id(lin)][rows].sum()
                hs[h] = s
        ns = torch.zeros(nf, dtype=torch.float64)
        if nf:
            rows = (parts.fc1.weight.double() ** 2).sum(1)
            if parts.fc1.bias is not None:
                rows = rows + parts.fc1.bias.double() ** 2
            # a fused gated first linear (ModernBERT's Wi: input rows, then gate rows) folds per neuron
            ns = rows.reshape(-1, nf).sum(0) + (parts.fc2.weight.double() ** 2).sum(0)
            if parts.up is not None:  # a gated MLP's neuron is also a row of the up projection
                ns = ns + (parts.up.weight.double() ** 2).sum(1)
                if parts.up.bias is not None:
                    ns = ns + parts.up.bias.double() ** 2
        heads.append(hs if squared else hs.sqrt())
        neurons.append(ns if squared else ns.sqrt())
    return UnitScores(heads, neurons, "magnitude", time.perf_counter() - t0, {"squared": squared})


# ------------------------------------------------------------------------------------------- Fisher


def _iter_batches(batches: Batches, labels: torch.Tensor | None) -> Iterable[tuple[dict, torch.Tensor | None]]:
    if isinstance(batches, Mapping):
        yield dict(batches), labels
        return
    if labels is not None:
        raise ValueError("labels go with a single input batch; pass (inputs, labels) pairs for several batches")
    for b in batches:
        if isinstance(b, Mapping):
            yield dict(b), None
        else:
            inp, lab = b
            yield dict(inp), lab


def _chunks(inputs: dict, labels: torch.Tensor | None, size: int):
    n = next(iter(inputs.values())).shape[0]
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in inputs.items()}, None if labels is None else labels[i : i + size]


def _per_sample_loss(logits: torch.Tensor, labels: torch.Tensor | None, label_mode: str, generator: torch.Generator | None) -> tuple[torch.Tensor, str]:
    """One loss per sample (``B``) and a word on what the target was."""
    if logits.shape[-1] == 1 and (labels is None or labels.is_floating_point()):  # regression
        out = logits[:, 0]
        if labels is not None:
            return 0.5 * (out - labels.to(out)) ** 2, "labels"
        # Gaussian model with unit variance, target sampled from it: E[(y - f)^2 (df)^2] = (df)^2.
        return out, "model-gaussian"
    if labels is not None:
        return F.cross_entropy(logits, labels.long(), reduction="none"), "labels"
    if label_mode == "predicted":
        target = logits.detach().argmax(-1)
    elif label_mode == "sampled":  # the "true" Fisher: y ~ p(y | x)
        target = torch.multinomial(F.softmax(logits.detach().float(), -1), 1, generator=generator)[:, 0]
    else:
        raise ValueError(f"label_mode must be 'predicted' or 'sampled', not {label_mode!r}")
    return F.cross_entropy(logits, target, reduction="none"), label_mode


def fisher_scores(
    model_or_adapter: nn.Module | Adapter,
    batches: Batches,
    labels: torch.Tensor | None = None,
    *,
    label_mode: str = "predicted",
    chunk: int = 32,
    seed: int = 0,
    progress: Progress | None = None,
) -> UnitScores:
    """Diagonal empirical Fisher of head / neuron mask variables (Kwon et al. 2022).

    ``I_u = sum_samples (d loss_i / d m_u)^2`` at ``m = 1``, where ``loss_i`` is the per-sample
    cross-entropy (0.5 * squared error for regression) against the true label when ``labels`` are
    given (Kwon's setting), else against the model's own predicted class (``label_mode="predicted"``,
    default) or a class sampled from the model's softmax (``"sampled"``, the true Fisher).

    Per-sample gradients are exact and cost one forward and one backward pass per ``chunk`` of
    samples: the mask leaves are ``(B, n_units)`` rows of ones, one row per sample. Samples of a
    batch do not interact (eval mode, no batch norm), so the gradient of the summed loss with
    respect to row ``i`` is the gradient of ``loss_i`` alone.
    """
    t0 = time.perf_counter()
    a = _adapter(model_or_adapter)
    model = a.model
    L = a.num_layers
    heads = [torch.zeros(a.num_heads(l), dtype=torch.float64) for l in range(L)]
    neurons = [torch.zeros(a.num_neurons(l), dtype=torch.float64) for l in range(L)]
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    g = torch.Generator().manual_seed(int(seed))
    targets: set[str] = set()
    samples = 0
    pending = []
    for inp, lab in _iter_batches(batches, labels):
        pending += list(_chunks(inp, lab, max(1, chunk)))
    dtype = next(model.parameters()).dtype
    try:
        model.eval()
        for p, _ in flags:
            p.requires_grad_(False)
        with UnitMasks(a) as masks:
            for ci, (x, y) in enumerate(pending):
                b = next(iter(x.values())).shape[0]
                hm = [torch.ones(b, heads[l].numel(), dtype=dtype, requires_grad=True) if heads[l].numel() else None for l in range(L)]
                nm = [torch.ones(b, neurons[l].numel(), dtype=dtype, requires_grad=True) if neurons[l].numel() else None for l in range(L)]
                masks.heads, masks.neurons = list(hm), list(nm)
                logits = a.logits(a.forward(x))
                if logits is None:
                    raise ValueError("Fisher scores need a model with a task head (logits)")
                loss, what = _per_sample_loss(logits, y, label_mode, g)
                targets.add(what)
                leaves = [m for m in hm + nm if m is not None]
                grads = torch.autograd.grad(loss.sum(), leaves, allow_unused=True)
                it = iter(grads)
                for l in range(L):
                    if hm[l] is not None:
                        gr = next(it)
                        if gr is not None:
                            heads[l] += (gr.double() ** 2).sum(0)
                for l in range(L):
                    if nm[l] is not None:
                        gr = next(it)
                        if gr is not None:
                            neurons[l] += (gr.double() ** 2).sum(0)
                masks.clear()
                samples += b
                if progress:
                    progress(ci + 1, len(pending))
    finally:
        for p, f in flags:
            p.requires_grad_(f)
        model.train(was_training)
    info = {"samples": samples, "target": "+".join(sorted(targets)), "chunk": chunk, "label_mode": label_mode}
    return UnitScores(heads, neurons, "fisher", time.perf_counter() - t0, info)


def fisher_bruteforce(model_or_adapter: nn.Module | Adapter, inputs: Mapping[str, torch.Tensor], labels: torch.Tensor | None = None, label_mode: str = "predicted") -> UnitScores:
    """The same Fisher, one sample at a time with shared ``(n_units,)`` mask leaves (for tests)."""
    a = _adapter(model_or_adapter)
    L = a.num_layers
    n = next(iter(inputs.values())).shape[0]
    heads = [torch.zeros(a.num_heads(l), dtype=torch.float64) for l in range(L)]
    neurons = [torch.zeros(a.num_neurons(l), dtype=torch.float64) for l in range(L)]
    dtype = next(a.model.parameters()).dtype
    with UnitMasks(a) as masks:
        for i in range(n):
            hm = [torch.ones(heads[l].numel(), dtype=dtype, requires_grad=True) for l in range(L)]
            nm = [torch.ones(neurons[l].numel(), dtype=dtype, requires_grad=True) for l in range(L)]
            masks.heads, masks.neurons = list(hm), list(nm)
            logits = a.logits(a.forward({k: v[i : i + 1] for k, v in inputs.items()}))
            loss, _ = _per_sample_loss(logits, None if labels is None else labels[i : i + 1], label_mode, None)
            grads = torch.autograd.grad(loss.sum(), hm + nm)
            for l in range(L):
                heads[l] += grads[l].double() ** 2
                neurons[l] += grads[L + l].double() ** 2
    return UnitScores(heads, neurons, "fisher-bruteforce")


# -------------------------------------------------------------------------------------------- OPTIN


def optin_scores(
    model_or_adapter: nn.Module | Adapter,
    inputs: Mapping[str, torch.Tensor],
    *,
    method: str = "exact",
    settings: Any = None,
    lam: float | None = None,
    progress: Progress | None = None,
    **options,
) -> UnitScores:
    """OPTIN scores ``md + lambda_kl * kl`` through :func:`optin_deploy.core.score_cache.score_model` (the one
    OPTIN entry point: cached; ``method="exact"|"fast"``; options ``probes``, ``kl_probes``, ``cache``),
    as :class:`UnitScores` like every other scorer."""
    from .score_cache import score_model
    from .scoring import ScoreSettings

    t0 = time.perf_counter()
    a = _adapter(model_or_adapter)
    settings = settings or ScoreSettings()
    lam = settings.lam if lam is None else lam
    unknown = sorted(set(options) - {"probes", "kl_probes", "cache"})
    if unknown:
        raise TypeError(f"optin_scores takes no option {', '.join(unknown)}")
    if method not in ("exact", "fast"):
        raise ValueError(f"unknown OPTIN method {method!r}; use 'exact' or 'fast'")
    raw = score_model(a.root, dict(inputs), method, settings, progress=progress, **options)
    via = "score_cache.score_model"
    heads, neurons = raw.combined(lam)
    info = {"via": via, "method": raw.method, "raw_seconds": raw.seconds, **{k: v for k, v in raw.info.items() if isinstance(v, (int, float, str, bool))}}
    info.update(settings.key())
    seconds = time.perf_counter() - t0
    if raw.info.get("cached"):
        seconds = raw.seconds  # the time the cached scores took to compute
        info["cached"] = True
    return UnitScores([h.double() for h in heads], [n.double() for n in neurons], "optin", seconds, info)


# ----------------------------------------------------------------------------------------- registry


def _random(model, inputs=None, *, labels=None, seed=0, progress=None, **options) -> UnitScores:
    return random_scores(model, seed, **options)


def _magnitude(model, inputs=None, *, labels=None, seed=0, progress=None, **options) -> UnitScores:
    return magnitude_scores(model, **options)


def _fisher(model, inputs, *, labels=None, seed=0, progress=None, **options) -> UnitScores:
    return fisher_scores(model, inputs, labels, seed=seed, progress=progress, **options)


def _optin(model, inputs, *, labels=None, seed=0, progress=None, **options) -> UnitScores:
    from .scoring import ScoreSettings

    settings = options.pop("settings", None) or ScoreSettings(seed=seed)
    return optin_scores(model, inputs, settings=settings, progress=progress, **options)


Scorer = Callable[..., UnitScores]

SCORERS: dict[str, Scorer] = {
    "optin": _optin,
    "random": _random,
    "magnitude": _magnitude,
    "fisher": _fisher,
}

DESCRIPTIONS: dict[str, str] = {
    "optin": "OPTIN trajectory scores (manifold distillation + KL), the project's method",
    "random": "seeded random scores, scaled by unit size",
    "magnitude": "squared L2 norm of the unit's weights",
    "fisher": "diagonal empirical Fisher of mask variables (Kwon et al. 2022); labels if given, else predicted labels",
}


def score_units(name: str, model_or_adapter: nn.Module | Adapter, inputs: Batches | None = None, *, labels: torch.Tensor | None = None,
                seed: int = 0, progress: Progress | None = None, **options) -> UnitScores:
    """Run scorer ``name`` (one of :data:`SCORERS`)."""
    try:
        fn = SCORERS[name]
    except KeyError:
        from ..errors import OptinError

        raise OptinError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}") from None
    if inputs is None and name in ("optin", "fisher"):
        raise ValueError(f"scorer {name!r} needs calibration inputs")
    return fn(model_or_adapter, inputs, labels=labels, seed=seed, progress=progress, **options)
