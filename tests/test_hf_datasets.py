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


# ------------------------------------------------------------------ labels matched to a model, images, odd folders

def _model(names):
    from conftest import make_tiny_bert

    m = make_tiny_bert(num_labels=len(names), layers=1)
    m.config.id2label = dict(enumerate(names))
    m.config.label2id = {n: i for i, n in enumerate(names)}
    return m


def _saved_classlabel(tmp_path, names, name="d"):
    """Texts whose true class is known: index i is class i % 2 of ``names``' meaning (0 = rotten, 1 = fresh)."""
    meaning = ["rotten", "fresh"]
    t = [f"text {i}" for i in range(40)]
    true = [meaning[i % 2] for i in range(40)]
    f = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    ids = [names.index(c) if c in names else meaning.index(c) for c in true]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": t, "label": ids}, features=f)}).save_to_disk(str(tmp_path / name))
    return tmp_path / name, dict(zip(t, true))


def _labels_by_text(td, names):
    return {x: names[int(y)] for s in (td.train, td.validation, td.test) for x, y in zip(s.inputs, s.labels)}


def test_classlabel_in_another_order_is_matched_by_name(tmp_path):
    """ClassLabel(['fresh', 'rotten']) on a model whose id 0 is 'rotten': ids must be remapped by name (they were
    taken as the model's ids, giving 13% instead of 87% on a real model)."""
    from optin_deploy.zoo import _check_fit

    path, truth = _saved_classlabel(tmp_path, ["fresh", "rotten"])
    td = _check_fit(_model(["rotten", "fresh"]), load_data(path), "m", str(path))
    assert td.label_names == ["rotten", "fresh"] and _labels_by_text(td, td.label_names) == truth


def test_classlabel_names_the_model_does_not_know_keep_their_ids_and_say_so(tmp_path, capsys):
    """Hub rotten_tomatoes is ClassLabel(['neg', 'pos']); a model saying rotten/fresh: id 0 is id 0, with a warning."""
    from optin_deploy.zoo import _check_fit

    path, _ = _saved_classlabel(tmp_path, ["neg", "pos"])
    d = load_data(path)
    ids = d.train.labels.clone()
    td = _check_fit(_model(["rotten", "fresh"]), d, "m", str(path))
    assert td.train.labels.tolist() == ids.tolist() and td.label_names == ["rotten", "fresh"]
    assert "its class names (neg, pos) are not the model's (rotten, fresh); its class ids are taken" in capsys.readouterr().err
    assert td.source["labels_matched"].startswith("by class id")


def test_classlabel_partly_the_models_names_or_another_count_refused(tmp_path):
    from optin_deploy.zoo import _check_fit

    path, _ = _saved_classlabel(tmp_path, ["rotten", "good"], "partly")
    with pytest.raises(OptinError, match=r"names some of the model's classes and some others \('good' are not the model's"):
        _check_fit(_model(["rotten", "fresh"]), load_data(path), "m", str(path))
    f = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(30)], "label": [i % 2 for i in range(30)]}, features=f).save_to_disk(str(tmp_path / "three"))
    with pytest.raises(OptinError, match=r"predicts 2 classes but data .* declares 3 \(a, b, c\)"):
        _check_fit(_model(["x", "y"]), load_data(tmp_path / "three"), "m", "three")


def _images(n, mode="RGB"):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).convert(mode) for _ in range(n)]


