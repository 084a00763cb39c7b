"""Benchmark result structure (no timing assertions), evaluation metrics, and the CLI wiring."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_tiny_bert, text_inputs

from optin_deploy.bench import benchmark, print_bench_table
from optin_deploy.errors import OptinError
from optin_deploy.evaluate import accuracy, agreement, evaluate, macro_f1, pearson, spearman, task_metrics
from optin_deploy.exporters import ShapeProfile, export_to_folder
from optin_deploy.runtimes import get_runtime


@pytest.fixture(scope="module")
def dense_and_pruned(tmp_path_factory):
    from optin_deploy.core import surgery
    d = tmp_path_factory.mktemp("b")
    dense = make_tiny_bert()
    pruned = surgery.apply_plan(dense, surgery.random_plan(dense, seed=1, empty_heads_layer=1))
    prof = ShapeProfile(opt_batch=4, max_batch=16, opt_seq=16, max_seq=64)
    export_to_folder(dense, text_inputs(), d / "dense", profile=prof)
    export_to_folder(pruned, text_inputs(), d / "pruned", profile=prof)
    return dense, pruned, d


def test_benchmark_structure(dense_and_pruned):
    dense, pruned, d = dense_and_pruned
    inputs = {k: v.numpy() for k, v in text_inputs(batch=4, seq=16).items()}
    res = benchmark({"dense": (get_runtime("ort-cpu", threads=1), d / "dense"),
                     "pruned": (get_runtime("ort-cpu", threads=1), d / "pruned"),
                     "torch": (get_runtime("torch-cpu"), dense)},
                    inputs, warmup=1, iters=4, progress=False)
    assert res["baseline"] == "dense" and res["interleaved"]
    assert set(res["models"]) == {"dense", "pruned", "torch"}
    for m in res["models"].values():
        assert m["iters"] == 4 and m["batch_size"] == 4
        assert 0 < m["min_ms"] <= m["p50_ms"] <= m["mean_ms"] * 10
        assert m["p90_ms"] is None and m["p99_ms"] is None  # 4 runs: no tail percentile is stated (bench.TAIL_MIN_RUNS)
        assert m["throughput_samples_per_s"] > 0 and m["peak_memory_mb"] >= 0
        assert m["output_shape"] == [4, 3]
        assert m["runtime"]["runtime"] in ("ort-cpu", "torch-cpu")
    assert res["speedup"]["dense"] == pytest.approx(1.0)
    json.dumps(res)  # JSON-able
    print_bench_table(res)


def test_benchmark_seconds_and_sequential(dense_and_pruned):
    _, _, d = dense_and_pruned
    inputs = {k: v.numpy() for k, v in text_inputs(batch=2, seq=8).items()}
    res = benchmark({"a": (get_runtime("ort-cpu"), d / "dense"), "b": (get_runtime("ort-cpu"), d / "pruned")},
                    inputs, warmup=1, iters=None, seconds=0.05, interleave=False, baseline="b", progress=False)
    assert res["baseline"] == "b" and not res["interleaved"]
    assert all(m["iters"] >= 5 for m in res["models"].values())


def test_benchmark_modes(dense_and_pruned):
    """Blocks (the default): iters timed runs per model, in blocks; round-robin kept for comparison."""
    _, _, d = dense_and_pruned
    inputs = {k: v.numpy() for k, v in text_inputs(batch=2, seq=8).items()}
    targets = lambda: {"a": (get_runtime("ort-cpu", threads=1), d / "dense"), "b": (get_runtime("ort-cpu", threads=1), d / "pruned")}
    res = benchmark(targets(), inputs, warmup=1, iters=7, block=3, progress=False)
    assert res["mode"] == "blocks" and res["block"] == 3 and res["interleaved"]
    assert all(m["iters"] == 7 for m in res["models"].values())
    res = benchmark(targets(), inputs, warmup=1, iters=4, mode="interleaved", progress=False)
    assert res["mode"] == "interleaved" and all(m["iters"] == 4 for m in res["models"].values())
    with pytest.raises(Exception, match="timing mode"):
        benchmark(targets(), inputs, iters=2, mode="bogus", progress=False)


def test_round_order_never_favours_a_position():
    """No model of three or more may follow itself across a round boundary while another never does
    (reversing the order did: the middle model measured 7-21% slower than copies of itself)."""
    from optin_deploy.bench import round_order

    assert [round_order("ab", r) for r in range(3)] == [list("ab"), list("ba"), list("ab")]
    for n in (3, 4, 6):
        labels = [str(i) for i in range(n)]
        seq = [l for r in range(4 * n) for l in round_order(labels, r)]
        assert all(sorted(round_order(labels, r)) == labels for r in range(2 * n))
        assert all(a != b for a, b in zip(seq, seq[1:]))  # no block follows a block of the same model
        firsts = [round_order(labels, r)[0] for r in range(n)]
        assert sorted(firsts) == labels  # every model leads a round equally often


class _InstantRuntime:
    """A runtime whose run takes microseconds, like a tiny model's."""

    device = "cpu"

    def run(self, feed):
        return np.zeros((2, 2), np.float32)

    def describe(self) -> dict:
        return {"runtime": "instant"}


