"""Session 16j: a hostile file system and signals. A full disk under --out stops the build in one line (exit 5), it never
makes a step that skips on failure (a candidate runtime, a dense alternative) drop what it measures; the rest of the
file: read-only inputs, signals and closed pipes."""

from __future__ import annotations

import csv
import errno
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_cli

pytestmark = pytest.mark.usefixtures("quiet_cache")

WORDS = ["good", "great", "fine", "bad", "awful", "dull", "the", "film", "was", "a", "plot", "and"]


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    """A tiny random BERT with its own word-level tokenizer (model/) and a labelled CSV (data.csv)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root = tmp_path_factory.mktemp("s16j")
    model = root / "model"
    model.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (model / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64, num_labels=2, id2label={0: "rotten", 1: "fresh"}, label2id={"rotten": 0, "fresh": 1})
    BertForSequenceClassification(cfg).eval().save_pretrained(model)
    BertTokenizerFast(vocab=str(model / "vocab.txt"), do_lower_case=True).save_pretrained(model)
    rng = random.Random(0)
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(60):
            w.writerow([" ".join(rng.choices(WORDS, k=6)), ["fresh", "rotten"][i % 2]])
    return root


def build_args(task: Path, out: Path, *extra) -> list[str]:
    return ["build", "--model", task / "model", "--data", task / "data.csv", "--flops", "0.5", "--calib-samples", "16",
            "--bench-iters", "3", "--scoring", "exact", "--select-by", "macs", "--out", out, *extra]


def errors_of(err: str) -> list[str]:
    """The error lines (the human output, such as the table of kept units, is on stderr too)."""
    return [ln for ln in err.splitlines() if ln.startswith("error") or "Traceback" in ln]


def leftovers(parent: Path) -> list[str]:
    """Staging or set-aside folders a run left beside its --out."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def full_disk_under(monkeypatch, part: str) -> list[str]:
    """Every export into a folder whose path holds ``part`` fails as a full disk does (the exporters turn the OSError into
    the one-line StorageError); returns the folders exported into, in order."""
    from optin_deploy.exporters import export_folder
    from optin_deploy.safe_out import os_error

    real = export_folder.export_to_folder
    seen: list[str] = []

    def export(m, example, folder, *a, **kw):
        seen.append(str(folder))
        if part in Path(folder).as_posix():
            raise os_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), str(Path(folder) / "model.onnx"))
        return real(m, example, folder, *a, **kw)

    monkeypatch.setattr(export_folder, "export_to_folder", export)
    return seen


# ------------------------------------------------------------------ a full disk is never a skip reason


@pytest.mark.slow
def test_a_full_disk_while_measuring_a_candidate_runtime_stops_the_build(task, tmp_path, monkeypatch):
    """The choosing profile (x86-cpu) skipped a candidate whose export failed for any OptinError, a full --out disk
    included: with room for one candidate's export only, the build chose the other runtime ('not measured: ... export
    failed: no space left') and carried on, or (no room for either) stopped with exit 2 'no candidate profile could be
    measured here'. Which runtime the bundle is built for must not depend on the free space: exit 5, one line."""
    full_disk_under(monkeypatch, "runtime-choice/x86-cpu-ort")
    out = tmp_path / "b"
    r = run_cli(*build_args(task, out, "--profile", "x86-cpu"), check=False)
    assert r.returncode == 5, r.stderr
    errs = errors_of(r.stderr)
    assert len(errs) == 1 and errs[0].startswith("error: no space left on the device while writing "), r.stderr
    assert f"{out}/runtime-choice/x86-cpu-ort" in r.stderr  # the published name, not the staging folder's
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_a_full_disk_while_exporting_a_dense_alternative_stops_the_build(task, tmp_path, monkeypatch):
    """A dense alternative whose export hit a full disk was skipped (a note in report.md): the bundle was published
    without dense-dynamo-fp32, its 'fastest dense alternative' and fp32 reference chosen among fewer exports than
    asked for, exit 0. Now exit 5, one line, nothing at --out."""
    seen = full_disk_under(monkeypatch, "baselines/dense-dynamo-fp32")
    out = tmp_path / "b"
    r = run_cli(*build_args(task, out, "--profile", "x86-cpu-ort"), check=False)
    assert any("baselines/dense-dynamo-fp32" in s for s in seen), seen  # the alternative was asked for
    assert r.returncode == 5, r.stderr
    errs = errors_of(r.stderr)
    assert len(errs) == 1 and errs[0].startswith("error: no space left on the device while writing "), r.stderr
    assert f"{out}/baselines/dense-dynamo-fp32" in r.stderr
    assert not out.exists() and leftovers(tmp_path) == []


