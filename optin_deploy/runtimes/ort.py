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

from ..errors import MissingRuntimeError, OptinError, short_reason
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

#: the session config entry that flushes denormal floats to zero (FTZ + DAZ). onnxruntime applies it to the
#: session's intra-op threads, and -- once per process, from the *first* session created -- to the thread that
#: creates the session (also the thread that runs it here). On the CPU provider it is on by default: real text
#: makes a trained transformer's softmax produce denormal probabilities, and x86 multiplies them through a
#: microcode assist: measured on all-MiniLM-L6-v2 int8, 8 x 128 real sentences, 2 threads, 51.6 -> 28.7 ms
#: (random token ids: 29.6 ms either way). Only values below about 1e-38 become 0: the logits of that batch came out
#: bit-identical (benchmarks/denormals.py).
DENORMAL_AS_ZERO = "session.set_denormal_as_zero"

#: the session settings the CPU provider runs with unless told otherwise (what a server needs to match the
#: figures a build reports: see :meth:`OrtRuntime.session_settings`)
CPU_FLUSH_DENORMALS = True

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


def session_settings(desc: Mapping[str, Any]) -> dict | None:
    """The ``onnxruntime.InferenceSession`` settings of a runtime from its ``describe()`` (None for other
    backends): what a server sets to run an artefact as the build measured it."""
    if desc.get("backend") != "onnxruntime":
        return None
    provider = desc.get("provider") or PROVIDERS.get(desc.get("runtime", ""), "CPUExecutionProvider")
    d: dict = {"backend": "onnxruntime", "providers": [provider] + (["CPUExecutionProvider"] if provider != "CPUExecutionProvider" else [])}
    if desc.get("threads"):
        d["intra_op_num_threads"] = int(desc["threads"])
        d["inter_op_num_threads"] = 1
    d["session_config"] = {DENORMAL_AS_ZERO: "1"} if desc.get("flush_denormals") else {}
    d["disabled_optimizers"] = list(desc.get("disabled_optimizers") or [])
    return d


def session_snippet(settings: Mapping[str, Any], model_file: str = "onnx/pruned/model.onnx", input_names=()) -> str:
    """Python that opens a session with ``settings`` (:func:`session_settings`): the bundle report's recipe;
    ``input_names``: the graph's inputs, shown in a ``session.run`` comment."""
    lines = ["import onnxruntime as ort", "", "so = ort.SessionOptions()"]
    if settings.get("intra_op_num_threads"):
        lines += [f"so.intra_op_num_threads = {settings['intra_op_num_threads']}", f"so.inter_op_num_threads = {settings.get('inter_op_num_threads', 1)}"]
    for k, v in (settings.get("session_config") or {}).items():
        lines.append(f"so.add_session_config_entry({k!r}, {v!r})  # flush denormals to zero (see the note below)")
    extra = f", disabled_optimizers={list(settings['disabled_optimizers'])!r}" if settings.get("disabled_optimizers") else ""
    lines.append(f"session = ort.InferenceSession({model_file!r}, so, providers={list(settings['providers'])!r}{extra})")
    if input_names:
        lines.append(f"# logits = session.run(None, {{{', '.join(f'{n!r}: ...' for n in input_names)}}})[0]")
    return "\n".join(lines)


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
        flush_denormals: bool | None = None,
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
        # FTZ / DAZ (see DENORMAL_AS_ZERO): on by default on the CPU provider; GPU providers compute on the device
        self.flush_denormals = bool(flush_denormals) if flush_denormals is not None else (
            CPU_FLUSH_DENORMALS and self.provider == "CPUExecutionProvider")
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
        so.log_severity_level = 4  # fatal only: its errors come back as exceptions, which the caller words in one line
        if not self.spinning:  # idle intra-op threads sleep instead of spinning (several sessions in one process)
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.flush_denormals:
            so.add_session_config_entry(DENORMAL_AS_ZERO, "1")
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
            raise OptinError(f"onnxruntime cannot load {self.path}: {short_reason(exc, 300)}") from None
        used = self.session.get_providers()
        if not used or used[0] != self.provider:
            raise MissingRuntimeError(
                f"onnxruntime could not start {self.provider} (session uses {used}); check the CUDA/cuDNN/TensorRT "
                f"libraries it needs are installed; {GPU_HINT}"
            )
        self.inputs = {i.name: _ORT_TYPES.get(i.type, np.float32) for i in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name
        return self

    def session_settings(self) -> dict:
        """How to open an ``onnxruntime.InferenceSession`` that runs as this one does (a server's settings)."""
        return session_settings(self.describe())

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
            "flush_denormals": self.flush_denormals,
        }
        if self.path is not None:
            d["artifact"] = str(self.path)
        return d
