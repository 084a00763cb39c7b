"""Latency lookup tables: what one attention part and one MLP cost on the target runtime.

``measure_lut(model, profile)`` times, on the machine it runs on and with the profile's runtime
(onnxruntime CPU / CUDA / TensorRT execution provider, the profile's threads, batch and sequence
length), the model's own first transformer block sliced with the adapter:

* ``block(h, 0)`` for every head count ``h = 0..H`` (MLP removed) -> ``attn_ms[h] = block(h, 0) - block(0, 0)``;
* ``block(0, f)`` for a grid of MLP widths ``f = 0, step, 2 step, ..., F`` -> ``mlp_ms``;
* the full model with every block reduced to ``block(0, 0)`` (embeddings, task head and the residual
  / LayerNorm remains of every block) -> ``empty_model_ms``, the part pruning cannot remove;
* the dense model -> ``dense_model_ms``.

Each block is exported on its own to ONNX (a small module taking hidden states ``B x T x d``; BERT
blocks get ``attention_mask=None``) and every artifact is timed interleaved with the others
(``rounds`` rounds of ``iters`` runs each after a warm-up; the statistic is the median), so a
change in machine load hits all entries alike. Blocks timed alone do not add up exactly to the
whole graph, so the block tables are multiplied by one calibration factor ``scale`` that makes
``empty + L * (attn[H] + mlp[F])`` equal the measured dense latency.

Models whose layers differ (Swin's stages: other hidden size, head count, MLP width and token
count per stage) get one table per *group* of equal layers (``groups``): each group is measured in
context the same way, varying only that group's layers while the others stay dense, and the
calibration makes ``empty + sum_g |g| (attn_g[H_g] + mlp_g[F_g])`` the dense latency. A model with
equal layers has one group and the same file as before.

The JSON file is self-describing (device, versions, shapes, profile, model dimensions), so a table
measured on an edge device can be copied to the build host. ``load_lut(file)`` turns it into a
:class:`~optin_deploy.core.costs.CostModel` in milliseconds for :func:`~optin_deploy.core.selection.select`:
``attn(l, h)`` from the table, the per-neuron slope of a least-squares line through the MLP table
(its intercept, paid by every layer that keeps an MLP, goes to ``fixed`` with ``empty_model_ms``).
:meth:`LatencyTable.predict` gives the piecewise-linear prediction of a plan's latency.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from .bench import DEFAULT_SETTLE_S
from .errors import OptinError
from .target import Target, resolve_target

LUT_FORMAT = "optin-deploy-lut"
LUT_VERSION = 1


class LutMismatchWarning(UserWarning):
    """A latency table is used with another profile, shape or model than it was measured for."""


# ------------------------------------------------------------------------------------- environment


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_name() -> str | None:
    try:
        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:  # pragma: no cover
        pass
    return None


def environment() -> dict:
    import onnxruntime as ort

    versions = {"onnxruntime": ort.__version__, "torch": torch.__version__, "python": platform.python_version()}
    for mod in ("onnx", "transformers", "timm"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:
            pass
    return {
        "device": {"cpu": cpu_name(), "gpu": gpu_name(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                   "hostname": platform.node()},
        "versions": versions,
    }


# ---------------------------------------------------------------------------------------- timing


def ort_runtime_for(target: Target):
    """The runtime that measures for ``target`` (raises a one-line error if missing): onnxruntime's provider, or
    OpenVINO for ``openvino-cpu`` profiles (in the profile's precision: bf16 -> ``openvino-cpu-bf16``).

    ``tensorrt`` profiles are measured through onnxruntime's TensorRT execution provider (the same
    TensorRT kernels), with fp16 enabled for fp16 profiles.
    """
    from .runtimes.ort import OrtRuntime

    if target.runtime == "openvino-cpu":
        from .runtimes.base import get_runtime

        return get_runtime(target.runtime_name, threads=target.threads)
    name = {"onnxruntime-cpu": "ort-cpu", "onnxruntime-cuda": "ort-cuda", "onnxruntime-tensorrt": "ort-tensorrt",
            "tensorrt": "ort-tensorrt"}.get(target.runtime)
    if name is None:
        raise OptinError(f"latency tables are measured with onnxruntime or OpenVINO; profile {target.name} uses runtime {target.runtime}")
    from .runtimes.ort import tensorrt_ep_options

    # the engine's precision (an fp16 or bf16 profile's table is not timed in fp32)
    opts = tensorrt_ep_options(target.precision) if name == "ort-tensorrt" else {}
    return OrtRuntime(name, threads=target.threads if name == "ort-cpu" else None, provider_options=opts)


def _call(rt, feed: dict) -> Callable[[], Any]:
    """The cheapest call that runs ``rt`` once on ``feed`` (the session itself, without the runtime's checks)."""
    session = getattr(rt, "session", None)
    if session is not None:
        return lambda: session.run(None, feed)
    request = getattr(rt, "request", None)
    if request is not None:  # OpenVINO
        return lambda: request.infer(feed)
    return lambda: rt.run(feed)


def _feed(rt, inputs: Mapping[str, Any]) -> dict:
    feed = {}
    for n, dt in rt.inputs.items():
        x = inputs[n]
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        feed[n] = np.ascontiguousarray(x, dtype=dt)
    return feed


def time_interleaved(runners: Mapping[str, Callable[[], Any]], *, rounds: int = 7, iters: int = 5, warmup: int = 3,
                     max_seconds: float | None = None, settle_seconds: float = DEFAULT_SETTLE_S) -> dict[str, dict]:
    """Median milliseconds of each runner, timed in interleaved rounds (``rounds`` x ``iters`` runs each).

    Interleaving spreads slow phases of a shared machine over every entry instead of one. Before each
    runner's ``iters`` timed runs, untimed runs for ``settle_seconds`` (at least one) let it come back
    to speed after the previous runner held the cores (:mod:`optin_deploy.bench`). Returns
    ``{name: {"median_ms", "min_ms", "n"}}``. With ``max_seconds`` fewer rounds are run (at least 2).
    """
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        for _ in range(warmup):
            fn()
    t_start = time.perf_counter()
    for r in range(rounds):
        for name, fn in runners.items():
            settle_until = time.perf_counter() + settle_seconds
            fn()
            while time.perf_counter() < settle_until:
                fn()
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) * 1e3)
        if max_seconds is not None and r >= 1 and time.perf_counter() - t_start > max_seconds:
            break
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "n": len(v)} for k, v in samples.items()}


