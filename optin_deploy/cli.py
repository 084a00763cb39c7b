"""The ``optin-deploy`` command line.

Each command lives in its own module under :mod:`optin_deploy.commands` and registers itself on
:data:`app`; this file only wires them together and turns :class:`OptinError` into one line on
stderr and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import sys

import typer

from .errors import OptinError

app = typer.Typer(
    name="optin-deploy",
    help="Prune a pre-trained transformer in one shot with OPTIN, remove the pruned heads and "
    "neurons, export it (ONNX, TensorRT) and prove on the target runtime that it is accurate and faster.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One module per command (or command group); each calls ``register(app)``.
COMMAND_MODULES = [
    "prune",
    "export",
    "bench",
    "evaluate",
    "build",
    "zoo",
    "profiles",
    "lut",
    "sweep",
]


def _register_all() -> None:
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"optin_deploy.commands.{name}")
        except ModuleNotFoundError as exc:  # a command module not written yet
            if exc.name == f"optin_deploy.commands.{name}":
                continue
            raise
        module.register(app)


_register_all()


def main() -> None:
    try:
        app(standalone_mode=False)
    except OptinError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # click usage errors etc.
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
