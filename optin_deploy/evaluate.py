"""Task metrics computed through a runtime (onnxruntime, TensorRT, PyTorch), not only in PyTorch.

* classification: accuracy, plus macro-F1 when there are more than two labels;
* regression: Spearman (and Pearson) correlation;
* for every model besides the baseline (the dense one): the agreement rate of its predictions
  with the baseline's (regression: Spearman between the two prediction sets, and the max |diff|).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import OptinError, short_reason
from .runtimes.base import Runtime

# ---------------------------------------------------------------- metrics


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"predictions {pred.shape} and labels {labels.shape} differ in shape")
    return float((pred == labels).mean()) if len(labels) else float("nan")


def macro_f1(pred: np.ndarray, labels: np.ndarray, num_labels: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions
    (a class never predicted nor present is skipped; one present but never predicted scores 0)."""
    pred, labels = np.asarray(pred).astype(int), np.asarray(labels).astype(int)
    classes = range(num_labels) if num_labels else np.union1d(pred, labels)
    f1s = []
    for c in classes:
        tp = int(((pred == c) & (labels == c)).sum())
        fp = int(((pred == c) & (labels != c)).sum())
        fn = int(((pred != c) & (labels == c)).sum())
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s)) if f1s else float("nan")


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties given their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sx = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sx[j + 1] == sx[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties averaged), like ``scipy.stats.spearmanr``."""
    return pearson(_ranks(np.ravel(a)), _ranks(np.ravel(b)))


#: what the numbers in an evaluation mean (``eval --json``); a build's report.json states accuracy and agreement in percent
EVAL_UNITS = {"accuracy": "fraction of samples classified right, 0 to 1 (report.json: percent)",
              "macro_f1": "unweighted mean of per-class F1, 0 to 1",
              "agreement_vs_baseline": "fraction of samples where the model predicts the baseline's class, 0 to 1 (report.json: percent)",
              "spearman": "rank correlation with the labels, -1 to 1", "pearson": "correlation with the labels, -1 to 1",
              "spearman_vs_baseline": "rank correlation with the baseline's outputs, -1 to 1"}

HEADLINE_METRICS = {"classification": "accuracy", "regression": "spearman", "embedding": "cosine_to_dense"}


def headline_metric(task_type: str) -> str:
    """The metric a build reports (under this key, x 100) and a budget search judges, for a task type."""
    return HEADLINE_METRICS[task_type]


def task_metrics(logits: np.ndarray, labels: np.ndarray | None, task_type: str, num_labels: int) -> dict:
    logits = np.asarray(logits, dtype=np.float32)
    out: dict[str, Any] = {"n": int(len(logits))}
    if labels is None:
        return out
    labels = np.asarray(labels)
    if task_type == "regression":
        p = logits.reshape(len(logits), -1)[:, 0]
        out["spearman"] = spearman(p, labels)
        out["pearson"] = pearson(p, labels)
    else:
        p = logits.argmax(1)
        out["accuracy"] = accuracy(p, labels)
        if num_labels > 2:
            out["macro_f1"] = macro_f1(p, labels, num_labels)
    return out


def agreement(logits: np.ndarray, base_logits: np.ndarray, task_type: str) -> dict:
    logits, base_logits = np.asarray(logits, dtype=np.float32), np.asarray(base_logits, dtype=np.float32)
    if task_type == "regression":
        a, b = logits.reshape(len(logits), -1)[:, 0], base_logits.reshape(len(base_logits), -1)[:, 0]
        return {"spearman_vs_baseline": spearman(a, b), "max_abs_diff_vs_baseline": float(np.abs(a - b).max())}
    return {"agreement_vs_baseline": float((logits.argmax(1) == base_logits.argmax(1)).mean())}


# ---------------------------------------------------------------- running


def predict(task, runtime: Runtime, split: str = "test", batch_size: int = 64, progress: bool = True,
            description: str = "predicting") -> tuple[np.ndarray, np.ndarray | None]:
    """Logits of ``runtime`` (already loaded) over a split of ``task``, with the labels."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .progress import console as bar_console  # on stderr, as all progress; off where no terminal shows it (a bare newline)

    s = getattr(task.data, split) if isinstance(split, str) else split
    n = len(s)
    if n == 0:
        raise OptinError(f"the {split} split of {task.data.name!r} is empty")
    logits, labels = [], []
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=bar_console, disable=not progress or not bar_console.is_terminal, transient=True) as bar:
        t = bar.add_task(description, total=n)
        for inputs, y in task.batches(split, batch_size):
            try:
                out = np.asarray(runtime.run(inputs), dtype=np.float32)
            except (OptinError, KeyboardInterrupt, MemoryError):
                raise
            except Exception as exc:  # noqa: BLE001 - the runtime refused the data's inputs: the user's model or data
                shapes = ", ".join(f"{k} {list(np.shape(v))}" for k, v in inputs.items())
                raise OptinError(f"{getattr(runtime, 'name', 'the runtime')} could not run {description.removeprefix('evaluating ')} on "
                                 f"this data ({shapes}): {short_reason(exc, 240)}; is it the model this data and tokenizer are for?") from None
            if out.ndim not in (1, 2):
                raise OptinError(f"{description.removeprefix('evaluating ')}: its first output is {list(out.shape)} per batch, not one row "
                                 f"of scores per sample; export the model with its task head (logits) as the first output")
            logits.append(out)
            if y is not None:
                labels.append(y.numpy())
            bar.advance(t, len(next(iter(inputs.values()))))
    return np.concatenate(logits), (np.concatenate(labels) if labels else None)


