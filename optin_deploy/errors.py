"""User-facing errors.

Every problem caused by the user's input (a bad flag, a missing file, an unsupported model, a missing
runtime) is raised as :class:`OptinError` with a one-line message saying what is wrong and what to
do. The CLI prints that line and exits non-zero; it never prints a traceback for these.
"""


# Exit codes (documented in the README):
EXIT_OK = 0
EXIT_INTERNAL = 1  #: a bug in optin-deploy (one line; the traceback with --debug or OPTIN_DEPLOY_DEBUG=1)
EXIT_USAGE = 2  #: bad input: a wrong option, value, path, model or data (OptinError and usage errors)
EXIT_RUNTIME = 3  #: a runtime the command needs (TensorRT, CUDA, a provider) is missing here
EXIT_GATE = 4  #: build --max-accuracy-drop: the pruned model failed the quality gate
EXIT_IO = 5  #: the file system failed (disk full, permission denied) while writing; nothing half-written is left
# 130 / 143 / 129: stopped by SIGINT (Ctrl-C) / SIGTERM / SIGHUP; staging removed
# 141: stdout or stderr lost its reader (a closed pipe, as SIGPIPE); staging removed (optin_deploy.cli._output_closed)


class OptinError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    exit_code = 2


class MissingRuntimeError(OptinError):
    """An optional runtime (TensorRT, torch-tensorrt, CUDA) is not available here."""

    exit_code = 3


class QualityGateError(OptinError):
    """The pruned model failed the accuracy gate (``--max-accuracy-drop``)."""

    exit_code = 4


class StorageError(OptinError):
    """Writing failed (disk full, permission denied); nothing half-written was left behind."""

    exit_code = EXIT_IO


def short_reason(exc: BaseException | str, limit: int = 200) -> str:
    """The first informative line of an error, at most ``limit`` characters, cut at a word boundary.

    torch's "Weights only load failed ... Re-running torch.load with weights_only set to False"
    preamble is dropped (that advice runs code from the file): the line saying what it met is kept."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if any("weights only load failed" in ln.lower() for ln in lines):
        lines = [ln.split("WeightsUnpickler error:", 1)[-1].strip() for ln in lines
                 if "weights_only" not in ln.lower() and "weights only" not in ln.lower()
                 and not ln.lower().startswith(("check the documentation", "please file an issue"))] or ["weights-only loading failed"]
        lines = [ln for ln in lines if ln] or ["weights-only loading failed"]
    line = lines[0] if lines else ""
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0].rstrip(" ,;:(")
    return (cut or line[:limit]) + "..."
