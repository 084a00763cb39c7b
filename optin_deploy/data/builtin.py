"""Built-in data sets with fixed, seeded splits.

* ``rotten-tomatoes``: review snippets, ``category`` fresh/rotten only (the ``plot`` rows are not
  reviews), duplicated snippets dropped (first kept), stratified 80/10/10 with seed 0.
  Labels: 0 = rotten, 1 = fresh.
* ``bbc-news``: 2,225 BBC articles in 5 classes (business, entertainment, politics, sport, tech).
  98 articles are exact duplicates of others; they are dropped (first kept) so no article is in
  two splits, leaving 2,127; then stratified 80/10/10 with seed 0.
* ``fashion-mnist``: the official 60k training images split (stratified, seed 0) into 55k train and
  5k validation, and the official 10k test set. Images are ``float32 N x 1 x 28 x 28`` normalised
  as ``(x / 255 - 0.5) / 0.5`` (:data:`FASHION_MEAN`, :data:`FASHION_STD`), the same as the image
  processor saved with the zoo's ViT.
"""

from __future__ import annotations

import csv
import io
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import OptinError
from . import assets
from .types import Split, TaskData

SEED = 0
FASHION_MEAN = 0.5
FASHION_STD = 0.5
FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def stratified_split(
    labels: Sequence[int] | None,
    n: int,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = SEED,
) -> list[np.ndarray]:
    """Seeded split of ``range(n)`` into ``len(fractions)`` index arrays, stratified by ``labels``.

    Within each class the items are shuffled and cut by the fractions (rounded; the last part gets
    the rest). Each part is returned in a seeded shuffled order. ``labels=None`` splits at random.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [
        np.flatnonzero(np.asarray(labels) == c) for c in np.unique(np.asarray(labels))
    ]
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    total = float(sum(fractions))
    for idx in groups:
        idx = idx[rng.permutation(len(idx))]
        start = 0
        for k, frac in enumerate(fractions):
            stop = len(idx) if k == len(fractions) - 1 else start + int(round(len(idx) * frac / total))
            parts[k].append(idx[start:stop])
            start = stop
    out = []
    for p in parts:
        cat = np.concatenate(p) if p else np.zeros(0, dtype=np.int64)
        out.append(cat[rng.permutation(len(cat))])
    return out


def _text_splits(texts: list[str], labels: list[int], seed: int = SEED) -> tuple[Split, Split, Split]:
    y = np.asarray(labels, dtype=np.int64)
    splits = []
    for idx in stratified_split(y, len(texts), seed=seed):
        splits.append(Split([texts[i] for i in idx], torch.as_tensor(y[idx], dtype=torch.long)))
    return tuple(splits)  # type: ignore[return-value]


def rotten_tomatoes(seed: int = SEED) -> TaskData:
    text, asset = assets.rotten_tomatoes_csv()
    rows = list(csv.DictReader(io.StringIO(text)))
    kept = [r for r in rows if r["category"] in ("fresh", "rotten")]
    seen: set[str] = set()
    texts, labels = [], []
    for r in kept:
        t = r["text"].strip()
        if t in seen:
            continue
        seen.add(t)
        texts.append(t)
        labels.append(1 if r["category"] == "fresh" else 0)
    train, val, test = _text_splits(texts, labels, seed)
    source = asset.as_source() | {
        "rows_total": len(rows), "rows_reviews": len(kept), "duplicates_dropped": len(kept) - len(texts),
        "rows": len(texts), "split": "stratified 80/10/10", "seed": seed,
    }
    return TaskData("rotten-tomatoes", "text", "classification", ["rotten", "fresh"], train, val, test, source)


def bbc_news(seed: int = SEED) -> TaskData:
    docs, asset = assets.bbc_news_docs()
    names = sorted({c for c, _ in docs})
    seen: set[str] = set()
    texts, labels = [], []
    for c, t in docs:
        t = t.strip()
        if t in seen:
            continue
        seen.add(t)
        texts.append(t)
        labels.append(names.index(c))
    train, val, test = _text_splits(texts, labels, seed)
    source = asset.as_source() | {
        "rows_total": len(docs), "duplicates_dropped": len(docs) - len(texts), "rows": len(texts),
        "split": "stratified 80/10/10", "seed": seed,
    }
    return TaskData("bbc-news", "text", "classification", names, train, val, test, source)


def _fashion_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, assets.Asset]:
    folder, asset = assets.fashion_mnist_dir()
    def images(f: str) -> np.ndarray:
        return np.frombuffer(assets.read_idx_gz(folder / f, 16), dtype=np.uint8).reshape(-1, 1, 28, 28)
    def labels(f: str) -> np.ndarray:
        return np.frombuffer(assets.read_idx_gz(folder / f, 8), dtype=np.uint8).astype(np.int64)
    xtr, ytr = images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz")
    xte, yte = images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise OptinError(f"Fashion-MNIST files in {folder} are inconsistent (image and label counts differ); reinstall {assets.FASHION_PACKAGE}")
    return xtr, ytr, xte, yte, asset


def normalise_fashion(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``N x 1 x 28 x 28`` to the model's float input."""
    x = torch.from_numpy(np.array(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
    return (x / 255.0 - FASHION_MEAN) / FASHION_STD


def fashion_mnist(seed: int = SEED) -> TaskData:
    xtr, ytr, xte, yte, asset = _fashion_arrays()
    tr, va = stratified_split(ytr, len(ytr), fractions=(55, 5), seed=seed)
    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(normalise_fashion(x), torch.as_tensor(y, dtype=torch.long))
    source = asset.as_source() | {
        "rows": len(ytr) + len(yte), "split": "official test; train stratified 55k/5k", "seed": seed,
        "normalisation": {"mean": FASHION_MEAN, "std": FASHION_STD, "scale": 1 / 255},
    }
    return TaskData(
        "fashion-mnist", "image", "classification", list(FASHION_LABELS),
        split(xtr[tr], ytr[tr]), split(xtr[va], ytr[va]), split(xte, yte), source,
    )


BUILTINS: dict[str, Callable[..., TaskData]] = {
    "rotten-tomatoes": rotten_tomatoes,
    "bbc-news": bbc_news,
    "fashion-mnist": fashion_mnist,
}


def load_builtin(name: str, seed: int = SEED) -> TaskData:
    try:
        fn = BUILTINS[name]
    except KeyError:
        raise OptinError(f"unknown built-in data set {name!r}; choose one of {', '.join(BUILTINS)}") from None
    return fn(seed=seed)
