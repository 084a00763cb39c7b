"""Inputs the tester found mishandled (one line on stderr, exit 2, before any expensive work; or accepted
when they are right): a model folder without a tokenizer, a code-carrying pickle checkpoint, integer
class ids that are a subset of the model's classes or outside its range, too little data for the
splits, a bad --seed / --search-start, an unknown model_type, and where the data are recorded."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from optin_deploy.errors import OptinError

WORDS = ["good", "great", "fine", "bad", "awful", "dull", "the", "film", "was", "a", "plot", "and"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LABELS3 = {0: "neg", 1: "neu", 2: "pos"}
FAST = ["--profile", "x86-cpu-ort", "--select-by", "macs", "--calib-samples", "8", "--bench-iters", "2", "--no-baselines",
        "--flops", "0.6"]


pytestmark = pytest.mark.usefixtures("quiet_cache")  # conftest: a cache of its own per test, no hub


def save_bert(folder: Path, *, vocab: list[str] | None = SPECIALS + WORDS, vocab_size: int | None = None,
              num_labels: int = 3, tokenizer: bool = True) -> Path:
    """A tiny random 3-class BERT folder; ``tokenizer=False`` leaves the tokenizer files out."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    id2label = LABELS3 if num_labels == 3 else {i: f"c{i}" for i in range(num_labels)}
    cfg = BertConfig(vocab_size=vocab_size or len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=48, max_position_embeddings=64, num_labels=num_labels, id2label=id2label,
                     label2id={v: k for k, v in id2label.items()})
    BertForSequenceClassification(cfg).eval().save_pretrained(folder)
    if tokenizer:
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        BertTokenizerFast(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    return folder


def write_csv(path: Path, labels: list, n: int = 60, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            w.writerow([" ".join(rng.choices(WORDS, k=6)), labels[i % len(labels)]])
    return path


@pytest.fixture(scope="module")
def model3(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("m3") / "model")


def assert_one_line(proc, code: int, *needles: str) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def build(*args) -> object:
    return run_cli("build", *args, check=False)


# ------------------------------------------------------------------------------- 1. no tokenizer


def test_model_folder_without_tokenizer_is_refused(tmp_path):
    folder = save_bert(tmp_path / "notok", tokenizer=False)
    data = write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"])
    out = tmp_path / "out"
    line = assert_one_line(build("--model", folder, "--data", data, *FAST, "--out", out), 2, "no tokenizer found", "save_pretrained")
    assert "tokenizer" in line and not out.exists()


def test_tokenizer_of_only_special_tokens_is_refused(tmp_path):
    from optin_deploy.models import load_tokenizer

    folder = save_bert(tmp_path / "specials", vocab=SPECIALS, vocab_size=30)
    with pytest.raises(OptinError, match="only its 5 special tokens"):
        load_tokenizer(folder)


def test_padded_vocabulary_is_accepted(tmp_path):
    """A tokenizer with fewer tokens than config.vocab_size (a vocabulary padded to a multiple) is fine."""
    from optin_deploy.models import load_tokenizer

    folder = save_bert(tmp_path / "padded", vocab_size=len(SPECIALS + WORDS) + 15)
    tok = load_tokenizer(folder)
    assert tok("good film")["input_ids"][1:3] != [tok.unk_token_id] * 2


# ------------------------------------------------------------------------- 2. code-carrying pickle


class SystemCall:
    """Unpickling this would run os.system (torch 2.14 says 'unsupported GLOBAL posix.system whose module posix is blocked')."""

    def __init__(self, marker: Path):
        self.cmd = f"touch {marker}"

    def __reduce__(self):
        return (os.system, (self.cmd,))


@pytest.mark.parametrize("route", ["transformers-folder", "timm-file"])
def test_os_system_pickle_gets_the_pickle_line(tmp_path, model3, route):
    marker = tmp_path / "PWNED"
    out = tmp_path / "out"
    if route == "transformers-folder":
        folder = tmp_path / "evil"
        folder.mkdir()
        for f in model3.iterdir():
            if f.name != "model.safetensors":
                (folder / f.name).write_bytes(f.read_bytes())
        torch.save({"x": SystemCall(marker)}, folder / "pytorch_model.bin")
        args = ["--model", folder, "--data", write_csv(tmp_path / "d.csv", ["neg", "pos"])]
    else:
        f = tmp_path / "evil.bin"
        torch.save({"x": SystemCall(marker)}, f)
        args = ["--model", f"timm:vit_tiny_patch16_224@{f}"]
    line = assert_one_line(build(*args, "--flops", "0.5", "--out", out), 2, "need", "pickle", "safetensors.torch.save_file")
    assert "weights_only" not in line and "corrupt" not in line
    assert not marker.exists() and not out.exists()


def test_needs_pickle_matches_every_torch_wording():
    from optin_deploy.errors import short_reason
    from optin_deploy.models import needs_pickle

    import pickle

    new = pickle.UnpicklingError("Weights only load failed. In PyTorch 2.6, we changed the default value of the `weights_only` "
                                 "argument. Re-running `torch.load` with `weights_only` set to `False` will likely succeed.\n\n\n"
                                 "Trying to load unsupported GLOBAL posix.system whose module posix is blocked.\n\nCheck the documentation")
    old = pickle.UnpicklingError("Weights only load failed.\n\tWeightsUnpickler error: Unsupported global: GLOBAL "
                                 "torch.nn.Linear was not an allowed global by default.")
    assert needs_pickle(new) and needs_pickle(old)
    wrapped = OSError("cannot load")
    wrapped.__cause__ = new
    assert needs_pickle(wrapped)
    assert not needs_pickle(RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory"))
    assert "weights_only" not in short_reason(new) and "posix.system" in short_reason(new)


# ------------------------------------------------------------------------------- 3. class ids


@pytest.mark.parametrize("labels", [[0, 1], [1, 2], [0], [2, 0, 1]])
def test_integer_class_ids_may_be_any_subset_of_the_models(tmp_path, model3, labels):
    from optin_deploy.zoo import load_task

    task = load_task(str(model3), str(write_csv(tmp_path / "ids.csv", labels)))
    assert task.data.num_labels == 3 and task.data.label_names == ["neg", "neu", "pos"]
    ys = torch.cat([task.data.train.labels, task.data.validation.labels, task.data.test.labels])
    assert set(ys.tolist()) == set(labels)  # ids kept as they are


def test_given_splits_may_hold_ids_the_training_split_lacks(tmp_path, model3):
    from optin_deploy.zoo import load_task

    d = tmp_path / "splits"
    d.mkdir()
    write_csv(d / "train.csv", [0, 1], n=40)
    write_csv(d / "validation.csv", [0, 1, 2], n=12)
    write_csv(d / "test.csv", [2, 1], n=12)
    task = load_task(str(model3), str(d))
    assert task.data.num_labels == 3 and set(task.data.test.labels.tolist()) == {1, 2}


def test_out_of_range_class_id_is_named(tmp_path, model3):
    data = write_csv(tmp_path / "ids.csv", [0, 1, 2] * 20 + [7], n=61)
    line = assert_one_line(build("--model", model3, "--data", data, *FAST, "--out", tmp_path / "out"), 2, "class id 7", "0..2", "3 classes")
    assert "8 labels" not in line and "3, 4, 5" not in line


def test_string_labels_still_match_by_name(tmp_path, model3):
    from optin_deploy.zoo import load_task

    task = load_task(str(model3), str(write_csv(tmp_path / "s.csv", ["POS", "neg"])))
    assert task.data.label_names == ["neg", "neu", "pos"]
    assert set(task.data.train.labels.tolist()) == {0, 2}


# ------------------------------------------------------------------------- 4. too little data, seed


def test_too_few_rows_for_the_splits(tmp_path, model3):
    from optin_deploy.data.loaders import load_data

    tiny = write_csv(tmp_path / "tiny.csv", ["pos", "neu", "neg"], n=5)
    with pytest.raises(OptinError, match="too few for the 80/10/10"):
        load_data(tiny)
    line = assert_one_line(build("--model", model3, "--data", tiny, *FAST, "--calib-samples", "4", "--out", tmp_path / "out"),
                           2, "only 5 rows", "at least 10 rows")
    assert "empty" in line
    assert len(load_data(write_csv(tmp_path / "ten.csv", ["pos"], n=10)).test) == 1  # 10 rows of one class are enough


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_bad_seed_is_refused_up_front(tmp_path, model3, seed):
    data = write_csv(tmp_path / "d.csv", ["neg", "pos"])
    assert_one_line(build("--model", model3, "--data", data, *FAST, "--seed", seed, "--out", tmp_path / "out"), 2, "--seed")


@pytest.mark.parametrize("start, needle", [("2", "(0, 1]"), ("nan", "(0, 1]"), ("0.05", "search range")])
def test_search_start_out_of_range_is_refused(tmp_path, model3, start, needle):
    data = write_csv(tmp_path / "d.csv", ["neg", "pos"])
    args = ["--profile", "x86-cpu-ort", "--select-by", "macs", "--max-accuracy-drop", "1", "--search-start", start]
    assert_one_line(build("--model", model3, "--data", data, *args, "--out", tmp_path / "out"), 2, "--search-start", needle)


# ------------------------------------------------------------------------------ 5. model_type


def test_unknown_model_type_names_the_supported_ones(tmp_path, model3):
    folder = tmp_path / "florp"
    folder.mkdir()
    for f in model3.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "florp"}))
    data = write_csv(tmp_path / "d.csv", ["neg", "pos"])
    line = assert_one_line(build("--model", folder, "--data", data, *FAST, "--out", tmp_path / "out"), 2, "'florp'", "not supported",
                           "bert", "distilbert")
    assert "Transformers does not recognize" not in line
    (folder / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "model_type"}))
    assert_one_line(build("--model", folder, "--data", data, *FAST, "--out", tmp_path / "out"), 2, "no model_type", "bert")


def test_short_reason_cuts_at_a_word():
    from optin_deploy.errors import short_reason

    text = "because your version of Transformers is out of date " * 10
    r = short_reason(text, 60)
    assert r.endswith("...") and len(r) <= 63
    assert text.startswith(r[:-3]) and r[:-3].split()[-1] in text.split()


# ------------------------------------------------------------------------ 6. where the data is recorded


def test_data_source_and_manifest_inputs_are_absolute(tmp_path, monkeypatch):
    from optin_deploy.build import _data_inputs
    from optin_deploy.data.assets import sha256_file
    from optin_deploy.data.loaders import load_data

    (tmp_path / "data").mkdir()
    f = write_csv(tmp_path / "data" / "d.csv", ["neg", "pos"])
    monkeypatch.chdir(tmp_path)
    td = load_data("data/d.csv")
    assert td.source["path"] == str(f.resolve())
    inputs = _data_inputs("data/d.csv", td.source)
    assert inputs == {"data": "data/d.csv", "data_path": str(f.resolve()), "data_sha256": sha256_file(f)}
