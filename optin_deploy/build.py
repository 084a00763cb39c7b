"""``optin-deploy build``: prune, export, evaluate, benchmark, and write a deployment bundle.

The bundle is assembled in a temporary folder beside ``--out`` and moved into place only when it
is complete; any error leaves nothing behind. Layout::

    OUT/
      pruned/            weights (safetensors) + optin_structure.json + tokenizer
      onnx/dense/        model.onnx of the dense model (+ parity.json, export.json)
      onnx/pruned/       model.onnx of the pruned model (+ parity.json, export.json)
      tensorrt/          model.engine + bindings (TensorRT profiles, when TensorRT is present)
      report.json        the figures (schema: see REPORT_KEYS)
      report.md          the human report, with plots/*.png
      manifest.json      inputs, checksums, package versions, command line, profile, how to serve the deliverable (serving)
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .adapters import get_adapter
from .core.reconstruct import DEFAULT_DAMP, DEFAULT_FIT
from .pruning import REFIT_SAMPLES
from .data.assets import sha256_file
from .errors import OptinError, QualityGateError, short_reason
from .progress import console, step, warn
from .pruning import Scores
from .runtimes.base import AOTI_RUNTIMES
from .safe_out import check_out, raise_if_storage, staged_output, write_json
from .serving import EVAL_BATCH_SIZE, serving_spec
from .target import Target, resolve_target

SMALL_EVAL_SPLIT = 30  # an evaluation split smaller than this gets a warning: its figures move in steps of 100/n points
REPORT_KEYS = ("model", "task", "profile", "budget", "macs", "metric", "latency_ms", "throughput", "scoring_seconds", "artifacts")
# The task metric's block is stored under its own name (``report[report["metric"]]``): ``accuracy`` for
# classification, ``spearman`` for regression, ``cosine_to_dense`` for sentence embeddings; every value in
# it is in points (x 100) of that metric.
METRIC_UNITS = {"accuracy": "% of samples classified right", "spearman": "100 x Spearman rank correlation with the labels",
                "cosine_to_dense": "100 x mean cosine between the pruned and the dense embeddings of a text"}
from .profiles import DEFAULT_PROFILE  # noqa: E402,F401 (BuildOptions.profile default; re-exported)


@dataclass
class BuildOptions:
    model: str | None = None
    data: str | None = None
    profile: str = DEFAULT_PROFILE
    flops: float | None = None
    latency_ms: float | None = None
    speedup: float | None = None
    lut: str | None = None
    select_by: str | None = None  # "macs" | "latency": what a --flops fraction weighs units by (None: the profile's)
    out: Path = Path("optin-build")
    calib_samples: int = 128
    calib_length: int = 64
    scoring: str = "auto"
    scorer: str = "optin"
    probes: int = 64
    max_accuracy_drop: float | None = None
    min_cosine: float | None = None  # embedding models: quality gate on the mean cosine to the dense embeddings
    min_recall: float | None = None  # embedding models: quality gate on recall@10 agreement with the dense model
    task: str | None = None  # "embedding" forces a sentence-embedding model; None: from the model folder
    min_speedup: float | None = None
    search_samples: int = 0  # 0: sized by time (search.auto_subset_size)
    search_candidates: int = 5
    search_tol: float = 0.02
    search_rounds: int = 12
    search_range: tuple[float, float] = (0.1, 0.99)
    search_start: float | None = None
    search_reference: list[float] = field(default_factory=list)
    eval_split: str = "test"
    bench_iters: int = 100
    bench_warmup: int = 10
    bench_block: int = 10
    # the timed rounds also last at least this long (whole rounds): 100 runs of a 0.5 ms model are 50 ms of measurement
    bench_min_seconds: float = 1.0
    latency_rounds: int = 6
    seed: int = 0
    optimize: bool = False
    reconstruct: bool = True
    reconstruct_fit: str = DEFAULT_FIT
    reconstruct_damp: float = DEFAULT_DAMP
    refit_samples: int = REFIT_SAMPLES  # training samples the refit fits on (a superset of the scoring batch; 0, the default: that batch)
    baselines: bool = True
    quantization: str | None = None  # int8: dynamic | static | auto (None: the profile's)
    int8_max_drop: float | None = None  # int8: accuracy points allowed against the fp32 graph (None: the profile's)
    text_column: str = "text"
    label_column: str = "label"
    force: bool = False
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    # the --lut file as read (and checked) once by run_build: every stage uses this table, so that the file changed
    # during the build cannot give the selection one table and the checks or the target choice another
    lut_table: object = field(default=None, repr=False, compare=False)


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "optin-deploy": __version__, "platform": platform.platform()}
    for pkg in ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "timm", "tensorrt", "torch-tensorrt", "openvino", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def check_target_available(target: Target) -> None:
    """Fail before any expensive work when the target's runtime cannot run here."""
    from .runtimes.base import get_runtime

    profile = target.profile
    name = target.runtime_name
    if name.startswith("ort"):
        import onnxruntime as ort

        need = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider", "ort-tensorrt": "TensorrtExecutionProvider"}[name]
        if need not in ort.get_available_providers():
            from .errors import MissingRuntimeError

            raise MissingRuntimeError(
                f"profile {profile.name!r} runs on onnxruntime's {need}, which this onnxruntime lacks "
                f"(available: {', '.join(ort.get_available_providers())}); on a GPU host replace onnxruntime with onnxruntime-gpu, or pick a CPU profile"
            )
    elif name in ("tensorrt", "torch-tensorrt"):
        from .runtimes.base import import_tensorrt, import_torch_tensorrt, require_cuda

        require_cuda(f"profile {profile.name!r}")
        import_tensorrt() if name == "tensorrt" else import_torch_tensorrt()
    elif name in AOTI_RUNTIMES:
        from .exporters.aoti import check_compiler

        check_compiler()  # the package is compiled with the host's C++ compiler
    get_runtime(name, threads=profile.threads)


def _objective(opts: BuildOptions):
    from .search import Objective

    if opts.min_speedup is not None:
        return Objective("min_speedup", opts.min_speedup)
    return Objective("max_accuracy_drop", opts.max_accuracy_drop)


def search_settings(opts: BuildOptions):
    from .search import SearchSettings

    lo, hi = opts.search_range
    return SearchSettings(lo=lo, hi=hi, tol=opts.search_tol, max_candidates=opts.search_candidates, start=opts.search_start,
                          samples=opts.search_samples, rounds=opts.search_rounds, reference=list(opts.search_reference))


def check_select_by(select_by: str | None) -> None:
    if select_by is not None and select_by not in ("macs", "latency"):
        raise OptinError(f"--select-by must be macs or latency, got {select_by!r}")


def select_by_of(opts: BuildOptions, profile) -> str:
    """What a --flops fraction weighs units by: --select-by, else the profile's ``budget.select_by``, else MACs."""
    return opts.select_by or getattr(profile, "budget_select_by", None) or "macs"


def _budget(opts: BuildOptions, target: Target) -> dict:
    """The budget the options (or the profile's default) ask for: ``{"flops": F}``, ``{"latency_ms": X}``,
    ``{"speedup": S}`` or ``{"search": objective}``; checked before any work. The report records it
    with the sequence length its MACs / latencies are counted at (``budget.seq_len``)."""
    check_select_by(opts.select_by)
    budget = _asked_budget(opts, target.profile)
    if opts.lut is not None and "flops" in budget and select_by_of(opts, target.profile) == "macs":
        where = "" if opts.select_by else f" (profile {target.profile.name} selects by MACs)"
        raise OptinError(f"--lut is a latency table: a --flops budget{where} uses it only with --select-by latency; "
                         f"pass --select-by latency, or drop --lut")
    return budget


