"""Session-15 adversarial pass (c): the user's own model folders and families. Each test reproduces a defect
found by loading model folders as users have them (custom code, dtypes, heads, families)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from conftest import run_cli, run_cli_subprocess
from test_inputs_defects import FAST, assert_one_line, save_bert, write_csv


pytestmark = pytest.mark.usefixtures("quiet_cache")  # conftest: a cache of its own per test, no hub


@pytest.fixture(scope="module")
def bert3(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("b3") / "model")


def test_custom_code_in_a_model_folder_never_runs_even_when_the_terminal_says_yes(tmp_path, bert3):
    """A config.json with a custom model_type and an auto_map naming a Python file in the folder: transformers'
    default (trust_remote_code=None) asked "Do you wish to run the custom code? [y/N]" on the terminal, and a "y"
    (or `yes | optin-deploy ...`) ran the folder's code. Now it is never asked and never run: one line, exit 2."""
    folder = tmp_path / "custom"
    shutil.copytree(bert3, folder)
    marker = tmp_path / "RAN"
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="my-bert", auto_map={"AutoConfig": "modeling_mine.MyConfig",
                                                "AutoModelForSequenceClassification": "modeling_mine.MyModel"})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "modeling_mine.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
                                             "from transformers import BertConfig as MyConfig, BertForSequenceClassification as MyModel\n")
    data = write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"])
    proc = run_cli_subprocess("prune", folder, "--flops", "0.6", "--data", data, "--calib-samples", "8", "--out", tmp_path / "p",
                              check=False, input="y\n", timeout=300)
    assert not marker.exists(), "the model folder's code ran"
    assert "Do you wish to run the custom code" not in proc.stderr + proc.stdout
    assert_one_line(proc, 2, "'my-bert' is not supported")
    assert not (tmp_path / "p").exists()


def test_a_tokenizer_larger_than_the_models_vocabulary_is_refused_before_scoring(tmp_path):
    """A folder whose tokenizer is another model's (300 tokens) on a model embedding 120: a text holding a token
    past 119 stopped the build with 'internal error IndexError: index out of range in self' (exit 1)."""
    from conftest import save_word_tokenizer

    folder = save_bert(tmp_path / "m", vocab_size=120, tokenizer=False)
    save_word_tokenizer(folder, vocab_size=300)
    rows = [f"w{i} w{i + 150} w{290 - i}" for i in range(60)]
    (tmp_path / "d.csv").write_text("text,label\n" + "".join(f"{t},{['neg', 'neu', 'pos'][i % 3]}\n" for i, t in enumerate(rows)))
    proc = run_cli("build", "--model", folder, "--data", tmp_path / "d.csv", "--out", tmp_path / "b", *FAST, check=False)
    assert_one_line(proc, 2, "its tokenizer has 300 tokens but the model embeds only 120", "tokenizer the model was trained with")
    assert not (tmp_path / "b").exists()


def test_a_tokenizer_smaller_than_the_vocabulary_still_fits(tmp_path):
    from optin_deploy.models import check_tokenizer_fits, load_model, load_tokenizer

    folder = save_bert(tmp_path / "m", vocab_size=40)  # 17 tokens, 40 embedding rows (a padded vocabulary)
    check_tokenizer_fits(load_tokenizer(folder), load_model(folder), folder)


def _write_regression_csv(path: Path, n: int = 60) -> Path:
    import random

    from test_inputs_defects import WORDS

    rng = random.Random(0)
    path.write_text("text,label\n" + "".join(f"{' '.join(rng.choices(WORDS, k=6))},{rng.random() * 5:.3f}\n" for _ in range(n)))
    return path


