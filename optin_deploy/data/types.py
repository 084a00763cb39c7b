"""The contract between data/model loading and the rest of the tool.

A :class:`Task` bundles a model with the data and preprocessing it needs. Everything downstream
(scoring, evaluation, export, benchmarking, ``build``) talks to models and data only through it.

Conventions
-----------
* Model inputs are a ``dict[str, torch.Tensor]``, batch first: text models take int64 ``B x T``
  token inputs, image models float32 ``B x C x H x W`` pixels (already normalised the way the
  model expects). Which names, and how text is tokenised, is the model's family adapter's business:
  ``Task.input_names`` gives them in the order the exporters use, ``Task.encode`` makes them.
* Labels are a 1-D tensor: int64 class ids for classification, float32 for regression.
* Calibration needs no labels: ``Task.calibration(n)`` returns ``n`` training inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

import torch

Modality = Literal["text", "image"]
TaskType = Literal["classification", "regression", "embedding"]


def text_size(item) -> int:
    """Characters in a text input, or in both texts of a sentence pair (to order batches by length)."""
    return len(item) if isinstance(item, str) else sum(len(t) for t in item)


@dataclass
class Split:
    """One split of a labelled data set, before preprocessing.

    ``inputs`` is a list of strings (text), of ``(first, second)`` string tuples (sentence pairs), or a float tensor ``N x C x H x W`` (images, already in
    the model's input normalisation). ``labels`` may be None for unlabelled (calibration-only) data.
    """

    inputs: Sequence[str] | torch.Tensor
    labels: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.inputs)


@dataclass
class TaskData:
    """A labelled data set with fixed, seeded train / validation / test splits."""

    name: str
    modality: Modality
    task_type: TaskType
    label_names: list[str]
    train: Split
    validation: Split
    test: Split
    source: dict = field(default_factory=dict)  # where it came from: asset name, version, sha256, ...

    @property
    def text_pair(self) -> bool:
        """Sentence pairs: every input is a ``(first, second)`` tuple, tokenised as a pair."""
        return self.modality == "text" and len(self.source.get("text_pair") or ()) == 2

    @property
    def num_labels(self) -> int:
        return 1 if self.task_type == "regression" else len(self.label_names)

    def require_labels(self, split: str = "test") -> Split:
        """The split, or a one-line :class:`OptinError` when it has no labels (calibration-only data)."""
        from ..errors import OptinError

        s = getattr(self, split)
        if s.labels is None:
            col = self.source.get("missing_label_column")
            cols = self.source.get("columns")
            hint = f" (no column {col!r}; columns are: {', '.join(cols)})" if col and cols else ""
            raise OptinError(
                f"data {self.name!r} has no labels{hint}, so it can calibrate but not evaluate; "
                f"pass --label-column or labelled data"
            )
        return s


@dataclass
class Task:
    """A model together with its data and preprocessing.

    ``encode(inputs)`` turns raw split inputs (strings or images) into model inputs; for text it
    tokenises with padding to the longest item (capped at ``max_length``) and truncation.
    """

    name: str
    model: torch.nn.Module
    data: TaskData
    max_length: int | None = None  # text only
    tokenizer: object | None = None  # text only: a transformers tokenizer
    model_source: str = ""  # a path or hub name, recorded in manifests

    @property
    def modality(self) -> Modality:
        return self.data.modality

    @property
    def adapter(self):
        """The model's family adapter: it knows the input names and how text is encoded."""
        from ..adapters import get_adapter

        return get_adapter(self.model)

    @property
    def input_names(self) -> list[str]:
        return self.adapter.input_names()

    def encode(self, inputs: Sequence[str] | torch.Tensor, pad_to: int | None = None) -> dict[str, torch.Tensor]:
        if self.modality == "image":
            return {self.input_names[0]: torch.as_tensor(inputs, dtype=torch.float32)}
        return self.adapter.encode(self.tokenizer, inputs, max_length=self.max_length, pad_to=pad_to)

    def batches(self, split: str | Split, batch_size: int = 64) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor | None]]:
        """Yield ``(model_inputs, labels)`` over a split in order."""
        s = getattr(self.data, split) if isinstance(split, str) else split
        for i in range(0, len(s), batch_size):
            labels = None if s.labels is None else s.labels[i : i + batch_size]
            yield self.encode(s.inputs[i : i + batch_size]), labels

    def calibration(self, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
        """``n`` unlabelled training inputs (a seeded random subset), encoded as one batch."""
        from ..errors import OptinError

        train = self.data.train
        if n > len(train):
            raise OptinError(
                f"asked for {n} calibration samples but the training split of {self.data.name!r} has only "
                f"{len(train)}; pass a smaller --calib-samples or more data"
            )
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(train), generator=g)[:n].sort().values
        if self.modality == "image":
            return self.encode(train.inputs[idx])
        return self.encode([train.inputs[int(i)] for i in idx])

    def example_inputs(self, batch: int, seq_len: int | None = None) -> dict[str, torch.Tensor]:
        """Real inputs of an exact shape (text: padded/truncated to ``seq_len``), for export and benchmarks."""
        train = self.data.test
        reps = (batch + len(train) - 1) // len(train)
        if self.modality == "image":
            return self.encode(train.inputs[:batch] if reps == 1 else train.inputs.repeat(reps, 1, 1, 1)[:batch])
        texts = (list(train.inputs) * reps)[:batch]
        return self.encode(texts, pad_to=seq_len or self.max_length)