@pytest.mark.parametrize("mode", ["blocks", "interleaved"])
def test_benchmark_min_seconds_keeps_whole_rounds_going(mode):
    """A run count alone is a few ms of measurement for a fast model: min_seconds extends it, every
    model by the same number of runs."""
    import time as _time

    feed = {"x": np.zeros((2, 3), np.float32)}
    t0 = _time.perf_counter()
    res = benchmark({"a": (_InstantRuntime(), None), "b": (_InstantRuntime(), None), "c": (_InstantRuntime(), None)}, feed,
                    warmup=0, iters=4, block=2, mode=mode, min_seconds=0.2, progress=False, settle_seconds=0)
    assert _time.perf_counter() - t0 >= 0.2
    n = {k: m["iters"] for k, m in res["models"].items()}
    assert len(set(n.values())) == 1 and n["a"] > 4 and res["min_seconds"] == 0.2
    res = benchmark({"a": (_InstantRuntime(), None), "b": (_InstantRuntime(), None)}, feed, warmup=0, iters=4, block=3, mode=mode,
                    progress=False)
    assert all(m["iters"] == 4 for m in res["models"].values())  # without it: exactly the count


class _CountingRuntime(_InstantRuntime):
    def __init__(self):
        self.calls = 0

    def run(self, feed):
        self.calls += 1
        return super().run(feed)


def test_blocks_settle_before_timing():
    """Each block starts with untimed runs lasting settle_seconds (at least one): a model comes back to
    speed after another held the cores, and those runs are not timed."""
    import time as _time

    feed = {"x": np.zeros((2, 3), np.float32)}
    a, b = _CountingRuntime(), _CountingRuntime()
    t0 = _time.perf_counter()
    res = benchmark({"a": (a, None), "b": (b, None)}, feed, warmup=1, iters=6, block=3, settle_seconds=0.03, progress=False)
    assert _time.perf_counter() - t0 >= 4 * 0.03  # 2 blocks per model, each after 30 ms of settling
    assert res["settle_seconds"] == 0.03 and all(m["iters"] == 6 for m in res["models"].values())
    assert a.calls > 1 + 6 + 2 * 10 and b.calls > 1 + 6 + 2 * 10  # warm-up, timed runs, and many settling runs
    a, b = _CountingRuntime(), _CountingRuntime()
    res = benchmark({"a": (a, None), "b": (b, None)}, feed, warmup=1, iters=6, block=3, settle_seconds=0, progress=False)
    assert a.calls == b.calls == 1 + 6 + 2  # no settling time: still one untimed run per block
    assert benchmark({"a": (a, None)}, feed, iters=2, mode="interleaved", progress=False)["settle_seconds"] is None
    with pytest.raises(OptinError, match="settle_seconds"):
        benchmark({"a": (a, None)}, feed, iters=2, settle_seconds=-1, progress=False)


