"""``optin-deploy bench``: dense vs pruned latency on a target runtime, in interleaved blocks of consecutive runs."""

from __future__ import annotations

from typing import List, Optional

import typer

from . import options


def bench_cmd(
    models: List[str] = typer.Argument(..., help="Dense first, then pruned: bundle folders, artifact files (.onnx/.engine) or model folders."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="torch-cpu, torch-cuda, ort-cpu, ort-cuda, ort-tensorrt, tensorrt (default: each bundle's own)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU intra-op threads."),
    batch: int = typer.Option(8, "--batch"),
    seq_len: int = typer.Option(128, "--seq-len", help="Tokens per sequence (text models)."),
    warmup: int = typer.Option(10, "--warmup"),
    iters: int = typer.Option(50, "--iters", help="Timed runs per model (ignored with --seconds)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Time budget instead of --iters."),
    interleave: bool = typer.Option(True, "--interleave/--sequential", help="Alternate the models (default) or time one after the other."),
    mode: Optional[str] = typer.Option(None, "--mode", help="blocks (default: --block consecutive runs per model, models alternating), interleaved (one run each, round-robin) or sequential."),
    block: int = typer.Option(10, "--block", help="Consecutive timed runs per model per block (--mode blocks)."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels (default: dense,pruned or the folder names)."),
    json_out: Optional[str] = options.JSON_OUT,
    compile: bool = typer.Option(False, "--compile", help="torch runtimes: use torch.compile."),
) -> None:
    """Benchmark models (the first is the baseline) and print p50/p90/p99 latency, throughput and speed-up."""
    from ..bench import bench_artifacts, print_bench_table

    result = bench_artifacts(models, runtime=runtime, threads=threads, batch=batch, seq_len=seq_len, warmup=warmup, iters=iters,
                             seconds=seconds, interleave=interleave, mode=mode, block=block, compile=compile,
                             labels=labels.split(",") if labels else None)
    print_bench_table(result)
    options.emit_json(json_out, result)


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
