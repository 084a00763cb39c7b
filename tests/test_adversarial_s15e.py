"""Session 15e: the deployment bundle as a production team takes it (served without optin-deploy, edited, moved)."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli

WORDS = ["good", "great", "fine", "bad", "awful", "dull", "the", "film", "was", "a", "plot", "and"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A tiny BERT (labels rotten/fresh, 64 positions) with its own tokenizer, built into a bundle once."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    root = tmp_path_factory.mktemp("s15e")
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
        for i in range(300):  # lengths 3..90 words: some longer than the model's 64 positions, so truncation matters
            w.writerow([" ".join(rng.choices(WORDS, k=rng.randint(3, 90))), ["fresh", "rotten"][i % 2]])
    out = root / "b"
    run_cli("build", "--model", model, "--data", root / "data.csv", "--profile", "x86-cpu-ort", "--flops", "0.5", "--calib-samples", "16",
            "--calib-length", "32", "--bench-iters", "3", "--no-baselines", "--out", out)
    return out


# a consumer with no optin-deploy: onnxruntime + tokenizers + numpy, and what manifest.json's serving block says
CONSUMER = r"""
import json, sys, numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
bundle, texts_file, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
serving = json.load(open(f"{bundle}/manifest.json"))["serving"]
pre = serving["preprocessing"]
tok = Tokenizer.from_file(f"{bundle}/pruned/tokenizer.json")
tok.enable_truncation(pre["max_length"])
tok.enable_padding()
sess = ort.InferenceSession(f"{bundle}/{serving['artifact']}", providers=["CPUExecutionProvider"])
assert [i.name for i in sess.get_inputs()] == list(serving["inputs"]), (sess.get_inputs(), serving["inputs"])
assert sess.get_outputs()[0].name == serving["output"]["name"]
texts = json.load(open(texts_file))
scores = []
for i in range(0, len(texts), batch):
    enc = tok.encode_batch(texts[i:i + batch])
    cols = {"input_ids": [e.ids for e in enc], "attention_mask": [e.attention_mask for e in enc], "token_type_ids": [e.type_ids for e in enc]}
    scores.append(sess.run(None, {n: np.array(cols[n], dtype=spec["dtype"]) for n, spec in serving["inputs"].items()})[0])
