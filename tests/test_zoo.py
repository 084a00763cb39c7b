"""Model loading (optin_deploy.models), the zoo (optin_deploy.zoo) and ``optin-deploy zoo``."""

from __future__ import annotations

import json
import sys
import time
import types

import pytest
import torch

from optin_deploy import models, zoo
from optin_deploy.data import assets
from optin_deploy.data.types import Split
from optin_deploy.errors import OptinError

import transformers  # noqa: E402 (a dependency: missing it must fail, not skip)


def _tiny_bert_config(**kw):
    return transformers.BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=128, **kw,
    )


@pytest.fixture(scope="module")
def minilm_dir():
    return assets.minilm().path


@pytest.fixture()
def tiny_bert(tmp_path, minilm_dir):
    torch.manual_seed(0)
    m = transformers.BertForSequenceClassification(_tiny_bert_config(num_labels=2))
    m.save_pretrained(tmp_path / "tiny")
    transformers.AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(tmp_path / "tiny")
    return tmp_path / "tiny"


def test_load_tiny_bert(tiny_bert):
    m = models.load_model(tiny_bert)
    assert isinstance(m, transformers.BertForSequenceClassification)
    assert not m.training and next(m.parameters()).dtype == torch.float32
    out = m(input_ids=torch.ones(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 5, dtype=torch.long))
    assert out.logits.shape == (2, 2)
    m3 = models.load_model(tiny_bert, num_labels=3)
    assert m3.config.num_labels == 3 and m3.classifier.out_features == 3
    base = models.load_model(tiny_bert, head=False)
    assert isinstance(base, transformers.BertModel)
    assert models.preprocessing(m, tiny_bert) == {"modality": "text"}


def test_load_tiny_vit(tmp_path):
    cfg = transformers.ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10)
    transformers.ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    m = models.load_model(tmp_path / "vit")
    assert isinstance(m, transformers.ViTForImageClassification)
    pre = models.preprocessing(m, tmp_path / "vit")
    assert pre["modality"] == "image" and pre["num_channels"] == 1 and pre["image_size"] == 28


