"""Latency / throughput benchmarks of several models on their target runtimes.

:func:`benchmark` loads each ``(runtime, artifact)``, warms it up, then times it the way a server
runs it: in **blocks** of consecutive runs of one model (``block`` runs, default 10, after untimed
runs lasting ``settle_seconds``, default 50 ms, at least one), the models' blocks interleaved (dense block,
pruned block, pruned block, dense block, ...) so that a noisy machine slows every model alike and
ratios survive. Timing single runs round-robin (``mode="interleaved"``) misreports: each
onnxruntime session keeps its own intra-op threads spinning after a run and steals the cores from
the next model (measured here at 1 x 128: 89 ms round-robin against 24 ms in steady state). A
model also needs a while to come back to speed after another model (or an idle pause) held the
cores: measured with OpenVINO bf16 at 1 x 128 after a 30 ms pause, the first runs took 5.5, 4.8,
4.5, 4.3, 4.0 ms and the sixth reached the steady 3.8 ms. One untimed run per block was not enough
there (blocks read the dense model 4-14% slower than a process running it alone); untimed runs
for 50 ms before each block bring blocks and a standalone process within 1%.
Per model: latency p50/p90/p99/mean (ms per batch), throughput (samples/s), peak memory, and the
p50 speed-up against a baseline. The result is a JSON-able dict; :func:`print_bench_table` renders
it with rich.

Memory: on CPU the peak resident set size while loading and warming up (Linux ``VmHWM`` from
``/proc/self/status``, reset through ``/proc/self/clear_refs`` before each model; elsewhere the
``resource`` maximum, which cannot be reset and is marked ``approximate``). On CUDA the peak of PyTorch's allocator
(``torch.cuda.max_memory_allocated``) plus what the GPU's used memory (``cudaMemGetInfo``) grew by outside PyTorch's
reserve: onnxruntime's CUDA arena, TensorRT's engine and activation memory and an AOTInductor package's weights are
allocated by those libraries, not through PyTorch, so PyTorch's counter alone read about 0 MB for them
(:func:`cuda_peak_bytes`). The GPU's used memory is device-wide: another process on the GPU changes it.
The CPU figure is the growth of the resident set in this process, so it is a lower bound: memory the
allocator freed earlier (an export, another model) is reused without growing it, and the figure
depends on what ran before. Compare models' memory in separate processes.
"""

from __future__ import annotations

import os
import platform
import time
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .errors import OptinError, short_reason
from .runtimes.base import Runtime

# ---------------------------------------------------------------- memory


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _max_rss_fallback() -> int:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if platform.system() == "Darwin" else r * 1024)


def cuda_peak_bytes(torch_start: int, torch_peak: int, reserved_start: int, reserved_end: int, used_start: int, used_end: int) -> int:
    """Peak GPU memory of one phase: PyTorch's allocator peak above where it started, plus the growth of the device's
    used memory that PyTorch's reserve does not account for (what other allocators in this process kept: onnxruntime's
    arena, TensorRT's engines and execution contexts, cudaMalloc'd AOTInductor weights, lazily loaded kernels)."""
    outside = (used_end - used_start) - (reserved_end - reserved_start)
    return max(0, torch_peak - torch_start) + max(0, outside)


class MemoryProbe:
    """Peak memory (bytes) of one phase, on CPU (RSS) or CUDA (allocator)."""

    def __init__(self, device: str):
        self.device = device
        self.method = ""

    def __enter__(self) -> "MemoryProbe":
        self.delta = None
        if self.device == "cuda" and not torch.cuda.is_available():  # e.g. onnxruntime-gpu beside a CPU-only torch
            self.method = "not measured: this torch has no CUDA to read the GPU's memory with"
            return self
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            self.reserved_start = torch.cuda.memory_reserved()
            free, total = torch.cuda.mem_get_info()
            self.used_start = total - free
            self.method = ("cuda max_memory_allocated + growth of the GPU's used memory outside PyTorch's reserve "
                           "(cudaMemGetInfo, device-wide)")
        else:
            self.exact = _reset_peak_rss() and _proc_status("VmHWM") is not None
            self.start = _proc_status("VmRSS") if self.exact else _max_rss_fallback()
            self.method = "VmHWM after clear_refs" if self.exact else "ru_maxrss (approximate: cannot be reset)"
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda" and not torch.cuda.is_available():
            return
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
            free, total = torch.cuda.mem_get_info()
            self.delta = cuda_peak_bytes(self.start, self.peak, self.reserved_start, torch.cuda.memory_reserved(), self.used_start, total - free)
            return
        self.peak = _proc_status("VmHWM") if self.exact else _max_rss_fallback()
        self.delta = max(0, (self.peak or 0) - (self.start or 0))


