"""``--json PATH`` never overwrites what the user owns, checked before any work; ``--json -`` keeps stdout
pure JSON; inputs reached through symbolic links are protected from ``--out``; published files get the
umask's mode; ``eval`` / ``bench`` take a build folder; ``profiles list`` is readable at 80 columns."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import copy_tokenizer, run_cli

from optin_deploy.errors import OptinError


def assert_one_line_error(proc, message: str = "error:") -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert err and err[-1].startswith("error:") and message in err[-1], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    """A model folder and a data file that are never loaded: every refusal here comes before any work."""
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "mymodel"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "bert"}\n')
    data = tmp_path / "data.csv"
    data.write_text("text,label\ngood,1\nbad,0\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    return model, data, notes


def _build(model, data, *extra):
    return run_cli("build", "--model", model, "--data", data, "--profile", "x86-cpu-ort", "--out", "b", *extra, check=False)


@pytest.mark.parametrize("force", [False, True])
def test_json_never_an_input_or_inside_out(inputs, tmp_path, force):
    model, data, _ = inputs
    extra = ["--force"] if force else []
    before = (model / "config.json").read_text()
    proc = _build(model, data, "--json", model / "config.json", *extra)
    assert_one_line_error(proc, "input")
    assert "--force" in proc.stderr  # refused even with --force
    assert (model / "config.json").read_text() == before
    assert_one_line_error(_build(model, data, "--json", data, *extra), "input")
    link = tmp_path / "link.json"
    link.symlink_to(model / "config.json")  # through a symbolic link: the same file
    assert_one_line_error(_build(model, data, "--json", link, *extra), "input")
    assert (model / "config.json").read_text() == before and link.is_symlink()
    assert_one_line_error(_build(model, data, "--json", "b/result.json", *extra), "inside this command's output folder b")
    assert not (tmp_path / "b").exists()


def test_json_refuses_folders_pipes_devices_and_missing_parents(inputs, tmp_path):
    model, data, notes = inputs
    assert_one_line_error(_build(model, data, "--json", tmp_path / "nonexistent" / "dir" / "x.json"), "does not exist")
    assert not (tmp_path / "nonexistent").exists()  # no folder created
    (tmp_path / "afolder").mkdir()
    assert_one_line_error(_build(model, data, "--json", tmp_path / "afolder"), "is a folder")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    assert_one_line_error(_build(model, data, "--json", fifo, "--force"), "not a regular file")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # the node is still a FIFO
    if os.path.exists("/dev/full"):
        assert_one_line_error(_build(model, data, "--json", "/dev/full", "--force"), "not a regular file")
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)
    proc = _build(model, data, "--json", notes)
    assert_one_line_error(proc, "did not write")
    assert "--force" in proc.stderr.splitlines()[-1]
    assert notes.read_text() == "my notes\n"


def test_every_json_command_checks_up_front(inputs, tmp_path):
    model, data, notes = inputs
    a, b = tmp_path / "d.onnx", tmp_path / "p.onnx"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    cases = [
        ("eval", str(a), str(b)),
        ("bench", str(a), str(b)),
        ("prune", str(model), "--data", str(data), "--out", "p"),
        ("sweep", "--model", str(model), "--data", str(data), "--out", "s"),
        ("lut", "--profile", "x86-cpu-ort", "--model", str(model), "--out", "lut.json"),
    ]
    for args in cases:
        proc = run_cli(*args, "--json", notes, check=False)
        assert_one_line_error(proc, "did not write")
        if args[0] in ("eval", "bench"):  # no --force there: the message does not offer it
            assert "--force" not in proc.stderr.splitlines()[-1]
        assert notes.read_text() == "my notes\n"
    # the artifacts being evaluated are inputs
    assert_one_line_error(run_cli("eval", a, b, "--json", a, check=False), "input")
    assert a.read_bytes() == b"x"
    assert_one_line_error(run_cli("bench", a, b, "--json", tmp_path / "x.md", "--runtimes", "ort-cpu", "--markdown", tmp_path / "x.md",
                                  check=False), "same file")


def test_check_json_out_rules(tmp_path):
    from optin_deploy import safe_out
    from optin_deploy.commands.options import emit_json

    assert safe_out.check_json_out(None) is None and safe_out.check_json_out("-") is None
    mine = tmp_path / "r.json"
    emit_json(str(mine), {"a": 1})
    assert json.loads(mine.read_text()) == {"a": 1, safe_out.JSON_MARK_KEY: safe_out.JSON_MARK}
    assert safe_out.json_is_ours(mine)
    for force in (None, False, True):  # a file a previous --json wrote: replaced without --force
        assert safe_out.check_json_out(mine, force=force) == mine
    other = tmp_path / "o.json"
    other.write_text('{"a": 1}')
    assert not safe_out.json_is_ours(other)
    with pytest.raises(OptinError, match="did not write"):
        safe_out.check_json_out(other, force=False)
    with pytest.raises(OptinError, match="did not write"):
        safe_out.check_json_out(other, force=None)
    assert safe_out.check_json_out(other, force=True) == other
    assert safe_out.mark_json([1, 2]) == [1, 2]  # only a dict is marked
    lut = tmp_path / "lut.json"
    lut.write_text(json.dumps({"format": safe_out._LUT_FORMAT}))
    assert safe_out.json_is_ours(lut) and safe_out.mark_json({"format": safe_out._LUT_FORMAT}) == {"format": safe_out._LUT_FORMAT}


def test_lut_format_constant_agrees():
    from optin_deploy import lut, safe_out

    assert safe_out._LUT_FORMAT == lut.LUT_FORMAT


def test_out_guard_resolves_symlinked_inputs(tmp_path, monkeypatch):
    from optin_deploy.safe_out import check_out, write_marker

    monkeypatch.chdir(tmp_path)
    bundle = tmp_path / "bundle"
    (bundle / "pruned").mkdir(parents=True)
    write_marker(bundle, "bundle")
    (bundle / "mydata.csv").write_text("text,label\n")
    link = tmp_path / "link.csv"
    link.symlink_to(bundle / "mydata.csv")
    current = tmp_path / "current-model"
    current.symlink_to(bundle / "pruned")
    for p in (link, current, "link.csv", "current-model"):
        with pytest.raises(OptinError, match="holds this command's input"):
            check_out("bundle", force=True, protect=[p])
    # --out reached through a symbolic link to its parent folder
    (tmp_path / "alias").symlink_to(tmp_path)
    with pytest.raises(OptinError, match="holds this command's input"):
        check_out(tmp_path / "alias" / "bundle", force=True, protect=[bundle / "mydata.csv"])
    assert check_out("bundle", force=True, protect=[tmp_path / "elsewhere.csv"]) == bundle


def test_published_files_get_the_umask_mode(tmp_path):
    from optin_deploy.safe_out import staged_output

    old = os.umask(0o022)
    try:
        with staged_output(tmp_path / "out", kind="export") as staging:
            fd = os.open(staging / "private.bin", os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
            (staging / "sub").mkdir(mode=0o700)
            (staging / "sub" / "x").write_text("x")
            os.chmod(staging / "sub" / "x", 0o600)
        assert stat.S_IMODE(os.stat(tmp_path / "out" / "private.bin").st_mode) == 0o644
        assert stat.S_IMODE(os.stat(tmp_path / "out" / "sub").st_mode) == 0o755
        assert stat.S_IMODE(os.stat(tmp_path / "out" / "sub" / "x").st_mode) == 0o644
    finally:
        os.umask(old)


def test_save_pruned_weights_mode(tmp_path):
    from conftest import make_tiny_bert

    from optin_deploy.pruned_io import WEIGHTS_FILE, save_pruned

    old = os.umask(0o027)
    try:
        save_pruned(make_tiny_bert(), tmp_path / "p")
        assert stat.S_IMODE(os.stat(tmp_path / "p" / WEIGHTS_FILE).st_mode) == 0o640
    finally:
        os.umask(old)


def test_expand_bundle(tmp_path):
    from optin_deploy.runtimes.base import expand_bundle

    b = tmp_path / "b"
    for fmt in ("onnx", "aoti"):
        for label in ("dense", "pruned"):
            (b / fmt / label).mkdir(parents=True)
            (b / fmt / label / "export.json").write_text("{}")
    (b / "manifest.json").write_text("{}")
    (b / "report.json").write_text(json.dumps({"runtime": "ort-cpu"}))
    assert expand_bundle([str(b)]) == [str(b / "onnx" / "dense"), str(b / "onnx" / "pruned")]
    assert expand_bundle([str(b)], "openvino-cpu") == [str(b / "onnx" / "dense"), str(b / "onnx" / "pruned")]
    assert expand_bundle([str(b)], "torch-aoti-cpu") == [str(b / "aoti" / "dense"), str(b / "aoti" / "pruned")]
    assert expand_bundle([str(b / "onnx")]) == [str(b / "onnx" / "dense"), str(b / "onnx" / "pruned")]
    assert expand_bundle([str(b / "onnx" / "dense")]) == [str(b / "onnx" / "dense")]  # an export folder stays itself
    assert expand_bundle([str(tmp_path)]) == [str(tmp_path)]
    assert expand_bundle(["a", "b"]) == ["a", "b"]


def test_profiles_list_readable_at_80_columns_and_piped():
    from optin_deploy.profiles import list_profiles

    for env in ({"COLUMNS": "80"}, {}):  # run_cli's stdout is not a terminal: a pipe
        out = run_cli("profiles", "list", env=env).stdout
        assert all(len(line.rstrip()) <= 80 for line in out.splitlines()), out
        flat = " ".join(out.split())
        for p in list_profiles():
            assert p.name in out and f"threads {p.threads}" in flat, out
            assert p.device in flat and f"{p.head_multiple} / {p.neuron_multiple}" in flat
        assert "of MACs" in flat and "int8/bf16" in flat
    wide = run_cli("profiles", "list", env={"COLUMNS": "250"}).stdout
    assert "head/neuron multiple" in wide and "…" not in wide


def test_export_backend_only_with_tensorrt(inputs):
    model, _, _ = inputs
    proc = run_cli("export", model, "--format", "onnx", "--backend", "tensorrt", "--out", "e", check=False)
    assert_one_line_error(proc, "--backend tensorrt applies to --format tensorrt only")
    assert not Path("e").exists()


def test_bench_block_checked_up_front(inputs):
    model, data, _ = inputs
    proc = _build(model, data, "--bench-block", "0")
    assert_one_line_error(proc, "--bench-block must be at least 1")


# ------------------------------------------------------------------ on a real (tiny) bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny random BERT (MiniLM tokenizer), a labelled CSV and one build of them (as test_build's tiny task)."""
    import csv

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from optin_deploy.data import assets

    root = tmp_path_factory.mktemp("jsonsafety")

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=128, num_labels=2, id2label={0: "rotten", 1: "fresh"}, label2id={"rotten": 0, "fresh": 1})
    BertForSequenceClassification(cfg).eval().save_pretrained(root / "model")
    tok = assets.minilm().path
    copy_tokenizer(tok, root / "model")
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(120):
            w.writerow([("good fine fun film" if i % 2 else "bad dull plot film"), "fresh" if i % 2 else "rotten"])
    old = os.umask(0o022)
    try:
        run_cli("build", "--model", root / "model", "--data", root / "data.csv", "--profile", "x86-cpu-ort", "--select-by", "macs",
                "--flops", "0.6", "--calib-samples", "16", "--bench-iters", "3", "--no-baselines", "--scoring", "exact",
                "--out", root / "b", "--json", root / "build.json")
    finally:
        os.umask(old)
    return root


