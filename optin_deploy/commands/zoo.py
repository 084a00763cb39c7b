"""``optin-deploy zoo``: list, prepare and evaluate the built-in task models."""

from __future__ import annotations

from typing import Optional

import typer

from . import options

zoo_app = typer.Typer(
    name="zoo",
    help="The built-in task models, trained once on first use and cached (~/.cache/optin-deploy or $OPTIN_DEPLOY_CACHE).",
    no_args_is_help=True,
)


@zoo_app.command("list")
def list_cmd() -> None:
    """List the zoo's models, whether they are prepared and their test accuracy."""
    from .. import zoo

    for t in zoo.list_tasks():
        acc = (f"test accuracy {t['test_accuracy'] * 100:.1f}%" if t["test_accuracy"] is not None
               else "prepared (sentence embeddings, no labels)" if t["prepared"]
               else f"record damaged: optin-deploy zoo prepare {t['name']} --force" if t["damaged"] else "not prepared")
        default = " (default)" if t["default"] else ""
        typer.echo(f"{t['name']}{default}: {t['description']}")
        typer.echo(f"    data {t['data']}; {acc}; {t['path']}")


@zoo_app.command("prepare")
def prepare_cmd(
    name: Optional[str] = typer.Argument(None, help="A zoo model (default minilm-sentiment); 'all' prepares every one."),
    force: bool = typer.Option(False, "--force", help="Retrain even if already cached."),
) -> None:
    """Train and cache a zoo model (once; later runs reuse it)."""
    from .. import zoo

    for n in zoo.zoo_names(name):
        folder = zoo.prepare(n, force=force)
        i = zoo.info(n) or {}
        if i.get("task") == "embedding":
            typer.echo(f"{n}: the model as shipped with its sentence-transformers pooling (no training); {folder}")
            continue
        typer.echo(
            f"{n}: test accuracy {i.get('test_accuracy', float('nan')) * 100:.2f}% "
            f"(macro-F1 {i.get('test_macro_f1', float('nan')) * 100:.2f}%), validation accuracy "
            f"{i.get('validation_accuracy', float('nan')) * 100:.2f}%, trained in {i.get('train_seconds', float('nan')):.0f}s; {folder}"
        )


@zoo_app.command("eval")
def eval_cmd(
    name: str = typer.Argument(..., help="A zoo model."),
    eval_split: str = options.EVAL_SPLIT,
    batch_size: int = typer.Option(64, help="Inference batch size."),
    split: Optional[str] = options.OLD_SPLIT,
) -> None:
    """Dense PyTorch accuracy of a zoo model on its test split."""
    from .. import zoo

    split = options.alias("--eval-split", eval_split, "--split", split, default="test", check=options.check_split)
    m = zoo.evaluate_zoo_model(name, split, batch_size)
    typer.echo(
        f"{name} on {m['data']} {split} ({m['n']} examples, PyTorch dense): accuracy {m['accuracy'] * 100:.2f}%, "
        f"macro-F1 {m['macro_f1'] * 100:.2f}% ({m['seconds']:.1f}s)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
