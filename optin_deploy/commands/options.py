"""Command-line options shared by several commands (one definition, one help text).

Kept free of torch so that the CLI starts fast; the defaults mirror
:data:`optin_deploy.core.reconstruct.DEFAULT_FIT` / ``DEFAULT_DAMP`` and :data:`optin_deploy.pruning.REFIT_SAMPLES`
(a test checks that they agree).
"""

from __future__ import annotations

import typer

from ..profiles import DEFAULT_PROFILE

PROFILE = typer.Option(DEFAULT_PROFILE, "--profile", help="Target profile name or .toml file (see `optin-deploy profiles list`): its shapes, "
                       "threads, precision and runtime; --flops counts MACs at its sequence length. The default, x86-cpu, lets build "
                       "measure onnxruntime int8 and OpenVINO bf16 here and build for the faster (other commands take x86-cpu-ort).")

RECONSTRUCT = typer.Option(True, "--reconstruct/--no-reconstruct", help="After surgery, reconstruct: refit the kept units' output weights by damped least squares on the calibration batch (no labels; structure and cost unchanged).")
RECONSTRUCT_FIT = typer.Option("weights", "--reconstruct-fit", help="weights (the output projections' kept columns) | affine (those and the projections' biases) | scales (one scale per kept unit).")
RECONSTRUCT_DAMP = typer.Option(1.0, "--reconstruct-damp", help="Ridge damping of the reconstruction, towards plain surgery (> 0).")
REFIT_SAMPLES = typer.Option(0, "--refit-samples", help="Training samples the reconstruction fits on: the calibration draw extended to this many (fewer when the training split is smaller, or when the dense model's activations over them would take more than 2 GiB). 0 (default) or at most --calib-samples: the calibration batch (on MiniLM sentiment 512 measured no better).")

SEARCH_SAMPLES = typer.Option(0, "--search-samples", help="Budget search / sweep: size of the fixed validation subset each candidate is evaluated on (the whole split when smaller). 0: the whole split when one pass of the dense model over it takes at most 2 s here, else the share that fits (at least 400).")
SEARCH_CANDIDATES = typer.Option(5, "--search-candidates", help="Budget search: the most candidate budgets measured.")
SEARCH_ROUNDS = typer.Option(12, "--search-rounds", help="Budget search / sweep: timed runs per model (with --max-accuracy-drop all candidates are timed with dense in one interleaved run after the search; otherwise each against dense).")


def parse_budgets(text: str, flag: str) -> list[float]:
    """``"0.5,0.6"`` -> ``[0.5, 0.6]``, or a one-line error naming ``flag``."""
    from ..errors import OptinError

    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise OptinError(f"{flag} takes comma-separated fractions of the dense MACs such as 0.5,0.7, got {text!r}") from None
    if not vals or any(not 0 < v <= 1 for v in vals):
        raise OptinError(f"{flag} takes fractions of the dense MACs in (0, 1] such as 0.5,0.7, got {text!r}")
    return vals


def parse_range(text: str, flag: str) -> tuple[float, float]:
    from ..errors import OptinError

    try:
        lo, hi = (float(x) for x in text.split(":"))
    except ValueError:
        raise OptinError(f"{flag} takes LOW:HIGH fractions of the dense MACs such as 0.1:0.99, got {text!r}") from None
    return lo, hi


# ------------------------------------------------------------------ the flags every command spells alike
# One name per thing across commands (the README's command table lists them). Old spellings stay as
# hidden options that warn once and map onto the new one (see ``alias``).

DATA_HELP = "Data: a built-in data set, a CSV/JSONL file, a saved HF dataset or an image folder (default: the model's own)."
CALIB_SAMPLES = typer.Option(128, "--calib-samples", help="Unlabelled calibration samples (training split; the paper uses 128).")
CALIB_LENGTH = typer.Option(64, "--calib-length", help="Token length of text calibration samples.")
SEED = typer.Option(0, "--seed", help="Seed of the calibration draw, the random / fast scorers and the search's validation subset (0 to 2**32 - 1).")
LABEL_COLUMN = typer.Option("label", "--label-column", help="The label column of CSV/JSONL/saved-dataset data.")
EVAL_SPLIT = typer.Option("test", "--eval-split", help="Split the accuracy figures are computed on: test or validation.")
JSON_OUT = typer.Option(None, "--json", metavar="PATH", help="Also write the machine-readable result as JSON to PATH ('-': stdout).")
FORCE = typer.Option(False, "--force", help="Replace --out even if optin-deploy did not write it (never /, your home, the current folder or the inputs' folders).")