# ---------------------------------------------------------------------------------------- export


class _BlockOnly(nn.Module):
    """One transformer block as a graph ``hidden states (B x T x d) -> hidden states``."""

    def __init__(self, block: nn.Module, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.block = block
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x.to(self.dtype))
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.float()


def export_block(block: nn.Module, x: torch.Tensor, path: Path, precision: str = "fp32") -> Path:
    """Export one block (hidden states in, hidden states out) with dynamic batch and sequence axes."""
    from .model_io import TORCH_DTYPES

    dtype = TORCH_DTYPES[precision]
    wrapped = _BlockOnly(copy.deepcopy(block).to(dtype).eval(), dtype).eval()
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("sequence", min=2, max=1 << 16)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapped, (x,), str(path), dynamo=True, input_names=["hidden_states"], output_names=["out"],
                              dynamic_shapes=({0: batch, 1: seq},), external_data=False, optimize=True)
    except Exception as exc:
        msg = str(exc.__cause__ or exc).strip().splitlines()
        raise OptinError(f"latency table: ONNX export of a block failed: {(msg[0] if msg else type(exc).__name__)[:300]}") from None
    return path


def example_inputs(model: nn.Module, target: Target, batch: int | None = None) -> dict[str, torch.Tensor]:
    """Benchmark inputs at the target's batch and sequence length (text: seeded random ids, every
    position attended) or the model's image size (:meth:`Target.example_inputs`); warns when the
    model's image size is not the profile's."""
    from .adapters import get_adapter

    a = get_adapter(model)
    if a.modality != "text" and target.image_size and a.image_shape()[-1] != target.image_size:
        size = a.image_shape()[-1]
        warnings.warn(f"model takes {size}x{size} images; profile {target.name} says image_size {target.image_size}: timing at {size}",
                      LutMismatchWarning, stacklevel=2)
    return target.example_inputs(model, batch=batch)


def export_shape_profile(model: nn.Module, inputs: Mapping[str, torch.Tensor], target: Target | None = None):
    """A ShapeProfile around the measured shape, within the model's position embeddings."""
    from .exporters.base import ShapeProfile, is_text_input
    from .adapters import get_adapter

    first = next(iter(inputs.values()))
    B = int(first.shape[0])
    T = int(first.shape[1]) if any(is_text_input(n) for n in inputs) else 1
    profile = target.profile if target is not None else None
    max_b = max(B, 2, profile.max_batch if profile and profile.max_batch else B)
    max_t = max(T, 2, profile.max_seq if profile and profile.max_seq else T)
    maxpos = get_adapter(model).max_positions()
    if maxpos is not None:
        max_t = max(T, min(max_t, maxpos))
    return ShapeProfile(1, B, max_b, 1, T, max_t)


def export_model(model: nn.Module, inputs: Mapping[str, torch.Tensor], path: Path, target: Target | None = None) -> Path:
    """Export a whole (pruned) classifier the way deployment does (the project's ONNX exporter: the
    profile's graph and precision, e.g. the fused int8 graph for ``x86-cpu-ort``)."""
    from .exporters.onnx import OnnxExporter

    precision = target.precision if target is not None and (target.runtime != "onnxruntime-cpu" or target.precision == "int8") else "fp32"
    graph = "auto" if target is None or target.runtime.startswith("onnxruntime") else "dynamo"  # TensorRT parses standard ops only
    if target is not None and target.runtime == "openvino-cpu":  # OpenVINO reads the fused fp32 graph (bf16 is its inference precision)
        precision, graph = "fp32", "auto"
    OnnxExporter().export(model, dict(inputs), path, profile=export_shape_profile(model, inputs, target), parity=False,
                          precision=precision, graph=graph)
    return path


def measure_model_ms(model: nn.Module, target: Target, inputs: Mapping[str, torch.Tensor] | None = None, *,
                     rounds: int = 7, iters: int = 5, warmup: int = 3, workdir: str | os.PathLike | None = None) -> float:
    """Median latency (ms) of ``model`` exported to ONNX and run on the profile's onnxruntime provider.

    This is the default ``measure_fn`` of :func:`optin_deploy.latency_budget.select_for_latency`.
    """
    inputs = inputs or example_inputs(model, target)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = export_model(model, inputs, Path(tmp) / "model.onnx", target)
        rt = ort_runtime_for(target).load(path)
        feed = _feed(rt, inputs)
        res = time_interleaved({"m": _call(rt, feed)}, rounds=rounds, iters=iters, warmup=warmup)
    return res["m"]["median_ms"]


def make_measure_fn(target: Target, inputs: Mapping[str, torch.Tensor] | None = None, **timing) -> Callable[[nn.Module], float]:
    """``model -> measured ms`` on the target's runtime (for :func:`select_for_latency`)."""
    return lambda m: measure_model_ms(m, target, inputs, **timing)


