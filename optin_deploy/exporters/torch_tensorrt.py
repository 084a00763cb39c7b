"""``--backend torch-tensorrt``: compile with ``torch_tensorrt.compile(ir="dynamo")`` using dynamic
``torch_tensorrt.Input(min_shape, opt_shape, max_shape, dtype)`` specs and save the result with
``torch_tensorrt.save`` (ExportedProgram format, ``model.ep``) plus ``model.json`` (input names).

fp16/bf16 are explicit: the wrapped model is cast and float inputs are cast inside the graph
(float32 inputs and logits), which is what strongly typed TensorRT (10.12+, 11.x) expects; with
older torch-tensorrt (no ``use_explicit_typing``) ``enabled_precisions`` is passed as well.
Needs NVIDIA's wheels and a CUDA GPU; otherwise raises MissingRuntimeError.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
from typing import Mapping

import torch

from ..errors import OptinError, short_reason
from ..runtimes.base import import_torch_tensorrt, require_cuda
from .base import TORCH_DTYPES, Exporter, ExportResult, LogitsModel, ShapeProfile, atomic_path, output_name_for
from .parity import check_parity, parity_inputs


class TorchTensorRTExporter(Exporter):
    name = "torch-tensorrt"
    suffix = ".ep"

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
        parity: bool = True,
        parity_inputs_list: list[dict[str, torch.Tensor]] | None = None,
        task=None,
    ) -> ExportResult:
        tt = import_torch_tensorrt()
        require_cuda("torch-tensorrt compilation")
        self.check_precision(precision)
        if precision == "bf16":
            from .tensorrt import check_bf16_supported

            check_bf16_supported()
        out_path, profile, inputs, names = self.arrange(example_inputs, out_path, input_names, profile)
        shapes = profile.shapes(inputs)
        dtype = TORCH_DTYPES[precision]
        wrapped = LogitsModel(copy.deepcopy(model).eval(), names, compute_dtype=dtype if precision != "fp32" else None).eval().cuda()
        specs = [
            tt.Input(min_shape=shapes[n]["min"], opt_shape=shapes[n]["opt"], max_shape=shapes[n]["max"], dtype=inputs[n].dtype)
            for n in names
        ]
        kwargs: dict = {"ir": "dynamo", "inputs": specs, "workspace_size": int(workspace_gb * 2**30)}
        compile_params = inspect.signature(tt.dynamo.compile).parameters
        if "use_explicit_typing" in compile_params:
            kwargs["use_explicit_typing"] = True
        else:
            kwargs["enabled_precisions"] = {torch.float32} | ({dtype} if precision != "fp32" else set())
        try:
            trt_gm = tt.compile(wrapped, **kwargs)
        except Exception as exc:
            raise OptinError(f"torch-tensorrt compile failed: {type(exc).__name__}: {short_reason(exc, 300)}") from None

        opt_inputs = [
            (torch.randint(0, 2, shapes[n]["opt"], dtype=inputs[n].dtype) if not inputs[n].is_floating_point()
             else torch.randn(shapes[n]["opt"], dtype=inputs[n].dtype)).cuda()
            for n in names
        ]
        save_params = inspect.signature(tt.save).parameters
        save_kw = {"output_format": "exported_program"}
        save_kw["arg_inputs" if "arg_inputs" in save_params else "inputs"] = opt_inputs
        meta: dict = {
            "format": "torch-tensorrt",
            "torch_tensorrt_version": getattr(tt, "__version__", "?"),
            "precision": precision,
            "input_names": names,
            "output_names": [output_name_for(model)],
            "profile": {"settings": profile.to_dict(), "shapes": shapes},
            "compile_kwargs": {k: (sorted(map(str, v)) if isinstance(v, set) else v) for k, v in kwargs.items() if k not in ("inputs",)},
            "gpu": torch.cuda.get_device_name(),
        }
        with atomic_path(out_path, stage="torch-tensorrt save") as tmp:
            try:
                tt.save(trt_gm, str(tmp), **save_kw)
            except Exception as exc:
                raise OptinError(f"torch-tensorrt save failed: {type(exc).__name__}: {short_reason(exc, 300)}") from None
            side = out_path.with_suffix(".json")
            side.write_text(json.dumps({"input_names": names, "precision": precision, "profile": meta["profile"]}, indent=2))
            if parity:
                from ..runtimes.tensorrt import TorchTensorRTRuntime

                rt = TorchTensorRTRuntime()
                rt.input_names = names
                rt.path = tmp
                from ..runtimes.tensorrt import loaded_module

                rt.module = loaded_module(tt.load(str(tmp)))
                plist = parity_inputs_list or parity_inputs(inputs, task=task, profile=profile)
                ref = LogitsModel(model.eval(), names)
                try:
                    meta["parity"] = check_parity(ref, rt.run, plist, precision=precision, what=f"torch-tensorrt {precision} program")
                except OptinError:
                    side.unlink(missing_ok=True)
                    raise
        meta["path"] = str(out_path)
        return ExportResult(path=out_path, metadata=meta)
