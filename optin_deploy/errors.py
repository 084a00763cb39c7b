"""User-facing errors.

Every problem caused by the user's input (a bad flag, a missing file, an unsupported model, a missing
runtime) is raised as :class:`OptinError` with a one-line message saying what is wrong and what to
do. The CLI prints that line and exits non-zero; it never prints a traceback for these.
"""


class OptinError(Exception):
    """A problem with the user's input or environment, reported as one line."""

    exit_code = 2


class MissingRuntimeError(OptinError):
    """An optional runtime (TensorRT, torch-tensorrt, CUDA) is not available here."""

    exit_code = 3


class QualityGateError(OptinError):
    """The pruned model failed the accuracy gate (``--max-accuracy-drop``)."""

    exit_code = 4
