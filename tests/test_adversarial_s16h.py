"""Session-16 adversarial pass (h): leftovers of session 15, reproduced and fixed: empty path values, a bundle whose
tokenizer was deleted, bench on a bundle without report.json, the latency table read once and said when it contradicts
itself, and two builds into one --out at once."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------------------------ a bundle is its own tokenizer's

WORDS = ["good", "great", "fine", "bad", "awful", "dull", "the", "film", "was", "a", "plot", "and"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny BERT (64 positions, its own tokenizer) and a CSV, built once into a bundle at x86-cpu-ort (8 x 128 tokens,
    which the model's 64 positions cut to 8 x 64)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root = tmp_path_factory.mktemp("s16h")
    model = root / "model"
    model.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (model / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    labels = {0: "rotten", 1: "fresh"}
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64, num_labels=2, id2label=labels, label2id={v: k for k, v in labels.items()})
    BertForSequenceClassification(cfg).eval().save_pretrained(model)
    BertTokenizerFast(vocab=str(model / "vocab.txt"), do_lower_case=True).save_pretrained(model)
    rng = random.Random(0)
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(200):
            w.writerow([" ".join(rng.choices(WORDS, k=rng.randint(3, 40))), ["fresh", "rotten"][i % 2]])
    run_cli("build", "--model", model, "--data", root / "data.csv", "--profile", "x86-cpu-ort", "--flops", "0.5", "--calib-samples", "16",
            "--calib-length", "32", "--bench-iters", "3", "--no-baselines", "--out", root / "b")
    return root


def _copy(bundle_root: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(bundle_root / "b", tmp_path / "b")
    return tmp_path / "b"


def _point_source(b: Path, src: Path) -> None:
    """Make the bundle's pruned folder name ``src`` as the model it was pruned from."""
    f = b / "pruned" / "optin_structure.json"
    spec = json.loads(f.read_text())
    spec["extra"]["source_dir"] = str(src)
    f.write_text(json.dumps(spec))


@pytest.mark.slow  # a build (module fixture)
def test_a_bundle_that_lost_its_tokenizer_is_refused_naming_the_file(bundle, tmp_path):
    """With BUNDLE/pruned's tokenizer files deleted, `eval BUNDLE` took the source model's tokenizer (through
    optin_structure.json's source_dir) and printed figures, exit 0, whatever that tokenizer had become. A bundle's
    files are checked against its manifest.json: one line naming the missing file, exit 2, for eval and bench."""
    b = _copy(bundle, tmp_path)
    spec = json.loads((b / "pruned" / "optin_structure.json").read_text())
    assert set(spec["tokenizer_files"]) == {"tokenizer.json", "tokenizer_config.json", "vocab.txt"}
    (b / "pruned" / "vocab.txt").unlink()
    proc = run_cli("eval", b, check=False)
    _one_line(proc, 2, "pruned/vocab.txt is missing", "manifest.json")
    # bench only times (the exports are intact): it says so, and times the pruned model on the text the dense one gets
    # (tokenised by the model folder the dense export names, the same vocabulary)
    proc = run_cli("bench", b, "--iters", "2", "--warmup", "1")
    assert "pruned/vocab.txt is missing" in proc.stderr and f"timed on text tokenised by {bundle / 'model'}" in proc.stderr, proc.stderr


@pytest.mark.slow  # a build (module fixture)
def test_a_pruned_folder_that_lost_its_tokenizer_uses_the_source_only_when_identical(bundle, tmp_path, capsys):
    """A pruned folder outside a bundle (what `prune --out` writes: no manifest.json) whose tokenizer files were deleted
    took the source model's tokenizer silently, whatever it had become. The folder records its tokenizer files' sha256:
    the source is used only when its files are those (a warning names the missing files and the cp that puts them
    back); else one line naming the missing files and why the source cannot stand in."""
    import shutil

    from optin_deploy.errors import OptinError
    from optin_deploy.models import load_tokenizer

    alone = tmp_path / "alone"
    shutil.copytree(bundle / "b" / "pruned", alone)
    spec = json.loads((alone / "optin_structure.json").read_text())
    for name in spec["tokenizer_files"]:
        (alone / name).unlink()
    src = tmp_path / "src"
    shutil.copytree(bundle / "model", src)
    spec["extra"]["source_dir"] = str(src)
    (alone / "optin_structure.json").write_text(json.dumps(spec))
    tok = load_tokenizer(alone)  # identical source: used, and said
    said = capsys.readouterr().err
    assert "vocab.txt" in said and "same sha256" in said and f"cp {src / 'tokenizer.json'}" in said, said
    assert tok("fresh")["input_ids"]
    with open(src / "vocab.txt", "a") as f:  # the source's vocabulary changed since: refused
        f.write("newword\n")
    with pytest.raises(OptinError, match="no longer holds the same files") as err:
        load_tokenizer(alone)
    assert "vocab.txt" in str(err.value) and "\n" not in str(err.value)
    shutil.rmtree(src)  # the source gone (moved to another machine): refused
    with pytest.raises(OptinError, match="not here to check against"):
        load_tokenizer(alone)


