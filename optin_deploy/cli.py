"""The ``optin-deploy`` command line.

Each command lives in its own module under :mod:`optin_deploy.commands` and registers itself on
:data:`app`; this file only wires them together and turns :class:`OptinError` into one line on
stderr and a non-zero exit code.
"""

from __future__ import annotations

import importlib
import os
import sys

import typer

from . import interrupts
from .errors import EXIT_INTERNAL, EXIT_IO, EXIT_USAGE, OptinError, short_reason

DEBUG_ENV = "OPTIN_DEPLOY_DEBUG"

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
    """Import every command module and register it. A module that fails to import is a bug and
    stops the CLI with its ImportError (never a command silently missing from ``--help``)."""
    for name in COMMAND_MODULES:
        importlib.import_module(f"optin_deploy.commands.{name}").register(app)


_register_all()


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _fail(message: str, code: int) -> None:
    message = " ".join(str(message).split())  # always one line
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    sys.exit(code)


def _interrupted(exc: BaseException) -> None:
    import signal

    interrupts.mark_handled()
    signum = getattr(exc, "signum", signal.SIGINT)
    name = {signal.SIGINT: "SIGINT (Ctrl-C)", signal.SIGTERM: "SIGTERM", getattr(signal, "SIGHUP", -1): "SIGHUP (its terminal closed)"}.get(signum, f"signal {signum}")
    done = interrupts.published()
    if done:  # the stop came after the output was put in place: it is complete, only what followed was cut
        typer.secho(f"error: interrupted by {name} after {', '.join(done)} was written in full (complete and usable); "
                    f"what follows it (the summary, --json) may be missing", err=True, fg=typer.colors.RED)
        sys.exit(128 + int(signum))
    typer.secho(f"error: interrupted by {name}; stopped, no staging or half-written output left behind", err=True, fg=typer.colors.RED)
    sys.exit(128 + int(signum))


def _broken_pipe(exc: BaseException) -> bool:
    """Whether ``exc`` is, or was raised while handling, a write to a closed pipe: typer turns an EPIPE into a bare
    ``sys.exit(1)``, and rich (a console whose reader went away) into ``SystemExit(1)``, both inside the handler."""
    import errno

    seen, e = 0, exc
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno == errno.EPIPE:
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _output_closed() -> None:
    """The reader of stdout or stderr went away (``optin-deploy ... | head -1``): stop as SIGPIPE stops a command, exit
    128 + SIGPIPE (141), with the stop line on stderr when it is still open; the staging folder is already removed."""
    import signal

    interrupts.mark_handled()
    devnull = None
    for stream in (sys.stdout, sys.stderr):  # a closed stream's pending text would fail again as Python exits
        try:
            stream.flush()
        except (OSError, ValueError):
            try:
                devnull = devnull if devnull is not None else os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
            except (OSError, ValueError):
                pass
    done = interrupts.published()
    what = (f"after {', '.join(done)} was written in full (complete and usable); what follows it (the summary, --json) is missing"
            if done else "no staging or half-written output left behind")
    try:
        typer.secho(f"error: stopped: the output pipe was closed (its reader, such as head, exited); {what}", err=True, fg=typer.colors.RED)
    except (OSError, ValueError):  # stderr is the closed one
        pass
    sys.exit(128 + int(signal.SIGPIPE))


def _click_exceptions() -> dict:
    """click's exception classes, as typer raises them (recent typer vendors click as typer._click)."""
    mods = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return {n: tuple(getattr(m, n) for m in mods if hasattr(m, n)) for n in ("Abort", "ClickException", "Exit")}


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every failure ends with one ``error: ...`` line on stderr and an exit code from
    :mod:`optin_deploy.errors` (130/143 after SIGINT/SIGTERM). ``--debug`` anywhere on the command
    line, or ``OPTIN_DEPLOY_DEBUG=1``, shows the traceback instead."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled()
    if "--debug" in args:
        args.remove("--debug")
        debug = True
    from .commands.options import bare_json_flag

    args = bare_json_flag(args)
    previous = interrupts.install()
    try:
        _run(args, debug)
    finally:
        if argv is None:  # the console script: this process ends now, and a late signal must not change its outcome
            interrupts.ignore_until_exit()
        else:  # called in-process (tests, a caller's script): give the caller its handlers back
            interrupts.restore(previous)


