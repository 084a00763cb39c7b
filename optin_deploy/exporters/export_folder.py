"""One call that exports a model into a folder and records what was checked (``export_to_folder``;
named for the export folder it writes, not the build's "bundle", which holds two of them).

``export_to_folder(model, example_inputs, out_dir, fmt="onnx"|"tensorrt", ...)`` writes:

* ``model.onnx`` (always; TensorRT engines are built from it), ``model.optimized.onnx`` when
  ``optimize`` and its own parity check passed;
* ``model.engine`` + ``model.engine.json`` (``fmt="tensorrt"``, backend ``tensorrt``) or
  ``model.ep`` + ``model.json`` (backend ``torch-tensorrt``);
* ``model.pt2`` (``fmt="aoti"``): a PyTorch AOTInductor package, its sha256 in the manifest;
* ``parity.json``: the parity result of every artifact; ``export.json``: all metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

import torch

from ..errors import OptinError
from .base import ShapeProfile, get_exporter, input_names_for, is_text_input, ordered_inputs
from ..runtimes.base import absolute_paths, default_runtime_for
from .parity import parity_inputs


def _write_json(path: Path, obj) -> None:
    from ..safe_out import write_json

    write_json(path, obj, indent=2, default=str)


def _relative(obj, folder: Path):
    """``obj`` with every absolute path inside the folder tree being written (``staging_root``) written relative to ``folder``
    (``model.onnx``, ``../../pruned``), so that an export folder (or the build bundle holding it) can be moved or copied elsewhere."""
    if isinstance(obj, dict):
        return {k: _relative(v, folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative(v, folder) for v in obj]
    if isinstance(obj, str) and obj.startswith(str(folder.anchor)) and os.path.isabs(obj):
        root = staging_root(folder)
        p = Path(obj).resolve()
        try:
            p.relative_to(root)
        except ValueError:
            return obj
        rel = os.path.relpath(p, folder)
        return rel if rel.startswith("..") else f"./{rel}" if rel != "." else "."
    return obj


def staging_root(folder: Path) -> Path:
    """The outermost folder being written (a build's staging folder holds onnx/dense, onnx/pruned)."""
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.name.startswith(".") and ".tmp-" in parent.name:
            return parent
    return folder


FORMATS = ("onnx", "tensorrt", "aoti")

_PATH_KEYS = ("artifact", "path", "source", "onnx_path", "engine", "file_path")


def export_to_folder(
    model: torch.nn.Module,
    example_inputs: Mapping[str, torch.Tensor],
    out_dir: str | os.PathLike,
    *,
    fmt: str = "onnx",
    backend: str = "tensorrt",
    precision: str = "fp32",
    profile: ShapeProfile | None = None,
    optimize: bool = False,
    task=None,
    input_names: Sequence[str] | None = None,
    opset: int | None = None,
    workspace_gb: float = 4.0,
    timing_cache: str | os.PathLike | None = None,
    threads: int | None = None,
    parity_shapes: Sequence[tuple[int, int | None]] | None = None,
    source: str | os.PathLike | None = None,
    graph: str = "auto",
    fusions: Mapping[str, bool] | None = None,
    quantization: str = "dynamic",
    calibration: Mapping[str, torch.Tensor] | None = None,
    parity: bool = True,
    device: str = "cpu",
    int8_parity_fatal: bool = True,
) -> dict:
    """Export ``model`` into ``out_dir``; every artifact is parity-checked (failure -> OptinError).
    ``parity=False`` (ONNX without ``optimize`` only): the checks are left to :func:`check_deferred_parity`,
    for a budget search's candidates, of which only the adopted one needs them; the manifest says
    ``parity_deferred: true`` until then.

    Returns the manifest (also written to ``export.json``): ``artifact`` is the file a runtime
    should load, ``artifacts`` all files, ``parity`` the per-artifact parity dicts. ``source``
    (the model folder or spec) is recorded so ``eval``/``bench`` can find the tokenizer and data.
    """
    if fmt not in FORMATS:
        raise OptinError(f"unknown --format {fmt!r}; choose {', '.join(FORMATS)}")
    from .aoti import check_export_device

    check_export_device(fmt, device, precision)
    if fmt == "tensorrt" and backend not in ("tensorrt", "torch-tensorrt"):
        raise OptinError(f"unknown --backend {backend!r}; choose tensorrt or torch-tensorrt")
    if fmt == "onnx" and precision not in ("fp32", "int8"):
        raise OptinError("ONNX exports are fp32 or int8 (onnxruntime CPU has few fp16 kernels); use --format tensorrt for fp16/bf16")
    if fmt == "tensorrt" and precision == "int8":
        raise OptinError("int8 is for onnxruntime CPU exports (--format onnx); TensorRT engines here are fp32, fp16 or bf16")
    check_opset(opset)
    if not parity and (fmt != "onnx" or optimize):
        raise OptinError("parity checks can only be deferred for ONNX exports without --optimize")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from ..errors import StorageError
        from ..safe_out import STORAGE_ERRNOS, published_name

        kind = StorageError if exc.errno in STORAGE_ERRNOS else OptinError  # a full disk / refused write: exit 5, as everywhere
        raise kind(f"cannot create output folder {published_name(out_dir)} ({exc.strerror or exc}); pass a writable --out") from None
    profile = profile or ShapeProfile()
    inputs = ordered_inputs(example_inputs, input_names or (task.input_names if task is not None else None))
    if parity_shapes:
        plist = parity_inputs(inputs, task=task, batches=[b for b, _ in parity_shapes],
                              seq_lens=[s or 0 for _, s in parity_shapes], profile=profile)
    else:
        plist = parity_inputs(inputs, task=task, profile=profile)
    common = dict(profile=profile, task=task, parity_inputs_list=plist, opset=opset)

    cfg = getattr(model, "config", None)
    manifest: dict = {"source": str(source) if source is not None else None,
                      "vocab_size": getattr(cfg, "vocab_size", None),
                      "format": fmt, "precision": precision, "model_class": type(model).__name__,
                      "input_names": list(inputs), "profile": profile.to_dict(), "artifacts": {}, "parity": {}}
    if fmt == "onnx" or (fmt == "tensorrt" and backend == "tensorrt"):
        # TensorRT engines are built from an fp32 ONNX graph; for fp32 engines it is the same file
        res = get_exporter("onnx").export(model, inputs, out_dir / "model.onnx", optimize=optimize and fmt == "onnx",
                                          threads=threads, precision=precision if fmt == "onnx" else "fp32",
                                          graph=graph if fmt == "onnx" else "dynamo", fusions=fusions,
                                          quantization=quantization, calibration=calibration, parity=parity,
                                          int8_parity_fatal=int8_parity_fatal, **common)
        manifest["artifacts"]["onnx"] = res.metadata
        manifest["parity"]["model.onnx"] = res.metadata.get("parity")
        manifest["artifact"] = str(res.path)
        manifest["graph"] = res.metadata.get("graph")
        if res.metadata.get("quantization"):
            manifest["quantization"] = res.metadata["quantization"]
            manifest["parity"][res.metadata["fp32_file"]] = res.metadata.get("parity_fp32")
        opt = res.metadata.get("optimized")
        if opt:
            manifest["optimized"] = {k: v for k, v in opt.items() if k != "parity"}
            if opt.get("kept"):
                manifest["parity"][opt["file"]] = opt["parity"]
                manifest["artifact"] = opt["path"]
    if fmt == "aoti":
        common.pop("opset")  # no ONNX here
        res = get_exporter("aoti").export(model, inputs, out_dir / "model.pt2", threads=threads, precision=precision, device=device, **common)
        manifest["artifacts"]["aoti"] = res.metadata
        manifest["parity"]["model.pt2"] = res.metadata.get("parity")
        manifest["artifact"] = str(res.path)
        manifest["dynamic"] = res.metadata["dynamic"]
    if fmt == "tensorrt":
        if backend == "tensorrt":
            res = get_exporter("tensorrt").export(model, inputs, out_dir / "model.engine", precision=precision,
                                                  workspace_gb=workspace_gb, timing_cache=timing_cache,
                                                  onnx_path=out_dir / "model.onnx", **common)
            manifest["artifacts"]["tensorrt"] = res.metadata
            manifest["parity"]["model.engine"] = res.metadata.get("parity")
        else:
            common.pop("opset")  # torch-tensorrt compiles the exported program, no ONNX opset
            res = get_exporter("torch-tensorrt").export(model, inputs, out_dir / "model.ep", precision=precision,
                                                        workspace_gb=workspace_gb, **common)
            manifest["artifacts"]["torch-tensorrt"] = res.metadata
            manifest["parity"]["model.ep"] = res.metadata.get("parity")
        manifest["artifact"] = str(res.path)
    manifest["runtime"] = manifest["artifacts"]["aoti"]["runtime"] if fmt == "aoti" else default_runtime_for(manifest["artifact"])
    if not parity:
        manifest["parity_deferred"] = True
    write_export_files(out_dir, manifest)
    return manifest


def check_deferred_parity(model: torch.nn.Module, example_inputs: Mapping[str, torch.Tensor], out_dir: str | os.PathLike, manifest: dict, *,
                          profile: ShapeProfile | None = None, task=None, threads: int | None = None, int8_parity_fatal: bool = True) -> dict:
    """The parity checks :func:`export_to_folder` (``parity=False``) left out, run on the folder's ONNX files as
    it would have run them (same inputs, thresholds and messages; failure -> OptinError). Rewrites
    ``parity.json`` / ``export.json`` and returns the manifest."""
    from ..model_io import LogitsModel
    from .base import prepare_for_export
    from .onnx import onnx_parity_runner
    from .parity import check_parity

    if not manifest.get("parity_deferred"):
        return manifest
    meta = manifest["artifacts"]["onnx"]
    inputs = ordered_inputs(example_inputs, manifest["input_names"])
    plist = parity_inputs(inputs, task=task, profile=profile or ShapeProfile())
    model = model.eval()
    prepare_for_export(model)
    reference = LogitsModel(model, list(inputs))
    what = f"ONNX export of {type(model).__name__}"

    def check(path, precision: str, label: str) -> dict:
        rt = onnx_parity_runner(Path(path), threads)
        par = check_parity(reference, rt.run, plist, precision=precision, what=label, raise_on_fail=precision != "int8" or int8_parity_fatal)
        par["runtime"] = rt.describe()
        return par

    if meta.get("precision") == "int8":
        meta["parity_fp32"] = check(meta["fp32_path"], "fp32", what)
        meta["parity"] = check(meta["path"], "int8", "int8 " + what)
        manifest["parity"][meta["fp32_file"]] = meta["parity_fp32"]
    else:
        meta["parity"] = check(meta["path"], "fp32", what)
    manifest["parity"]["model.onnx"] = meta["parity"]
    del manifest["parity_deferred"]
    write_export_files(out_dir, manifest)
    return manifest


def write_export_files(out_dir: str | os.PathLike, manifest: dict) -> None:
    """``parity.json`` and ``export.json`` of an export folder, paths inside it written relative to it."""
    out_dir = Path(out_dir)
    folder = out_dir.resolve()
    _write_json(out_dir / "parity.json", _relative(manifest["parity"], folder))
    _write_json(out_dir / "export.json", _relative(manifest, folder))


def move_export(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Move the export folder ``src`` to ``dst`` (within one build's staging folder: no second export); returns its
    manifest read back from ``dst`` (absolute paths)."""
    import json
    import shutil

    from ..runtimes.base import read_manifest

    src, dst = Path(src).resolve(), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(src), str(dst))
    f = dst / "export.json"  # paths inside it are relative to it; any absolute one under src is redirected too
    f.write_text(f.read_text().replace(json.dumps(str(src))[1:-1], json.dumps(str(dst.resolve()))[1:-1]))
    return read_manifest(dst)


MIN_OPSET = 17  # the fused graph (TorchScript exporter) is written at 17 by default; torch.onnx.export(dynamo=True) writes 18
# and newer (a lower --opset for a family exported that way is refused after the export, naming the opset written)


def check_opset(opset: int | None) -> None:
    """Refuse an opset the exporter cannot write (it would silently ship another one)."""
    if opset is None:
        return
    import onnx

    top = onnx.defs.onnx_opset_version()
    if not (MIN_OPSET <= opset <= top):
        raise OptinError(f"--opset {opset} is not supported: the exporter writes opsets {MIN_OPSET} to {top}; pass one of those or leave --opset out")


def export_model_dir(
    model_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str = "onnx",
    backend: str = "tensorrt",
    precision: str = "fp32",
    batch: int = 8,
    seq_len: int | None = None,
    min_batch: int = 1,
    max_batch: int = 64,
    min_seq_len: int = 1,
    max_seq_len: int | None = None,
    optimize: bool = False,
    opset: int | None = None,
    data: str | None = None,
    workspace_gb: float = 4.0,
    timing_cache: str | os.PathLike | None = None,
    force: bool = False,
    device: str = "cpu",
) -> dict:
    """Load a model folder/spec (with its task when data is given or recorded) and export it into
    ``out`` (a new folder, or one optin-deploy wrote: see :mod:`optin_deploy.safe_out`)."""
    from ..models import load_model
    from ..safe_out import check_out, staged_output

    if fmt not in FORMATS:
        raise OptinError(f"unknown --format {fmt!r}; choose {', '.join(FORMATS)}")
    from .aoti import check_export_device

    check_export_device(fmt, device, precision)
    if fmt == "aoti":
        if optimize or opset is not None:
            raise OptinError("--optimize and --opset are for ONNX exports, not --format aoti")
        from .aoti import check_compiler

        check_compiler()  # before loading the model
    check_opset(opset)
    for name, v in (("--batch", batch), ("--min-batch", min_batch), ("--max-batch", max_batch), ("--seq-len", seq_len), ("--min-seq-len", min_seq_len)):
        if v is not None and v < 1:
            raise OptinError(f"{name} must be at least 1, got {v}")
    out = check_out(out, force=force, protect=[model_dir, data, timing_cache])

    task = None
    folder = Path(str(model_dir)).expanduser()
    recorded = folder.is_dir() and any((folder / f).exists() for f in ("optin_task.json", "zoo_info.json"))
    if data is not None or recorded:
        from ..zoo import load_task

        task = load_task(str(model_dir), data, progress=False)
        model = task.model
    else:
        model = load_model(model_dir)
    from ..adapters import get_adapter

    maxpos = get_adapter(model).max_positions()
    given_max = max_seq_len is not None
    if max_seq_len is None:
        max_seq_len = min(512, maxpos) if maxpos else 512
    if seq_len is None:
        seq_len = min(128, max_seq_len)
    elif seq_len > max_seq_len:  # the user's optimal length would be exported as another one: refuse, as --max-seq-len is
        raise OptinError(f"--seq-len {seq_len} exceeds " + (f"--max-seq-len {max_seq_len}" if given_max else
                         f"the longest input this model's graph takes ({max_seq_len} tokens)") + f"; pass --seq-len {max_seq_len} or less")
    profile = ShapeProfile(min_batch, batch, max_batch, min_seq_len, seq_len, max_seq_len)
    if task is not None:
        example = task.example_inputs(batch, seq_len if task.modality == "text" else None)
    else:
        from ..models import example_inputs_for_model

        example = example_inputs_for_model(model, batch, seq_len, model_dir=folder if folder.is_dir() else None)
    source = str(folder.resolve()) if folder.exists() else str(model_dir)
    with staged_output(out, kind="export", checked=True) as staging:
        m = export_to_folder(model, example, staging, fmt=fmt, backend=backend, precision=precision, profile=profile,
                          optimize=optimize, task=task, opset=opset, workspace_gb=workspace_gb,
                          timing_cache=timing_cache, source=source, device=device)
    return absolute_paths(_relative(m, staging.resolve()), out)
