"""``optin-deploy lut``: measure a latency lookup table on this machine for a hardware profile."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from . import options


def lut_cmd(
    profile: str = typer.Option(..., "--profile", "-p", help="Hardware profile name or .toml path (optin-deploy profiles list)."),
    model: str = typer.Option(..., "--model", "-m", help="Dense model: a zoo name, a folder, a hub name or timm:NAME."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the latency table (JSON)."),
    mlp_step: Optional[int] = typer.Option(None, "--mlp-step", help="MLP width grid step (default: about width/12)."),
    rounds: int = typer.Option(7, help="Interleaved timing rounds."),
    iters: int = typer.Option(5, help="Runs per artifact per round (the statistic is the median of all)."),
    force: bool = options.FORCE,
    json_out: Optional[str] = options.JSON_OUT,
) -> None:
    """Measure on THIS machine, with the profile's runtime, threads, batch and sequence length, the
    latency of one attention part for every head count and one MLP over a grid of widths, plus the
    part pruning cannot remove. The JSON is self-describing: a table measured on the target device
    can be copied to the build host and passed to ``build --latency-ms X --lut FILE``."""
    from ..lut import write_lut

    options.check_json(json_out, force=force, protect=[model, profile if str(profile).endswith(".toml") else None])
    echo = lambda message: options.echo(message, json_out)  # noqa: E731 - human lines on stderr with --json -
    with options.human_stdout(json_out):  # --json -: stdout holds only the JSON
        table, out = write_lut(profile, model, out, mlp_step=mlp_step, rounds=rounds, iters=iters, force=force,
                               progress=lambda s: typer.echo(s, err=True))
    intercept, slope = table.linear_fit()
    echo(f"profile {table.profile['name']} on {table.environment['device']['cpu']}"
         + (f" / {table.environment['device']['gpu']}" if table.environment['device'].get('gpu') else "")
         + f", batch {table.shapes['batch']} x {table.shapes['tokens']} tokens")
    echo(f"dense model {table.dense_model_ms:.3f} ms; not prunable {table.empty_model_ms:.3f} ms; "
         f"calibration scale {table.scale:.3f}")
    echo("attention ms by heads: " + ", ".join(f"{h}:{v:.3f}" for h, v in enumerate(table.attn_ms)))
    echo("MLP ms by width: " + ", ".join(f"{w}:{v:.3f}" for w, v in zip(table.mlp_widths, table.mlp_ms))
         + f" (fit {intercept:.4f} + {slope * 1e3:.4f} us/neuron)")
    echo(f"wrote {out}")
    options.emit_json(json_out, table.to_dict())


def register(app: typer.Typer) -> None:
    app.command("lut")(lut_cmd)
