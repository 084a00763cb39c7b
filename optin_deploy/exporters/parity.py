"""Parity between an exported artifact and the PyTorch model it came from.

Every export is checked on real inputs at two or more shapes (different batch sizes and, for text,
sequence lengths, so the dynamic axes are exercised). Measured per shape: the maximum absolute
difference of the logits and the argmax agreement rate (for sentence embeddings: the maximum absolute
difference and the lowest cosine between the two embeddings of a text; there is no argmax). Thresholds:

* fp32 (ONNX, fp32 engines): max |diff| <= 1e-4 and 100 % argmax agreement;
* fp16 / bf16 engines: >= 99 % argmax agreement (the difference is recorded, not gated);
* int8 (dynamic quantisation): >= 75 % argmax agreement on the few parity inputs, a guard against a
  broken graph only: an untrained head's near-zero logits flip under int8 rounding. The accuracy of
  the quantised artefact is what ``eval`` and the quality gate measure, on the whole split.

Agreement is gated on all parity rows pooled, not shape by shape: a shape with one row reads 0 % or
100 %, so one near-tie flipped by int8 rounding (which rounds differently on different CPUs) would
fail an export whose other rows all agree. With the 100 % fp32 threshold pooled and per-shape are the
same test.

The result is a JSON-able dict (written to ``parity.json`` in the bundle); a failure raises
:class:`OptinError` unless ``raise_on_fail=False``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from ..errors import OptinError
from .base import ShapeProfile, is_text_input

THRESHOLDS = {
    "fp32": {"atol": 1e-4, "min_agreement": 1.0},
    "int8": {"atol": None, "min_agreement": 0.75},
    "fp16": {"atol": None, "min_agreement": 0.99},
    "bf16": {"atol": None, "min_agreement": 0.99},
}

DEFAULT_BATCHES = (1, 8)
DEFAULT_SEQ_LENS = (16, 64)


def _resize_text(inputs: Mapping[str, torch.Tensor], batch: int, seq: int) -> dict[str, torch.Tensor]:
    """Text inputs repeated to ``batch`` rows and cut or padded to ``seq`` tokens (the family with
    these input names knows which one is the mask and what padding looks like)."""
    from ..adapters import Adapter, adapter_for_inputs

    return (adapter_for_inputs(inputs) or Adapter).resize_inputs(inputs, batch, seq)


def parity_inputs(
    example_inputs: Mapping[str, torch.Tensor] | None = None,
    *,
    task=None,
    batches: Sequence[int] = DEFAULT_BATCHES,
    seq_lens: Sequence[int] = DEFAULT_SEQ_LENS,
    profile: ShapeProfile | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Inputs at several shapes (``zip(batches, seq_lens)``; image models use only the batches).

    With a ``task`` they are real test inputs (:meth:`Task.example_inputs`); otherwise they are made
    from ``example_inputs`` by repeating rows and truncating/padding tokens. Shapes are clipped to
    ``profile``'s range when given.
    """
    if task is None and example_inputs is None:
        raise ValueError("parity_inputs needs example_inputs or a task")
    names = task.input_names if task is not None else list(example_inputs)
    text = any(is_text_input(n) for n in names)
    out = []
    seen = set()
    for i, b in enumerate(batches):
        s = seq_lens[i % len(seq_lens)] if text else None
        if profile is not None:
            b = min(max(b, profile.min_batch), profile.max_batch)
            if text:
                s = min(max(s, profile.min_seq), profile.max_seq)
        if (b, s) in seen:
            continue
        seen.add((b, s))
        if task is not None:
            out.append(task.example_inputs(b, s))
        elif text:
            d = _resize_text({n: example_inputs[n] for n in names}, b, s)
            out.append({n: d[n] for n in names})
        else:
            x = example_inputs[names[0]]
            reps = -(-b // x.shape[0])
            out.append({names[0]: x.repeat(reps, *([1] * (x.dim() - 1)))[:b].contiguous()})
    return out


@torch.inference_mode()
def reference_logits(model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> np.ndarray:
    """Float32 logits of a :class:`LogitsModel` (or any module taking the inputs positionally)."""
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    return model(*(v.to(device) for v in inputs.values())).float().cpu().numpy()


def compare(ref: np.ndarray, got: np.ndarray, kind: str = "logits") -> dict:
    ref = np.asarray(ref, dtype=np.float32)
    got = np.asarray(got, dtype=np.float32)
    if ref.shape != got.shape:
        return {"shape_ok": False, "ref_shape": list(ref.shape), "got_shape": list(got.shape)}
    finite = bool(np.isfinite(got).all())
    diff = float(np.abs(ref - got).max()) if ref.size else 0.0
    if kind == "embedding":  # sentence embeddings: no argmax; the lowest cosine is recorded beside the difference
        num = (ref * got).sum(1)
        den = np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1)
        cos = float((num / np.maximum(den, 1e-12)).min()) if ref.size else 1.0
        return {"shape_ok": True, "finite": finite, "max_abs_diff": diff, "agreement": None, "min_cosine": cos}
    if ref.ndim == 2 and ref.shape[1] > 1:
        agree_rows = int((ref.argmax(1) == got.argmax(1)).sum())
        agreement = agree_rows / ref.shape[0]
    else:  # regression: no argmax; agreement is not defined
        agree_rows, agreement = None, None
    return {"shape_ok": True, "finite": finite, "max_abs_diff": diff, "agreement": agreement, "rows": int(ref.shape[0]) if ref.ndim else 1,
            "agree_rows": agree_rows}


def check_parity(
    reference: torch.nn.Module,
    run: Callable[[dict[str, np.ndarray]], np.ndarray],
    inputs_list: Sequence[Mapping[str, torch.Tensor]],
    *,
    precision: str = "fp32",
    atol: float | None = None,
    min_agreement: float | None = None,
    raise_on_fail: bool = True,
    what: str = "exported model",
) -> dict:
    """Run ``reference`` (PyTorch, float32) and ``run`` (the artifact) on every input set and compare.

    ``run`` takes ``{name: np.ndarray}`` and returns logits. Returns the parity dict; raises
    :class:`OptinError` when a threshold is missed and ``raise_on_fail``.
    """
    th = dict(THRESHOLDS.get(precision, THRESHOLDS["fp32"]))
    if atol is not None:
        th["atol"] = atol
    if min_agreement is not None:
        th["min_agreement"] = min_agreement
    cases = []
    kind = getattr(getattr(reference, "model", reference), "output_kind", "logits")
    for inputs in inputs_list:
        ref = reference_logits(reference, inputs)
        got = run({k: v.cpu().numpy() for k, v in inputs.items()})
        c = compare(ref, got, kind)
        c["shapes"] = {k: list(v.shape) for k, v in inputs.items()}
        cases.append(c)
    failures = []
    for c in cases:
        where = ", ".join(f"{k}={v}" for k, v in c["shapes"].items())
        if not c["shape_ok"]:
            failures.append(f"logits shape {c['got_shape']} != {c['ref_shape']} at {where}")
            continue
        if not c["finite"]:
            failures.append(f"non-finite logits at {where}")
        if th["atol"] is not None and c["max_abs_diff"] > th["atol"]:
            failures.append(f"max |diff| {c['max_abs_diff']:.3g} > {th['atol']:.0e} at {where}")
    ok_cases = [c for c in cases if c["shape_ok"]]
    agreements = [c["agreement"] for c in ok_cases if c["agreement"] is not None]
    counted = [c for c in ok_cases if c.get("agree_rows") is not None]
    pooled = sum(c["agree_rows"] for c in counted) / sum(c["rows"] for c in counted) if counted else None
    if pooled is not None and pooled < th["min_agreement"]:
        flipped = "; ".join(f"{c['rows'] - c['agree_rows']} of {c['rows']} at " + ", ".join(f"{k}={v}" for k, v in c["shapes"].items())
                            for c in counted if c["agree_rows"] < c["rows"])
        failures.append(f"argmax agreement {pooled:.1%} < {th['min_agreement']:.0%} over {sum(c['rows'] for c in counted)} rows "
                        f"(rows that disagree: {flipped})")
    result = {
        "passed": not failures,
        "precision": precision,
        "thresholds": th,
        "max_abs_diff": max((c["max_abs_diff"] for c in ok_cases), default=None),
        "min_agreement": min(agreements) if agreements else None,
        "agreement": pooled,
        "cases": cases,
        "failures": failures,
    }
    if failures and raise_on_fail:
        raise OptinError(f"parity check failed for {what}: {failures[0]}" + (f" (+{len(failures) - 1} more)" if len(failures) > 1 else ""))
    return result
