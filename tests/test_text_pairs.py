"""Sentence-pair tasks (NLI, paraphrase): ``--text-column premise,hypothesis`` reads two text columns,
tokenises them as a pair, and makes the segment ids a model input where the family embeds them
(BERT, ELECTRA: ``type_vocab_size > 1``), so the exported graph sees what the model was trained on."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from optin_deploy.data.loaders import load_data, text_columns
from optin_deploy.errors import OptinError
from test_inputs_defects import FAST, WORDS, assert_one_line, save_bert


pytestmark = pytest.mark.usefixtures("quiet_cache")  # conftest: a cache of its own per test, no hub


def write_pairs(path: Path, n: int = 90, header=("premise", "hypothesis", "label")) -> Path:
    rng = random.Random(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for i in range(n):
            w.writerow([" ".join(rng.choices(WORDS, k=6)), " ".join(rng.choices(WORDS, k=3)), ["neg", "neu", "pos"][i % 3]])
    return path


@pytest.fixture(scope="module")
def pair_model(tmp_path_factory) -> Path:
    """A tiny BERT whose second segment embedding is large (and whose logits are of order 1), so that
    feeding zeros instead of the real segment ids changes the logits far beyond export tolerance."""
    from transformers import BertForSequenceClassification

    folder = save_bert(tmp_path_factory.mktemp("pm") / "model")
    m = BertForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        m.bert.embeddings.token_type_embeddings.weight[1].normal_(0, 1.0)
        m.classifier.weight.mul_(100.0)  # logits of order 1, not 0.01
    m.save_pretrained(folder)
    return folder


def test_text_columns_parsing():
    assert text_columns("text") == ("text",)
    assert text_columns("premise,hypothesis") == ("premise", "hypothesis")
    assert text_columns(" premise , hypothesis ") == ("premise", "hypothesis")
    assert text_columns("a,b", ["a,b", "label"]) == ("a,b",)  # a column whose own name has a comma
    for bad in ("a,b,c", "a,", ",b", "a,a"):
        with pytest.raises(OptinError, match="two different columns"):
            text_columns(bad)


def test_pair_data_loads_as_tuples(tmp_path):
    td = load_data(write_pairs(tmp_path / "p.csv"), text_column="premise,hypothesis")
    assert td.text_pair and td.source["text_pair"] == ["premise", "hypothesis"]
    assert all(isinstance(x, tuple) and len(x) == 2 for s in (td.train, td.validation, td.test) for x in s.inputs)
    assert len(td.train) + len(td.validation) + len(td.test) == 90
    single = load_data(tmp_path / "p.csv", text_column="premise")
    assert not single.text_pair and isinstance(single.train.inputs[0], str)
    with pytest.raises(OptinError, match="no text column 'claim'.*premise,hypothesis"):
        load_data(tmp_path / "p.csv", text_column="premise,claim")


def test_pair_encoding_feeds_segment_ids(pair_model, tmp_path):
    from optin_deploy.zoo import load_task

    task = load_task(str(pair_model), str(write_pairs(tmp_path / "p.csv")), text_column="premise,hypothesis", max_length=None)
    assert task.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    enc = task.encode(task.data.test.inputs[:4])
    tt = enc["token_type_ids"]
    assert tt.shape == enc["input_ids"].shape and int(tt.max()) == 1  # the second sentence is segment 1
    sep = task.tokenizer.sep_token_id
    assert all(int((row == sep).sum()) == 2 for row in enc["input_ids"])  # [CLS] a [SEP] b [SEP]
    # the same model on single-text data keeps two inputs (segment ids all zero, a constant in the graph)
    single = load_task(str(pair_model), str(tmp_path / "p.csv"), text_column="premise", max_length=None)
    assert single.input_names == ["input_ids", "attention_mask"]


def test_pairs_on_a_family_without_segment_embeddings(tmp_path):
    """DistilBERT has no token types: pairs are still tokenised as pairs, the inputs stay two."""
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from optin_deploy.zoo import load_task
    from test_inputs_defects import LABELS3

    folder = tmp_path / "distil"
    save_bert(folder)  # for the tokenizer files
    for f in ("config.json", "model.safetensors"):
        (folder / f).unlink()
    cfg = DistilBertConfig(vocab_size=17, dim=32, n_layers=2, n_heads=4, hidden_dim=48, max_position_embeddings=64,
                           num_labels=3, id2label=LABELS3, label2id={v: k for k, v in LABELS3.items()})
    DistilBertForSequenceClassification(cfg).save_pretrained(folder)
    task = load_task(str(folder), str(write_pairs(tmp_path / "p.csv")), text_column="premise,hypothesis", max_length=None)
    assert task.input_names == ["input_ids", "attention_mask"]
    enc = task.encode(task.data.test.inputs[:3])
    assert all(int((row == task.tokenizer.sep_token_id).sum()) == 2 for row in enc["input_ids"])


def test_embedding_model_refuses_pairs(tmp_path):
    from optin_deploy.data.texts import load_texts

    with pytest.raises(OptinError, match="embeds one text at a time"):
        load_texts(str(write_pairs(tmp_path / "p.csv")), text_column="premise,hypothesis")


def test_bad_pair_column_is_one_line(pair_model, tmp_path):
    data = write_pairs(tmp_path / "p.csv")
    proc = run_cli("build", "--model", pair_model, "--data", data, "--text-column", "premise,claim", "--out", tmp_path / "b", *FAST, check=False)
    assert_one_line(proc, 2, "no text column 'claim'")
    proc = run_cli("build", "--model", pair_model, "--data", data, "--text-column", "a,b,c", "--out", tmp_path / "b", *FAST, check=False)
    assert_one_line(proc, 2, "two different columns")
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_pair_build_exports_segment_ids(pair_model, tmp_path):
    """A pair build: both graphs take the segment ids and match PyTorch fed the tokenizer's pair encoding
    (not the zeros a two-input graph would assume); ``eval`` of the bundle reads the same two columns."""
    import onnxruntime as ort
    from transformers import AutoTokenizer, BertForSequenceClassification

    data = write_pairs(tmp_path / "p.csv")
    out = tmp_path / "b"
    run_cli("build", "--model", pair_model, "--data", data, "--text-column", "premise,hypothesis", "--out", out, *FAST)
    tok = AutoTokenizer.from_pretrained(pair_model)
    enc = tok(["good film was", "the plot"], ["bad and dull", "a film"], padding=True, return_tensors="np")
    ref_model = BertForSequenceClassification.from_pretrained(pair_model).eval()
    with torch.no_grad():
        ref = ref_model(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
        zeros = ref_model(input_ids=torch.from_numpy(enc["input_ids"]), attention_mask=torch.from_numpy(enc["attention_mask"])).logits.numpy()
    assert np.abs(ref - zeros).max() > 0.01  # the segment ids matter for this model
    for label in ("dense", "pruned"):
        sess = ort.InferenceSession(str(out / "onnx" / label / "model.fp32.onnx"))
        names = [i.name for i in sess.get_inputs()]
        assert names == ["input_ids", "attention_mask", "token_type_ids"], names
        if label == "dense":
            got = sess.run(None, {n: enc[n].astype(np.int64) for n in names})[0]
            np.testing.assert_allclose(got, ref, atol=1e-3)
    # the bundle's recipe names the three inputs the graphs take
    assert "{'input_ids': ..., 'attention_mask': ..., 'token_type_ids': ...}" in (out / "report.md").read_text()
    hint = json.loads((out / "pruned" / "optin_task.json").read_text())
    assert hint["text_column"] == "premise,hypothesis"
    report = json.loads((out / "report.json").read_text())
    ev = run_cli("eval", out, "--json", "-")
    got = json.loads(ev.stdout)["models"]
    assert 100 * got["dense"]["accuracy"] == pytest.approx(report["accuracy"]["dense"], abs=1e-3)
    assert 100 * got["pruned"]["accuracy"] == pytest.approx(report["accuracy"]["pruned"], abs=1e-3)
    # the same rows under other column names: eval takes --text-column / --label-column with --data
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(data.read_text().replace("premise,hypothesis,label", "p,h,y", 1))
    proc = run_cli("eval", out, "--data", renamed, check=False)
    assert_one_line(proc, 2, "no text column 'text'", "--text-column")
    ev2 = json.loads(run_cli("eval", out, "--data", renamed, "--text-column", "p,h", "--label-column", "y", "--json", "-").stdout)["models"]
    assert ev2["pruned"]["accuracy"] == got["pruned"]["accuracy"] and ev2["dense"]["n"] == got["dense"]["n"]
