"""The same artefacts on every CPU runtime installed here, side by side (``optin-deploy bench --runtimes``).

Each model (a bundle's export folder, a build folder, or an ``.onnx`` file) is expanded into what each
runtime runs of it: onnxruntime runs the artifact (int8 in the default profile) and the bundle's fp32
graph; OpenVINO runs the files it reads (not onnxruntime's ``QAttention``: then only the fp32 graph, and
a note says so); ``openvino-cpu-bf16`` runs the fp32 graph in bf16. All of them are timed in **one**
:func:`~optin_deploy.bench.benchmark` run, in interleaved blocks, so the ratios survive a noisy
machine. The summary names the fastest way to run each model and the runner-up, and the speed-up of
every later model (the pruned one) against the first (the dense one) run the same way and against the
fastest way to run the first model or its alternatives (labels ``dense-...``, e.g. the plain dynamo export).

``torch-aoti-cpu`` runs a model's AOTInductor package (``optin-deploy export MODEL --format aoti``): the bundle
itself when a model is an AOTInductor bundle, else in a build folder the package exported to ``ROOT/aoti/LABEL``
beside ``ROOT/onnx/LABEL`` (not made here: compiling takes minutes; a note says when it is missing).

Speed only: precision changes accuracy (int8, bf16); measure that through the same runtime with
``optin-deploy eval BUNDLE --runtime NAME``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .bench import DEFAULT_SETTLE_S
from .errors import MissingRuntimeError, OptinError

CPU_RUNTIMES = ("ort-cpu", "openvino-cpu", "openvino-cpu-bf16", "torch-aoti-cpu")
#: the bundle formats a runtime runs (ONNX files, or an AOTInductor package)
RUNTIME_FORMAT = {"torch-aoti-cpu": "aoti", "torch-aoti-cuda": "aoti"}


def installed_cpu_runtimes() -> list[str]:
    """The CPU runtimes that can run here (OpenVINO only when installed; bf16 only on CPUs that have it)."""
    from .runtimes.base import get_runtime

    out = []
    for name in CPU_RUNTIMES:
        try:
            get_runtime(name)
        except MissingRuntimeError:
            continue
        out.append(name)
    return out


def parse_runtimes(value: str) -> list[str]:
    """``"all"`` (every CPU runtime installed here) or a comma-separated list; a runtime that cannot run
    here is a one-line error (naming what to install), not a silent skip."""
    from .runtimes.base import get_runtime

    if value.strip() == "all":
        return installed_cpu_runtimes()
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise OptinError(f"--runtimes needs distinct runtime names (or 'all'), got {value!r}")
    for n in names:
        if n not in CPU_RUNTIMES:
            raise OptinError(f"--runtimes compares CPU runtimes of exported artefacts: choose from {', '.join(CPU_RUNTIMES)} (or 'all'), not {n!r}")
        get_runtime(n)  # MissingRuntimeError with the install line when it cannot run here
    return names


def expand_models(specs: Sequence[str], labels: Sequence[str] | None) -> list[tuple[str, str]]:
    """``(label, spec)`` pairs; one build folder (with ``onnx/dense`` and ``onnx/pruned``) becomes dense + pruned."""
    if len(specs) == 1 and not labels:
        root = Path(specs[0])
        if (root / "onnx" / "dense" / "export.json").is_file() and (root / "onnx" / "pruned" / "export.json").is_file():
            return [("dense", str(root / "onnx" / "dense")), ("pruned", str(root / "onnx" / "pruned"))]
    names = list(labels) if labels else (["dense", "pruned"] if len(specs) == 2 else [Path(s).name or s for s in specs])
    if len(names) != len(specs) or len(set(names)) != len(names):
        raise OptinError(f"need {len(specs)} distinct labels, got {names}")
    return list(zip(names, specs))


def related_bundle(spec: str, fmt: str) -> Path | None:
    """The bundle of format ``fmt`` holding the same model as ``spec``: ``spec`` itself, or in a build-like layout
    (``ROOT/onnx/LABEL``, ``ROOT/aoti/LABEL``) the folder of the other format with the same label."""
    from .runtimes.base import read_manifest

    p = Path(spec)
    if not p.exists():
        return None
    folder = p.parent if p.is_file() else p
    m = read_manifest(folder)
    if m is not None and m.get("format") == fmt:
        return folder
    if m is None or folder.parent.name not in ("onnx", "aoti"):
        return None
    other = folder.parent.parent / fmt / folder.name
    m2 = read_manifest(other) if (other / "export.json").is_file() else None
    return other if m2 is not None and m2.get("format") == fmt else None


def variants(spec: str, runtime: str) -> tuple[list[dict], list[str]]:
    """What ``runtime`` runs of one model: ``[{"precision", "path"}]`` and notes on what it cannot run."""
    from .runtimes.base import read_manifest

    if RUNTIME_FORMAT.get(runtime) == "aoti":
        b = related_bundle(spec, "aoti")
        if b is None:
            return [], [f"{spec}: no AOTInductor package beside it (ROOT/aoti/LABEL); not timed on {runtime} "
                        f"(make one with: optin-deploy export MODEL --format aoti --out ROOT/aoti/LABEL)"]
        return [{"precision": "fp32", "path": str(b)}], []
    p = Path(spec)
    manifest = read_manifest(p) if p.exists() else None
    if manifest is not None and manifest.get("format") == "aoti":  # an AOTInductor bundle: the ONNX runtimes run its ONNX sibling
        b = related_bundle(spec, "onnx")
        if b is None:
            return [], [f"{spec}: an AOTInductor bundle with no ONNX bundle beside it (ROOT/onnx/LABEL); not timed on {runtime}"]
        p, manifest = b, read_manifest(b)
        spec = str(b)
    if manifest is None:
        if p.suffix != ".onnx" or not p.is_file():
            raise OptinError(f"{spec}: --runtimes compares exported ONNX artefacts; pass bundle folders (optin-deploy build / export) or .onnx files")
        files = [(_file_precision(p), p)]
    else:
        if manifest.get("format") != "onnx":
            raise OptinError(f"{spec} is a {manifest.get('format')} bundle; --runtimes compares ONNX bundles")
        art = Path(manifest["artifact"]) if not p.is_file() else p
        if not art.is_file():
            raise OptinError(f"bundle {spec} names the artifact {art.name}, which is missing; re-export the bundle")
        files = [(_file_precision(art) if p.is_file() else manifest.get("precision") or "fp32", art)]
        fp32 = ((manifest.get("artifacts") or {}).get("onnx") or {}).get("fp32_path")
        if not p.is_file() and files[0][0] != "fp32" and fp32 and Path(fp32).is_file():
            files.append(("fp32", Path(fp32)))
    out, notes = [], []
    for prec, path in files:
        if runtime.startswith("openvino-"):
            from .runtimes.openvino import PRECISIONS, read_error

            if PRECISIONS[runtime] == "bf16" and prec != "fp32":
                continue  # bf16 inference applies to the fp32 graph
            err = read_error(path)
            if err:
                notes.append(f"{spec}: {err} ({prec}); not timed on {runtime}")
                continue
            if PRECISIONS[runtime] == "bf16":
                prec = "bf16"
        out.append({"precision": prec, "path": str(path)})
    if not out:
        notes.append(f"{spec}: nothing {runtime} can run")
    return out, notes


def _file_precision(path: Path) -> str:
    import onnx

    try:
        ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    except Exception as exc:  # noqa: BLE001
        raise OptinError(f"{path} is not a readable ONNX model ({type(exc).__name__}); re-export it") from None
    return "int8" if ops & {"MatMulInteger", "QAttention", "DynamicQuantizeLinear", "QLinearMatMul", "MatMulIntegerToFloat"} else "fp32"


def side_by_side(models: Sequence[tuple[str, str]], runtimes: Sequence[str], *, batch: int = 8, seq_len: int = 128,
                 threads: int | None = None, warmup: int = 10, iters: int | None = 50, seconds: float | None = None,
                 block: int = 10, mode: str | None = None, progress: bool = True, settle_seconds: float = DEFAULT_SETTLE_S) -> dict:
    """Time every ``(model, runtime, precision)`` in one interleaved benchmark; returns the
    :func:`~optin_deploy.bench.benchmark` result with a ``side_by_side`` summary."""
    from .bench import bench_inputs, benchmark
    from .runtimes.base import get_runtime

    targets: dict[str, tuple[Any, Any]] = {}
    feeds: dict[str, dict] = {}
    rows: dict[str, dict] = {}
    notes: list[str] = []
    made: dict[str, dict] = {}
    for label, spec in models:
        x = made[label] = bench_inputs(spec, batch, seq_len)
        for rt in runtimes:
            vs, ns = variants(spec, rt)
            notes += ns
            for v in vs:
                key = f"{label}/{rt}/{v['precision']}"
                targets[key] = (get_runtime(rt, threads=threads), v["path"])
                feeds[key] = x
                rows[key] = {"model": label, "runtime": rt, "precision": v["precision"], "artifact": v["path"]}
    if not targets:
        raise OptinError("nothing to time: " + "; ".join(notes))
    from .bench import unrelated_inputs, warn_unrelated

    warn_unrelated(made)  # as plain bench does: a ratio between models fed different inputs is no speed-up
    unrelated = unrelated_inputs(made)
    result = benchmark(targets, feeds, warmup=warmup, iters=iters, seconds=seconds, baseline=next(iter(targets)), mode=mode or "blocks",
                       block=block, progress=progress, settle_seconds=settle_seconds)
    result["side_by_side"] = summarize(result, rows, [m for m, _ in models], list(runtimes), notes, unrelated)
    return result


def summarize(result: dict, rows: dict, model_labels: list[str], runtimes: list[str], notes: list[str], unrelated: Sequence[str] = ()) -> dict:
    """``unrelated``: models fed other inputs than the first (another modality, batch or length): no speed-up is computed
    for them (their time ratio is not one), and a note says so."""
    p50 = {k: result["models"][k]["p50_ms"] for k in rows}
    for k in rows:
        rows[k]["p50_ms"] = round(p50[k], 3)
    ways = []  # (runtime, precision) in first-seen order
    for r in rows.values():
        if (r["runtime"], r["precision"]) not in ways:
            ways.append((r["runtime"], r["precision"]))
    by_model = {m: sorted((k for k in rows if rows[k]["model"] == m), key=lambda k: p50[k]) for m in model_labels}
    out: dict = {"runtimes": runtimes, "rows": rows, "notes": notes,
                 "fastest": {m: ks[0] for m, ks in by_model.items() if ks},
                 "runner_up": {m: ks[1] for m, ks in by_model.items() if len(ks) > 1}}
    first = model_labels[0]
    # the reference group: the first model and its alternatives labelled FIRST-something (dense, dense-dynamo, ...)
    group = [m for m in model_labels if (m == first or m.startswith(first + "-")) and m not in unrelated]
    if len(group) < len(model_labels) and by_model.get(first):
        fastest_first = min((k for m in group for k in by_model[m]), key=lambda k: p50[k])
        out["reference"] = first
        out["reference_group"] = group
        out["fastest_reference"] = fastest_first
        out["speedup_same_way"] = {}
        out["speedup_vs_fastest_reference"] = {}
        for m in [m for m in model_labels if m not in group]:
            if m in unrelated:
                notes.append(f"{m} takes other inputs than {first}: no speed-up is given for it")
                continue
            for rt, prec in ways:
                a, b = f"{first}/{rt}/{prec}", f"{m}/{rt}/{prec}"
                if a in rows and b in rows:
                    out["speedup_same_way"][b] = round(p50[a] / p50[b], 3)
                if b in rows:
                    out["speedup_vs_fastest_reference"][b] = round(p50[fastest_first] / p50[b], 3)
    return out


def _ways(s: dict) -> list[tuple[str, str]]:
    ways = []
    for r in s["rows"].values():
        if (r["runtime"], r["precision"]) not in ways:
            ways.append((r["runtime"], r["precision"]))
    return ways


def markdown(result: dict) -> str:
    """The side-by-side table as Markdown (one row per runtime and precision, one p50 column per model)."""
    s = result["side_by_side"]
    models = list(dict.fromkeys(r["model"] for r in s["rows"].values()))
    ref = s.get("reference")
    later = [m for m in models if m not in s.get("reference_group", [ref])] if ref else []
    head = ["runtime", "precision"] + [f"{m} p50 ms" for m in models]
    for m in later:
        head += [f"{m} vs {ref} same way", f"{m} vs fastest {ref}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for rt, prec in _ways(s):
        cells = [rt, prec]
        for m in models:
            k = f"{m}/{rt}/{prec}"
            cells.append(f"{s['rows'][k]['p50_ms']:.2f}" + (" (fastest)" if s["fastest"].get(m) == k else "") if k in s["rows"] else "")
        for m in later:
            k = f"{m}/{rt}/{prec}"
            cells.append(f"x{s['speedup_same_way'][k]:.2f}" if k in s.get("speedup_same_way", {}) else "")
            cells.append(f"x{s['speedup_vs_fastest_reference'][k]:.2f}" if k in s.get("speedup_vs_fastest_reference", {}) else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + verdict_lines(s)) + "\n"


def verdict_lines(s: dict) -> list[str]:
    out = []
    if s.get("reference_group") and len(s["reference_group"]) > 1:
        r = s["rows"][s["fastest_reference"]]
        out.append(f"fastest {s['reference']} alternative (of {', '.join(s['reference_group'])}): {s['fastest_reference']} ({r['p50_ms']:.2f} ms)")
    for m, k in s["fastest"].items():
        r = s["rows"][k]
        line = f"fastest for {m}: {r['runtime']} {r['precision']} ({r['p50_ms']:.2f} ms)"
        ru = s["runner_up"].get(m)
        if ru:
            r2 = s["rows"][ru]
            line += f"; runner-up {r2['runtime']} {r2['precision']} ({r2['p50_ms']:.2f} ms, x{r2['p50_ms'] / r['p50_ms']:.2f} slower)"
        out.append(line)
    return out + [f"note: {n}" for n in s["notes"]]


def print_side_by_side(result: dict, console=None) -> None:
    from rich import box
    from .progress import new_console
    from rich.table import Table

    console = console or new_console()
    s = result["side_by_side"]
    models = list(dict.fromkeys(r["model"] for r in s["rows"].values()))
    ref = s.get("reference")
    later = [m for m in models if m not in s.get("reference_group", [ref])] if ref else []
    shape = next(iter(result["models"].values()))["input_shapes"]
    t = Table(title=f"p50 ms per batch {shape}, every runtime in the same interleaved blocks of {result.get('block')} runs",
              box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ["runtime", "precision"] + [f"{m} ms" for m in models] + sum(([f"x same way", f"x vs fastest {ref}"] for m in later), []):
        t.add_column(col, justify="left" if col in ("runtime", "precision") else "right", no_wrap=True)
    for rt, prec in _ways(s):
        cells = [rt, prec]
        for m in models:
            k = f"{m}/{rt}/{prec}"
            cells.append((f"{s['rows'][k]['p50_ms']:.1f}" + (" *" if s["fastest"].get(m) == k else "")) if k in s["rows"] else "—")
        for m in later:
            k = f"{m}/{rt}/{prec}"
            cells.append(f"x{s['speedup_same_way'][k]:.2f}" if k in s.get("speedup_same_way", {}) else "—")
            cells.append(f"x{s['speedup_vs_fastest_reference'][k]:.2f}" if k in s.get("speedup_vs_fastest_reference", {}) else "—")
        t.add_row(*cells)
    console.print(t)
    for line in verdict_lines(s):
        console.print(line)
    console.print("(* fastest; speed only: int8 / bf16 change accuracy, measure it with optin-deploy eval BUNDLE --runtime NAME)")


def compare_runtimes(models: Sequence[str], runtimes: str, *, runtime: str | None = None, labels: Sequence[str] | None = None,
                     batch: int | None = None, seq_len: int | None = None, threads: int | None = None, warmup: int = 10, iters: int | None = 50,
                     seconds: float | None = None, block: int = 10, mode: str | None = None, markdown_path: str | Path | None = None,
                     settle_seconds: float = DEFAULT_SETTLE_S) -> dict:
    """``optin-deploy bench --runtimes``: the models (a build folder, or dense and pruned) on every runtime of
    ``runtimes`` (comma-separated, or ``all``) side by side; optionally the table as Markdown in ``markdown_path``.
    Bad input fails before any model is loaded."""
    from .bench import check_bench_numbers
    from .runtimes.base import bench_settings

    batch, seq_len, threads, _ = bench_settings(models, batch, seq_len, threads)  # not given: the bundle's own
    check_bench_numbers(batch=batch, seq_len=seq_len, iters=iters or 1, warmup=warmup, seconds=seconds, threads=threads, settle_seconds=settle_seconds)
    if runtime is not None:
        raise OptinError("pass either --runtime (one runtime) or --runtimes (side by side), not both")
    names = parse_runtimes(runtimes)
    if not names:
        raise OptinError("--runtimes all: no CPU runtime can run here")
    pairs = expand_models(models, labels)
    result = side_by_side(pairs, names, batch=batch, seq_len=seq_len, threads=threads, warmup=warmup, iters=iters, seconds=seconds,
                          block=block, mode=mode, settle_seconds=settle_seconds)
    if markdown_path is not None:  # checked by the command before any work (safe_out.check_json_out)
        from .safe_out import MARKDOWN_MARK

        Path(markdown_path).write_text(MARKDOWN_MARK + "\n" + markdown(result))
    return result
