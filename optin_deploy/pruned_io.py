"""Save and load physically pruned models.

A pruned model is a folder with ``model.safetensors`` (the weights) and ``optin_structure.json``
(family, base architecture, and for every layer the indices of the kept heads and MLP neurons,
with their counts). Loading builds
the base architecture, shrinks each layer to the saved sizes and loads the weights: the original
checkpoint is not needed. (transformers' ``save_pretrained`` checkpoints of non-uniform models do
not reload with ``from_pretrained``.)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .adapters import adapter_class, get_adapter
from .errors import OptinError, short_reason
from .models import TOKENIZER_FILES, has_tokenizer_files

STRUCTURE_FILE = "optin_structure.json"
WEIGHTS_FILE = "model.safetensors"


def is_pruned_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / STRUCTURE_FILE).is_file()


def save_pruned(model: nn.Module, out_dir: str | os.PathLike, extra: dict | None = None, *, force: bool = False,
                protect=(), checked: bool = False, task_hint: dict | None = None, tokenizer=None) -> Path:
    """Write weights + structure spec to ``out_dir`` through a staging folder, then an atomic rename.

    ``out_dir`` must be new or a folder optin-deploy wrote (see :mod:`optin_deploy.safe_out`;
    ``checked`` when the caller already checked it). ``task_hint`` (data, max_length, columns) is
    written to ``optin_task.json`` so that the folder alone says which data it is evaluated on.
    The tokenizer files of the source folder (``extra["source_dir"]``) are copied; when it has none (a hub
    model: its files live in the hub's cache) ``tokenizer``, the one the figures were computed with, is saved.
    ``optin_structure.json`` records the sha256 of the tokenizer files written (``tokenizer_files``), so that a
    folder that lost one is told from one that never had one (:func:`optin_deploy.models.load_tokenizer`).
    """
    from safetensors.torch import save_model

    from .safe_out import staged_output

    spec = get_adapter(model).structure()
    spec["optin_deploy_version"] = __version__
    if extra:
        spec["extra"] = extra
    to_save = model
    dtype = getattr(torch, str((spec.get("config") or {}).get("dtype") or (spec.get("config") or {}).get("torch_dtype") or ""), None)
    if dtype in (torch.float16, torch.bfloat16) and any(t.dtype != dtype for t in model.parameters() if t.is_floating_point()):
        import copy  # the model was loaded (and pruned) in fp32: save it in the checkpoint's own precision, as its config says

        to_save = copy.deepcopy(model).to(dtype)
    with staged_output(out_dir, kind="pruned", force=force, protect=protect, checked=checked) as tmp:
        try:
            save_model(to_save, str(tmp / WEIGHTS_FILE))
        except OSError:
            raise
        except Exception as exc:  # safetensors reports write errors as its own type
            import errno

            msg = str(exc)
            if "No space left" in msg or "os error 28" in msg:
                raise OSError(errno.ENOSPC, "No space left on device") from None
            raise
        # safetensors writes the weights 0600: staged_output gives them the umask's mode when it publishes the folder
        if task_hint:
            (tmp / "optin_task.json").write_text(json.dumps(task_hint, indent=1))
        src = (extra or {}).get("source_dir")
        for name in COPIED_FILES:
            if src and (Path(src) / name).is_file():
                shutil.copy2(Path(src) / name, tmp / name)
        if tokenizer is not None and not has_tokenizer_files(tmp):
            from .models import quiet_transformers

            with quiet_transformers():
                tokenizer.save_pretrained(str(tmp))
        spec["tokenizer_files"] = tokenizer_record(tmp)
        (tmp / STRUCTURE_FILE).write_text(json.dumps(spec, indent=1))
    return Path(out_dir)


def tokenizer_record(folder: Path) -> dict[str, str]:
    """``{file name: sha256}`` of the tokenizer files in ``folder`` (vocabulary, settings, special tokens)."""
    from .data.assets import sha256_file

    return {f.name: sha256_file(f) for f in sorted(Path(folder).iterdir())
            if f.is_file() and (f.name in TOKENIZER_RECORDED or f.name.startswith("tokenizer"))}


# what a pruned folder copies from the model it came from so that it loads on its own: the vocabulary in every format
# transformers reads (models.TOKENIZER_FILES: WordPiece, byte-level BPE, SentencePiece), the tokenizer's settings and
# an image processor's
COPIED_FILES = (*TOKENIZER_FILES, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "preprocessor_config.json")
TOKENIZER_RECORDED = tuple(f for f in COPIED_FILES if f != "preprocessor_config.json")


HINT_FILES = ("optin_task.json", "zoo_info.json")


def _hint_problem(d) -> str | None:
    if not isinstance(d, dict):
        return f"a JSON {type(d).__name__}, not an object"
    if d.get("data") is not None and not isinstance(d["data"], str):
        return f"data is {d['data']!r}, not a data set's name or path"
    m = d.get("max_length")
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
        return f"max_length is {m!r}, not a number of tokens"
    for k in ("text_column", "label_column"):
        if d.get(k) is not None and not isinstance(d[k], str):
            return f"{k} is {d[k]!r}, not a column name"
    return None


def read_task_hint(folder: str | os.PathLike, *, strict: bool = True) -> dict | None:
    """A model folder's record of its data (``optin_task.json``, else a zoo model's ``zoo_info.json``) when it names
    the data, else None. A record that cannot be read or holds values of the wrong type (it crashed the command, or a
    string max_length became an internal error) is an :class:`OptinError` naming it (``strict``), or is skipped."""
    for f in HINT_FILES:
        p = Path(folder).expanduser() / f
        if not p.is_file():
            continue
        try:
            d = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problem = getattr(exc, "strerror", None) or short_reason(exc, 80)
        else:
            problem = _hint_problem(d)
        if problem is None and d.get("data"):
            return d
        if problem is not None and strict:
            raise OptinError(f"{p}, the model folder's record of its data, is damaged ({problem}); pass --data, or fix or delete that file")
    return None


def task_hint(task, data: str | None, text_column: str, label_column: str | None, max_length: int | None) -> dict | None:
    """What ``optin_task.json`` records: the data a pruned model is evaluated on (an existing local
    file or folder as an absolute path; a built-in name as it is)."""
    if data is None:
        src = getattr(task, "model_source", "") or ""
        hint = read_task_hint(src, strict=False) if src else None  # the run got this far without it: a damaged one records nothing
        data = hint["data"] if hint else None
    if data is None:
        return None
    p = Path(str(data)).expanduser()
    spec = str(p.resolve()) if p.exists() else str(data)
    return {"data": spec, "max_length": max_length, "text_column": text_column, "label_column": label_column}


def build_from_spec(spec: dict) -> nn.Module:
    from .adapters.embedding import wrap_from_structure

    cls = adapter_class(spec.get("family", "?"))
    model = wrap_from_structure(cls.build_from_structure(spec), spec)  # a sentence-embedding model gets its pooling back
    adapter = get_adapter(model)
    if adapter.num_layers != len(spec["heads"]):
        raise OptinError(f"structure spec has {len(spec['heads'])} layers but the architecture builds {adapter.num_layers}")
    # kept indices (any structure written since they were recorded); counts only in older files,
    # which is exact for families without per-head tables outside the sliced weights
    use_idx = cls.rebuild_from_indices
    kept_heads = (use_idx and spec.get("kept_heads")) or [list(range(h)) for h in spec["heads"]]
    kept_neurons = (use_idx and spec.get("kept_neurons")) or [list(range(f)) for f in spec["neurons"]]
    if [len(k) for k in kept_heads] != list(spec["heads"]) or [len(k) for k in kept_neurons] != list(spec["neurons"]):
        raise OptinError("structure spec: kept_heads/kept_neurons disagree with heads/neurons; " + _REMAKE)
    for layer, (h, f) in enumerate(zip(kept_heads, kept_neurons)):
        adapter.keep_heads(layer, h)
        adapter.keep_neurons(layer, f)
    return model


#: what to do about a damaged pruned-model folder: it is written by prune, or by build inside a bundle
_REMAKE = "make the folder again (optin-deploy prune --out DIR, or for a bundle's pruned/ folder optin-deploy build --out BUNDLE)"


def load_pruned(path: str | os.PathLike) -> nn.Module:
    """Load a pruned model folder written by :func:`save_pruned` (eval mode)."""
    from safetensors.torch import load_model

    path = Path(path)
    spec_file, weights = path / STRUCTURE_FILE, path / WEIGHTS_FILE
    if not spec_file.is_file():
        raise OptinError(f"{path} is not a pruned-model folder: {STRUCTURE_FILE} is missing")
    try:
        spec = json.loads(spec_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OptinError(f"cannot read {spec_file}: {exc}; " + _REMAKE) from None
    model = build_from_spec(spec)
    if not weights.is_file():
        raise OptinError(f"{weights} is missing; " + _REMAKE)
    try:
        load_model(model, str(weights), strict=True)
    except Exception as exc:  # corrupt file, size mismatch
        raise OptinError(f"cannot load weights {weights}: {short_reason(exc, 300)}") from None
    return model.eval()
