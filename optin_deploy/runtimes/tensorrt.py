"""TensorRT engines (TensorRT Python API, torch CUDA tensors as I/O buffers) and torch-tensorrt
exported programs. Both need a CUDA GPU and NVIDIA's wheels::

    pip install "optin-deploy[tensorrt]" --extra-index-url https://pypi.nvidia.com

TensorRT is imported lazily; without it (or without a GPU) loading raises MissingRuntimeError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import OptinError
from .base import Runtime, import_tensorrt, import_torch_tensorrt, require_cuda


def resolve_file(artifact: Any, names: tuple[str, ...], what: str) -> Path:
    p = Path(artifact)
    if p.is_dir():
        for n in names:
            if (p / n).exists():
                return p / n
        raise OptinError(f"no {' or '.join(names)} in {p}; export one with: optin-deploy export MODEL_DIR --format tensorrt --out {p}")
    if not p.exists():
        raise OptinError(f"{what} {p} does not exist")
    return p


def trt_to_torch_dtype(trt, dt) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.int8: torch.int8,
        trt.bool: torch.bool,
    }
    for attr, tdt in (("int64", torch.int64), ("bfloat16", torch.bfloat16)):
        if hasattr(trt, attr):
            table[getattr(trt, attr)] = tdt
    try:
        return table[dt]
    except KeyError:
        raise OptinError(f"TensorRT tensor type {dt} is not supported by this runner") from None


class TensorRTRuntime(Runtime):
    """Runs a serialized engine with ``execute_async_v3``."""

    def __init__(self, name: str = "tensorrt"):
        self.name = name
        self.device = "cuda"
        self.trt = import_tensorrt()
        require_cuda("runtime 'tensorrt'")
        self.engine = None

    def load(self, artifact: Any) -> "TensorRTRuntime":
        trt = self.trt
        self.path = resolve_file(artifact, ("model.engine",), "TensorRT engine")
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)  # kept: TensorRT's runtime must outlive the engines it deserialised
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise OptinError(
                f"TensorRT {trt.__version__} cannot deserialize {self.path}; engines only run with the TensorRT "
                f"version and GPU they were built for: rebuild it here with optin-deploy export --format tensorrt"
            )
        self.context = self.engine.create_execution_context()
        if self.context is None:  # its activation memory could not be allocated
            raise OptinError(f"TensorRT could not create an execution context for {self.path} (out of GPU memory?)")
        self.inputs: dict[str, torch.dtype] = {}
        self.outputs: dict[str, torch.dtype] = {}
        for i in range(self.engine.num_io_tensors):
            n = self.engine.get_tensor_name(i)
            dt = trt_to_torch_dtype(trt, self.engine.get_tensor_dtype(n))
            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                self.inputs[n] = dt
            else:
                self.outputs[n] = dt
        self.output_name = "logits" if "logits" in self.outputs else next(iter(self.outputs))
        self.stream = torch.cuda.Stream()
        return self

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def run(self, inputs: Mapping[str, Any]) -> np.ndarray:
        if self.engine is None:
            raise OptinError(f"runtime {self.name}: call load() before run()")
        keep = []
        for n, dt in self.inputs.items():
            if n not in inputs:  # a missing token_type_ids is all zeros (single sentences), as on onnxruntime
                if n == "token_type_ids" and "input_ids" in inputs:
                    t = torch.zeros(tuple(np.shape(inputs["input_ids"])), dtype=dt, device="cuda")
                else:
                    raise OptinError(f"{self.path} needs input {n!r}; got {list(inputs)}")
            else:
                t = torch.as_tensor(inputs[n]).to("cuda", dtype=dt).contiguous()
            keep.append(t)
            if not self.context.set_input_shape(n, tuple(t.shape)):
                raise OptinError(f"input {n} of shape {tuple(t.shape)} is outside the engine's optimisation profile ({self.path})")
            self.context.set_tensor_address(n, t.data_ptr())
        outs = {}
        for n, dt in self.outputs.items():
            shape = tuple(self.context.get_tensor_shape(n))
            outs[n] = torch.empty(shape, dtype=dt, device="cuda")
            self.context.set_tensor_address(n, outs[n].data_ptr())
        torch.cuda.current_stream().synchronize()  # inputs are copied on the current stream
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise OptinError(f"TensorRT execution failed for {self.path}")
        self.stream.synchronize()
        return outs[self.output_name].float().cpu().numpy()

    def describe(self) -> dict:
        return {
            "runtime": self.name,
            "backend": "tensorrt",
            "device": "cuda",
            "gpu": torch.cuda.get_device_name(),
            "version": self.trt.__version__,
            "artifact": str(getattr(self, "path", "")),
        }


def loaded_module(obj):
    """What ``torch_tensorrt.load`` returned, as a callable: an ExportedProgram's ``.module()`` (``.ep`` files), a
    TorchScript module as it is."""
    if isinstance(obj, torch.export.ExportedProgram):
        return obj.module()
    if callable(obj):
        return obj
    raise OptinError(f"torch_tensorrt.load returned a {type(obj).__name__}, not a program it can run; re-export with --format torch-tensorrt")


class TorchTensorRTRuntime(Runtime):
    """Runs a program saved by ``torch_tensorrt.save`` (ExportedProgram format)."""

    def __init__(self, name: str = "torch-tensorrt"):
        self.name = name
        self.device = "cuda"
        self.tt = import_torch_tensorrt()
        require_cuda("runtime 'torch-tensorrt'")
        self.module = None

    def load(self, artifact: Any) -> "TorchTensorRTRuntime":
        import json

        self.path = resolve_file(artifact, ("model.ep",), "torch-tensorrt program")
        meta = self.path.with_suffix(".json")
        self.input_names = json.loads(meta.read_text())["input_names"] if meta.exists() else None
        self.module = loaded_module(self.tt.load(str(self.path)))
        return self

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, Any]) -> np.ndarray:
        if self.module is None:
            raise OptinError(f"runtime {self.name}: call load() before run()")
        names = self.input_names or list(inputs)
        args = [torch.as_tensor(inputs[n]).to("cuda") for n in names]
        out = self.module(*args)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out.float().cpu().numpy()

    def describe(self) -> dict:
        return {
            "runtime": self.name,
            "backend": "torch-tensorrt",
            "device": "cuda",
            "gpu": torch.cuda.get_device_name(),
            "version": getattr(self.tt, "__version__", "?"),
            "artifact": str(getattr(self, "path", "")),
        }
