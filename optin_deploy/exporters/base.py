"""The exporter interface, shared helpers and the exporter registry.

An exporter turns a (possibly pruned) PyTorch model into a deployable artifact::

    exporter = get_exporter("onnx")
    result = exporter.export(model, example_inputs, "out/model.onnx", profile=ShapeProfile(...))
    result.path, result.metadata

Adding a target (say OpenVINO) is one new module defining an :class:`Exporter` subclass plus one line
in :data:`EXPORTERS`.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import tempfile
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import torch

from ..errors import OptinError

PRECISIONS = ("fp32", "fp16", "bf16")
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class ExportResult:
    """What an exporter produced: the artifact's path and a JSON-able metadata dict."""

    path: Path
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"path": str(self.path), **self.metadata}


@dataclass
class ShapeProfile:
    """The input shape range an artifact must accept (min / opt / max).

    Batch is always dynamic; for text the sequence length is too. Image channel/height/width are
    fixed to the example's. ``opt`` is what TensorRT tunes for and what benchmarks use.
    """

    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64
    min_seq: int = 1
    opt_seq: int = 128
    max_seq: int = 512

    def __post_init__(self) -> None:
        if not (1 <= self.min_batch <= self.opt_batch <= self.max_batch):
            raise OptinError(
                f"batch sizes must satisfy 1 <= min <= opt <= max, got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        if not (1 <= self.min_seq <= self.opt_seq <= self.max_seq):
            raise OptinError(
                f"sequence lengths must satisfy 1 <= min <= opt <= max, got {self.min_seq}/{self.opt_seq}/{self.max_seq}"
            )

    def shapes(self, example_inputs: Mapping[str, torch.Tensor]) -> dict[str, dict[str, list[int]]]:
        """``{input name: {"min": shape, "opt": shape, "max": shape}}`` for these inputs."""
        out = {}
        for name, t in example_inputs.items():
            if is_text_input(name):
                out[name] = {
                    "min": [self.min_batch, self.min_seq],
                    "opt": [self.opt_batch, self.opt_seq],
                    "max": [self.max_batch, self.max_seq],
                }
            else:
                rest = list(t.shape[1:])
                out[name] = {
                    "min": [self.min_batch, *rest],
                    "opt": [self.opt_batch, *rest],
                    "max": [self.max_batch, *rest],
                }
        return out

    def to_dict(self) -> dict:
        return asdict(self)


def is_text_input(name: str) -> bool:
    """Whether an input has a sequence axis (some registered text family says so)."""
    from ..adapters import sequence_input_names

    return name in sequence_input_names()


def is_text(inputs: Mapping[str, object] | Sequence[str]) -> bool:
    return any(is_text_input(n) for n in inputs)


def _is_transformers_model(model: torch.nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except Exception:  # pragma: no cover - transformers is a hard dependency
        return False
    return isinstance(model, PreTrainedModel)


class LogitsModel(torch.nn.Module):
    """Wraps a classifier so that ``forward(*inputs)`` takes the named inputs positionally and
    returns the logits tensor (what exporters and runtimes need).

    transformers models get the inputs as keyword arguments and return ``.logits``; other models
    (timm) get them positionally and return a tensor. With ``compute_dtype`` (fp16/bf16) the wrapped
    model is cast and float inputs are cast inside the graph, while the graph's inputs and the logits
    stay float32, so an exported graph carries its precision explicitly (strongly typed).
    """

    def __init__(self, model: torch.nn.Module, input_names: Sequence[str], compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.compute_dtype = compute_dtype
        self._kwargs = _is_transformers_model(model)
        if compute_dtype is not None and compute_dtype != torch.float32:
            self.model.to(compute_dtype)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is not None:
            inputs = tuple(x.to(self.compute_dtype) if x.is_floating_point() else x for x in inputs)
        if self._kwargs:
            out = self.model(**dict(zip(self.input_names, inputs)))
        else:
            out = self.model(*inputs)
        if isinstance(out, torch.Tensor):
            logits = out
        elif hasattr(out, "logits"):
            logits = out.logits
        elif isinstance(out, (tuple, list)):
            logits = out[0]
        else:
            raise OptinError(f"cannot find logits in the output of {type(self.model).__name__} ({type(out).__name__})")
        return logits.float() if self.compute_dtype not in (None, torch.float32) else logits


def output_name_for(model: torch.nn.Module) -> str:
    """The graph's output name: ``logits`` for classifiers, ``sentence_embedding`` for embedding models."""
    return str(getattr(model, "output_name", None) or "logits")


def input_names_for(model: torch.nn.Module) -> list[str]:
    """The input names a model takes, in export order (its family adapter says)."""
    from ..adapters import get_adapter

    return get_adapter(model).input_names()


def ordered_inputs(example_inputs: Mapping[str, torch.Tensor], input_names: Sequence[str] | None = None) -> dict:
    names = list(input_names) if input_names else list(example_inputs)
    missing = [n for n in names if n not in example_inputs]
    if missing:
        raise OptinError(f"example inputs lack {missing}; they have {list(example_inputs)}")
    return {n: example_inputs[n] for n in names}


@contextlib.contextmanager
def atomic_path(out_path: str | os.PathLike, stage: str = "export") -> Iterator[Path]:
    """Yield a temporary path in the destination folder; on success move it onto ``out_path`` with
    ``os.replace``, on any failure remove it so no partial file is left behind."""
    out_path = Path(out_path)
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=f".tmp{out_path.suffix}", dir=out_path.parent)
        os.close(fd)
    except OSError as exc:
        raise OptinError(f"{stage}: cannot write to {out_path.parent} ({exc.strerror or exc}); pass a writable --out") from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, out_path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


class Exporter(ABC):
    """One deployment target."""

    name: str = ""
    suffix: str = ""

    @abstractmethod
    def export(self, model: torch.nn.Module, example_inputs: Mapping[str, torch.Tensor], out_path: str | os.PathLike, **opts) -> ExportResult:
        """Write the artifact to ``out_path`` (atomically) and return it with its metadata."""


# name -> "module:Class"; imported lazily so optional back-ends cost nothing until used.
EXPORTERS: dict[str, str] = {
    "onnx": "optin_deploy.exporters.onnx:OnnxExporter",
    "tensorrt": "optin_deploy.exporters.tensorrt:TensorRTExporter",
    "torch-tensorrt": "optin_deploy.exporters.torch_tensorrt:TorchTensorRTExporter",
}


def get_exporter(name: str) -> Exporter:
    try:
        target = EXPORTERS[name]
    except KeyError:
        raise OptinError(f"unknown export format {name!r}; choose one of {', '.join(EXPORTERS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()
