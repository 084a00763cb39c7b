"""Loading users' models: transformers folders or hub names, timm models and pruned-model folders.

:func:`load_model` returns a float32 ``torch.nn.Module`` in eval mode:

* a folder with ``optin_structure.json``: a pruned model, loaded by
  :func:`optin_deploy.pruned_io.load_pruned`;
* a folder with ``config.json``: transformers. Text configs load with
  ``AutoModelForSequenceClassification``, vision configs with ``AutoModelForImageClassification``;
  ``head=False`` loads the bare base model (e.g. a ``BertModel``-only checkpoint);
* ``timm:NAME`` (pretrained weights from the hub), ``timm:NAME@FILE`` (weights from a checkpoint
  file), or a checkpoint file (``.pth``/``.pt``/``.bin``/``.safetensors``) holding a dict with
  ``arch``/``model_name`` and a state dict. Checkpoints are read with safetensors or
  ``torch.load(weights_only=True)`` only: a file that needs full pickle (a whole pickled model) is
  refused with a one-line message saying how to convert it; no code from a model file ever runs;
* anything else is tried as a Hugging Face hub name, failing fast when the hub is unreachable.

:func:`preprocessing` says how inputs for a model are prepared (tokenizer, image size, mean, std).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from .errors import OptinError, short_reason

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json", "pytorch_model.bin.index.json")
CHECKPOINT_SUFFIXES = {".pth", ".pt", ".bin", ".safetensors", ".ckpt"}
HUB_TIMEOUT_S = 3.0
#: passed to every transformers ``from_pretrained``: code a model folder or hub repo ships (``auto_map``) never runs,
#: and transformers never asks on the terminal whether to run it (its default, None, asks)
NO_REMOTE_CODE = {"trust_remote_code": False}


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports and weight-loading progress bars (errors still raise)."""
    from transformers.utils import logging as tlog

    level = tlog.get_verbosity()
    bars = tlog.is_progress_bar_enabled()
    tlog.set_verbosity_error()
    tlog.disable_progress_bar()
    try:
        yield
    finally:
        tlog.set_verbosity(level)
        if bars:
            tlog.enable_progress_bar()