def _asked_budget(opts: BuildOptions, profile) -> dict:
    """The budget the options ask for, else the profile's default (see :func:`_budget`)."""
    given = [n for n, v in (("--flops", opts.flops), ("--latency-ms", opts.latency_ms), ("--speedup", opts.speedup)) if v is not None]
    if len(given) > 1:
        raise OptinError(f"pass only one budget: {' or '.join(given)}" if "--speedup" in given else "pass either --flops or --latency-ms, not both")
    if opts.speedup is not None:
        if not (math.isfinite(opts.speedup) and opts.speedup > 1.0):  # inf failed after measuring, naming --latency-ms
            raise OptinError(f"--speedup must be more than 1 (times faster than the dense model) and finite, got {opts.speedup}")
        if opts.min_speedup is not None:
            raise OptinError("--min-speedup searches the budget itself: drop --speedup (or drop --min-speedup)")
        return {"speedup": opts.speedup}
    if opts.min_speedup is not None:
        if opts.flops is not None or opts.latency_ms is not None:
            raise OptinError("--min-speedup searches the budget itself: drop --flops / --latency-ms (or drop --min-speedup)")
        if opts.max_accuracy_drop is not None:
            raise OptinError("pass either --max-accuracy-drop or --min-speedup without a budget (the search optimises one under the other), not both")
    if opts.flops is None and opts.latency_ms is None and (opts.max_accuracy_drop is not None or opts.min_speedup is not None):
        obj = _objective(opts)  # checks the limit
        search_settings(opts).check()
        return {"search": obj.to_dict()}
    if opts.latency_ms is not None:
        if not (math.isfinite(opts.latency_ms) and opts.latency_ms > 0):
            raise OptinError(f"--latency-ms must be a positive, finite number of milliseconds, got {opts.latency_ms}")
        return {"latency_ms": opts.latency_ms}
    if opts.flops is not None:
        from .pruning import check_budget

        check_budget(opts.flops)
        return {"flops": opts.flops}
    if profile.budget_latency_ms is not None:
        return {"latency_ms": profile.budget_latency_ms}
    return {"flops": profile.budget_flops if profile.budget_flops is not None else 0.6}


def _bench_inputs(task, target: Target) -> dict[str, np.ndarray]:
    """The task's real samples at the target's benchmark shape (:meth:`Target.example_inputs`), as numpy."""
    return {k: v.numpy() for k, v in target.example_inputs(task.model, task).items()}


def given_lut(opts):
    """The ``--lut`` table of a build (None without one): the one :func:`run_build` read, else read now."""
    if getattr(opts, "lut", None) is None:
        return None
    if getattr(opts, "lut_table", None) is None:
        from .lut import read_lut

        opts.lut_table = read_lut(opts.lut)
    return opts.lut_table


def run_build(opts: BuildOptions) -> dict:
    """Run the whole pipeline; returns the report. Raises OptinError on bad input (nothing written)."""
    from .pruning import check_reconstruct, check_refit_samples, check_seed, warn_unused_refit

    t_start = time.perf_counter()
    target = resolve_target(opts.profile)  # the one place the profile is read
    budget = _budget(opts, target)
    opts.lut_table = None
    if opts.lut is not None:  # a missing, damaged or edited table is refused before the model loads (it was after scoring)
        from .lut import read_lut

        opts.lut_table = read_lut(opts.lut)  # read once: the stages below use this table, never the file again
    if opts.calib_samples < 1:
        raise OptinError(f"--calib-samples must be at least 1, got {opts.calib_samples}")
    if opts.max_accuracy_drop is not None and opts.max_accuracy_drop < 0:
        raise OptinError(f"--max-accuracy-drop must be >= 0 points, got {opts.max_accuracy_drop}")
    for flag, v in (("--min-cosine", opts.min_cosine), ("--min-recall", opts.min_recall)):
        if v is not None and not (0.0 <= v <= 1.0):
            raise OptinError(f"{flag} must be in [0, 1], got {v}")
    if opts.task is not None:
        from .models import TASKS

        if opts.task not in TASKS:
            raise OptinError(f"unknown --task {opts.task!r}; choose one of {', '.join(TASKS)}")
    if opts.reconstruct:
        check_reconstruct(opts.reconstruct_fit, opts.reconstruct_damp)
        check_refit_samples(opts.refit_samples)
    warn_unused_refit(opts.reconstruct, opts.reconstruct_fit, opts.reconstruct_damp, opts.refit_samples)
    if opts.probes < 1:
        raise OptinError(f"--probes must be at least 1, got {opts.probes}")
    if opts.bench_iters < 1:
        raise OptinError(f"--bench-iters must be at least 1, got {opts.bench_iters}")
    if opts.bench_block < 1:  # the benchmark would refuse it only after scoring
        raise OptinError(f"--bench-block must be at least 1 run, got {opts.bench_block}")
    if opts.bench_warmup < 0:
        raise OptinError(f"--bench-warmup must be at least 0, got {opts.bench_warmup}")
    if opts.calib_length < 1:
        raise OptinError(f"--calib-length must be at least 1, got {opts.calib_length}")
    check_seed(opts.seed)
    if opts.search_start is not None:
        start, (lo, hi) = opts.search_start, opts.search_range
        if not (math.isfinite(start) and 0 < start <= 1):  # refused like --search-reference, not clamped and misrecorded
            raise OptinError(f"--search-start takes a fraction of the dense MACs in (0, 1] such as 0.6, got {start}")
        if not lo <= start <= hi:
            raise OptinError(f"--search-start {start} is outside the search range {lo}:{hi}; pass a start within it (or widen --search-range)")
    from .int8 import check_quantization_options

    errors = []
    for t in target.choices or (target,):  # a choosing profile: one candidate the options apply to is enough (the others are skipped)
        try:
            check_quantization_options(opts.quantization, opts.int8_max_drop, t)
            break
        except OptinError as exc:
            errors.append(exc)
    else:
        raise errors[0]
    out = check_out(opts.out, force=opts.force, protect=[opts.model, opts.data, opts.lut])
    with staged_output(out, kind="bundle", checked=True, log=step) as staging:
        if target.choices:
            from .choose import check_any_available

            check_any_available(target)
        else:
            check_target_available(target)
        report = _build_into(staging, opts, target, budget)
        report["build_seconds"] = round(time.perf_counter() - t_start, 1)
        _write_reports(staging, report, opts, target)
    report["bundle"] = str(out)
    return report


def _spec(spec: str | None) -> str | None:
    """A model spec as recorded in a bundle: an existing local path made absolute (it lies outside
    the bundle), anything else (a zoo or hub name) as it is."""
    if not spec:
        return spec
    p = Path(str(spec)).expanduser()
    return str(p.resolve()) if not str(spec).startswith("timm:") and p.exists() else str(spec)


