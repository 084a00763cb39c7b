"""Session 15d: the user's own data files through build / prune / eval / bench (an adversarial pass).

Each test is a defect found with a real file: regression scores given to a classifier (blamed on the row count),
a class id of 1e12 (minutes and gigabytes of class names before the range error), ..."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from optin_deploy.errors import OptinError
from test_inputs_defects import WORDS, assert_one_line, save_bert


pytestmark = pytest.mark.usefixtures("quiet_cache")  # conftest: a cache of its own per test, no hub


@pytest.fixture(scope="module")
def model3(tmp_path_factory) -> Path:
    return save_bert(tmp_path_factory.mktemp("m3") / "model")


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choices(WORDS, k=6)) for _ in range(n)]


def write(path: Path, text: str) -> Path:
    path.write_text(text, newline="")
    return path


def load(model, data, **kw):
    from optin_deploy.zoo import load_task

    return load_task(str(model), str(data), progress=False, **kw)


# ------------------------------------------------------- 1. regression scores for a classifier


def test_regression_data_for_a_classifier_names_the_labels_not_the_row_count(tmp_path, model3):
    """90 rows of float scores: eval said 'only 90 rows, too few for the 80/10/10 split' (every score was a class of
    its own, so the stratified split had nothing to put in validation/test)."""
    rng = random.Random(1)
    data = write(tmp_path / "scores.csv", "text,label\n" + "".join(f"{t},{rng.random() * 5:.3f}\n" for t in texts(90)))
    with pytest.raises(OptinError) as e:
        load(model3, data)
    msg = str(e.value)
    assert "fractions" in msg and "classifier of 3 classes" in msg and "regression model" in msg
    assert "too few" not in msg and "90 rows" not in msg
    # the same file through the CLI: one line, exit 2
    proc = run_cli("build", "--model", model3, "--data", data, "--profile", "x86-cpu-ort", "--out", tmp_path / "out", check=False)
    assert_one_line(proc, 2, "fractions", "classifier")
    assert not (tmp_path / "out").exists()
    # integer ids written as floats ("1.0") are still class ids
    ok = write(tmp_path / "ids.csv", "text,label\n" + "".join(f"{t},{i % 3}.0\n" for i, t in enumerate(texts(60))))
    assert load(model3, ok).data.num_labels == 3


# ------------------------------------------------------------------- 2. an absurd class id


@pytest.mark.parametrize("big", ["100000000", "1e300", "1" * 40])
def test_a_huge_class_id_is_refused_at_once(tmp_path, model3, big):
    """A class id of 1e8 built a list of 1e8 class names (35 s, 7.8 GB) before the range error; 1e300 never ended."""
    rows = [{"text": t, "label": i % 3} for i, t in enumerate(texts(60))]
    rows[3]["label"] = float(big) if big == "1e300" else big
    data = write(tmp_path / "big.jsonl", "\n".join(json.dumps(r) for r in rows))
    t0 = time.perf_counter()
    with pytest.raises(OptinError, match=r"class id .* out of range: the model predicts 3 classes \(ids 0\.\.2\)") as e:
        load(model3, data)
    assert time.perf_counter() - t0 < 5 and len(str(e.value)) < 300


def test_a_huge_class_id_without_a_model_is_refused():
    from optin_deploy.data.loaders import MAX_CLASSES, _Labels

    with pytest.raises(OptinError, match="out of range"):
        _Labels(["0", "1", str(10**12)], "d.csv")
    assert _Labels(["0", str(MAX_CLASSES - 1)], "d.csv").kind == "int"


# ----------------------------------------------------------------- 3. the CSV header row


@pytest.mark.parametrize("header, row, column", [
    ("text,text,label", "{t},zz,{y}", "text"),     # the second 'text' was fed to the model: every input was 'zz'
    ("text,label,label", "{t},{y},x", "label"),    # the second 'label' was scored
])
def test_a_column_named_twice_is_refused_not_guessed(tmp_path, model3, header, row, column):
    data = write(tmp_path / "dup.csv", header + "\n" + "".join(row.format(t=t, y=("neg", "neu", "pos")[i % 3]) + "\n"
                                                               for i, t in enumerate(texts(60))))
    with pytest.raises(OptinError, match=rf"2 columns named '{column}' \(columns \d, \d\); rename all but one"):
        load(model3, data)
    # a repeated column that is not used is no problem
    other = write(tmp_path / "other.csv", "text,notes,label,notes\n" + "".join(f"{t},a,neg,b\n" for t in texts(30)))
    assert load(model3, other).data.num_labels == 3


def test_header_names_are_stripped(tmp_path, model3):
    """'text, label' (a space after the comma, as people type it): the column ' label' was not 'label', so eval measured
    agreement only and warned "no column 'label'; columns are: text, label"."""
    data = write(tmp_path / "spaced.csv", "text, label\n" + "".join(f"{t}, {('neg', 'neu', 'pos')[i % 3]}\n"
                                                                    for i, t in enumerate(texts(60))))
    task = load(model3, data)
    assert task.data.train.labels is not None and task.data.source["label_column"] == "label"
    assert set(torch.cat([task.data.train.labels, task.data.test.labels]).tolist()) == {0, 1, 2}


# ------------------------------------------------------- 4. two files for one split in a folder


@pytest.mark.parametrize("names, needle", [
    (("train.csv", "train.jsonl"), "train.csv and train.jsonl are both the train split"),
    (("train.csv", "valid.csv", "validation.csv"), "valid.csv and validation.csv are both the validation split"),
])
def test_two_files_for_one_split_are_refused(tmp_path, model3, names, needle):
    """train.csv beside train.jsonl (or val.csv beside validation.csv): the first in name order was used, the other
    silently left out, so the figures came from data the user did not mean."""
    d = tmp_path / "splits"
    d.mkdir()
    for name in names:
        rows = [{"text": t, "label": ("neg", "neu", "pos")[i % 3]} for i, t in enumerate(texts(30))]
        write(d / name, "\n".join(json.dumps(r) for r in rows) if name.endswith("jsonl")
              else "text,label\n" + "".join(f"{r['text']},{r['label']}\n" for r in rows))
    with pytest.raises(OptinError, match=needle):
        load(model3, d)


def test_two_image_folders_for_one_split_are_refused(tmp_path):
    from PIL import Image

    from optin_deploy.data.loaders import load_data

    for split in ("train", "val", "validation"):
        for c in ("cat", "dog"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "imgs" / split / c / f"{i}.png")
    with pytest.raises(OptinError, match="val and validation are both the validation split"):
        load_data(tmp_path / "imgs", image_size=8)


# ------------------------------------------- 5. splits saved with their own ClassLabel (datasets)


def _classlabel(names, ids, **cols):
    import datasets

    feats = {k: (datasets.Image() if k == "image" else datasets.Value("string")) for k in cols}
    return datasets.Dataset.from_dict({**cols, "label": ids}, features=datasets.Features({**feats, "label": datasets.ClassLabel(names=names)}))


@pytest.mark.parametrize("layout", ["dict", "folders"])
def test_a_split_with_its_own_classlabel_order_is_read_by_name(tmp_path, model3, layout):
    """Training split ClassLabel pos, neu, neg; test split neg, neu, pos: the test ids were read with the training
    names, so every 'neg' test row was scored as 'pos' (a silently wrong accuracy)."""
    pytest.importorskip("datasets")
    import datasets

    train = _classlabel(["pos", "neu", "neg"], [i % 3 for i in range(60)], text=texts(60))
    test = _classlabel(["neg", "neu", "pos"], [0] * 12, text=texts(12, seed=1))  # all 'neg'
    if layout == "dict":
        datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "ds"))
    else:
        train.save_to_disk(str(tmp_path / "ds" / "train"))
        test.save_to_disk(str(tmp_path / "ds" / "test"))
    task = load(model3, tmp_path / "ds")
    assert task.data.test.labels.tolist() == [0] * 12  # the model's 'neg'
    other = _classlabel(["negative", "neutral"], [0] * 12, text=texts(12))
    datasets.DatasetDict({"train": train, "test": other}).save_to_disk(str(tmp_path / "other"))
    with pytest.raises(OptinError, match=r"\(test\): its label classes \(negative, neutral\) are not the training split's"):
        load(model3, tmp_path / "other")


def test_image_splits_with_their_own_classlabel_order(tmp_path):
    pytest.importorskip("datasets")
    import datasets
    from PIL import Image

    from optin_deploy.data.loaders import load_data

    imgs = [Image.new("RGB", (8, 8), (i * 20 % 255, 0, 0)) for i in range(30)]
    train = _classlabel(["cat", "dog"], [i % 2 for i in range(24)], image=imgs[:24])
    test = _classlabel(["dog", "cat"], [0] * 6, image=imgs[24:])  # all 'dog'
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(str(tmp_path / "ds"))
    d = load_data(tmp_path / "ds", image_size=8)
    assert d.label_names == ["cat", "dog"] and d.test.labels.tolist() == [1] * 6


# ------------------------------------------------------------------ 6. EXIF-rotated photos


def test_an_exif_rotated_photo_is_read_upright(tmp_path):
    """A phone photo stored sideways with an EXIF orientation tag was fed sideways (datasets and transformers'
    load_image turn it upright, as every viewer shows it), so an image folder scored other pictures than the user's."""
    import numpy as np
    from PIL import Image

    from optin_deploy.data.loaders import images_to_tensor

    a = np.zeros((10, 20, 3), np.uint8)
    a[:, :10] = 255  # the left half white, stored sideways
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im.save(tmp_path / "photo.jpg", exif=exif, quality=100)
    Image.fromarray(a).transpose(Image.Transpose.ROTATE_270).save(tmp_path / "upright.png")
    x = images_to_tensor([tmp_path / "photo.jpg", tmp_path / "upright.png"], 8, 0.0, 1.0, 3)
    assert float((x[0] - x[1]).abs().max()) < 0.1
    assert float(x[0, 0, 0].mean()) > 0.9 and float(x[0, 0, -1].mean()) < 0.1  # white on top, black below


# ------------------------------------------------------------ 7. class ids beside other labels


@pytest.mark.parametrize("odd, shown", [("nan", "'nan'"), ("pos", "'pos'")])
def test_class_ids_beside_other_labels_are_named_as_such(tmp_path, model3, odd, shown):
    """Class ids 0/1/2 with one 'nan' row (a gap a spreadsheet filled): the error called 0, 1 and 2 labels the model
    does not know, sending the user to rename labels that were right."""
    data = write(tmp_path / "d.csv", "text,label\n" + "".join(f"{t},{odd if i == 4 else i % 3}\n" for i, t in enumerate(texts(60))))
    with pytest.raises(OptinError) as e:
        load(model3, data)
    msg = str(e.value)
    assert "59 labels are class ids" in msg and f"1 are not ({shown})" in msg and "does not know" not in msg
    # signed labels are still names the model does not know (README, Safety)
    signed = write(tmp_path / "s.csv", "text,label\n" + "".join(f"{t},{(-1, 1)[i % 2]}\n" for i, t in enumerate(texts(30))))
    with pytest.raises(OptinError, match="does not know: '-1'"):
        load(model3, signed)
