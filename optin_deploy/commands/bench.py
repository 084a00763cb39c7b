"""``optin-deploy bench``: dense vs pruned latency on a target runtime, in interleaved blocks of consecutive runs."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from . import options


def bench_cmd(
    models: List[str] = typer.Argument(..., help="Dense first, then pruned: export folders (BUNDLE/onnx/dense BUNDLE/onnx/pruned), artifact files (.onnx/.engine) or model folders; or one build folder (BUNDLE: its dense and pruned exports)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="torch-cpu, torch-cuda, ort-cpu, ort-cuda, ort-tensorrt, tensorrt, openvino-cpu, torch-aoti-cpu (default: each bundle's own)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU intra-op threads (default: a bundle's own, as its build measured; else the runtime's default)."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Batch size (default: a bundle's own; else 8)."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Tokens per sequence, text models (default: a bundle's own; else 128)."),
    warmup: int = typer.Option(10, "--warmup", help="Untimed runs per model before timing starts."),
    iters: int = typer.Option(50, "--iters", help="Timed runs per model (ignored with --seconds)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Time budget instead of --iters."),
    interleave: bool = typer.Option(True, "--interleave/--sequential", help="Alternate the models (default) or time one after the other."),
    mode: Optional[str] = typer.Option(None, "--mode", help="blocks (default: --block consecutive runs per model, models alternating), interleaved (one run each, round-robin) or sequential."),
    block: int = typer.Option(10, "--block", help="Consecutive timed runs per model per block (--mode blocks)."),
    settle_ms: float = typer.Option(50.0, "--settle-ms", help="Untimed runs for this long (ms, at least one run) before each block: a model comes back to speed after another held the cores."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels (default: dense,pruned or the folder names)."),
    json_out: Optional[str] = options.JSON_OUT,
    compile: bool = typer.Option(False, "--compile", help="torch runtimes: use torch.compile."),
    runtimes: Optional[str] = typer.Option(None, "--runtimes", help="Time every model on each of these CPU runtimes side by side, in the same interleaved blocks: comma-separated (ort-cpu, openvino-cpu, openvino-cpu-bf16, torch-aoti-cpu) or 'all' (every one installed here). Bundles run their int8 artifact and their fp32 graph; torch-aoti-cpu runs the AOTInductor package in ROOT/aoti/LABEL beside ROOT/onnx/LABEL (optin-deploy export --format aoti); one build folder means its dense and pruned models."),
    markdown: Optional[Path] = typer.Option(None, "--markdown", help="With --runtimes: write the side-by-side table as Markdown here."),
) -> None:
    """Benchmark models (the first is the baseline) and print p50/p90/p99 latency, throughput and speed-up."""
    from ..bench import bench_artifacts, print_bench_table

    if json_out is not None and markdown is not None and str(json_out) != "-" and Path(json_out).resolve() == Path(markdown).resolve():
        from ..errors import OptinError

        raise OptinError(f"--json {json_out} and --markdown {markdown} are the same file; pass two file names")
    if not interleave:  # --sequential is --mode sequential (also with --runtimes, which took only --mode); never ignored
        if mode not in (None, "sequential"):
            from ..errors import OptinError

            raise OptinError(f"--sequential (--mode sequential) contradicts --mode {mode}; pass only one of them")
        mode = "sequential"
    options.check_json(json_out, protect=[*models, markdown])  # bench has no --force
    if markdown is not None:  # the same rules as --json: never an input, never a file optin-deploy did not write
        from ..safe_out import check_json_out, markdown_is_ours

        check_json_out(str(markdown), protect=[*models, *([json_out] if json_out not in (None, "-") else [])], flag="--markdown", ours=markdown_is_ours)
    human = options.human_console(json_out)  # stderr with --json -: stdout holds only the JSON
    if runtimes is not None:
        from ..bench_runtimes import compare_runtimes, print_side_by_side

        with options.human_stdout(json_out):  # --json -: progress and the table on stderr, stdout holds only the JSON
            result = compare_runtimes(models, runtimes, runtime=runtime, labels=labels.split(",") if labels else None, batch=batch, seq_len=seq_len,
                                      threads=threads, warmup=warmup, iters=None if seconds else iters, seconds=seconds, block=block, mode=mode,
                                      markdown_path=markdown, settle_seconds=settle_ms / 1e3)
            print_side_by_side(result, console=human)
        options.emit_json(json_out, result)
        if markdown:
            options.echo(f"wrote {markdown}", json_out)
        return
    if markdown is not None:
        from ..errors import OptinError

        raise OptinError("--markdown writes the side-by-side table: it needs --runtimes")
    from ..runtimes.base import expand_bundle

    models = expand_bundle(models, runtime)
    with options.human_stdout(json_out):
        result = bench_artifacts(models, runtime=runtime, threads=threads, batch=batch, seq_len=seq_len, warmup=warmup, iters=iters,
                                 seconds=seconds, interleave=interleave, mode=mode, block=block, compile=compile,
                                 labels=labels.split(",") if labels else None, settle_seconds=settle_ms / 1e3)
        print_bench_table(result, console=human)
    options.emit_json(json_out, result)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