#: options whose empty value means something: ``build --search-reference ""`` (its default) measures no reference budget
EMPTY_ALLOWED = frozenset({"search_reference"})


def _refuse_empty_values(command) -> None:
    """Every option and argument of ``command`` (and of its subcommands) refuses an empty string, before any work.

    ``--data ""`` (an unset shell variable: ``--data "$DATA"``) was read as the current folder: an image folder of
    the source tree, a "model folder without config.json", ``--out .`` or ``--lut .``. The check runs on the value as
    typed, before click turns it into a ``Path`` (where ``Path("")`` is ``.``)."""
    for sub in getattr(command, "commands", {}).values():
        _refuse_empty_values(sub)
    for param in getattr(command, "params", []):
        if param.name in EMPTY_ALLOWED or getattr(param, "is_flag", False) or getattr(param, "_refuses_empty", False):
            continue
        param.process_value = _refusing_empty(param, param.process_value)
        param._refuses_empty = True


def _refusing_empty(param, process_value):
    def checked(ctx, value):
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, str) and v == "" for v in values):
            leave_out = ", or leave the option out for its default" if param.param_type_name == "option" else ""
            raise click_bad_parameter()(
                f"'' is empty (an unset shell variable?), and an empty value is never read as the current folder: pass a "
                f"value ('.' for the current folder){leave_out}", ctx=ctx, param=param)
        return process_value(ctx, value)

    return checked


def click_bad_parameter():
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            return importlib.import_module(name).BadParameter
        except (ImportError, AttributeError):
            continue
    raise ImportError("click's BadParameter")  # pragma: no cover - typer always brings click


def _run(args: list[str], debug: bool) -> None:
    click_exc = _click_exceptions()
    try:
        command = typer.main.get_command(app)  # what app(...) runs, with the empty-value check on every parameter
        _refuse_empty_values(command)
        rc = command(args=args, prog_name="optin-deploy", standalone_mode=False)
        if interrupts.received() is not None:  # typer caught the KeyboardInterrupt and returned 130: say so, with the right code
            _interrupted(interrupts.Terminated(interrupts.received()))
        if isinstance(rc, int) and rc != 0:
            sys.exit(rc)
    except OptinError as exc:
        if debug:
            raise
        _fail(str(exc), exc.exit_code)
    except click_exc["Abort"] as exc:  # click turns Ctrl-C into Abort
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, KeyboardInterrupt):
            _interrupted(cause)
        _interrupted(KeyboardInterrupt())
    except KeyboardInterrupt as exc:
        _interrupted(exc)
    except click_exc["ClickException"] as exc:  # usage errors: bad value, unknown option, missing argument
        if debug:
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # a bare command group: its help is the answer
            typer.echo(exc.ctx.get_help() if getattr(exc, "ctx", None) else "optin-deploy --help")
            sys.exit(0)
        cmd = f"{exc.ctx.command_path} --help" if getattr(exc, "ctx", None) is not None else "optin-deploy --help"
        _fail(f"{exc.format_message()} (see {cmd})", EXIT_USAGE)
    except click_exc["Exit"] as exc:
        sys.exit(exc.exit_code)
    except SystemExit as exc:
        if exc.code == 1 and _broken_pipe(exc):
            _output_closed()
        raise
    except BrokenPipeError:  # a write outside typer's command call
        _output_closed()
    except OSError as exc:
        if debug:
            raise
        import errno

        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno == errno.ENOSPC:
            _fail(f"no space left on the device{where}; free some space or write elsewhere", EXIT_IO)
        _fail(f"{exc.strerror or type(exc).__name__}{where}; check the path and its permissions", EXIT_IO)
    except Exception as exc:  # a bug: one line, the traceback only on request
        if debug:
            raise
        from .safe_out import storage_error_in

        storage = storage_error_in(exc, "the output")  # a library's own error for a full disk (safetensors'): not a bug
        if storage is not None:
            _fail(f"{storage} ({short_reason(exc, 200)})", storage.exit_code)
        first = short_reason(exc, 300)
        _fail(f"internal error {type(exc).__name__}: {first} (a bug in optin-deploy; rerun with --debug or {DEBUG_ENV}=1 for the traceback)", EXIT_INTERNAL)


if __name__ == "__main__":
    main()
