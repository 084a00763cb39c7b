"""onnxruntime: CPU, CUDA and TensorRT execution providers.

The requested provider must be available (``onnxruntime.get_available_providers()``) and must be the
one the session actually uses (``session.get_providers()``); otherwise this raises
:class:`MissingRuntimeError` instead of quietly running on the CPU.

On GPU hosts replace ``onnxruntime`` by ``onnxruntime-gpu`` (they cannot coexist).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import MissingRuntimeError, OptinError
from .base import Runtime, numpy_feed

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-tensorrt": "TensorrtExecutionProvider",
}

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}

#: session-level graph fusions turned off on the CPU provider (see OrtRuntime.__init__)
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)

GPU_HINT = "on a GPU host: pip uninstall -y onnxruntime && pip install onnxruntime-gpu (the two cannot coexist)"


def resolve_onnx(artifact: Any) -> Path:
    """An ONNX file, or a bundle folder holding ``model.optimized.onnx`` / ``model.onnx``."""
    p = Path(artifact)
    if p.is_dir():
        for name in ("model.optimized.onnx", "model.onnx"):
            if (p / name).exists():
                return p / name
        raise OptinError(f"no model.onnx in {p}; export one with: optin-deploy export MODEL_DIR --format onnx --out {p}")
    if not p.exists():
        raise OptinError(f"ONNX file {p} does not exist")
    return p


class OrtRuntime(Runtime):
    def __init__(
        self,
        name: str = "ort-cpu",
        threads: int | None = None,
        provider_options: dict | None = None,
        graph_optimization: str = "all",
        spinning: bool = True,
        profile_file: str | None = None,
        disabled_optimizers: tuple[str, ...] | None = None,
    ):
        import onnxruntime as ort

        self.ort = ort
        self.name = name
        self.provider = PROVIDERS[name]
        self.device = "cpu" if name == "ort-cpu" else "cuda"
        self.threads = threads
        self.provider_options = provider_options or {}
        self.graph_optimization = graph_optimization
        self.spinning = spinning
        self.profile_file = profile_file
        # onnxruntime 1.32's CPU SkipLayerNormalization kernel is slower than the Add + Add + LayerNorm
        # it replaces (measured: 1.49 vs 0.54 ms per call at 8 x 128 x 384; int8 MiniLM 1244 vs 1076 ms
        # on a loaded machine), so on the CPU provider the session does not fuse it
        self.disabled_optimizers = tuple(disabled_optimizers) if disabled_optimizers is not None else (
            CPU_DISABLED_OPTIMIZERS if self.provider == "CPUExecutionProvider" else ())
        self.session = None
        self.path: Path | None = None
        available = ort.get_available_providers()
        if self.provider not in available:
            raise MissingRuntimeError(
                f"onnxruntime {ort.__version__} here has no {self.provider} (available: {', '.join(available)}); {GPU_HINT}"
            )

    def load(self, artifact: Any) -> "OrtRuntime":
        ort = self.ort
        self.path = resolve_onnx(artifact)
        so = ort.SessionOptions()
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
            so.inter_op_num_threads = 1
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[self.graph_optimization]
        so.log_severity_level = 3
        if not self.spinning:  # idle intra-op threads sleep instead of spinning (several sessions in one process)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.profile_file:  # onnxruntime's own per-node profiler (JSON trace, see end_profiling)
            so.enable_profiling = True
            so.profile_file_prefix = str(self.profile_file)
        providers: list = [(self.provider, self.provider_options)] if self.provider_options else [self.provider]
        if self.provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")  # for the few ops a GPU provider does not take
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=so, providers=providers,
                                                disabled_optimizers=list(self.disabled_optimizers))
        except Exception as exc:
            raise OptinError(f"onnxruntime cannot load {self.path}: {str(exc).splitlines()[0][:300]}") from None
        used = self.session.get_providers()
        if not used or used[0] != self.provider:
            raise MissingRuntimeError(
                f"onnxruntime could not start {self.provider} (session uses {used}); check the CUDA/cuDNN/TensorRT "
                f"libraries it needs are installed; {GPU_HINT}"
            )
        self.inputs = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name
        return self

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def run(self, inputs: Mapping[str, Any]) -> np.ndarray:
        if self.session is None:
            raise OptinError(f"runtime {self.name}: call load() before run()")
        feed = numpy_feed(self.path, self.inputs, inputs)
        out = self.session.run([self.output_name], feed)[0]
        return out.astype(np.float32, copy=False)

    def describe(self) -> dict:
        d = {
            "runtime": self.name,
            "backend": "onnxruntime",
            "provider": self.provider,
            "providers": self.session.get_providers() if self.session else None,
            "device": self.device,
            "version": self.ort.__version__,
            "threads": self.threads,
            "spinning": self.spinning,
            "disabled_optimizers": list(self.disabled_optimizers),
        }
        if self.path is not None:
            d["artifact"] = str(self.path)
        return d
