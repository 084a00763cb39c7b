"""``optin-deploy eval``: task metrics of dense and pruned models through their runtimes."""

from __future__ import annotations

from typing import List, Optional

import typer

from . import options


def eval_cmd(
    models: List[str] = typer.Argument(..., help="Dense first, then pruned: export folders (BUNDLE/onnx/dense BUNDLE/onnx/pruned), artifact files or model folders; or one build folder (BUNDLE: its dense and pruned exports)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set (default: the one the model records)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model folder/zoo name giving the tokenizer and data (default: the first argument's source)."),
    runtime: Optional[str] = typer.Option(None, "--runtime", "-r", help="Runtime for all models (default: each bundle's own; torch-cpu for model folders)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU intra-op threads (default: the runtime's)."),
    eval_split: str = options.EVAL_SPLIT,
    batch_size: int = typer.Option(64, "--batch-size", help="Samples per inference call."),
    text_column: Optional[str] = typer.Option(None, "--text-column", help="With --data: its text column (two, comma-separated, for sentence pairs); default: the one the model records, else text."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="With --data: its label column; default: the one the model records, else label."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Comma-separated labels (default: dense,pruned or the folder names)."),
    json_out: Optional[str] = options.JSON_OUT,
    split: Optional[str] = options.OLD_SPLIT,
) -> None:
    """Accuracy / macro-F1 / Spearman of each model on the target runtime, and pruned-vs-dense agreement."""
    from ..evaluate import evaluate_artifacts, print_eval_table

    split = options.alias("--eval-split", eval_split, "--split", split, default="test", check=options.check_split)
    options.check_json(json_out, protect=[*models, data, model])  # eval has no --force
    from ..runtimes.base import expand_bundle

    models = expand_bundle(models, runtime)
    with options.human_stdout(json_out):  # --json -: progress and the table on stderr, stdout holds only the JSON
        result = evaluate_artifacts(models, data=data, model=model, runtime=runtime, threads=threads, split=split, batch_size=batch_size,
                                    labels=labels.split(",") if labels else None, text_column=text_column, label_column=label_column)
        print_eval_table(result, console=options.human_console(json_out))
    options.emit_json(json_out, result)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
