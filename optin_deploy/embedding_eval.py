"""Validation of a pruned sentence-embedding model without labels, through a runtime.

On held-out texts, each model (normally the dense and the pruned ONNX graphs in onnxruntime) embeds
every text; against the baseline (the dense model):

* **cosine** between the two embeddings of the same text: mean, 5th percentile and minimum;
* **retrieval agreement**: every held-out text is a query against all the others (the corpus);
  recall@k is the share of the baseline's ``k`` nearest neighbours (by cosine) that the pruned
  model also returns in its top ``k``, averaged over the queries;
* where the data has scored sentence pairs (``sentence1, sentence2, score``): the Spearman
  correlation between the pair's cosine and its score, for every model.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .errors import OptinError
from .evaluate import spearman
from .runtimes.base import Runtime

MIN_CORPUS = 1000  # the retrieval figure is reported for smaller corpora too, with a note


def embed(task, runtime: Runtime, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """``N x D`` embeddings of ``texts`` (in order) from a loaded runtime; batches are sorted by
    length so that little padding is run."""
    texts = list(texts)
    if not texts:
        raise OptinError("no texts to embed")
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out: np.ndarray | None = None
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        e = np.asarray(runtime.run(task.encode([texts[j] for j in idx])), dtype=np.float32)
        if out is None:
            out = np.empty((len(texts), e.shape[1]), dtype=np.float32)
        out[idx] = e
    return out  # type: ignore[return-value]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between row ``i`` of ``a`` and row ``i`` of ``b``."""
    return (_unit(a) * _unit(b)).sum(1)


def top_k(emb: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` nearest other rows by cosine (``N x k`` indices, best first)."""
    u = _unit(emb)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(u) - 1)
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    rows = np.arange(len(u))[:, None]
    return part[rows, np.argsort(-sim[rows, part], axis=1)]


def recall_at_k(emb: np.ndarray, base: np.ndarray, k: int = 10) -> float:
    """Mean share of ``base``'s top-``k`` neighbours of each query that ``emb``'s top ``k`` also hold."""
    a, b = top_k(emb, k), top_k(base, k)
    kk = a.shape[1]
    return float(np.mean([len(set(x) & set(y)) / kk for x, y in zip(a, b)]))


def pair_spearman(first: np.ndarray, second: np.ndarray, scores: np.ndarray) -> float:
    return spearman(cosine_rows(first, second), scores)


def check_corpus(task, split: str = "test", k: int = 10) -> tuple[list, list]:
    """The held-out ``split`` texts (as given, and without repeats); refused in one line when fewer than ``k + 1`` distinct
    texts remain (``build`` calls it before scoring, so the refusal comes before the work)."""
    given = list(getattr(task.data, split).inputs)
    texts = list(dict.fromkeys(given))  # a repeated text is its own tied nearest neighbour: recall would measure tie-breaking
    if len(texts) < k + 1:
        raise OptinError(f"the {split} split of {task.data.name!r} has {len(texts)} distinct texts"
                         + (f" ({len(given)} with repeats)" if len(given) != len(texts) else "")
                         + f"; recall@{k} needs at least {k + 1}: give more varied texts")
    return given, texts


def compare_embeddings(emb: np.ndarray, base: np.ndarray, k: int = 10) -> dict:
    """Cosine (mean, 5th percentile, min) and recall@k of ``emb`` against the baseline ``base``."""
    cos = cosine_rows(emb, base)
    return {"cosine_mean": float(cos.mean()), "cosine_p5": float(np.percentile(cos, 5)), "cosine_min": float(cos.min()),
            f"recall_at_{k}": recall_at_k(emb, base, k)}


def evaluate_embeddings(
    task,
    runtimes_and_models: Mapping[str, tuple[Runtime, Any]],
    *,
    split: str = "test",
    baseline: str | None = None,
    k: int = 10,
    batch_size: int = 64,
    return_embeddings: bool = False,
) -> dict:
    """Embed ``task``'s held-out ``split`` texts with each ``(runtime, artifact)`` and compare each
    model with the baseline (default: the first label, normally the dense model)."""
    labels = list(runtimes_and_models)
    if not labels:
        raise OptinError("nothing to evaluate")
    baseline = baseline or labels[0]
    given, texts = check_corpus(task, split, k)
    pairs = getattr(task.data, "pairs", {}).get(split)
    out: dict[str, Any] = {"task": task.name, "data": task.data.name, "split": split, "task_type": "embedding", "baseline": baseline,
                           "corpus_size": len(texts), "k": k, "max_length": task.max_length, "models": {}}
    if len(given) != len(texts):
        out["repeated_texts_dropped"] = len(given) - len(texts)
    if len(texts) < MIN_CORPUS:
        out["note"] = f"the corpus has {len(texts)} texts, fewer than {MIN_CORPUS}: recall@{k} is less telling"
    embs = {}
    for label in labels:
        rt, artifact = runtimes_and_models[label]
        if artifact is not None:
            rt.load(artifact)
        embs[label] = embed(task, rt, texts, batch_size)
        m: dict[str, Any] = {"n": len(texts), "dim": int(embs[label].shape[1]), "runtime": rt.describe()}
        if pairs is not None and len(pairs):
            m["spearman_pairs"] = pair_spearman(embed(task, rt, pairs.first, batch_size), embed(task, rt, pairs.second, batch_size), pairs.scores)
            m["pairs"] = len(pairs)
        out["models"][label] = m
    for label in labels:
        if label != baseline:
            out["models"][label].update(compare_embeddings(embs[label], embs[baseline], k))
    if return_embeddings:
        out["embeddings"] = embs
    return out


def embedding_summary(ev: dict, label: str = "pruned") -> dict:
    """The figures a build report keeps: cosine, recall, Spearman (dense and pruned when pairs exist)."""
    m, d, k = ev["models"][label], ev["models"][ev["baseline"]], ev["k"]
    out = {"split": ev["split"], "corpus_size": ev["corpus_size"], "k": k, "max_length": ev.get("max_length"),
           "cosine_mean": round(m["cosine_mean"], 5), "cosine_p5": round(m["cosine_p5"], 5), "cosine_min": round(m["cosine_min"], 5),
           f"recall_at_{k}": round(m[f"recall_at_{k}"], 5)}
    if "spearman_pairs" in m:
        out["spearman_pairs"] = {"dense": round(d["spearman_pairs"], 5), "pruned": round(m["spearman_pairs"], 5), "pairs": m["pairs"]}
    if ev.get("note"):
        out["note"] = ev["note"]
    return out