# ---------------------------------------------------------------- benchmark

MODES = ("blocks", "interleaved", "sequential")
DEFAULT_BLOCK = 10
#: seconds of untimed runs before each block (at least one run): the model comes back to speed after another held the cores
DEFAULT_SETTLE_S = 0.05


def _batch_size(inputs: Mapping[str, Any]) -> int:
    return int(next(iter(inputs.values())).shape[0])


#: the fewest timed runs a tail percentile is stated from: below them p90 / p99 would be the slowest run or two under
#: another name (``--bench-iters 3`` printed a "p99" that was an interpolation of the two slowest runs); null instead
TAIL_MIN_RUNS = {"p90_ms": 10, "p99_ms": 100}


def _percentiles(ms: np.ndarray) -> dict:
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        **{k: (float(np.percentile(ms, int(k[1:3]))) if len(ms) >= n else None) for k, n in TAIL_MIN_RUNS.items()},
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "std_ms": float(ms.std()),
    }


def round_order(labels: Sequence[str], rounds: int) -> list[str]:
    """The order the models run in round ``rounds`` of an interleaved benchmark.

    Two models alternate ``a b | b a | a b``: each follows itself at every other round boundary.
    Three or more rotate (``a b c | b c a | c a b``) so that no model ever follows itself: reversing
    them instead (``a b c | c b a``) let the first and last models follow themselves (warm caches, their
    own threads still awake) while the middle ones never did. Three copies of one ONNX file timed the
    reversed way at 8 x 32 put the middle copy 1-21% behind the others (0.79, 0.87, 0.93, 0.93, 1.00x
    in five runs); rotated, 0.89, 0.93, 1.01, 0.99x (and four copies within 1.5%): the rotation removes
    the asymmetry of the order, not all of the noise of a busy 2-core machine at 7 ms a run."""
    labels = list(labels)
    if len(labels) <= 2:
        return labels if rounds % 2 == 0 else labels[::-1]
    k = rounds % len(labels)
    return labels[k:] + labels[:k]