def test_load_model_errors(tmp_path, tiny_bert, monkeypatch):
    with pytest.raises(OptinError, match="does not exist"):
        models.load_model(tmp_path / "missing")
    with pytest.raises(OptinError, match="does not exist"):
        models.load_model("./nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OptinError, match="without config.json"):
        models.load_model(tmp_path / "empty")
    (tiny_bert / "model.safetensors").write_bytes(b"garbage" * 10)
    with pytest.raises(OptinError, match=r"cannot load the weights .*model\.safetensors"):
        models.load_model(tiny_bert)


def test_hub_unreachable_fails_fast(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    t = time.perf_counter()
    with pytest.raises(OptinError, match="not a local folder, and the Hugging Face hub is unreachable: pass a local path"):
        models.load_model("someone/some-model-that-is-not-cached")
    assert time.perf_counter() - t < 10


def test_hub_offline_env(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False


def test_pruned_folder_uses_pruned_io(tmp_path, monkeypatch):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "optin_structure.json").write_text("{}")
    fake = types.ModuleType("optin_deploy.pruned_io")
    fake.load_pruned = lambda path: torch.nn.Linear(2, 2).double().train()
    monkeypatch.setitem(sys.modules, "optin_deploy.pruned_io", fake)
    m = models.load_model(tmp_path / "p")
    assert isinstance(m, torch.nn.Linear) and not m.training and m.weight.dtype == torch.float32


def test_timm_checkpoint_without_arch(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "weights.pth")
    with pytest.raises(OptinError, match="pass it as timm:ARCH@"):
        models.load_model(tmp_path / "weights.pth")
    (tmp_path / "bad.pth").write_bytes(b"\x00\x01garbage")
    with pytest.raises(OptinError, match=r"cannot read the checkpoint .*bad\.pth"):
        models.load_model(tmp_path / "bad.pth")


def test_timm_checkpoint_with_arch(tmp_path):
    timm = pytest.importorskip("timm")
    m = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3)
    torch.save(m, tmp_path / "whole.pth")  # a whole pickled model: loading it would run pickle, so it is refused
    with pytest.raises(OptinError, match="needs Python pickle to load.*safetensors"):
        models.load_model(tmp_path / "whole.pth")
    torch.save({"arch": "vit_tiny_patch16_224", "state_dict": m.state_dict()}, tmp_path / "sd.pth")  # weights_only=True reads it
    from safetensors.torch import save_file

    save_file(m.state_dict(), str(tmp_path / "w.safetensors"))
    for spec in (tmp_path / "sd.pth", f"timm:vit_tiny_patch16_224@{tmp_path / 'w.safetensors'}"):
        loaded = models.load_model(spec)
        assert not loaded.training and loaded.head.out_features == 3
        pre = models.preprocessing(loaded)
        assert pre["modality"] == "image" and pre["num_channels"] == 3


def test_minilm_base_embeddings(minilm_dir):
    m = models.load_model(minilm_dir, head=False)
    assert isinstance(m, transformers.BertModel) and m.config.hidden_size == 384 and m.config.num_hidden_layers == 6
    tok = models.load_tokenizer(minilm_dir)
    sents = ["A cat sits on the mat.", "A kitten is sitting on a rug.", "The stock market fell sharply today."]
    enc = tok(sents, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = m(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    e = torch.nn.functional.normalize((h * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.isfinite(e).all()
    sim = e @ e.T
    assert sim[0, 1] > 0.5 and sim[0, 1] > sim[0, 2] + 0.3


@pytest.mark.slow  # two short fine-tuning runs
def test_train_text_smoke_deterministic(minilm_dir):
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    texts = [("good great fine " if i % 2 else "bad awful poor ") * (1 + i % 3) for i in range(64)]
    split = Split(texts, torch.tensor([i % 2 for i in range(64)]))

    def run():
        torch.manual_seed(0)
        m = transformers.BertForSequenceClassification(_tiny_bert_config(num_labels=2))
        stats = zoo.train_text_classifier(m, tok, split, max_length=16, epochs=2, lr=1e-3, batch_size=16, progress=False)
        return m, stats

    m1, s1 = run()
    m2, _ = run()
    assert s1["steps"] == 8 and not m1.training
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_train_image_smoke():
    cfg = transformers.ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    m = transformers.ViTForImageClassification(cfg)
    split = Split(torch.randn(64, 1, 28, 28), torch.arange(64) % 3)
    stats = zoo.train_image_classifier(m, split, epochs=2, batch_size=32, time_budget_s=1e6, progress=False)
    assert stats["steps"] == 4 and stats["epochs"] == 2


@pytest.mark.slow  # a (partial) epoch of Swin training
def test_train_swin_partial_epoch():
    """The zoo's Swin recipe builds a Swin; with ``partial_epochs`` a tiny budget trains only part of an epoch."""
    from optin_deploy.adapters import get_adapter
    from optin_deploy.data.types import TaskData

    data = TaskData("fashion-mnist", "image", "classification", ["a", "b", "c"], Split(torch.randn(8, 1, 28, 28), torch.arange(8) % 3),
                    Split(torch.randn(4, 1, 28, 28), torch.arange(4) % 3), Split(torch.randn(4, 1, 28, 28), torch.arange(4) % 3), {})
    r = dict(zoo.ZOO["swin-fashion-mnist"].recipe, embed_dim=12, num_heads=[2, 2])
    m = zoo._image_model(r, data)
    assert get_adapter(m).family == "hf_swin" and get_adapter(m).heads_per_layer() == [2, 2, 2, 2]
    split = Split(torch.randn(1600, 1, 28, 28), torch.arange(1600) % 3)
    stats = zoo.train_image_classifier(m, split, epochs=3, batch_size=8, time_budget_s=1e-3, partial_epochs=True, progress=False)
    assert stats["steps"] == 100 and stats["epochs"] == 0.5  # at least 100 steps, half of the 200-step epoch


def test_cosine_schedule_matches_transformers():
    """The shortenable schedule gives transformers' warm-up + cosine factors step for step."""
    from transformers import get_cosine_schedule_with_warmup

    for warmup, total in [(0, 10), (3, 40), (17, 860)]:
        ref = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), warmup, total)
        ours = zoo._Cosine(warmup, total)
        for step in range(total + 2):
            assert abs(ref.lr_lambdas[0](step) - ours(step)) < 1e-12, (warmup, total, step)


def test_train_image_cuts_epochs_when_the_machine_slows_down(monkeypatch):
    """After an epoch that ran slower than the probe said, the epochs left are cut to the budget
    (here from 10 to 2) and the schedule ends at the new last step; hflip runs. The clock is
    virtual: each forward pass advances it, 1 ms during the probe, 200 ms after."""
    cfg = transformers.ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    clock = {"now": 0.0, "calls": 0}
    monkeypatch.setattr(zoo, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))

    class SlowViTForImageClassification(transformers.ViTForImageClassification):
        def forward(self, **kw):
            clock["calls"] += 1
            clock["now"] += 0.001 if clock["calls"] <= 7 else 0.2  # the probe: 3 untimed steps, then 4 timed (one epoch)
            return super().forward(**kw)

    m = SlowViTForImageClassification(cfg)
    split = Split(torch.randn(64, 1, 28, 28), torch.arange(64) % 3)
    stats = zoo.train_image_classifier(m, split, epochs=10, batch_size=16, time_budget_s=2.0, hflip=True, progress=False)
    assert stats["planned_epochs"] == 10 and stats["epochs"] == 2 and stats["steps"] == 8
    assert stats["epochs_replanned"] == "10 -> 2 after epoch 1"


def test_train_image_adds_epochs_back_when_the_probe_was_slow(monkeypatch):
    """A probe timed during a burst of load plans too few epochs: after the first epoch the plan goes
    back up to what fits (here 2 -> 10, the recipe's count)."""
    cfg = transformers.ViTConfig(image_size=28, patch_size=7, num_channels=1, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    clock = {"now": 0.0, "calls": 0}
    monkeypatch.setattr(zoo, "time", types.SimpleNamespace(perf_counter=lambda: clock["now"]))

    class BurstViTForImageClassification(transformers.ViTForImageClassification):
        def forward(self, **kw):
            clock["calls"] += 1
            clock["now"] += 0.2 if clock["calls"] <= 7 else 0.001
            return super().forward(**kw)

    m = BurstViTForImageClassification(cfg)
    split = Split(torch.randn(64, 1, 28, 28), torch.arange(64) % 3)
    stats = zoo.train_image_classifier(m, split, epochs=10, batch_size=16, time_budget_s=2.0, progress=False)
    assert stats["epochs_replanned"] == "2 -> 10 after epoch 1" and stats["epochs"] == 10 and stats["steps"] == 40


def test_class_folders_match_labels_a_folder_cannot_spell():
    """A folder cannot be named "T-shirt/top": class folders match the model's labels on letters and
    digits (when unambiguous); the labels are renumbered to the model's ids."""
    from optin_deploy.data.types import TaskData

    model = types.SimpleNamespace(config=types.SimpleNamespace(id2label={0: "T-shirt/top", 1: "Trouser", 2: "Ankle boot"}))

    def data(names):
        return TaskData("folder", "image", "classification", list(names), Split(torch.zeros(3, 1), torch.tensor([0, 1, 2])),
                        Split(torch.zeros(1, 1), torch.tensor([0])), Split(torch.zeros(1, 1), torch.tensor([2])), {"label_kind": "folder"})

    td = zoo.match_labels(model, data(["Ankle_boot", "T-shirt-top", "trouser"]), "m", "d")
    assert td.label_names == ["T-shirt/top", "Trouser", "Ankle boot"] and td.train.labels.tolist() == [2, 0, 1]
    with pytest.raises(OptinError, match="does not know: '0-T-shirt-top'"):
        zoo.match_labels(model, data(["0-T-shirt-top", "Trouser", "Ankle boot"]), "m", "d")
    twins = types.SimpleNamespace(config=types.SimpleNamespace(id2label={0: "a-b", 1: "a/b", 2: "c"}))
    with pytest.raises(OptinError, match="does not know: 'ab'"):  # "ab" could be either: no guess
        zoo.match_labels(twins, data(["ab", "a/b", "c"]), "m", "d")


def test_metrics():
    m = zoo.metrics(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    assert m["accuracy"] == 0.75
    assert abs(m["macro_f1"] - (1 + 2 / 3 + 2 / 3) / 3) < 1e-9


def test_zoo_registry():
    names = [t["name"] for t in zoo.list_tasks()]
    assert names[:2] == ["minilm-sentiment", "minilm-bbc-news"]
    assert {"vit-fashion-mnist", "swin-fashion-mnist"} <= set(names) and names.index("vit-fashion-mnist") < names.index("swin-fashion-mnist")
    assert zoo.DATA_TO_TASK["fashion-mnist"] == "vit-fashion-mnist"  # the first model of a data set stays its task
    assert [t for t in zoo.list_tasks() if t["default"]][0]["name"] == zoo.DEFAULT_TASK == "minilm-sentiment"
    with pytest.raises(OptinError, match="unknown zoo model 'nope'"):
        zoo.prepare("nope")


def test_load_task_with_user_model_and_data(tiny_bert, tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "\n".join(f"words {i},{i % 2}" for i in range(40)) + "\n")
    task = zoo.load_task(str(tiny_bert), str(p), max_length=32)
    assert task.modality == "text" and task.max_length == 32 and task.data.num_labels == 2
    batch = next(task.batches("test", 4))
    assert batch[0]["input_ids"].shape[0] == 4
    assert task.calibration(8)["input_ids"].shape[0] == 8
    m = zoo.evaluate(task, "test")
    assert 0 <= m["accuracy"] <= 1 and m["n"] == 4
    p3 = tmp_path / "d3.csv"
    p3.write_text("text,label\n" + "\n".join(f"words {i},{'abc'[i % 3]}" for i in range(30)) + "\n")
    with pytest.raises(OptinError, match="predicts 2 classes but data .* has 3 labels"):
        zoo.load_task(str(tiny_bert), str(p3))
    with pytest.raises(OptinError, match="does not record its data: pass --data"):
        zoo.load_task(str(tiny_bert), None)
    with pytest.raises(OptinError, match="needs a model"):
        zoo.load_task(None, str(p))


def test_cli_zoo(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from optin_deploy.cli import app

    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path))
    r = CliRunner().invoke(app, ["zoo", "list"])
    assert r.exit_code == 0 and "minilm-sentiment (default)" in r.output and "not prepared" in r.output
    r = CliRunner().invoke(app, ["zoo", "prepare", "nope"])
    assert isinstance(r.exception, OptinError) and "unknown zoo model" in str(r.exception)


def test_one_macro_f1_rule():
    """zoo (PyTorch) and evaluate (runtimes) compute macro-F1 the same way: a class neither present nor
    predicted is left out of the mean."""
    import numpy as np

    from optin_deploy.evaluate import macro_f1

    m = zoo.metrics(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 3)
    assert m["macro_f1"] == macro_f1(np.array([0, 1, 1]), np.array([0, 1, 0]), 3) == pytest.approx((2 / 3 + 2 / 3) / 2)
