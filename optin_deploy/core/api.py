"""Scoring with an on-disk cache: score once, re-select for any budget for free.

The cache key covers the model's weights (a hash of every tensor), the calibration inputs, the
method and its settings. Scores do not depend on the budget.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from ..adapters import get_adapter
from .scoring import RawScores, ScoreSettings, exact_scores, reference_scores

METHODS = ("exact", "fast", "reference")


def cache_root() -> Path:
    return Path(os.environ.get("OPTIN_DEPLOY_CACHE", Path.home() / ".cache" / "optin-deploy"))


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
    if cache and path.is_file():
        raw = RawScores.from_dict(json.loads(path.read_text()))
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
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(raw.to_dict()))
        os.replace(tmp, path)
    raw.info = {**raw.info, "cached": False, "cache_file": str(path) if cache else None}
    return raw


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