# hidden, deprecated spellings
OLD_CALIB = typer.Option(None, "--calib", hidden=True, help="Deprecated: --data.")
OLD_MAX_LENGTH = typer.Option(None, "--max-length", hidden=True, help="Deprecated: --calib-length.")
OLD_SPLIT = typer.Option(None, "--split", hidden=True, help="Deprecated: --eval-split.")


def alias(new_flag: str, new_value, old_flag: str, old_value, default=None, check=None):
    """The value of ``new_flag``, or of its deprecated spelling ``old_flag`` (with a one-line warning,
    after ``check(value, old_flag)`` accepted it, so that a bad value still gives one error line).
    Both given (and different from ``new_flag``'s default): a one-line error."""
    if old_value is None:
        return new_value if check is None else check(new_value, new_flag)
    from ..errors import OptinError
    from ..progress import warn

    if new_value is not None and new_value != default:
        raise OptinError(f"{old_flag} is the old spelling of {new_flag}: pass only {new_flag}")
    if check is not None:
        old_value = check(old_value, old_flag)
    warn(f"{old_flag} is deprecated; use {new_flag}")
    return old_value


def check_split(split: str, flag: str = "--eval-split") -> str:
    if split not in ("test", "validation"):
        from ..errors import OptinError

        raise OptinError(f"{flag} must be test or validation, not {split!r}")
    return split


def check_json(path: str | None, *, force: bool | None = None, protect=(), outs=()) -> None:
    """``--json PATH`` checked at the start of a command, before any expensive work (see
    :func:`optin_deploy.safe_out.check_json_out`): ``-`` is stdout; the folder must exist; no folder, pipe
    or device; an existing file only when a previous ``--json`` wrote it (else ``--force``, where the
    command has it: ``force=None`` when it has not); never one of the command's inputs (``protect``)
    or a file inside its ``--out`` (``outs``)."""
    from ..safe_out import check_json_out

    check_json_out(path, force=force, protect=protect, outs=outs)


def _json_on_stdout(json_out: str | None) -> bool:
    return json_out is not None and str(json_out) == "-"


def human_console(json_out: str | None):
    """The console for a command's human output: stderr with ``--json -`` (stdout then holds only the
    JSON, so it can be piped into a JSON reader), else stdout."""
    from ..progress import new_console

    return new_console(stderr=_json_on_stdout(json_out))


def human_stdout(json_out: str | None):
    """Context manager: with ``--json -``, what the work prints on ``sys.stdout`` (progress bars, tables of
    the library functions) goes to stderr, so that stdout holds only the JSON printed after it."""
    import contextlib
    import sys

    if _json_on_stdout(json_out):
        return contextlib.redirect_stdout(sys.stderr)
    return contextlib.nullcontext()


def echo(message: str, json_out: str | None) -> None:
    """``typer.echo`` for a human line: on stderr with ``--json -``."""
    typer.echo(message, err=_json_on_stdout(json_out))


def emit_json(path: str | None, result) -> None:
    """``--json PATH``: write ``result`` (strict JSON, NaN/inf as null) to PATH, or to stdout for ``-``.

    A file gets one more top-level key when ``result`` is a dict, ``"written_by": "optin-deploy --json"``
    (:func:`optin_deploy.safe_out.mark_json`), by which :func:`check_json` recognises it as replaceable on
    the next run. PATH was checked by :func:`check_json` at the start of the command; no folder is created."""
    if path is None:
        return
    import json
    from pathlib import Path

    from ..safe_out import finite, mark_json, write_json

    if str(path) == "-":
        typer.echo(json.dumps(finite(result), indent=1, default=float, allow_nan=False))
        return
    p = Path(path)
    write_json(p, mark_json(result), indent=2)
    typer.echo(f"wrote {p}")


def bare_json_flag(args: list[str]) -> list[str]:
    """Compatibility: ``--json`` used to be a bare flag of build and prune (print on stdout); a
    ``--json`` with no value (last, or followed by another option) still means ``--json -``."""
    out = []
    for i, a in enumerate(args):
        out.append(a)
        if a == "--json" and (i + 1 == len(args) or args[i + 1].startswith("--")):
            out.append("-")
    return out