def make_relative_measure_fn(target: Target, dense_model: nn.Module, inputs: Mapping[str, torch.Tensor] | None = None, *,
                             reference_ms: float, rounds: int = 5, block: int = 10, warmup: int = 3,
                             workdir: str | os.PathLike | None = None) -> Callable[[nn.Module], float]:
    """``model -> reference_ms * (model's latency / the dense model's latency)``, both timed in the
    same interleaved blocks (``rounds`` blocks of ``block`` runs each) on the profile's runtime.

    The dense model is exported once; every candidate is timed against it afresh, so a relative
    target (``dense / S``) holds whatever the machine's load does between rounds. ``fn.history``
    lists every measurement (dense ms, candidate ms, ratio).
    """
    import shutil
    import weakref

    inputs = inputs or example_inputs(dense_model, target)
    folder = Path(tempfile.mkdtemp(prefix="optin-relative-", dir=workdir))
    dense_rt = ort_runtime_for(target).load(export_model(dense_model, inputs, folder / "dense.onnx", target))
    dense_feed = _feed(dense_rt, inputs)
    history: list[dict] = []

    def measure(model: nn.Module) -> float:
        path = export_model(model, inputs, folder / "candidate.onnx", target)
        rt = ort_runtime_for(target).load(path)
        feed = _feed(rt, inputs)
        res = time_interleaved({"dense": _call(dense_rt, dense_feed), "candidate": _call(rt, feed)},
                               rounds=rounds, iters=block, warmup=warmup)
        d, c = res["dense"]["median_ms"], res["candidate"]["median_ms"]
        history.append({"dense_ms": d, "candidate_ms": c, "ratio": c / d})
        return reference_ms * c / d

    measure.history = history  # type: ignore[attr-defined]
    measure.dense_runtime = dense_rt  # type: ignore[attr-defined]
    weakref.finalize(measure, shutil.rmtree, str(folder), True)
    return measure


# ----------------------------------------------------------------------------------------- table


#: a dip larger than this share of a table's largest entry is not timing noise of a sound measurement: it is said
CONTRADICTION_SHARE = 0.10


def contradictions(values, labels, what: str) -> list[str]:
    """Where ``values`` (a table measured by growing head count or MLP width, labelled by ``labels``) contradicts
    itself beyond noise: an entry below an earlier one (a narrower width measured slower, a unit removed saving
    negative time) by more than :data:`CONTRADICTION_SHARE` of the table's largest entry."""
    vals = [float(v) for v in values]
    if not vals:
        return []
    top, best, where, out = max(max(vals), 0.0), 0.0, labels[0], []
    for v, lab in zip(vals, labels):
        if best - v > CONTRADICTION_SHARE * top and best - v > 0:
            out.append(f"{what} {lab} {v:.4g} ms < {where}'s {best:.4g} ms")
        if v > best:
            best, where = v, lab
    return out


def _nondecreasing(values) -> list[float]:
    """``values`` as floats, each at least 0 and at least every earlier one (a running maximum)."""
    return [float(v) for v in np.maximum.accumulate(np.maximum(np.asarray(values, dtype=float), 0.0))] if len(values) else []


