"""Users' own data: CSV / TSV / JSONL files, saved Hugging Face data sets and image folders.

:func:`load_data` is the one entry point: ``spec`` is a built-in name (see
:mod:`optin_deploy.data.builtin`) or a path.

* A single file (``.csv``, ``.tsv``, ``.jsonl``, ``.json``) is split 80/10/10, stratified, seeded.
* A folder holding ``train.*`` (and optionally ``validation.*``/``val.*``/``dev.*`` and ``test.*``)
  files uses those splits; a missing validation or test split is carved from train.
* A folder saved with ``datasets``' ``save_to_disk`` is read with ``datasets.load_from_disk`` (also ``train/``,
  ``validation/``, ``test/`` sub-folders each saved as a Dataset). Splits other than the three are left out, a
  split labelled -1 throughout (GLUE's hidden test labels) too, saying so; a ClassLabel keeps its names, which
  :func:`optin_deploy.zoo._check_fit` matches to the model's labels (by id where the model knows none of them).
* Text is one column (``text_column``), or two for sentence-pair tasks (``"premise,hypothesis"``): each
  input is then a ``(first, second)`` tuple, tokenised as a pair.
* A folder with one sub-folder of images per class is an image data set (optionally under
  ``train/``, ``validation/``, ``test/``). Images are resized to the model's image size and
  normalised with its mean and std.

Labels are read as the model's task (``task_type``): for a classifier, non-negative integers are
class ids as they are and anything else (strings, -1/1, 'nan') is a class name, which
:func:`optin_deploy.zoo.match_labels` matches to the model's ``id2label``; for a regression model
labels must be finite numbers. Without a model, only non-integer finite numbers make a regression task. The label column may be
absent (calibration-only data): labels are then None and evaluation says so.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import OptinError
from .builtin import BUILTINS, SEED, load_builtin, stratified_split
from .types import Split, TaskData

TEXT_SUFFIXES = {".csv", ".tsv", ".jsonl", ".json", ".ndjson"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
#: files save_to_disk writes into a saved Dataset's folder
HF_MARKERS = ("dataset_info.json", "state.json")

SPLIT_ALIASES = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation", "eval": "validation",
    "evaluation": "validation",
    "test": "test", "testing": "test",
}


def load_data(
    spec: str | Path,
    *,
    text_column: str = "text",
    label_column: str | None = "label",
    image_size: int | Sequence[int] | None = None,
    image_mean: float | Sequence[float] = 0.5,
    image_std: float | Sequence[float] = 0.5,
    num_channels: int = 3,
    seed: int = SEED,
    task_type: str | None = None,
    num_classes: int | None = None,
) -> TaskData:
    """Load a built-in data set (by name) or the user's data (by path) as :class:`TaskData`.

    ``image_size``/``image_mean``/``image_std``/``num_channels`` apply to image folders only (the
    model's preprocessing; size defaults to 224). ``label_column=None`` loads inputs only.
    ``task_type`` (the model's: classification or regression) decides how labels are read; without
    it, only labels that are all non-integer numbers make a regression task. ``num_classes`` (a classifier's class
    count) bounds integer class ids up front.
    """
    s = str(spec)
    if s in BUILTINS:
        return load_builtin(s, seed=seed)
    path = Path(s).expanduser()
    if not path.exists():
        raise OptinError(
            f"data {s!r} is neither a built-in data set ({', '.join(BUILTINS)}) nor an existing file or folder"
        )
    if path.is_file():
        if path.suffix.lower() not in TEXT_SUFFIXES:
            raise OptinError(f"{path}: unsupported data file type {path.suffix!r}; use .csv, .tsv or .jsonl (or a folder)")
        rows, cols = read_table(path)
        return _from_rows(path.stem, {"all": (rows, cols, str(path))}, text_column, label_column, seed, str(path), task_type,
                          num_classes)
    return _load_folder(path, text_column, label_column, image_size, image_mean, image_std, num_channels, seed, task_type, num_classes)


# ---------------------------------------------------------------------------------------- tables


def read_table(path: Path) -> tuple[list[dict], list[str]]:
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise OptinError(f"{path} is not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise OptinError(f"cannot read {path} ({exc.strerror})") from None
    if not raw.strip():
        raise OptinError(f"{path} is empty; it needs a header row and at least one data row")
    suffix = path.suffix.lower()
    rows: list[dict]
    if suffix in (".csv", ".tsv"):
        # the csv module splits records itself: a quoted field may hold newlines, and U+2028 or form feeds are text
        # (str.splitlines would cut records there)
        # restval: a row with fewer fields than the header reads its missing ones as empty strings
        # header names are stripped (a spreadsheet's "text, label" means the column label) and kept with their repeats, so
        # that a column named twice is refused where it is used (DictReader silently took the last of the two)
        reader = csv.reader(io.StringIO(raw, newline=""), delimiter="\t" if suffix == ".tsv" else csv_delimiter(raw))
        try:
            cols = [c.strip() for c in next(reader, [])]
            rows = [dict(zip(cols, r + [""] * (len(cols) - len(r)))) for r in reader if any(v.strip() for v in r[:len(cols)])]
        except csv.Error as exc:
            raise OptinError(f"{path} is not valid CSV ({exc})") from None
    else:
        stripped = raw.lstrip()
        if suffix == ".json" and stripped.startswith("["):
            try:
                rows = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise OptinError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        else:
            rows = []
            for i, line in enumerate(raw.split("\n"), 1):  # JSON Lines are split at \n only (U+2028 may occur raw in a string)
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise OptinError(f"{path} line {i} is not valid JSON ({exc.msg}); JSONL needs one object per line") from None
        if not all(isinstance(r, dict) for r in rows):
            raise OptinError(f"{path}: every record must be a JSON object with named fields")
        cols = list(dict.fromkeys(k for r in rows for k in r))
    if not rows:
        raise OptinError(f"{path} has a header but no data rows")
    return rows, cols


def csv_delimiter(raw: str) -> str:
    """The separator of a ``.csv`` file: a comma, unless its header row has none and has semicolons
    (what spreadsheets write in locales with a decimal comma), tabs or pipes."""
    header = next((line for line in raw.split("\n") if line.strip()), "")
    if "," in header:
        return ","
    counts = {d: header.count(d) for d in (";", "\t", "|")}
    best = max(counts, key=counts.get)
    return best if counts[best] else ","


def _is_int(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    if isinstance(v, float):
        return v.is_integer()
    if isinstance(v, str):  # "3", and "3.0" as a spreadsheet or pandas writes an integer column holding a gap
        return re.fullmatch(r"-?\d+(\.0*)?", v.strip()) is not None
    return False


def _is_number(v: Any) -> bool:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return True
    try:
        float(str(v).strip())
        return True
    except ValueError:
        return False


#: the largest class count a data set without a model may imply (its ids are 0..n-1; ImageNet-21k has 21,843)
MAX_CLASSES = 1_000_000


def _as_id(v: Any) -> int:
    """An integer label (see :func:`_is_int`) as an exact int ("3.0" -> 3; a 20-digit id is not rounded through float)."""
    return int(v) if isinstance(v, (int, float)) else int(str(v).strip().split(".")[0])


class _Labels:
    """Maps raw label values to ids (or floats for regression), fitted on the training split.

    ``num_classes``: the model's class count, when known; integer labels are then checked against its range here, before
    anything is built from them (an id of 1e12 would otherwise make a list of 1e12 class names)."""

    def __init__(self, values: list, where: str, task_type: str | None = None, num_classes: int | None = None):
        vals = [v for v in values if v is not None and str(v).strip() != ""]
        if len(vals) < len(values):
            raise OptinError(f"{where}: {len(values) - len(vals)} rows have an empty label; fill them in or drop them")
        self.where = where
        self.for_classifier = task_type == "classification"  # a classifier's own ids: its class range is checked against the model
        fractional = bool(vals) and all(_is_number(v) and math.isfinite(float(str(v).strip())) for v in vals) \
            and not all(_is_int(v) for v in vals)
        scores = fractional and any(not float(str(v).strip()).is_integer() for v in vals)  # 0.37, not "+1" or "1e0"
        if task_type == "regression":
            bad = [v for v in vals if not _is_number(v) or not math.isfinite(float(str(v).strip()))]
            if bad:
                raise OptinError(f"{where}: the model is a regression model but {len(bad)} labels are not finite numbers "
                                 f"(e.g. {bad[0]!r}); fix or drop those rows")
            self.kind = "float"
            self.names = ["score"]
        elif vals and all(_is_int(v) for v in vals) and min(_as_id(v) for v in vals) >= 0:
            self.kind = "int"
            self.seen = {_as_id(v) for v in vals}
            top = max(self.seen)
            limit = num_classes if self.for_classifier and num_classes else MAX_CLASSES
            if top >= limit:
                out = sorted(i for i in self.seen if i >= limit)
                shown = ", ".join(str(i) if i < 10**15 else f"{str(i)[:6]}... ({len(str(i))} digits)" for i in out[:8]) \
                    + (", ..." if len(out) > 8 else "")
                what = (f"the model predicts {num_classes} classes (ids 0..{num_classes - 1})" if limit == num_classes
                        else f"ids are 0..n-1 for n classes, and {MAX_CLASSES:,} classes is past any model's")
                raise OptinError(f"{where}: class id{'s' if len(out) > 1 else ''} {shown} out of range: {what}; fix those labels "
                                 f"(or drop those rows)")
            self.names = [str(i) for i in range(top + 1)]
        elif scores and self.for_classifier and num_classes:  # a classifier model's data given regression scores
            eg = next(v for v in vals if not float(str(v).strip()).is_integer())
            raise OptinError(f"{where}: the labels are numbers with fractions (e.g. {str(eg).strip()!r}), a regression target, but "
                             f"the model is a classifier of {num_classes} classes; pass data labelled "
                             f"with its classes (class ids 0, 1, ... or class names), or a regression model (num_labels 1)")
        elif task_type is None and fractional:
            self.kind = "float"
            self.names = ["score"]
        else:  # class names (a classifier's data is classification: -1/1 or 'nan' are names, not numbers)
            ids = [v for v in vals if _is_int(v) and _as_id(v) >= 0]
            others = [v for v in vals if not _is_int(v)]  # (-1 beside 1 stays a name the model does not know)
            if self.for_classifier and ids and others:  # "0, 1, 2" beside "nan" or "pos": they were all called unknown names
                shown = list(dict.fromkeys(str(v).strip() for v in others))
                raise OptinError(f"{where}: {len(ids)} labels are class ids (e.g. {str(ids[0]).strip()!r}) and {len(others)} are not "
                                 f"({', '.join(map(repr, shown[:5]))}); use class ids 0, 1, ... or class names throughout (fix or drop "
                                 f"the other rows)")
            self.kind = "str"
            self.names = sorted({str(v).strip() for v in vals})
            self.ids = {n: i for i, n in enumerate(self.names)}

    @property
    def task_type(self) -> str:
        return "regression" if self.kind == "float" else "classification"

    def encode(self, values: list, split: str, where: str) -> torch.Tensor:
        if self.kind == "float":
            try:
                return torch.tensor([float(v) for v in values], dtype=torch.float32)
            except (TypeError, ValueError):
                raise OptinError(f"{where}: the {split} labels are not all numbers, unlike the training labels") from None
        if self.kind == "int":
            # for a classifier every split may hold any subset of its class ids (zoo._check_fit checks them against
            # the model's range); without a model a split's ids must have been seen in training
            bad = [v for v in values if not _is_int(v) or _as_id(v) < 0 or (not self.for_classifier and _as_id(v) not in self.seen)]
            ids = None if bad else [_as_id(v) for v in values]
            if bad and self.for_classifier:
                shown = ", ".join(repr(b) for b in list(dict.fromkeys(map(str, bad)))[:5])
                raise OptinError(f"{where}: the {split} split has labels that are not class ids ({shown}) while the training "
                                 f"labels are; use integer class ids 0, 1, ... (or class names) throughout")
        else:
            bad = [v for v in values if str(v).strip() not in self.ids]
            ids = None if bad else [self.ids[str(v).strip()] for v in values]
        if bad:
            shown = ", ".join(repr(b) for b in list(dict.fromkeys(map(str, bad)))[:5])
            raise OptinError(
                f"{where}: the {split} split has labels not seen in training ({shown}); training labels are "
                f"{', '.join(self.names) if self.kind == 'str' else sorted(self.seen)}"
            )
        return torch.tensor(ids, dtype=torch.long)


def text_columns(text_column: str, available: Sequence[str] = ()) -> tuple[str, ...]:
    """The text column, or the two columns of a sentence-pair task: ``--text-column premise,hypothesis``
    (a column whose own name holds the comma is taken as it is)."""
    if text_column in available or "," not in text_column:
        return (text_column,)
    names = tuple(n.strip() for n in text_column.split(","))
    if len(names) != 2 or not all(names) or names[0] == names[1]:
        raise OptinError(f"--text-column {text_column!r}: give one column, or two different columns separated by a comma "
                         f"for sentence pairs (e.g. premise,hypothesis)")
    return names


def _column(rows: list[dict], col: str) -> list:
    return [r.get(col) for r in rows]


def _from_rows(
    name: str,
    parts: dict[str, tuple[list[dict], list[str], str]],
    text_column: str,
    label_column: str | None,
    seed: int,
    origin: str,
    task_type: str | None = None,
    num_classes: int | None = None,
) -> TaskData:
    """Build TaskData from tabular rows: ``parts`` maps split name ('all', 'train', ...) to rows."""
    columns = text_columns(text_column, [c for _, cols, _ in parts.values() for c in cols])
    for split, (rows, cols, where) in parts.items():
        for col in (*columns, *([label_column] if label_column else [])):
            if cols.count(col) > 1:  # which of the two is the text (or the labels)? never guess
                raise OptinError(f"{where} has {cols.count(col)} columns named {col!r} (columns {', '.join(str(i + 1) for i, c in enumerate(cols) if c == col)}); "
                                 f"rename all but one")
        for col in columns:
            if col not in cols:
                raise OptinError(
                    f"{where} has no text column {col!r}; columns are: {', '.join(cols) or '(none)'}; pass --text-column "
                    f"(two names for sentence pairs: --text-column premise,hypothesis)"
                )
    have_labels = label_column is not None and all(label_column in cols for rows, cols, _ in parts.values())
    if label_column is not None and not have_labels and any(label_column in cols for _, cols, _ in parts.values()):
        missing = [w for _, c, w in parts.values() if label_column not in c]
        raise OptinError(f"{missing[0]} has no label column {label_column!r} while other splits do; add it or drop it everywhere")
    if have_labels and label_column in columns:  # the model would read the answer it is scored on
        raise OptinError(f"--text-column {text_column!r} includes the label column {label_column!r}: the model would be fed "
                         f"the label it is scored on; pass the text column(s) and the label column separately")
    train_rows = parts.get("all", parts.get("train"))[0] if ("all" in parts or "train" in parts) else None
    if train_rows is None:
        raise OptinError(f"{origin}: found {', '.join(parts)} splits but no training split; add a train file")
    train_where = parts.get("all", parts.get("train"))[2]

    def texts_of(rows: list[dict], where: str) -> list:
        for c in columns:
            odd = [v for v in _column(rows, c) if v is None or isinstance(v, (dict, list))]  # JSON null / objects / lists
            if odd:
                kind = "null" if odd[0] is None else type(odd[0]).__name__
                raise OptinError(f"{where}: {len(odd)} rows have no text in {c!r} (e.g. a {kind} value), which would be fed to "
                                 f"the model as {'an empty string' if odd[0] is None else 'its Python repr'}; give every row a "
                                 f"string (or drop those rows)")
        cols = [[str(v) for v in _column(rows, c)] for c in columns]
        blank = sum(all(not col[i].strip() for col in cols) for i in range(len(rows)))
        if blank and blank == len(rows):  # nothing to read: every input would be [CLS] [SEP]
            raise OptinError(f"{where}: all {len(rows)} rows have an empty text in {', '.join(map(repr, columns))}; "
                             f"is the text column right? (--text-column)")
        if blank:  # a few empty texts are inputs like any other (an empty review), but say so
            from ..progress import warn

            warn(f"{where}: {blank} of {len(rows)} rows have an empty text in {', '.join(map(repr, columns))}; they are fed "
                 f"to the model as empty strings (drop them from the data if they should not count)")
        return cols[0] if len(cols) == 1 else list(zip(*cols))

    # a classifier's class names are matched to the model's own labels later, so a class may be missing from training
    # (its ids come from the model); without a model the classes are the training split's
    fit_rows = [r for rows, _, _ in parts.values() for r in rows] if task_type == "classification" else train_rows
    labeler = _Labels(_column(fit_rows, label_column), train_where if fit_rows is train_rows else origin, task_type,
                      num_classes) if have_labels else None
    source = {"path": str(Path(origin).resolve()), "text_column": text_column, **({"text_pair": list(columns)} if len(columns) == 2 else {}),
              "label_column": label_column if have_labels else None,
              "label_kind": labeler.kind if labeler else None}
    if not have_labels:
        source["missing_label_column"] = label_column
        source["columns"] = parts.get("all", parts.get("train"))[1]

    encoded: dict[str, Split] = {}
    for split, (rows, _, where) in parts.items():
        labels = labeler.encode(_column(rows, label_column), split if split != "all" else "data", where) if labeler else None
        encoded[split] = Split(texts_of(rows, where), labels)
    encoded, how = _fill_splits(encoded, labeler is not None and labeler.task_type == "classification", seed, origin)
    source["split"] = how
    source["seed"] = seed
    return TaskData(
        name=name,
        modality="text",
        task_type=labeler.task_type if labeler else "classification",  # type: ignore[arg-type]
        label_names=labeler.names if labeler else [],
        train=encoded["train"], validation=encoded["validation"], test=encoded["test"], source=source,
    )


def _subset(s: Split, idx: np.ndarray) -> Split:
    ids = torch.as_tensor(idx, dtype=torch.long)
    inputs = s.inputs[ids] if isinstance(s.inputs, torch.Tensor) else [s.inputs[int(i)] for i in idx]
    return Split(inputs, None if s.labels is None else s.labels[ids])


def _fill_splits(parts: dict[str, Split], stratify: bool, seed: int, origin: str) -> tuple[dict[str, Split], str]:
    """Turn 'all' or train(+validation)(+test) into train/validation/test (80/10/10 seeded)."""
    if "all" in parts:
        s = parts["all"]
        if len(s) < 3:
            raise OptinError(f"{origin} has only {len(s)} rows; it needs at least 3 to make train/validation/test splits")
        labels = s.labels.numpy() if (stratify and s.labels is not None) else None
        tr, va, te = stratified_split(labels, len(s), seed=seed)
        empty = [k for k, idx in (("train", tr), ("validation", va), ("test", te)) if len(idx) == 0]
        if empty:
            need = "at least 10 rows of one class (the split is drawn class by class)" if labels is not None else "at least 10 rows"
            counts = np.unique(labels, return_counts=True)[1] if labels is not None else None
            what = (f"has {len(s)} rows in {len(counts)} classes of at most {counts.max()} rows (is the label column right?)"
                    if counts is not None and len(s) >= 10 else f"has only {len(s)} rows")
            raise OptinError(
                f"{origin} {what}, too few for the 80/10/10 train/validation/test split: the {' and '.join(empty)} "
                f"split{'s' if len(empty) > 1 else ''} would be empty; pass {need}, or a folder with train/validation/test files"
            )
        return {"train": _subset(s, tr), "validation": _subset(s, va), "test": _subset(s, te)}, "80/10/10 seeded" + (" stratified" if labels is not None else "")
    out = dict(parts)
    missing = [k for k in ("validation", "test") if k not in out]
    if missing:
        s = out["train"]
        labels = s.labels.numpy() if (stratify and s.labels is not None) else None
        fr = {("validation",): (8, 1), ("test",): (8, 1), ("validation", "test"): (8, 1, 1)}[tuple(missing)]
        pieces = stratified_split(labels, len(s), fractions=fr, seed=seed)
        out["train"] = _subset(s, pieces[0])
        for k, p in zip(missing, pieces[1:]):
            out[k] = _subset(s, p)
    for k in ("train", "validation", "test"):
        if len(out[k]) == 0:
            raise OptinError(f"{origin}: the {k} split is empty; add more data")
    how = "given splits" + (f"; {' and '.join(missing)} carved from train (seeded)" if missing else "")
    return out, how


# ---------------------------------------------------------------------------------------- folders


def _split_name(stem: str) -> str | None:
    return SPLIT_ALIASES.get(stem.lower())


def _one_per_split(found: dict[str, Path], split: str, f: Path, root: Path) -> None:
    """Record ``f`` as the ``split`` split; a second file or folder for one split (train.csv and train.jsonl, val.csv and
    validation.csv) is refused: one of them was silently left out."""
    if split in found:
        raise OptinError(f"{root}: {found[split].name} and {f.name} are both the {split} split; keep one (or merge them)")
    found[split] = f


def _load_folder(path: Path, text_column, label_column, image_size, image_mean, image_std, num_channels, seed, task_type=None,
                 num_classes=None) -> TaskData:
    if any((path / f).exists() for f in ("dataset_dict.json", *HF_MARKERS)):
        return _load_hf(path, text_column, label_column, image_size, image_mean, image_std, num_channels, seed, task_type,
                        num_classes=num_classes)
    saved = _hf_split_folders(path)
    if saved and all(_split_name(d.name) for d in saved):  # train/ validation/ test/, each written by Dataset.save_to_disk
        return _load_hf(path, text_column, label_column, image_size, image_mean, image_std, num_channels, seed, task_type, split_folders=saved,
                        num_classes=num_classes)
    if saved:
        raise OptinError(f"{path} holds the saved data set{'s' if len(saved) > 1 else ''} {', '.join(d.name for d in saved)}; "
                         f"pass {'that folder' if len(saved) == 1 else 'one of them'} as --data (e.g. {saved[0]})")
    files: dict[str, Path] = {}
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES and _split_name(f.stem):
            _one_per_split(files, _split_name(f.stem), f, path)
    if files:
        parts = {}
        for split, f in files.items():
            rows, cols = read_table(f)
            parts[split] = (rows, cols, str(f))
        return _from_rows(path.name, parts, text_column, label_column, seed, str(path), task_type, num_classes)
    subdirs = sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        raise OptinError(
            f"{path} is a folder without train/validation/test files, a saved data set or class sub-folders of images; "
            f"pass a .csv/.jsonl file or an image folder"
        )
    split_dirs: dict[str, Path] = {}
    if all(_split_name(d.name) for d in subdirs):  # train/ val/ test/ (else class folders, whatever their names)
        for d in subdirs:
            _one_per_split(split_dirs, _split_name(d.name), d, path)
    if split_dirs:
        return _load_images({k: v for k, v in split_dirs.items()}, path, image_size, image_mean, image_std, num_channels, seed)
    return _load_images({"all": path}, path, image_size, image_mean, image_std, num_channels, seed)


def _norm_vec(v: float | Sequence[float], channels: int, what: str) -> np.ndarray:
    a = np.asarray([v] * channels if isinstance(v, (int, float)) else list(v), dtype=np.float32)
    if len(a) == 1:
        a = np.repeat(a, channels)
    if len(a) != channels:
        raise OptinError(f"image {what} has {len(a)} values but the model takes {channels} channels")
    return a.reshape(channels, 1, 1)


def _size(image_size) -> tuple[int, int]:
    if image_size is None:
        return (224, 224)
    if isinstance(image_size, int):
        return (image_size, image_size)
    if isinstance(image_size, dict):
        return (int(image_size.get("height", image_size.get("shortest_edge"))), int(image_size.get("width", image_size.get("shortest_edge"))))
    h, w = list(image_size)[-2:]
    return (int(h), int(w))


def _to_8bit(img):
    """16- and 32-bit integer / float grey images (scanners, microscopy, depth maps) scaled to 8 bits: PIL's
    ``convert("RGB")`` would clip their values at 255 and turn most of the picture white."""
    if img.mode not in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return img
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    top = 65535.0 if img.mode.startswith("I;16") else (float(a.max()) if a.size and a.max() > 255 else 255.0)
    if img.mode == "F" and a.size and float(a.max()) <= 1.0:
        top = 1.0  # float images in [0, 1]
    return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def _hidden(path: Path, root: Path) -> bool:
    """A file or folder under ``root`` whose name, or a parent's, starts with a dot (``._x.png`` AppleDouble forks,
    ``.ipynb_checkpoints``): not data."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def image_steps(num_channels: int) -> str:
    """What :func:`images_to_tensor` does to an image, in words (a bundle's serving block: a server must do the same)."""
    return (f"read with PIL, turned upright by its EXIF orientation, converted to {'L (grey)' if num_channels == 1 else 'RGB'}, "
            "resized as a whole (no crop, aspect ratio not kept) to image_size [height, width] with PIL's bilinear filter "
            "(Image.BILINEAR), scaled to 0..1 (x / 255), normalised per channel ((x - image_mean) / image_std), "
            "channels first (N x C x H x W, float32)")


def image_source(image_size, image_mean, image_std, num_channels: int) -> dict:
    """The preprocessing an image data set's ``source`` records (what :func:`images_to_tensor` was called with)."""
    return {"image_size": list(_size(image_size)), "image_mean": np.ravel(_norm_vec(image_mean, num_channels, "mean")).tolist(),
            "image_std": np.ravel(_norm_vec(image_std, num_channels, "std")).tolist(), "num_channels": int(num_channels),
            "steps": image_steps(num_channels)}


def images_to_tensor(images: list, image_size, image_mean, image_std, num_channels: int, where: str = "") -> torch.Tensor:
    """PIL images (or paths) to a normalised ``N x C x H x W`` float tensor."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    h, w = _size(image_size)
    mean, std = _norm_vec(image_mean, num_channels, "mean"), _norm_vec(image_std, num_channels, "std")
    out = np.empty((len(images), num_channels, h, w), dtype=np.float32)
    for i, im in enumerate(images):
        try:
            img = Image.open(im) if isinstance(im, (str, Path)) else im
            # upright as shown (a phone photo's EXIF orientation), as datasets and transformers' load_image read it
            img = ImageOps.exif_transpose(img)
            img = _to_8bit(img).convert("L" if num_channels == 1 else "RGB").resize((w, h), Image.BILINEAR)
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            fix = "downscale it or remove it" if isinstance(exc, Image.DecompressionBombError) else "remove or fix it"
            raise OptinError(f"cannot read image {im if isinstance(im, (str, Path)) else where} ({exc}); {fix}") from None
        a = np.asarray(img, dtype=np.float32) / 255.0
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
        out[i] = (a - mean) / std
    return torch.from_numpy(out)


def _load_images(roots: dict[str, Path], origin: Path, image_size, image_mean, image_std, num_channels, seed) -> TaskData:
    per_split: dict[str, tuple[list[Path], list[str]]] = {}
    for split, root in roots.items():
        files, labels, empty = [], [], []
        for cls in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")):
            n = len(files)
            for f in sorted(cls.rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not _hidden(f, cls):
                    files.append(f)
                    labels.append(cls.name)
            if len(files) == n:
                empty.append(cls.name)
        if files and empty:  # a class without images is no class of this data: say so, a model's class count may then differ
            from ..progress import warn

            warn(f"{root}: class folder{'s' if len(empty) > 1 else ''} {', '.join(empty[:5])} hold{'' if len(empty) > 1 else 's'} no images "
                 f"({', '.join(sorted(IMAGE_SUFFIXES))}) and {'are' if len(empty) > 1 else 'is'} left out")
        if not files:
            raise OptinError(f"{root} has no images in class sub-folders ({', '.join(sorted(IMAGE_SUFFIXES))}); put each class's images in its own sub-folder")
        per_split[split] = (files, labels)
    train_key = "all" if "all" in per_split else "train"
    if train_key not in per_split:
        raise OptinError(f"{origin}: found {', '.join(per_split)} folders but no train folder")
    names = sorted(set(per_split[train_key][1]))
    ids = {n: i for i, n in enumerate(names)}
    parts = {}
    for split, (files, labels) in per_split.items():
        unknown = sorted(set(labels) - set(ids))
        if unknown:
            raise OptinError(f"{origin}: the {split} split has classes not seen in training ({', '.join(unknown[:5])}); training classes are {', '.join(names)}")
        x = images_to_tensor(files, image_size, image_mean, image_std, num_channels)
        parts[split] = Split(x, torch.tensor([ids[l] for l in labels], dtype=torch.long))
    parts, how = _fill_splits(parts, True, seed, str(origin))
    source = {"path": str(origin.resolve()), "split": how, "seed": seed, "label_kind": "folder",
              **image_source(image_size, image_mean, image_std, num_channels)}
    return TaskData(origin.name, "image", "classification", names, parts["train"], parts["validation"], parts["test"], source)


# ----------------------------------------------------------------------------------- HF datasets


def _skipped_note(skipped: list[str]) -> str:
    return f"; left out split {', '.join(skipped)}" if skipped else ""


def _drop_hidden_labels(path: Path, splits: dict, given: dict[str, str], label_column: str, features, skipped: list[str]) -> None:
    """Integer label -1 is ``datasets``' "no label" (GLUE's hidden test labels, IMDB's unsupervised split).
    A split labelled -1 throughout is left out (so it is carved from train when needed), noted in ``skipped``;
    a split with some -1 rows, or a training split without labels, is refused: its figures would count
    unlabelled rows as wrong."""
    if label_column not in features:
        return
    f = features[label_column]
    if not (type(f).__name__ == "ClassLabel" or str(getattr(f, "dtype", "")).startswith(("int", "uint"))):
        return
    for k, d in list(splits.items()):
        y = np.asarray(d[label_column])
        hidden = int((y == -1).sum())
        if hidden == 0:
            continue
        name = given.get(k, k)
        if hidden == len(y) and k in ("validation", "test"):
            del splits[k]
            skipped.append(f"{name!r} (every label is -1: no labels, as in GLUE's test splits)")
            continue
        if hidden == len(y):  # the training data itself is unlabelled
            raise OptinError(f"{path} ({name}): every label is -1 (no labels); for calibration-only data remove the column "
                             f"(ds.remove_columns({label_column!r})) and save the data set again, or give labelled training data")
        raise OptinError(f"{path} ({name}): {hidden} of {len(y)} rows have label -1 (no label); drop those rows "
                         f"(ds.filter(lambda r: r[{label_column!r}] != -1)) and save the data set again")


def _hf_splits(path: Path, datasets, loaded=None) -> tuple[dict, dict[str, str], list[str]]:
    """``{our split: Dataset}``, ``{our split: the data set's name}`` and the splits left out (with why)."""
    try:
        ds = loaded if loaded is not None else datasets.load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds
        raise OptinError(f"cannot load the saved data set {path} ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    skipped: list[str] = []
    given: dict[str, str] = {}
    if not isinstance(ds, datasets.DatasetDict):
        return {"all": ds}, {"all": path.name}, skipped
    splits = {}
    for k in ds:
        sk = _split_name(k)
        if sk is None:  # IMDB's "unsupervised", a "train_extra": not one of the three
            skipped.append(f"{k!r} (not a train, validation or test split)")
            continue
        if sk in splits:
            raise OptinError(f"{path}: two splits are the {sk} split ({given[sk]!r} and {k!r}); keep one")
        splits[sk], given[sk] = ds[k], k
    if not splits:
        raise OptinError(f"{path}: no split is train, validation or test (splits: {', '.join(map(repr, ds))}); name the splits train, validation and test")
    return splits, given, skipped


def _hf_split_folders(path: Path) -> list[Path]:
    """Sub-folders of ``path`` that ``save_to_disk`` wrote (a Dataset's folder has state.json / dataset_info.json, a
    DatasetDict's dataset_dict.json)."""
    return sorted(d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".") and any((d / f).exists() for f in ("dataset_dict.json", *HF_MARKERS)))


def _load_hf(path: Path, text_column, label_column, image_size, image_mean, image_std, num_channels, seed, task_type=None,
             split_folders: list[Path] | None = None, num_classes: int | None = None) -> TaskData:
    """A folder written by ``save_to_disk`` (a DatasetDict or one Dataset), or (``split_folders``) one saved Dataset
    per split in ``train/``, ``validation/``, ``test/`` sub-folders."""
    try:
        import datasets  # noqa: F401
    except ImportError:
        raise OptinError(f"{path} is a saved Hugging Face data set, which needs the 'datasets' package: pip install datasets (or: pip install 'optin-deploy[hf-datasets]')") from None
    if split_folders:
        loaded = {}
        for d in split_folders:
            one = _hf_splits(d, datasets)[0]
            if set(one) != {"all"}:
                raise OptinError(f"{d} holds several splits itself; pass that folder as --data")
            loaded[d.name] = one["all"]
        splits, given, skipped = _hf_splits(path, datasets, datasets.DatasetDict(loaded))
    else:
        splits, given, skipped = _hf_splits(path, datasets)
    where = {k: f"{path} ({given.get(k, k)})" for k in splits}
    if "train" not in splits and "all" not in splits:
        raise OptinError(f"{path}: found {', '.join(given[k] for k in splits)} splits but no training split; add a train split")
    with_label = [k for k, d in splits.items() if label_column in d.column_names]
    if with_label and len(with_label) < len(splits):
        missing = next(k for k in splits if k not in with_label)
        raise OptinError(f"{where[missing]} has no label column {label_column!r} while other splits do; add it or drop it everywhere")
    any_ds = splits.get("train", splits.get("all"))
    cols = list(any_ds.column_names)
    features = any_ds.features
    has_labels = bool(with_label)
    if has_labels and type(features[label_column]).__name__ in ("Sequence", "List", "LargeList"):
        raise OptinError(f"{path}: the label column {label_column!r} holds a list per row (multi-label data); "
                         f"optin-deploy evaluates single-label classifiers and regression: give one label per row")
    classlabel = has_labels and type(features[label_column]).__name__ == "ClassLabel"
    image_col = next((c for c in cols if type(features[c]).__name__ == "Image"), None)
    remap = _classlabel_remaps(splits, label_column, where, features[label_column].names) if classlabel else {}
    try:  # a damaged arrow file loads (it is mapped lazily) and fails only when its rows are read
        _drop_hidden_labels(path, splits, given, label_column, features, skipped)
        if text_column not in cols and image_col is not None:
            td = _hf_images(path, splits, where, image_col, label_column if has_labels else None, image_size, image_mean,
                            image_std, num_channels, seed, datasets, num_classes, remap)
            if not has_labels:
                td.source.update(missing_label_column=label_column, columns=cols)
        else:
            rows_parts = {}
            for k, d in splits.items():
                rows = d.select_columns([c for c in (*text_columns(text_column, cols), label_column) if c in d.column_names]).to_list()
                if k in remap:
                    for r in rows:
                        r[label_column] = remap[k][r[label_column]] if r[label_column] is not None and r[label_column] >= 0 else r[label_column]
                if not rows:
                    raise OptinError(f"{where[k]}: the split is empty")
                rows_parts[k] = (rows, list(d.column_names), where[k])
            td = _from_rows(path.name, rows_parts, text_column, label_column, seed, str(path), task_type, num_classes)
    except OptinError:
        raise
    except Exception as exc:  # noqa: BLE001 - pyarrow / datasets raise many kinds
        raise OptinError(f"cannot read the saved data set {path} ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    td.source["split"] = str(td.source.get("split", "")) + _skipped_note(skipped)
    if classlabel:  # ids with names: zoo matches them to the model's labels by name, else by id
        td.label_names = list(features[label_column].names)
        td.source["label_kind"] = "classlabel"
    return td


def _classlabel_remaps(splits: dict, label_column: str, where: dict, names: list[str]) -> dict[str, list[int]]:
    """Splits saved with their own ClassLabel: ``{split: its id -> the training split's id}`` where the names differ (another
    order of the same classes, or some of them). Their ids were taken as the training split's, so a test split saved with
    ``neg, neu, pos`` under a training split's ``pos, neu, neg`` scored every label as another class. A class the
    training split's ClassLabel does not name is refused."""
    out = {}
    for k, d in splits.items():
        f = d.features.get(label_column)
        if type(f).__name__ != "ClassLabel" or list(f.names) == list(names):
            continue
        unknown = [n for n in f.names if n not in names]
        if unknown:
            raise OptinError(f"{where[k]}: its label classes ({', '.join(f.names[:8])}) are not the training split's "
                             f"({', '.join(names[:8])}): {', '.join(map(repr, unknown[:5]))} not among them; save every split with one ClassLabel")
        out[k] = [names.index(n) for n in f.names]
    return out


def _hf_images(path: Path, splits: dict, where: dict, image_col: str, label_column: str | None, image_size, image_mean,
               image_std, num_channels, seed, datasets, num_classes=None, remap=None) -> TaskData:
    """An image data set: the image column (decoded, whatever ``decode`` it was saved with) and, when given, labels read
    like any other labels (integers are class ids, anything else class names; a ClassLabel's ids come with its names)."""
    raw = {k: list(d[label_column]) for k, d in splits.items()} if label_column else {}
    for k, m in (remap or {}).items():  # a split whose ClassLabel numbers the classes otherwise: the training split's ids
        raw[k] = [m[v] if v is not None and v >= 0 else v for v in raw[k]]
    labeler = _Labels([v for vals in raw.values() for v in vals], str(path), "classification", num_classes) if label_column else None
    parts = {}
    for k, d in splits.items():
        if not getattr(d.features[image_col], "decode", True):
            d = d.cast_column(image_col, datasets.Image(decode=True))
        x = images_to_tensor(list(d[image_col]), image_size, image_mean, image_std, num_channels, where[k])
        parts[k] = Split(x, labeler.encode(raw[k], k, where[k]) if labeler else None)
    parts, how = _fill_splits(parts, labeler is not None, seed, str(path))
    return TaskData(path.name, "image", "classification", labeler.names if labeler else [], parts["train"], parts["validation"], parts["test"],
                    {"path": str(path.resolve()), "split": how, "seed": seed, "image_column": image_col,
                     "label_kind": labeler.kind if labeler else None, **image_source(image_size, image_mean, image_std, num_channels)})
