"""ONNX export with ``torch.onnx.export(dynamo=True)``.

* named inputs (``input_ids``/``attention_mask`` or ``pixel_values``) and one output ``logits``
  (``sentence_embedding`` for a sentence-embedding model: pooled, and normalised if the model normalises);
* dynamic batch axis, plus the sequence axis for text;
* a single file (``external_data=False``) unless the weights pass 2 GB;
* ``onnx.checker.check_model`` and an onnxruntime parity check run on a temporary file in the
  destination folder, which is moved into place with ``os.replace`` only when both pass: a failed
  export leaves no file behind and raises :class:`OptinError` naming the stage;
* optional onnxruntime transformer optimisation (``optimize=True``), kept only if its own parity
  check passes (otherwise the reason is recorded in the metadata).

**The graph** (``graph=``): ``"auto"`` (the default) uses the family adapter's export forward when
it has one (:meth:`Adapter.export_module`: BERT/RoBERTa) and the dynamo export of the model's own
forward otherwise; ``"dynamo"`` always traces the model's own forward; ``"fused"`` requires the
adapter's forward. The adapter's forward is exported with the TorchScript exporter (its reshapes
keep per-layer head counts as constants) and then fused by onnxruntime's transformer optimizer
with :data:`DEFAULT_FUSIONS`: Attention and BiasGelu, but not SkipLayerNormalization nor
EmbedLayerNormalization, which on onnxruntime 1.32's CPU kernels are slower than the Add + Add +
LayerNorm they replace (1.49 against 0.54 ms per call at 8 x 128 x 384). The metadata says which
graph was written and which fused operators it holds.

**int8** (``precision="int8"``, CPU targets): the fp32 graph (parity-checked) is kept beside as
``model.fp32.onnx`` and ``model.onnx`` is its int8 graph: ``quantization="dynamic"`` (the default:
``onnxruntime.quantization.quantize_dynamic``, int8 per-channel weights, uint8 activations quantised at run
time) or ``"static"`` (``quantize_static`` of the MatMuls with activation ranges calibrated on ``calibration``,
the build's calibration batch, and dynamic QAttention: :func:`quantize_int8`). ``optin_deploy.int8`` chooses
between them and leaves nodes in fp32 where accuracy needs it. Its parity is the argmax agreement
with PyTorch (a quantised graph does not meet 1e-4); accuracy is measured through it by ``eval``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator, Mapping

import torch

from ..errors import OptinError
from ..safe_out import storage_error_in
from .base import (
    TORCH_DTYPES,
    Exporter,
    ExportResult,
    LogitsModel,
    ShapeProfile,
    is_text_input,
    output_name_for,
    prepare_for_export,
)
from .parity import check_parity, parity_inputs


TWO_GB = 2**31 - 2**20  # protobuf's limit, with a little headroom

GRAPHS = ("auto", "fused", "dynamo")
#: onnxruntime transformer-optimizer fusions applied to the adapter's export graph (FusionOptions names)
DEFAULT_FUSIONS = {"enable_attention": True, "enable_bias_gelu": True, "enable_gelu": True, "enable_layer_norm": True,
                   "enable_skip_layer_norm": False, "enable_bias_skip_layer_norm": False, "enable_embed_layer_norm": False}
#: int8 dynamic quantisation settings (the op types whose weights are quantised)
INT8_OPS = ("MatMul", "Attention")


@contextlib.contextmanager
def staging_dir(out_path: Path, stage: str = "onnx export") -> Iterator[Path]:
    """A temporary folder next to ``out_path``; files written there under their final names are
    moved into ``out_path.parent`` with ``os.replace`` on success, and everything is deleted on failure."""
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_path.name}.", dir=out_path.parent))
    except OSError as exc:
        raise OptinError(f"{stage}: cannot write to {out_path.parent} ({exc.strerror or exc}); pass a writable --out") from None
    try:
        yield tmp
        for f in sorted(tmp.iterdir(), key=lambda p: p == tmp / out_path.name):  # the .onnx file last
            os.replace(f, out_path.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _published(meta, staged: Path, final: Path):
    """``meta`` with every path inside the staging folder ``staged`` (the files parity checks ran on)
    rewritten to the published folder ``final``, where those files now are."""
    if isinstance(meta, dict):
        return {k: _published(v, staged, final) for k, v in meta.items()}
    if isinstance(meta, list):
        return [_published(v, staged, final) for v in meta]
    if isinstance(meta, str) and meta.startswith(str(staged) + os.sep):
        return str(final / Path(meta).relative_to(staged))
    return meta


def example_for_trace(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torch.export specialises dimensions of size 0/1: trace with batch >= 2 and sequence >= 2."""
    out = {}
    for n, t in inputs.items():
        if t.shape[0] < 2:
            t = t.repeat(2, *([1] * (t.dim() - 1)))
        if is_text_input(n) and t.shape[1] < 2:
            t = t.repeat(1, 2)
        out[n] = t.contiguous()
    return out


