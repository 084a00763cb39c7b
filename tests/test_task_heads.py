"""A checkpoint is measured only with the head it was trained with. A token-classification, question-answering,
masked-LM or bare-encoder checkpoint loaded as a sequence classifier would get a randomly initialised head (and
for BERT a random pooler), and ``build`` would report figures of random weights: refused in one line, before
any scoring. So is a classifier checkpoint whose head weights are missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli
from optin_deploy.errors import OptinError
from optin_deploy.models import load_model
from test_inputs_defects import FAST, LABELS3, assert_one_line, save_bert, write_csv


pytestmark = pytest.mark.usefixtures("quiet_cache")  # conftest: a cache of its own per test, no hub


def save_headed(folder: Path, cls_name: str) -> Path:
    import transformers

    save_bert(folder)  # tokenizer files
    for f in ("config.json", "model.safetensors"):
        (folder / f).unlink()
    cfg = transformers.BertConfig(vocab_size=17, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                  max_position_embeddings=64, num_labels=3, id2label=LABELS3, label2id={v: k for k, v in LABELS3.items()})
    getattr(transformers, cls_name)(cfg).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("cls_name", ["BertForTokenClassification", "BertForQuestionAnswering", "BertForMaskedLM", "BertForMultipleChoice"])
def test_other_task_heads_are_refused(tmp_path, cls_name):
    model = save_headed(tmp_path / "m", cls_name)
    proc = run_cli("build", "--model", model, "--data", write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"]), "--out", tmp_path / "b",
                   *FAST, check=False)
    assert_one_line(proc, 2, f"is a {cls_name} checkpoint, not a classifier", "not supported")
    assert not (tmp_path / "b").exists()


def test_bare_encoder_points_at_embedding(tmp_path):
    model = save_headed(tmp_path / "m", "BertModel")
    with pytest.raises(OptinError, match="BertModel checkpoint, not a classifier.*--task embedding"):
        load_model(model)
    assert load_model(model, task="embedding") is not None  # the way it is meant: a sentence encoder


def test_classifier_without_its_head_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    model = save_bert(tmp_path / "m")
    sd = {k: v for k, v in load_file(model / "model.safetensors").items() if not k.startswith("classifier")}
    save_file(sd, model / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((model / "config.json").read_text())
    cfg.pop("architectures", None)  # nothing says which head it was saved with
    (model / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(OptinError, match=r"no trained SequenceClassification weights .*classifier\.bias, classifier\.weight missing"):
        load_model(model)


def test_bare_vision_encoder_refused_without_embedding_hint(tmp_path):
    from transformers import ViTConfig, ViTModel

    folder = tmp_path / "vit"
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=48, image_size=32,
                       patch_size=16)).save_pretrained(folder)
    with pytest.raises(OptinError) as e:
        load_model(folder)
    assert "ViTModel checkpoint, not a classifier" in str(e.value) and "--task embedding" not in str(e.value)


def test_classifiers_still_load(tmp_path):
    assert type(load_model(save_bert(tmp_path / "m"))).__name__ == "BertForSequenceClassification"


def test_multi_label_classifier_is_refused(tmp_path):
    """Independent sigmoids per label: argmax accuracy would be a wrong figure, so the build stops in one line."""
    model = save_bert(tmp_path / "m")
    cfg = json.loads((model / "config.json").read_text())
    cfg["problem_type"] = "multi_label_classification"
    (model / "config.json").write_text(json.dumps(cfg))
    proc = run_cli("build", "--model", model, "--data", write_csv(tmp_path / "d.csv", ["neg", "neu", "pos"]), "--out", tmp_path / "b",
                   *FAST, check=False)
    assert_one_line(proc, 2, "multi-label classifier")
    assert not (tmp_path / "b").exists()
