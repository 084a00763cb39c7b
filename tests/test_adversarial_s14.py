"""Defects a session-14 adversarial pass found (sweep, image data, embeddings, export, latency tables), each fixed:
the refusal is one line and a non-zero exit, before the work where it can be, and nothing is left behind."""

from __future__ import annotations

import csv
import warnings

import pytest

from conftest import make_tiny_bert, make_tiny_text, make_tiny_vit, run_cli
from test_build import tiny_text_task  # noqa: F401 - the tiny task (fixture)
from test_data import _image_tree
from test_embedding import st_folder  # noqa: F401 - a tiny sentence-transformers folder (fixture)
from test_lut import synthetic_table

from optin_deploy.errors import OptinError
from optin_deploy.lut import LutMismatchWarning, load_lut


def _one_line_refusal(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    for n in needles:
        assert n in proc.stderr, proc.stderr


def test_a_latency_table_for_images_is_refused_for_text_and_another_family_warns(tmp_path):
    path = synthetic_table().save(tmp_path / "lut.json")  # a 3-layer BERT table measured on text
    with pytest.raises(OptinError, match="measured on text and this model takes images"):
        load_lut(path, make_tiny_vit())
    roberta = make_tiny_text("electra", layers=3)
    with pytest.warns(LutMismatchWarning, match="measured for a bert model, used with a"):
        cm = load_lut(path, roberta)
    assert any("bert model" in w for w in cm.info["warnings"])
    with warnings.catch_warnings():  # the same family and shape: no family warning
        warnings.simplefilter("always")
        cm = load_lut(path, make_tiny_bert(layers=3))
    assert not any("model, used with" in w for w in cm.info["warnings"])


def test_export_seq_len_beyond_the_graph_is_refused(tmp_path):
    model_dir = tmp_path / "m"
    make_tiny_bert(layers=1).save_pretrained(model_dir)  # 64 positions
    proc = run_cli("export", model_dir, "--out", tmp_path / "a", "--seq-len", "1000", check=False)
    _one_line_refusal(proc, "--seq-len 1000", "64")
    assert not (tmp_path / "a").exists()
    proc = run_cli("export", model_dir, "--out", tmp_path / "b", "--seq-len", "40", "--max-seq-len", "32", check=False)
    _one_line_refusal(proc, "--max-seq-len 32")
    run_cli("export", model_dir, "--out", tmp_path / "c")  # the default length fits the model's 64 positions
    assert (tmp_path / "c" / "model.onnx").exists()


def _write(path, rows, header=("text", "label")):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_blank_text_column_is_refused_and_some_blank_rows_warn(tiny_text_task, tmp_path):
    from optin_deploy.data import load_data

    blank = _write(tmp_path / "blank.csv", [("", "fresh" if i % 2 else "rotten") for i in range(60)])
    proc = run_cli("prune", str(tiny_text_task / "model"), "--data", str(blank), "--flops", "0.5", "--out", tmp_path / "p", check=False)
    _one_line_refusal(proc, "all 60 rows have an empty text", "--text-column")
    assert not (tmp_path / "p").exists()
    some = _write(tmp_path / "some.csv", [("" if i < 3 else f"good film {i}", "fresh" if i % 2 else "rotten") for i in range(60)])
    load_data(str(some))  # loads; the warning goes to stderr (checked through the CLI below)
    proc = run_cli("eval", str(tiny_text_task / "model"), "--data", str(some), check=False)
    assert proc.returncode == 0 and "3 of 60 rows have an empty text" in proc.stderr


def test_a_huge_image_is_one_line(tmp_path, monkeypatch):
    from PIL import Image

    from optin_deploy.data import load_data

    root = _image_tree(tmp_path / "imgs", classes=("a", "b"), n=4)
    Image.new("L", (300, 300)).save(root / "a" / "huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 90,000 pixels is over twice the limit: Pillow refuses it
    with pytest.raises(OptinError, match="huge.png.*downscale it or remove it"):
        load_data(root, image_size=8)


@pytest.mark.parametrize("args, needles", [
    (["--budgets", "0.5,0.5"], ["--budgets lists 0.5 more than once"]),
    (["--budgets", "0.5", "--scorer", "optin,optin"], ["--scorer lists optin more than once"]),
    (["--budgets", "0.5", "--scorer", ",,"], ["--scorer is empty"]),
])
def test_sweep_refuses_repeats_and_empty_lists(tiny_text_task, tmp_path, args, needles):
    proc = run_cli("sweep", "--model", str(tiny_text_task / "model"), "--data", str(tiny_text_task / "data.csv"), *args,
                   "--out", tmp_path / "s", check=False)
    _one_line_refusal(proc, *needles)
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_sweep_refuses_a_budget_that_keeps_nothing(tiny_text_task, tmp_path):
    proc = run_cli("sweep", "--model", str(tiny_text_task / "model"), "--data", str(tiny_text_task / "data.csv"), "--budgets", "0.001,0.5",
                   "--calib-samples", "16", "--scoring", "exact", "--select-by", "macs", "--out", tmp_path / "s", check=False)
    _one_line_refusal(proc, "--budgets 0.001", "every head and neuron")
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".*"))


