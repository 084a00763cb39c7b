"""``optin-deploy export``: export a (pruned) model to ONNX, TensorRT or an AOTInductor package, parity-checked."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def export_cmd(
    model_dir: str = typer.Argument(..., help="A pruned-model folder, a transformers folder, a hub name or timm:NAME."),
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write (model.onnx / model.engine / model.pt2, parity.json, export.json)."),
    fmt: str = typer.Option("onnx", "--format", "-f", help="onnx, tensorrt, or aoti (PyTorch AOTInductor package model.pt2 for the CPU or, with --device cuda, a CUDA GPU; run with --runtime torch-aoti-cpu / torch-aoti-cuda; compiling needs g++ and takes minutes)."),
    device: str = typer.Option("cpu", "--device", help="Only with --format aoti: cpu (fp32) or cuda (fp32, fp16 or bf16), the device the package is compiled for."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Only with --format tensorrt: tensorrt (engine from ONNX, the default) or torch-tensorrt."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, fp16 or bf16 (fp16/bf16: TensorRT, or --format aoti --device cuda; bf16 needs an Ampere+ GPU)."),
    batch: int = typer.Option(8, "--batch", help="Optimal (opt) batch size; also the example batch."),
    seq_len: Optional[int] = typer.Option(None, "--seq-len", help="Optimal (opt) sequence length for text models. Default: 128, at most --max-seq-len."),
    min_batch: int = typer.Option(1, "--min-batch", help="Smallest batch the graph / engine accepts (TensorRT profile min)."),
    max_batch: int = typer.Option(64, "--max-batch", help="Largest batch the graph / engine accepts (TensorRT profile max; at least --batch)."),
    min_seq_len: int = typer.Option(1, "--min-seq-len", help="Shortest sequence the graph / engine accepts, text models."),
    max_seq_len: Optional[int] = typer.Option(None, "--max-seq-len", help="Default: min(512, the model's position embeddings)."),
    optimize: bool = typer.Option(False, "--optimize", help="Also write an onnxruntime-optimised graph (kept only if it passes parity)."),
    opset: Optional[int] = typer.Option(None, "--opset", help="ONNX opset (default: the exporter's)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set for real parity inputs (default: the model's recorded data, else built-in sentences / random pixels)."),
    workspace_gb: float = typer.Option(4.0, "--workspace-gb", help="TensorRT builder workspace limit."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="TensorRT timing cache file (reused across builds)."),
    force: bool = typer.Option(False, "--force", help="Replace --out even if optin-deploy did not write it (never /, your home, the current folder or the inputs' folders)."),
) -> None:
    """Export MODEL_DIR and check it against PyTorch on real inputs at two shapes."""
    from ..exporters.export_folder import export_model_dir

    if backend is not None and fmt != "tensorrt":  # it would be ignored: say so instead of exporting something else than asked
        from ..errors import OptinError

        raise OptinError(f"--backend {backend} applies to --format tensorrt only; drop --backend, or pass --format tensorrt")
    backend = backend or "tensorrt"
    m = export_model_dir(
        model_dir, out, fmt=fmt, backend=backend, precision=precision, batch=batch, seq_len=seq_len,
        min_batch=min_batch, max_batch=max_batch, min_seq_len=min_seq_len, max_seq_len=max_seq_len,
        optimize=optimize, opset=opset, data=data, workspace_gb=workspace_gb, timing_cache=timing_cache, force=force, device=device,
    )
    for name, par in m["parity"].items():
        if par:
            pooled = par.get("agreement", par["min_agreement"])
            agree = "n/a" if pooled is None else f"{pooled:.1%}"
            typer.echo(f"{name}: parity passed (max |diff| {par['max_abs_diff']:.2e}, argmax agreement {agree}, {len(par['cases'])} shapes)")
    if m.get("optimized") and not m["optimized"].get("kept"):
        typer.echo(f"optimised graph dropped: {m['optimized'].get('reason')}")
    typer.echo(f"wrote {out} (artifact {Path(m['artifact']).name}, runtime {m['runtime']})")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