def _relative_to(obj, root: Path):
    """``obj`` with every path string inside ``root`` written relative to it."""
    if isinstance(obj, dict):
        return {k: _relative_to(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_relative_to(v, root) for v in obj]
    if isinstance(obj, str) and obj.startswith(str(root) + os.sep):
        return os.path.relpath(obj, root)
    return obj


@dataclass
class BuildContext:
    """What every stage of a build shares once the task is loaded and scored: the dense model, the
    calibration batch, the scores, the target profile and its benchmark inputs. The budget search
    (:mod:`optin_deploy.search`) prunes, exports and measures its candidates through the same methods."""

    opts: BuildOptions
    target: Target
    task: object
    model: torch.nn.Module
    calib: dict
    scores: Scores
    bench_np: dict
    seq: int
    sel_kwargs: dict
    eval_len: int | None
    calib_len: int | None
    teacher_cache: dict = field(default_factory=dict)  # the dense model's reconstruction captures on the calibration batch, shared by every candidate
    _costs: object = None  # the selection's cost model, made once (a latency table may be measured for it)
    cost_info: dict = field(default_factory=dict)  # how fractions are weighed, recorded in the report
    # the dense model's export for this target when already made (a choosing profile measured it; the bundle's
    # ``<format>/dense``): the later stages take it instead of exporting again
    dense_export: dict | None = None
    refit: dict | None = None  # the refit's calibration batch (pruning.refit_batch; None: the scoring batch)

    @property
    def refit_batch(self) -> dict:
        return self.calib if self.refit is None else self.refit

    @property
    def select_by(self) -> str:
        return select_by_of(self.opts, self.profile)

    def selection_costs(self):
        """The cost model a fraction budget is taken of: the dense MACs at the benchmark length, or (``select_by =
        latency``) the latency table of this model on the profile's runtime and precision (``--lut``, else cached,
        else measured here once). A fraction ``f`` keeps ``fixed + f * (dense - fixed)``: what pruning cannot
        remove (embeddings, norms, the runtime's fixed work) is not part of the fraction."""
        if self._costs is not None:
            return self._costs
        from .core.costs import mac_cost_model

        table, failed = None, None
        if self.select_by == "latency":
            from .lut import cached_lut

            if self.opts.lut:
                table, path, measured = given_lut(self.opts), Path(self.opts.lut), False
            else:
                step(f"latency-aware selection: looking up the latency table of this model on {self.profile.name} "
                     f"({self.profile.precision}, batch {self.target.batch}); measured once and cached")
                try:
                    table, path, measured = cached_lut(self.model, self.target, progress=step)
                except (OptinError, RuntimeError, ValueError) as exc:  # the family's graph cannot be timed per width here
                    if self.opts.select_by == "latency":
                        raise
                    failed = short_reason(exc, 300)
                    step(f"could not measure a latency table ({failed[:200]}); weighing units by their MACs instead")
        if table is not None:
            from .lut import load_lut

            costs = load_lut(table, self.model, self.target)
            if costs.dense() - costs.fixed > 0.01 * costs.dense():
                self._costs = costs
                self.cost_info = {"select_by": "latency", "table": str(path) if path else None, "measured_now": measured,
                                  "table_dense_ms": round(costs.dense(), 4), "table_fixed_ms": round(costs.fixed, 4),
                                  "table_seconds": table.timing.get("seconds")}
                return self._costs
            # nothing measurable to prune: a fraction of it would be meaningless
            failed = f"the latency table measured no time that pruning removes (dense {costs.dense():.3g} ms, fixed {costs.fixed:.3g} ms)"
            step(f"{failed}; weighing units by their MACs instead")
        self._costs = mac_cost_model(self.model, self.seq)
        self.cost_info = {"select_by": "macs", "seq_len": self.seq, **({"latency_table_failed": failed[:300]} if failed else {})}
        return self._costs

    def fraction_budget(self, fraction: float) -> float:
        costs = self.selection_costs()
        if costs.unit == "ms":
            return costs.fixed + fraction * (costs.dense() - costs.fixed)
        return fraction * costs.dense()

    @property
    def profile(self):
        return self.target.profile

    @property
    def embedding(self) -> bool:
        """A sentence-embedding model (no labels; quality is measured against the dense embeddings)."""
        return self.task.data.task_type == "embedding"

    @property
    def fmt(self) -> str:
        name = self.target.runtime_name
        return "tensorrt" if name in ("tensorrt", "torch-tensorrt") else "aoti" if name in AOTI_RUNTIMES else "onnx"

    def example(self) -> dict:
        return {k: torch.from_numpy(v) for k, v in self.bench_np.items()}

    def prune_fraction(self, fraction: float, scores: Scores | None = None, *, reconstruct_units: bool = True):
        """Select under ``fraction`` of the dense cost (MACs, or measured latency: :meth:`selection_costs`; with
        ``scores``, default the build's), slice, and reconstruct the kept units when the build does (``--reconstruct``). Returns the
        :class:`~optin_deploy.pruning.PruneResult`."""
        from .pruning import prune

        costs = self.selection_costs()
        o = self.opts
        return prune(self.model, self.calib, costs=costs, budget=self.fraction_budget(fraction), scores=scores or self.scores,
                     reconstruct=bool(o.reconstruct and reconstruct_units), fit=o.reconstruct_fit, damp=o.reconstruct_damp,
                     teacher_cache=self.teacher_cache, refit_calib=self.refit_batch, **self.sel_kwargs)

    def shape(self):
        """The exported graph's shape range: the profile's, within the model's usable positions."""
        return self.target.shape(self.model)

    @property
    def quantization(self) -> str:
        """int8: how the deliverable is quantised (``--quantization``, else the profile's): dynamic, static or auto."""
        return self.opts.quantization or self.profile.quantization

    @property
    def int8_max_drop(self) -> float | None:
        return self.opts.int8_max_drop if self.opts.int8_max_drop is not None else self.profile.int8_max_drop

    @property
    def precision(self) -> str:
        """What the deliverable runs in: the profile's precision (ONNX: fp32 or int8; fp16/bf16 are TensorRT's and CUDA AOTInductor packages')."""
        p = self.target.precision
        return p if self.fmt != "onnx" or p == "int8" else "fp32"

    def export(self, m: torch.nn.Module, folder: Path, label: str = "pruned", *, precision: str | None = None, graph: str = "auto",
               optimize: bool | None = None, quantization: str | None = None, parity: bool = True) -> dict:
        """Export ``m`` for the profile's runtime into ``folder`` (parity-checked); returns the export manifest.
        ``precision`` / ``graph`` override the profile's (the dense alternatives); ``parity=False`` defers the
        parity checks to :meth:`check_parity` (see :attr:`can_defer_parity`)."""
        from .exporters.export_folder import export_to_folder, staging_root

        fmt = self.fmt
        precision = precision or self.precision
        root = staging_root(Path(folder).resolve())
        # a dense export (the dense model, its alternatives, a candidate profile's) comes from the user's model; a
        # pruned one from the bundle's pruned/ folder (recorded relative)
        source = _spec(self.task.model_source) or None
        if not label.startswith("dense") and root != Path(folder).resolve():
            source = root / "pruned"
        backend = "torch-tensorrt" if self.target.runtime_name == "torch-tensorrt" else "tensorrt"
        step(f"exporting the {label} model ({fmt}, {precision}{'' if graph == 'auto' else ', ' + graph + ' graph'})"
             + (" and checking parity against PyTorch" if parity else "; parity is checked if it is chosen"))
        settled = precision == "int8" and quantization is None and self.int8_settles
        try:
            return export_to_folder(m, self.example(), folder, fmt=fmt, backend=backend, precision=precision, graph=graph,
                                    profile=self.shape(), optimize=self.opts.optimize if optimize is None else optimize, task=self.task, threads=self.target.threads,
                                    source=source, quantization=quantization or ("static" if self.quantization == "static" else "dynamic"), calibration=self.calib,
                                    parity=parity, device="cuda" if self.target.runtime_name == "torch-aoti-cuda" else "cpu",
                                    int8_parity_fatal=not settled)
        except OptinError as exc:
            raise (self._int8_hint(exc, precision) if quantization is None else exc) from None  # the deliverable's own int8, not a baseline's

    @property
    def int8_settles(self) -> bool:
        """Whether the deliverable's int8 graphs are settled against their fp32 graphs after export (``--quantization auto`` or
        an int8 tolerance, :mod:`optin_deploy.int8`): the exported int8 graph's parity is then recorded, not fatal, since
        leaving nodes in fp32 is what repairs an int8 graph that lost too much."""
        from .int8 import wants_settling

        return self.fmt == "onnx" and self.precision == "int8" and wants_settling(self.quantization, self.int8_max_drop)

    def _int8_hint(self, exc: OptinError, precision: str) -> OptinError:
        """An int8 graph that failed its parity check: say what to do (it was refused, not shipped)."""
        msg = str(exc)
        if precision != "int8" or not msg.startswith("parity check failed for int8"):
            return exc
        return OptinError(f"{msg.rstrip('.')}: int8 loses too much on this model; pass --int8-max-drop POINTS to leave the layers that need it "
                          f"in fp32, or build in fp32 (--profile x86-cpu-ort-fp32)")

    @property
    def can_defer_parity(self) -> bool:
        """Whether :meth:`export` can leave the parity checks for later (ONNX exports without ``--optimize``)."""
        return self.fmt == "onnx" and not self.opts.optimize

    def check_parity(self, m: torch.nn.Module, folder: Path, manifest: dict) -> dict:
        """Run the parity checks an ``export(..., parity=False)`` of ``m`` into ``folder`` left out."""
        from .exporters.export_folder import check_deferred_parity

        step("checking the parity of the chosen model's export against PyTorch")
        int8 = manifest.get("precision") == "int8"
        try:
            return check_deferred_parity(m, self.example(), folder, manifest, profile=self.shape(), task=self.task, threads=self.target.threads,
                                         int8_parity_fatal=not (int8 and self.int8_settles))
        except OptinError as exc:
            raise self._int8_hint(exc, "int8" if int8 else "fp32") from None

    def runtime_name(self, export: dict) -> str:
        return export["runtime"] if self.fmt != "onnx" else self.target.runtime_name

    def runtime(self, export: dict):
        """A fresh, not yet loaded runtime for an export, and the artifact to load."""
        from .runtimes.base import get_runtime

        return get_runtime(export.get("run_on") or self.runtime_name(export), threads=self.target.threads), export["artifact"]


def load_context(opts: BuildOptions, target: Target, scorer: str | None = None, need_labels: str | None = None) -> BuildContext:
    """Load the task and the dense model, draw the calibration batch, score (cached when possible). ``need_labels``: the
    command (``sweep``) that measures validation accuracy, so that an embedding model is refused before scoring."""
    from .core.scoring import ScoreSettings
    from .pruning import compute_scores
    from .zoo import load_task

    step(f"loading task (model {opts.model or 'default: minilm-sentiment'}, data {opts.data or 'its own'})")
    task = load_task(opts.model, opts.data, max_length=None, text_column=opts.text_column, label_column=opts.label_column, seed=opts.seed,
                     task=opts.task)
    if task.data.task_type != "embedding":
        task.data.require_labels(opts.eval_split)  # evaluation needs labels: fail now, not after the pipeline ran
    model = task.model.eval()
    embedding = task.data.task_type == "embedding"
    if embedding and need_labels:
        raise OptinError(f"{need_labels} measures validation accuracy, which a sentence-embedding model has none of; build it at "
                         f"fixed budgets instead (build --flops F --min-cosine C) and compare their cosine to dense")
    _check_task_options(opts, embedding)
    if embedding:
        from .embedding_eval import check_corpus

        check_corpus(task, opts.eval_split)  # recall@10 needs 11 distinct held-out texts: refused now, not after the pruning
        step(f"sentence-embedding model: {model.pooling.describe()}; output sentence_embedding")
    adapter = get_adapter(model)
    calib_len = opts.calib_length if task.modality == "text" else None
    eval_len = task.max_length
    if calib_len is not None:
        task.max_length = calib_len
    calib = task.calibration(opts.calib_samples, seed=opts.seed)
    refit = None
    if opts.reconstruct:
        from .pruning import refit_batch

        refit = refit_batch(task, model, calib, opts.refit_samples, opts.seed)
        refit = None if refit is calib else refit
    task.max_length = eval_len
    bench_np = _bench_inputs(task, target)
    seq = adapter.seq_len({k: torch.from_numpy(v) for k, v in bench_np.items()})
    from .pruning import warn_unreachable_units

    warn_unreachable_units(model, target.selection_kwargs.get("head_multiple", 1), target.selection_kwargs.get("neuron_multiple", 1), target.name)
    if opts.flops is not None:  # a budget that keeps nothing is refused before scoring
        from .core.costs import mac_cost_model
        from .pruning import check_keeps_something

        mc, kw = mac_cost_model(model, seq), target.selection_kwargs
        check_keeps_something(mc, opts.flops * mc.dense(), f"--flops {opts.flops}", kw.get("head_multiple", 1), kw.get("neuron_multiple", 1))
    if getattr(opts, "lut", None):  # a table of another layer count or modality, or a target under its floor: before scoring
        from .latency_budget import check_table_up_front

        check_table_up_front(given_lut(opts), model, target, opts.latency_ms)
    scores = compute_scores(model, calib, scoring=opts.scoring, scorer=scorer or opts.scorer, settings=ScoreSettings(seed=opts.seed), probes=opts.probes)
    return BuildContext(opts, target, task, model, calib, scores, bench_np, seq, target.selection_kwargs, eval_len, calib_len, refit=refit)


# ------------------------------------------------------------------------------------------ stages
# A build is load task + score (load_context) -> choose the target when the profile lists candidates
# (choose.choose_stage) -> select, slice and reconstruct (select_stage) -> save
# (save_stage) -> export (export_stage) -> validate (validate_stage) -> benchmark (benchmark_stage) ->
# report and bundle (assemble_report, _write_reports). Each stage takes the BuildContext and the
# typed outputs of the stages before it.


@dataclass
class Selected:
    """Select, slice and reconstruct: the pruned model and how it was chosen."""

    model: torch.nn.Module
    selection_cost: float  # in the cost model's unit (MACs, or ms of a latency table)
    notes: list[str]
    reconstruction: dict | None  # the reconstruction report (None: plain surgery)
    latency_budget: dict | None = None  # the closed-loop latency selection's rounds (--latency-ms / --speedup)
    search: object = None  # the budget search's result (--max-accuracy-drop / --min-speedup without a budget)

    def to_dict(self) -> dict:
        a = get_adapter(self.model)
        return {"heads": a.heads_per_layer(), "neurons": a.neurons_per_layer(), "selection_cost": self.selection_cost, "notes": self.notes,
                "reconstruction": self.reconstruction, "latency_budget": self.latency_budget,
                "search": self.search.to_dict() if self.search is not None else None}


@dataclass
class Exported:
    """Export: one parity-checked export manifest per label (dense, pruned, dense alternatives)."""

    exports: dict[str, dict]
    runtime: str  # what the deliverable runs on
    precision: str
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return list(self.exports)

    def to_dict(self) -> dict:
        return {"runtime": self.runtime, "precision": self.precision, "parity": {l: e["parity"] for l, e in self.exports.items()},
                "graph": {l: e.get("graph") for l, e in self.exports.items()}, "notes": self.notes}


@dataclass
class Validated:
    """Validate: the task metric of every export through its runtime (embeddings: cosine and recall@10 to dense)."""

    evaluation: dict  # evaluate()'s result (models -> metrics)
    metric: str  # accuracy | spearman | cosine_to_dense (the report key it is stored under: METRIC_UNITS)
    dense: float  # in points (x100)
    pruned: float
    agreement: float  # pruned vs dense, a fraction
    embedding: dict | None = None

    def to_dict(self) -> dict:
        return {"metric": self.metric, "dense": self.dense, "pruned": self.pruned, "agreement": self.agreement, "embedding": self.embedding}


@dataclass
class Benchmarked:
    """Benchmark: every export timed on the target runtime in interleaved blocks."""

    bench: dict
    batch: int

    def p50(self, label: str) -> float:
        return self.bench["models"][label]["p50_ms"]

    def to_dict(self) -> dict:
        return self.bench


def select_stage(ctx: BuildContext, staging: Path, budget: dict) -> Selected:
    """Select under the budget (a MAC / latency-table fraction, a closed-loop latency target, or the
    budget search), slice the model, and reconstruct the kept units when the build does (``--reconstruct``)."""
    from .pruning import print_layer_table, reconstruct_kept_units, report_emptied

    opts, target, model, scores = ctx.opts, ctx.target, ctx.model, ctx.scores
    profile = target.profile
    if "search" in budget:
        from .search import search_build

        search = search_build(ctx, staging, _objective(opts), search_settings(opts))
        selected = Selected(search.model, search.selection_cost, list(scores.notes), search.reconstruction, search=search)
    elif "flops" in budget:
        result = ctx.prune_fraction(budget["flops"], reconstruct_units=False)
        sel_cost = result.selection.cost
        if ctx.cost_info.get("select_by") == "latency":
            ctx.cost_info["predicted_ms"] = round(sel_cost, 4)
            ctx.cost_info["predicted_speedup"] = round(result.selection.dense_cost / sel_cost, 3)
            step(f"latency-aware selection: the table predicts {sel_cost:.2f} ms for the pruned model against "
                 f"{result.selection.dense_cost:.2f} ms dense (x{result.selection.dense_cost / sel_cost:.2f})")
        selected = Selected(result.model, sel_cost, list(result.notes), None)
    else:
        from .latency_budget import select_for_latency
        from .lut import load_lut, make_measure_fn, make_relative_measure_fn, measure_lut

        lut = given_lut(opts)
        if lut is None:
            step(f"no --lut given: measuring a latency table on this machine for profile {profile.name} ({profile.precision})")
            lut = measure_lut(model, target)
            (staging / "lut.json").write_text(json.dumps(lut.to_dict(), indent=1))
        inputs_t = ctx.example()
        if "speedup" in budget:
            ref_ms = load_lut(lut, model, target).dense()  # the table's own prediction for the dense model
            target_ms = ref_ms / budget["speedup"]
            measure = make_relative_measure_fn(target, model, inputs_t, reference_ms=ref_ms)
            step(f"selecting for x{budget['speedup']:g} against the dense model, timed beside it in every round "
                 f"({target_ms:.2f} ms of the table's {ref_ms:.2f} ms; up to {opts.latency_rounds} measured rounds)")
        else:
            target_ms = budget["latency_ms"]
            measure = make_measure_fn(target, inputs_t)
            step(f"selecting for {target_ms} ms on {profile.name} (up to {opts.latency_rounds} measured rounds)")
        advice = ("lower --speedup" if "speedup" in budget else "raise --latency-ms" if opts.latency_ms is not None
                  else f"raise budget.latency_ms in profile {profile.name}, or pass --latency-ms")
        ls = select_for_latency(model, (scores.heads, scores.neurons), target, lut, target_ms, measure, opts.latency_rounds, progress=step,
                                advice=advice)
        latency_info = ls.to_dict()
        latency_info.pop("plan", None)
        if "speedup" in budget:
            latency_info["relative"] = {"speedup_target": budget["speedup"], "reference_ms": ref_ms, "history": list(measure.history),
                                        "measured_speedup": ref_ms / ls.measured_ms}
        selected = Selected(ls.model.eval(), ls.predicted_ms, list(scores.notes), None, latency_budget=latency_info)
    if selected.search is None and opts.reconstruct:
        selected.reconstruction = reconstruct_kept_units(model, selected.model, ctx.refit_batch, opts.reconstruct_fit, opts.reconstruct_damp)
    print_layer_table(model, selected.model)
    report_emptied(model, selected.model)
    return selected


def save_stage(ctx: BuildContext, selected: Selected, staging: Path) -> Path:
    """Save the pruned model (weights, structure, tokenizer, the task it is evaluated on) into ``staging/pruned``."""
    from .pruned_io import save_pruned, task_hint

    opts, task = ctx.opts, ctx.task
    step("saving the pruned model")
    save_pruned(selected.model, staging / "pruned", extra={"source": _spec(task.model_source or opts.model), "source_dir": task.model_source,
                                                           "task": task.data.name, "max_length": ctx.eval_len, "label_names": task.data.label_names},
                task_hint=task_hint(task, opts.data, opts.text_column, opts.label_column, ctx.eval_len), tokenizer=task.tokenizer)
    return staging / "pruned"


def export_stage(ctx: BuildContext, selected: Selected, staging: Path) -> Exported:
    """Export the dense and the pruned model for the target (parity-checked), and the dense
    alternatives a deployment engineer would otherwise ship (classifiers on onnxruntime CPU)."""
    opts, model, search = ctx.opts, ctx.model, selected.search
    exports: dict[str, dict] = {}
    fmt = ctx.fmt
    if search is not None:
        exports["dense"] = search.dense_export  # exported once, at the start of the search
        exports["pruned"] = search.pruned_export  # the chosen candidate's export, measured during the search
    elif ctx.dense_export is not None:
        exports["dense"] = ctx.dense_export  # exported (and parity-checked) while the target was chosen
    for label, m in (("dense", model), ("pruned", selected.model)):
        if label not in exports:
            exports[label] = ctx.export(m, staging / fmt / label, label)
    precision = ctx.precision
    if precision == "int8" and fmt == "onnx":
        from .int8 import settle_int8, wants_settling

        if wants_settling(ctx.quantization, ctx.int8_max_drop):  # auto, or an accuracy tolerance: each model against its fp32 graph
            from .int8 import ValidationMetric

            metric = None if ctx.embedding else ValidationMetric(ctx, opts.search_samples)
            for label, m in (("dense", model), ("pruned", selected.model)):
                exports[label] = settle_int8(ctx, exports[label], m, label, ctx.quantization, ctx.int8_max_drop, metric)
    rt_name = ctx.runtime_name(exports["pruned"])
    if fmt == "onnx" and rt_name != exports["pruned"].get("runtime"):
        # the ONNX file runs on another runtime than onnxruntime (OpenVINO bf16): export.json says so, so that
        # `optin-deploy bench / eval OUT/onnx/dense OUT/onnx/pruned` time and evaluate the bundle the way it was built
        from .exporters.export_folder import write_export_files

        for label in ("dense", "pruned"):
            exports[label] = {**exports[label], "runtime": rt_name}
            write_export_files(Path(exports[label]["artifact"]).parent, exports[label])
    notes: list[str] = []
    if not ctx.embedding and opts.baselines and fmt == "onnx" and rt_name in CPU_RUNTIMES:
        # on an OpenVINO profile every onnxruntime way is another runtime: none of them is the dense model's own way
        # the dense model's own precision (an int8 tolerance may have left every node of it in fp32)
        alternatives = dense_alternatives(exports["dense"], exports["dense"].get("precision", precision) if rt_name == "ort-cpu" else None)
        for label, graph, prec in alternatives:
            try:
                exports[label] = ctx.export(model, staging / "baselines" / label, f"dense alternative {label}", precision=prec, graph=graph, optimize=False,
                                            quantization="dynamic" if prec == "int8" else None)
            except OptinError as exc:
                raise_if_storage(exc, str(staging / "baselines" / label))  # skipped for the model, never for the free space
                notes.append(f"dense alternative {label} skipped: {exc}")
                continue
            if rt_name != "ort-cpu":
                exports[label] = {**exports[label], "run_on": "ort-cpu"}
        if rt_name != "ort-cpu" and any(prec == "int8" for _, _, prec in alternatives):
            # the deliverable quantised for onnxruntime int8 too: what the pruned model gives on the runtime an OpenVINO
            # profile was chosen over (the default x86-cpu's runner-up on an AMX host)
            try:
                exports["pruned-fused-int8"] = {**ctx.export(selected.model, staging / "baselines" / "pruned-fused-int8", "pruned, for onnxruntime int8",
                                                             precision="int8", graph="fused", optimize=False, quantization="dynamic"),
                                                "run_on": "ort-cpu"}
            except OptinError as exc:
                raise_if_storage(exc, str(staging / "baselines" / "pruned-fused-int8"))
                notes.append(f"pruned-fused-int8 skipped: {exc}")
        # the dense model and the deliverable on OpenVINO, when installed (but not the way the deliverable already runs)
        exports.update(openvino_alternatives(exports, notes, own=rt_name))
    if precision == "int8" and fmt == "onnx":  # what the deliverable computes in: fp32 when an int8 tolerance left every node in fp32
        precision = exports["pruned"].get("precision", precision)
    return Exported(exports, rt_name, precision, notes)


def validate_stage(ctx: BuildContext, exported: Exported) -> Validated:
    """The task metric of every export through the target runtime, on ``--eval-split``."""
    from .evaluate import evaluate, headline_metric

    opts, task = ctx.opts, ctx.task
    labels = exported.labels
    runtimes = {label: ctx.runtime(exported.exports[label]) for label in labels}
    step(f"evaluating {', '.join(labels)} on the {opts.eval_split} split through {exported.runtime}")
    if ctx.embedding:
        from .embedding_eval import embedding_summary, evaluate_embeddings

        ev = evaluate_embeddings(task, runtimes, split=opts.eval_split, baseline="dense", batch_size=EVAL_BATCH_SIZE)
        emb = embedding_summary(ev)
        emb["pooling"] = ctx.model.pooling.to_dict()
        step(f"embeddings on {emb['corpus_size']} held-out texts: cosine to dense mean {emb['cosine_mean']:.4f}, "
             f"5th percentile {emb['cosine_p5']:.4f}; recall@10 agreement {emb['recall_at_10']:.4f}")
        # no labels: the dense model is the reference (100%), agreement is recall@10 of the neighbours
        return Validated(ev, headline_metric("embedding"), 100.0, 100 * emb["cosine_mean"], emb["recall_at_10"], emb)
    ev = evaluate(task, runtimes, split=opts.eval_split, baseline="dense", batch_size=EVAL_BATCH_SIZE)
    metric = headline_metric(task.data.task_type)
    n = len(getattr(task.data, opts.eval_split))
    if n < SMALL_EVAL_SPLIT:  # a handful of samples: one sample moves the figure by 100/n points
        warn(f"the {opts.eval_split} split has {n} sample{'s' if n != 1 else ''}: one sample moves the {metric} by {100 / n:.0f} points, so "
             f"the figures below say little; give more data (or a folder with its own {opts.eval_split} file)")
    mp = ev["models"]["pruned"]
    agreement = mp.get("agreement_vs_baseline", mp.get("spearman_vs_baseline"))
    return Validated(ev, metric, 100 * ev["models"]["dense"][metric], 100 * mp[metric], agreement)


def benchmark_stage(ctx: BuildContext, exported: Exported) -> Benchmarked:
    """Time every export on the target runtime at the target's shape, in interleaved blocks."""
    from .bench import benchmark, print_bench_table

    opts, labels = ctx.opts, exported.labels
    batch = next(iter(ctx.bench_np.values())).shape[0]
    step(f"benchmarking {', '.join(labels)} on {exported.runtime}, batch {batch}"
         + (f" x {ctx.seq} tokens" if ctx.task.modality == "text" else "")
         + f", {opts.bench_iters} runs each in interleaved blocks of {opts.bench_block}")
    runtimes = {label: ctx.runtime(exported.exports[label]) for label in labels}
    bench = benchmark(runtimes, ctx.bench_np, warmup=opts.bench_warmup, iters=opts.bench_iters, baseline="dense", block=opts.bench_block,
                      min_seconds=opts.bench_min_seconds)
    print_bench_table(bench, console=console)
    p = bench["models"]["pruned"]
    if p["p50_ms"] > bench["models"]["dense"]["p50_ms"]:  # shipped, but not without saying what was measured
        warn(f"the pruned model measured slower than the dense one here (x{p['speedup_p50']:.2f}"
             + (f", rounds IQR {p['speedup_iqr'][0]:.2f}-{p['speedup_iqr'][1]:.2f}" if p.get("speedup_iqr") else "")
             + (f"; its p90 is {p['p90_ms'] / p['p50_ms']:.1f}x its p50" if p.get("p90_ms") is not None else "") + "): another process may have loaded the machine, or this runtime "
             f"handles the pruned widths badly; time it again with: optin-deploy bench BUNDLE")
    return Benchmarked(bench, batch)


def _build_into(staging: Path, opts: BuildOptions, target: Target, budget: dict) -> dict:
    """The build: the stages in order, into ``staging``; returns the report."""
    from .choose import choose_stage

    ctx = load_context(opts, target)
    ctx, choice = choose_stage(ctx, staging)  # a choosing profile (the default x86-cpu): the target measured fastest here
    selected = select_stage(ctx, staging, budget)
    save_stage(ctx, selected, staging)
    exported = export_stage(ctx, selected, staging)
    validated = validate_stage(ctx, exported)
    benchmarked = benchmark_stage(ctx, exported)
    report = assemble_report(ctx, staging, budget, selected, exported, validated, benchmarked)
    report["runtime_choice"] = choice.to_dict() if choice is not None else None
    return report


def assemble_report(ctx: BuildContext, staging: Path, budget: dict, selected: Selected, exported: Exported, validated: Validated,
                    benchmarked: Benchmarked) -> dict:
    """``report.json`` from the stages' outputs (schema: :data:`REPORT_KEYS` and the README)."""
    opts, task, model, scores, seq = ctx.opts, ctx.task, ctx.model, ctx.scores, ctx.seq
    adapter, pa = get_adapter(model), get_adapter(selected.model)
    dense_macs, pruned_macs = adapter.encoder_macs(seq), pa.encoder_macs(seq)
    exports, bench, ev, metric = exported.exports, benchmarked.bench, validated.evaluation, validated.metric
    md, mp = ev["models"]["dense"], ev["models"]["pruned"]
    acc_d, acc_p = validated.dense, validated.pruned
    # a tail percentile from too few runs is null (bench.TAIL_MIN_RUNS)
    lat = {label: {k: (None if bench["models"][label].get(f"{k}_ms") is None else round(bench["models"][label][f"{k}_ms"], 3))
                   for k in ("p50", "p90", "p99")} for label in ("dense", "pruned")}
    # throughput at the median latency (medians survive a noisy machine); the mean-based figure is kept beside it
    batch = benchmarked.batch
    thr = {label: round(1000.0 * batch / bench["models"][label]["p50_ms"], 2) for label in ("dense", "pruned")}
    thr_mean = {label: round(bench["models"][label]["throughput_samples_per_s"], 2) for label in ("dense", "pruned")}
    drop = acc_d - acc_p
    baselines = baseline_summary(exports, ev, bench, metric, exported.precision) if not ctx.embedding else {}
    ref = baselines.get("reference_fp32")
    drop_ref = (100 * ev["models"][ref][metric] - acc_p) if ref else drop
    gate = None
    if opts.max_accuracy_drop is not None and selected.search is None:  # with a search the limit applies to validation, not test
        # the quantised / fused artefact is gated against the fp32 dense model when one was measured
        worst = max(drop, drop_ref)
        gate = {"max_accuracy_drop": opts.max_accuracy_drop, "metric": metric, "drop": round(worst, 3), "against": ref or "dense",
                "passed": bool(worst <= opts.max_accuracy_drop)}
    if ctx.embedding and (opts.min_cosine is not None or opts.min_recall is not None):
        gate = _embedding_gate(validated.embedding, opts.min_cosine, opts.min_recall)
    artifacts = {}
    for p in sorted(staging.rglob("*")):
        if p.is_file():
            artifacts[str(p.relative_to(staging))] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    return {
        "model": _spec(task.model_source or opts.model) or "minilm-sentiment",
        "family": adapter.family,
        "task": {"name": task.data.name, "type": task.data.task_type, "labels": task.data.label_names, "metric": metric, "eval_split": opts.eval_split,
                 "eval_samples": len(getattr(task.data, opts.eval_split)), "source": task.data.source},
        "profile": ctx.target.name,
        "runtime": exported.runtime,
        # the session settings the deliverable was measured with (onnxruntime), for a server to match them
        "run_with": _run_with(bench),
        "budget": {**budget, "seq_len": seq},  # the tokens per sample its MACs / latencies are counted at
        "macs": {"dense": dense_macs, "pruned": pruned_macs, "ratio": round(pruned_macs / dense_macs, 4), "seq_len": seq},
        "metric": metric,  # the key of the block below (REPORT_KEYS, METRIC_UNITS)
        metric: {"dense": round(acc_d, 3), "pruned": round(acc_p, 3), "drop": round(drop, 3), "agreement": round(100 * float(validated.agreement), 3),
                 "metric": metric, "unit": METRIC_UNITS[metric],
                 **({"macro_f1": {"dense": md.get("macro_f1"), "pruned": mp.get("macro_f1")}} if "macro_f1" in md else {})},
        "latency_ms": lat,
        # run-to-run noise of dense p50 / pruned p50: 25th-75th percentile of the ratio within each interleaved round
        "speedup_iqr": bench["models"]["pruned"].get("speedup_iqr"),
        "throughput": {"dense": thr["dense"], "pruned": thr["pruned"], "speedup": round(thr["pruned"] / thr["dense"], 3),
                       "unit": "samples/s at p50 latency",
                       "mean_based": {**thr_mean, "speedup": round(thr_mean["pruned"] / thr_mean["dense"], 3)}},
        "memory": {label: bench["models"][label].get("peak_memory_mb") for label in ("dense", "pruned")},
        "scoring_seconds": round(scores.seconds, 2),
        "scoring": {"method": scores.method, "scorer": opts.scorer, "calib_samples": opts.calib_samples, "calib_length": ctx.calib_len,
                    "cached": scores.cached, "notes": selected.notes + exported.notes},
        "structure": {"heads": {"dense": adapter.heads_per_layer(), "pruned": pa.heads_per_layer()},
                      "neurons": {"dense": adapter.neurons_per_layer(), "pruned": pa.neurons_per_layer()}},
        "reconstruction": selected.reconstruction,
        "embedding": validated.embedding,
        "selection_cost": selected.selection_cost,
        "selected_by": ctx.cost_info or None,
        "latency_budget": selected.latency_budget,
        "search": selected.search.to_dict() if selected.search is not None else None,
        "parity": {label: exports[label]["parity"] for label in exports},
        "graph": {label: exports[label].get("graph") for label in exports},
        "precision": exported.precision,  # the exported graph's (fp32 for OpenVINO bf16, which runs it in bf16)
        # what the deliverable computes in on its runtime (an int8 profile's graph with every node left in fp32: fp32)
        "inference_precision": exported.precision if ctx.target.precision == "int8" else ctx.target.precision,
        # int8: how each model was quantised (dynamic / static; with auto or a tolerance, both ways' timings and accuracies and why one was kept)
        "quantization": {l: exports[l]["quantization"] for l in ("dense", "pruned") if exports[l].get("quantization")} or None,
        "baselines": baselines,
        "gate": gate,
        "bench": {"iters": opts.bench_iters, "min_seconds": opts.bench_min_seconds, "warmup": opts.bench_warmup, "interleaved": True, "mode": bench.get("mode"), "block": bench.get("block"),
                  "settle_seconds": bench.get("settle_seconds"), "inputs": {k: list(v.shape) for k, v in ctx.bench_np.items()}},
        "artifacts": artifacts,
        # how to feed the deliverable without optin-deploy: inputs, output classes, tokenisation, the batching of the figures
        "serving": serving_spec(task, exports["pruned"], staging, ctx.eval_len),
    }


def dense_alternatives(dense_export: dict, precision: str) -> list[tuple[str, str, str]]:
    """``(label, graph, precision)`` of the dense exports to measure beside the deliverable: the plain
    dynamo export in fp32 (what ``torch.onnx.export`` gives), the fused graph in fp32 and in int8,
    minus the one the dense model already runs as (when that is a static int8 graph, the dynamic one is measured beside
    it as ``dense-fused-int8-dynamic``). Fused ones only when the family has a fused graph."""
    own_graph = (dense_export.get("graph") or {}).get("kind", "dynamo")
    own_mode = (dense_export.get("quantization") or {}).get("mode", "dynamic")
    out = []
    for graph, prec in (("dynamo", "fp32"), ("fused", "fp32"), ("fused", "int8")):
        if (graph, prec) == (own_graph, precision):
            if prec == "int8" and own_mode != "dynamic":  # the dense model quantised the common way (dynamic), timed beside it
                out.append((f"dense-{graph}-int8-dynamic", graph, prec))
            continue
        if graph == "fused" and own_graph != "fused":
            continue
        out.append((f"dense-{graph}-{prec}", graph, prec))
    return out


#: the CPU runtimes whose builds also measure the dense alternatives (onnxruntime's ways and OpenVINO's)
CPU_RUNTIMES = ("ort-cpu", "openvino-cpu", "openvino-cpu-bf16")


def openvino_alternatives(exports: dict, notes: list, own: str = "ort-cpu") -> dict:
    """The dense model and the deliverable on OpenVINO (``openvino-cpu``, and ``openvino-cpu-bf16`` where the CPU has
    bf16), when it is installed: the same exports, the
    file OpenVINO reads (the fp32 graph when the artifact holds onnxruntime's int8 ``QAttention``). Labels
    ``dense-openvino-PREC`` / ``pruned-openvino-PREC``; each entry is the export manifest with ``run_on`` set."""
    from .errors import MissingRuntimeError
    from .runtimes.openvino import bf16_supported, import_openvino, openvino_file

    try:
        import_openvino()
    except MissingRuntimeError:
        return {}
    out = {}
    for label in ("dense", "pruned"):
        e = exports[label]
        try:
            path, note = openvino_file(e)
        except OptinError as exc:
            notes.append(f"{label} on openvino-cpu skipped: {exc}")
            continue
        prec = e.get("precision") if note is None else "fp32"
        if note:
            notes.append(f"{label} on openvino-cpu: {note}")
        if own != "openvino-cpu":
            out[f"{label}-openvino-{prec}"] = {**e, "artifact": str(path), "precision": prec, "run_on": "openvino-cpu"}
        if prec == "fp32" and own != "openvino-cpu-bf16" and bf16_supported():
            # OpenVINO's bf16 inference of the same fp32 graph (its default on CPUs with bf16 / AMX): on an AMX host it
            # is faster than onnxruntime int8, so the fastest dense alternative is not honest without it
            out[f"{label}-openvino-bf16"] = {**e, "artifact": str(path), "precision": "bf16", "run_on": "openvino-cpu-bf16"}
    return out


def _run_with(bench: dict) -> dict | None:
    """How to open the deliverable as the build timed it: onnxruntime session settings or OpenVINO compile settings."""
    from .runtimes.openvino import compile_settings
    from .runtimes.ort import session_settings

    desc = bench["models"]["pruned"].get("runtime") or {}
    if not isinstance(desc, dict):
        return None
    return session_settings(desc) or compile_settings(desc)


def _way(export: dict) -> str:
    q = export.get("quantization") or {}
    way = f"{export.get('precision')} {(export.get('graph') or {}).get('kind') or ''} graph".replace("  ", " ")
    if export.get("precision") == "int8" or q.get("quantizable_nodes"):
        way += f", {q.get('mode', 'dynamic')} quantisation"
        if q.get("quantizable_nodes"):
            way += f", {q['quantizable_nodes'] - q['quantized_nodes']} of {q['quantizable_nodes']} quantisable nodes left in fp32"
    return way


def way_difference(dense: dict, pruned: dict) -> str | None:
    """How the dense model is run unlike the deliverable (precision, graph, int8 mode, nodes left in fp32), or None: an int8
    tolerance settles each model against its own fp32 graph, so the "dense model run the same way" can differ."""
    a, b = _way(dense), _way(pruned)
    return None if a == b else f"dense: {a}; pruned: {b}"


def baseline_summary(exports: dict, ev: dict, bench: dict, metric: str, precision: str) -> dict:
    """Speed-ups of the pruned model against the dense one run the same way and against the fastest
    dense alternative measured in the same run; the fp32 dense reference for accuracy."""
    if len(exports) < 3:  # no dense alternatives were measured
        return {"speedup_vs_same_way": round(bench["models"]["dense"]["p50_ms"] / bench["models"]["pruned"]["p50_ms"], 3), "same_way": "dense",
                "same_way_differs": way_difference(exports["dense"], exports["pruned"])}
    pruned_labels = [l for l in exports if l == "pruned" or l.startswith("pruned-")]  # the deliverable on other runtimes
    dense_labels = [l for l in exports if l not in pruned_labels]
    p50 = {l: bench["models"][l]["p50_ms"] for l in exports}
    rows = {}
    for l in exports:
        g = exports[l].get("graph") or {}
        runtime = (bench["models"][l].get("runtime") or {}).get("runtime")
        # what the runtime computes in: OpenVINO bf16 runs the fp32 graph in bf16
        rows[l] = {"graph": g.get("kind"), "precision": "bf16" if runtime == "openvino-cpu-bf16" else exports[l].get("precision"), "p50_ms": round(p50[l], 3),
                   "runtime": runtime,
                   metric: round(100 * ev["models"][l][metric], 3), "fused_operators": g.get("fused_operators")}
    # the alternative a user would ship instead: the fastest dense model at least as accurate as the deliverable (a dense
    # int8 that lost points is a trade, not an alternative); a faster, less accurate one is named beside it
    acc = {l: ev["models"][l][metric] for l in exports}
    as_good = [l for l in dense_labels if acc[l] >= acc["pruned"] - 1e-9]
    fastest_any = min(dense_labels, key=lambda l: p50[l])
    fastest = min(as_good, key=lambda l: p50[l]) if as_good else fastest_any
    fp32 = [l for l in dense_labels if exports[l].get("precision") == "fp32"]
    # the reference for accuracy: the plain fp32 export of the dense model (what nobody would argue with)
    ref = next((l for l in fp32 if (exports[l].get("graph") or {}).get("kind") == "dynamo"), fp32[0] if fp32 else None)
    out = {
        "models": rows,
        "same_way": "dense",
        "speedup_vs_same_way": round(p50["dense"] / p50["pruned"], 3),
        # None when the dense model runs as the deliverable does; else how they differ (the ratio then mixes that in)
        "same_way_differs": way_difference(exports["dense"], exports["pruned"]),
        "fastest_dense": fastest,
        "fastest_dense_rule": ("the fastest dense model at least as accurate as the deliverable" if as_good else
                               "the fastest dense model (none is as accurate as the deliverable on this split)"),
        "speedup_vs_fastest_dense": round(p50[fastest] / p50["pruned"], 3),
        "reference_fp32": ref,
    }
    if fastest_any != fastest:
        out["faster_less_accurate_dense"] = {"label": fastest_any, "speedup": round(p50[fastest_any] / p50["pruned"], 3),
                                             "points_below_deliverable": round(100 * (acc["pruned"] - acc[fastest_any]), 3)}
    if len(pruned_labels) > 1:  # the pruned model measured on more than one runtime: which is fastest, and the runner-up
        ranked = sorted(pruned_labels, key=lambda l: p50[l])
        out["pruned_runtimes"] = {"fastest": ranked[0], "runner_up": ranked[1], "deliverable": "pruned",
                                  "ranking": [{"label": l, "runtime": rows[l]["runtime"], "precision": rows[l]["precision"],
                                               "p50_ms": rows[l]["p50_ms"], metric: rows[l][metric]} for l in ranked]}
    if ref:
        out["speedup_vs_fp32_dense_export"] = round(p50[ref] / p50["pruned"], 3)
        out["drop_vs_fp32_dense"] = round(100 * (ev["models"][ref][metric] - ev["models"]["pruned"][metric]), 3)
    return out


def _write_reports(staging: Path, report: dict, opts: BuildOptions, target: Target) -> None:
    from .report import write_markdown, write_plots

    plots = write_plots(report, staging / "plots")
    report.update(_relative_to(dict(report), staging.resolve()))
    write_json(staging / "report.json", report)
    write_markdown(report, staging / "report.md", plots)
    manifest = {
        "created_by": f"optin-deploy {__version__}",
        "command": " ".join(opts.command),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.__dict__.items() if k not in ("command", "lut_table")},
        "inputs": {"model": report["model"], "task": report["task"]["name"], **_data_inputs(opts.data, report["task"].get("source") or {})},
        # the profile the bundle was built for: a choosing profile's chosen candidate (report.json runtime_choice says how)
        "profile": next((t for t in target.choices if t.name == report["profile"]), target).profile.to_dict(),
        "chosen_by": target.chooser.name if target.chooser is not None else None,
        "serving": report.get("serving"),  # the deliverable's inputs, output and preprocessing (report.json's block)
        "versions": _versions(),
        "files": {},
    }
    for p in sorted(staging.rglob("*")):
        if p.is_file() and p.name != "manifest.json":
            manifest["files"][str(p.relative_to(staging))] = {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
    write_json(staging / "manifest.json", _relative_to(manifest, staging.resolve()))


def _data_inputs(data: str | None, source: dict) -> dict:
    """The data a bundle was built from, for manifest.json: the spec, the absolute path of a local
    file or folder and a file's sha256 (a built-in data set: its asset's recorded sha256)."""
    out: dict = {"data": data}
    path = source.get("path") or source.get("file")
    if path:
        p = Path(str(path)).expanduser().resolve()
        out["data_path"] = str(p)
        if p.is_file():
            out["data_sha256"] = sha256_file(p)
    if "data_sha256" not in out and source.get("sha256"):
        out["data_sha256"] = source["sha256"]
    return out


def _check_task_options(opts: BuildOptions, embedding: bool) -> None:
    """Options that only make sense for one kind of task, checked before any expensive work."""
    if embedding:
        if opts.max_accuracy_drop is not None:
            raise OptinError("--max-accuracy-drop needs labels; for an embedding model gate on --min-cosine or --min-recall")
        if opts.scorer == "fisher":
            raise OptinError("the fisher scorer needs a task head (logits); for an embedding model use optin, magnitude or random")
        if opts.min_speedup is not None:
            raise OptinError("the budget search (--min-speedup) needs labels; for an embedding model pass --flops and gate on --min-cosine or --min-recall")
    elif opts.min_cosine is not None or opts.min_recall is not None:
        raise OptinError("--min-cosine / --min-recall apply to sentence-embedding models; for a classifier use --max-accuracy-drop")


def _embedding_gate(emb: dict, min_cosine: float | None, min_recall: float | None) -> dict:
    checks, failed = {}, []
    if min_cosine is not None:
        ok = emb["cosine_mean"] >= min_cosine
        checks["min_cosine"] = {"floor": min_cosine, "value": emb["cosine_mean"], "passed": bool(ok)}
        if not ok:
            failed.append(f"mean cosine {emb['cosine_mean']:.4f} < --min-cosine {min_cosine}")
    if min_recall is not None:
        ok = emb["recall_at_10"] >= min_recall
        checks["min_recall"] = {"floor": min_recall, "value": emb["recall_at_10"], "passed": bool(ok)}
        if not ok:
            failed.append(f"recall@10 {emb['recall_at_10']:.4f} < --min-recall {min_recall}")
    return {**checks, "passed": not failed, "failures": failed}


def check_gate(report: dict) -> None:
    search = report.get("search")
    if search and not search.get("reachable"):
        raise QualityGateError(f"{search['message']}; the bundle at {report.get('bundle')} holds that candidate, marked unreachable in report.json")
    gate = report.get("gate")
    if gate and not gate["passed"] and gate.get("failures"):
        raise QualityGateError(
            f"quality gate failed: {'; '.join(gate['failures'])}; the bundle at {report.get('bundle')} is marked failed in report.json; "
            "raise the budget or lower the floor"
        )
    if gate and not gate["passed"]:
        raise QualityGateError(
            f"quality gate failed: {gate.get('metric', 'accuracy')} dropped {gate['drop']:.2f} points (> --max-accuracy-drop {gate['max_accuracy_drop']}); "
            f"the bundle at {report.get('bundle')} is marked failed in report.json; raise the budget or the allowed drop"
        )