def test_a_pruned_model_of_a_hub_model_keeps_its_tokenizer(tmp_path):
    """A model named on the hub has its files in the hub's cache, not in a folder: the pruned folder (and so a bundle's
    pruned/, which the serving block names as the tokenizer) was written without any tokenizer, and `eval BUNDLE` ended
    in "no tokenizer found". The tokenizer the figures were computed with is now saved there."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from conftest import save_word_tokenizer
    from optin_deploy.models import load_tokenizer
    from optin_deploy.pruned_io import save_pruned

    (tmp_path / "tok").mkdir()
    save_word_tokenizer(tmp_path / "tok")
    tok = BertTokenizerFast.from_pretrained(tmp_path / "tok")
    torch.manual_seed(0)
    m = BertForSequenceClassification(BertConfig(vocab_size=120, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                                 intermediate_size=32)).eval()
    out = save_pruned(m, tmp_path / "p", extra={"source": "org/model", "source_dir": "org/model"}, tokenizer=tok)
    rec = json.loads((out / "optin_structure.json").read_text())["tokenizer_files"]
    assert "tokenizer.json" in rec and (out / "tokenizer.json").is_file()
    assert load_tokenizer(out)("w3 w7")["input_ids"] == tok("w3 w7")["input_ids"]


# ------------------------------------------------------------------------------ 3. bench takes the shape the bundle still holds


@pytest.mark.slow  # a build (module fixture)
@pytest.mark.parametrize("gone", ["report.json", "manifest.json"])
def test_bench_of_a_bundle_without_its_report_or_manifest_is_refused_naming_it(bundle, tmp_path, gone):
    """With report.json deleted, `bench BUNDLE` took the profile's 8 x 128 and stopped on this 64-position model
    ("indices element out of data bounds, idx=64"); with manifest.json deleted, it fell back to 8 x 128 and the
    runtime's threads. A bundle whose record is gone cannot be checked: one line naming the file and the fix."""
    b = _copy(bundle, tmp_path)
    (b / gone).unlink()
    proc = run_cli("bench", b, "--iters", "2", "--warmup", "1", check=False)
    _one_line(proc, 2, gone, "missing")


# ------------------------------------------------------------------------------ 4-5. the latency table: read once, contradictions said


def _table(attn=(0.0, 0.2, 0.4, 0.6, 0.8), widths=(0, 16, 32, 48, 64), mlp=(0.0, 0.1, 0.2, 0.3, 0.4)) -> dict:
    """A latency table of the fixture's model (BERT, 2 layers of 4 heads and 64 neurons) on x86-cpu-ort."""
    return {"format": "optin-deploy-lut", "version": 1,
            "profile": {"name": "x86-cpu-ort", "runtime": "onnxruntime-cpu", "precision": "int8", "threads": 2},
            "shapes": {"batch": 8, "tokens": 64, "seq_len": 128, "image_size": None},
            "model": {"name": "m", "family": "bert", "num_layers": 2, "heads": [4, 4], "neurons": [64, 64], "hidden_size": 32, "head_dim": 8},
            "attn_ms": list(attn), "mlp_widths": list(widths), "mlp_ms": list(mlp), "empty_model_ms": 0.5, "dense_model_ms": 2.9}


def test_a_latency_table_that_contradicts_itself_is_said_with_its_rows(tmp_path, capsys):
    """A noisy table (an MLP measured faster at width 32 than at 16, attention with 3 heads under 2, a negative entry)
    was held non-decreasing when read without a word. Selection stays sound (no unit costs negative time), and the
    file and the rows beyond timing noise are now named in one warning; dips within noise are not."""
    from optin_deploy.lut import read_lut

    f = tmp_path / "lut.json"
    f.write_text(json.dumps(_table(attn=(0.0, 0.2, 0.45, 0.1, 0.8), mlp=(0.0, 0.3, -0.05, 0.31, 0.4))))
    t = read_lut(f)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"warning: latency table {f} contradicts itself"), err
    assert "attention at 3 heads 0.1 ms < 2 heads's 0.45 ms" in err and "MLP at width 32 -0.05 ms < width 16's 0.3 ms" in err, err
    cm = t.cost_model()
    assert all(n >= 0 for n in cm.neuron) and all(cm.attn(0, h + 1) >= cm.attn(0, h) >= 0 for h in range(4))
    f.write_text(json.dumps(_table(attn=(0.0, 0.2, 0.4, 0.39, 0.8), mlp=(0.0, 0.1, 0.2, 0.19, 0.4))))  # within noise: silent
    read_lut(f)
    assert capsys.readouterr().err == ""


