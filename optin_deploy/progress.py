"""Progress display for long work (scoring, export, benchmarking), on stderr."""

from __future__ import annotations

import io
import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager, redirect_stdout

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text


def new_console(stderr: bool = False) -> Console:
    """A console for the tool's human output. Markup is off: what it prints holds the user's paths, labels and
    column names, and rich read ``[red]`` in ``--out 'pb[red]x'`` as a style (the line named another folder) and
    ``[/]`` as a closing tag (a MarkupError after the output was written). Styles are given as :func:`styled`."""
    return Console(stderr=stderr, markup=False)


def styled(head: str, rest: str) -> Text:
    """``head`` in bold, then ``rest`` as it is (no markup read in either)."""
    return Text.assemble((head, "bold"), " ", rest)


def say(console: Console, head: str, rest: str) -> None:
    """One message line, never hard-wrapped (a log or a pipe keeps a long path on one line; a terminal wraps it)."""
    console.print(styled(head, rest), soft_wrap=True)


console = new_console(stderr=True)


def quiet() -> bool:
    return os.environ.get("OPTIN_DEPLOY_QUIET") == "1"


@contextmanager
def silenced(*loggers: str):
    """For the block: the named library loggers at ERROR, warnings ignored and stdout swallowed (chatter such as
    inductor's guards or onnxruntime's fusion notes, which says nothing to the user; errors still raise)."""
    logs = [logging.getLogger(n) for n in loggers]
    levels = [lg.level for lg in logs]
    for lg in logs:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(logs, levels):
            lg.setLevel(lv)


@contextmanager
def progress_bar(description: str, total: int | None = None):
    """Yields ``update(done, total)``; a live bar on a terminal, periodic lines otherwise."""
    if quiet():
        yield lambda done, total=None: None
        return
    if console.is_terminal:
        with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                      console=console, transient=False) as prog:
            task = prog.add_task(description, total=total)

            def update(done, total=None):
                prog.update(task, completed=done, total=total)

            yield update
        return
    state = {"last": 0.0, "t0": time.perf_counter()}

    def update(done, total=None):
        now = time.perf_counter()
        if now - state["last"] >= 10 or (total and done >= total):
            state["last"] = now
            pct = f" ({100 * done / total:.0f}%)" if total else ""
            print(f"  {description}: {done}/{total or '?'}{pct}, {now - state['t0']:.0f}s", file=sys.stderr, flush=True)

    yield update


def step(message: str) -> None:
    if not quiet():
        console.print(Text.assemble((">", "bold cyan"), " ", str(message)), soft_wrap=True)


def warn(message: str) -> None:
    """One warning line on stderr (also when quiet: a warning is about the result)."""
    print("warning: " + " ".join(str(message).split()), file=sys.stderr, flush=True)
