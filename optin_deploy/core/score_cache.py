"""Scoring with an on-disk cache: score once, re-select for any budget for free.

The cache key covers the model's weights (a hash of every tensor), the calibration inputs, the
method and its settings. Scores do not depend on the budget.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import torch
from torch import nn

from ..adapters import get_adapter
from ..errors import short_reason
from .scoring import RawScores, ScoreSettings, exact_scores, reference_scores

METHODS = ("exact", "fast", "reference")


def cache_root() -> Path:
    """The cache root, as every part of the cache finds it (:func:`optin_deploy.data.assets.cache_root`)."""
    from ..data.assets import cache_root as root

    return root()


def _hash_tensors(h, tensors) -> None:
    for name, t in tensors:
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())


def score_key(model: nn.Module, inputs: dict[str, torch.Tensor], method: str, settings: ScoreSettings, extra: dict | None = None) -> str:
    h = hashlib.sha256()
    _hash_tensors(h, sorted(model.state_dict().items()))
    _hash_tensors(h, sorted(inputs.items()))
    h.update(json.dumps({"method": method, **settings.key(), **(extra or {})}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def score_model(model: nn.Module, inputs: dict[str, torch.Tensor], method: str = "exact", settings: ScoreSettings | None = None, *,
                probes: int = 64, kl_probes: int = 16, cache: bool = True, progress=None) -> RawScores:
    """OPTIN raw scores for every head and neuron of ``model`` on calibration ``inputs``."""
    if method not in METHODS:
        raise ValueError(f"unknown scoring method {method!r}; choose from {', '.join(METHODS)}")
    settings = settings or ScoreSettings()
    model.eval()
    adapter = get_adapter(model)
    extra = {"probes": probes, "kl_probes": kl_probes} if method == "fast" else {}
    if adapter.output_kind != "logits":  # the output term differs (embeddings: 1 - cosine); classifiers' keys are unchanged
        extra["output_term"] = adapter.output_kind
    key = score_key(model, inputs, method, settings, extra)
    path = cache_root() / "scores" / f"{key}.json"
    discarded = None
    if cache and path.is_file():
        raw, discarded = _read_cached(path, adapter, method)
        if raw is not None:
            raw.info = {**raw.info, "cached": True, "cache_file": str(path)}
            return raw
    t0 = time.perf_counter()
    if method == "exact":
        raw = exact_scores(adapter, inputs, settings, progress)
    elif method == "reference":
        raw = reference_scores(adapter, inputs, settings, progress)
    else:
        from .fast import fast_scores

        raw = fast_scores(adapter, inputs, settings, probes, kl_probes, progress)
    raw.seconds = time.perf_counter() - t0
    raw.info = {**raw.info, "output_term": "1 - cosine of the sentence embeddings" if adapter.output_kind == "embedding" else "KL of the logits (T^2-scaled)"}
    if cache:
        _write_cached(path, raw)
    raw.info = {**raw.info, "cached": False, "cache_file": str(path) if cache else None}
    if discarded:
        raw.info["cache_discarded"] = discarded
    return raw


def _read_cached(path: Path, adapter, method: str) -> tuple[RawScores | None, str | None]:
    """A cache entry, or ``(None, reason)`` when it is corrupt, partial or does not fit the model
    (the entry is then removed, so that it is recomputed and rewritten)."""
    try:
        raw = RawScores.from_dict(json.loads(path.read_text()))
        heads, neurons = adapter.heads_per_layer(), adapter.neurons_per_layer()
        shape = lambda ts: [tuple(t.shape) for t in ts]  # noqa: E731 - one flat vector of scores a layer
        shapes_ok = (shape(raw.head_md) == shape(raw.head_kl) == [(h,) for h in heads]
                     and shape(raw.neuron_md) == shape(raw.neuron_kl) == [(n,) for n in neurons])
        if not shapes_ok:
            raise ValueError("its score shapes do not match the model")
        # what the run reports beside the scores: a wrong type here crashed the command after the scores loaded
        if raw.method != method or not isinstance(raw.info, dict):
            raise ValueError("its method or info does not match the entry's key")
        if isinstance(raw.seconds, bool) or not isinstance(raw.seconds, (int, float)) or not math.isfinite(raw.seconds) or raw.seconds < 0:
            raise ValueError(f"its scoring time {raw.seconds!r} is not a number of seconds")
        if not all(bool(torch.isfinite(t).all()) for t in (*raw.head_md, *raw.head_kl, *raw.neuron_md, *raw.neuron_kl)):
            raise ValueError("it holds non-finite scores")
        return raw, None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        reason = f"{type(exc).__name__}: {short_reason(exc, 120) or 'unreadable'}"
        try:
            path.unlink()
        except OSError:
            pass
        return None, reason


def _write_cached(path: Path, raw: RawScores) -> None:
    """Write a cache entry under a unique temporary name, then rename it into place (atomic), so
    concurrent writers never share a file and readers never see a partial entry."""
    import tempfile

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    except OSError:
        return  # an unwritable cache costs a recomputation next time, nothing else
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(raw.to_dict(), f)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if not isinstance(exc, OSError):  # a full disk only costs a recomputation next time
            raise


def estimate_exact_seconds(model: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Rough wall time of exact scoring: one timed forward pass times the work of all units."""
    adapter = get_adapter(model)
    with torch.no_grad():
        t0 = time.perf_counter()
        adapter.forward(inputs)
        fwd = time.perf_counter() - t0
    L = adapter.num_layers
    work = 0.0
    for l in range(L):
        frac = (L - l) / L
        work += adapter.num_heads(l) * frac + adapter.num_neurons(l) * max(frac - 1 / L, 0.3 / L)
    return fwd * work