def test_raise_if_storage_lets_other_failures_through():
    """The helper behind both: a storage failure (or one wrapped by a library) is raised; anything else returns, so the
    step still skips a candidate that cannot run."""
    from optin_deploy.errors import OptinError, StorageError
    from optin_deploy.safe_out import raise_if_storage

    with pytest.raises(StorageError, match="no space left on the device while writing /x/y"):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            try:
                raise RuntimeError("exporter failed") from inner
            except RuntimeError as exc:
                raise_if_storage(exc, "/x/y")
    with pytest.raises(StorageError, match="read-only"):
        raise_if_storage(StorageError("read-only"), "/x")
    raise_if_storage(OptinError("the model has no fused graph"), "/x")  # returns
    raise_if_storage(RuntimeError("[Errno 2] no such file"), "/x")  # ENOENT is not a storage failure


# ------------------------------------------------------------------ --json -: stdout holds only the JSON


@pytest.mark.slow
def test_build_json_on_stdout_holds_only_the_json(task, tmp_path):
    """`build --json -` printed the runtime choice's table (the dense model on each candidate profile) and one blank
    line per evaluated model (rich's progress bar, stopped off a terminal) on stdout, before the JSON: `build --json - |
    jq` read a table. Progress and tables are on stderr; stdout is exactly the JSON."""
    import json

    r = run_cli(*build_args(task, tmp_path / "b", "--profile", "x86-cpu", "--json", "-"))
    assert r.stdout.startswith("{"), r.stdout[:300]
    assert json.loads(r.stdout)["bundle"] == str(tmp_path / "b")
    r = run_cli(*build_args(task, tmp_path / "b", "--profile", "x86-cpu", "--force"))
    assert r.stdout == "", r.stdout[:300]  # a build's human output is on stderr, all of it


# ------------------------------------------------------------------ a closed output pipe (| head)


def run_with_closed(stream: str, *args, cwd=None) -> subprocess.CompletedProcess:
    """``optin-deploy ARGS`` in a subprocess whose stdout (or stderr) is a pipe with no reader left: every write to it
    fails with EPIPE, as after ``| head -1`` has exited. The other stream is captured."""
    r, w = os.pipe()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("OPTIN_DEPLOY_QUIET", None)  # the human output is what meets the closed pipe
    try:
        kw = {"stdout": w, "stderr": subprocess.PIPE} if stream == "stdout" else {"stdout": subprocess.PIPE, "stderr": w}
        p = subprocess.Popen([sys.executable, "-m", "optin_deploy.cli", *map(str, args)], cwd=cwd, env=env, text=True, **kw)
    finally:
        os.close(w)
        os.close(r)
    other = (p.stderr if stream == "stdout" else p.stdout).read()
    return subprocess.CompletedProcess(args, p.wait(timeout=600), *((("", other) if stream == "stdout" else (other, ""))))


def test_a_closed_stdout_stops_the_command_as_sigpipe_does(tmp_path):
    """`optin-deploy profiles list | head -0`: typer turned the EPIPE into a silent exit 1 (the code of a bug, no line);
    rich did the same for a table. Now: exit 141 (128 + SIGPIPE, what a command killed by SIGPIPE gives) and one line on
    stderr, no 'Exception ignored' as Python exits."""
    r = run_with_closed("stdout", "profiles", "list", cwd=tmp_path)
    assert r.returncode == 141, r.stderr
    assert r.stderr.splitlines() == [r.stderr.splitlines()[0]], r.stderr
    assert r.stderr.startswith("error: stopped: the output pipe was closed"), r.stderr
    assert "Exception ignored" not in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_a_closed_pipe_during_a_build_removes_the_staging_and_after_it_keeps_the_bundle(task, tmp_path):
    """stderr closed (`build 2>&1 | head -1`): the build stops at its next progress line with exit 141 and nothing at
    --out, no staging (it was exit 1, a bug's code, with nothing said). stdout closed with --json - : the bundle is
    published in full before the JSON is printed; the line says so, exit 141 (it was a silent exit 1)."""
    out = tmp_path / "b"
    args = build_args(task, out, "--profile", "x86-cpu-ort", "--no-baselines")
    r = run_with_closed("stderr", *args, cwd=tmp_path)
    assert r.returncode == 141 and r.stdout == "", r
    assert not out.exists() and leftovers(tmp_path) == []
    r = run_with_closed("stdout", *args, "--json", "-", cwd=tmp_path)
    assert r.returncode == 141, r.stderr
    errs = errors_of(r.stderr)
    assert errs == [f"error: stopped: the output pipe was closed (its reader, such as head, exited); after {out} was written in "
                    f"full (complete and usable); what follows it (the summary, --json) is missing"], r.stderr
    assert (out / "manifest.json").is_file() and (out / "onnx/pruned/model.onnx").is_file() and leftovers(tmp_path) == []
    assert "Exception ignored" not in r.stderr


