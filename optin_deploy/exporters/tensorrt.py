"""TensorRT engines built from the ONNX export with the TensorRT Python API.

* one optimisation profile (min / opt / max shapes from :class:`ShapeProfile`);
* precision fp32, fp16 or bf16 (bf16 only on GPUs with compute capability >= 8.0). Where TensorRT
  supports strongly typed networks (10.x with ``STRONGLY_TYPED``; always in 11.x, which removed
  ``BuilderFlag.FP16/BF16``) the compute type is baked into the ONNX graph at export
  (float32 inputs and logits) and the network is built strongly typed; older TensorRT gets the
  fp32 graph plus ``BuilderFlag.FP16``/``BF16``;
* a workspace limit (``set_memory_pool_limit(WORKSPACE, ...)``);
* a timing cache file reused across builds (default ``~/.cache/optin-deploy/tensorrt-timing.cache``);
* output: the serialized engine and ``<engine>.json`` describing its I/O tensors and profile;
* the engine is parity-checked against PyTorch before it is moved into place.

Needs NVIDIA's wheels and a CUDA GPU; otherwise raises MissingRuntimeError with the install line.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

import torch

from ..errors import OptinError
from ..runtimes.base import import_tensorrt, require_cuda
from .base import Exporter, ExportResult, LogitsModel, ShapeProfile, atomic_path, output_name_for
from .parity import check_parity, parity_inputs


def default_timing_cache() -> Path:
    """TensorRT's timing cache in the optin-deploy cache (read when the export runs, not when this module is imported)."""
    from ..data.assets import cache_root

    return cache_root() / "tensorrt-timing.cache"


def check_bf16_supported() -> None:
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise OptinError(
            f"--precision bf16 needs a GPU with compute capability >= 8.0 (Ampere or newer); "
            f"{torch.cuda.get_device_name()} is sm_{major}{minor}: use --precision fp16"
        )


def _write_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path, stage="write") as tmp:
        tmp.write_bytes(data)


def engine_bindings(trt, engine) -> dict:
    """Names, modes, dtypes, shapes (-1 = dynamic) and profile-0 shapes of an engine's I/O tensors."""
    tensors = []
    for i in range(engine.num_io_tensors):
        n = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        entry = {
            "name": n,
            "mode": "input" if is_input else "output",
            "dtype": str(engine.get_tensor_dtype(n)).split(".")[-1].lower(),
            "shape": list(engine.get_tensor_shape(n)),
        }
        if is_input:
            mn, opt, mx = engine.get_tensor_profile_shape(n, 0)
            entry["profile"] = {"min": list(mn), "opt": list(opt), "max": list(mx)}
        tensors.append(entry)
    return {"tensors": tensors, "num_optimization_profiles": engine.num_optimization_profiles}