def _check_outputs(label: str, logits: np.ndarray, task_type: str, num_labels: int) -> None:
    """Outputs that cannot be this task's are refused, not scored: another class count, NaN or inf."""
    if task_type == "classification" and num_labels > 0:  # unlabelled data names no classes to compare with
        width = logits.shape[1] if logits.ndim == 2 else 1
        if width != num_labels:
            raise OptinError(f"{label}: its output has {width} score{'s' if width != 1 else ''} per sample but the data has {num_labels} "
                             f"classes; evaluate it on the data it was trained for (or export its classification head)")
    if task_type == "regression" and logits.ndim == 2 and logits.shape[1] != 1:  # its first score alone was compared with the labels
        raise OptinError(f"{label}: its output has {logits.shape[1]} scores per sample but the data has one regression label; "
                         f"evaluate a one-output regression model on it")
    bad = int((~np.isfinite(logits)).sum())
    if bad:
        raise OptinError(f"{label}: {bad} of its {logits.size} outputs are not finite (NaN or inf), so no figure can be computed; "
                         f"check the artifact (an fp16 overflow? a broken export?)")


def evaluate(
    task,
    runtimes_and_models: Mapping[str, tuple[Runtime, Any]],
    *,
    split: str = "test",
    batch_size: int = 64,
    baseline: str | None = None,
    progress: bool = True,
    return_logits: bool = False,
) -> dict:
    """Evaluate each labelled ``(runtime, artifact)`` on ``task``'s ``split`` through that runtime.

    Artifacts are loaded here unless ``None`` (runtime already loaded). ``baseline`` (default: the
    first label, normally the dense model) is what agreement is measured against.
    """
    labels = list(runtimes_and_models)
    if not labels:
        raise OptinError("nothing to evaluate")
    baseline = baseline or labels[0]
    if baseline not in runtimes_and_models:
        raise OptinError(f"baseline {baseline!r} is not one of {labels}")
    task_type, num_labels = task.data.task_type, task.data.num_labels
    out: dict[str, Any] = {"task": task.name, "data": task.data.name, "split": split, "task_type": task_type,
                           "num_labels": num_labels, "baseline": baseline, "units": dict(EVAL_UNITS), "models": {}}
    all_logits = {}
    for l in labels:
        rt, artifact = runtimes_and_models[l]
        if artifact is not None:
            rt.load(artifact)
        logits, y = predict(task, rt, split, batch_size, progress, description=f"evaluating {l}")
        _check_outputs(l, logits, task_type, num_labels)
        all_logits[l] = logits
        out["models"][l] = {**task_metrics(logits, y, task_type, num_labels), "runtime": rt.describe()}
    for l in labels:
        if l != baseline:
            out["models"][l].update(agreement(all_logits[l], all_logits[baseline], task_type))
    if return_logits:
        out["logits"] = all_logits
    return out


def print_eval_table(result: dict, console=None) -> None:
    from .progress import new_console
    from rich.table import Table

    console = console or new_console()
    t = Table(title=f"{result['task']} — {result['split']} split ({result['task_type']}), baseline {result['baseline']}")
    cols = ["model", "runtime", "n"]
    metric_keys = [k for k in ("accuracy", "macro_f1", "spearman", "pearson", "agreement_vs_baseline", "spearman_vs_baseline")
                   if any(k in m for m in result["models"].values())]
    for c in cols + metric_keys:
        t.add_column(c, justify="left" if c in ("model", "runtime") else "right", no_wrap=True)
    for label, m in result["models"].items():
        row = [label, m["runtime"].get("runtime", "?"), str(m["n"])]
        for k in metric_keys:
            v = m.get(k)
            row.append("—" if v is None else (f"{v:.2%}" if k in ("accuracy", "agreement_vs_baseline") else f"{v:.4f}"))
        t.add_row(*row)
    from rich.measure import Measurement

    natural = Measurement.get(console, console.options.update(width=10_000), t).maximum
    if natural <= console.width:
        console.print(t)
        return
    # never an elided figure ("33.…" on a 40-column console): a table wider than the console is printed at its own width
    saved = console.__dict__.get("_width")
    console.width = natural
    try:
        console.print(t)
    finally:
        console._width = saved


