"""The code's layout rules (issue 11), checked on the source: no import cycle between the packages
(imports inside functions included), no private name imported from another module, no silently
ignored keyword options in exporters and runtimes, the CLI's commands thin shells."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "optin_deploy"


def _imports(path: Path):
    """``(module, names)`` of every relative ``from ... import`` in ``path``, resolved to a dotted
    name under optin_deploy."""
    pkg = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg[: len(pkg) - node.level + 1])
            mod = ".".join(base + ([node.module] if node.module else []))
            yield mod, [a.name for a in node.names]


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_no_import_cycle_between_packages():
    sub = [p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("__")]
    edges = {s: set() for s in sub}
    for f in ROOT.rglob("*.py"):
        own = f.relative_to(ROOT).parts[0]
        if own not in edges:
            continue
        for mod, _ in _imports(f):
            other = _package_of(mod)
            if other in edges and other != own:
                edges[own].add(other)

    def reach(a, seen):
        for b in edges[a]:
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen

    cycles = sorted((a, b) for a in edges for b in edges[a] if a in reach(b, set()))
    assert not cycles, f"packages importing each other: {cycles}"
    assert "exporters" not in reach("runtimes", set())  # exporters run runtimes for parity, never the reverse


def test_no_private_name_imported_from_another_module():
    bad = []
    for f in ROOT.rglob("*.py"):
        for mod, names in _imports(f):
            bad += [f"{f.relative_to(ROOT)}: {mod}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


@pytest.mark.parametrize("package", ["exporters", "runtimes"])
def test_exporters_and_runtimes_take_no_catch_all_keywords(package):
    """A misspelt option must raise, not vanish into ``**_``."""
    bad = []
    for f in (ROOT / package).glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.FunctionDef) and node.args.kwarg is not None and node.args.kwarg.arg.startswith("_"):
                bad.append(f"{f.name}:{node.lineno} {node.name}(**{node.args.kwarg.arg})")
    assert not bad, bad


def test_a_misspelt_runtime_option_raises():
    from optin_deploy.errors import OptinError
    from optin_deploy.runtimes.base import get_runtime

    with pytest.raises(TypeError, match="takes no option thread"):
        get_runtime("ort-cpu", thread=2)
    with pytest.raises(OptinError, match="--compile applies to the torch runtimes"):
        get_runtime("ort-cpu", compile=True)
    assert get_runtime("torch-cpu", threads=1, compile=False).name == "torch-cpu"


def test_commands_are_thin_shells():
    """Each command module parses flags and calls the library; none runs the pipeline itself."""
    for f in (ROOT / "commands").glob("*.py"):
        lines = [l for l in f.read_text().splitlines() if l.strip() and not l.strip().startswith("#")]
        assert len(lines) < 140, f"{f.name}: {len(lines)} lines; move the logic into the library"
        assert "load_task(" not in f.read_text(), f"{f.name} loads a task itself; call the library"


def _project_modules_imported(tree: ast.AST, path: Path) -> set[str]:
    """Local names bound to an optin_deploy module by a relative import (``from .. import zoo``)."""
    pkg = path.relative_to(ROOT.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ROOT.parent.joinpath(*pkg[: len(pkg) - node.level + 1], *(node.module.split(".") if node.module else []))
            for a in node.names:
                if (base / f"{a.name}.py").is_file() or (base / a.name / "__init__.py").is_file():
                    out.add(a.asname or a.name)
    return out


def test_no_private_attribute_of_another_project_module():
    """``zoo._entry(...)`` from another module is a private name used outside its module, like an import of it."""
    bad = []
    for f in ROOT.rglob("*.py"):
        tree = ast.parse(f.read_text())
        mods = _project_modules_imported(tree, f)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in mods
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not bad, bad


# Where a profile may be read: resolve_target is the one place a profile becomes a Target; it is called by the
# library entry points of the commands (once, first) and by the latency-table helpers that take ``Target | name``
# (a no-op on the Target the pipeline passes them). Nothing else looks a profile up by name.
PROFILE_READERS = {
    "load_profile": {("profiles.py", "*"), ("target.py", "resolve_target"), ("commands/profiles.py", "show_cmd")},
    "resolve_target": {("target.py", "*"), ("build.py", "run_build"), ("search.py", "run_sweep"), ("pruning.py", "prune_to_folder"),
                       ("lut.py", "write_lut"), ("lut.py", "check_compatible"), ("lut.py", "table_key"), ("lut.py", "cached_lut"),
                       ("lut.py", "measure_lut")},
}


def test_a_profile_is_read_only_where_the_commands_enter_the_library():
    bad = []
    for f in ROOT.rglob("*.py"):
        rel = str(f.relative_to(ROOT))
        tree = ast.parse(f.read_text())
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for node in ast.walk(fn):
                if isinstance(node, ast.Call):
                    name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
                    allowed = PROFILE_READERS.get(name)
                    if allowed is not None and (rel, "*") not in allowed and (rel, fn.name) not in allowed:
                        bad.append(f"{rel}:{node.lineno} {fn.name}() calls {name}")
    assert not bad, f"a profile looked up below the entry points: {sorted(set(bad))}"


def test_prune_reads_its_profile_once(monkeypatch, tmp_path):
    """At run time too: one ``prune`` loads the profile file once, at its entry, however many stages use the target."""
    import optin_deploy.target as target_mod
    from conftest import make_tiny_bert, run_cli, save_word_tokenizer

    calls = []
    real = target_mod.load_profile
    monkeypatch.setattr(target_mod, "load_profile", lambda spec: calls.append(spec) or real(spec))
    model_dir = tmp_path / "m"
    make_tiny_bert(num_labels=2, layers=2).save_pretrained(model_dir)
    save_word_tokenizer(model_dir, 120)
    run_cli("prune", model_dir, "--data", "rotten-tomatoes", "--calib-samples", "4", "--scoring", "exact", "--flops", "0.7",
            "--no-reconstruct", "--profile", "x86-cpu-ort-fp32", "--out", tmp_path / "p")
    assert calls == ["x86-cpu-ort-fp32"]