def test_metrics_hand_made():
    labels = np.array([0, 1, 2, 2, 1, 0, 2, 1])
    pred = np.array([0, 2, 2, 2, 1, 0, 1, 1])
    assert accuracy(pred, labels) == pytest.approx(6 / 8)
    # per class F1: c0 = 1.0; c1: tp2 fp1 fn1 -> 4/6; c2: tp2 fp1 fn1 -> 4/6
    assert macro_f1(pred, labels, 3) == pytest.approx((1 + 4 / 6 + 4 / 6) / 3)


def test_spearman_matches_scipy():
    import scipy.stats as scipy_stats  # a dependency: missing it must fail, not skip
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    b = a + rng.normal(scale=0.5, size=50)
    b[:10] = np.round(b[:10])  # ties
    a[5:9] = a[5]
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    assert pearson(a, b) == pytest.approx(scipy_stats.pearsonr(a, b).statistic, abs=1e-12)


def test_task_metrics_and_agreement():
    logits = np.array([[2.0, 0, 0], [0, 1, 0], [0, 0, 3], [1, 0, 0]], np.float32)
    m = task_metrics(logits, np.array([0, 1, 1, 0]), "classification", 3)
    assert m["accuracy"] == 0.75 and "macro_f1" in m and m["n"] == 4
    m2 = task_metrics(logits[:, :2], np.array([0, 1, 1, 0]), "classification", 2)
    assert "macro_f1" not in m2
    r = task_metrics(np.array([[0.1], [0.5], [0.3]]), np.array([1.0, 3.0, 2.0]), "regression", 1)
    assert r["spearman"] == pytest.approx(1.0)
    assert agreement(logits, logits[[0, 1, 2, 2]], "classification")["agreement_vs_baseline"] == 0.75


class _TinyTask:
    """A Task-like with hand-made batches (the real Task needs a tokenizer)."""

    def __init__(self, n=10, num_labels=3):
        from optin_deploy.data.types import Split, TaskData

        g = torch.Generator().manual_seed(0)
        self.inputs = text_inputs(batch=n, seq=12, seed=1)
        labels = torch.randint(0, num_labels, (n,), generator=g)
        split = Split([f"t{i}" for i in range(n)], labels)
        self.data = TaskData("tiny", "text", "classification", [str(i) for i in range(num_labels)], split, split, split)
        self.name = "tiny"

    def batches(self, split, batch_size=64):
        s = getattr(self.data, split)
        for i in range(0, len(s), batch_size):
            yield {k: v[i : i + batch_size] for k, v in self.inputs.items()}, s.labels[i : i + batch_size]


def test_evaluate_through_runtimes(dense_and_pruned):
    dense, pruned, d = dense_and_pruned
    task = _TinyTask()
    res = evaluate(task, {"dense": (get_runtime("ort-cpu"), d / "dense"), "pruned": (get_runtime("ort-cpu"), d / "pruned"),
                          "dense-torch": (get_runtime("torch-cpu"), dense)},
                   batch_size=4, progress=False, return_logits=True)
    assert res["baseline"] == "dense"
    for label in ("dense", "pruned", "dense-torch"):
        assert res["models"][label]["n"] == 10
        assert 0 <= res["models"][label]["accuracy"] <= 1
    assert res["models"]["dense-torch"]["agreement_vs_baseline"] == 1.0
    assert res["models"]["dense-torch"]["accuracy"] == res["models"]["dense"]["accuracy"]
    want = (res["logits"]["pruned"].argmax(1) == res["logits"]["dense"].argmax(1)).mean()
    assert res["models"]["pruned"]["agreement_vs_baseline"] == pytest.approx(want)