def test_image_labels_read_like_any_labels(tmp_path):
    """Image data sets: class-name strings are names (they crashed), non-integer floats are not truncated to ids
    (1.9 became class 1), images saved with decode=False are decoded (they crashed)."""
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": _images(30), "label": ["cat", "dog", "bird"] * 10}, features=feats).save_to_disk(str(tmp_path / "str"))
    d = load_data(tmp_path / "str", image_size=10)
    assert d.label_names == ["bird", "cat", "dog"] and d.source["label_kind"] == "str"
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.Value("float32")})
    datasets.Dataset.from_dict({"image": _images(30), "label": [0.4, 1.6, 1.9] * 10}, features=feats).save_to_disk(str(tmp_path / "float"))
    d = load_data(tmp_path / "float", image_size=10)
    assert d.source["label_kind"] == "str" and len(d.label_names) == 3  # names, which no classifier's labels match
    cl = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "dog", "bird"])})
    ds = datasets.Dataset.from_dict({"image": _images(30), "label": [0, 1, 2] * 10}, features=cl).cast_column("image", datasets.Image(decode=False))
    ds.save_to_disk(str(tmp_path / "nodecode"))
    d = load_data(tmp_path / "nodecode", image_size=10)
    assert d.label_names == ["cat", "dog", "bird"] and tuple(d.train.inputs.shape[1:]) == (3, 10, 10)


def test_image_split_and_label_problems_refused_in_one_line(tmp_path):
    cl = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    bare = datasets.Features({"image": datasets.Image()})
    lab = lambda n: datasets.Dataset.from_dict({"image": _images(n), "label": [i % 2 for i in range(n)]}, features=cl)  # noqa: E731
    datasets.DatasetDict({"validation": lab(6), "test": lab(6)}).save_to_disk(str(tmp_path / "notrain"))
    with pytest.raises(OptinError, match="found validation, test splits but no training split"):
        load_data(tmp_path / "notrain", image_size=10)
    for order in (("train", "test"), ("test", "train")):  # the answer must not depend on which split comes first
        parts = {"train": lab(10), "test": datasets.Dataset.from_dict({"image": _images(4)}, features=bare)}
        datasets.DatasetDict({k: parts[k] for k in order}).save_to_disk(str(tmp_path / "-".join(order)))
        with pytest.raises(OptinError, match=r"\(test\) has no label column 'label' while other splits do"):
            load_data(tmp_path / "-".join(order), image_size=10)
    multi = datasets.Features({"image": datasets.Image(), "label": datasets.Sequence(datasets.Value("int64"))})
    datasets.Dataset.from_dict({"image": _images(6), "label": [[0], [0, 1], [1]] * 2}, features=multi).save_to_disk(str(tmp_path / "multi"))
    with pytest.raises(OptinError, match="holds a list per row \\(multi-label data\\)"):
        load_data(tmp_path / "multi", image_size=10)


def test_damaged_arrow_file_refused_in_one_line(tmp_path):
    _split(200).save_to_disk(str(tmp_path / "d"))
    arrow = next((tmp_path / "d").glob("*.arrow"))
    data = bytearray(arrow.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 400] = b"\xff" * 400
    arrow.write_bytes(bytes(data))
    with pytest.raises(OptinError, match=r"cannot (read|load) the saved data set"):
        load_data(tmp_path / "d")


def test_saved_data_sets_one_folder_down(tmp_path):
    """A DatasetDict saved into a sub-folder is pointed at; train/ validation/ test/ each saved with
    Dataset.save_to_disk are read as the splits (they were taken for an image folder)."""
    datasets.DatasetDict({"train": _split(20)}).save_to_disk(str(tmp_path / "wrap" / "mydata"))
    with pytest.raises(OptinError, match=r"holds the saved data set mydata; pass that folder as --data \(e.g. .*wrap/mydata\)"):
        load_data(tmp_path / "wrap")
    for name, (n, start) in {"train": (30, 0), "validation": (10, 30), "test": (8, 40)}.items():
        _split(n, start).save_to_disk(str(tmp_path / "splits" / name))
    d = load_data(tmp_path / "splits")
    assert (len(d.train), len(d.validation), len(d.test)) == (30, 10, 8) and d.label_names == ["neg", "pos"]


def test_eval_split_named_eval_is_validation(tmp_path):
    datasets.DatasetDict({"train": _split(30), "eval": _split(12, 30), "test": _split(8, 42)}).save_to_disk(str(tmp_path / "d"))
    d = load_data(tmp_path / "d")
    assert len(d.validation) == 12 and "left out" not in d.source["split"]
