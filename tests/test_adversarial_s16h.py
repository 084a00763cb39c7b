"""Session-16 adversarial pass (h): leftovers of session 15, reproduced and fixed: empty path values, a bundle whose
tokenizer was deleted, bench on a bundle without report.json, the latency table read once and said when it contradicts
itself, and two builds into one --out at once."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from conftest import run_cli

pytestmark = pytest.mark.usefixtures("quiet_cache")  # conftest: a cache of its own per test, no hub


def _one_line(proc, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    lines = [l for l in proc.stderr.strip().splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


# ------------------------------------------------------------------------------ 1. an empty value is not the current folder


def _every_parameter():
    """``(command path, parameter)`` for every option and argument of every command."""
    import typer

    from optin_deploy import cli

    found = []

    def walk(command, path):
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, [*path, name])
        for p in getattr(command, "params", []):
            if not getattr(p, "is_flag", False) and p.name not in cli.EMPTY_ALLOWED and p.name != "help":
                found.append((tuple(path), p, command))

    walk(typer.main.get_command(cli.app), [])
    return found


def test_every_option_and_argument_refuses_an_empty_value(tmp_path, monkeypatch):
    """`eval BUNDLE --data ""` read the current folder as an image data set ("class folders benchmarks, optin_deploy, ...
    hold no images", then "takes text but data '' is image"), `build --model ""` / `bench ""` said ". is a folder without
    config.json", `build --out ""` named the current folder and `--lut ""` looked for a table called "."; an unset shell
    variable (`--data "$DATA"`) does that. Every option and argument of every command now refuses '' in one line, exit 2,
    before any work."""
    monkeypatch.chdir(tmp_path)
    checked = 0
    for path, param, command in _every_parameter():
        args = list(path)
        for q in command.params:  # the other required parameters get a placeholder, so that this one is the one refused
            if q is not param and q.required:
                args += ["x"] if q.param_type_name == "argument" else [q.opts[0], "x"]
        args += [""] if param.param_type_name == "argument" else [param.opts[0], ""]
        proc = run_cli(*args, check=False)
        line = _one_line(proc, 2, "is empty", "never read as the current folder")
        shown = param.name if param.param_type_name == "argument" else param.opts[0]
        assert shown in line, (args, line)
        checked += 1
    assert checked > 60  # every command's parameters were walked
    assert list(tmp_path.iterdir()) == []  # nothing written in the current folder


def test_an_empty_value_is_refused_in_the_library_too():
    from optin_deploy.errors import OptinError
    from optin_deploy.zoo import load_task

    for kw in ({"model": "", "data": "x.csv"}, {"model": "m", "data": ""}):
        with pytest.raises(OptinError, match="empty string"):
            load_task(**kw)


def test_an_empty_search_reference_still_means_none(tmp_path):
    """`--search-reference ""` is that option's default (no reference budget): it stays accepted."""
    proc = run_cli("build", "--search-reference", "", "--calib-samples", "0", "--out", tmp_path / "b", check=False)
    _one_line(proc, 2, "--calib-samples must be at least 1")