def test_a_multi_target_regression_model_is_refused_not_scored_on_its_first_output(tmp_path):
    """problem_type regression with num_labels 3 (one score per target): the build reported Spearman of the first
    output alone against the one label column, exit 0. Now one line, exit 2, before scoring."""
    folder = save_bert(tmp_path / "m")
    cfg = json.loads((folder / "config.json").read_text())
    cfg["problem_type"] = "regression"
    (folder / "config.json").write_text(json.dumps(cfg))
    proc = run_cli("build", "--model", folder, "--data", _write_regression_csv(tmp_path / "d.csv"), "--out", tmp_path / "b", *FAST,
                   check=False)
    assert_one_line(proc, 2, "regression model with 3 outputs", "one-output regression")
    assert not (tmp_path / "b").exists()


def test_regression_outputs_must_be_one_score_per_sample():
    import numpy as np

    from optin_deploy.errors import OptinError
    from optin_deploy.evaluate import _check_outputs

    _check_outputs("pruned", np.zeros((4, 1), np.float32), "regression", 0)
    _check_outputs("pruned", np.zeros(4, np.float32), "regression", 0)
    with pytest.raises(OptinError, match="3 scores per sample but the data has one regression label"):
        _check_outputs("pruned", np.zeros((4, 3), np.float32), "regression", 0)


def _hub_snapshot(tmp_path: Path, src: Path) -> tuple[Path, Path]:
    """The Hugging Face hub cache layout: snapshots/REV/FILE are symbolic links to ../../blobs/HASH."""
    blobs, snap = tmp_path / "hub" / "blobs", tmp_path / "hub" / "snapshots" / "rev1"
    blobs.mkdir(parents=True)
    snap.mkdir(parents=True)
    for i, f in enumerate(sorted(src.iterdir())):
        shutil.copy2(f, blobs / f"blob{i}")
        (snap / f.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    return snap, blobs


def test_out_never_replaces_the_folder_a_models_linked_files_live_in(tmp_path, bert3):
    """`prune SNAPSHOT --out hub/blobs --force` replaced the blobs folder (exit 0), and the model folder was left
    with dangling links: its weights, config and tokenizer were gone. The README promises the inputs' folders are
    refused even with --force, symbolic links resolved; now the folder any of the model's files links into is too."""
    snap, blobs = _hub_snapshot(tmp_path, bert3)
    before = sorted(p.name for p in blobs.iterdir())
    data = write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"])
    for cmd in (["prune", snap, "--flops", "0.6", "--data", data, "--calib-samples", "8"], ["export", snap, "--format", "onnx"],
                ["build", "--model", snap, "--data", data, *FAST]):
        proc = run_cli(*cmd, "--out", blobs, "--force", check=False)
        assert_one_line(proc, 2, "of this command's input", "symbolic link", "even with --force")
        assert sorted(p.name for p in blobs.iterdir()) == before
    weights = (snap / "model.safetensors").resolve()
    proc = run_cli("prune", snap, "--flops", "0.6", "--data", data, "--out", tmp_path / "p", "--json", weights, "--force", check=False)
    assert_one_line(proc, 2, "is this command's input")
    assert (snap / "model.safetensors").read_bytes() == (bert3 / "model.safetensors").read_bytes()


def test_a_classifier_class_of_the_users_own_is_not_pointed_at_task_embedding(tmp_path, bert3):
    """architectures ["MySentimentClassifier"] (a user's own class around BERT) was refused as a bare encoder, with
    'a sentence encoder takes --task embedding': advice for another kind of model. Now the line says the name is
    not a transformers class and how to say which class the weights are."""
    from optin_deploy.errors import OptinError
    from optin_deploy.models import load_model

    folder = tmp_path / "m"
    shutil.copytree(bert3, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["architectures"] = ["MySentimentClassifier"]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(OptinError) as e:
        load_model(folder)
    msg = str(e.value)
    assert "MySentimentClassifier, which is not a transformers class" in msg and '["BertForSequenceClassification"]' in msg
    assert "--task embedding" not in msg
    cfg["architectures"] = ["BertModel"]  # a transformers bare encoder still gets the embedding hint
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(OptinError, match="--task embedding"):
        load_model(folder)
