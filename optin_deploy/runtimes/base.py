"""The runtime interface and registry.

A runtime loads an artifact (a PyTorch module or model folder, an ONNX file, a TensorRT engine) and
runs it on named inputs, returning float32 logits as a NumPy array::

    rt = get_runtime("ort-cpu", threads=2).load("bundle/model.onnx")
    logits = rt.run({"input_ids": ids, "attention_mask": mask})
    rt.describe()   # {"runtime": "ort-cpu", "device": "cpu", "provider": ..., "version": ...}

Names: ``torch-cpu``, ``torch-cuda``, ``ort-cpu``, ``ort-cuda``, ``ort-tensorrt``, ``tensorrt``,
``torch-tensorrt``, ``openvino-cpu`` / ``openvino-cpu-bf16`` (optional ``openvino`` package), ``torch-aoti-cpu`` / ``torch-aoti-cuda``
(an AOTInductor ``model.pt2`` that optin-deploy exported, see :mod:`optin_deploy.runtimes.aoti`). A runtime that cannot run here raises :class:`MissingRuntimeError`; none of them
silently falls back to another device or provider.

GPU hosts: the ``onnxruntime`` wheel has only the CPU provider. For ``ort-cuda`` / ``ort-tensorrt``
replace it by ``onnxruntime-gpu`` (``pip uninstall -y onnxruntime && pip install onnxruntime-gpu``);
the two wheels install the same files and cannot coexist.
"""

from __future__ import annotations

import importlib
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..errors import MissingRuntimeError, OptinError, short_reason

TENSORRT_INSTALL = 'pip install "optin-deploy[tensorrt]" --extra-index-url https://pypi.nvidia.com'


class Runtime(ABC):
    """Loads one artifact and runs it."""

    name: str = ""
    #: "cpu" or "cuda": where inputs end up; benchmarks use it to pick the memory counter.
    device: str = "cpu"

    @abstractmethod
    def load(self, artifact: Any) -> "Runtime":
        """Load ``artifact``; returns ``self`` so calls chain."""

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray | torch.Tensor]) -> np.ndarray:
        """Run one batch; returns float32 logits ``B x num_labels`` on the host."""

    @abstractmethod
    def describe(self) -> dict:
        """``{"runtime", "device", "provider"/"backend", "version", ...}`` for reports."""

    def synchronize(self) -> None:  # run() already returns host arrays; kept for symmetry
        return None


