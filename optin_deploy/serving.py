"""What a team needs to serve a bundle's deliverable without optin-deploy: the ``serving`` block of
``report.json`` and ``manifest.json`` and the "Serving the deliverable" section of ``report.md``.

It says, from the exported graph's own record (``onnx/pruned/export.json``) and the task the figures were
measured on: the file to load, its inputs (names, dtypes, dynamic axes), its output and what its columns
mean (the class names in id order), where the tokenizer is and how texts were tokenised (maximum length,
truncation, padding, sentence pairs), or how images were normalised, and the batching the accuracy figures
were computed with (int8 with dynamically quantised activations gives scores that depend on the batch).
"""

from __future__ import annotations

from pathlib import Path

#: the batch size ``build`` and ``eval`` evaluate with (``evaluate.evaluate`` / ``eval --batch-size``)
EVAL_BATCH_SIZE = 64

_IMAGE_KEYS = ("image_size", "image_mean", "image_std", "num_channels", "normalisation", "steps")


def serving_spec(task, export: dict, bundle: Path, eval_len: int | None, eval_batch: int = EVAL_BATCH_SIZE) -> dict:
    """The ``serving`` block for the pruned model's export ``export`` (its manifest, paths absolute) in ``bundle``."""
    onnx = (export.get("artifacts") or {}).get(export.get("format") or "onnx") or {}
    names = list(onnx.get("input_names") or export.get("input_names") or task.input_names)
    dtypes = onnx.get("input_dtypes") or {}
    axes = onnx.get("dynamic_axes") or {}
    shapes = onnx.get("input_shapes") or {}

    def dims(n):
        shape = shapes.get(n) or []
        named = {int(k): v for k, v in (axes.get(n) or {}).items()}
        return [named.get(i, d) for i, d in enumerate(shape)] if shape else [named[i] for i in sorted(named)]

    inputs = {n: {"dtype": dtypes.get(n, "int64" if task.modality == "text" else "float32"), "shape": dims(n)} for n in names}
    out_name = (onnx.get("output_names") or ["logits"])[0]
    data = task.data
    output: dict = {"name": out_name}
    if data.task_type == "classification":
        output.update(shape=["batch", len(data.label_names)], classes=list(data.label_names),
                      meaning="one score (logit) per class; the prediction is the class at argmax, classes listed in id order")
    elif data.task_type == "regression":
        output.update(shape=["batch", 1], meaning="the regression score")
    else:
        output.update(shape=["batch", "dim"], meaning="the sentence embedding (pooled as report.json embedding.pooling says)")
    art = Path(str(export.get("artifact") or ""))
    spec: dict = {"artifact": _rel(art, bundle), "inputs": inputs, "output": output}
    if task.modality == "text":
        tok = task.tokenizer
        spec["preprocessing"] = {
            "tokenizer": "pruned/ (tokenizer.json; transformers: AutoTokenizer.from_pretrained(BUNDLE + '/pruned'))",
            "max_length": eval_len,
            "truncation": f"to max_length tokens, from the {getattr(tok, 'truncation_side', 'right')}",
            "padding": f"to the longest text in the batch, on the {getattr(tok, 'padding_side', 'right')}, "
                       f"pad id {getattr(tok, 'pad_token_id', 0)}, attention_mask 0 on padding",
            "text": list(data.source.get("text_pair") or []) or "one text per sample",
            **({"token_type_ids": "the tokenizer's: 0 for the first text, 1 for the second"} if "token_type_ids" in names else {}),
        }
    else:
        spec["preprocessing"] = {k: data.source[k] for k in _IMAGE_KEYS if k in data.source}
        other = _processor_differs(bundle / "pruned" / "preprocessor_config.json", spec["preprocessing"])
        if other:
            spec["preprocessing"]["note"] = (f"pruned/preprocessor_config.json (the source model's image processor, which transformers' "
                                             f"AutoImageProcessor reads) does otherwise: {other}; the figures were computed with the "
                                             f"steps above, so serve with those (that processor gives other inputs)")
    spec["pytorch"] = ("pruned/: load with optin_deploy.pruned_io.load_pruned(BUNDLE + '/pruned'); it is not a transformers folder (no "
                       "config.json: its layers keep different numbers of heads and MLP widths, which a transformers config cannot "
                       "express), so transformers' from_pretrained refuses it")
    q = export.get("quantization") or {}
    dynamic = "dynamic" in str(q.get("activations", ""))
    spec["figures_measured_with"] = {
        "batch_size": eval_batch, "padding": "to the longest text in each batch" if task.modality == "text" else None,
        "order": "texts sorted by length" if data.task_type == "embedding" else "the split's own order",
        **({"note": "int8 activations are quantised per batch (dynamic): a sample's scores depend slightly on the other samples in its "
                    "batch and on padding, so served one request at a time a few predictions differ from these figures; "
                    "measure that with: optin-deploy eval BUNDLE --batch-size 1"} if dynamic else {}),
    }
    return spec


_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _processor_differs(f: Path, pre: dict) -> str | None:
    """How a transformers image processor's ``preprocessor_config.json`` ``f`` prepares images otherwise than the steps the
    figures were computed with (``pre``: whole image resized bilinear to ``image_size``, no crop), else None."""
    import json

    try:
        p = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(p, dict) or "steps" not in pre:
        return None
    out = []
    size = p.get("size")
    if p.get("do_resize", True) and isinstance(size, dict) and [size.get("height"), size.get("width")] != list(pre.get("image_size") or []):
        out.append(f"resizes to {size}")
    if p.get("do_center_crop"):
        out.append(f"crops the centre to {p.get('crop_size')}")
    if p.get("do_resize", True) and p.get("resample", 2) != 2:
        out.append(f"resizes with the {_PIL_FILTERS.get(p.get('resample'), p.get('resample'))} filter")
    return ", ".join(out) or None


def _rel(p: Path, root: Path) -> str:
    try:
        return str(p.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(p)


def serving_markdown(spec: dict | None) -> list[str]:
    """The report.md lines for a ``serving`` block."""
    if not spec:
        return []
    lines = ["", "## Serving the deliverable", "", f"- file: `{spec['artifact']}`"]
    for n, i in spec["inputs"].items():
        lines.append(f"- input `{n}`: {i['dtype']}, shape [{', '.join(str(d) for d in i['shape'])}]")
    o = spec["output"]
    lines.append(f"- output `{o['name']}`: shape [{', '.join(str(d) for d in o['shape'])}], {o['meaning']}"
                 + (f": {', '.join(f'{k} = `{c}`' for k, c in enumerate(o['classes']))}" if o.get("classes") else ""))
    for k, v in (spec.get("preprocessing") or {}).items():
        lines.append(f"- {k.replace('_', ' ')}: {v}")
    if spec.get("pytorch"):
        lines.append(f"- PyTorch: {spec['pytorch']}")
    f = spec.get("figures_measured_with") or {}
    lines.append(f"- the figures above: batches of {f.get('batch_size')}" + (f", padded {f['padding']}" if f.get("padding") else "") + ".")
    if f.get("note"):
        lines.append(f"- note: {f['note']}.")
    return lines
