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
import tempfile
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .adapters import adapter_class, get_adapter
from .errors import OptinError

STRUCTURE_FILE = "optin_structure.json"
WEIGHTS_FILE = "model.safetensors"


def is_pruned_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / STRUCTURE_FILE).is_file()


def save_pruned(model: nn.Module, out_dir: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write weights + structure spec to ``out_dir`` atomically (temp folder, then rename)."""
    from safetensors.torch import save_model

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    spec = get_adapter(model).structure()
    spec["optin_deploy_version"] = __version__
    if extra:
        spec["extra"] = extra
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    try:
        save_model(model, str(tmp / WEIGHTS_FILE))
        (tmp / STRUCTURE_FILE).write_text(json.dumps(spec, indent=1))
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "preprocessor_config.json"):
            src = (extra or {}).get("source_dir")
            if src and (Path(src) / name).is_file():
                shutil.copy2(Path(src) / name, tmp / name)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


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
        raise OptinError("structure spec: kept_heads/kept_neurons disagree with heads/neurons; re-run optin-deploy prune")
    for layer, (h, f) in enumerate(zip(kept_heads, kept_neurons)):
        adapter.keep_heads(layer, h)
        adapter.keep_neurons(layer, f)
    return model


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
        raise OptinError(f"cannot read {spec_file}: {exc}; re-run optin-deploy prune") from None
    model = build_from_spec(spec)
    if not weights.is_file():
        raise OptinError(f"{weights} is missing; re-run optin-deploy prune")
    try:
        load_model(model, str(weights), strict=True)
    except Exception as exc:  # corrupt file, size mismatch
        raise OptinError(f"cannot load weights {weights}: {str(exc).splitlines()[0]}") from None
    return model.eval()
