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
from ..model_io import TORCH_DTYPES, LogitsModel, input_names_for, is_text, is_text_input, output_name_for  # noqa: F401 (re-exported)

PRECISIONS = ("fp32", "fp16", "bf16")


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


def prepare_for_export(model) -> None:
    """Let the model's family adapter switch it to an exportable code path (e.g. Swin: eager attention)."""
    from ..adapters import get_adapter

    try:
        get_adapter(model).for_export()
    except OptinError:  # not a family the core knows: exported as it is
        pass


def max_positions(model: torch.nn.Module) -> int | None:
    """The longest sequence the model takes (its adapter knows the family's position offset)."""
    from ..adapters import get_adapter

    return get_adapter(model).max_positions()


class Exporter(ABC):
    """One deployment target."""

    name: str = ""
    suffix: str = ""
    precisions: tuple[str, ...] = ("fp32", "fp16", "bf16")  # what ``precision`` may be, in the order the error lists them

    def check_precision(self, precision: str) -> None:
        """A precision this target does not build: one line naming the ones it does."""
        if precision not in self.precisions:
            *rest, last = self.precisions
            raise OptinError(f"unknown precision {precision!r}; choose {', '.join(rest)} or {last}")

    @staticmethod
    def arrange(example_inputs: Mapping[str, torch.Tensor], out_path: str | os.PathLike, input_names: Sequence[str] | None,
                profile: ShapeProfile | None) -> tuple[Path, ShapeProfile, dict[str, torch.Tensor], list[str]]:
        """What every ``export`` starts from: the destination as a ``Path``, the shape profile (default
        :class:`ShapeProfile`), the example inputs in the artifact's input order, and their names."""
        inputs = ordered_inputs(example_inputs, input_names)
        return Path(out_path), profile or ShapeProfile(), inputs, list(inputs)

    @staticmethod
    def check_seq_len(model: torch.nn.Module, text: bool, profile: ShapeProfile) -> None:
        """A text profile longer than the model's position embeddings: one line, before any work."""
        maxpos = max_positions(model)
        if text and maxpos is not None and profile.max_seq > maxpos:
            raise OptinError(f"--max-seq-len {profile.max_seq} exceeds the model's {maxpos} position embeddings; pass --max-seq-len {maxpos} or less")

    @abstractmethod
    def export(self, model: torch.nn.Module, example_inputs: Mapping[str, torch.Tensor], out_path: str | os.PathLike, **opts) -> ExportResult:
        """Write the artifact to ``out_path`` (atomically) and return it with its metadata."""


# name -> "module:Class"; imported lazily so optional back-ends cost nothing until used.
EXPORTERS: dict[str, str] = {
    "onnx": "optin_deploy.exporters.onnx:OnnxExporter",
    "tensorrt": "optin_deploy.exporters.tensorrt:TensorRTExporter",
    "torch-tensorrt": "optin_deploy.exporters.torch_tensorrt:TorchTensorRTExporter",
    "aoti": "optin_deploy.exporters.aoti:AotiExporter",
}


def get_exporter(name: str) -> Exporter:
    try:
        target = EXPORTERS[name]
    except KeyError:
        raise OptinError(f"unknown export format {name!r}; choose one of {', '.join(EXPORTERS)}") from None
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)()