# ------------------------------------------------------------------ odd --out paths


def test_an_out_name_too_long_for_its_staging_folder_is_refused_up_front(task, tmp_path):
    """A name of 234-255 bytes is a valid folder name, but the staging folder beside it (.NAME.tmp-PID-XXXXXXXX) is not:
    the build said 'cannot write next to OUT (File name too long); pass a writable --out' (exit 5, a file-system
    failure). A name over the file system's limit gave 'File name too long (...); check the path and its permissions',
    exit 5. Both are a path to shorten: exit 2, one line saying how long it may be, nothing created."""
    from optin_deploy.safe_out import STAGING_EXTRA, _name_max

    limit = _name_max(tmp_path)
    cases = [(tmp_path / ("y" * (limit - STAGING_EXTRA + 1)), rf"its name is {limit - STAGING_EXTRA + 1} bytes long; the staging "
              rf"folder .* pass a name of at most {limit - STAGING_EXTRA} bytes"),
             (tmp_path / ("z" * (limit + 1)) / "b", rf"the name z+\.\.\. is {limit + 1} bytes long, over the {limit} this file system allows")]
    for out, msg in cases:
        r = run_cli(*build_args(task, out), check=False)
        assert r.returncode == 2, r.stderr
        errs = errors_of(r.stderr)
        assert len(errs) == 1 and re.search(msg, errs[0]), r.stderr
    assert list(tmp_path.iterdir()) == []
    from optin_deploy.safe_out import check_out

    assert check_out(tmp_path / ("w" * (limit - STAGING_EXTRA))).name == "w" * (limit - STAGING_EXTRA)  # the longest that fits


def test_an_out_through_a_loop_of_symbolic_links_names_the_link(task, tmp_path):
    """--out loop1/sub, loop1 -> loop2 -> loop1: it said 'cannot write next to .../loop1/sub (File exists); pass a
    writable --out', as if the folder were not writable."""
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    r = run_cli(*build_args(task, tmp_path / "loop1" / "sub"), check=False)
    assert r.returncode == 2, r.stderr
    assert errors_of(r.stderr) == [f"error: cannot write {tmp_path}/loop1/sub: {tmp_path}/loop1 is a symbolic link to nothing (broken, "
                                   f"or a loop of links); pass an --out through existing folders"], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["loop1", "loop2"]  # (cache: the test's own)


def test_a_library_error_for_a_full_disk_is_a_storage_error_not_a_bug(monkeypatch):
    """zoo prepare on a nearly full cache trained for 4.5 minutes, then safetensors failed with 'SafetensorError: Error
    while serializing: I/O error: No space left on device (os error 28)': the CLI called it 'internal error ... (a bug
    in optin-deploy)', exit 1. Rust's '(os error N)' is read like Python's '[Errno N]': exit 5, no space left."""
    from optin_deploy.safe_out import storage_error_in

    class SafetensorError(Exception):
        pass

    exc = SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert "no space left on the device while writing /c/zoo" in str(storage_error_in(exc, "/c/zoo"))
    assert storage_error_in(SafetensorError("header too large (os error 2)"), "/x") is None

    def boom(*a, **k):
        raise exc

    from optin_deploy import zoo

    monkeypatch.setattr(zoo, "list_tasks", boom)  # raised inside a command, past the CLI's own checks
    r = run_cli("zoo", "list", check=False)
    assert r.returncode == 5, r.stderr
    assert errors_of(r.stderr) == [r.stderr.strip()] and r.stderr.startswith("error: no space left on the device"), r.stderr
    assert "internal error" not in r.stderr