def test_cli_bench_json(dense_and_pruned, tmp_path):
    from optin_deploy.cli import app

    _, _, d = dense_and_pruned
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", str(d / "dense"), str(d / "pruned"), "--threads", "1", "--batch", "2",
                                 "--seq-len", "8", "--iters", "3", "--warmup", "1", "--json", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert set(res["models"]) == {"dense", "pruned"} and res["models"]["pruned"]["input_shapes"]["input_ids"] == [2, 8]


def test_cli_export_model_dir(tmp_path):
    from optin_deploy.cli import app

    model = make_tiny_bert()
    model.save_pretrained(tmp_path / "m")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "m"), "--out", str(tmp_path / "b"), "--batch", "2",
                                 "--seq-len", "16", "--max-batch", "8"])
    assert r.exit_code == 0, r.output
    assert "parity passed" in r.output
    manifest = json.loads((tmp_path / "b" / "export.json").read_text())
    assert manifest["profile"]["max_seq"] == 64  # clipped to the model's position embeddings
    assert manifest["source"] == str(tmp_path / "m")


def test_cli_export_pruned_dir_and_bench_table(tmp_path):
    from optin_deploy.core import surgery
    from optin_deploy.cli import app
    from optin_deploy.pruned_io import save_pruned

    dense = make_tiny_bert()
    pruned = surgery.apply_plan(dense, surgery.random_plan(dense, seed=4, empty_heads_layer=0))
    save_pruned(pruned, tmp_path / "p")
    r = CliRunner().invoke(app, ["export", str(tmp_path / "p"), "--out", str(tmp_path / "b"), "--batch", "2", "--seq-len", "16"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["bench", str(tmp_path / "b"), "--iters", "2", "--warmup", "1", "--batch", "2", "--seq-len", "8"])
    assert r.exit_code == 0, r.output
    assert "p50" in r.output


def test_inputs_of_a_model_folder_and_of_its_export_come_from_one_place(tmp_path):
    """``bench`` of a bare model folder and of its export (known only by its input names) tokenise the same
    sample sentences through the family adapter (``Adapter.inputs_for``): identical arrays."""
    import shutil
    from pathlib import Path

    from transformers import BertConfig, BertForSequenceClassification

    from optin_deploy.adapters.base import SAMPLE_TEXTS
    from optin_deploy.bench import bench_inputs
    from optin_deploy.data import assets
    from optin_deploy.exporters.export_folder import export_model_dir
    from optin_deploy.models import load_tokenizer

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=64)
    folder = tmp_path / "model"
    BertForSequenceClassification(cfg).eval().save_pretrained(folder)
    for f in Path(assets.minilm().path).iterdir():
        if f.name.startswith(("tokenizer", "vocab", "special")):
            shutil.copy2(f, folder / f.name)
    export_model_dir(folder, tmp_path / "exp", batch=2, seq_len=12, max_seq_len=32)
    a, b = bench_inputs(folder, batch=3, seq_len=12), bench_inputs(tmp_path / "exp", batch=3, seq_len=12)
    assert list(a) == list(b) and list(a)[:2] == ["input_ids", "attention_mask"]
    for n in a:
        assert a[n].shape == (3, 12) and a[n].dtype == b[n].dtype == np.int64 and np.array_equal(a[n], b[n]), n
    tok = load_tokenizer(folder)
    assert np.array_equal(a["input_ids"][0], tok(SAMPLE_TEXTS[0], padding="max_length", truncation=True, max_length=12)["input_ids"])


def test_bench_settle_option(tmp_path):
    """bench --settle-ms: its default is the library's, and a negative value is refused before loading."""
    import inspect

    from optin_deploy.bench import DEFAULT_SETTLE_S
    from optin_deploy.cli import app
    from optin_deploy.commands.bench import bench_cmd

    assert inspect.signature(bench_cmd).parameters["settle_ms"].default.default == DEFAULT_SETTLE_S * 1e3
    r = CliRunner().invoke(app, ["bench", str(tmp_path / "missing-a.onnx"), str(tmp_path / "missing-b.onnx"), "--settle-ms", "-1"])
    assert r.exit_code != 0 and "--settle-ms must be a finite number of at least 0, got -1" in (r.output + str(r.exception))


