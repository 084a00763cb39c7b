"""int8 on onnxruntime CPU: static quantisation with the calibration batch, ``auto`` (both ways measured, the faster
within the tolerance kept), nodes left in fp32 where accuracy needs it; profile and option errors are one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import copy_tokenizer, make_tiny_bert, run_cli, text_inputs

from optin_deploy.errors import OptinError
from optin_deploy.exporters import ShapeProfile, export_to_folder
from optin_deploy.runtimes import get_runtime

PROFILE = ShapeProfile(min_batch=1, opt_batch=4, max_batch=16, min_seq=1, opt_seq=16, max_seq=64)


def _ops(path) -> dict:
    import onnx

    out: dict = {}
    for n in onnx.load(str(path)).graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def test_static_int8_export_loads_and_stays_close(tmp_path):
    """Static int8 of the fused graph: MatMuls as QLinearMatMul with calibrated ranges, the fused Attention
    (which onnxruntime cannot quantise statically) as dynamic QAttention; onnxruntime loads it, parity passes
    (argmax) and the logits stay near the fp32 graph's."""
    model = make_tiny_bert()
    calib = text_inputs(batch=24, seq=16, seed=5)
    m = export_to_folder(model, text_inputs(), tmp_path / "b", profile=PROFILE, precision="int8", quantization="static", calibration=calib)
    q = m["quantization"]
    assert q["mode"] == "static" and q["calibration_samples"] == 24 and q["excluded"] == []
    assert "quantize_static" in q["method"] and "Attention" in q["method"]
    ops = _ops(m["artifact"])
    assert ops.get("QLinearMatMul", 0) >= 3 and ops.get("QAttention") == 3 and "MatMulInteger" not in ops
    par = json.loads((tmp_path / "b" / "parity.json").read_text())
    assert par["model.onnx"]["precision"] == "int8" and par["model.onnx"]["passed"]
    rt8 = get_runtime("ort-cpu", threads=1).load(tmp_path / "b" / "model.onnx")
    rt32 = get_runtime("ort-cpu", threads=1).load(tmp_path / "b" / "model.fp32.onnx")
    x = {k: v.numpy() for k, v in text_inputs(batch=6, seq=20, seed=7).items()}
    a, b = rt8.run(x), rt32.run(x)
    assert a.shape == b.shape and np.abs(a - b).max() < 0.25  # int8 of random weights: loose


def test_static_needs_the_calibration_batch(tmp_path):
    with pytest.raises(OptinError, match="calibration"):
        export_to_folder(make_tiny_bert(layers=1), text_inputs(), tmp_path / "b", profile=PROFILE, precision="int8", quantization="static")
    with pytest.raises(OptinError, match="unknown int8 quantisation"):
        export_to_folder(make_tiny_bert(layers=1), text_inputs(), tmp_path / "c", profile=PROFILE, precision="int8", quantization="weird")
    assert not (tmp_path / "b" / "model.onnx").exists() and not (tmp_path / "c" / "model.onnx").exists()


