"""OpenVINO on the CPU: reads the bundle's ONNX file directly (``openvino`` on PyPI, optional extra).

Names: ``openvino-cpu`` runs in the file's fp32 (``INFERENCE_PRECISION_HINT = f32``; OpenVINO's own
default on CPUs with bf16 instructions is bf16, which changes the numbers), ``openvino-cpu-bf16``
runs the same fp32 file in bf16 (only where the CPU reports ``BF16``; accuracy is measured through it
like any other artefact). Both compile with ``PERFORMANCE_HINT = LATENCY`` (one stream) and the
profile's threads (``INFERENCE_NUM_THREADS``).

What OpenVINO reads: the plain (dynamo) graph, the fused graph with onnxruntime's com.microsoft
``Attention`` / ``BiasGelu`` operators, and standard-ONNX int8 (``DynamicQuantizeLinear`` /
``MatMulInteger``). It does **not** read onnxruntime's ``QAttention`` (what
``quantize_dynamic`` makes of a fused Attention), so an int8 bundle of the fused graph runs on
OpenVINO from its ``model.fp32.onnx`` (:func:`openvino_file` picks it and says so).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import MissingRuntimeError, OptinError, short_reason
from .base import Runtime, numpy_feed

OPENVINO_INSTALL = 'pip install "optin-deploy[openvino]" (or: pip install openvino)'

#: runtime name -> OpenVINO inference precision
PRECISIONS = {"openvino-cpu": "f32", "openvino-cpu-bf16": "bf16"}


def import_openvino():
    """``import openvino`` or a one-line :class:`MissingRuntimeError` saying how to install it."""
    try:
        return importlib.import_module("openvino")
    except Exception as exc:  # ImportError, or a broken install failing to load its libraries
        first = short_reason(exc) or "not installed"
        raise MissingRuntimeError(f"OpenVINO is not available ({type(exc).__name__}: {first}); install it with: {OPENVINO_INSTALL}") from None


_CORE = None


def _core():
    global _CORE
    if _CORE is None:
        _CORE = import_openvino().Core()
    return _CORE


def _unconverted(exc: Exception) -> str:
    """The operators OpenVINO's ONNX front end could not convert, from its error text."""
    m = re.search(r"No conversion rule found for operations:\s*([^\n]+)", str(exc))
    return m.group(1).strip() if m else str(exc).strip().splitlines()[-1][:200] if str(exc).strip() else type(exc).__name__


def read_error(path: str | Path) -> str | None:
    """None when OpenVINO reads ``path``, else one line saying which operators it cannot convert."""
    try:
        _core().read_model(str(path))
    except MissingRuntimeError:
        raise
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError / OpConversionFailure
        return f"OpenVINO cannot read {Path(path).name}: no conversion for {_unconverted(exc)}"
    return None


def openvino_file(manifest: dict) -> tuple[Path, str | None]:
    """The file of an ONNX bundle OpenVINO runs: the artifact when it reads it, else the bundle's fp32 graph
    (an onnxruntime int8 file of the fused graph holds ``QAttention``). Returns ``(path, note)``; the note
    says when the fp32 file replaced the artifact."""
    meta = (manifest.get("artifacts") or {}).get("onnx") or {}
    art = Path(manifest["artifact"])
    err = read_error(art)
    if err is None:
        return art, None
    fp32 = meta.get("fp32_path") or (str(art.parent / meta["fp32_file"]) if meta.get("fp32_file") else None)
    if fp32 and Path(fp32).is_file() and read_error(fp32) is None:
        return Path(fp32), f"{err} (onnxruntime's int8 operators); OpenVINO runs the bundle's fp32 graph {Path(fp32).name}"
    raise OptinError(f"{err}; this bundle has no fp32 graph OpenVINO reads: run it on ort-cpu")


