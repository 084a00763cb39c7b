"""PyTorch AOTInductor package (``model.pt2``): ``torch.export`` + ``torch._inductor.aoti_compile_and_package``.

The (pruned) model is traced with :func:`torch.export.export` with the batch and, for text, the sequence axis
dynamic within the profile's range (``Dim("batch", 1..max_batch)``, ``Dim("sequence", 1..max_seq)``); if a
family cannot be exported dynamically, it is exported static at the example (benchmark) shape and the
metadata says so (``dynamic: false`` and the error). AOTInductor then generates C++ for the graph and
compiles it with the host's C++ compiler into a shared library inside the package (weights included). The
runtime (:mod:`optin_deploy.runtimes.aoti`, ``torch-aoti-cpu``) loads it with
``torch._inductor.aoti_load_package``: no model Python code, no transformers, at run time.

Parity is checked like the ONNX exports (:mod:`.parity`): max |diff| <= 1e-4 and 100 % argmax agreement
against PyTorch eager at the export shape and, for a dynamic package, at shapes the trace never saw.

What loading a package does: the ``.pt2`` holds a compiled shared library that the loader ``dlopen``\\ s, i.e.
native code from the file runs. The runtime therefore loads only packages this tool wrote: the SHA-256 of
the package is recorded in the bundle's ``export.json`` at export time and checked before loading, and the
archive may hold nothing but AOTInductor's own files (no pickled weights or exported programs, which
``aoti_load_package`` would otherwise deserialise). Compiling needs a C++ compiler (``g++``); loading does not.
The package is tied to the torch version (and CPU instruction set) it was compiled with; both are recorded.

``device="cuda"`` compiles for the CUDA GPU of this host (``torch-aoti-cuda``; Triton kernels in the package): the
model is traced on the GPU in the package's precision (fp32, or the weights and activations cast to fp16 / bf16,
what a GPU deployment runs in). Parity is then gated like TensorRT's fp16 / bf16 engines (>= 99 % argmax agreement
with the fp32 PyTorch model; the difference is recorded). A CPU package is fp32.
"""

from __future__ import annotations

import copy
import os
import subprocess
import time
from pathlib import Path
from typing import Mapping

import torch

from ..errors import MissingRuntimeError, OptinError
from .base import TORCH_DTYPES, Exporter, ExportResult, LogitsModel, ShapeProfile, is_text_input, output_name_for, prepare_for_export
from ..data.assets import sha256_file
from ..runtimes.aoti import quiet
from .parity import check_parity, parity_inputs

#: the precisions a package can be compiled in, per device
PRECISIONS = {"cpu": ("fp32",), "cuda": ("fp32", "fp16", "bf16")}


def check_device_precision(device: str, precision: str) -> None:
    """A one-line :class:`OptinError` for a device / precision an AOTInductor package is not compiled for here."""
    if device not in PRECISIONS:
        raise OptinError(f"AOTInductor packages are compiled for device cpu or cuda, not {device!r}")
    if precision not in PRECISIONS[device]:
        hint = ("use --format onnx --precision int8 for int8" if precision == "int8"
                else "fp16 / bf16 packages are compiled for a GPU: --device cuda")
        raise OptinError(f"AOTInductor packages for device {device} are {' / '.join(PRECISIONS[device])} here, not {precision}; {hint}")
    if device == "cuda":
        from ..runtimes.base import require_cuda

        require_cuda("an AOTInductor package for CUDA (--device cuda)")


def check_export_device(fmt: str, device: str, precision: str) -> None:
    """``--device``: for ``--format aoti`` the device and precision the package is compiled for; other formats take none."""
    if fmt == "aoti":
        check_device_precision(device, precision)
    elif device != "cpu":
        raise OptinError(f"--device {device} is for --format aoti (an AOTInductor package compiled for that device); "
                         f"{fmt} exports choose their device with the runtime")


COMPILER_HINT = "install a C++ compiler (apt-get install g++; or set CXX) or export to ONNX (--format onnx)"