def _first_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    # torch.onnx wraps the real cause; prefer the innermost message
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip():
        msg = str(cause).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:300]


def _optimizer_kind(model: torch.nn.Module, text: bool) -> str:
    """onnxruntime.transformers' optimizer kind for the model's family (its adapter says)."""
    from ..adapters import get_adapter
    from ..errors import OptinError as _E

    try:
        kind = get_adapter(model).ort_optimizer
    except _E:
        kind = None
    return kind or ("bert" if text else "vit")


def onnx_parity_runner(path: Path, threads: int | None = None):
    from ..runtimes.ort import OrtRuntime

    return OrtRuntime("ort-cpu", threads=threads).load(path)


class OnnxExporter(Exporter):
    name = "onnx"
    suffix = ".onnx"
    precisions = ("fp32", "int8", "fp16", "bf16")

    def export(
        self,
        model: torch.nn.Module,
        example_inputs: Mapping[str, torch.Tensor],
        out_path: str | os.PathLike,
        *,
        input_names: list[str] | None = None,
        profile: ShapeProfile | None = None,
        opset: int | None = None,
        precision: str = "fp32",
        parity: bool = True,
        parity_inputs_list: list[dict[str, torch.Tensor]] | None = None,
        task=None,
        optimize: bool = False,
        threads: int | None = None,
        graph: str = "auto",
        fusions: Mapping[str, bool] | None = None,
        per_channel: bool = True,
        quantization: str = "dynamic",
        calibration: Mapping[str, torch.Tensor] | None = None,
        int8_parity_fatal: bool = True,
    ) -> ExportResult:
        """Export, check and (optionally) optimise. ``precision`` fp16/bf16 bakes the compute type
        into the graph (float32 inputs and logits), for strongly typed TensorRT builds; the
        onnxruntime parity check then runs only for fp32 (CPU onnxruntime lacks many fp16 kernels).
        ``int8_parity_fatal=False``: the int8 graph's parity is measured and recorded but a failure does not raise (a build
        with an int8 tolerance re-quantises it with nodes left in fp32 and re-checks the kept graph, :mod:`optin_deploy.int8`)."""
        out_path, profile, inputs, names = self.arrange(example_inputs, out_path, input_names, profile)
        text = any(is_text_input(n) for n in names)
        self.check_precision(precision)
        if graph not in GRAPHS:
            raise OptinError(f"unknown graph {graph!r}; choose one of {', '.join(GRAPHS)}")
        if precision == "int8" and quantization not in QUANTIZATIONS:
            raise OptinError(f"unknown int8 quantisation {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
        calib_batches = calibration_batches(calibration, names) if precision == "int8" and quantization == "static" else None
        self.check_seq_len(model, text, profile)

        model = model.eval()
        prepare_for_export(model)
        reference = LogitsModel(model, names)
        fused_forward = None
        if graph in ("auto", "fused") and precision in ("fp32", "int8"):
            from ..adapters import get_adapter

            try:
                fused_forward = get_adapter(model).export_module(names)
            except OptinError:
                fused_forward = None
            if fused_forward is None and graph == "fused":
                raise OptinError(f"--graph fused: the {type(model).__name__} family provides no fusion-friendly export forward; use --graph dynamo")
        if fused_forward is not None:
            wrapped = fused_forward
        elif precision not in ("fp32", "int8"):
            wrapped = LogitsModel(copy.deepcopy(model), names, compute_dtype=TORCH_DTYPES[precision]).eval()
        else:
            wrapped = reference
        n_bytes = sum(p.numel() * p.element_size() for p in wrapped.parameters())
        external = n_bytes > TWO_GB

        batch = torch.export.Dim("batch", min=1, max=max(profile.max_batch, 2))
        seq = torch.export.Dim("sequence", min=1, max=max(profile.max_seq, 2)) if text else None
        dyn = tuple({0: batch, 1: seq} if is_text_input(n) else {0: batch} for n in names)
        trace_inputs = example_for_trace(inputs)

        meta: dict = {
            "format": "onnx",
            "exporter": "torch.onnx.export(dynamo=False) of the adapter's export forward" if fused_forward is not None else "torch.onnx.export(dynamo=True)",
            "graph": {"kind": "fused" if fused_forward is not None else "dynamo",
                      "forward": f"{type(fused_forward).__module__}.{type(fused_forward).__name__}" if fused_forward is not None else "the model's own forward"},
            "torch_version": torch.__version__,
            "input_names": names,
            "output_names": [output_name_for(model)],
            "dynamic_axes": {n: ({"0": "batch", "1": "sequence"} if is_text_input(n) else {"0": "batch"}) for n in names},
            "input_dtypes": {n: str(t.dtype).replace("torch.", "") for n, t in inputs.items()},
            "input_shapes": {n: [None, None] if is_text_input(n) else [None, *t.shape[1:]] for n, t in inputs.items()},
            "profile": profile.to_dict(),
            "precision": precision,
            "external_data": external,
            "weights_bytes": n_bytes,
        }
        t0 = time.perf_counter()
        with staging_dir(out_path) as tmp_dir:
            tmp = tmp_dir / out_path.name
            # stage 1: torch.onnx.export
            try:
                if fused_forward is not None:
                    meta["graph"].update(_export_fused(fused_forward, trace_inputs, names, tmp, tmp_dir, fusions, opset,
                                                       _optimizer_kind(model, text)))
                else:
                    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                        warnings.simplefilter("ignore")
                        torch.onnx.export(
                            wrapped,
                            tuple(trace_inputs.values()),
                            str(tmp),
                            dynamo=True,
                            input_names=names,
                            output_names=[output_name_for(model)],
                            dynamic_shapes=(dyn,),
                            opset_version=opset,
                            external_data=external,
                            optimize=True,
                        )
            except OptinError:
                raise
            except Exception as exc:
                storage = storage_error_in(exc, str(out_path))
                if storage is not None:  # a full disk or a write refused is the file system's failure (exit 5), not the model's
                    raise storage from None
                raise OptinError(
                    f"ONNX export failed at torch.onnx.export for {type(model).__name__}: {_first_line(exc)}"
                ) from None
            if not tmp.exists():
                raise OptinError(f"ONNX export failed at torch.onnx.export: no file was written for {type(model).__name__}")
            # stage 2: onnx.checker
            import onnx

            try:
                onnx.checker.check_model(str(tmp), full_check=False)
                proto = onnx.load(str(tmp), load_external_data=False)
            except Exception as exc:
                raise OptinError(f"ONNX export failed at onnx.checker: {_first_line(exc)}") from None
            meta["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
            if opset is not None and meta["opset"] != opset:
                raise OptinError(f"ONNX export wrote opset {meta['opset']} instead of the requested --opset {opset}; "
                                 f"pass --opset {meta['opset']} or leave --opset out")
            meta["ir_version"] = proto.ir_version
            meta["onnx_version"] = onnx.__version__
            meta["export_seconds"] = round(time.perf_counter() - t0, 2)
            del proto

            # stage 3: parity in onnxruntime (CPU)
            graph_file = tmp
            if precision == "int8":
                # the fp32 graph is kept beside the int8 one (renamed, not copied: it is the quantiser's input)
                graph_file = fp32_file = tmp_dir / (out_path.stem + ".fp32.onnx")
                os.replace(tmp, fp32_file)
            if parity and precision in ("fp32", "int8"):
                plist = parity_inputs_list or parity_inputs(inputs, task=task, profile=profile)
                try:
                    rt = onnx_parity_runner(graph_file, threads)
                except OptinError as exc:
                    raise OptinError(f"ONNX export failed at onnxruntime load: {exc}") from None
                meta["parity"] = check_parity(reference, rt.run, plist, precision="fp32", what=f"ONNX export of {type(model).__name__}")
                meta["parity"]["runtime"] = rt.describe()
                del rt
            if precision == "int8":
                meta["quantization"] = quantize_int8(fp32_file, tmp, per_channel=per_channel, mode=quantization, calibration=calib_batches)
                meta["fp32_file"] = fp32_file.name
                if parity:
                    rt = onnx_parity_runner(tmp, threads)
                    meta["parity_fp32"] = meta.get("parity")
                    meta["parity"] = check_parity(reference, rt.run, plist, precision="int8", what=f"int8 ONNX export of {type(model).__name__}",
                                                  raise_on_fail=int8_parity_fatal)
                    meta["parity"]["runtime"] = rt.describe()
                    del rt
            if optimize and fused_forward is not None:
                meta["optimized"] = {"kept": False, "reason": "the graph is already fused by onnxruntime's transformer optimizer"}
            elif parity and precision == "fp32":
                # stage 4 (optional): onnxruntime transformer optimisation, kept only if it passes
                if optimize:
                    meta["optimized"] = self._optimize(tmp, tmp_dir, out_path, names, reference, plist, threads, _optimizer_kind(model, text))
            elif optimize:
                meta["optimized"] = {"kept": False, "reason": f"optimisation is only done for fp32 exports (precision {precision})"}
        meta["path"] = str(out_path)
        meta = _published(meta, tmp_dir, out_path.parent)  # parity ran on the staged files: name the ones published
        if precision == "int8":
            meta["fp32_path"] = str(out_path.parent / meta["fp32_file"])
        if meta.get("optimized", {}).get("kept"):
            meta["optimized"]["path"] = str(out_path.parent / meta["optimized"]["file"])
        return ExportResult(path=out_path, metadata=meta)

    @staticmethod
    def _optimize(src: Path, tmp_dir: Path, out_path: Path, names, reference, plist, threads, kind: str) -> dict:
        opt_name = out_path.stem + ".optimized.onnx"
        info: dict = {"optimizer": kind, "num_heads": 0, "hidden_size": 0, "file": opt_name}
        try:
            from onnxruntime.transformers.optimizer import optimize_model

            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                # num_heads=0 / hidden_size=0: detect per attention node (pruned layers differ)
                opt = optimize_model(str(src), kind, num_heads=0, hidden_size=0, use_gpu=False)
                info["fused_operators"] = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
                opt.save_model_to_file(str(tmp_dir / opt_name))
        except Exception as exc:
            (tmp_dir / opt_name).unlink(missing_ok=True)
            storage = storage_error_in(exc, str(out_path.parent / opt_name))
            if storage is not None:  # a full disk is the file system's failure: the optimisation is not dropped for it
                raise storage from None
            return {**info, "kept": False, "reason": f"optimizer failed: {_first_line(exc)}"}
        try:
            rt = onnx_parity_runner(tmp_dir / opt_name, threads)
            par = check_parity(reference, rt.run, plist, precision="fp32", raise_on_fail=False)
        except Exception as exc:
            (tmp_dir / opt_name).unlink(missing_ok=True)
            return {**info, "kept": False, "reason": f"optimised model does not load in onnxruntime: {_first_line(exc)}"}
        if not par["passed"]:
            (tmp_dir / opt_name).unlink(missing_ok=True)
            return {**info, "kept": False, "reason": "parity failed: " + "; ".join(par["failures"]), "parity": par}
        return {**info, "kept": True, "parity": par}


def _export_fused(module: torch.nn.Module, trace_inputs: dict, names: list[str], dest: Path, tmp_dir: Path,
                  fusions: Mapping[str, bool] | None, opset: int | None, kind: str) -> dict:
    """TorchScript-export an adapter's export forward, fuse it with onnxruntime's transformer optimizer
    of the family's ``kind`` (the adapter's ``ort_optimizer``; ``fusions``, default
    :data:`DEFAULT_FUSIONS`) and write the fused graph to ``dest``."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    raw = tmp_dir / ".raw.onnx"
    axes = {n: {0: "batch", 1: "sequence"} if is_text_input(n) else {0: "batch"} for n in names}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(trace_inputs.values()), str(raw), dynamo=False, input_names=names, output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset or 17, do_constant_folding=True)
    chosen = {**DEFAULT_FUSIONS, **(fusions or {})}
    fo = FusionOptions(kind)
    for k, v in chosen.items():
        if not hasattr(fo, k):
            raise OptinError(f"unknown onnxruntime fusion option {k!r}")
        setattr(fo, k, bool(v))
    from ..progress import silenced

    try:
        # "Input hidden size (..) is not same as ...": expected for pruned layers (heads are detected per node)
        with silenced("onnxruntime.transformers", "fusion_attention"):
            # opt_level=0: the Python fusions only. Level 1 first runs onnxruntime's basic graph optimisations in a session
            # and saves the result (0.45 s an export), which the session that loads the graph applies anyway: same fused
            # operators and the same outputs on MiniLM-L6 (Attention 6, BiasGelu 6, LayerNormalization 13)
            opt = optimize_model(str(raw), kind, num_heads=0, hidden_size=0, optimization_options=fo, use_gpu=False, opt_level=0)
            fused = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(str(dest))
    finally:
        raw.unlink(missing_ok=True)
    return {"fusion_options": chosen, "fused_operators": fused, "optimizer": f"onnxruntime.transformers.optimize_model({kind!r}, num_heads=0, opt_level=0)"}


QUANTIZATIONS = ("dynamic", "static")
#: op types quantize_static handles in the fused graph: onnxruntime's static registries (QOperator and QDQ) have no
#: com.microsoft Attention, so a static int8 graph quantises the MatMuls statically and the fused Attention's
#: QKV weights dynamically (quantize_dynamic on the static graph: QAttention), see :func:`quantize_int8`
STATIC_OPS = ("MatMul",)
#: the static graph's format, measured on the fused all-MiniLM-L6-v2 dense graph (onnxruntime 1.32, 2 threads, 8 x 128,
#: interleaved, on the shared, loaded 2-core machine: read the ratios). First run (random-token calibration, 32
#: samples): QOperator + dynamic Attention 233 ms, QDQ + dynamic Attention 332 ms, dynamic 232 ms, fp32 471 ms.
#: Second run (benchmarks/quant_format.py, the task's 128 calibration samples; results/quant_format.json): QOperator
#: 190.9 ms, QDQ 196.1 ms, dynamic 176.5 ms, fp32 343.7 ms. QOperator (QLinearMatMul written directly) was ahead both
#: times, by 3% in the second, so QOperator; neither static form beat dynamic int8.
STATIC_FORMAT = "QOperator"
CALIB_BATCH = 8  # samples per calibration batch fed to the static quantiser


class _Calibration:
    """onnxruntime's CalibrationDataReader over a list of ``{input name: array}`` batches."""

    def __init__(self, batches):
        from onnxruntime.quantization import CalibrationDataReader

        class Reader(CalibrationDataReader):
            def __init__(self, data):
                self.data, self.i = data, 0

            def get_next(self):
                if self.i >= len(self.data):
                    return None
                self.i += 1
                return self.data[self.i - 1]

            def rewind(self):
                self.i = 0

        self.reader = Reader(list(batches))


def calibration_batches(calibration, names: list[str], batch: int = CALIB_BATCH) -> list[dict]:
    """The build's calibration batch (``{name: tensor}``, the samples the scores used), at the export's input
    names, as numpy batches of ``batch`` samples for the static quantiser."""
    import numpy as np

    if calibration is None:
        raise OptinError("static int8 quantisation needs the calibration batch (unlabelled samples); pass calibration=")
    missing = [n for n in names if n not in calibration]
    if missing:
        raise OptinError(f"the calibration batch lacks the export's inputs {', '.join(missing)}; it has {', '.join(calibration)}")
    arrays = {n: (calibration[n].numpy() if hasattr(calibration[n], "numpy") else np.asarray(calibration[n])) for n in names}
    n = next(iter(arrays.values())).shape[0]
    return [{k: np.ascontiguousarray(v[i:i + batch]) for k, v in arrays.items()} for i in range(0, n, batch)]


def quantizable_nodes(path: Path, mode: str = "dynamic") -> list[str]:
    """Names of the nodes int8 quantisation of ``mode`` touches, in graph (topological) order: the MatMuls and fused
    Attention nodes, and for dynamic quantisation the Gemms too (``quantize_dynamic`` rewrites a Gemm as
    ``NAME_MatMul`` + ``NAME_Add`` and quantises that MatMul: the pooler and the classifier)."""
    import onnx

    ops = set(INT8_OPS) | ({"Gemm"} if mode == "dynamic" else set())
    m = onnx.load(str(path), load_external_data=False)
    return [n.name for n in m.graph.node if n.op_type in ops and n.name]


def quantize_int8(src: Path, dest: Path, per_channel: bool = True, *, mode: str = "dynamic", calibration: list[dict] | None = None,
                  exclude: list[str] | tuple = ()) -> dict:
    """int8 quantisation of the fp32 graph ``src`` into ``dest`` with onnxruntime.quantization.

    ``mode="dynamic"``: ``quantize_dynamic``, int8 weights (per output channel), uint8 activations quantised per batch at
    run time. ``mode="static"``: ``quantize_static`` of the MatMuls (:data:`STATIC_FORMAT`) with activation ranges
    calibrated (MinMax) on ``calibration`` (``{input: array}`` batches), then ``quantize_dynamic`` of the fused
    Attention nodes, which onnxruntime cannot quantise statically. ``exclude``: node names left in fp32."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if mode not in QUANTIZATIONS:
        raise OptinError(f"unknown int8 quantisation {mode!r}; choose one of {', '.join(QUANTIZATIONS)}")
    exclude = list(exclude)
    # quantize_dynamic renames a Gemm it rewrites as MatMul + Add to NAME_MatMul: excluding NAME keeps the Gemm whole
    skip = exclude + [f"{n}_MatMul" for n in exclude]
    t0 = time.perf_counter()
    # DefaultTensorType: onnx shape inference does not type the outputs of onnxruntime's contrib ops (Attention)
    extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    info = {"mode": mode, "weights": "int8" + (" per-channel" if per_channel else " per-tensor"), "excluded": exclude}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), _quiet_quantizer():
            warnings.simplefilter("ignore")
            if mode == "dynamic":
                with vectorised_per_channel():
                    quantize_dynamic(str(src), str(dest), weight_type=QuantType.QInt8, per_channel=per_channel, op_types_to_quantize=list(INT8_OPS),
                                     nodes_to_exclude=skip, extra_options=extra)
                info.update(method="onnxruntime.quantization.quantize_dynamic", activations="uint8, dynamic (per batch)", op_types=list(INT8_OPS))
            else:
                info.update(_quantize_static(Path(src), Path(dest), per_channel, calibration, exclude, extra))
    except OptinError:
        raise
    except Exception as exc:
        raise OptinError(f"int8 {mode} quantisation failed (onnxruntime.quantization): {_first_line(exc)}") from None
    info["seconds"] = round(time.perf_counter() - t0, 2)
    return info


#: :func:`vectorised_per_channel` is used by :func:`quantize_int8` (the tests switch it off to compare)
VECTORISED_PER_CHANNEL = True


@contextlib.contextmanager
def vectorised_per_channel():
    """onnxruntime's per-channel weight quantisation loops in Python over the output channels, one ``quantize_data``
    call each (13,000 calls for MiniLM-L6: 0.8 s of a 1.3 s ``quantize_dynamic``, paid by every export and every
    candidate of a budget search). Within this block the common case (float32 weights, symmetric int8, no per-tensor
    overrides) runs the same arithmetic in one numpy pass per weight: the same scales, zero points and int8 values, bit
    for bit (``tests/test_quantize.py``); anything else, or an onnxruntime whose quantiser no longer looks like this,
    goes to onnxruntime's own code."""
    try:
        from onnxruntime.quantization import base_quantizer as bq
        from onnxruntime.quantization import quant_utils as qu

        original = bq.BaseQuantizer.quantize_weight_per_channel_impl
        # what _per_channel_int8 uses: an AttributeError here means a quantiser this code was not written against
        bq.find_by_name, bq.tensor_proto_to_array, bq.normalize_axis, bq.TENSOR_NAME_QUANT_SUFFIX, qu.get_qmin_qmax_for_qType  # noqa: B018
    except (ImportError, AttributeError):
        yield
        return
    if not VECTORISED_PER_CHANNEL:
        yield
        return

    def impl(self, weight_name, weight_qType, channel_axis, reduce_range=True, keep_float_weight=False):  # noqa: N803 (onnxruntime's names)
        try:
            done = _per_channel_int8(self, bq, qu, weight_name, weight_qType, channel_axis, reduce_range, keep_float_weight)
        except Exception:  # noqa: BLE001 - an unexpected quantiser state: onnxruntime's own code decides
            done = None
        if done is None:
            return original(self, weight_name, weight_qType, channel_axis, reduce_range, keep_float_weight)
        return done

    bq.BaseQuantizer.quantize_weight_per_channel_impl = impl
    try:
        yield
    finally:
        bq.BaseQuantizer.quantize_weight_per_channel_impl = original


def _per_channel_int8(self, bq, qu, weight_name, weight_qType, channel_axis, reduce_range, keep_float_weight):  # noqa: N803
    """onnxruntime's ``quantize_weight_per_channel_impl`` (``compute_scale_zp`` + ``quantize_nparray`` per channel) for
    float32 weights, symmetric int8, no overrides, vectorised over the channels; ``None`` for any other case. Nothing
    is added to the model until every value is computed."""
    import numpy as np
    import onnx

    if weight_qType != onnx.TensorProto.INT8 or getattr(self, "min_real_range", None) is not None:
        return None
    init = bq.find_by_name(weight_name, self.model.initializer())
    if init is None or init.data_type != onnx.TensorProto.FLOAT:
        return None
    w = bq.tensor_proto_to_array(init)
    ok, axis = bq.normalize_axis(channel_axis, len(w.shape))
    if not ok or w.dtype != np.float32 or w.size == 0:
        return None
    if self.tensor_quant_overrides.get_per_channel_overrides(weight_name, default_val=[{"axis": axis}]) != [{"axis": axis}]:
        return None
    if not self.is_weight_symmetric(weight_qType):
        return None
    qmin, qmax = qu.get_qmin_qmax_for_qType(weight_qType, self.reduce_range and reduce_range, symmetric=True)
    zero = np.array(np.round((qmin + qmax) / np.array(2.0, dtype=np.float64)), dtype=qmin.dtype)
    if zero != 0:
        return None
    channels = w.shape[axis]
    wm = np.moveaxis(w, axis, 0).reshape(channels, -1)
    rmin = np.minimum(wm.min(axis=1), np.float32(0))
    rmax = np.maximum(wm.max(axis=1), np.float32(0))
    absmax = np.maximum(np.abs(rmin), np.abs(rmax))
    scale64 = (absmax.astype(np.float64) - (-absmax).astype(np.float64)) / (np.float64(qmax) - np.float64(qmin))
    scale = scale64.astype(np.float32)
    tiny = scale64 < np.finfo(np.float32).tiny
    scale[tiny] = np.float32(1.0)
    lo, hi = qu.get_qmin_qmax_for_qType(weight_qType, reduce_range=False, symmetric=False)  # quantize_nparray's clip
    q = (wm / scale[:, None]).round() + zero
    np.clip(q, lo, hi, out=q)
    q = np.moveaxis(q.astype(np.int8).reshape([channels] + [d for i, d in enumerate(w.shape) if i != axis]), 0, axis)
    q_name, zp_name, scale_name = weight_name + bq.TENSOR_NAME_QUANT_SUFFIX, weight_name + "_zero_point", weight_name + "_scale"
    new = [onnx.helper.make_tensor(scale_name, init.data_type, [init.dims[axis]], scale.tolist()),
           onnx.helper.make_tensor(zp_name, weight_qType, [init.dims[axis]], np.zeros(channels, dtype=np.int8).tolist())]
    if not keep_float_weight:
        new.append(onnx.numpy_helper.from_array(np.ascontiguousarray(q).reshape(init.dims), q_name))
    self.model.initializer_extend(new)
    return q_name, zp_name, scale_name


@contextlib.contextmanager
def _quiet_quantizer():
    """onnxruntime.quantization logs through the root logger (pre-processing hints, untyped tensors)."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _quantize_static(src: Path, dest: Path, per_channel: bool, calibration: list[dict] | None, exclude: list[str], extra: dict) -> dict:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    if not calibration:
        raise OptinError("static int8 quantisation needs the calibration batch (unlabelled samples)")
    work = Path(tempfile.mkdtemp(prefix=".q8-", dir=dest.parent))
    try:
        # symbolic shape inference types the outputs of the contrib ops (Attention, BiasGelu): without it the
        # static quantiser cannot tell the MatMuls' activations are float and fails
        typed = work / "typed.onnx"
        onnx.save(SymbolicShapeInference.infer_shapes(onnx.load(str(src)), auto_merge=True, guess_output_rank=True), str(typed))
        has_attention = any(n.op_type == "Attention" and n.name not in exclude for n in onnx.load(str(typed), load_external_data=False).graph.node)
        static_out = work / "static.onnx" if has_attention else dest
        fmt = getattr(QuantFormat, STATIC_FORMAT)
        quantize_static(str(typed), str(static_out), _Calibration(calibration).reader, quant_format=fmt, op_types_to_quantize=list(STATIC_OPS),
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
        if has_attention:
            quantize_dynamic(str(static_out), str(dest), weight_type=QuantType.QInt8, per_channel=per_channel, op_types_to_quantize=["Attention"],
                             nodes_to_exclude=exclude, extra_options=extra)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = sum(len(next(iter(b.values()))) for b in calibration)
    return {"method": f"onnxruntime.quantization.quantize_static ({STATIC_FORMAT}, MinMax)" + (" + quantize_dynamic (Attention)" if has_attention else ""),
            "activations": f"uint8, static ranges calibrated on {n} samples" + ("; Attention inputs dynamic (onnxruntime has no static Attention)" if has_attention else ""),
            "op_types": list(STATIC_OPS) + (["Attention (dynamic)"] if has_attention else []), "calibration_samples": n}
