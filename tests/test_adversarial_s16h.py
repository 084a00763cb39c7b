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
def test_eval_of_a_bundle_that_lost_its_tokenizer_uses_the_source_only_when_identical(bundle, tmp_path):
    """With BUNDLE/pruned's tokenizer files deleted, `eval BUNDLE` took the source model's tokenizer (through
    optin_structure.json's source_dir) and printed figures, exit 0, whatever that tokenizer had become: a figure computed
    with another vocabulary. The pruned folder now records its tokenizer files' sha256: the source is used only when its
    files are those (a warning names the missing files and the cp that puts them back); else one line, exit 2."""
    import shutil

    b = _copy(bundle, tmp_path)
    spec = json.loads((b / "pruned" / "optin_structure.json").read_text())
    assert set(spec["tokenizer_files"]) == {"tokenizer.json", "tokenizer_config.json", "vocab.txt"}
    for name in spec["tokenizer_files"]:
        (b / "pruned" / name).unlink()
    src = tmp_path / "src"
    shutil.copytree(bundle / "model", src)
    _point_source(b, src)
    proc = run_cli("eval", b)  # identical source: used, and said
    assert "vocab.txt" in proc.stderr and "same sha256" in proc.stderr and f"cp {src / 'tokenizer.json'}" in proc.stderr, proc.stderr
    assert "accuracy" in proc.stdout
    with open(src / "vocab.txt", "a") as f:  # the source's vocabulary changed since the build: refused
        f.write("newword\n")
    proc = run_cli("eval", b, check=False)
    _one_line(proc, 2, f"{b / 'pruned'} is missing", "vocab.txt", "no longer holds the same files")
    shutil.rmtree(src)  # the source gone (a bundle moved to another machine): refused
    proc = run_cli("eval", b, check=False)
    _one_line(proc, 2, "is missing", "not here to check against")
    proc = run_cli("bench", b, "--iters", "2", "--warmup", "1")  # bench only times: it says so and uses random ids
    assert "timed on random token ids" in proc.stderr and "is missing" in proc.stderr, proc.stderr


@pytest.mark.slow  # a build (module fixture)
def test_a_bundle_of_an_older_build_is_checked_against_its_manifest(bundle, tmp_path):
    """A bundle built before optin_structure.json recorded its tokenizer: manifest.json's sha256 of pruned/'s files are
    the record. One file deleted (the tokenizer then loaded from the others, silently another tokenizer) is named."""
    b = _copy(bundle, tmp_path)
    f = b / "pruned" / "optin_structure.json"
    spec = json.loads(f.read_text())
    del spec["tokenizer_files"]
    f.write_text(json.dumps(spec))
    (b / "pruned" / "tokenizer.json").unlink()
    _point_source(b, tmp_path / "nowhere")
    proc = run_cli("eval", b, check=False)
    line = _one_line(proc, 2, "is missing tokenizer.json")
    assert "vocab.txt" not in line.split("written with")[0]


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
def test_bench_of_a_bundle_without_its_report_times_the_shape_it_was_built_for(bundle, tmp_path, gone):
    """With report.json deleted, `bench BUNDLE` took the profile's 8 x 128 and stopped on this 64-position model
    ("indices element out of data bounds, idx=64"); with manifest.json deleted, it fell back to 8 x 128 and the
    runtime's threads. The shape now comes from what the bundle still holds (its exports' longest input, or
    report.json's measured shape) and bench says which shape it timed and where it came from."""
    b = _copy(bundle, tmp_path)
    (b / gone).unlink()
    proc = run_cli("bench", b, "--iters", "2", "--warmup", "1", "--json", tmp_path / "r.json")
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["shape"] == {"batch": 8, "seq_len": 64, "threads": 2}, r["shape"]
    assert gone in r["settings_from"] and "x86-cpu-ort" in r["settings_from"]
    assert "batch 8 x 64 tokens" in proc.stdout and f"{gone}" in proc.stdout, proc.stdout