@pytest.mark.parametrize("mode", ["dynamic", "static"])
def test_excluded_nodes_stay_fp32(mode, tmp_path):
    from optin_deploy.exporters.onnx import calibration_batches, quantizable_nodes, quantize_int8

    m = export_to_folder(make_tiny_bert(), text_inputs(), tmp_path / "b", profile=PROFILE, precision="fp32")
    src = Path(m["artifact"])
    order = quantizable_nodes(src, mode)
    assert order[0].startswith("Attention") and any("MatMul" in n for n in order)
    gemms = [n for n in order if n.endswith("Gemm")]  # pooler and classifier: quantised by the dynamic way only
    assert len(gemms) == (2 if mode == "dynamic" else 0)
    last = [n for n in order if n.endswith("MatMul")][-2:] + gemms[-1:]  # the last block's FFN MatMuls (and the classifier)
    calib = calibration_batches(text_inputs(batch=16, seq=16), ["input_ids", "attention_mask"])
    info = quantize_int8(src, tmp_path / "q.onnx", mode=mode, calibration=calib, exclude=last)
    assert info["excluded"] == last
    import onnx

    nodes = {n.name: n.op_type for n in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    # left in fp32 (quantize_dynamic still rewrites an excluded Gemm as NAME_MatMul + NAME_Add, in fp32)
    assert all(nodes.get(n) == "MatMul" or (n.endswith("Gemm") and nodes.get(n + "_MatMul") == "MatMul") for n in last)
    assert any(t in ("QLinearMatMul", "MatMulInteger") for t in nodes.values())  # the others are int8
    rt = get_runtime("ort-cpu", threads=1).load(tmp_path / "q.onnx")
    assert np.isfinite(rt.run({k: v.numpy() for k, v in text_inputs().items()})).all()


@pytest.mark.parametrize("graph", ["fused", "dynamo"])
def test_vectorised_per_channel_quantisation_is_bit_identical_to_onnxruntimes(graph, tmp_path, monkeypatch):
    """quantize_int8 replaces onnxruntime's per-output-channel Python loop by one numpy pass per weight: every
    initializer (int8 weights, scales, zero points) and every node must come out exactly as onnxruntime makes them,
    with an all-zero output channel (the tiny-scale branch) and excluded nodes among them."""
    import onnx

    import optin_deploy.exporters.onnx as ox

    model = make_tiny_bert()
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight[3].zero_()  # an output channel of zeros
        model.bert.encoder.layer[1].output.dense.weight[:, 5].zero_()
    m = export_to_folder(model, text_inputs(), tmp_path / "b", profile=PROFILE, precision="fp32", graph=graph)
    src = Path(m["artifact"])
    exclude = [n for n in ox.quantizable_nodes(src, "dynamic") if n.endswith("MatMul")][:1]
    calls = []
    original = ox._per_channel_int8
    monkeypatch.setattr(ox, "_per_channel_int8", lambda *a: calls.append(a[3]) or original(*a))
    fast = tmp_path / "fast.onnx"
    ox.quantize_int8(src, fast, exclude=exclude)
    monkeypatch.setattr(ox, "VECTORISED_PER_CHANNEL", False)
    slow = tmp_path / "slow.onnx"
    ox.quantize_int8(src, slow, exclude=exclude)
    assert calls, "the vectorised path was not used"
    a, b = onnx.load(str(fast)), onnx.load(str(slow))
    ia = {t.name: onnx.numpy_helper.to_array(t) for t in a.graph.initializer}
    ib = {t.name: onnx.numpy_helper.to_array(t) for t in b.graph.initializer}
    assert set(ia) == set(ib)
    for name in ib:
        assert ia[name].dtype == ib[name].dtype and ia[name].shape == ib[name].shape and ia[name].tobytes() == ib[name].tobytes(), name
    assert [(n.op_type, list(n.input), list(n.output)) for n in a.graph.node] == [(n.op_type, list(n.input), list(n.output)) for n in b.graph.node]
    zero_scaled = [n for n in ia if n.endswith("_scale") and ia[n].ndim == 1 and (ia[n] == 1.0).any()]
    assert zero_scaled, "no all-zero channel reached the tiny-scale branch"
    # the original's path after the context: onnxruntime's own method is back
    from onnxruntime.quantization import base_quantizer as bq

    assert bq.BaseQuantizer.quantize_weight_per_channel_impl.__name__ == "quantize_weight_per_channel_impl"


# ------------------------------------------------------------------------------------------ build


@pytest.fixture(scope="module")
def teacher_task(tmp_path_factory):
    """A tiny random BERT and a CSV labelled by that model's own predictions: its fp32 graph scores 100%, so any
    prediction int8 changes is an accuracy drop (what a tolerance of 0 refuses)."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from optin_deploy.data import assets

    root = tmp_path_factory.mktemp("q8task")
    tok_dir = assets.minilm().path
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=128, num_labels=3, initializer_range=1.0, id2label={0: "a", 1: "b", 2: "c"}, label2id={"a": 0, "b": 1, "c": 2})
    model = BertForSequenceClassification(cfg).eval()
    import random

    rng = random.Random(0)
    vocab = ["good", "bad", "film", "plot", "actor", "scene", "dull", "great", "music", "long", "short", "story", "the", "a", "was"]
    texts = [" ".join(rng.choices(vocab, k=rng.randint(4, 12))) for _ in range(2000)]
    tok = AutoTokenizer.from_pretrained(tok_dir)
    with torch.no_grad():
        enc = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        logits = model(**enc).logits
        # wide random weights (initializer_range 1) make the texts' representations differ; centring the logits (the
        # classifier bias) balances the classes, so some samples lie near a decision boundary, where int8 rounding
        # changes some predictions (one or two in a hundred here)
        model.classifier.bias -= logits.mean(0)
        pred = model(**enc).logits.argmax(-1).tolist()
    assert len(set(pred)) == 3
    model.save_pretrained(root / "model")
    copy_tokenizer(tok_dir, root / "model")
    with open(root / "data.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for t, p in zip(texts, pred):
            w.writerow([t, cfg.id2label[p]])
    return root


@pytest.mark.slow  # one whole build of a tiny model (quantised both ways, re-quantised, timed)
def test_build_auto_records_both_ways_and_leaves_nodes_in_fp32(teacher_task, tmp_path):
    out = tmp_path / "bundle"
    run_cli("build", "--model", teacher_task / "model", "--data", teacher_task / "data.csv", "--flops", "0.7", "--calib-samples", "16",
            "--bench-iters", "4", "--bench-block", "2", "--scoring", "exact", "--select-by", "macs", "--no-baselines",
            "--quantization", "auto", "--int8-max-drop", "0", "--out", out)
    report = json.loads((out / "report.json").read_text())
    # a tolerance of 0 may leave every quantisable node of the kept way in fp32 (which way is kept is timed): the
    # deliverable is then labelled fp32, what it computes in
    pruned_q = json.loads((out / "onnx" / "pruned" / "export.json").read_text())["quantization"]
    assert report["precision"] == ("int8" if pruned_q["quantized_nodes"] else "fp32")
    for label in ("dense", "pruned"):
        exp = json.loads((out / "onnx" / label / "export.json").read_text())
        c = exp["quantization"]["choice"]
        assert c["asked"] == "auto" and c["kept"] in ("dynamic", "static") and c["max_drop"] == 0
        assert set(c["ways"]) == {"dynamic", "static"}
        for w in c["ways"].values():  # both ways timed interleaved and measured on validation
            assert w["p50_ms"] > 0 and w["accuracy"] is not None and w["history"]
            # tolerance 0: nodes were left in fp32 until no prediction changed, or none was quantised
            assert w["history"][-1]["excluded"] == len(w["excluded"]) and w["history"][-1]["drop"] == w["drop"]
            assert w["within_tolerance"] == (w["drop"] <= 0)
        assert exp["quantization"]["mode"] == c["kept"] and exp["quantization"]["excluded"] == c["ways"][c["kept"]]["excluded"]
        assert exp["parity"]["model.onnx"]["passed"]
        assert sorted(p.name for p in (out / "onnx" / label).glob("*.onnx")) == ["model.fp32.onnx", "model.onnx"]
    # with a tolerance of 0 on a model labelled by its own fp32 predictions, int8 changed some prediction somewhere and
    # the build left nodes in fp32 (the last ones first), and says which
    ways = [w for label in ("dense", "pruned") for w in json.loads((out / "onnx" / label / "export.json").read_text())["quantization"]["choice"]["ways"].values()]
    assert any(w["excluded"] for w in ways)
    for w in ways:
        if w["excluded"]:
            assert len(w["history"]) >= 2 and w["history"][0]["drop"] > 0


@pytest.mark.parametrize("setting, message", [
    ('quantization = "statik"', "quantization = 'statik' .* did you mean 'static'"),
    ('int8_max_drop = -2', "int8_max_drop = -2 .* out of range"),
    ('int8_max_drop = "one"', "int8_max_drop .* must be a number"),
])
def test_bad_quantization_setting_in_a_profile_is_one_line(setting, message, tmp_path):
    import re

    src = (Path(__file__).resolve().parents[1] / "profiles" / "x86-cpu-ort.toml").read_text()
    bad = tmp_path / "bad.toml"
    lines = [l for l in src.splitlines() if not l.startswith(("quantization", "int8_max_drop"))]  # the profile's own
    bad.write_text("\n".join(lines).replace('precision = "int8"', f'precision = "int8"\n{setting}') + "\n")
    proc = run_cli("profiles", "show", bad, check=False)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and err and re.search(message, err[-1]) and "Traceback" not in proc.stderr, proc.stderr


def test_quantization_on_a_non_int8_profile_is_one_line(tmp_path):
    src = (Path(__file__).resolve().parents[1] / "profiles" / "x86-cpu-ort-fp32.toml").read_text()
    bad = tmp_path / "fp32q.toml"
    bad.write_text(src.replace('precision = "fp32"\n', 'precision = "fp32"\nquantization = "static"\n'))
    proc = run_cli("profiles", "show", bad, check=False)
    assert proc.returncode != 0 and "applies to precision int8 only" in proc.stderr.strip().splitlines()[-1]
    out = tmp_path / "never"
    proc = run_cli("build", "--profile", "x86-cpu-ort-fp32", "--quantization", "static", "--out", out, check=False)
    assert proc.returncode != 0 and "--quantization applies to int8 profiles" in proc.stderr.strip().splitlines()[-1]
    proc = run_cli("build", "--quantization", "fast", "--out", out, check=False)
    assert proc.returncode != 0 and "--quantization must be one of dynamic, static, auto" in proc.stderr.strip().splitlines()[-1]
    assert not out.exists()