@dataclass
class LatencyTable:
    profile: dict
    shapes: dict
    model: dict
    attn_ms: list[float]  # index h: attention part with h heads (attn_ms[0] == 0)
    mlp_widths: list[int]
    mlp_ms: list[float]  # MLP part at each width (mlp_ms at width 0 == 0)
    empty_model_ms: float  # the whole model with every block reduced (what pruning cannot remove)
    dense_model_ms: float | None = None
    scale: float = 1.0  # applied to attn_ms / mlp_ms already
    environment: dict = field(default_factory=dict)
    raw: dict = field(default_factory=dict)
    timing: dict = field(default_factory=dict)
    groups: list[dict] | None = None  # layers differ: per group of equal layers {"layers", "attn_ms", "mlp_widths", "mlp_ms"}
    format: str = LUT_FORMAT
    version: int = LUT_VERSION

    def __post_init__(self) -> None:
        # Timing noise can measure h heads faster than h - 1, or a wider MLP faster than a narrower one. A unit's
        # cost is never negative, so each table is held non-decreasing from 0 (the raw timings stay in ``raw``);
        # predictions and the cost model then agree, and an MLP line fitted through a non-decreasing table has a
        # slope >= 0.
        # Beyond noise (a dip over a tenth of the table) the table contradicts itself: kept in ``contradicted`` (not a
        # field: not written) and said by whoever reads or measures it (:func:`warn_contradictions`), naming the rows.
        tables = [("", self.attn_ms, self.mlp_widths, self.mlp_ms)] if self.groups is None else \
            [(f"group {i} ", g["attn_ms"], g["mlp_widths"], g["mlp_ms"]) for i, g in enumerate(self.groups)]
        self.contradicted = [c for tag, attn, widths, mlp in tables
                             for c in (contradictions(attn, [f"{h} heads" for h in range(len(attn))], f"{tag}attention at")
                                       + contradictions(mlp, [f"width {w}" for w in widths], f"{tag}MLP at"))]
        self.attn_ms, self.mlp_ms = _nondecreasing(self.attn_ms), _nondecreasing(self.mlp_ms)
        for g in self.groups or []:
            g["attn_ms"], g["mlp_ms"] = _nondecreasing(g["attn_ms"]), _nondecreasing(g["mlp_ms"])

    # ---- predictions ------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return int(self.model["num_layers"])

    def _group(self, layer: int | None) -> dict:
        if self.groups is None or layer is None:
            return {"attn_ms": self.attn_ms, "mlp_widths": self.mlp_widths, "mlp_ms": self.mlp_ms}
        return next(g for g in self.groups if layer in g["layers"])

    def attn_line(self, layer: int | None = None) -> tuple[float, float]:
        """``(intercept_ms, ms_per_head)`` of a least-squares line through the attention table at 1..H heads of
        ``layer``'s group, both held >= 0. One head's step (0.13-0.16 ms a layer for MiniLM int8, about 3% of the model)
        is the size of the timing noise, so the raw per-count steps chose plans that moved with the noise; the line
        keeps what the table says reliably: a per-head cost and what a layer's attention costs at all (saved only
        when its last head goes)."""
        t = self._group(layer)["attn_ms"]
        if len(t) <= 1:
            return 0.0, 0.0
        if len(t) == 2:
            return 0.0, float(t[1])
        slope = max(float(np.polyfit(np.arange(1, len(t), dtype=float), np.asarray(t[1:], dtype=float), 1)[0]), 0.0)
        intercept = max(float(np.mean(t[1:])) - slope * (len(t) / 2.0), 0.0)  # the least-squares intercept under the clamped slope
        return intercept, slope

    @staticmethod
    def _on_line(line: tuple[float, float], H: int, h: int) -> float:
        """Attention with ``h`` heads on a ``line`` fitted through a table of ``H`` heads: nothing without heads; a
        model with more heads than the table (measured on a smaller one) is extrapolated along the line."""
        return 0.0 if int(h) <= 0 or H <= 0 else line[0] + line[1] * int(h)

    def attn(self, h: int, layer: int | None = None) -> float:
        """A layer's attention with ``h`` heads: 0 without heads, else the fitted line (:meth:`attn_line`)."""
        return self._on_line(self.attn_line(layer), len(self._group(layer)["attn_ms"]) - 1, h)

    def mlp(self, f: int, layer: int | None = None) -> float:
        """Piecewise-linear interpolation of the MLP table; past its widest entry (a model wider than the one
        measured) the fitted per-neuron slope (:meth:`linear_fit`) continues it (``np.interp`` alone held it flat)."""
        g = self._group(layer)
        widths = g["mlp_widths"]
        if f > widths[-1]:
            return float(g["mlp_ms"][-1]) + (f - widths[-1]) * max(self.linear_fit(layer)[1], 0.0)
        return float(np.interp(f, widths, g["mlp_ms"]))

    def predict(self, heads: list[int], neurons: list[int]) -> float:
        """Predicted latency (ms) of a model with these per-layer head counts and MLP widths."""
        return self.empty_model_ms + sum(self.attn(h, l) + self.mlp(f, l) for l, (h, f) in enumerate(zip(heads, neurons)))

    def dense_predicted(self) -> float:
        return self.predict(self.model["heads"], self.model["neurons"])

    def linear_fit(self, layer: int | None = None) -> tuple[float, float]:
        """``(intercept_ms, ms_per_neuron)`` of a least-squares line through the MLP table (widths > 0)
        of ``layer``'s group (the first group if None)."""
        g = self._group(layer)
        w = np.array([x for x in g["mlp_widths"] if x > 0], dtype=float)
        t = np.array([y for x, y in zip(g["mlp_widths"], g["mlp_ms"]) if x > 0], dtype=float)
        if len(w) == 0:
            return 0.0, 0.0
        if len(w) == 1:
            return 0.0, float(t[0] / w[0])
        slope, intercept = np.polyfit(w, t, 1)
        return float(intercept), float(slope)

    def cost_model(self, heads: list[int] | None = None, neurons: list[int] | None = None):
        """A :class:`CostModel` in milliseconds (absolute budgets: ``select(..., budget=target_ms)``) of a model with
        ``heads`` / ``neurons`` per layer (default: the model the table was measured on). The model being pruned
        gives its own: its dense cost, the base of a fraction budget and of "the selection keeps everything", is its
        own units' cost, not the table's model's (a table of a narrower model made --flops 0.9 keep 0.76)."""
        from .core.costs import CostModel

        L = self.num_layers
        fits = [self.linear_fit(l) for l in range(L)]
        # each layer's attention line fitted once: the selection asks for attention costs hundreds of times a plan
        lines = [(self.attn_line(l), len(self._group(l)["attn_ms"]) - 1) for l in range(L)]

        def attn(l: int, h: int) -> float:
            return self._on_line(*lines[l], h)

        fixed = self.empty_model_ms + sum(i for i, _ in fits)
        intercept, slope = fits[0]
        info = {"lut": self, "mlp_intercept_ms": intercept, "neuron_ms": slope, "profile": self.profile.get("name"),
                "shapes": self.shapes}
        heads = list(self.model["heads"]) if heads is None else list(heads)
        neurons = list(self.model["neurons"]) if neurons is None else list(neurons)
        return CostModel(L, heads, neurons, attn, [s for _, s in fits], fixed, "ms", info)

    # ---- io ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        intercept, slope = self.linear_fit()
        a, b = self.attn_line()
        d["fit"] = {"mlp_intercept_ms": intercept, "neuron_ms": slope, "attn_intercept_ms": a, "head_ms": b,
                    "dense_predicted_ms": self.dense_predicted()}
        return d

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        from .safe_out import write_json

        write_json(path, self.to_dict())
        return path

    @classmethod
    def from_dict(cls, d: dict) -> "LatencyTable":
        if not isinstance(d, dict) or d.get("format") != LUT_FORMAT:
            fmt = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise OptinError(f"not an optin-deploy latency table (format {fmt!r}); make one with: optin-deploy lut")
        version = d.get("version", 0)
        if not isinstance(version, int) or isinstance(version, bool):
            raise OptinError(f"latency table version {version!r} is not a whole number; measure it again with: optin-deploy lut")
        if version > LUT_VERSION:
            raise OptinError(f"latency table version {d.get('version')} is newer than this optin-deploy reads ({LUT_VERSION}); upgrade")
        names = {f for f in cls.__dataclass_fields__}
        missing = [k for k in ("profile", "shapes", "model", "attn_ms", "mlp_widths", "mlp_ms", "empty_model_ms") if k not in d]
        if missing:
            raise OptinError(f"latency table lacks {', '.join(missing)} (an incomplete file); measure it again with: optin-deploy lut")
        _check_table_fields(d)
        return cls(**{k: v for k, v in d.items() if k in names})


