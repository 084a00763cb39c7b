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
        return f"{p.budget_flops:g} of {'latency (measured here)' if getattr(p, 'budget_select_by', 'macs') == 'latency' else 'MACs'}"
    if p.budget_latency_ms is not None:
        return f"{p.budget_latency_ms:g} ms"
    return "-"


@profiles_app.command("list")
def list_cmd() -> None:
    """List the built-in profiles."""
    from rich import box
    from ..progress import new_console
    from rich.table import Table

    from ..profiles import PROFILES_DIR, list_profiles

    cols = ("name", "runtime", "device", "precision", "batch x seq", "threads", "head/neuron multiple", "budget")
    rows = []
    for p in list_profiles():
        if p.is_choice:  # chooses among other profiles by measurement (build)
            rt, prec = "fastest of: " + ", ".join(c.name for c in p.choose_from), "/".join(dict.fromkeys(c.precision for c in p.choose_from))
        else:
            rt, prec = p.runtime, p.precision
        rows.append((p.name, rt, p.device, prec, f"{p.batch_size} x {p.seq_len or '-'}", str(p.threads),
                     f"{p.head_multiple} / {p.neuron_multiple}", _budget(p)))
    console = new_console()
    title = f"Hardware profiles ({PROFILES_DIR})"
    t = Table(title=title)
    for col in cols:
        t.add_column(col, no_wrap=True)
    for r in rows:
        t.add_row(*r)
    if console.measure(t, options=console.options.update_width(10_000)).maximum <= console.width:  # its natural width fits
        console.print(t)
        return
    # narrower than the table (80 columns, a pipe): one row per profile, its name and then every field named,
    # wrapped in a second column, so no field is squeezed to nothing
    t = Table(title=title, box=box.SIMPLE_HEAD, show_lines=False, pad_edge=False, title_justify="left")
    t.add_column("name", no_wrap=True)
    t.add_column("runtime, device, precision, batch x seq, threads, head/neuron multiple, budget", overflow="fold")
    for name, rt, dev, prec, shape, threads, mult, budget in rows:
        t.add_row(name, f"{rt}; {dev}, {prec}; batch {shape}; threads {threads}; multiples {mult}; budget {budget}")
    console.print(t)


@profiles_app.command("show")
def show_cmd(name: str = typer.Argument(..., help="A built-in profile name or a path to a .toml profile.")) -> None:
    """Every field of one profile, with what it means."""
    from ..progress import new_console
    from rich.table import Table

    from ..profiles import explain, load_profile

    p = load_profile(name)
    t = Table(title=f"profile {p.name} ({p.path})")
    t.add_column("key")
    t.add_column("value")
    t.add_column("meaning")
    for key, value, doc in explain(p):
        t.add_row(key, value, doc)
    new_console().print(t)


def register(app: typer.Typer) -> None:
    app.add_typer(profiles_app, name="profiles")