def numpy_feed(path, dtypes: Mapping[str, Any], inputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``inputs`` (numpy arrays or tensors) as the contiguous arrays of the dtypes a loaded model's inputs
    take (``{name: dtype}``); a missing input is a one-line error naming the file, except ``token_type_ids``
    beside ``input_ids``: a BERT graph exported elsewhere (optimum, torch.onnx) takes it even for single
    sentences, whose segment ids are all zero (sentence pairs carry their own)."""
    feed = {}
    for n, dt in dtypes.items():
        if n == "token_type_ids" and n not in inputs and "input_ids" in inputs:
            feed[n] = np.zeros(np.shape(inputs["input_ids"]), dtype=dt)
            continue
        if n not in inputs:
            raise OptinError(f"{path} needs input {n!r}; got {list(inputs)}")
        x = inputs[n]
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        feed[n] = np.ascontiguousarray(x, dtype=dt)
    return feed


def require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise MissingRuntimeError(
            f"{what} needs a CUDA GPU but torch.cuda.is_available() is False on this machine "
            f"(torch {torch.__version__}); run it on a host with an NVIDIA GPU and driver"
        )


def import_tensorrt():
    """``import tensorrt`` or a one-line :class:`MissingRuntimeError` saying how to install it."""
    try:
        return importlib.import_module("tensorrt")
    except Exception as exc:  # ImportError, or a broken install failing to load libnvinfer
        raise MissingRuntimeError(
            f"TensorRT Python package is not available ({type(exc).__name__}: {short_reason(exc) or 'not installed'}); "
            f"install it on a CUDA host with: {TENSORRT_INSTALL}"
        ) from None


def import_torch_tensorrt():
    try:
        return importlib.import_module("torch_tensorrt")
    except Exception as exc:
        raise MissingRuntimeError(
            f"torch-tensorrt is not available ({type(exc).__name__}: {short_reason(exc) or 'not installed'}); "
            f"install it on a CUDA host with: {TENSORRT_INSTALL}"
        ) from None


def load_torch_model(path: str | os.PathLike) -> torch.nn.Module:
    """Load a model folder (pruned or transformers) or spec with the shared loader
    :func:`optin_deploy.models.load_model`."""
    from ..models import load_model

    return load_model(path).eval()


RUNTIMES: dict[str, str] = {
    "torch-cpu": "optin_deploy.runtimes.torch_rt:TorchRuntime",
    "torch-cuda": "optin_deploy.runtimes.torch_rt:TorchRuntime",
    "ort-cpu": "optin_deploy.runtimes.ort:OrtRuntime",
    "ort-cuda": "optin_deploy.runtimes.ort:OrtRuntime",
    "ort-tensorrt": "optin_deploy.runtimes.ort:OrtRuntime",
    "tensorrt": "optin_deploy.runtimes.tensorrt:TensorRTRuntime",
    "torch-tensorrt": "optin_deploy.runtimes.tensorrt:TorchTensorRTRuntime",
    "openvino-cpu": "optin_deploy.runtimes.openvino:OpenVinoRuntime",
    "openvino-cpu-bf16": "optin_deploy.runtimes.openvino:OpenVinoRuntime",
    "torch-aoti-cpu": "optin_deploy.runtimes.aoti:AotiRuntime",
    "torch-aoti-cuda": "optin_deploy.runtimes.aoti:AotiRuntime",
}
AOTI_RUNTIMES = ("torch-aoti-cpu", "torch-aoti-cuda")  # AOTInductor packages (model.pt2) compiled for the CPU / a CUDA GPU


def get_runtime(name: str, *, threads: int | None = None, compile: bool = False, **opts) -> Runtime:
    """A fresh runtime by name. ``threads``: CPU intra-op threads (a hint the GPU runtimes have no use
    for); ``compile``: torch.compile, for the torch runtimes only; ``opts``: the runtime's own keyword
    arguments (e.g. ``provider_options`` for onnxruntime). An option the runtime does not take raises
    (a misspelt option is never silently ignored)."""
    import inspect

    try:
        target = RUNTIMES[name]
    except KeyError:
        raise OptinError(f"unknown runtime {name!r}; choose one of {', '.join(RUNTIMES)}") from None
    module, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    accepted = inspect.signature(cls).parameters
    if threads is not None and "threads" in accepted:
        opts["threads"] = threads
    if compile:
        if "compile" not in accepted:
            raise OptinError(f"--compile applies to the torch runtimes (torch-cpu, torch-cuda), not {name}")
        opts["compile"] = True
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise TypeError(f"runtime {name} takes no option {', '.join(unknown)} (it takes {', '.join(p for p in accepted if p != 'name')})")
    return cls(name=name, **opts)


# ------------------------------------------------------------- what an exported bundle holds


def absolute_paths(obj, folder: Path, key: str | None = None):
    """Inverse of the relative paths an export manifest is written with (:mod:`optin_deploy.exporters.export_folder`): ``obj`` read from ``folder`` with its paths made absolute."""
    if isinstance(obj, dict):
        return {k: absolute_paths(v, folder, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [absolute_paths(v, folder, key) for v in obj]
    if isinstance(obj, str) and (obj.startswith(("./", "../")) or (key in ("artifact", "path") and obj and not os.path.isabs(obj))):
        return str((folder / obj).resolve())
    return obj


def read_manifest(path: str | os.PathLike) -> dict | None:
    """The ``export.json`` of a bundle folder (or of the folder holding an artifact), else None."""
    p = Path(path)
    for d in (p, p.parent):
        f = d / "export.json"
        if d.is_dir() and f.exists():
            from ..bundle_files import check_bundle_member

            check_bundle_member(d)  # in a build bundle: its files as manifest.json lists them, or one line naming the one that differs
            try:
                m = json.loads(f.read_text())
            except (ValueError, OSError):
                raise OptinError(f"{f} is not valid JSON; re-export the bundle") from None
            if not isinstance(m, dict) or "artifact" not in m:
                raise OptinError(f"{f} is not an optin-deploy export manifest (no 'artifact'); re-export the bundle")
            m = absolute_paths(m, d.resolve())
            m["folder"] = str(d.resolve())
            return m
    return None


EXPORTED_SUFFIXES = (".onnx", ".engine", ".ep")  # artefacts resolve_artifact runs as files (a .pt2 only inside its bundle)


def default_runtime_for(artifact: str | os.PathLike) -> str:
    suffix = Path(artifact).suffix
    return {".onnx": "ort-cpu", ".engine": "tensorrt", ".ep": "torch-tensorrt", ".pt2": "torch-aoti-cpu"}.get(suffix, "torch-cpu")


def resolve_artifact(spec: str | os.PathLike, runtime: str | None = None) -> tuple[str, Any, dict | None]:
    """What to run for a path given on the command line: ``(runtime name, artifact, manifest)``.

    A bundle folder (with ``export.json``) or an artifact file inside one runs on the bundle's
    runtime (``ort-cpu`` for ONNX, ``tensorrt`` for engines) unless ``runtime`` says otherwise; with a
    torch runtime the bundle's recorded source model is loaded instead. A ``.onnx``/``.engine``/``.ep``
    file runs on its default runtime; anything else is a model folder or spec for ``torch-cpu``.
    """
    p = Path(str(spec)).expanduser()
    manifest = read_manifest(p) if p.exists() else None
    if manifest is not None:
        name = runtime or manifest.get("runtime") or default_runtime_for(manifest["artifact"])
        if name.startswith("torch-") and name not in ("torch-tensorrt", *AOTI_RUNTIMES):
            if not manifest.get("source"):
                raise OptinError(f"bundle {p} does not record its source model; pass the model folder for {name}")
            return name, manifest["source"], manifest
        if p.is_file():
            return name, p, manifest
        art = Path(manifest["artifact"])
        if not art.is_file():
            raise OptinError(f"bundle {p} names the artifact {art.name}, which is missing; re-export the bundle")
        onnx_meta = manifest.get("artifacts", {}).get("onnx")
        if name.startswith("openvino-") and onnx_meta:  # OpenVINO cannot read onnxruntime's int8 Attention: the fp32 graph then
            from .openvino import openvino_file

            path, note = openvino_file(manifest)
            if note:
                from ..progress import step

                step(note)
            return name, path, manifest
        if name.startswith("ort-") and onnx_meta:  # the optimised graph when it was kept
            return name, Path(onnx_meta.get("optimized", {}).get("path") or onnx_meta["path"]), manifest
        return name, Path(manifest["artifact"]), manifest
    if p.suffix == ".pt2":  # runs native code when loaded: only inside the bundle that recorded its sha256
        raise OptinError(f"{spec}: pass the bundle folder holding it (its export.json records the package's sha256); "
                         f"torch-aoti-cpu / torch-aoti-cuda load only AOTInductor packages optin-deploy exported")
    if p.suffix in EXPORTED_SUFFIXES:
        if not p.is_file():
            raise OptinError(f"{spec} does not exist; pass an exported artifact or a bundle folder (optin-deploy export / build)")
        if runtime in ("torch-cpu", "torch-cuda"):
            raise OptinError(f"{spec} is an exported {p.suffix} file and {runtime} runs PyTorch model folders; omit --runtime "
                             f"(it runs on {default_runtime_for(p)}) or pass the model folder it was exported from")
        return runtime or default_runtime_for(p), p, None
    _refuse_exports_only_folder(p)
    name = runtime or "torch-cpu"
    if not name.startswith("torch-") or name in ("torch-tensorrt", *AOTI_RUNTIMES):
        raise OptinError(f"{spec} is a model, not an exported artifact; export it first (optin-deploy export) to run it on {name}")
    return name, str(spec), None


def _refuse_exports_only_folder(p: Path) -> None:
    """A folder holding exported graphs (an optimum export, or a folder with a model.onnx dropped in) but no PyTorch
    weights and no pruned-model structure: name the files to pass, instead of failing on the missing weights."""
    from ..models import CHECKPOINT_SUFFIXES, WEIGHT_FILES

    if not p.is_dir() or (p / "optin_structure.json").exists():
        return
    files = [f for f in p.iterdir() if f.is_file()]
    if any(f.suffix in CHECKPOINT_SUFFIXES or f.name in WEIGHT_FILES for f in files):
        return
    exported = sorted(f.name for f in files if f.suffix in EXPORTED_SUFFIXES)
    if exported:
        shown = ", ".join(exported[:3]) + (f" and {len(exported) - 3} more" if len(exported) > 3 else "")
        raise OptinError(f"{p} holds exported models ({shown}) but no PyTorch weights; pass the file itself "
                         f"(e.g. {p / exported[0]}), or an optin-deploy bundle folder")


BUNDLE_FORMATS = ("onnx", "tensorrt", "aoti")  # what ``build`` (and ``export --format aoti`` into a bundle) writes: ROOT/FMT/{dense,pruned}


def _fmt_of_runtime(name: str | None) -> str | None:
    if not name:
        return None
    return "tensorrt" if name in ("tensorrt", "torch-tensorrt") else "aoti" if name in AOTI_RUNTIMES else "onnx"


def bench_settings(models, batch: int | None, seq_len: int | None, threads: int | None) -> tuple[int, int, int | None, str | None]:
    """``bench``'s batch, sequence length and threads: what was given, else what the build measured with (its
    profile in the bundle's manifest.json, when every model given lies in that one bundle), else 8 x 128 and the
    runtime's default threads. Returns them and where the defaults came from (None: nothing taken from a bundle)."""
    from ..bundle_files import bundle_root

    roots = {bundle_root(spec) if Path(str(spec)).expanduser().exists() else None for spec in models}
    profile, measured = None, {}
    if len(roots) == 1 and None not in roots:
        root = roots.pop()
        try:
            manifest = json.loads((root / "manifest.json").read_text())
            profile = manifest.get("profile") if isinstance(manifest, dict) else None  # an edited manifest of another shape: no profile
        except (OSError, ValueError):
            profile = None
        # (a bundle without its manifest.json or report.json goes no further: bundle_files refuses it when read)
        measured = _measured_shape(root)
    if not isinstance(profile, dict) or (batch is not None and seq_len is not None and threads is not None):
        return (8 if batch is None else batch, 128 if seq_len is None else seq_len, threads, None)

    def pick(given, key, default):  # a value given is kept as it is (bench_artifacts refuses a bad one); else what the build
        if given is not None:       # measured at (a model with fewer positions than the profile's length), else the profile's
            return given
        v = measured.get(key, profile.get(key))
        return int(v) if isinstance(v, int) and v > 0 else default

    why = f"the bundle's profile {profile.get('name', '?')}"
    return pick(batch, "batch_size", 8), pick(seq_len, "seq_len", 128), pick(threads, "threads", None), why


def _measured_shape(root: Path) -> dict:
    """The batch and sequence length the build's benchmark ran at (report.json ``bench.inputs``): the profile's,
    or less where the model has fewer positions than the profile's length."""
    try:
        inputs = json.loads((root / "report.json").read_text())["bench"]["inputs"]
        shape = inputs.get("input_ids") or next(iter(inputs.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, StopIteration):
        return {}
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) for d in shape)):
        return {}
    out = {"batch_size": shape[0]}
    if "input_ids" in inputs and len(shape) == 2:
        out["seq_len"] = shape[1]
    return out