def test_outputs_that_cannot_be_the_task_are_refused():
    """eval refuses outputs of another class count, or NaN, instead of scoring them (42% for a 1-column or NaN model)."""
    from optin_deploy.evaluate import _check_outputs

    _check_outputs("m", np.zeros((4, 2), np.float32), "classification", 2)
    _check_outputs("m", np.zeros((4, 2), np.float32), "classification", 0)  # unlabelled data: agreement only
    with pytest.raises(OptinError, match="its output has 1 score per sample but the data has 2 classes"):
        _check_outputs("m", np.zeros((4, 1), np.float32), "classification", 2)
    with pytest.raises(OptinError, match="its output has 3 scores per sample"):
        _check_outputs("m", np.zeros((4, 3), np.float32), "classification", 2)
    with pytest.raises(OptinError, match="8 of its 8 outputs are not finite"):
        _check_outputs("m", np.full((4, 2), np.nan, np.float32), "classification", 2)


class _RefusingRuntime(_InstantRuntime):
    name = "fixed-shape"

    def run(self, feed):
        raise RuntimeError("Got invalid dimensions for input: input_ids")


def test_a_runtime_refusing_the_inputs_is_one_line_not_an_internal_error():
    with pytest.raises(OptinError, match=r"pruned: fixed-shape could not run it on x \[2, 3\]: Got invalid dimensions.*pass --batch / --seq-len"):
        benchmark({"pruned": (_RefusingRuntime(), None)}, {"x": np.zeros((2, 3), np.float32)}, iters=2, progress=False)


def test_bench_markdown_never_overwrites_a_users_file_or_an_input(tmp_path):
    from optin_deploy.cli import app

    user = tmp_path / "notes.md"
    user.write_text("my notes\n")
    model = tmp_path / "m.onnx"
    model.write_bytes(b"not really onnx")
    for target, msg in ((user, "is an existing file that optin-deploy did not write"), (model, "is this command's input")):
        r = CliRunner().invoke(app, ["bench", str(model), str(model), "--runtimes", "ort-cpu", "--markdown", str(target)])
        assert r.exit_code != 0 and msg in (r.output + str(r.exception)), r.output
    assert user.read_text() == "my notes\n" and model.read_bytes() == b"not really onnx"
    from optin_deploy.safe_out import MARKDOWN_MARK, markdown_is_ours

    ours = tmp_path / "ours.md"
    ours.write_text(MARKDOWN_MARK + "\n| a |\n")
    assert markdown_is_ours(ours) and not markdown_is_ours(user)


def test_token_type_ids_of_a_graph_exported_elsewhere_are_zeros_for_single_sentences():
    """optimum / torch.onnx BERT graphs take token_type_ids; eval fed only input_ids and attention_mask and refused them."""
    from optin_deploy.runtimes.base import numpy_feed

    ids = np.array([[101, 7, 102], [101, 8, 102]])
    feed = numpy_feed("m.onnx", {"input_ids": np.int64, "attention_mask": np.int64, "token_type_ids": np.int64},
                      {"input_ids": ids, "attention_mask": np.ones_like(ids)})
    assert feed["token_type_ids"].shape == (2, 3) and not feed["token_type_ids"].any()
    assert numpy_feed("m.onnx", {"token_type_ids": np.int32}, {"input_ids": ids, "token_type_ids": np.ones_like(ids)})["token_type_ids"].all()
    with pytest.raises(OptinError, match="m.onnx needs input 'pixel_values'"):
        numpy_feed("m.onnx", {"pixel_values": np.float32}, {"input_ids": ids})