def test_sweep_on_an_embedding_model_is_refused_before_scoring(st_folder, tmp_path):
    texts = _write(tmp_path / "texts.csv", [(f"film market goal {i}",) for i in range(80)], header=("text",))
    proc = run_cli("sweep", "--model", str(st_folder), "--data", str(texts), "--budgets", "0.5", "--out", tmp_path / "s", check=False)
    _one_line_refusal(proc, "sentence-embedding model", "--min-cosine")
    assert "scoring" not in proc.stderr and not (tmp_path / "s").exists()


def test_an_empty_class_folder_is_named(tmp_path, capsys):
    from optin_deploy.data import load_data

    root = _image_tree(tmp_path / "imgs", classes=("a", "c"), n=12)
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("no images here")
    d = load_data(root, image_size=8)
    assert d.label_names == ["a", "c"]
    assert "class folder b holds no images" in capsys.readouterr().err


def test_repeated_texts_do_not_count_as_neighbours(st_folder, tmp_path):
    """recall@10 over a corpus of repeated texts measured tie-breaking: repeats are dropped, and too few distinct texts refused."""
    from optin_deploy.embedding_eval import evaluate_embeddings
    from optin_deploy.runtimes import get_runtime
    from optin_deploy.zoo import load_task

    same = _write(tmp_path / "same.csv", [("the same sentence every time",) for _ in range(150)], header=("text",))
    task = load_task(str(st_folder), str(same), progress=False)
    with pytest.raises(OptinError, match="1 distinct texts \\(15 with repeats\\).*more varied"):
        evaluate_embeddings(task, {"dense": (get_runtime("torch-cpu"), task.model)})
    mixed = _write(tmp_path / "mixed.csv", [(f"text number {i % 50}",) for i in range(300)], header=("text",))
    task = load_task(str(st_folder), str(mixed), progress=False)
    ev = evaluate_embeddings(task, {"dense": (get_runtime("torch-cpu"), task.model), "again": (get_runtime("torch-cpu"), task.model)})
    assert ev["corpus_size"] == len(set(task.data.test.inputs)) and ev.get("repeated_texts_dropped", 0) > 0
    assert ev["models"]["again"]["recall_at_10"] == pytest.approx(1.0)


@pytest.mark.slow
def test_a_tiny_split_and_a_slower_pruned_model_are_said(tiny_text_task, tmp_path, monkeypatch):
    """A build still ships, but says when its test split is a handful of samples and when the pruned model measured
    slower than dense (a loaded machine read x0.08 without a word)."""
    import optin_deploy.bench as bench

    real = bench.benchmark

    def slow_pruned(*a, **kw):
        r = real(*a, **kw)
        if "pruned" in r["models"]:
            p = r["models"]["pruned"]
            p["p50_ms"] *= 20
            p["speedup_p50"] = r["models"][r["baseline"]]["p50_ms"] / p["p50_ms"]
        return r

    monkeypatch.setattr(bench, "benchmark", slow_pruned)
    proc = run_cli("build", "--model", str(tiny_text_task / "model"), "--data", str(tiny_text_task / "data.csv"), "--flops", "0.5",
                   "--profile", "x86-cpu-ort", "--calib-samples", "16", "--bench-iters", "3", "--scoring", "exact", "--no-baselines",
                   "--out", str(tmp_path / "b"))
    assert proc.returncode == 0 and (tmp_path / "b" / "report.json").exists()
    assert "the test split has 20 samples: one sample moves the accuracy by 5 points" in proc.stderr
    assert "the pruned model measured slower than the dense one here" in proc.stderr
