"""Unlabelled texts (and scored sentence pairs) for sentence-embedding models.

An embedding model needs no labels: it is calibrated on training texts and validated on held-out
texts by comparing the pruned model's embeddings with the dense model's. :func:`load_texts` reads:

* built-in text data sets, several joined by ``+`` (``rotten-tomatoes+bbc-news``): each split is
  the concatenation of the data sets' same split (their fixed, seeded 80/10/10 splits), labels dropped;
* a CSV/TSV/JSONL file with ``sentence1``, ``sentence2`` and ``score`` columns (STS-style pairs):
  the pairs are split 80/10/10 (seeded), each split's texts are its unique sentences, and the pairs
  with their scores are kept for a Spearman correlation;
* any other file or folder that :func:`~optin_deploy.data.loaders.load_data` reads, its
  ``--text-column`` taken as the texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import OptinError
from .builtin import BUILTINS, SEED, load_builtin, stratified_split
from .types import Split, TaskData

PAIR_COLUMNS = ("sentence1", "sentence2", "score")


@dataclass
class Pairs:
    """Scored sentence pairs of one split."""

    first: list[str]
    second: list[str]
    scores: np.ndarray

    def __len__(self) -> int:
        return len(self.first)


@dataclass
class TextData(TaskData):
    """Texts for an embedding model (``task_type="embedding"``, no labels), with scored pairs when the data has them."""

    pairs: dict[str, Pairs] = field(default_factory=dict)


def _texts_only(s: Split) -> Split:
    return Split(list(s.inputs), None)


def _builtin_texts(names: list[str], seed: int) -> TextData:
    parts = []
    for n in names:
        td = load_builtin(n, seed=seed)
        if td.modality != "text":
            raise OptinError(f"data {n!r} is {td.modality}, not text; an embedding model needs texts")
        parts.append(td)
    splits = {s: Split([t for td in parts for t in getattr(td, s).inputs], None) for s in ("train", "validation", "test")}
    source = {"datasets": {td.name: td.source for td in parts},
              "split": "each data set's own fixed split (stratified 80/10/10, seed %d), concatenated; labels not used" % seed,
              "sizes": {td.name: {s: len(getattr(td, s)) for s in ("train", "validation", "test")} for td in parts}}
    return TextData("+".join(names), "text", "embedding", [], splits["train"], splits["validation"], splits["test"], source)


def _pairs_file(path: Path, rows: list[dict], seed: int) -> TextData:
    s1, s2, sc = [], [], []
    for i, r in enumerate(rows, 2):
        a, b, v = r.get("sentence1"), r.get("sentence2"), r.get("score")
        if not a or not b or v in (None, ""):
            continue
        try:
            sc.append(float(v))
        except (TypeError, ValueError):
            raise OptinError(f"{path}: row {i} has a non-numeric score {v!r}; scores must be numbers") from None
        s1.append(str(a).strip())
        s2.append(str(b).strip())
    if len(s1) < 10:
        raise OptinError(f"{path} has only {len(s1)} complete sentence pairs; it needs at least 10")
    scores = np.asarray(sc, dtype=np.float64)
    splits, pairs = {}, {}
    for name, idx in zip(("train", "validation", "test"), stratified_split(None, len(s1), seed=seed)):
        idx = sorted(int(i) for i in idx)
        p = Pairs([s1[i] for i in idx], [s2[i] for i in idx], scores[idx])
        pairs[name] = p
        splits[name] = Split(list(dict.fromkeys(p.first + p.second)), None)
    source = {"file": str(path.resolve()), "pairs": len(s1), "split": f"pairs split 80/10/10 at random (seed {seed})"}
    return TextData(path.stem, "text", "embedding", [], splits["train"], splits["validation"], splits["test"], source, pairs)


def load_texts(spec: str, *, text_column: str = "text", seed: int = SEED) -> TextData:
    """Texts for an embedding model; see the module docstring for what ``spec`` may be."""
    s = str(spec)
    names = s.split("+")
    if all(n in BUILTINS for n in names):
        return _builtin_texts(names, seed)
    path = Path(s).expanduser()
    if path.is_file():
        from .loaders import TEXT_SUFFIXES, read_table

        if path.suffix.lower() in TEXT_SUFFIXES:
            rows, cols = read_table(path)
            if all(c in cols for c in PAIR_COLUMNS):
                return _pairs_file(path, rows, seed)
    from .loaders import load_data

    td = load_data(s, text_column=text_column, label_column=None, seed=seed)
    if td.text_pair:
        raise OptinError(f"--text-column {text_column!r} names two columns (sentence pairs), but an embedding model embeds one "
                         f"text at a time; pass one column (a pairs file with sentence1,sentence2,score columns is read for the "
                         f"pairs metric)")
    if td.modality != "text":
        raise OptinError(f"data {s!r} is {td.modality}, not text; an embedding model needs texts")
    return TextData(td.name, "text", "embedding", [], _texts_only(td.train), _texts_only(td.validation), _texts_only(td.test),
                    dict(td.source))
