"""``optin-deploy profiles list|show``: the hardware profiles (``profiles/*.toml``)."""

from __future__ import annotations

import typer

profiles_app = typer.Typer(
    name="profiles",
    help="Hardware profiles: runtime, precision, shapes, threads, alignment and default budget of a target.",
    no_args_is_help=True,
)


def _budget(p) -> str:
    if p.budget_flops is not None:
        return f"{p.budget_flops:g} of MACs"
    if p.budget_latency_ms is not None:
        return f"{p.budget_latency_ms:g} ms"
    return "-"


@profiles_app.command("list")
def list_cmd() -> None:
    """List the built-in profiles."""
    from rich.console import Console
    from rich.table import Table

    from ..profiles import PROFILES_DIR, list_profiles

    t = Table(title=f"Hardware profiles ({PROFILES_DIR})")
    for col in ("name", "runtime", "device", "precision", "batch x seq", "threads", "head/neuron multiple", "budget"):
        t.add_column(col, no_wrap=col in ("name", "runtime"))
    for p in list_profiles():
        if p.is_choice:  # chooses among other profiles by measurement (build)
            t.add_row(p.name, "fastest of: " + ", ".join(c.name for c in p.choose_from), p.device, "/".join(dict.fromkeys(c.precision for c in p.choose_from)),
                      f"{p.batch_size} x {p.seq_len or '-'}", str(p.threads), f"{p.head_multiple} / {p.neuron_multiple}", _budget(p))
            continue
        t.add_row(p.name, p.runtime, p.device, p.precision, f"{p.batch_size} x {p.seq_len or '-'}", str(p.threads),
                  f"{p.head_multiple} / {p.neuron_multiple}", _budget(p))
    Console().print(t)


@profiles_app.command("show")
def show_cmd(name: str = typer.Argument(..., help="A built-in profile name or a path to a .toml profile.")) -> None:
    """Every field of one profile, with what it means."""
    from rich.console import Console
    from rich.table import Table

    from ..profiles import explain, load_profile

    p = load_profile(name)
    t = Table(title=f"profile {p.name} ({p.path})")
    t.add_column("key")
    t.add_column("value")
    t.add_column("meaning")
    for key, value, doc in explain(p):
        t.add_row(key, value, doc)
    Console().print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(profiles_app, name="profiles")
