"""Command-line options shared by several commands (one definition, one help text).

Kept free of torch so that the CLI starts fast; the defaults mirror
:data:`optin_deploy.core.reconstruct.DEFAULT_FIT` / ``DEFAULT_DAMP`` (a test checks that they agree).
"""

from __future__ import annotations

import typer

RECONSTRUCT = typer.Option(True, "--reconstruct/--no-reconstruct", help="After surgery, refit the kept units' output weights by damped least squares on the calibration batch (no labels; structure and cost unchanged).")
RECONSTRUCT_FIT = typer.Option("weights", "--reconstruct-fit", help="weights (the output projections' kept columns) | scales (one scale per kept unit).")
RECONSTRUCT_DAMP = typer.Option(1.0, "--reconstruct-damp", help="Ridge damping of the refit, towards plain surgery (> 0).")