@pytest.mark.slow  # a build (module fixture and one more)
def test_the_lut_is_read_once_per_build(bundle, tmp_path, monkeypatch):
    """`build --lut FILE` parsed and checked the file three times (before the model loaded, before scoring, at the
    selection; choosing profiles a fourth time): a file replaced during the build (another `lut --out FILE` finishing)
    gave the checks one table and the selection another. It is read once; every stage uses that table."""
    import optin_deploy.lut as lut

    f = tmp_path / "lut.json"
    f.write_text(json.dumps(_table()))
    reads = []
    real = lut.read_lut

    def reading(path):
        reads.append(str(path))
        table = real(path)
        f.write_text(json.dumps(_table(mlp=(0.0, 1.0, 2.0, 3.0, 4.0))))  # replaced right after the read: never seen
        return table

    monkeypatch.setattr(lut, "read_lut", reading)
    run_cli("build", "--model", bundle / "model", "--data", bundle / "data.csv", "--profile", "x86-cpu-ort", "--flops", "0.5",
            "--select-by", "latency", "--lut", f, "--calib-samples", "16", "--calib-length", "32", "--bench-iters", "3",
            "--no-baselines", "--out", tmp_path / "b")
    assert reads == [str(f)]
    info = json.loads((tmp_path / "b" / "report.json").read_text())
    dense = round(lut.LatencyTable.from_dict(_table()).cost_model().dense(), 4)  # the table as first read, not as replaced
    assert f'"table_dense_ms": {dense}' in json.dumps(info), dense


# ------------------------------------------------------------------------------ 6. two runs, one --out


def test_a_second_run_into_the_same_out_stops_at_once_and_writes_nothing(tmp_path):
    """Two builds started together with one --out both staged, both published and both said "written": the second
    replaced the first's fresh bundle without a word (measured with two processes publishing 1.5 s apart: both printed
    'wrote', the folder held the later one's). The output folder is now locked for the whole run (build: from its first
    step): the second stops at once with one line, exit 2, and the first's folder and the user's files are untouched."""
    from optin_deploy.safe_out import staged_output

    (tmp_path / "w").mkdir()
    out = tmp_path / "w" / "b"
    (tmp_path / "w" / "mine.txt").write_text("the user's")
    with staged_output(out, kind="bundle") as staging:
        (staging / "who").write_text("first")
        proc = run_cli("build", "--out", out, "--calib-samples", "16", check=False)  # started while the first is writing
        _one_line(proc, 2, f"another optin-deploy process is writing {out}", "wrote nothing", "pass another --out")
        assert not out.exists()
    assert (out / "who").read_text() == "first"
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["b", "mine.txt"]  # no staging, lock or set-aside folder left
    with staged_output(out, kind="bundle") as staging:  # the lock goes with the run: the next one writes
        (staging / "who").write_text("second")
    assert (out / "who").read_text() == "second"


@pytest.mark.slow  # a build (module fixture)
def test_bench_times_dense_and_pruned_on_the_same_text_when_the_source_folder_is_gone(bundle, tmp_path):
    """The dense export's tokenizer is the model folder the build read (an absolute path); with that folder moved away
    (the bundle taken to another machine), `bench BUNDLE` timed the dense model on random ids and the pruned one on
    tokenised text. The dense model now takes the tokenizer of the model it is timed against (same vocabulary)."""
    from optin_deploy.bench import _tokenizer_sources, bench_inputs

    b = _copy(bundle, tmp_path)
    away = bundle / "model.away"
    (bundle / "model").rename(away)
    try:
        specs = [str(b / "onnx" / "dense"), str(b / "onnx" / "pruned")]
        proc = run_cli("bench", *specs, "--iters", "2", "--warmup", "1")
        assert "timed on text tokenised by" in proc.stderr and "random token ids" not in proc.stderr, proc.stderr
        dense = bench_inputs(specs[0], 2, 16, other_sources=_tokenizer_sources(specs))
        pruned = bench_inputs(specs[1], 2, 16)
        assert set(dense) == set(pruned) and all(np.array_equal(dense[k], pruned[k]) for k in dense)
        alone = bench_inputs(specs[0], 2, 16)  # without the others: random ids, said
        assert not np.array_equal(alone["input_ids"], pruned["input_ids"])
    finally:
        away.rename(bundle / "model")
