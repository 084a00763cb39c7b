"""PyTorch eager runtime (CPU, or CUDA when present), optionally through ``torch.compile``; on CUDA in fp32, fp16 or
bf16 (``precision``: the model's weights and activations cast, what a GPU deployment without an export runs in)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import OptinError
from .base import Runtime, load_torch_model, require_cuda


class TorchRuntime(Runtime):
    def __init__(self, name: str = "torch-cpu", threads: int | None = None, compile: bool = False, precision: str = "fp32"):
        self.name = name
        self.device = "cuda" if name == "torch-cuda" else "cpu"
        self.threads = threads
        self.compile = compile
        from ..model_io import TORCH_DTYPES

        if precision not in TORCH_DTYPES or (precision != "fp32" and self.device != "cuda"):
            raise OptinError(f"runtime {name} runs in {'fp32, fp16 or bf16' if self.device == 'cuda' else 'fp32'}, not {precision}")
        self.precision = precision
        self.model = None
        self.input_names: list[str] | None = None
        if self.device == "cuda":
            require_cuda("runtime 'torch-cuda'")

    def load(self, artifact: Any) -> "TorchRuntime":
        from ..model_io import LogitsModel, input_names_for

        if isinstance(artifact, (str, os.PathLike)):
            artifact = load_torch_model(artifact)
        if not isinstance(artifact, torch.nn.Module):
            raise OptinError(f"runtime {self.name} needs a PyTorch model or model folder, got {type(artifact).__name__}")
        if self.threads:
            torch.set_num_threads(int(self.threads))
        from ..model_io import TORCH_DTYPES

        model = artifact if isinstance(artifact, LogitsModel) else LogitsModel(artifact, input_names_for(artifact))
        if self.precision != "fp32":  # cast the model and its float inputs inside the wrapper; the logits come back float32
            model = LogitsModel(model.model, model.input_names, compute_dtype=TORCH_DTYPES[self.precision])
        self.input_names = model.input_names
        model = model.eval().to(self.device)
        self.model = torch.compile(model, dynamic=True) if self.compile else model
        return self

    @torch.inference_mode()
    def run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> np.ndarray:
        if self.model is None:
            raise OptinError(f"runtime {self.name}: call load() before run()")
        args = [torch.as_tensor(inputs[n]).to(self.device, non_blocking=True) for n in self.input_names]
        return self.model(*args).float().cpu().numpy()

    def describe(self) -> dict:
        d = {
            "runtime": self.name,
            "backend": "pytorch" + (" + torch.compile" if self.compile else ""),
            "device": self.device,
            "version": torch.__version__,
            "threads": torch.get_num_threads() if self.device == "cpu" else None,
            "precision": self.precision,
        }
        if self.device == "cuda":
            d["gpu"] = torch.cuda.get_device_name()
        return d
