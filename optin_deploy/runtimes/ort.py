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


def session_providers(provider: str, provider_options: Mapping[str, Any] | None = None,
                      available: list[str] | tuple[str, ...] = ()) -> list:
    """The ``providers`` list of an ``InferenceSession`` that runs on ``provider``: it first (with its options), then,
    behind the TensorRT provider, CUDA (when this onnxruntime has it) for the nodes TensorRT does not take, as
    onnxruntime's TensorRT documentation recommends (without it they run on the CPU, with a copy to the host and back
    for each, inside the timings), and the CPU provider last for the few ops no GPU provider takes."""
    out: list = [(provider, dict(provider_options)) if provider_options else provider]
    if provider == "TensorrtExecutionProvider" and "CUDAExecutionProvider" in available:
        out.append("CUDAExecutionProvider")
    if provider != "CPUExecutionProvider":
        out.append("CPUExecutionProvider")
    return out


def tensorrt_ep_options(precision: str = "fp32") -> dict:
    """onnxruntime TensorRT provider options for an engine in ``precision``: ``trt_fp16_enable`` / ``trt_bf16_enable``
    (TensorRT picks per layer among fp32 and that type); fp32 takes none. int8 is refused (it needs a calibration table)."""
    if precision == "fp32":
        return {}
    if precision in ("fp16", "bf16"):
        return {f"trt_{precision}_enable": True}
    raise OptinError(f"onnxruntime's TensorRT provider is timed here in fp32, fp16 or bf16, not {precision}")


def session_settings(desc: Mapping[str, Any]) -> dict | None:
    """The ``onnxruntime.InferenceSession`` settings of a runtime from its ``describe()`` (None for other
    backends): what a server sets to run an artefact as the build measured it."""
    if desc.get("backend") != "onnxruntime":
        return None
    provider = desc.get("provider") or PROVIDERS.get(desc.get("runtime", ""), "CPUExecutionProvider")
    used = desc.get("providers")  # what the session ran with (the CUDA fallback behind TensorRT only where it was there)
    d: dict = {"backend": "onnxruntime", "providers": list(used) if used else session_providers(provider)}
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
        providers = session_providers(self.provider, self.provider_options, ort.get_available_providers())
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
        if self.provider_options:  # e.g. trt_fp16_enable: the precision the TensorRT provider ran at
            d["provider_options"] = {k: (v if isinstance(v, (bool, int, float)) else str(v)) for k, v in self.provider_options.items()}
        if self.path is not None:
            d["artifact"] = str(self.path)
        return d
