"""Command-line options shared by several commands (one definition, one help text).

Kept free of torch so that the CLI starts fast; the defaults mirror
:data:`optin_deploy.core.reconstruct.DEFAULT_FIT` / ``DEFAULT_DAMP`` (a test checks that they agree).
"""

from __future__ import annotations

import typer

RECONSTRUCT = typer.Option(True, "--reconstruct/--no-reconstruct", help="After surgery, refit the kept units' output weights by damped least squares on the calibration batch (no labels; structure and cost unchanged).")
RECONSTRUCT_FIT = typer.Option("weights", "--reconstruct-fit", help="weights (the output projections' kept columns) | scales (one scale per kept unit).")
RECONSTRUCT_DAMP = typer.Option(1.0, "--reconstruct-damp", help="Ridge damping of the refit, towards plain surgery (> 0).")

SEARCH_SAMPLES = typer.Option(400, "--search-samples", help="Budget search / sweep: size of the fixed validation subset each candidate is evaluated on (the whole split when smaller).")
SEARCH_CANDIDATES = typer.Option(5, "--search-candidates", help="Budget search: the most candidate budgets measured.")
SEARCH_ROUNDS = typer.Option(12, "--search-rounds", help="Budget search / sweep: interleaved benchmark rounds (candidate and dense) per candidate.")


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