def compile_settings(desc: dict) -> dict | None:
    """The ``Core.compile_model`` settings of an OpenVINO runtime from its ``describe()`` (None for other backends):
    what a server sets to run an artefact as the build measured it."""
    if desc.get("backend") != "openvino":
        return None
    config = {"PERFORMANCE_HINT": desc.get("performance_hint") or "LATENCY", "INFERENCE_PRECISION_HINT": desc.get("inference_precision") or "f32"}
    if desc.get("threads"):
        config["INFERENCE_NUM_THREADS"] = int(desc["threads"])
    return {"backend": "openvino", "device": "CPU", "config": config}


def compile_snippet(settings: dict, model_file: str, input_names=("input_ids", "attention_mask")) -> str:
    """Python that compiles ``model_file`` with ``settings`` (:func:`compile_settings`): the bundle report's recipe;
    ``input_names``: the graph's inputs, shown in the call."""
    feed = ", ".join(f"{n!r}: ..." for n in input_names)
    return "\n".join(["import openvino as ov", "", "core = ov.Core()",
                      f"compiled = core.compile_model({model_file!r}, {settings.get('device', 'CPU')!r}, {dict(settings['config'])!r})",
                      f"request = compiled.create_infer_request()  # request.infer({{{feed}}})"])


def bf16_supported() -> bool:
    """Whether OpenVINO offers bf16 inference on this CPU (``openvino-cpu-bf16``: AVX512-BF16 or AMX)."""
    try:
        import_openvino()
        return "BF16" in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # noqa: BLE001 - not installed, or no CPU plugin: no bf16 here
        return False


class OpenVinoRuntime(Runtime):
    def __init__(self, name: str = "openvino-cpu", threads: int | None = None, performance_hint: str = "LATENCY"):
        self.ov = import_openvino()
        self.name = name
        self.device = "cpu"
        self.threads = threads
        self.performance_hint = performance_hint
        self.inference_precision = PRECISIONS[name]
        self.compiled = None
        self.request = None
        self.path: Path | None = None
        if self.inference_precision == "bf16":
            caps = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            if "BF16" not in caps:
                raise MissingRuntimeError(f"{name} needs a CPU with bf16 instructions; this one offers {', '.join(caps)}: use openvino-cpu")

    def load(self, artifact: Any) -> "OpenVinoRuntime":
        from .ort import resolve_onnx

        self.path = resolve_onnx(artifact)
        core = _core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # noqa: BLE001
            fp32 = self.path.with_name("model.fp32.onnx")
            hint = f"; run OpenVINO on the fp32 graph {fp32}" if fp32.is_file() and fp32 != self.path else ""
            raise OptinError(f"OpenVINO {self.ov.__version__} cannot read {self.path}: no conversion for {_unconverted(exc)}{hint}") from None
        config = {"PERFORMANCE_HINT": self.performance_hint, "INFERENCE_PRECISION_HINT": self.inference_precision}
        if self.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:  # noqa: BLE001
            raise OptinError(f"OpenVINO cannot compile {self.path}: {str(exc).strip().splitlines()[-1][:300]}") from None
        self.request = self.compiled.create_infer_request()
        self.inputs = {i.get_any_name(): i.get_element_type().to_dtype() for i in self.compiled.inputs}
        self.output = self.compiled.output(0)
        return self

    @property
    def input_names(self) -> list[str]:
        return list(self.inputs)

    def run(self, inputs: Mapping[str, Any]) -> np.ndarray:
        if self.request is None:
            raise OptinError(f"runtime {self.name}: call load() before run()")
        feed = numpy_feed(self.path, self.inputs, inputs)
        res = self.request.infer(feed)
        return np.array(res[self.output], dtype=np.float32, copy=True)  # the request reuses its output buffer

    def describe(self) -> dict:
        d = {
            "runtime": self.name,
            "backend": "openvino",
            "device": self.device,
            "version": self.ov.__version__,
            "threads": self.threads,
            "performance_hint": self.performance_hint,
            "inference_precision": self.inference_precision,
        }
        if self.compiled is not None:
            d["compiled"] = {k: str(self.compiled.get_property(k)) for k in ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT")}
        if self.path is not None:
            d["artifact"] = str(self.path)
        return d