class TensorRTExporter(Exporter):
    name = "tensorrt"
    suffix = ".engine"

    def export(
        self,
        model: torch.nn.Module,
        example_inputs: Mapping[str, torch.Tensor],
        out_path: str | os.PathLike,
        *,
        input_names: list[str] | None = None,
        profile: ShapeProfile | None = None,
        precision: str = "fp32",
        workspace_gb: float = 4.0,
        timing_cache: str | os.PathLike | None = None,
        onnx_path: str | os.PathLike | None = None,
        opset: int | None = None,
        parity: bool = True,
        parity_inputs_list: list[dict[str, torch.Tensor]] | None = None,
        task=None,
    ) -> ExportResult:
        """Build ``out_path`` (an ``.engine``). ``onnx_path``: an fp32 ONNX export to build from (made
        here in a temporary folder when missing or when the precision must be baked into the graph)."""
        trt = import_tensorrt()
        require_cuda("TensorRT engine building")
        self.check_precision(precision)
        if precision == "bf16":
            check_bf16_supported()
        out_path, profile, inputs, names = self.arrange(example_inputs, out_path, input_names, profile)
        trt_major = int(trt.__version__.split(".")[0])
        flag_enum = trt.NetworkDefinitionCreationFlag
        strongly_typed = hasattr(flag_enum, "STRONGLY_TYPED")
        weak_flag = None
        if precision != "fp32" and not strongly_typed:
            weak_flag = getattr(trt.BuilderFlag, precision.upper(), None)
            if weak_flag is None:
                raise OptinError(f"TensorRT {trt.__version__} supports neither strongly typed networks nor BuilderFlag.{precision.upper()}; upgrade TensorRT")

        from .onnx import OnnxExporter

        meta: dict = {"format": "tensorrt", "tensorrt_version": trt.__version__, "precision": precision,
                      "typing": "strong" if strongly_typed else "weak", "input_names": names, "output_names": [output_name_for(model)]}
        with tempfile.TemporaryDirectory(prefix=".trt-onnx.", dir=out_path.parent if out_path.parent.exists() else None) as td:
            # the graph TensorRT parses: precision baked in when strongly typed
            if onnx_path is None or (strongly_typed and precision != "fp32"):
                src = Path(td) / "model.onnx"
                res = OnnxExporter().export(model, inputs, src, profile=profile, opset=opset,
                                            precision=precision if strongly_typed else "fp32",
                                            parity=precision == "fp32", task=task, parity_inputs_list=parity_inputs_list)
                meta["onnx"] = {k: res.metadata.get(k) for k in ("opset", "precision", "export_seconds")}
            else:
                src = Path(onnx_path)
            meta["onnx_source"] = str(onnx_path) if onnx_path and src == Path(onnx_path) else "temporary export"

            logger = trt.Logger(trt.Logger.WARNING)
            builder = trt.Builder(logger)
            flags = 0
            if strongly_typed and precision != "fp32":
                flags |= 1 << int(flag_enum.STRONGLY_TYPED)
            if trt_major < 10 and hasattr(flag_enum, "EXPLICIT_BATCH"):
                flags |= 1 << int(flag_enum.EXPLICIT_BATCH)
            network = builder.create_network(flags)
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(src)):
                errs = [str(parser.get_error(i)) for i in range(parser.num_errors)]
                raise OptinError(f"TensorRT build failed at ONNX parsing: {errs[0] if errs else 'unknown error'}")

            config = builder.create_builder_config()
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * 2**30))
            if weak_flag is not None:
                config.set_flag(weak_flag)
            shapes = profile.shapes(inputs)
            opt_profile = builder.create_optimization_profile()
            for i in range(network.num_inputs):
                n = network.get_input(i).name
                if n not in shapes:
                    raise OptinError(f"TensorRT build failed at profile: the ONNX input {n!r} is not one of {names}")
                s = shapes[n]
                opt_profile.set_shape(n, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
            config.add_optimization_profile(opt_profile)

            cache_path = Path(timing_cache) if timing_cache else default_timing_cache()
            cache_bytes = cache_path.read_bytes() if cache_path.exists() else b""
            cache = config.create_timing_cache(cache_bytes)
            if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
                cache = config.create_timing_cache(b"")  # a cache from another GPU/version: start afresh
                config.set_timing_cache(cache, ignore_mismatch=False)
                cache_bytes = b""
            meta["timing_cache"] = {"path": str(cache_path), "reused": bool(cache_bytes)}
            meta["workspace_gb"] = workspace_gb
            meta["profile"] = {"settings": profile.to_dict(), "shapes": shapes}

            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise OptinError("TensorRT build failed at build_serialized_network (see the TensorRT log above); try a larger --workspace-gb or --precision fp32")
            engine_bytes = bytes(serialized)
            try:
                cache_path.parent.mkdir(parents=True, exist_ok=True)
                _write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
            except (OSError, OptinError) as exc:
                meta["timing_cache"]["write_error"] = str(exc)

        engine = trt.Runtime(logger).deserialize_cuda_engine(engine_bytes)
        meta["bindings"] = engine_bindings(trt, engine)
        meta["gpu"] = torch.cuda.get_device_name()
        meta["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
        del engine

        with atomic_path(out_path, stage="TensorRT engine") as tmp:
            tmp.write_bytes(engine_bytes)
            if parity:
                from ..runtimes.tensorrt import TensorRTRuntime

                rt = TensorRTRuntime().load(tmp)
                plist = parity_inputs_list or parity_inputs(inputs, task=task, profile=profile)
                ref = LogitsModel(model.eval(), names)
                meta["parity"] = check_parity(ref, rt.run, plist, precision=precision, what=f"TensorRT {precision} engine")
                meta["parity"]["runtime"] = rt.describe()
                del rt
            bindings_path = out_path.with_name(out_path.name + ".json")
            _write_atomic(bindings_path, json.dumps({k: meta[k] for k in ("tensorrt_version", "precision", "typing", "gpu", "compute_capability", "profile", "bindings")}, indent=2).encode())
        meta["path"] = str(out_path)
        meta["bindings_path"] = str(bindings_path)
        meta["engine_bytes"] = len(engine_bytes)
        return ExportResult(path=out_path, metadata=meta)
