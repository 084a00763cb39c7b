"""Optional step after surgery: refit the kept units' output weights, layer by layer, by damped least squares.

OPTIN decides *which* heads and neurons to keep. Surgery alone then drops their contributions and
leaves the rest untouched; this retraining-free step re-fits what is left so that each pruned
sublayer (the attention or the MLP of block ``l``) adds to the residual stream what the dense
sublayer added, on the unlabelled calibration batch:

* target: the dense sublayer's output on the dense model's input, plus the drift of the residual
  stream (dense minus pruned residual), so the sum ``residual + sublayer`` is what gets matched;
* inputs: the *pruned* model's own unit outputs in that block (head context vectors, MLP
  activations), after the earlier blocks were already refitted;
* unknowns, ``fit="weights"`` (the default): the kept input columns ``W'`` of the output projection
  (attention output projection / second MLP linear), by ridge regression towards the original
  columns, ``min ||X W'^T - B||^2 + lam ||W' - W||^2`` (the least-squares weight update of
  OBS/ZipLM-style structured pruning); ``fit="affine"``: the same with the projection's bias as one more unknown
  (an input column of ones, damped towards the original bias), so a mean shift left by the removed units can be
  absorbed where it arises; ``fit="scales"``: one scale per kept unit (Kwon et al. 2022's
  mask tuning), ``min ||sum_u m_u c_u - b||^2 + lam ||m - 1||^2``, whose neuron Gram matrix is
  ``(A^T A) * (W2^T W2)`` so no ``tokens x hidden x units`` tensor is built;
* ``lam = damp * mean(diag(X^T X))``; both are solved in closed form from the normal equations over
  the real (non-padding) tokens.

Because plain surgery is a feasible point of the damped objective, the fitted error on the
calibration batch is never larger than plain surgery's (tested). Only the output projections' kept
columns change: head counts, widths, cost and exporters are untouched. Sublayers that lost no unit
are left as they are. Like the scores, this needs no labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..adapters import get_adapter

FITS = ("weights", "affine", "scales")
DEFAULT_FIT, DEFAULT_DAMP = "weights", 1.0  # chosen on validation / held-out training data (benchmarks/reconstruct.py)


@dataclass
class ReconstructReport:
    damp: float
    fit: str = DEFAULT_FIT
    seconds: float = 0.0
    layers: list[dict] = field(default_factory=list)  # one row per refitted sublayer

    def to_dict(self) -> dict:
        return {"fit": self.fit, "damp": self.damp, "seconds": round(self.seconds, 2), "layers": self.layers}


class _Captured(Exception):
    """Raised by the hook on block ``layer``: everything needed is recorded, the later blocks need not run."""


def _clone(out):
    """A copy of a block's output (a tensor, or tuples / lists / dicts of them) that later passes cannot alter."""
    if isinstance(out, torch.Tensor):
        return out.detach().clone()
    if isinstance(out, (tuple, list)):
        return type(out)(_clone(o) for o in out)
    if isinstance(out, dict):
        return {k: _clone(v) for k, v in out.items()}
    return out


_MISSING = object()


class _Replay:
    """Outputs of the student's blocks whose refit is finished, so a later capture does not run them again.

    Refitting block ``l`` needs the student's activations in block ``l`` given the already refitted blocks
    before it. Running the model from the embeddings each time costs ``L (L + 1)`` block passes over the
    calibration batch; with the finished blocks replayed from their recorded outputs (same weights, same
    inputs, so the same values) it costs about ``3 L``. A block is recorded the first time it runs in its
    final state, and from then on returns that output without computing (an instance ``forward``, removed
    after the pass)."""

    def __init__(self, blocks):
        self.blocks = list(blocks)
        self.outputs: dict[int, object] = {}

    def arm(self, final_below: int) -> list:
        """Before a pass: blocks ``< final_below`` are final; replay the recorded ones, record the others.
        Returns what :meth:`disarm` undoes."""
        undo = []
        for k in range(final_below):
            b = self.blocks[k]
            if k in self.outputs:
                prev = b.__dict__.get("forward", _MISSING)
                b.forward = (lambda o: (lambda *args, **kwargs: _clone(o)))(self.outputs[k])
                undo.append(("forward", b, prev))
            else:
                undo.append(("hook", b.register_forward_hook(lambda m, i, o, k=k: self.outputs.__setitem__(k, _clone(o))), None))
        return undo

    @staticmethod
    def disarm(undo: list) -> None:
        for kind, obj, prev in undo:
            if kind == "hook":
                obj.remove()
            elif prev is _MISSING:
                del obj.forward
            else:
                obj.forward = prev


