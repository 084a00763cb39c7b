"""``optin-deploy eval``: task metrics of dense and pruned models through their runtimes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer


def eval_cmd(
    models: List[str] = typer.Argument(..., help="Dense first, then pruned: bundle folders, artifact files or model folders."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set (default: the one the model records)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model folder/zoo name giving the tokenizer and data (default: the first argument's source)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="Runtime for all models (default: each bundle's own; torch-cpu for model folders)."),
    threads: Optional[int] = typer.Option(None, "--threads"),
    split: str = typer.Option("test", "--split", help="test or validation."),
    batch_size: int = typer.Option(64, "--batch-size"),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels (default: dense,pruned or the folder names)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the result as JSON here."),
) -> None:
    """Accuracy / macro-F1 / Spearman of each model on the target runtime, and pruned-vs-dense agreement."""
    from ..errors import OptinError
    from ..evaluate import evaluate, print_eval_table
    from ..runtimes.base import get_runtime, resolve_artifact
    from ..zoo import load_task

    if split not in ("test", "validation"):
        raise OptinError(f"--split must be test or validation, not {split!r}")
    names = labels.split(",") if labels else (["dense", "pruned"] if len(models) == 2 else [Path(m).name or m for m in models])
    if len(names) != len(models) or len(set(names)) != len(names):
        raise OptinError(f"need {len(models)} distinct labels, got {names}")
    if batch_size < 1:
        raise OptinError(f"--batch-size must be at least 1, got {batch_size}")
    targets = {}
    sources = []
    for label, spec in zip(names, models):
        rt_name, artifact, manifest = resolve_artifact(spec, runtime)
        targets[label] = (get_runtime(rt_name, threads=threads), artifact)
        sources.append((manifest or {}).get("source") or (None if manifest else spec))
    source = model
    if source is None:  # prefer a source that records its data (a bundle's pruned/ folder does)
        recorded = [s for s in sources if s and any((Path(s) / f).is_file() for f in ("optin_task.json", "zoo_info.json"))]
        source = recorded[0] if recorded else next((s for s in sources if s), None)
    if source is None:
        raise OptinError("cannot tell which model/data these bundles come from; pass --model MODEL_DIR")
    task = load_task(source, data, max_length=None)
    result = evaluate(task, targets, split=split, batch_size=batch_size, baseline=names[0])
    print_eval_table(result)
    if json_out:
        from ..safe_out import write_json

        json_out.parent.mkdir(parents=True, exist_ok=True)
        write_json(json_out, result, indent=2)
        typer.echo(f"wrote {json_out}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
