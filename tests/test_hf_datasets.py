"""Folders written by Hugging Face ``datasets``' ``save_to_disk`` as ``--data``: the shapes real hub data
sets come in (ClassLabel names, GLUE's hidden test labels, IMDB's unsupervised split, SST-2's column
names, image columns, sentence pairs), read through the same loader a build uses."""

from __future__ import annotations

import numpy as np
import pytest

from optin_deploy.data.loaders import load_data
from optin_deploy.errors import OptinError

datasets = pytest.importorskip("datasets")  # a dev dependency: CI runs these

POS = ["great movie, loved it", "wonderful and fun", "a delight", "brilliant acting"]
NEG = ["terrible film", "boring and bad", "awful, hated it", "a waste of time"]


def _features():
    return datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})


def _texts(n: int, start: int = 0):
    t, y = [], []
    for i in range(start, start + n):
        y.append(i % 2)
        t.append((POS if i % 2 else NEG)[i % 4] + f" {i}")
    return t, y


def _split(n: int, start: int = 0, labels=None):
    t, y = _texts(n, start)
    return datasets.Dataset.from_dict({"text": t, "label": y if labels is None else labels}, features=_features())


def test_classlabel_names_and_given_splits(tmp_path):
    datasets.DatasetDict({"train": _split(40), "validation": _split(10, 40), "test": _split(12, 50)}).save_to_disk(str(tmp_path / "d"))
    d = load_data(tmp_path / "d")
    assert d.label_names == ["neg", "pos"] and d.source["label_kind"] == "classlabel"
    assert (len(d.train), len(d.validation), len(d.test)) == (40, 10, 12)
    assert d.test.inputs[0] == "awful, hated it 50" and d.test.labels.tolist()[:2] == [0, 1]  # order and labels kept


def test_unsupervised_split_is_left_out_and_said(tmp_path):
    """IMDB: train, test and an unlabelled 'unsupervised' split (labels -1): the third is not one of ours."""
    uns = _split(8, labels=[-1] * 8)
    datasets.DatasetDict({"train": _split(40), "test": _split(10, 40), "unsupervised": uns}).save_to_disk(str(tmp_path / "imdb"))
    d = load_data(tmp_path / "imdb")
    assert len(d.test) == 10 and len(d.train) + len(d.validation) == 40
    assert "left out split 'unsupervised'" in d.source["split"] and "validation carved from train" in d.source["split"]
    assert -1 not in d.train.labels.tolist()


def test_hidden_test_labels_are_not_scored(tmp_path):
    """GLUE's test splits carry label -1 throughout: scoring them would count every row wrong, so the split is
    left out (and test carved from train), saying so."""
    datasets.DatasetDict({"train": _split(40), "validation": _split(10, 40), "test": _split(10, 50, labels=[-1] * 10)}).save_to_disk(str(tmp_path / "glue"))
    d = load_data(tmp_path / "glue")
    assert set(d.test.labels.tolist()) <= {0, 1} and len(d.validation) == 10
    assert "left out split 'test' (every label is -1" in d.source["split"] and "test carved from train" in d.source["split"]


def test_some_hidden_labels_are_refused(tmp_path):
    datasets.DatasetDict({"train": _split(10, labels=[0, 1, -1, 0, 1, 0, 1, 0, 1, 0])}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(OptinError, match=r"\(train\): 1 of 10 rows have label -1 \(no label\); drop those rows"):
        load_data(tmp_path / "d")


def test_unlabelled_training_split_refused_with_the_way_out(tmp_path):
    datasets.DatasetDict({"train": _split(10, labels=[-1] * 10)}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(OptinError, match=r"\(train\): every label is -1 \(no labels\); for calibration-only data remove the column"):
        load_data(tmp_path / "d")


def test_split_names_none_of_ours_and_two_validation_splits_refused(tmp_path):
    datasets.DatasetDict({"fold0": _split(10), "fold1": _split(10)}).save_to_disk(str(tmp_path / "folds"))
    with pytest.raises(OptinError, match=r"no split is train, validation or test \(splits: 'fold0', 'fold1'\)"):
        load_data(tmp_path / "folds")
    datasets.DatasetDict({"train": _split(20), "validation": _split(10), "dev": _split(10)}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(OptinError, match=r"two splits are the validation split \('validation' and 'dev'\)"):
        load_data(tmp_path / "two")


def test_sst2_columns_and_string_labels(tmp_path):
    t, y = _texts(40)
    f = datasets.Features({"idx": datasets.Value("int32"), "sentence": datasets.Value("string"),
                           "label": datasets.ClassLabel(names=["negative", "positive"])})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"idx": list(range(40)), "sentence": t, "label": y}, features=f)}).save_to_disk(str(tmp_path / "sst2"))
    with pytest.raises(OptinError, match="no text column 'text'; columns are: idx, sentence, label; pass --text-column"):
        load_data(tmp_path / "sst2")
    d = load_data(tmp_path / "sst2", text_column="sentence")
    assert d.label_names == ["negative", "positive"] and len(d.train) + len(d.validation) + len(d.test) == 40
    datasets.Dataset.from_dict({"text": t, "label": ["pos" if v else "neg" for v in y]}).save_to_disk(str(tmp_path / "str"))
    d = load_data(tmp_path / "str")
    assert d.label_names == ["neg", "pos"]
    for s in (d.train, d.validation, d.test):  # every text keeps its own label
        assert all(("neg" if int(l) == 0 else "pos") == ("pos" if any(p in x for p in POS) else "neg") for x, l in zip(s.inputs, s.labels))


def test_sentence_pairs(tmp_path):
    t, y = _texts(40)
    datasets.Dataset.from_dict({"premise": t, "hypothesis": t[::-1], "label": y}).save_to_disk(str(tmp_path / "nli"))
    d = load_data(tmp_path / "nli", text_column="premise,hypothesis")
    assert d.text_pair and all(isinstance(x, tuple) and len(x) == 2 for x in d.train.inputs)


def test_image_columns(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray((rng.random((12, 12, 3)) * 255).astype("uint8")) for _ in range(30)]
    f = datasets.Features({"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["a", "b", "c"])})
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"img": imgs, "fine_label": [i % 3 for i in range(30)]}, features=f)}).save_to_disk(str(tmp_path / "cifar"))
    d = load_data(tmp_path / "cifar", image_size=12, label_column="fine_label")
    assert d.modality == "image" and d.label_names == ["a", "b", "c"] and tuple(d.train.inputs.shape[1:]) == (3, 12, 12)
    d = load_data(tmp_path / "cifar", image_size=12)  # no 'label' column: calibration only, and it says which columns there are
    with pytest.raises(OptinError, match=r"no column 'label'; columns are: img, fine_label"):
        d.require_labels()
    imgs_hidden = datasets.Dataset.from_dict({"img": imgs[:10], "fine_label": [0, 1, 2, -1, 0, 1, 2, 0, 1, 2]}, features=f)
    datasets.DatasetDict({"train": imgs_hidden}).save_to_disk(str(tmp_path / "hidden"))
    with pytest.raises(OptinError, match="1 of 10 rows have label -1"):
        load_data(tmp_path / "hidden", image_size=12, label_column="fine_label")


def test_null_texts_refused(tmp_path):
    datasets.Dataset.from_dict({"text": ["a", None] * 10, "label": [0, 1] * 10}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(OptinError, match="10 rows have no text in 'text'"):
        load_data(tmp_path / "d")
