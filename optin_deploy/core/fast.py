"""Fast OPTIN scores: a Gauss-Newton / Hutchinson estimate for FFN neurons, exact heads.

The MD part of a unit's score is ``||r(1 - e_u)||^2`` with ``r(m) = vec(G_t - G_s(m))`` the Gram
residuals of every block, zero at ``m = 1``. To second order that is ``||J e_u||^2`` with
``J = dr/dm``, so all neurons' scores at once are ``diag(J^T J)``. Hutchinson's estimator gives it
from one forward pass that keeps its graph and one backward pass per random probe ``z``: the
gradient of ``<z, r(m)>`` w.r.t. the mask leaves at ``m = 1`` is ``J^T z`` and
``E[(J^T z)^2] = diag(J^T J)`` for Rademacher ``z``.

The KL part gets the same treatment through its own second-order residual: with
``p = softmax(z_t / T)`` and ``D = z_s - z_t``, ``T^2 KL(p || softmax(z_s/T)) ~ ||r_kl||^2`` where
``r_kl = sqrt(p / 2) * (D - <p, D>)`` per sample. For a sentence-embedding model the output term
``1 - cos(e_t, e_s)`` is exactly ``||r||^2`` with ``r = (n(e_s) - n(e_t)) / sqrt(2)`` (``n``: L2
normalisation), zero at ``m = 1``, so the same estimator applies.

Heads are few (72 in MiniLM), so they are scored exactly (:func:`.scoring.exact_unit_scores`).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from ..adapters.base import Adapter
from .masking import BlockRecorder, UnitMasks
from .scoring import Progress, RawScores, ScoreSettings, empty_scores, all_units, exact_unit_scores, gram, record_teacher


def _rademacher(shape, generator) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).float().mul_(2).sub_(1)


def hutchinson_neuron_scores(adapter: Adapter, teacher, settings: ScoreSettings, probes: int = 48, kl_probes: int = 16, progress: Progress | None = None):
    """Estimated per-neuron MD and KL terms (lists of per-layer tensors)."""
    model = adapter.model
    n = adapter.num_layers
    leaves = [torch.ones(adapter.num_neurons(l), requires_grad=True) for l in range(n)]
    live = [l for l in range(n) if leaves[l].numel() > 0]
    req = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(settings.seed + 1)
    md_acc = [torch.zeros_like(x, dtype=torch.float64) for x in leaves]
    kl_acc = [torch.zeros_like(x, dtype=torch.float64) for x in leaves]
    try:
        with torch.enable_grad(), UnitMasks(adapter) as masks, BlockRecorder(adapter) as rec:
            masks.neurons = list(leaves)
            out = adapter.forward(teacher.inputs)
            r_md = torch.cat([(gram(rec.outputs[k], teacher.positions[k], 1)[0] - teacher.grams[k]).flatten() for k in range(n)])
            r_kl = None
            if teacher.logits is not None:
                zs = adapter.logits(out)
                if adapter.output_kind == "embedding":
                    # 1 - cos(e_t, e_s) = ||n(e_s) - n(e_t)||^2 / 2 exactly: a residual that is zero at m = 1
                    r_kl = (F.normalize(zs, dim=-1) - F.normalize(teacher.logits, dim=-1)) * 0.5 ** 0.5
                else:
                    p = F.softmax(teacher.logits / settings.temperature, dim=-1)
                    d = zs - teacher.logits
                    r_kl = (p / 2).sqrt() * (d - (p * d).sum(-1, keepdim=True))
            if not live:  # every MLP emptied (an already-pruned model): no neuron to score, nothing depends on a leaf
                r_md = r_kl = None
            total = probes + (kl_probes if r_kl is not None else 0)
            done = 0
            for residual, count, acc in ((r_md, probes, md_acc), (r_kl, kl_probes, kl_acc)):
                if residual is None:
                    continue
                for _ in range(count):
                    z = _rademacher(residual.shape, g)
                    grads = torch.autograd.grad(residual, [leaves[l] for l in live], grad_outputs=z, retain_graph=True)
                    for l, gr in zip(live, grads):
                        acc[l] += gr.double() ** 2
                    done += 1
                    if progress:
                        progress(done, total)
    finally:
        for p, r in zip(model.parameters(), req):
            p.requires_grad_(r)
    md = [a / max(probes, 1) for a in md_acc]
    kl = [a / max(kl_probes, 1) for a in kl_acc]
    return md, kl


def fast_scores(adapter: Adapter, inputs: dict[str, torch.Tensor], settings: ScoreSettings | None = None, probes: int = 48, kl_probes: int = 16,
                progress: Progress | None = None) -> RawScores:
    """Exact head scores + Hutchinson neuron scores."""
    settings = settings or ScoreSettings()
    t0 = time.perf_counter()
    teacher = record_teacher(adapter, inputs, settings)
    heads = [u for u in all_units(adapter) if u[0] == "head"]
    n_total = len(heads) + probes + kl_probes

    def head_progress(done, total):
        if progress:
            progress(done, n_total)

    vals = exact_unit_scores(adapter, teacher, heads, settings, head_progress)
    raw = empty_scores(adapter)
    for (kind, layer, idx), (md, kl) in zip(heads, vals):
        raw.head_md[layer][idx] = md
        raw.head_kl[layer][idx] = kl

    def neuron_progress(done, total):
        if progress:
            progress(len(heads) + done, n_total)

    raw.neuron_md, raw.neuron_kl = hutchinson_neuron_scores(adapter, teacher, settings, probes, kl_probes, neuron_progress)
    raw.method, raw.seconds = "fast", time.perf_counter() - t0
    raw.info = {"probes": probes, "kl_probes": kl_probes, "heads": "exact", "neurons": "hutchinson"}
    return raw