def _finish(model: torch.nn.Module) -> torch.nn.Module:
    model = model.float().eval()
    with torch.no_grad():  # a NaN / inf weight makes every output NaN: scoring, pruning and saving it would go on silently
        bad = next((n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:
        raise OptinError(f"the model's weights are not finite: {bad} holds NaN or inf, so every prediction would be NaN; "
                         f"pass an intact checkpoint")
    return model


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unreachable(spec: str) -> OptinError:
    return OptinError(f"model {spec!r} is not a local folder, and the Hugging Face hub is unreachable: pass a local path")


def _looks_like_path(spec: str) -> bool:
    """Hub names are ``name`` or ``org/name``; anything else that does not exist is a wrong path."""
    return (
        spec.startswith((".", "/", "~"))
        or spec.count("/") > 1
        or "\\" in spec
        or Path(spec).suffix.lower() in CHECKPOINT_SUFFIXES | {".json", ".onnx"}
    )


def _is_vision(config: Any) -> bool:
    """Whether a (supported) transformers config is an image model: its adapter says."""
    from .adapters import adapter_for_config

    return adapter_for_config(config).modality == "image"


def _weights_file(folder: Path) -> str:
    for f in WEIGHT_FILES:
        if (folder / f).exists():
            return str(folder / f)
    return str(folder)


TASKS = ("classification", "embedding")


def wants_embedding(folder: str | os.PathLike, task: str | None) -> bool:
    """Whether a transformers folder loads as a sentence-embedding model: ``task="embedding"``, or no
    task given and the folder holds sentence-transformers files (``modules.json``) for a model
    without a classification head."""
    if task is not None:
        if task not in TASKS:
            raise OptinError(f"unknown --task {task!r}; choose one of {', '.join(TASKS)}")
        return task == "embedding"
    folder = Path(str(folder)).expanduser()
    if not (folder / "modules.json").is_file() or not (folder / "config.json").is_file():
        return False
    try:
        archs = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except ValueError:
        return False
    return not any(a.endswith("Classification") for a in archs)


def load_model(spec: str | os.PathLike, *, num_labels: int | None = None, head: bool = True, task: str | None = None) -> torch.nn.Module:
    """Load a model for inference (float32, eval mode). See the module docstring for what ``spec`` may be.

    ``num_labels`` replaces a transformers classification head of another size (freshly initialised);
    ``head=False`` loads a transformers checkpoint as its base model, without a task head.
    ``task="embedding"`` (or a folder with sentence-transformers files, see :func:`wants_embedding`)
    loads the bare encoder wrapped with its pooling as a
    :class:`~optin_deploy.adapters.embedding.SentenceEmbedder`.
    """
    s = str(spec)
    if wants_embedding(s, task) and not (Path(s).expanduser() / "optin_structure.json").exists():
        from .adapters.embedding import SentenceEmbedder, read_pooling

        if s.startswith("timm:"):
            raise OptinError("embedding models need a text encoder; timm models are vision models")
        base = load_model(spec, head=False, task="classification")  # the bare encoder (no pooling yet)
        folder = Path(s).expanduser()
        return _finish(SentenceEmbedder(base, read_pooling(folder if folder.is_dir() else None)))
    if s.startswith("timm:"):
        return _load_timm(s[5:], num_labels)
    path = Path(s).expanduser()
    if path.is_dir():
        from .bundle_files import check_bundle_member

        check_bundle_member(path)  # a bundle's pruned/ folder: its files as the bundle's manifest.json lists them
        if (path / "optin_structure.json").exists():
            from .pruned_io import load_pruned  # the lead's module; imported lazily

            return _finish(load_pruned(path))
        if (path / "config.json").exists():
            return _load_transformers(str(path), s, num_labels, head, local=True)
        raise OptinError(f"{path} is a folder without config.json (transformers) or optin_structure.json (pruned model); pass a model folder")
    if path.is_file():
        if path.suffix.lower() in CHECKPOINT_SUFFIXES:
            return _load_timm_file(path, None, num_labels)
        raise OptinError(f"{path} is a file of unknown kind; pass a transformers folder, a pruned-model folder, timm:NAME or a .pth/.safetensors checkpoint")
    if _looks_like_path(s):
        raise OptinError(f"model path {s!r} does not exist; check the path")
    # a hub name
    if not hub_reachable():
        try:  # a copy already in the local hub cache still works offline
            return _load_transformers(s, s, num_labels, head, local=False, local_files_only=True)
        except OptinError:
            raise _unreachable(s) from None
    return _load_transformers(s, s, num_labels, head, local=False)


def _refuse_unknown_family(config_file: Path, spec: str) -> None:
    """A config.json transformers cannot read because of its family: the registry's one line naming the supported ones."""
    try:
        raw = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return
    if isinstance(raw, dict):
        from .adapters.registry import refuse_unknown_family

        refuse_unknown_family(raw, str(config_file), f"model {spec!r}")


def _load_transformers(where: str, spec: str, num_labels: int | None, head: bool, *, local: bool, local_files_only: bool = False) -> torch.nn.Module:
    import transformers
    from transformers import AutoConfig

    # trust_remote_code=False, not the default None: with None, transformers asks on the terminal whether to run a
    # config's auto_map code (a family of its own), and a "y" (or `yes |`) ran the model folder's Python
    kw: dict[str, Any] = {"local_files_only": True, **NO_REMOTE_CODE} if (local or local_files_only) else dict(NO_REMOTE_CODE)
    try:
        config = AutoConfig.from_pretrained(where, **kw)
    except (OSError, ValueError, json.JSONDecodeError, KeyError) as exc:
        if local:
            _refuse_unknown_family(Path(where) / "config.json", spec)
        if not local:
            raise OptinError(f"model {spec!r}: not found on the Hugging Face hub or not a transformers model ({short_reason(exc)})") from None
        raise OptinError(f"{where}/config.json is not a valid transformers config ({short_reason(exc)}); fix or replace it") from None
    from .adapters import adapter_for_config

    adapter_for_config(config, f"model {spec!r}")  # an unsupported family is refused here, before any weights load
    if not head:
        cls = transformers.AutoModel
    else:
        cls = transformers.AutoModelForImageClassification if _is_vision(config) else transformers.AutoModelForSequenceClassification
        if num_labels is not None and num_labels != config.num_labels:
            config.num_labels = num_labels
            if getattr(config, "id2label", None) and len(config.id2label) != num_labels:
                config.id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
                config.label2id = {v: k for k, v in config.id2label.items()}
            kw["ignore_mismatched_sizes"] = True
    archs = getattr(config, "architectures", None) or []
    if head and num_labels is None:
        _refuse_other_head(archs, spec, vision=_is_vision(config), prefix=type(config).__name__.removesuffix("Config"))
    try:
        with quiet_transformers():
            model, info = cls.from_pretrained(where, config=config, output_loading_info=True, **kw)
    except ValueError as exc:
        if needs_pickle(exc):
            raise OptinError(f"the weights {_weights_file(Path(where)) if local else spec} need Python pickle to load, which can run code "
                             f"from the file, so optin-deploy does not load them; " + PICKLE_HINT) from None
        if "Unrecognized configuration class" in str(exc) or "does not support" in str(exc):
            raise OptinError(f"model {spec!r} ({type(config).__name__}) has no {cls.__name__.replace('Auto', '')} class in transformers; use a classification model") from None
        raise OptinError(f"cannot load the weights {_weights_file(Path(where))} ({short_reason(exc)}); the file may be corrupt") from None
    except (OSError, RuntimeError, EOFError, Exception) as exc:  # noqa: BLE001 - safetensors/pickle errors vary
        if needs_pickle(exc):
            raise OptinError(f"the weights {_weights_file(Path(where)) if local else spec} need Python pickle to load, which can run code "
                             f"from the file, so optin-deploy does not load them; " + PICKLE_HINT) from None
        if not local and isinstance(exc, OSError):
            raise OptinError(f"model {spec!r}: cannot download it from the Hugging Face hub ({short_reason(exc)}); pass a local path") from None
        if "ignore_mismatched_sizes" in str(exc):  # the checkpoint reads fine: its tensors' shapes disagree with config.json
            raise OptinError(
                f"the weights {_weights_file(Path(where)) if local else spec} do not fit its config.json: a tensor's shape differs from the "
                f"one the config describes (num_labels / id2label, hidden or intermediate sizes); make config.json match the checkpoint") from None
        raise OptinError(
            f"cannot load the weights {_weights_file(Path(where)) if local else spec} "
            f"({type(exc).__name__}: {short_reason(exc) or 'unreadable'}); the file may be corrupt or truncated"
        ) from None
    missing = [k for k in (info or {}).get("missing_keys", []) if not k.endswith("position_ids")]
    if head and num_labels is None and missing:
        shown = ", ".join(sorted(missing)[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise OptinError(f"model {spec!r} has no trained {cls.__name__.replace('AutoModelFor', '').replace('Auto', '')} weights for "
                         f"{', '.join(archs) or type(config).__name__} ({shown} missing from its checkpoint), so its predictions "
                         f"would come from random weights; pass a checkpoint fine-tuned for your task" +
                         ("" if _is_vision(config) else ", or --task embedding for a sentence encoder")) from None
    from .adapters import get_adapter

    get_adapter(model).check_layout(f"model {spec!r}")  # a config whose head size does not fit: refused before scoring
    return _finish(model)


#: the task heads ``build`` / ``eval`` can measure: one label per input (text or image)
CLASSIFIER_ARCHITECTURES = ("ForSequenceClassification", "ForImageClassification", "ForImageClassificationWithTeacher")


def _refuse_other_head(archs: list[str], spec: str, *, vision: bool = False, prefix: str = "Bert") -> None:
    """A checkpoint saved with another task head (token classification, question answering, masked LM, ...):
    loading it as a sequence classifier would put a random head on it. A bare encoder (``BertModel``) is
    refused the same way, pointing at ``--task embedding``."""
    if not archs or any(a.endswith(CLASSIFIER_ARCHITECTURES) for a in archs):
        return
    heads = [a for a in archs if re.search(r"For[A-Z]|LMHead|WithLMHead", a)]
    import transformers

    if not heads and any(not hasattr(transformers, a) for a in archs):
        # a class of the user's own (MySentimentClassifier): no transformers task class, so nothing says what its head is
        raise OptinError(
            f"model {spec!r}: its config.json names the architecture {', '.join(archs)}, which is not a transformers class, so "
            f"optin-deploy cannot tell which task head its weights hold; if they are a sequence or image classifier's, set "
            f"\"architectures\" in config.json to the transformers class (e.g. [\"{prefix}For{'Image' if vision else 'Sequence'}Classification\"])")
    bare = not vision and not heads
    raise OptinError(
        f"model {spec!r} is a {', '.join(archs)} checkpoint, not a classifier; optin-deploy measures sequence and image "
        f"classifiers (...ForSequenceClassification, ...ForImageClassification), fine-tuned for your task" +
        ("; a sentence encoder takes --task embedding" if bare else
         "; other task heads (token classification, question answering, language modelling) are not supported")
    )


def _timm():
    try:
        import timm
    except ImportError as exc:
        raise OptinError(f"timm models need timm and torchvision ({exc}): pip install 'optin-deploy[timm]'") from None
    return timm


def _load_timm(name: str, num_labels: int | None) -> torch.nn.Module:
    if "@" in name:
        arch, file = name.split("@", 1)
        f = Path(file).expanduser()
        if not f.is_file():
            raise OptinError(f"timm checkpoint {file!r} does not exist; check the path")
        return _load_timm_file(f, arch, num_labels)
    timm = _timm()
    if not timm.is_model(name):
        raise OptinError(f"{name!r} is not a timm model name; see timm.list_models()")
    kw = {} if num_labels is None else {"num_classes": num_labels}
    if not hub_reachable():
        try:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            model = timm.create_model(name, pretrained=True, **kw)
        except Exception:  # noqa: BLE001
            raise OptinError(f"timm model {name!r} needs pretrained weights from the Hugging Face hub, which is unreachable: pass timm:{name}@CHECKPOINT_FILE") from None
    else:
        try:
            model = timm.create_model(name, pretrained=True, **kw)
        except Exception as exc:  # noqa: BLE001
            raise OptinError(f"cannot load pretrained timm model {name!r} ({short_reason(exc)}); pass timm:{name}@CHECKPOINT_FILE") from None
    return _checked_timm(model, f"timm model {name!r}")


def _checked_timm(model: torch.nn.Module, what: str) -> torch.nn.Module:
    """A timm model its family's adapter takes, checked before any scoring: another architecture (a ResNet, a timm
    Swin), blocks it cannot prune, or a ViT that its pruned folder would reload as another function is refused here."""
    from .adapters import get_adapter

    get_adapter(model).check_layout(what)
    return _finish(model)


PICKLE_HINT = ("load it yourself in trusted Python and save the weights with safetensors "
               "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')), then pass timm:ARCH@model.safetensors "
               "or a transformers folder saved with save_pretrained(safe_serialization=True)")


PICKLE_MARKERS = ("unsupported global", "not an allowed global", "unsupported class", "non-allowlisted", "add_safe_globals",
                  "safe_globals", "is blocked", "whose module")


def needs_pickle(exc: BaseException | None) -> bool:
    """Whether a ``torch.load(weights_only=True)`` failure means the file holds pickled code/objects
    (a whole model, custom classes, a call such as ``os.system``): matched case-insensitively on the
    error and its causes, since torch words it differently across versions ("Unsupported global:
    GLOBAL x was not an allowed global", "unsupported GLOBAL posix.system whose module posix is blocked")."""
    seen = 0
    while exc is not None and seen < 5:
        text = f"{type(exc).__name__} {exc}".lower()
        if any(k in text for k in PICKLE_MARKERS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _read_state(path: Path) -> Any:
    """Read a checkpoint without running code from it: safetensors, else ``torch.load(weights_only=True)``.

    A file that needs full pickle (a whole pickled model, custom classes) is refused: unpickling can
    run arbitrary code, so it is never tried."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        if needs_pickle(exc):
            raise OptinError(f"{path} needs Python pickle to load, which can run code from the file, so optin-deploy does not load it; "
                             + PICKLE_HINT) from None
        raise OptinError(f"cannot read the checkpoint {path} ({type(exc).__name__}); the file may be corrupt or truncated") from None


def _load_timm_file(path: Path, arch: str | None, num_labels: int | None) -> torch.nn.Module:
    obj = _read_state(path)
    if not isinstance(obj, dict):
        raise OptinError(f"{path} holds neither a model nor a state dict; save it with torch.save(model.state_dict())")
    arch = arch or obj.get("arch") or obj.get("model_name") or obj.get("architecture")
    state = obj.get("state_dict") or obj.get("model") or obj.get("state_dict_ema") or obj
    if not arch:
        raise OptinError(f"{path} holds only weights, not the architecture; pass it as timm:ARCH@{path}")
    timm = _timm()
    if not timm.is_model(arch):
        raise OptinError(f"{arch!r} is not a timm model name; pass timm:ARCH@{path} with a name from timm.list_models()")
    state = {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    head_w = next((v for k, v in state.items() if k.endswith("head.weight") or k.endswith("fc.weight") or k.endswith("classifier.weight")), None)
    classes = num_labels or (head_w.shape[0] if head_w is not None and head_w.dim() == 2 else None)
    model = timm.create_model(arch, pretrained=False, **({"num_classes": classes} if classes else {}))
    try:
        model.load_state_dict(state, strict=num_labels is None)
    except RuntimeError as exc:
        raise OptinError(f"the weights in {path} do not fit timm's {arch!r} ({short_reason(exc, 160)}); check the architecture name") from None
    return _checked_timm(model, f"timm model {arch!r}")


# ------------------------------------------------------------------------------------- preprocessing


def preprocessing(model: torch.nn.Module, spec: str | os.PathLike | None = None) -> dict:
    """How to prepare inputs for ``model``: ``{"modality", "image_size", "image_mean", "image_std",
    "num_channels"}`` for images (from the folder's image processor, the model config or timm's
    pretrained config: a pruned timm model gets the one its structure saved back on load), ``{"modality": "text"}``
    for text."""
    cfg = getattr(model, "config", None)
    pcfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if pcfg:  # timm
        c, h, w = pcfg.get("input_size", (3, 224, 224))
        return {"modality": "image", "image_size": (h, w), "image_mean": list(pcfg.get("mean", (0.5,) * c)),
                "image_std": list(pcfg.get("std", (0.5,) * c)), "num_channels": c}
    if cfg is None and _model_modality(model) == "image":
        # an image model with neither a config nor timm's pretrained_cfg (a timm VisionTransformer built
        # directly): its own input shape, and timm's VisionTransformer default mean and std (0.5)
        from .adapters import get_adapter

        c, h, w = get_adapter(model).image_shape()
        return {"modality": "image", "image_size": (h, w), "image_mean": [0.5] * c, "image_std": [0.5] * c, "num_channels": c}
    if cfg is not None and _model_modality(model) == "image":
        out = {"modality": "image", "image_size": getattr(cfg, "image_size", 224), "num_channels": getattr(cfg, "num_channels", 3),
               "image_mean": 0.5, "image_std": 0.5}
        pp = Path(str(spec)) / "preprocessor_config.json" if spec else None
        if pp is not None and pp.exists():
            try:
                p = json.loads(pp.read_text())
                out["image_mean"] = p.get("image_mean", 0.5)
                out["image_std"] = p.get("image_std", 0.5)
                crop = p.get("crop_size")
                if p.get("do_center_crop") and isinstance(crop, dict) and "height" in crop and "width" in crop:
                    # the processor resizes (DeiT: to 256 x 256, DINOv2: shortest edge 256) then centre-crops to what the
                    # model takes (224 x 224): the crop is the input size (images are resized straight to it, as timm's are)
                    out["image_size"] = (crop["height"], crop["width"])
                elif isinstance(p.get("size"), dict) and "height" in p["size"]:
                    out["image_size"] = (p["size"]["height"], p["size"]["width"])
            except (ValueError, OSError):
                raise OptinError(f"{pp} is not valid JSON; fix or delete it") from None
        return out
    return {"modality": "text"}


def _model_modality(model: torch.nn.Module) -> str:
    from .adapters import get_adapter

    try:
        return get_adapter(model).modality
    except OptinError:
        return "image" if hasattr(getattr(model, "config", None), "image_size") else "text"


# files a tokenizer is read from (wordpiece / BPE vocabularies, fast tokenizers, sentencepiece models)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spm.model", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def has_tokenizer_files(folder: str | os.PathLike) -> bool:
    """Whether a folder holds a tokenizer's vocabulary (not just a config naming its class)."""
    p = Path(str(folder)).expanduser()
    return any((p / f).is_file() for f in TOKENIZER_FILES)


def _no_tokenizer(spec, why: str) -> OptinError:
    return OptinError(f"no tokenizer found with model {str(spec)!r} ({why}); save the tokenizer in the model folder "
                      f"(tokenizer.save_pretrained(FOLDER), from the tokenizer the model was trained with)")


def _check_vocabulary(tok, spec) -> None:
    """Refuse a tokenizer that holds nothing but special tokens: transformers builds such an empty
    tokenizer from a bare config, and every word then becomes [UNK], so all figures would be garbage."""
    try:
        vocab = tok.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without get_vocab: nothing to check
        return
    special = set(getattr(tok, "all_special_tokens", []) or [])
    if vocab is not None and not (set(vocab) - special):
        raise _no_tokenizer(spec, f"the tokenizer found holds only its {len(vocab)} special tokens, so every word would be unknown")


def check_tokenizer_fits(tok, model: torch.nn.Module, spec) -> None:
    """Refuse a tokenizer whose ids run past the model's token embeddings (the tokenizer of another model, a
    vocabulary that grew after the model was saved): every text holding one of those tokens would stop the
    run with an IndexError deep in the model, after the scoring started."""
    inner = getattr(model, "backbone", model)  # a sentence-embedding wrapper keeps the encoder there
    get = getattr(inner, "get_input_embeddings", None)
    try:
        emb = get() if callable(get) else None
    except (NotImplementedError, AttributeError):
        emb = None
    rows = getattr(emb, "num_embeddings", None)
    try:
        size = len(tok)
    except TypeError:
        return
    if isinstance(rows, int) and size > rows:
        raise OptinError(f"model {str(spec)!r}: its tokenizer has {size} tokens but the model embeds only {rows} (config vocab_size), "
                         f"so ids {rows}..{size - 1} would index past its embeddings; the tokenizer is not this model's: put the "
                         f"tokenizer the model was trained with in the folder")


def load_tokenizer(spec: str | os.PathLike):
    """The tokenizer saved with a model (its folder or hub name; a pruned-model folder without one
    falls back to the folder it was pruned from). A local folder without tokenizer files, or a
    tokenizer holding only special tokens, is refused in one line: transformers 5 would otherwise
    hand back an empty tokenizer that turns every word into [UNK]."""
    from transformers import AutoTokenizer

    p = Path(str(spec)).expanduser()
    local = p.is_dir()
    if local:
        from .bundle_files import check_bundle_member

        check_bundle_member(p)  # a bundle's tokenizer: the files the build recorded (an added tokenizer file changes the ids)
    if local and (p / "optin_structure.json").exists():
        p = _pruned_tokenizer_dir(p)
    if local and not has_tokenizer_files(p):
        raise _no_tokenizer(spec, "the folder has no tokenizer.json, vocab.txt or other tokenizer file")
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(str(p) if local else str(spec), local_files_only=local or not hub_reachable(), **NO_REMOTE_CODE)
    except Exception as exc:  # noqa: BLE001
        raise _no_tokenizer(spec, type(exc).__name__) from None
    _check_vocabulary(tok, spec)
    return tok


def _recorded_tokenizer(folder: Path) -> dict[str, str] | None:
    """``{name: sha256}`` of the tokenizer files written into a pruned folder: its ``optin_structure.json``'s
    ``tokenizer_files``, else (a bundle's ``pruned/`` of an older build) the bundle's ``manifest.json``; None: unknown."""
    from .pruned_io import TOKENIZER_RECORDED

    try:
        rec = json.loads((folder / "optin_structure.json").read_text()).get("tokenizer_files")
    except (OSError, ValueError, AttributeError):
        rec = None
    if isinstance(rec, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in rec.items()):
        return rec
    try:
        files = json.loads((folder.parent / "manifest.json").read_text())["files"]
        prefix = f"{folder.name}/"
        rec = {k[len(prefix):]: v["sha256"] for k, v in files.items() if k.startswith(prefix) and k[len(prefix):] in TOKENIZER_RECORDED}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return rec or None


def _pruned_tokenizer_dir(folder: Path) -> Path:
    """Where a pruned folder's tokenizer is read from: the folder itself when it holds every tokenizer file it was
    written with. One that lost some (deleted from a bundle) used the source model's tokenizer without a word, and a
    figure computed with another tokenizer may be wrong: the source is used only when its files are the ones the
    folder was written with (same sha256, said in a warning); else the missing files are named in one line."""
    from .data.assets import sha256_file

    rec = _recorded_tokenizer(folder)
    if rec is None:  # written before the record: every tokenizer file the source had was copied in
        missing = [] if has_tokenizer_files(folder) else ["its tokenizer files (tokenizer.json, vocab.txt, ...)"]
    else:
        missing = [n for n in rec if not (folder / n).is_file()]
    if not missing:
        return folder
    src = _pruned_source_dir(folder)
    if rec and src is not None and all((src / n).is_file() and sha256_file(src / n) == h for n, h in rec.items()):
        from .progress import warn

        warn(f"{folder} is missing {', '.join(missing)}; the tokenizer of {src}, the model it was pruned from, is used: its files "
             f"are the ones this folder was written with (same sha256); put them back: cp " + " ".join(str(src / n) for n in missing) + f" {folder}/")
        return src
    if src is None:
        why = "the model it was pruned from is not here to check against"
    elif rec is None:
        why = f"nothing records which files it held, so {src}'s tokenizer cannot be checked to be the same"
    else:
        why = f"{src}, the model it was pruned from, no longer holds the same files (sha256), so its tokenizer may differ"
    raise OptinError(f"{folder} is missing {', '.join(missing)}, written with the model (its figures were computed with them); "
                     f"{why}; put the files back from an intact copy, or make the folder again (optin-deploy build / prune)")


def _pruned_source_dir(folder: Path) -> Path | None:
    """The model folder a pruned model was made from, as its ``optin_structure.json`` records it."""
    try:
        extra = json.loads((folder / "optin_structure.json").read_text()).get("extra") or {}
    except (OSError, ValueError, AttributeError):
        return None
    src = extra.get("source_dir") if isinstance(extra, dict) else None
    return Path(src).expanduser() if isinstance(src, str) and src and Path(src).expanduser().is_dir() else None


def example_inputs_for_model(model: torch.nn.Module, batch: int = 8, seq_len: int = 128,
                             model_dir: str | os.PathLike | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of an exact shape for a model without a task (an export or benchmark of a bare folder):
    the family adapter makes them (:meth:`~optin_deploy.adapters.base.Adapter.example_inputs`), text
    tokenised from its sample sentences when a tokenizer sits with ``model_dir``, else seeded random ids;
    images are seeded standard-normal pixels (already 'normalised')."""
    from .adapters import get_adapter

    adapter = get_adapter(model)
    tok = None
    if adapter.modality == "text" and model_dir is not None:
        try:
            tok = load_tokenizer(model_dir)
        except Exception:  # noqa: BLE001 - no tokenizer: random ids
            tok = None
    return adapter.example_inputs(batch, seq_len, tokenizer=tok, seed=seed)