print(json.dumps([serving["output"]["classes"][k] for k in np.concatenate(scores).argmax(1)]))
"""


@pytest.mark.slow  # a build
def test_the_bundle_says_how_to_serve_it_and_a_plain_onnxruntime_client_predicts_what_eval_scored(bundle, tmp_path):
    """Nothing in the bundle said the inputs' dtypes, the class names in id order, the maximum length the figures were
    tokenised to (64 here; this tokenizer truncates nowhere by itself, and a longer text stops onnxruntime), nor the batching
    of the figures. The serving block (report.json, manifest.json, report.md) says them; a client reading only it, with
    onnxruntime and tokenizers, predicts what the build scored."""
    from optin_deploy.evaluate import evaluate
    from optin_deploy.runtimes.base import get_runtime
    from optin_deploy.zoo import load_task

    report = json.loads((bundle / "report.json").read_text())
    serving = report["serving"]
    assert json.loads((bundle / "manifest.json").read_text())["serving"] == serving
    assert serving["artifact"] == "onnx/pruned/model.onnx"
    assert serving["inputs"] == {n: {"dtype": "int64", "shape": ["batch", "sequence"]} for n in ("input_ids", "attention_mask")}
    assert serving["output"]["classes"] == ["rotten", "fresh"] and serving["output"]["shape"] == ["batch", 2]
    assert serving["preprocessing"]["max_length"] == 64
    assert serving["figures_measured_with"]["batch_size"] == 64 and "--batch-size 1" in serving["figures_measured_with"]["note"]
    assert "not a transformers folder" in serving["pytorch"]
    md = (bundle / "report.md").read_text()
    assert "## Serving the deliverable" in md and "0 = `rotten`, 1 = `fresh`" in md and "input `input_ids`: int64" in md

    task = load_task(str(bundle / "pruned"), None, max_length=None)
    test = task.data.test
    (tmp_path / "texts.json").write_text(json.dumps(list(test.inputs)))
    ev = evaluate(task, {"pruned": (get_runtime("ort-cpu"), str(bundle / "onnx" / "pruned" / "model.onnx"))}, split="test",
                  batch_size=serving["figures_measured_with"]["batch_size"], progress=False, return_logits=True)
    ours = [serving["output"]["classes"][k] for k in ev["logits"]["pruned"].argmax(1)]
    proc = subprocess.run([sys.executable, "-I", "-c", CONSUMER, str(bundle), str(tmp_path / "texts.json"),
                           str(serving["figures_measured_with"]["batch_size"])], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = json.loads(proc.stdout)
    assert theirs == ours
    names = serving["output"]["classes"]
    acc = 100 * float(np.mean([names.index(p) == y for p, y in zip(theirs, test.labels.tolist())]))
    assert acc == pytest.approx(report["accuracy"]["pruned"], abs=1e-3)


def test_a_manifest_of_another_shape_is_not_a_crash(tmp_path):
    """``bench BUNDLE`` on a bundle whose manifest.json was edited into a list was 'internal error AttributeError' (exit 1):
    it reads as a bundle without a profile, and bench times at its plain defaults."""
    from optin_deploy.runtimes.base import bench_settings

    root = tmp_path / "b"
    for half in ("dense", "pruned"):
        (root / "onnx" / half).mkdir(parents=True)
    (root / ".optin-deploy").write_text("")
    for text in ("[]", '"x"', "3", '{"profile": ["x"]}'):
        (root / "manifest.json").write_text(text)
        assert bench_settings([str(root / "onnx" / "dense"), str(root / "onnx" / "pruned")], None, None, None) == (8, 128, None, None)


def test_no_drop_is_not_shown_as_a_loss(tmp_path):
    """An unchanged accuracy (drop 0.0) was printed '-0.00 pts' in the build's last line and report.md."""
    from optin_deploy.report import write_markdown

    lat = {"p50": 2.0, "p90": 2.0, "p99": 2.0}
    report = {"model": "m", "task": {"name": "t", "type": "classification", "eval_samples": 30, "eval_split": "test"}, "profile": "p",
              "runtime": "ort-cpu", "budget": {"flops": 0.5}, "scoring": {"method": "exact", "scorer": "optin"}, "scoring_seconds": 1.0,
              "metric": "accuracy", "accuracy": {"dense": 50.0, "pruned": 50.0, "drop": 0.0, "agreement": 100.0, "metric": "accuracy"},
              "macs": {"dense": 10, "pruned": 5, "ratio": 0.5, "seq_len": 8}, "latency_ms": {"dense": lat, "pruned": lat},
              "throughput": {"dense": 1.0, "pruned": 1.0, "speedup": 1.0, "mean_based": {"dense": 1.0, "pruned": 1.0, "speedup": 1.0}},
              "artifacts": {}}
    write_markdown(report, tmp_path / "r.md", {})
    text = (tmp_path / "r.md").read_text()
    assert "+0.00 pts" in text and "-0.00" not in text


def test_a_moved_bundle_whose_recorded_data_is_gone_says_to_pass_data(tmp_path):
    """A bundle copied to another machine records its data file's absolute path; ``eval BUNDLE`` there said only
    "data '/abs/d.csv' is neither a built-in data set (...) nor an existing file or folder", as if the user had passed it."""
    from optin_deploy.errors import OptinError
    from optin_deploy.zoo import load_task

    from conftest import make_tiny_bert, save_word_tokenizer

    folder = tmp_path / "m"
    make_tiny_bert(num_labels=2).save_pretrained(folder)
    save_word_tokenizer(folder)
    (folder / "optin_task.json").write_text(json.dumps({"data": str(tmp_path / "gone" / "d.csv"), "max_length": 32}))
    with pytest.raises(OptinError, match=r"records its data as .*gone/d\.csv.*pass --data"):
        load_task(str(folder), None, max_length=None)