def benchmark(
    runtimes_and_models: Mapping[str, tuple[Runtime, Any]],
    inputs: Mapping[str, Any] | Mapping[str, Mapping[str, Any]],
    *,
    warmup: int = 10,
    iters: int | None = 50,
    seconds: float | None = None,
    interleave: bool = True,
    baseline: str | None = None,
    progress: bool = True,
    mode: str | None = None,
    block: int = DEFAULT_BLOCK,
    min_seconds: float | None = None,
    settle_seconds: float = DEFAULT_SETTLE_S,
) -> dict:
    """Benchmark each labelled ``(runtime, artifact)`` on ``inputs``.

    ``inputs`` is one ``{name: array}`` batch shared by all models, or ``{label: {name: array}}``
    per model. Runtimes not yet loaded (``runtime.load(artifact)``) are loaded here (pass
    ``artifact=None`` for an already-loaded runtime). ``iters`` rounds, or as many rounds as fit in
    ``seconds`` (at least 5). ``baseline`` defaults to the first label; ``speedup[label]`` is
    ``baseline p50 / label p50``.

    ``mode``: ``"blocks"`` (the default: ``block`` consecutive timed runs per model after one
    untimed runs lasting ``settle_seconds`` (at least one), models' blocks alternating; ``iters`` is
    the number of timed runs per model),
    ``"interleaved"`` (one run per model per round, round-robin: what a server never does; kept
    to show the difference) or ``"sequential"`` (all of one model, then the next; ``interleave=False``).

    ``min_seconds`` (blocks and interleaved, with ``iters``): keep going in whole rounds, every model
    the same number of runs, until the timed rounds have also lasted this long. A count suits a
    30 ms model; 60 runs of a 0.5 ms model are 30 ms of measurement, within the noise of one
    scheduler hiccup (two identical ViT candidates read 1.55x and 1.76x against dense that way).
    """
    mode = mode or ("blocks" if interleave else "sequential")
    if mode not in MODES:
        raise OptinError(f"unknown timing mode {mode!r}; choose one of {', '.join(MODES)}")
    if block < 1:
        raise OptinError(f"block must be at least 1 run, got {block}")
    if not settle_seconds >= 0:
        raise OptinError(f"settle_seconds must be at least 0, got {settle_seconds}")
    labels = list(runtimes_and_models)
    if not labels:
        raise OptinError("nothing to benchmark")
    baseline = baseline or labels[0]
    if baseline not in runtimes_and_models:
        raise OptinError(f"baseline {baseline!r} is not one of {labels}")
    if iters is None and seconds is None:
        raise OptinError("give iters or seconds")
    per_model_inputs = all(isinstance(v, Mapping) for v in inputs.values()) and set(inputs) >= set(labels)
    feeds = {l: (inputs[l] if per_model_inputs else inputs) for l in labels}
    feeds = {l: {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in f.items()} for l, f in feeds.items()}

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .progress import console as bar_console  # on stderr, as all progress; off where no terminal shows it (a bare newline)

    results: dict[str, dict] = {l: {} for l in labels}
    times: dict[str, list[float]] = {l: [] for l in labels}
    round_of: dict[str, list[int]] = {l: [] for l in labels}  # the round each timed run belongs to (blocks, round-robin)
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=bar_console, disable=not progress or not bar_console.is_terminal, transient=True) as bar:
        # load + warm-up, one model at a time, with its own memory probe
        t_load = bar.add_task("loading / warm-up", total=len(labels))
        for l in labels:
            rt, artifact = runtimes_and_models[l]
            with MemoryProbe(rt.device) as mem:
                t0 = time.perf_counter()
                if artifact is not None:
                    rt.load(artifact)
                load_s = time.perf_counter() - t0
                try:
                    out = rt.run(feeds[l])
                except (OptinError, KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:  # noqa: BLE001 - the runtime refused these inputs: the user's model or options
                    shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds[l].items())
                    raise OptinError(f"{l}: {getattr(rt, 'name', 'the runtime')} could not run it on {shapes}: {short_reason(exc, 240)}; "
                                     f"a graph exported with fixed shapes or a maximum length runs only within them "
                                     f"(pass --batch / --seq-len to match)") from None
                for _ in range(max(warmup, 1) - 1):
                    out = rt.run(feeds[l])
            results[l].update({
                "runtime": rt.describe(),
                "load_seconds": round(load_s, 3),
                "peak_memory_mb": round(mem.delta / 2**20, 1) if mem.delta is not None else None,
                "memory_method": mem.method,
                "output_shape": list(np.shape(out)),
            })
            bar.advance(t_load)

        # timed rounds
        total = iters if iters is not None else None
        t_run = bar.add_task("timing " + (" / ".join(labels) if interleave else ""), total=total)
        start = time.perf_counter()
        rounds = 0

        def short() -> bool:  # the timed rounds have not yet lasted min_seconds
            return min_seconds is not None and time.perf_counter() - start < min_seconds

        def more() -> bool:
            if iters is not None:
                return rounds < iters or short()
            return rounds < 5 or time.perf_counter() - start < seconds

        if mode == "blocks":
            per_model = {l: 0 for l in labels}
            while True:
                extend = short()  # once per round, so every model of the round gets the same number of runs
                if iters is not None and all(per_model[l] >= iters for l in labels) and not extend:
                    break
                if iters is None and rounds >= 5 and time.perf_counter() - start >= seconds:
                    break
                for l in round_order(labels, rounds):
                    rt = runtimes_and_models[l][0]
                    n = block if iters is None or extend else min(block, iters - per_model[l])
                    if n <= 0:
                        continue
                    settle_until = time.perf_counter() + settle_seconds
                    rt.run(feeds[l])  # untimed: the previous model's threads settle, this one comes back to speed
                    while time.perf_counter() < settle_until:
                        rt.run(feeds[l])
                    for _ in range(n):
                        t0 = time.perf_counter()
                        rt.run(feeds[l])
                        times[l].append(time.perf_counter() - t0)
                        round_of[l].append(rounds)
                    per_model[l] += n
                    if iters is not None:
                        bar.advance(t_run, n / len(labels))
                rounds += 1
        elif mode == "interleaved":
            while more():
                for l in round_order(labels, rounds):
                    rt = runtimes_and_models[l][0]
                    t0 = time.perf_counter()
                    rt.run(feeds[l])
                    times[l].append(time.perf_counter() - t0)
                    round_of[l].append(rounds)
                rounds += 1
                bar.advance(t_run)
        else:
            budget = None if seconds is None else seconds / len(labels)
            for l in labels:
                rt = runtimes_and_models[l][0]
                rounds, start = 0, time.perf_counter()
                while (rounds < iters) if iters is not None else (rounds < 5 or time.perf_counter() - start < budget):
                    t0 = time.perf_counter()
                    rt.run(feeds[l])
                    times[l].append(time.perf_counter() - t0)
                    rounds += 1
                    if iters is not None:
                        bar.advance(t_run, 1 / len(labels))

    for l in labels:
        ms = np.asarray(times[l]) * 1e3
        bs = _batch_size(feeds[l])
        results[l].update(_percentiles(ms))
        results[l]["iters"] = int(len(ms))
        results[l]["batch_size"] = bs
        results[l]["input_shapes"] = {k: list(v.shape) for k, v in feeds[l].items()}
        results[l]["throughput_samples_per_s"] = float(bs * len(ms) / (ms.sum() / 1e3))
    base = results[baseline]
    for l in labels:
        results[l]["speedup_p50"] = base["p50_ms"] / results[l]["p50_ms"]
        spread = _ratio_spread(times[baseline], round_of[baseline], times[l], round_of[l]) if l != baseline else None
        if spread is not None:
            results[l]["speedup_iqr"] = spread
        results[l]["latency_ratio_p50"] = results[l]["p50_ms"] / base["p50_ms"]
        results[l]["throughput_ratio"] = results[l]["throughput_samples_per_s"] / base["throughput_samples_per_s"]
    return {
        "baseline": baseline,
        "interleaved": mode != "sequential",
        "mode": mode,
        "block": block if mode == "blocks" else None,
        "settle_seconds": settle_seconds if mode == "blocks" else None,
        "warmup": warmup,
        "iters": iters,
        "seconds": seconds,
        "min_seconds": min_seconds,
        "host": {"machine": platform.machine(), "processor": platform.processor() or platform.machine(),
                 "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                 "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "models": results,
        "speedup": {l: results[l]["speedup_p50"] for l in labels},
    }


def _ratio_spread(base: list[float], base_rounds: list[int], other: list[float], other_rounds: list[int]) -> list[float] | None:
    """The run-to-run noise of a speed-up: the 25th and 75th percentiles of the per-round ratios (baseline median /
    model median within each interleaved round). None with fewer than 5 rounds shared, or without rounds (sequential)."""
    def medians(ts, rs):
        by: dict[int, list[float]] = {}
        for t, r in zip(ts, rs):
            by.setdefault(r, []).append(t)
        return {r: float(np.median(v)) for r, v in by.items()}

    b, o = medians(base, base_rounds), medians(other, other_rounds)
    shared = sorted(set(b) & set(o))
    if len(shared) < 5:
        return None
    ratios = np.array([b[r] / o[r] for r in shared if o[r] > 0])
    return [round(float(np.percentile(ratios, 25)), 4), round(float(np.percentile(ratios, 75)), 4)]


def print_bench_table(result: dict, console=None, title: str | None = None) -> None:
    """A rich table of :func:`benchmark`'s result."""
    from .progress import new_console
    from rich.table import Table

    from rich import box

    console = console or new_console()
    how = {"blocks": f"blocks of {result.get('block')} runs per model, interleaved", "interleaved": "round-robin",
           "sequential": "sequential"}.get(result.get("mode") or ("interleaved" if result["interleaved"] else "sequential"))
    cols = ["model", "runtime", "batch", "p50", "p90", "p99", "samples/s", "peak MB", "speed-up (rounds IQR)"]
    rows = []
    for label, r in result["models"].items():
        rt = r["runtime"]
        where = rt.get("runtime", "?") + (f"/{rt['threads']}t" if rt.get("threads") else "")
        rows.append([
            str(label), where, str(r["batch_size"]),
            f"{r['p50_ms']:.1f}", *(("-" if r.get(k) is None else f"{r[k]:.1f}") for k in ("p90_ms", "p99_ms")),
            f"{r['throughput_samples_per_s']:.1f}", (f"{r['peak_memory_mb']:.0f}" if r.get("peak_memory_mb") is not None else "-"),
            "—" if label == result["baseline"] else f"{r['speedup_p50']:.2f}x"
            + (f" ({r['speedup_iqr'][0]:.2f}-{r['speedup_iqr'][1]:.2f})" if r.get("speedup_iqr") else ""),
        ])
    title = title or f"ms per batch (baseline {result['baseline']}, {how})"
    from rich.measure import Measurement

    def table(shown: list[str], title: str) -> tuple[Table, int]:
        """The table of the ``shown`` columns and its natural width (no cell wrapped or cut)."""
        t = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
        for col in shown:
            t.add_column(col, justify="left" if col in ("model", "runtime") else "right", no_wrap=True)
        for row in rows:
            t.add_row(*(row[cols.index(c)] for c in shown))
        return t, Measurement.get(console, console.options.update(width=10_000), t).maximum

    if result.get("settings_from"):  # the shape was not given: say which one was timed and where it came from
        shape = result.get("shape") or {}
        from .progress import say

        say(console, "shape", f"batch {shape.get('batch')} x {shape.get('seq_len')} tokens (text), "
                              f"{shape.get('threads') or 'default'} threads: from {result['settings_from']}")
    t, natural = table(cols, title)
    if natural > console.width:  # a narrow console (80 columns, a pipe, a CI log): what every row shares goes to the title
        shown = list(cols)
        for col in ("runtime", "batch"):
            values = {row[cols.index(col)] for row in rows}
            if len(values) == 1:
                shown.remove(col)
                title += f"; {col} {values.pop()}"
        t, natural = table(shown, title)
    if natural <= console.width:
        console.print(t)
        return
    # never an elided figure: a table still wider than the console is printed at its own width
    saved = console.__dict__.get("_width")  # the width the console was given (None: detected)
    console.width = natural
    try:
        console.print(t)
    finally:
        console._width = saved


def bench_inputs(spec: str | os.PathLike, batch: int = 8, seq_len: int = 128, seed: int = 0,
                 other_sources: Sequence[tuple[str, int | None]] = ()) -> dict[str, np.ndarray]:
    """One batch of inputs of an exact shape for a model folder, bundle or artifact file.

    Text is real sentences tokenised to ``seq_len`` when a tokenizer is found (the model folder or
    the bundle's recorded source; when that is gone, one of ``other_sources``, ``(source, vocab size)`` of the
    models it is timed against, with the same vocabulary size, so that they are timed on the same text), else
    seeded random token ids (all positions attended); images are seeded standard-normal pixels of the model's
    input size.
    """
    from pathlib import Path

    from .exporters.base import is_text_input
    from .models import example_inputs_for_model
    from .runtimes.base import read_manifest
    from .runtimes.base import load_torch_model

    p = Path(str(spec))
    manifest = read_manifest(p) if p.exists() else None
    if manifest is None and p.suffix != ".onnx":
        model = load_torch_model(spec)
        return {k: v.numpy() for k, v in example_inputs_for_model(model, batch, seq_len, model_dir=spec, seed=seed).items()}
    if manifest is not None:
        names = manifest["input_names"]
        shapes = manifest.get("artifacts", {}).get("onnx", {}).get("input_shapes") or {}
        vocab, source = manifest.get("vocab_size"), manifest.get("source")
    else:
        import onnx

        try:
            m = onnx.load(str(p), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - protobuf DecodeError, OSError
            raise OptinError(f"{p} is not a readable ONNX model ({type(exc).__name__}); the file is truncated or corrupt: re-export it") from None
        names = [i.name for i in m.graph.input]
        shapes = {i.name: [d.dim_value or None for d in i.type.tensor_type.shape.dim] for i in m.graph.input}
        vocab, source = None, None
    g = np.random.default_rng(seed)
    if any(is_text_input(n) for n in names):
        from .adapters import Adapter, adapter_for_inputs

        family = adapter_for_inputs(names) or Adapter  # the family with these inputs makes them
        tok = None
        if source:
            from .models import load_tokenizer
            from .progress import warn

            try:
                tok = load_tokenizer(source)
            except OptinError as exc:  # a bundle whose tokenizer is gone or damaged: said, and timed on other text or random ids
                # the dense export's source is the model folder the build read (an absolute path): gone on another
                # machine, while pruned/ holds the same tokenizer; the models compared must be timed on the same text
                for other, other_vocab in other_sources:
                    if other == source or not other or other_vocab != vocab:
                        continue
                    try:
                        tok = load_tokenizer(other)
                    except Exception:  # noqa: BLE001 - try the next one
                        continue
                    warn(f"{spec}: {str(exc).rstrip('.')}; it is timed on text tokenised by {other} (the same vocabulary of "
                         f"{vocab} ids, the tokenizer of a model it is timed against)")
                    break
                else:
                    warn(f"{spec}: {str(exc).rstrip('.')}; it is timed on random token ids instead of tokenised text")
            except Exception:  # noqa: BLE001 - no tokenizer: random ids
                tok = None
        made = family.inputs_for(names, batch, seq_len, min(int(vocab), 1000) if vocab else 100, tokenizer=tok, seed=seed, padded=False)
        return {n: t.numpy() for n, t in made.items()}
    if not names:
        raise OptinError(f"{spec} has no graph inputs (an empty or broken ONNX file?); export the model again")
    n = names[0]
    shape = shapes.get(n)
    if not shape or any(d is None for d in shape[1:]):
        raise OptinError(f"cannot tell the input shape of {spec}; benchmark its model folder instead")
    return {n: g.standard_normal((batch, *shape[1:])).astype(np.float32)}


def bench_artifacts(models: Sequence[str], *, runtime: str | None = None, threads: int | None = None, batch: int | None = None, seq_len: int | None = None,
                    warmup: int = 10, iters: int = 50, seconds: float | None = None, interleave: bool = True, mode: str | None = None,
                    block: int = 10, compile: bool = False, labels: Sequence[str] | None = None, settle_seconds: float = DEFAULT_SETTLE_S) -> dict:
    """``optin-deploy bench``: time artifacts (bundle folders, exported files or model folders; the
    first is the baseline) on their runtimes with inputs of ``batch`` x ``seq_len`` on ``threads`` (those not
    given: what the bundle was measured with, else 8 x 128 and the runtime's default). Bad numbers fail
    before any model is loaded."""
    from .evaluate import artifact_labels
    from .runtimes.base import bench_settings, get_runtime, resolve_artifact

    seq_given = seq_len is not None
    check_threads_here(threads)
    batch, seq_len, threads, settings_from = bench_settings(models, batch, seq_len, threads)
    check_bench_numbers(batch=batch, seq_len=seq_len, iters=iters, warmup=warmup, seconds=seconds, threads=threads, settle_seconds=settle_seconds)
    names = artifact_labels(models, labels)
    targets, inputs = {}, {}
    sources = _tokenizer_sources(models)
    for label, spec in zip(names, models):
        rt_name, artifact, _ = resolve_artifact(spec, runtime)
        targets[label] = (get_runtime(rt_name, threads=threads, compile=compile), artifact)
        inputs[label] = bench_inputs(spec, batch, seq_len, other_sources=sources)
        _check_length(label, inputs[label], seq_len, seq_given)
    warn_unrelated(inputs)
    ways = {label: rt.name for label, (rt, _) in targets.items()}
    if len(set(ways.values())) > 1:  # the ratio then mixes the runtime (and its threads) with the pruning
        from .progress import warn

        warn("the models run on different runtimes (" + ", ".join(f"{l}: {w}" for l, w in ways.items()) + "): their time ratio "
             "mixes the runtime with the pruning; pass --runtime to time them the same way")
    result = benchmark(targets, inputs, warmup=warmup, iters=None if seconds else iters, seconds=seconds,
                       interleave=interleave, baseline=names[0], mode=mode, block=block, settle_seconds=settle_seconds)
    result["shape"] = {"batch": batch, "seq_len": seq_len, "threads": threads}
    if settings_from:
        result["settings_from"] = settings_from  # batch / sequence / threads not given: the build's own
    return result


def _check_length(label: str, feed: Mapping[str, np.ndarray], seq_len: int, given: bool) -> None:
    """A model folder makes its inputs at most as long as its position embeddings: a --seq-len given beyond that is
    refused (the figure would be of another shape than asked); a default beyond it is named."""
    from .exporters.base import is_text_input

    lengths = {a.shape[1] for n, a in feed.items() if is_text_input(n) and a.ndim == 2}
    if lengths and max(lengths) < seq_len:
        made = max(lengths)
        if given:
            raise OptinError(f"--seq-len {seq_len} is longer than {label} takes ({made} positions); pass --seq-len {made} or less")
        from .progress import warn

        warn(f"{label} takes at most {made} positions, so it is timed at {made} tokens, not {seq_len}")


def _tokenizer_sources(models: Sequence[str]) -> list[tuple[str, int | None]]:
    """``(tokenizer source, vocabulary size)`` of each exported model given, as its export record names them."""
    from pathlib import Path

    from .runtimes.base import read_manifest

    out = []
    for spec in models:
        try:
            m = read_manifest(Path(str(spec))) if Path(str(spec)).exists() else None
        except OptinError:
            m = None
        if isinstance(m, dict) and isinstance(m.get("source"), str):
            out.append((m["source"], m.get("vocab_size")))
    return out


def _input_shapes(feed: Mapping[str, np.ndarray]) -> dict[str, tuple]:
    return {n: tuple(a.shape) for n, a in feed.items() if n != "token_type_ids"}


def unrelated_inputs(inputs: Mapping[str, Mapping[str, np.ndarray]]) -> list[str]:
    """The labels (after the first) whose inputs differ from the first model's (names or shapes, token_type_ids aside)."""
    (base, first), *rest = inputs.items()
    a = _input_shapes(first)
    out = []
    for label, feed in rest:
        b = _input_shapes(feed)
        if not (set(a) & set(b) and all(a[n] == b[n] for n in set(a) & set(b))):
            out.append(label)
    return out


def warn_unrelated(inputs: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """A speed-up is a comparison of one model's work with another's: name models whose inputs differ (an image model
    against a text model, another batch or length), so a ratio between unrelated models is not taken for a speed-up."""
    from .progress import warn

    base = next(iter(inputs))
    describe = lambda s: ", ".join(f"{n} {'x'.join(map(str, shp))}" for n, shp in s.items())  # noqa: E731
    for label in unrelated_inputs(inputs):
        warn(f"{label} and {base} take different inputs ({describe(_input_shapes(inputs[label]))} against "
             f"{describe(_input_shapes(inputs[base]))}); their time ratio is not a speed-up of one model over the other")


def cpus_here() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads_here(threads: int | None) -> None:
    """A --threads given above the CPUs here makes the models' thread pools fight over the cores: bench --threads 1000
    on 2 CPUs timed the dense model at 2.6 s a batch and printed a 2988x speed-up. Refused, not timed."""
    if threads is not None and threads > cpus_here():
        raise OptinError(f"--threads {threads} is more than the {cpus_here()} CPUs this process may use here: the thread pools "
                         f"would fight over the cores and the times would measure that; pass --threads {cpus_here()} or less")


def check_bench_numbers(*, batch: int, seq_len: int, iters: int, warmup: int, seconds: float | None, threads: int | None,
                        settle_seconds: float = 0.0) -> None:
    """The benchmark's numbers, refused in one line before any model is loaded."""
    for flag, v, low in (("--batch", batch, 1), ("--seq-len", seq_len, 1), ("--iters", iters, 1), ("--warmup", warmup, 0)):
        if v < low:
            raise OptinError(f"{flag} must be at least {low}, got {v}")
    if seconds is not None and not (seconds > 0 and seconds != float("inf")):
        raise OptinError(f"--seconds must be a positive, finite number, got {seconds}")
    if threads is not None and threads < 1:
        raise OptinError(f"--threads must be at least 1, got {threads}")
    if not (0 <= settle_seconds < float("inf")):
        raise OptinError(f"--settle-ms must be a finite number of at least 0, got {settle_seconds * 1e3:g}")