def _capture(model: nn.Module, inputs: dict[str, torch.Tensor], layer: int, replay: _Replay | None = None,
             attention_only: bool = False) -> dict[str, torch.Tensor]:
    """Run ``model`` up to block ``layer`` (and no further), recording its input, head contexts,
    attention output, MLP residual, activations and MLP output. ``replay``: blocks before ``layer``
    are final; reuse / record their outputs (:class:`_Replay`). ``attention_only``: stop as soon as
    the attention output projection has run (its input, head contexts and output are all a refit of
    the attention needs; the rest of the block, most of its work, is skipped)."""
    a = get_adapter(model)
    parts = a.layer_parts(layer)
    block = a.blocks()[layer]
    out: dict[str, torch.Tensor] = {}

    def stop(*_):
        raise _Captured

    handles = [block.register_forward_pre_hook(
        lambda m, args, kwargs: out.__setitem__("x", args[0] if args else kwargs["hidden_states"]), with_kwargs=True),
        block.register_forward_hook(stop)]
    if parts.out_proj is not None:
        def attention_done(m, i, o):
            out.update(ctx=i[0], attn_out=o)
            if attention_only:
                raise _Captured

        handles.append(parts.out_proj.register_forward_hook(attention_done))
    if parts.fc2 is not None and not attention_only:
        handles.append(a.mlp_residual(layer).register_forward_pre_hook(lambda m, i: out.__setitem__("y", i[0])))
        handles.append(parts.fc2.register_forward_hook(lambda m, i, o: out.update(act=i[0], mlp_out=o)))
    undo = replay.arm(layer) if replay is not None else []
    try:
        with torch.no_grad():
            a.forward(inputs)
    except _Captured:
        pass
    finally:
        for h in handles:
            h.remove()
        _Replay.disarm(undo)
    return out


CHUNKS = 4  # a text calibration batch is refitted in this many chunks of similar lengths


def length_chunks(adapter, inputs: dict[str, torch.Tensor], chunks: int = CHUNKS) -> list[dict[str, torch.Tensor]]:
    """A text calibration batch as ``chunks`` batches of samples of similar lengths, each cut to its longest sample.

    A batch padded to its longest sample spends most of a forward pass on padding when lengths vary (the default
    sentiment batch: 128 samples padded to 64 tokens). The refit only reads real tokens, and a real token's
    activations do not depend on how much padding follows it, so the captures can run on the chunks and be
    concatenated. Only right-padded text batches are cut (every other batch is returned whole)."""
    mask = inputs.get("attention_mask") if adapter.modality == "text" else None
    if mask is None or mask.dim() != 2 or mask.shape[0] < 2:
        return [inputs]
    m = mask.bool()
    lens = m.sum(1)
    right_padded = bool((m == (torch.arange(m.shape[1])[None, :] < lens[:, None])).all())
    if not right_padded:
        return [inputs]
    order = torch.argsort(lens, stable=True)
    out = []
    for idx in torch.tensor_split(order, min(chunks, len(order))):
        if len(idx) == 0:
            continue
        idx = idx.sort().values
        width = max(int(lens[idx].max()), 1)
        out.append({k: (v[idx][:, :width] if v.dim() >= 2 and v.shape[:2] == mask.shape else v[idx] if v.shape[:1] == mask.shape[:1] else v)
                    for k, v in inputs.items()})
    return out


def _solve(G: torch.Tensor, rhs: torch.Tensor, prior: torch.Tensor, damp: float) -> torch.Tensor:
    """``argmin_m m^T G m - 2 m^T rhs + lam ||m - prior||^2`` with ``lam = damp * mean(diag(G))``
    (``rhs`` and ``prior``: vectors or matrices with one column per output)."""
    lam = damp * float(G.diagonal().mean().clamp_min(1e-30))
    return torch.linalg.solve(G + lam * torch.eye(G.shape[0], dtype=G.dtype), rhs + lam * prior)


def _error(G: torch.Tensor, r: torch.Tensor, bb: float, m: torch.Tensor) -> float:
    """``||A m - b||^2`` from the normal-equation pieces."""
    return float(m @ G @ m - 2 * m @ r + bb)


