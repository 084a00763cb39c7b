"""Session 14, third adversarial pass: non-finite limits and settings that were accepted and then written
into non-strict JSON, into NaN weights, or into absurd figures. All checks are up front (no model runs)."""

from __future__ import annotations

import json
import math

import pytest

from optin_deploy.errors import OptinError


@pytest.mark.parametrize("kind,limit", [("max_accuracy_drop", math.inf), ("max_accuracy_drop", math.nan),
                                        ("min_speedup", math.inf), ("min_speedup", math.nan), ("min_speedup", 1.0)])
def test_objective_refuses_non_finite_limits(kind, limit):
    from optin_deploy.search import Objective

    with pytest.raises(OptinError, match="finite"):
        Objective(kind, limit)


@pytest.mark.parametrize("tol", [math.nan, math.inf, 1.0, 0.0, -1.0])
def test_search_tol_must_be_a_finite_fraction(tol):
    from optin_deploy.search import SearchSettings

    with pytest.raises(OptinError, match="--search-tol"):
        SearchSettings(tol=tol).check()
    SearchSettings(tol=0.02).check()


def test_frontier_json_is_strict(tmp_path, monkeypatch):
    """A NaN / inf figure in a frontier becomes null, never a bare NaN / Infinity token."""
    from optin_deploy import search

    fr = object.__new__(search.Frontier)
    monkeypatch.setattr(search.Frontier, "to_dict", lambda self: {"limit": math.inf, "tol": math.nan, "ok": 1.5})
    monkeypatch.setattr(search, "plot_frontier", lambda *a, **k: None)
    fr.write(tmp_path)
    text = (tmp_path / "frontier.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict token {c}"))
    assert doc == {"limit": None, "tol": None, "ok": 1.5}


@pytest.mark.parametrize("damp", [math.inf, math.nan, 0.0, -1.0])
def test_reconstruct_damp_must_be_finite(damp):
    from optin_deploy.pruning import check_reconstruct

    with pytest.raises(OptinError, match="--reconstruct-damp"):
        check_reconstruct("weights", damp)
    check_reconstruct("weights", 1e6)


@pytest.mark.parametrize("s", [math.inf, math.nan, 1.0])
def test_speedup_budget_refused_up_front(s):
    from optin_deploy.build import BuildOptions, _asked_budget

    with pytest.raises(OptinError, match="--speedup must be more than 1 .* and finite"):
        _asked_budget(BuildOptions(speedup=s), profile=None)


def test_bench_refuses_more_threads_than_cpus():
    from optin_deploy.bench import bench_artifacts, check_threads_here, cpus_here

    check_threads_here(None)
    check_threads_here(cpus_here())
    with pytest.raises(OptinError, match="more than the .* CPUs"):
        bench_artifacts(["/nonexistent-a", "/nonexistent-b"], threads=cpus_here() + 1000)


def test_cli_one_line_errors(tmp_path):
    from conftest import run_cli

    for args, flag in ((["build", "--max-accuracy-drop", "inf", "--out", tmp_path / "b"], "--max-accuracy-drop"),
                       (["build", "--min-speedup", "inf", "--out", tmp_path / "b"], "--min-speedup"),
                       (["build", "--max-accuracy-drop", "1", "--search-tol", "nan", "--out", tmp_path / "b"], "--search-tol"),
                       (["build", "--speedup", "inf", "--out", tmp_path / "b"], "--speedup"),
                       (["prune", "--reconstruct-damp", "inf", "--out", tmp_path / "p"], "--reconstruct-damp")):
        proc = run_cli(*args, check=False)
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and flag in last and "Traceback" not in proc.stderr
        assert not (tmp_path / "b").exists() and not (tmp_path / "p").exists()