def artifact_labels(models: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    """The labels of ``models`` (dense first): given, else dense,pruned for two, else the folder names."""
    names = list(labels) if labels else (["dense", "pruned"] if len(models) == 2 else [Path(m).name or str(m) for m in models])
    if len(names) != len(models) or len(set(names)) != len(names):
        raise OptinError(f"need {len(models)} distinct labels, got {names}")
    return names


def evaluate_artifacts(models: Sequence[str], *, data: str | None = None, model: str | None = None, runtime: str | None = None,
                       threads: int | None = None, split: str = "test", batch_size: int = 64, labels: Sequence[str] | None = None,
                       text_column: str | None = None, label_column: str | None = None) -> dict:
    """``optin-deploy eval``: the task metric of each artifact (bundle folder, exported file or model
    folder; the first is the baseline) through its runtime, on the data its source records (or ``data``,
    read with ``text_column`` / ``label_column``: by default the recorded ones, else text / label)."""
    from .runtimes.base import get_runtime, resolve_artifact
    from .zoo import load_task

    names = artifact_labels(models, labels)
    if batch_size < 1:
        raise OptinError(f"--batch-size must be at least 1, got {batch_size}")
    targets = {}
    sources = []
    for label, spec in zip(names, models):
        rt_name, artifact, manifest = resolve_artifact(spec, runtime)
        targets[label] = (get_runtime(rt_name, threads=threads), artifact)
        sources.append((manifest or {}).get("source") or (None if manifest else spec))
    _check_label_orders(names, sources)
    source = model
    if source is None:  # prefer a source that records its data (a bundle's pruned/ folder does)
        recorded = [s for s in sources if s and any((Path(s) / f).is_file() for f in ("optin_task.json", "zoo_info.json"))]
        source = recorded[0] if recorded else next((s for s in sources if s), None)
    if source is None:
        raise OptinError("cannot tell which model/data these bundles come from; pass --model MODEL_DIR")
    task = load_task(source, data, max_length=None, text_column=text_column or "text", label_column=label_column or "label")
    unlabelled = getattr(task.data, split, None) is not None and getattr(task.data, split).labels is None
    if unlabelled and task.data.task_type != "embedding":
        from .progress import warn

        col, cols = task.data.source.get("missing_label_column"), task.data.source.get("columns")
        why = f"no column {col!r}; columns are: {', '.join(cols)}" if col and cols else "no label column"
        warn(f"data {task.data.name!r} has no labels ({why}): only the models' agreement is measured, not their accuracy; pass --label-column")
    return evaluate(task, targets, split=split, batch_size=batch_size, baseline=names[0])


def _label_order(source) -> list[str] | None:
    """A model folder's class names in id order (its config's ``id2label``; a pruned folder's recorded config), else None."""
    import json

    if not source or not Path(source).is_dir():
        return None
    for name, key in (("config.json", None), ("optin_structure.json", "config")):
        f = Path(source) / name
        if f.is_file():
            try:
                cfg = json.loads(f.read_text())
                cfg = cfg.get(key) if key else cfg
                id2label = (cfg or {}).get("id2label") or {}
                return [str(id2label[k]) for k in sorted(id2label, key=int)] or None
            except (OSError, ValueError, TypeError, AttributeError):
                return None
    return None


def _check_label_orders(names, sources) -> None:
    """One task's labels score every model: two models that number their classes differently would be scored against
    the wrong ids (a model as accurate as the baseline shown at 0%). Refuse instead."""
    orders = [(n, _label_order(s)) for n, s in zip(names, sources)]
    known = [(n, o) for n, o in orders if o]
    for n, o in known[1:]:
        if o != known[0][1]:
            raise OptinError(f"models {known[0][0]!r} and {n!r} number their classes differently ({', '.join(known[0][1][:8])} against "
                             f"{', '.join(o[:8])}), so one set of labels would score one of them against the wrong class ids; "
                             f"evaluate them separately")