def _is_ms(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_table_fields(d: dict) -> None:
    """Refuse, in one line, a table whose fields cannot be what ``optin-deploy lut`` writes (an edited or damaged
    file): a figure computed from a NaN, a negative fixed cost, a width grid out of order or a head table of the
    wrong length would be silently wrong (NaN costs kept every unit; an unsorted grid interpolated garbage), and a
    missing or mistyped key was a KeyError / TypeError. Negative attention / MLP entries stay allowed: timing noise
    gives them, and the table is held non-decreasing from 0 when read."""
    again = "measure it again with: optin-deploy lut --profile P --model M --out FILE"

    def bad(what: str) -> OptinError:
        return OptinError(f"latency table {what}; {again}")

    for key in ("profile", "shapes", "model"):
        if not isinstance(d[key], dict):
            raise bad(f"field {key!r} is {type(d[key]).__name__}, not an object")
    m = d["model"]
    L = m.get("num_layers")
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise bad(f"model.num_layers is {L!r}, not a positive number of layers")
    for key in ("heads", "neurons"):
        v = m.get(key)
        if not (isinstance(v, list) and len(v) == L and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)):
            raise bad(f"model.{key} is {v!r}, not {L} non-negative whole numbers (one per layer)")

    def check_group(where: str, g: dict, layers: list[int]) -> None:
        for key in ("attn_ms", "mlp_widths", "mlp_ms"):
            if not isinstance(g.get(key), list):
                raise bad(f"{where}{key} is {g.get(key)!r}, not a list")
        for key in ("attn_ms", "mlp_ms"):
            odd = [x for x in g[key] if not _is_ms(x)]
            if odd:
                raise bad(f"{where}{key} holds {odd[0]!r}: every entry must be a finite number of milliseconds")
        H = m["heads"][layers[0]]
        if len(g["attn_ms"]) != H + 1:
            raise bad(f"{where}attn_ms has {len(g['attn_ms'])} entries for a {H}-head layer (one per head count 0..{H})")
        w = g["mlp_widths"]
        if not (w and all(isinstance(x, int) and not isinstance(x, bool) for x in w) and w[0] == 0
                and all(a < b for a, b in zip(w, w[1:]))):
            raise bad(f"{where}mlp_widths is {w!r}, not increasing whole widths from 0")
        if len(g["mlp_ms"]) != len(w):
            raise bad(f"{where}mlp_ms has {len(g['mlp_ms'])} entries for {len(w)} mlp_widths")

    groups = d.get("groups")
    if groups is None:
        if len(set(m["heads"])) > 1:
            raise bad(f"has one attention table for layers of different head counts {m['heads']} (no groups)")
        check_group("", d, [0])
    else:
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise bad("field 'groups' is not a list of objects")
        covered = []
        for i, g in enumerate(groups):
            layers = g.get("layers")
            if not (isinstance(layers, list) and layers and all(isinstance(x, int) and 0 <= x < L for x in layers)):
                raise bad(f"groups[{i}].layers is {layers!r}, not layers of the {L}-layer model")
            covered += layers
            check_group(f"groups[{i}].", g, layers)
        if sorted(covered) != list(range(L)):
            raise bad(f"groups cover layers {sorted(covered)}, not each of the model's {L} layers once")
    for key in ("empty_model_ms", "dense_model_ms"):
        v = d.get(key)
        if key == "dense_model_ms" and v is None:
            continue
        if not (_is_ms(v) and v >= 0):
            raise bad(f"{key} is {v!r}: it must be a finite, non-negative number of milliseconds")
    if "scale" in d and not (_is_ms(d["scale"]) and d["scale"] > 0):
        raise bad(f"scale is {d['scale']!r}, not a positive finite number")
    for key in ("environment", "raw", "timing"):
        if key in d and not isinstance(d[key], dict):
            raise bad(f"field {key!r} is {type(d[key]).__name__}, not an object")


def warn_contradictions(table: LatencyTable, where: str) -> None:
    """One warning line when ``table`` (read from, or written to, ``where``) contradicts itself beyond timing noise:
    it is used held non-decreasing (each entry raised to the largest before it), which keeps every unit's cost at
    >= 0 and the selection sound, but the rows named were measured under another load than their neighbours."""
    rows = getattr(table, "contradicted", None)
    if not rows:
        return
    from .progress import warn

    shown = "; ".join(rows[:4]) + (f"; and {len(rows) - 4} more" if len(rows) > 4 else "")
    warn(f"latency table {where} contradicts itself beyond timing noise ({shown}): it is used held non-decreasing (each entry "
         f"at least every smaller one), so no unit costs negative time, but those rows are unreliable; measure it again on a "
         f"quiet machine (optin-deploy lut --rounds 15)")