def _scaled(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return t if scale is None else t * scale.to(t.dtype)


def _unscaled(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """A residual-stream difference expressed before the branch scale (LayerScale)."""
    if scale is None:
        return t
    s = scale.to(t.dtype)
    return t / torch.where(s.abs() < 1e-12, torch.full_like(s, 1e-12), s)



def _fit_weights(X: torch.Tensor, B: torch.Tensor, W: torch.Tensor, damp: float, scale: torch.Tensor | None) -> tuple[torch.Tensor, float, float, float]:
    """Ridge least squares of the output projection's kept columns: ``X W'^T ~ B``, towards ``W``.

    ``X``: N x k unit outputs (head contexts or activations), ``B``: N x d target before the branch
    scale, ``W``: d x k. Returns the new ``W'`` and the relative errors before / after (in residual
    stream units) and the target's energy.
    """
    X, B, W = X.double(), B.double(), W.double()
    G, R = X.T @ X, X.T @ B  # k x k, k x d
    Wn = _solve(G, R, W.T, damp).T
    s2 = torch.ones(B.shape[1], dtype=B.dtype) if scale is None else scale.double() ** 2
    b2 = (B ** 2).sum(0)  # per output column

    def err(M: torch.Tensor) -> float:
        # ||(X M^T - B) s||^2 from the normal-equation pieces: d k^2 work instead of N k d
        return float((s2 * ((M @ G * M).sum(1) - 2 * (M * R.T).sum(1) + b2)).sum())

    bb = float((s2 * b2).sum()) or 1e-30
    return Wn, err(W) / bb, err(Wn) / bb, bb


def _fit_scales(X: torch.Tensor, b: torch.Tensor, W: torch.Tensor, damp: float, scale: torch.Tensor | None, group: int,
                row: dict) -> torch.Tensor:
    """One scale per kept unit (a unit = ``group`` consecutive input columns of ``W``, d x k), towards 1.

    Unit ``u`` contributes ``c_u = X_u W_u^T`` (times the branch scale); the Gram matrix is
    ``G_uv = <c_u, c_v>``, computed per pair of column groups as ``sum((X_u^T X_v) * (W_u^T W_v))``,
    so no tokens x hidden x units tensor is built. Fills ``row`` with the relative errors and the
    scales' range; returns the per-column scales (each unit's scale repeated ``group`` times).
    """
    X, W, b = X.double(), W.double(), b.double()
    Ws = W if scale is None else W * scale.double()[:, None]
    n = W.shape[1] // group
    XtX, WtW = X.T @ X, Ws.T @ Ws  # k x k each
    G = (XtX * WtW).reshape(n, group, n, group).sum((1, 3))
    r = (X * (b @ Ws)).sum(0).reshape(n, group).sum(1)
    bb = float((b ** 2).sum()) or 1e-30
    m = _solve(G, r, torch.ones_like(r), damp)
    row.update({"error_before": _error(G, r, bb, torch.ones_like(m)) / bb, "error_after": _error(G, r, bb, m) / bb,
                "scale_min": float(m.min()), "scale_max": float(m.max())})
    return m.repeat_interleave(group)


def reconstruct(teacher: nn.Module, student: nn.Module, inputs: dict[str, torch.Tensor], *, fit: str = DEFAULT_FIT, damp: float = DEFAULT_DAMP,
                progress=None, teacher_cache: dict | None = None) -> ReconstructReport:
    """Refit the kept units of ``student`` (a sliced copy of ``teacher``) in place; see the module doc.

    ``teacher_cache``: a dict owned by the caller for one ``(teacher, inputs)`` pair; the teacher's
    per-layer captures are kept there, so refitting several students of the same teacher on the same
    batch (a budget search) runs the teacher once per layer in all.
    """
    if damp <= 0:
        raise ValueError("damp must be > 0")
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    t0 = time.perf_counter()
    ta, sa = get_adapter(teacher), get_adapter(student)
    if ta.num_layers != sa.num_layers:
        raise ValueError("student and teacher have different depths")
    report = ReconstructReport(damp, fit)
    chunks = length_chunks(sa, inputs)
    replays, teacher_replays = [_Replay(sa.blocks()) for _ in chunks], [_Replay(ta.blocks()) for _ in chunks]

    def gather(model, layer: int, reps: list, keys: tuple, attention_only: bool = False) -> dict[str, torch.Tensor]:
        """Capture block ``layer`` chunk by chunk; per key, the rows the fit reads (real tokens, or every row of
        window attention), concatenated over the chunks in one order."""
        rows: dict[str, list] = {k: [] for k in keys}
        windows = not sa.attention_in_token_layout(layer)
        for batch, rep in zip(chunks, reps):
            out = _capture(model, batch, layer, rep, attention_only=attention_only)
            tok = sa.layer_token_mask(batch, layer)
            for k in keys:
                if k in out:
                    t = out[k]
                    rows[k].append(t.reshape(-1, t.shape[-1]) if windows and k in ("ctx", "attn_out") else t[tok])
        return {k: torch.cat(v) for k, v in rows.items() if v}

    for layer in range(sa.num_layers):
        parts = sa.layer_parts(layer)
        dh = sa.layer_head_dim(layer) if sa.num_heads(layer) else 1
        # (part, output projection, unit outputs, dense output, residual, units kept, units in the dense model)
        todo = [spec for spec in (
            ("attn", parts.out_proj, "ctx", "attn_out", "x", sa.num_heads(layer), ta.num_heads(layer)),
            ("mlp", parts.fc2, "act", "mlp_out", "y", sa.num_neurons(layer), ta.num_neurons(layer)),
        ) if spec[1] is not None and spec[5] < spec[6]]
        T = None
        if todo:
            T = teacher_cache.get(layer) if teacher_cache is not None else None
            if T is None:
                T = gather(teacher, layer, teacher_replays, ("x", "y", "attn_out", "mlp_out"))
                if teacher_cache is not None:
                    teacher_cache[layer] = T
        for part, lin, x_key, out_key, res_key, units, _ in todo:
            # after this block's earlier sublayer was refitted; the attention's refit needs nothing past its projection
            S = gather(student, layer, replays, (x_key, res_key), attention_only=part == "attn")
            scale = sa.branch_scale(layer, part)
            bias = lin.bias.detach() if lin.bias is not None else 0.0  # ModernBERT has no output biases
            row = {"layer": layer, "part": part, "units": units}
            if part == "attn" and not sa.attention_in_token_layout(layer):
                # window attention: its rows are windows of (shifted, padded) tokens, not the residual's
                # tokens, so the sublayer output itself is matched (no residual-drift term)
                drift = torch.zeros_like(T[out_key])
                row["drift"] = False
            else:
                drift = T[res_key] - S[res_key]
            new_bias = None
            if fit == "weights" or (fit == "affine" and lin.bias is None):  # no bias to fit (ModernBERT): the weights alone
                B = T[out_key] - bias + _unscaled(drift, scale)
                Wn, row["error_before"], row["error_after"], _ = _fit_weights(S[x_key], B, lin.weight.detach(), damp, scale)
                new_weight = Wn.to(lin.weight.dtype)
            elif fit == "affine":
                # the intercept column at the units' RMS scale, so the damping (a fraction of the mean diagonal) and
                # the pull towards the original bias weigh it like one more unit
                Xs = S[x_key]
                c = float((Xs.double() ** 2).mean().sqrt().clamp_min(1e-12))
                X = torch.cat([Xs, torch.full((Xs.shape[0], 1), c, dtype=Xs.dtype)], dim=1)
                Wb = torch.cat([lin.weight.detach(), lin.bias.detach()[:, None] / c], dim=1)
                B = T[out_key] + _unscaled(drift, scale)
                Wn, before, after, bb = _fit_weights(X, B, Wb, damp, scale)
                # relative to the same energy as the weights fit's (the target without the bias), so the rows compare
                bb_w = float((_scaled((B - bias).double(), scale) ** 2).sum()) or 1e-30
                row["error_before"], row["error_after"] = before * bb / bb_w, after * bb / bb_w
                new_weight, new_bias = Wn[:, :-1].to(lin.weight.dtype), (Wn[:, -1] * c).to(lin.bias.dtype)
            else:
                m = _fit_scales(S[x_key], _scaled(T[out_key] - bias, scale) + drift, lin.weight.detach(), damp, scale,
                                dh if part == "attn" else 1, row)
                new_weight = lin.weight.detach() * m.to(lin.weight.dtype)[None, :]
            report.layers.append(row)
            with torch.no_grad():
                lin.weight.copy_(new_weight)
                if new_bias is not None:
                    lin.bias.copy_(new_bias)
        if progress:
            progress(layer + 1, sa.num_layers)
    report.seconds = time.perf_counter() - t0
    return report