def check_compiler() -> str:
    """The C++ compiler inductor will use, or a one-line :class:`MissingRuntimeError`."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return get_cpp_compiler()
    except Exception as exc:  # torch._inductor.exc.InvalidCxxCompiler, or an inductor that does not import
        raise MissingRuntimeError(f"AOTInductor needs a C++ compiler to build model.pt2 and found none ({type(exc).__name__}); {COMPILER_HINT}") from None


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.check_output([cxx, "--version"], text=True, stderr=subprocess.STDOUT).splitlines()[0].strip()
    except Exception:  # noqa: BLE001 - informational only
        return cxx


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


#: what the child process of :func:`probe_load` runs (a module constant so that tests can make it crash)
PROBE_CODE = "import sys, torch; torch._inductor.aoti_load_package(sys.argv[1])"


def probe_load(path: Path, timeout: float = 600.0) -> None:
    """Load the package once in a child process: a loader that crashes the process (seen here: torch 2.11.0+cu130 on an
    H200 host, signal 11 in ``aoti_load_package`` for every CUDA package, a one-layer Linear too) ends the child with a
    one-line :class:`OptinError`, instead of the build with a half-written output folder."""
    import signal
    import sys

    try:
        proc = subprocess.run([sys.executable, "-c", PROBE_CODE, str(path)], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise OptinError(f"loading the AOTInductor package {path.name} took over {timeout:.0f} s in a test process; re-export it, "
                         f"or use an ONNX / TensorRT profile") from None
    if proc.returncode == 0:
        return
    if proc.returncode < 0:
        try:
            sig = signal.Signals(-proc.returncode).name
        except ValueError:
            sig = f"signal {-proc.returncode}"
        raise OptinError(f"torch {torch.__version__} crashed ({sig}) loading the AOTInductor package it had just compiled "
                         f"({path.name}); this torch cannot run such packages on this host: use an ONNX / TensorRT "
                         f"profile, or another torch version")
    last = next((ln for ln in reversed(proc.stderr.strip().splitlines()) if ln.strip()), f"exit status {proc.returncode}")
    raise OptinError(f"torch {torch.__version__} cannot load the AOTInductor package it compiled ({last[:300]}); re-export it here")


def _on(inputs: Mapping[str, torch.Tensor], device: str) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in inputs.items()}


def _shape_key(inputs: Mapping[str, torch.Tensor]) -> tuple:
    return tuple(tuple(v.shape) for v in inputs.values())


class AotiExporter(Exporter):
    name = "aoti"
    suffix = ".pt2"

    def export(
        self,
        model: torch.nn.Module,
        example_inputs: Mapping[str, torch.Tensor],
        out_path: str | os.PathLike,
        *,
        input_names: list[str] | None = None,
        profile: ShapeProfile | None = None,
        precision: str = "fp32",
        parity: bool = True,
        parity_inputs_list: list[dict[str, torch.Tensor]] | None = None,
        task=None,
        threads: int | None = None,
        dynamic: bool = True,
        inductor_configs: Mapping[str, object] | None = None,
        device: str = "cpu",
    ) -> ExportResult:
        """Export ``model`` to an AOTInductor package at ``out_path`` (``.pt2``), parity-checked; nothing is left
        behind on failure."""
        from .onnx import example_for_trace, staging_dir

        check_device_precision(device, precision)
        out_path = Path(out_path)
        if out_path.suffix != ".pt2":
            raise OptinError(f"an AOTInductor package is a .pt2 file, got {out_path.name}")
        cxx = check_compiler()  # before any expensive work
        out_path, profile, inputs, names = self.arrange(example_inputs, out_path, input_names, profile)
        text = any(is_text_input(n) for n in names)
        self.check_seq_len(model, text, profile)
        model = model.eval()
        prepare_for_export(model)
        reference = LogitsModel(model, names).eval()  # fp32 on the CPU: what parity compares against
        if device == "cpu" and precision == "fp32":
            traced = reference
        else:  # a copy on the device in the package's precision (float inputs cast inside the graph, logits float32, as the
            # ONNX exporter's fp16 graphs); the caller's model is left as it is
            traced = LogitsModel(copy.deepcopy(model), names, compute_dtype=TORCH_DTYPES[precision]).to(device).eval()

        meta: dict = {
            "format": "aoti",
            "exporter": "torch.export.export + torch._inductor.aoti_compile_and_package",
            "torch_version": torch.__version__,
            "compiler": _compiler_version(cxx),
            "input_names": names,
            "output_names": [output_name_for(model)],
            "input_dtypes": {n: str(t.dtype).replace("torch.", "") for n, t in inputs.items()},
            "precision": precision,
            "device": device,
            "runtime": f"torch-aoti-{device}",
            "profile": profile.to_dict(),
            "inductor_configs": dict(inductor_configs or {}),
            "loads_native_code": "the package holds a compiled shared library that runs when loaded; the runtime loads only "
                                 "packages whose sha256 export.json records",
        }
        t0 = time.perf_counter()
        ep, dyn_error = None, None
        if dynamic:
            batch = torch.export.Dim("batch", min=1, max=max(profile.max_batch, 2))
            seq = torch.export.Dim("sequence", min=1, max=max(profile.max_seq, 2)) if text else None
            dyn = tuple({0: batch, 1: seq} if is_text_input(n) else {0: batch} for n in names)
            try:
                with quiet():
                    ep = torch.export.export(traced, tuple(_on(example_for_trace(inputs), device).values()), dynamic_shapes=(dyn,))
                meta["dynamic"] = True
                meta["dynamic_shapes"] = {n: ({"0": [1, profile.max_batch], "1": [1, profile.max_seq]} if is_text_input(n)
                                              else {"0": [1, profile.max_batch]}) for n in names}
            except Exception as exc:  # noqa: BLE001 - any tracing failure: fall back to a static export, recorded
                dyn_error = _first_line(exc)
        if ep is None:
            try:
                with quiet():
                    ep = torch.export.export(traced, tuple(_on(inputs, device).values()))
            except Exception as exc:  # noqa: BLE001
                raise OptinError(f"AOTInductor export failed at torch.export.export for {type(model).__name__}: {_first_line(exc)}") from None
            meta["dynamic"] = False
            meta["static_shapes"] = {n: list(t.shape) for n, t in inputs.items()}
            if dyn_error:
                meta["dynamic_error"] = dyn_error
        meta["export_seconds"] = round(time.perf_counter() - t0, 2)

        with staging_dir(out_path, stage="AOTInductor export") as tmp_dir:
            tmp = tmp_dir / out_path.name
            t1 = time.perf_counter()
            try:
                with quiet():
                    torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp), inductor_configs=dict(inductor_configs or {}))
            except Exception as exc:  # noqa: BLE001 - inductor / the C++ compiler failed
                raise OptinError(f"AOTInductor compile failed for {type(model).__name__}: {_first_line(exc)}") from None
            del ep
            if traced is not reference:
                del traced
                if device == "cuda":
                    torch.cuda.empty_cache()
            if not tmp.is_file():
                raise OptinError(f"AOTInductor compile wrote no package for {type(model).__name__}")
            meta["compile_seconds"] = round(time.perf_counter() - t1, 2)
            meta["sha256"] = sha256_file(tmp)
            meta["bytes"] = tmp.stat().st_size
            if device == "cuda":  # before loading it in this process: a crashing loader must not take the build down
                probe_load(tmp)
            if parity:
                from ..runtimes.aoti import AotiRuntime

                rt = AotiRuntime(f"torch-aoti-{device}", threads=threads).load_package(tmp, meta)
                given = parity_inputs_list or parity_inputs(inputs, task=task, profile=profile)
                plist = [dict(inputs)]  # the export (benchmark) shape, then shapes the trace never saw
                if meta["dynamic"]:
                    plist += [p for p in given if _shape_key(p) != _shape_key(inputs)]
                meta["parity"] = check_parity(reference, rt.run, plist, precision=precision, what=f"AOTInductor package of {type(model).__name__}")
                meta["parity"]["runtime"] = rt.describe()
                del rt
        meta["path"] = str(out_path)
        return ExportResult(path=out_path, metadata=meta)