def read_lut(path: str | os.PathLike) -> LatencyTable:
    p = Path(path)
    if not p.is_file():
        raise OptinError(f"latency table {p} does not exist; make one with: optin-deploy lut --profile P --model M --out {p}")
    try:
        d = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OptinError(f"latency table {p} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise OptinError(f"cannot read latency table {p}: {exc.strerror or exc}") from None
    try:
        table = LatencyTable.from_dict(d)
        warn_contradictions(table, str(p))
        return table
    except OptinError as exc:  # name the file
        msg = str(exc)
        raise OptinError(f"latency table {p}:{msg[len('latency table'):]}" if msg.startswith("latency table ") else f"{p}: {msg}") from None


def check_compatible(table: LatencyTable, model: nn.Module | None = None, target: Target | str | None = None) -> list[str]:
    """Reasons the table may not fit this model / target (each also issued as a warning)."""
    problems = []
    if target is not None:
        t = resolve_target(target)
        p = t.profile
        tp = table.profile
        if tp.get("name") != p.name:
            problems.append(f"latency table was measured for profile {tp.get('name')!r}, used with {p.name!r}")
        for key in ("runtime", "precision", "threads"):
            if tp.get(key) != getattr(p, key):
                problems.append(f"latency table {key} {tp.get(key)!r} differs from profile {p.name}'s {getattr(p, key)!r}")
        if table.shapes.get("batch") != t.batch:
            problems.append(f"latency table batch {table.shapes.get('batch')} differs from profile {p.name}'s {t.batch}")
        if table.shapes.get("seq_len") is not None and table.shapes.get("seq_len") != t.seq_len:
            problems.append(f"latency table sequence length {table.shapes.get('seq_len')} differs from profile {p.name}'s {t.seq_len}")
    if model is not None:
        from .adapters import get_adapter

        a = get_adapter(model)
        fam = table.model.get("family")
        if fam is not None and fam != a.family:
            problems.append(f"latency table was measured for a {fam} model, used with a {a.family} model (another graph: its "
                            f"latencies do not describe this one); measure one with optin-deploy lut --model for this model")
        if (table.shapes.get("image_size") is not None) != (a.modality == "image"):  # another graph altogether: refused
            raise OptinError(f"latency table was measured on {'text' if table.shapes.get('image_size') is None else 'images'} and "
                             f"this model takes {'images' if a.modality == 'image' else 'text'}; measure one for it with "
                             f"optin-deploy lut --model MODEL --profile P --out FILE")
        if a.num_layers != table.num_layers:
            raise OptinError(f"latency table is for a {table.num_layers}-layer model, this model has {a.num_layers} layers; measure one "
                             f"for it with optin-deploy lut --model MODEL --profile P --out FILE")
        if a.heads_per_layer() != list(table.model["heads"]) or a.neurons_per_layer() != list(table.model["neurons"]):
            problems.append("latency table was measured for other head counts / MLP widths than this model's "
                            f"({table.model['heads']} / {table.model['neurons']} vs {a.heads_per_layer()} / {a.neurons_per_layer()})")
        if a.hidden_size() != table.model.get("hidden_size"):
            problems.append(f"latency table hidden size {table.model.get('hidden_size')} differs from the model's {a.hidden_size()}")
        elif table.model.get("hidden_sizes") and table.model["hidden_sizes"] != [a.layer_hidden_size(l) for l in range(a.num_layers)]:
            problems.append(f"latency table per-layer hidden sizes {table.model['hidden_sizes']} differ from the model's")
    for msg in problems:
        warnings.warn(msg, LutMismatchWarning, stacklevel=3)
    return problems


def load_lut(path: str | os.PathLike | LatencyTable, model: nn.Module | None = None, target: Target | str | None = None):
    """A latency table file -> a :class:`~optin_deploy.core.costs.CostModel` in ms.

    With ``model`` / ``profile`` the table is checked against them: a different layer count is an
    error, other differences (profile, shapes, widths) are :class:`LutMismatchWarning`\\ s, also listed in
    ``cost_model.info["warnings"]``.
    """
    table = path if isinstance(path, LatencyTable) else read_lut(path)
    problems = check_compatible(table, model, target)
    if model is not None:
        from .adapters import get_adapter

        a = get_adapter(model)
        cm = table.cost_model(a.heads_per_layer(), a.neurons_per_layer())
    else:
        cm = table.cost_model()
    cm.info["warnings"] = problems
    return cm


def table_key(model: nn.Module, target: Target | str) -> str:
    """What a latency table depends on: the model's structure (not its weights), the profile's runtime,
    precision, threads and shapes, this CPU and the runtime's version."""
    import hashlib

    from .adapters import get_adapter

    t = resolve_target(target)
    p = t.profile
    a = get_adapter(model)
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        ort_version = None
    key = {"lut": LUT_VERSION, "model": type(model).__name__, "family": a.family, "heads": a.heads_per_layer(),
           "neurons": a.neurons_per_layer(), "hidden": [a.layer_hidden_size(l) for l in range(a.num_layers)],
           "head_dim": a.head_dim(), "runtime": p.runtime, "precision": p.precision, "threads": p.threads,
           "batch": t.batch, "seq_len": t.seq_len, "image_size": t.image_size, "cpu": cpu_name(), "ort": ort_version}
    if p.runtime == "openvino-cpu":
        try:
            import openvino

            key["openvino"] = openvino.__version__
        except ImportError:  # the measurement itself says how to install it
            pass
    from .runtimes.ort import CPU_FLUSH_DENORMALS

    if p.device == "cpu" and CPU_FLUSH_DENORMALS:  # tables timed with denormals kept are of another runtime setting
        key["flush_denormals"] = True
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]