def expand_bundle(models: list[str], runtime: str | None = None) -> list[str]:
    """``eval`` / ``bench`` with one build folder (``optin-deploy build --out B``, or its ``B/onnx``): its
    dense and pruned exports, ``B/FMT/dense`` and ``B/FMT/pruned``. FMT: the one ``--runtime`` reads
    (tensorrt, aoti for torch-aoti-cpu / -cuda, else onnx) when the bundle has it, else the build's own (its
    report.json's runtime), else the first of onnx, tensorrt, aoti present. Anything else is returned as given."""
    if len(models) != 1:
        return list(models)
    root = Path(models[0])

    def pair(folder: Path) -> list[str] | None:
        d, q = folder / "dense", folder / "pruned"
        if (d / "export.json").is_file() and (q / "export.json").is_file():
            return [str(d), str(q)]
        return None

    if not root.is_dir():
        return list(models)
    if root.name in BUNDLE_FORMATS and (found := pair(root)):
        return found
    if not ((root / "manifest.json").is_file() or (root / "report.json").is_file()):
        return list(models)
    own = None
    try:
        own = _fmt_of_runtime(json.loads((root / "report.json").read_text()).get("runtime"))
    except (OSError, ValueError, AttributeError):
        pass
    for fmt in dict.fromkeys([f for f in (_fmt_of_runtime(runtime), own) if f] + list(BUNDLE_FORMATS)):
        if found := pair(root / fmt):
            return found
    for fmt in BUNDLE_FORMATS:  # a bundle with one half of a pair left: say which, not "a folder without config.json"
        halves = {k: (root / fmt / k / "export.json").is_file() for k in ("dense", "pruned")}
        if any(halves.values()):
            gone = next(k for k, ok in halves.items() if not ok)
            raise OptinError(f"bundle {root} is incomplete: {fmt}/{gone}/export.json is missing; rebuild the bundle "
                             f"(optin-deploy build), or pass the export that remains ({root / fmt / next(k for k, ok in halves.items() if ok)})")
    return list(models)