@pytest.mark.slow  # one tiny build, then eval and bench on it
def test_bundle_json_stdout_and_modes(bundle, tmp_path):
    b = bundle / "b"
    assert json.loads((bundle / "build.json").read_text())["written_by"] == "optin-deploy --json"
    assert stat.S_IMODE(os.stat(b / "pruned" / "model.safetensors").st_mode) == 0o644
    # eval and bench take the build folder itself, and --json - leaves stdout pure JSON
    r = run_cli("eval", b, "--json", "-")
    res = json.loads(r.stdout)
    assert set(res["models"]) == {"dense", "pruned"} and "written_by" not in res
    assert "dense" in r.stderr  # the table went to stderr
    r = run_cli("bench", b, "--iters", "2", "--warmup", "1", "--batch", "2", "--seq-len", "8", "--json", "-")
    assert set(json.loads(r.stdout)["models"]) == {"dense", "pruned"}
    r = run_cli("bench", b, "--runtimes", "ort-cpu", "--iters", "2", "--warmup", "1", "--block", "1", "--batch", "2", "--seq-len", "8", "--json", "-")
    json.loads(r.stdout)
    assert "optin-deploy eval BUNDLE --runtime NAME" in " ".join(r.stderr.split())  # the suggested command works:
    run_cli("eval", b, "--runtime", "ort-cpu")
    # re-running with the same --json file needs no --force
    for _ in range(2):
        run_cli("eval", b, "--json", tmp_path / "e.json")
    assert json.loads((tmp_path / "e.json").read_text())["written_by"] == "optin-deploy --json"
    assert_one_line_error(run_cli("eval", b, "--json", b / "report.json", check=False), "input")
    # the build's --json again, same path: replaced without --force (refused before any work when it is not ours)
    (bundle / "mine.json").write_text("{}")
    proc = run_cli("build", "--model", bundle / "model", "--data", bundle / "data.csv", "--out", bundle / "b2", "--json", bundle / "mine.json",
                   check=False)
    assert_one_line_error(proc, "did not write")
    assert not (bundle / "b2").exists()


@pytest.mark.slow
def test_symlinked_data_inside_out_is_protected(bundle, tmp_path):
    b = bundle / "b"
    (b / "mydata.csv").write_text((bundle / "data.csv").read_text())
    link = tmp_path / "link.csv"
    link.symlink_to(b / "mydata.csv")
    proc = run_cli("build", "--model", bundle / "model", "--data", link, "--profile", "x86-cpu-ort", "--out", b, "--force", check=False)
    assert_one_line_error(proc, "holds this command's input")
    assert (b / "mydata.csv").is_file() and (b / "report.json").is_file()
    (b / "mydata.csv").unlink()
