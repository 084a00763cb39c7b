"""Optional step after surgery: refit the scale of every kept unit, layer by layer, by damped least squares.

OPTIN decides *which* heads and neurons to keep; this step (the "mask tuning" of Kwon et al. 2022,
retraining-free) decides *how much* of each kept unit to use so that each pruned sublayer reproduces
what the dense model added to its residual stream on the calibration batch.

For a pruned sublayer (the attention or the MLP of block ``l``) with kept units ``u``, its
contribution to the residual stream is ``sum_u m_u c_u(x) + bias``, where ``c_u`` is unit ``u``'s
part of the output projection (head ``h``: its columns of the output projection times its
context vectors; neuron ``j``: column ``j`` of the second MLP linear times its activation), ``x`` is
the *pruned* model's own input to the block, and ``m_u = 1`` is plain surgery. The target is the
dense model's sublayer output on the dense model's input, plus the drift of the residual stream
(dense minus pruned residual), so the sum ``residual + sublayer`` is what gets matched. Over the
real tokens of the calibration batch, ``m`` minimises

    || sum_u m_u c_u - b ||^2 + lam * || m - 1 ||^2,   lam = damp * mean_u ||c_u||^2

(ridge towards plain surgery), solved in closed form from the normal equations. For neurons the
Gram matrix is ``(A^T A) * (W2^T W2)`` (A: activations), so no ``tokens x hidden x units`` tensor is
ever built. Since ``m = 1`` is feasible, the fitted error is never larger than plain surgery's on
the calibration batch. Layers are refitted in order, each on the inputs produced by the layers
already refitted. The result is folded into the output projections' input columns: the structure
(head counts, widths) and hence the cost and the exporters are unchanged.

Only sublayers that lost units are refitted. Like the scores, this needs no labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..adapters import get_adapter


@dataclass
class ReconstructReport:
    damp: float
    seconds: float = 0.0
    layers: list[dict] = field(default_factory=list)  # one row per refitted sublayer

    def to_dict(self) -> dict:
        return {"damp": self.damp, "seconds": round(self.seconds, 2), "layers": self.layers}


def _capture(model: nn.Module, inputs: dict[str, torch.Tensor], layer: int) -> dict[str, torch.Tensor]:
    """One forward pass recording block ``layer``'s input, head contexts, attention output,
    MLP residual, activations and MLP output."""
    a = get_adapter(model)
    parts = a.layer_parts(layer)
    out: dict[str, torch.Tensor] = {}
    handles = [a.blocks()[layer].register_forward_pre_hook(
        lambda m, args, kwargs: out.__setitem__("x", args[0] if args else kwargs["hidden_states"]), with_kwargs=True)]
    if parts.out_proj is not None:
        handles.append(parts.out_proj.register_forward_hook(lambda m, i, o: out.update(ctx=i[0], attn_out=o)))
    if parts.fc2 is not None:
        handles.append(a.mlp_residual(layer).register_forward_pre_hook(lambda m, i: out.__setitem__("y", i[0])))
        handles.append(parts.fc2.register_forward_hook(lambda m, i, o: out.update(act=i[0], mlp_out=o)))
    try:
        with torch.no_grad():
            a.forward(inputs)
    finally:
        for h in handles:
            h.remove()
    return out


def _solve(G: torch.Tensor, r: torch.Tensor, damp: float) -> torch.Tensor:
    n = G.shape[0]
    lam = damp * float(G.diagonal().mean().clamp_min(1e-30))
    eye = torch.eye(n, dtype=G.dtype)
    return torch.linalg.solve(G + lam * eye, r + lam * torch.ones(n, dtype=G.dtype))


def _error(G: torch.Tensor, r: torch.Tensor, bb: float, m: torch.Tensor) -> float:
    """``||A m - b||^2`` from the normal-equation pieces."""
    return float(m @ G @ m - 2 * m @ r + bb)


def _scaled(t: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    return t if scale is None else t * scale.to(t.dtype)


def reconstruct(teacher: nn.Module, student: nn.Module, inputs: dict[str, torch.Tensor], *, damp: float = 0.1,
                progress=None) -> ReconstructReport:
    """Refit the kept units of ``student`` (a sliced copy of ``teacher``) in place; see the module doc."""
    if damp <= 0:
        raise ValueError("damp must be > 0")
    t0 = time.perf_counter()
    ta, sa = get_adapter(teacher), get_adapter(student)
    if ta.num_layers != sa.num_layers:
        raise ValueError("student and teacher have different depths")
    report = ReconstructReport(damp)
    tok = sa.token_mask(inputs)
    dh = sa.head_dim() if any(sa.heads_per_layer()) else 0
    for layer in range(sa.num_layers):
        parts = sa.layer_parts(layer)
        refit_attn = parts.out_proj is not None and sa.num_heads(layer) < ta.num_heads(layer)
        refit_mlp = parts.fc2 is not None and sa.num_neurons(layer) < ta.num_neurons(layer)
        if not (refit_attn or refit_mlp):
            if progress:
                progress(layer + 1, sa.num_layers)
            continue
        T = _capture(teacher, inputs, layer)
        if refit_attn:
            S = _capture(student, inputs, layer)
            scale = sa.branch_scale(layer, "attn")
            W = parts.out_proj.weight.detach()
            ctx = S["ctx"][tok]
            H = sa.num_heads(layer)
            C = torch.stack([_scaled(ctx[:, h * dh:(h + 1) * dh] @ W[:, h * dh:(h + 1) * dh].T, scale) for h in range(H)])
            b = (_scaled(T["attn_out"][tok] - parts.out_proj.bias.detach(), scale) + T["x"][tok] - S["x"][tok])
            G = torch.einsum("hnd,knd->hk", C, C).double()
            r = torch.einsum("hnd,nd->h", C, b).double()
            bb = float((b.double() ** 2).sum())
            m = _solve(G, r, damp)
            ones = torch.ones_like(m)
            report.layers.append({"layer": layer, "part": "attn", "units": H, "error_before": _error(G, r, bb, ones) / bb,
                                  "error_after": _error(G, r, bb, m) / bb, "scale_min": float(m.min()), "scale_max": float(m.max())})
            with torch.no_grad():
                parts.out_proj.weight.mul_(m.to(W.dtype).repeat_interleave(dh)[None, :])
        if refit_mlp:
            S = _capture(student, inputs, layer)
            scale = sa.branch_scale(layer, "mlp")
            W2 = _scaled(parts.fc2.weight.detach().T, scale).T.double()  # d x n
            act = S["act"][tok].double()
            b = (_scaled(T["mlp_out"][tok] - parts.fc2.bias.detach(), scale) + T["y"][tok] - S["y"][tok]).double()
            G = (act.T @ act) * (W2.T @ W2)
            r = (act * (b @ W2)).sum(0)
            bb = float((b ** 2).sum())
            m = _solve(G, r, damp)
            ones = torch.ones_like(m)
            report.layers.append({"layer": layer, "part": "mlp", "units": int(m.numel()), "error_before": _error(G, r, bb, ones) / bb,
                                  "error_after": _error(G, r, bb, m) / bb, "scale_min": float(m.min()), "scale_max": float(m.max())})
            with torch.no_grad():
                parts.fc2.weight.mul_(m.to(parts.fc2.weight.dtype)[None, :])
        if progress:
            progress(layer + 1, sa.num_layers)
    report.seconds = time.perf_counter() - t0
    return report