def cached_lut(model: nn.Module, target: Target | str, *, progress: Callable[[str], None] | None = None,
               cache: bool = True) -> tuple[LatencyTable, Path | None, bool]:
    """The latency table of ``model`` on ``target`` from the cache (``$OPTIN_DEPLOY_CACHE/luts``), measured
    here and cached on a miss. Returns ``(table, cached file, measured_now)``."""
    from .core.score_cache import cache_root
    from .data.assets import cache_lock
    from .progress import warn

    target = resolve_target(target)
    path = cache_root() / "luts" / f"{table_key(model, target)}.json" if cache else None
    table = _cached_table(path)
    if table is not None:
        return table, path, False
    # two builds of one model at once measured the same table twice, each timing its models while the other competed
    # for the same cores: the second now waits for the first and reads its table
    waiting = f"waiting for another optin-deploy process measuring this latency table ({path.name})" if path else None
    with cache_lock(f"lut-{path.stem}", waiting, say=progress or (lambda s: None)) if path else contextlib.nullcontext():
        table = _cached_table(path)
        if table is not None:
            return table, path, False
        table = measure_lut(model, target, progress=progress)
        warn_contradictions(table, f"measured here (cached as {path})" if path else "measured here")
        if path is not None:
            try:
                table.save(path)
            except OSError as exc:  # an unusable cache costs a measurement next time, not this run's result
                warn(f"could not keep the latency table in the cache {cache_root()} ({exc.strerror or exc}); it is measured again "
                     f"next time (set OPTIN_DEPLOY_CACHE to a writable folder)")
                path = None
    return table, path, True


def _cached_table(path: Path | None) -> LatencyTable | None:
    """The cache entry ``path`` when it is there and sound; a damaged one is said in one warning line and removed."""
    from .errors import short_reason
    from .progress import warn

    if path is None or not path.is_file():
        return None
    try:
        return read_lut(path)
    except (OptinError, OSError) as exc:  # a damaged entry is said, discarded and measured again
        reason = short_reason(str(exc).removeprefix(f"latency table {path}: ").removeprefix(f"{path}: ").split("; ")[0], 160)
        warn(f"the cached latency table {path} is unusable ({reason}); it was discarded and is measured again")
        with contextlib.suppress(OSError):
            path.unlink()
    return None


# ------------------------------------------------------------------------------------- measuring


def mlp_grid(F: int, step: int | None = None, points: int = 12) -> list[int]:
    """Widths ``0, step, 2 step, ..., F`` (``step`` defaults to about F/points rounded to a multiple of 8)."""
    if step is None:
        step = max(1, F // points)
        if step >= 8:
            step = int(round(step / 8)) * 8
    step = max(1, int(step))
    widths = list(range(0, F, step)) + [F]
    return sorted(set(widths))


def measure_lut(model: nn.Module, target: Target | str, *, mlp_step: int | None = None, rounds: int = 7, iters: int = 5,
                warmup: int = 3, model_name: str | None = None, progress: Callable[[str], None] | None = None,
                workdir: str | os.PathLike | None = None, calibrate: bool = True) -> LatencyTable:
    """Measure the latency table of ``model`` (dense) on this machine with the target's runtime, threads
    and shapes (``target``: a :class:`~optin_deploy.target.Target`, or a profile name or file)."""
    from .adapters import get_adapter
    from .core.surgery import PrunePlan, apply_plan

    target = resolve_target(target)
    log = progress or (lambda s: None)
    model = model.eval()
    a = get_adapter(model)
    heads, neurons = a.heads_per_layer(), a.neurons_per_layer()
    L = a.num_layers
    inputs = example_inputs(model, target)
    B = int(next(iter(inputs.values())).shape[0])
    T = a.seq_len(inputs)
    d = a.hidden_size()
    sig = [(heads[l], neurons[l], a.layer_hidden_size(l), a.layer_head_dim(l), a.layer_tokens(l, T)) for l in range(L)]
    groups = [[l for l in range(L) if sig[l] == g] for g in dict.fromkeys(sig)]
    single = len(groups) == 1
    grid = {gi: mlp_grid(neurons[g[0]], mlp_step) for gi, g in enumerate(groups)}
    rt_probe = ort_runtime_for(target)  # fails early if the provider is missing
    t0 = time.perf_counter()
    runners: dict[str, Callable[[], Any]] = {}
    keep = []
    # Each entry is measured IN CONTEXT: the whole model with every layer of a group set to the same
    # head count (MLPs dense) or the same MLP width (heads dense), the other groups dense. Timing
    # single blocks as separate graphs adds per-call overheads the real model does not have and
    # mispredicts heavily pruned plans.
    configs: list[tuple[str, list[int], list[int]]] = []
    for gi, g in enumerate(groups):
        tag = "" if single else f"g{gi}_"
        H, F = heads[g[0]], neurons[g[0]]
        for h in range(H + 1):
            hs = [h if l in g else heads[l] for l in range(L)]
            configs.append((f"{tag}heads_{h}", hs, list(neurons)))
        for f in grid[gi]:
            if f < F:
                configs.append((f"{tag}width_{f}", list(heads), [f if l in g else neurons[l] for l in range(L)]))
    configs.append(("empty_model", [0] * L, [0] * L))
    dense_name = configs[len(range(heads[groups[0][0]] + 1)) - 1][0]  # the first group at full heads: the dense model
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        for i, (name, hs, fs) in enumerate(configs):
            what = f"{hs[0]} heads and MLP width {fs[0]} in every layer" if single else f"heads {hs} and MLP widths {fs}"
            log(f"export the model with {what} ({i + 1}/{len(configs)})")
            m = model if (hs, fs) == (heads, neurons) else apply_plan(model, PrunePlan([list(range(h)) for h in hs], [list(range(f)) for f in fs]))
            path = export_model(m, inputs, tmp / f"{name}.onnx", target)
            rt = ort_runtime_for(target).load(path)
            feed = _feed(rt, inputs)
            runners[name] = _call(rt, feed)
            keep.append(rt)
        log(f"timing {len(runners)} models, {rounds} interleaved rounds of {iters} runs")
        res = time_interleaved(runners, rounds=rounds, iters=iters, warmup=warmup)
        describe = keep[0].describe()
        del keep, runners
    ms = {k: v["median_ms"] for k, v in res.items()}
    dense_ms, empty_ms = ms[dense_name], ms["empty_model"]
    # additive model: T = empty + sum_l attn_g(l)(h_l) + sum_l mlp_g(l)(f_l), attn(0) = mlp(0) = 0
    tables = []
    for gi, g in enumerate(groups):
        tag = "" if single else f"g{gi}_"
        H, F = heads[g[0]], neurons[g[0]]
        full = {f"{tag}heads_{H}": ms[f"{tag}heads_{H}"]}
        width_ms = {f: (full[f"{tag}heads_{H}"] if f == F else ms[f"{tag}width_{f}"]) for f in grid[gi]}
        n = len(g)
        tables.append({"layers": g, "attn_raw": [(ms[f"{tag}heads_{h}"] - ms[f"{tag}heads_0"]) / n for h in range(H + 1)],
                       "mlp_widths": grid[gi], "mlp_raw": [(width_ms[f] - width_ms[0]) / n for f in grid[gi]]})
    dense_raw = sum(len(t["layers"]) * (t["attn_raw"][-1] + t["mlp_raw"][-1]) for t in tables)
    scale = 1.0
    if calibrate and dense_raw > 0 and dense_ms > empty_ms:
        scale = (dense_ms - empty_ms) / dense_raw  # residual non-additivity, spread over the table
    describe.pop("artifact", None)
    env = environment()
    env["runtime"] = describe
    first = tables[0]
    group_list = None if single else [{"layers": t["layers"], "attn_ms": [v * scale for v in t["attn_raw"]], "mlp_widths": t["mlp_widths"],
                                       "mlp_ms": [v * scale for v in t["mlp_raw"]]} for t in tables]
    return LatencyTable(
        profile=target.profile.to_dict(),
        shapes={"batch": B, "tokens": T, "seq_len": target.seq_len if a.modality == "text" else None,
                "image_size": int(next(iter(inputs.values())).shape[-1]) if a.modality == "image" else None},
        model={"name": model_name or type(model).__name__, "family": a.family, "num_layers": L, "heads": heads, "neurons": neurons,
               "hidden_size": d, "head_dim": a.head_dim(), "hidden_sizes": [a.layer_hidden_size(l) for l in range(L)]},
        attn_ms=[v * scale for v in first["attn_raw"]],
        mlp_widths=first["mlp_widths"],
        mlp_ms=[v * scale for v in first["mlp_raw"]],
        empty_model_ms=empty_ms,
        dense_model_ms=dense_ms,
        scale=scale,
        environment=env,
        raw={"ms": ms, "stats": res, "attn_ms_uncalibrated": first["attn_raw"], "mlp_ms_uncalibrated": first["mlp_raw"],
             "groups_uncalibrated": None if single else [{k: t[k] for k in ("layers", "attn_raw", "mlp_raw")} for t in tables],
             "dense_predicted_uncalibrated_ms": empty_ms + dense_raw, "method": "in-context: whole model, uniform per-layer counts"
             + ("" if single else " within each group of equal layers, the other groups dense")},
        timing={"rounds": rounds, "iters": iters, "warmup": warmup, "settle_seconds": DEFAULT_SETTLE_S, "statistic": "median", "interleaved": True,
                "seconds": round(time.perf_counter() - t0, 1), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")},
        groups=group_list,
    )


def write_lut(profile: Target | str, model_spec: str, out: str | os.PathLike, *, mlp_step: int | None = None, rounds: int = 7,
              iters: int = 5, force: bool = False, progress: Callable[[str], None] | None = None) -> tuple[LatencyTable, Path]:
    """``optin-deploy lut``: measure the latency table of the dense model ``model_spec`` (a zoo name, a
    folder, a hub name or timm:NAME) for ``profile`` on this machine and write it to ``out`` (replacing
    only a table this tool wrote unless ``force``). Bad input fails before the model is loaded."""
    from .safe_out import check_json_out, lut_is_ours

    target = resolve_target(profile)
    if rounds < 1 or iters < 1:
        raise OptinError("--rounds and --iters must be at least 1")
    if mlp_step is not None and mlp_step < 1:
        raise OptinError(f"--mlp-step must be at least 1, got {mlp_step}")
    profile_file = profile if isinstance(profile, (str, os.PathLike)) and str(profile).endswith(".toml") else None
    # like --json: a new file, a table this tool wrote, or (--force) another file; never the command's inputs, even with --force
    out = check_json_out(out, force=force, protect=[model_spec, profile_file], flag="--out", ours=lut_is_ours)
    ort_runtime_for(target)  # a missing provider fails before the model is loaded
    table = measure_lut(_load_dense(model_spec), target, mlp_step=mlp_step, rounds=rounds, iters=iters, model_name=model_spec,
                        progress=progress)
    table.save(out)
    warn_contradictions(table, f"{out} (measured here)")
    return table, out


def _load_dense(spec: str) -> nn.Module:
    """The dense model of a zoo name (its trained classifier), or of a folder / hub name / timm:NAME."""
    from . import zoo

    if spec in zoo.ZOO:
        task = zoo.get_task(spec)
        return getattr(task, "model", task)
    from .models import load_model

    return load_model(spec)
