"""The model zoo: small task models trained once on first use and cached.

Each task model lives in ``<cache>/zoo/<name>/`` as a standard transformers folder
(``save_pretrained`` plus its tokenizer or image processor) with a ``zoo_info.json`` recording the
recipe, seed, training time, validation and test accuracy and the assets' versions and checksums.

* ``minilm-sentiment`` (the default): all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes
  (1 epoch, lr 1e-4, batch 32, AdamW, 6% warm-up then linear decay, max length 64, length-grouped
  batches).
* ``minilm-bbc-news``: all-MiniLM-L6-v2 fine-tuned on BBC News (5 classes, max length 128,
  3 epochs, batch 16, lr 1e-4).
* ``minilm-embeddings``: all-MiniLM-L6-v2 as shipped, a sentence-embedding model (mean pooling and
  L2 normalisation, from the sentence-transformers files of the same wheel): no training; its data
  are the texts of ``rotten-tomatoes`` and ``bbc-news`` (training texts calibrate, held-out texts
  validate), max length 128 (the length the model was trained at).
* ``vit-fashion-mnist``: a small ViT (patch 7, hidden 128, 4 layers, 4 heads) trained from scratch
  on Fashion-MNIST (batch 64, AdamW lr 1e-3, cosine, 12 epochs, fewer if the first steps show the
  machine cannot finish within the time budget ``$OPTIN_DEPLOY_ZOO_BUDGET_S``, default 1800 s).
* ``swin-fashion-mnist``: a small Swin (patch 4, window 4, two stages of 2 blocks, hidden 48 then 96,
  3 then 6 heads, 0.3M parameters) trained from scratch on Fashion-MNIST (batch 64, AdamW lr 1e-3,
  5% warm-up then cosine, 15 epochs, half of each batch flipped left-right, window attention through
  the eager path, about 1.4x faster to train than sdpa on these 16-token windows), under the same
  time budget as the ViT: fewer epochs when the probe or, after any epoch, the epochs so far say
  the rest will not fit (the cosine decay then ends at the new last epoch).

Training is seeded and deterministic on a given machine; no choice is made on the test split.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .data import assets
from .adapters.base import mark_text_pair
from .data.types import Split, Task, TaskData, text_size
from .errors import OptinError, short_reason

DEFAULT_TASK = "minilm-sentiment"
SEED = 0
ZOO_FORMAT = 1


@dataclass(frozen=True)
class ZooEntry:
    name: str
    description: str
    data: str  # a built-in data set
    kind: str  # "text", "image" or "embedding" (a sentence-embedding model, used as shipped)
    max_length: int | None = None
    recipe: dict = field(default_factory=dict)


ZOO: dict[str, ZooEntry] = {
    "minilm-sentiment": ZooEntry(
        "minilm-sentiment", "all-MiniLM-L6-v2 fine-tuned on Rotten Tomatoes sentiment (2 classes); the default",
        "rotten-tomatoes", "text", 64,
        {"epochs": 1, "lr": 1e-4, "batch_size": 32, "warmup": 0.06, "weight_decay": 0.01, "schedule": "linear",
         "length_grouped": True, "max_grad_norm": 1.0},
    ),
    "minilm-bbc-news": ZooEntry(
        "minilm-bbc-news", "all-MiniLM-L6-v2 fine-tuned on BBC News topics (5 classes)",
        "bbc-news", "text", 128,
        {"epochs": 3, "lr": 1e-4, "batch_size": 16, "warmup": 0.06, "weight_decay": 0.01, "schedule": "linear",
         "length_grouped": True, "max_grad_norm": 1.0},
    ),
    "minilm-embeddings": ZooEntry(
        "minilm-embeddings", "all-MiniLM-L6-v2 as shipped: sentence embeddings (mean pooling, normalised), no fine-tuning",
        "rotten-tomatoes+bbc-news", "embedding", 128, {"training": "none: the model as shipped"},
    ),
    "vit-fashion-mnist": ZooEntry(
        "vit-fashion-mnist", "a small ViT (0.8M parameters) trained from scratch on Fashion-MNIST (10 classes)",
        "fashion-mnist", "image", None,
        {"epochs": 12, "lr": 1e-3, "batch_size": 64, "warmup": 0.02, "weight_decay": 0.05, "schedule": "cosine",
         "max_grad_norm": 1.0, "patch_size": 7, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
         "intermediate_size": 512, "time_budget_s": 1800},
    ),
    "swin-fashion-mnist": ZooEntry(
        "swin-fashion-mnist", "a small Swin (0.3M parameters, 2 stages) trained from scratch on Fashion-MNIST (10 classes)",
        "fashion-mnist", "image", None,
        {"arch": "swin", "epochs": 15, "lr": 1e-3, "batch_size": 64, "warmup": 0.05, "weight_decay": 0.05, "schedule": "cosine",
         "max_grad_norm": 1.0, "patch_size": 4, "window_size": 4, "embed_dim": 48, "depths": [2, 2], "num_heads": [3, 6],
         "mlp_ratio": 4.0, "hflip": True, "attention": "eager", "time_budget_s": 1800},
    ),
}
DATA_TO_TASK: dict[str, str] = {}
for _e in ZOO.values():  # a data set's task is the first zoo model trained on it
    DATA_TO_TASK.setdefault(_e.data, _e.name)


# --------------------------------------------------------------------------------------------- util


def zoo_dir() -> Path:
    return assets.cache_dir() / "zoo"


def task_dir(name: str) -> Path:
    zoo_entry(name)
    return zoo_dir() / name


def zoo_entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise OptinError(f"unknown zoo model {name!r}; choose one of {', '.join(ZOO)} (optin-deploy zoo list)") from None


def set_threads() -> int:
    """Use every core this process may run on (2 here), at most 16."""
    from .bench import cpus_here

    n = max(1, min(16, cpus_here()))
    torch.set_num_threads(n)
    return n


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _log(msg: str, progress: bool = True) -> None:
    if progress:
        assets.info(msg)


class _Progress:
    """Per-step progress lines on stderr (about every 5% and at the end)."""

    def __init__(self, total: int, what: str, enabled: bool):
        self.total, self.what, self.enabled = total, what, enabled
        self.every = max(1, total // 20)
        self.t0 = time.perf_counter()
        self.loss = 0.0
        self.n = 0

    def step(self, i: int, loss: float) -> None:
        self.loss += loss
        self.n += 1
        if self.enabled and (i % self.every == 0 or i == self.total):
            el = time.perf_counter() - self.t0
            eta = el / i * (self.total - i)
            assets.info(f"{self.what}: step {i}/{self.total} loss {self.loss / self.n:.4f} "
                        f"elapsed {el:.0f}s eta {eta:.0f}s")
            self.loss, self.n = 0.0, 0


def metrics(pred: torch.Tensor, labels: torch.Tensor, num_labels: int) -> dict:
    """Accuracy and macro-F1 of class predictions (the one implementation: :mod:`optin_deploy.evaluate`)."""
    from .evaluate import accuracy, macro_f1

    pred, labels = pred.long().cpu().numpy(), labels.long().cpu().numpy()
    return {"accuracy": accuracy(pred, labels), "macro_f1": macro_f1(pred, labels, num_labels), "n": len(labels)}


@torch.no_grad()
def predict(task: Task, split: str | Split = "test", batch_size: int = 64) -> torch.Tensor:
    """Class predictions of ``task.model`` over a split, in order (text batches sorted by length for speed)."""
    s = getattr(task.data, split) if isinstance(split, str) else split
    task.model.eval()
    if task.modality == "image":
        out = [task.model(pixel_values=s.inputs[i:i + batch_size]).logits.argmax(-1) for i in range(0, len(s), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)
    texts = list(s.inputs)
    order = sorted(range(len(texts)), key=lambda i: text_size(texts[i]))
    preds = torch.empty(len(texts), dtype=torch.long)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        enc = task.encode([texts[j] for j in idx])
        preds[idx] = task.model(**enc).logits.argmax(-1)
    return preds


def zoo_names(name: str | None) -> list[str]:
    """The zoo models a command names: ``None`` the default one, ``"all"`` every one; an unknown name is refused."""
    names = list(ZOO) if name == "all" else [name or DEFAULT_TASK]
    for n in names:
        zoo_entry(n)
    return names


def evaluate_zoo_model(name: str, split: str = "test", batch_size: int = 64) -> dict:
    """``optin-deploy zoo eval``: dense PyTorch accuracy and macro-F1 of zoo model ``name`` on ``split``
    (prepared first if needed); the data set's name under ``data``. Bad input fails before any work."""
    if batch_size < 1:
        raise OptinError(f"--batch-size must be at least 1, not {batch_size}")
    if zoo_entry(name).kind == "embedding":
        raise OptinError(f"{name} is a sentence-embedding model without labels; validate a pruned copy with optin-deploy build --model {name}")
    task = get_task(name)
    return {**evaluate(task, split, batch_size), "data": task.data.name}


def evaluate(task: Task, split: str = "test", batch_size: int = 64) -> dict:
    """Dense PyTorch accuracy and macro-F1 of a task's model on a split."""
    s = task.data.require_labels(split)
    t0 = time.perf_counter()
    pred = predict(task, s, batch_size)
    m = metrics(pred, s.labels, task.data.num_labels)
    m["seconds"] = time.perf_counter() - t0
    return m


# ----------------------------------------------------------------------------------------- training


def _length_grouped_batches(lengths: list[int], batch_size: int, rng: np.random.Generator, mega: int = 50) -> list[list[int]]:
    """Shuffle, sort by length within mega-batches of ``mega`` batches, then shuffle the batches."""
    perm = rng.permutation(len(lengths))
    batches = []
    for i in range(0, len(perm), batch_size * mega):
        chunk = sorted(perm[i:i + batch_size * mega].tolist(), key=lambda j: -lengths[j])
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    order = rng.permutation(len(batches))
    return [batches[k] for k in order]


def _scheduler(opt, kind: str, warmup: int, total: int):
    from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

    fn = get_cosine_schedule_with_warmup if kind == "cosine" else get_linear_schedule_with_warmup
    return fn(opt, num_warmup_steps=warmup, num_training_steps=total)


class _Cosine:
    """Linear warm-up then cosine decay to zero (the same factors as transformers'
    ``get_cosine_schedule_with_warmup``) over ``total`` steps, which training may shorten while it
    runs (``shorten``): the decay then continues from the same point towards the new end."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return float(step) / float(max(1, self.warmup))
        progress = float(step - self.warmup) / float(max(1, self.total - self.warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


def _optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "LayerNorm" in n or "layernorm" in n or n.endswith(".bias") else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def _optimizer_step(model: torch.nn.Module, loss: torch.Tensor, opt, sched, max_grad_norm: float) -> None:
    """Backward, clip, step the optimiser and the schedule, clear the gradients."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def train_text_classifier(
    model: torch.nn.Module,
    tokenizer: Any,
    train: Split,
    *,
    max_length: int,
    epochs: int = 1,
    lr: float = 1e-4,
    batch_size: int = 32,
    warmup: float = 0.06,
    weight_decay: float = 0.01,
    max_grad_norm: float = 1.0,
    seed: int = SEED,
    progress: bool = True,
    **_: Any,
) -> dict:
    """Fine-tune a sequence classifier in place (AdamW, warm-up + linear decay, length-grouped batches)."""
    seed_everything(seed)
    enc = tokenizer(list(train.inputs), truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    lengths = [len(x) for x in ids]
    labels = train.labels
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(ids) / batch_size)
    total = steps_per_epoch * epochs
    opt = _optimizer(model, lr, weight_decay)
    sched = _scheduler(opt, "linear", int(round(warmup * total)), total)
    pad = tokenizer.pad_token_id or 0
    model.train()
    bar = _Progress(total, "training", progress)
    step = 0
    t0 = time.perf_counter()
    for _epoch in range(epochs):
        for b in _length_grouped_batches(lengths, batch_size, rng):
            T = max(lengths[j] for j in b)
            x = torch.full((len(b), T), pad, dtype=torch.long)
            m = torch.zeros((len(b), T), dtype=torch.long)
            for r, j in enumerate(b):
                x[r, : lengths[j]] = torch.tensor(ids[j])
                m[r, : lengths[j]] = 1
            out = model(input_ids=x, attention_mask=m, labels=labels[b])
            _optimizer_step(model, out.loss, opt, sched, max_grad_norm)
            step += 1
            bar.step(step, out.loss.item())
    model.eval()
    return {"steps": step, "epochs": epochs, "train_seconds": time.perf_counter() - t0}


def train_image_classifier(
    model: torch.nn.Module,
    train: Split,
    *,
    epochs: int = 12,
    lr: float = 1e-3,
    batch_size: int = 64,
    warmup: float = 0.02,
    weight_decay: float = 0.05,
    max_grad_norm: float = 1.0,
    time_budget_s: float | None = None,
    partial_epochs: bool = False,
    hflip: bool = False,
    seed: int = SEED,
    progress: bool = True,
    **_: Any,
) -> dict:
    """Train an image classifier in place (AdamW, warm-up + cosine). With ``time_budget_s`` the
    epoch count is cut, before training starts, to what 30 timed steps say fits in the budget
    (at least one epoch; with ``partial_epochs``, at least 100 steps: the part of an epoch that fits),
    and re-planned after each epoch from the epochs so far: cut if the rest will not fit (the machine
    got slower than the probe saw), raised back towards ``epochs`` if it got faster (the probe ran
    during a burst of load); the cosine decay then ends at the new last step, so the model is always trained to the end of a schedule. ``hflip``: flip half
    of each batch left-right."""
    seed_everything(seed)
    x, y = train.inputs, train.labels
    n = len(y)
    steps_per_epoch = math.ceil(n / batch_size)
    planned = epochs
    max_steps = None
    if time_budget_s:
        probe = {k: v.clone() for k, v in model.state_dict().items()}
        popt = torch.optim.AdamW(model.parameters(), lr=0.0)
        model.train()
        k = min(30, steps_per_epoch)
        for i in range(min(3, steps_per_epoch)):  # untimed: the first steps pay one-time costs
            out = model(pixel_values=x[i * batch_size:(i + 1) * batch_size], labels=y[i * batch_size:(i + 1) * batch_size])
            out.loss.backward()
            popt.step()
            popt.zero_grad(set_to_none=True)
        t = time.perf_counter()
        for i in range(k):
            out = model(pixel_values=x[i * batch_size:(i + 1) * batch_size], labels=y[i * batch_size:(i + 1) * batch_size])
            out.loss.backward()
            popt.step()
            popt.zero_grad(set_to_none=True)
        per_epoch = (time.perf_counter() - t) / k * steps_per_epoch
        model.load_state_dict(probe)
        epochs = max(1, min(epochs, int(time_budget_s // per_epoch)))
        if partial_epochs and per_epoch > time_budget_s:
            max_steps = max(100, int(time_budget_s / per_epoch * steps_per_epoch))
            _log(f"about {per_epoch:.0f}s per epoch: training {max_steps} of {steps_per_epoch} steps of one epoch "
                 f"(planned {planned} epochs, budget {time_budget_s:.0f}s)", progress)
        else:
            _log(f"about {per_epoch:.0f}s per epoch: training {epochs} epoch(s) (planned {planned}, budget {time_budget_s:.0f}s)", progress)
        seed_everything(seed)
    total = steps_per_epoch * epochs if max_steps is None else max_steps
    opt = _optimizer(model, lr, weight_decay)
    schedule = _Cosine(int(round(warmup * total)), total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    g = torch.Generator().manual_seed(seed)
    g_aug = torch.Generator().manual_seed(seed + 1)  # its own stream: the batch order does not depend on hflip
    model.train()
    bar = _Progress(total, "training", progress)
    step = 0
    cut = None
    t0 = time.perf_counter()
    epoch = 0
    while epoch < epochs:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch_size):
            if step >= total:
                break
            b = perm[i:i + batch_size]
            xb = x[b]
            if hflip:
                flip = (torch.rand(len(b), generator=g_aug) < 0.5).view(-1, *([1] * (xb.dim() - 1)))
                xb = torch.where(flip, xb.flip(-1), xb)
            out = model(pixel_values=xb, labels=y[b])
            _optimizer_step(model, out.loss, opt, sched, max_grad_norm)
            step += 1
            bar.step(step, out.loss.item())
        epoch += 1
        if time_budget_s and max_steps is None and epoch < planned:
            spent = time.perf_counter() - t0
            fits = min(planned, int(time_budget_s // (spent / epoch)))
            # fewer epochs: never fewer than one more (the decay needs steps to end on); more (the probe ran
            # during a burst of load): the decay resumes from the same step of the longer schedule, i.e. the
            # learning rate goes back up (a warm restart if the old schedule had already ended)
            fits = max(epoch + 1, fits) if fits < epochs else fits
            if fits != epochs:
                _log(f"{spent / epoch:.0f}s per epoch so far: {fits} epochs instead of {epochs} "
                     f"(budget {time_budget_s:.0f}s); the cosine decay now ends there", progress)
                cut = f"{epochs} -> {fits} after epoch {epoch}"
                epochs = fits
                total = schedule.total = steps_per_epoch * epochs
                bar.total = total
    model.eval()
    return {"steps": step, "epochs": epochs if max_steps is None else step / steps_per_epoch, "planned_epochs": planned,
            "train_seconds": time.perf_counter() - t0} | ({"epochs_replanned": cut} if cut else {})


def _prepare_text(entry: ZooEntry, data: TaskData, out: Path, progress: bool) -> tuple[torch.nn.Module, Any, dict]:
    from transformers import AutoTokenizer, BertForSequenceClassification

    base = assets.minilm()
    seed_everything(SEED)
    tok = AutoTokenizer.from_pretrained(base.path, local_files_only=True, trust_remote_code=False)
    from .models import quiet_transformers

    with quiet_transformers():  # the fresh classifier head is expected: no load report
        model = BertForSequenceClassification.from_pretrained(
            base.path, local_files_only=True, trust_remote_code=False, num_labels=data.num_labels,
            id2label=dict(enumerate(data.label_names)), label2id={n: i for i, n in enumerate(data.label_names)},
        )
    stats = train_text_classifier(model, tok, data.train, max_length=entry.max_length, seed=SEED, progress=progress, **entry.recipe)
    model.save_pretrained(out)
    tok.model_max_length = entry.max_length
    tok.save_pretrained(out)
    return model, tok, stats | {"base_model": base.as_source()}


def _image_model(r: dict, data: TaskData) -> torch.nn.Module:
    """A fresh image classifier for a zoo recipe (``arch``: ViT by default, or Swin)."""
    import transformers

    labels = {"num_labels": data.num_labels, "id2label": dict(enumerate(data.label_names)),
              "label2id": {n: i for i, n in enumerate(data.label_names)}}
    if r.get("arch") == "swin":
        config = transformers.SwinConfig(
            image_size=28, patch_size=r["patch_size"], num_channels=1, embed_dim=r["embed_dim"], depths=list(r["depths"]),
            num_heads=list(r["num_heads"]), window_size=r["window_size"], mlp_ratio=r["mlp_ratio"], hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0, drop_path_rate=0.0, **labels,
        )
        model = transformers.SwinForImageClassification(config)
        if r.get("attention"):  # training only: the adapter picks the attention path for export itself
            model.set_attn_implementation(r["attention"])
        return model
    config = transformers.ViTConfig(
        image_size=28, patch_size=r["patch_size"], num_channels=1, hidden_size=r["hidden_size"],
        num_hidden_layers=r["num_hidden_layers"], num_attention_heads=r["num_attention_heads"],
        intermediate_size=r["intermediate_size"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **labels,
    )
    return transformers.ViTForImageClassification(config)


def _prepare_image(entry: ZooEntry, data: TaskData, out: Path, progress: bool) -> tuple[torch.nn.Module, Any, dict]:
    from transformers import ViTImageProcessor

    from .data.builtin import FASHION_MEAN, FASHION_STD

    r = entry.recipe
    seed_everything(SEED)
    model = _image_model(r, data)
    budget = float(os.environ.get("OPTIN_DEPLOY_ZOO_BUDGET_S", r.get("time_budget_s", 0)) or 0) or None
    stats = train_image_classifier(model, data.train, seed=SEED, progress=progress, **(r | {"time_budget_s": budget}))
    model.save_pretrained(out)
    proc = ViTImageProcessor(
        do_resize=True, size={"height": 28, "width": 28}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[FASHION_MEAN], image_std=[FASHION_STD],
    )
    proc.save_pretrained(out)
    return model, None, stats | {"parameters": sum(p.numel() for p in model.parameters())}


def _commit(tmp: Path, final: Path, info: dict) -> None:
    """Write ``zoo_info.json`` (``info`` stamped with the package versions and the time) into the staged
    folder ``tmp`` and move it into place as ``final``."""
    import transformers

    info = {**info, "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version()},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (tmp / "zoo_info.json").write_text(json.dumps(info, indent=2, default=str))
    from .interrupts import deferred
    from .safe_out import replace_atomically

    with deferred():  # a stop cannot land between the two renames (leaving no model folder)
        replace_atomically(tmp, final)


def _prepare_embedding(entry: ZooEntry, final: Path, progress: bool) -> Path:
    """An embedding entry: the shipped model folder plus its sentence-transformers files; no training."""
    base = assets.minilm()
    st = assets.minilm_sentence_transformers_files()
    zoo_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=zoo_dir()))
    try:
        for f in assets.MINILM_FILES:
            shutil.copy2(Path(base.path) / f, tmp / f)
        for f, data in st.items():
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            (tmp / f).write_bytes(data)
        info = {
            "format": ZOO_FORMAT, "name": entry.name, "description": entry.description, "data": entry.data,
            "max_length": entry.max_length, "recipe": entry.recipe, "task": "embedding", "base_model": base.as_source(),
            "sentence_transformers_files": sorted(st), "seed": SEED,
        }
        _commit(tmp, final, info)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _log(f"{entry.name}: all-MiniLM-L6-v2 with its sentence-transformers pooling files, in {final}", progress)
    return final


def prepare(name: str = DEFAULT_TASK, force: bool = False, *, progress: bool = True) -> Path:
    """Train and cache the zoo model ``name`` unless it is already there (``force`` retrains). Processes sharing
    the cache prepare one model at a time: a second one waits for the first and then uses its model."""
    final = task_dir(name)
    if (final / "zoo_info.json").exists() and not force:
        return final
    waiting = f"waiting for another optin-deploy process preparing zoo model {name!r} in {final} ..." if progress else None
    with assets.cache_lock(f"zoo-{name}", waiting) as locked:
        if (final / "zoo_info.json").exists() and not force:  # prepared by the process this one waited for
            return final
        # staging left by a killed run (kill -9, a crash: up to a model's size each); under the lock no live run owns one
        for stale in [*zoo_dir().glob(f".tmp-{name}-????????"), *zoo_dir().glob(f".{name}.old-*")] if locked else []:
            shutil.rmtree(stale, ignore_errors=True)
        return _prepare_locked(name, progress)


def _prepare_locked(name: str, progress: bool) -> Path:
    entry = zoo_entry(name)
    final = task_dir(name)
    if entry.kind == "embedding":
        return _prepare_embedding(entry, final, progress)
    from .data.builtin import load_builtin

    threads = set_threads()
    data = load_builtin(entry.data, seed=SEED)
    _log(f"preparing zoo model {name!r} ({entry.description}); trained once and cached in {final}", progress)
    _log(f"data {entry.data}: {len(data.train)} train / {len(data.validation)} validation / {len(data.test)} test; {threads} threads", progress)
    zoo_dir().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=zoo_dir()))
    try:
        t0 = time.perf_counter()
        fn = _prepare_text if entry.kind == "text" else _prepare_image
        model, tok, stats = fn(entry, data, tmp, progress)
        task = Task(name, model, data, entry.max_length, tok, str(final))
        val = evaluate(task, "validation")
        test = evaluate(task, "test")
        import transformers

        info = {
            "format": ZOO_FORMAT,
            "name": name,
            "description": entry.description,
            "data": entry.data,
            "data_source": data.source,
            "label_names": data.label_names,
            "max_length": entry.max_length,
            "recipe": entry.recipe,
            "seed": SEED,
            "threads": threads,
            "split_sizes": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
            "validation_accuracy": val["accuracy"],
            "validation_macro_f1": val["macro_f1"],
            "test_accuracy": test["accuracy"],
            "test_macro_f1": test["macro_f1"],
            "total_seconds": time.perf_counter() - t0,
            **stats,
        }
        _commit(tmp, final, info)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _log(f"{name}: validation accuracy {val['accuracy']:.4f}, test accuracy {test['accuracy']:.4f} "
         f"(macro-F1 {test['macro_f1']:.4f}), trained in {stats['train_seconds']:.0f}s", progress)
    return final


INFO_FIGURES = ("validation_accuracy", "validation_macro_f1", "test_accuracy", "test_macro_f1")


def _info_problem(d, entry: ZooEntry) -> str | None:
    """What makes a ``zoo_info.json`` unusable for ``entry`` (its figures are printed and listed), or None."""
    if not isinstance(d, dict):
        return f"a JSON {type(d).__name__}, not an object"
    if d.get("name") != entry.name:
        return f"it names {d.get('name')!r}"
    if entry.kind == "embedding":
        return None if d.get("task") == "embedding" else "it does not record a sentence-embedding model"
    for k in INFO_FIGURES:
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            return f"{k} is {v!r}, not a fraction"
    v = d.get("train_seconds")
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        return f"train_seconds is {v!r}"
    return None


def info(name: str) -> dict | None:
    """The ``zoo_info.json`` of a prepared zoo model, or None if it is not prepared. A damaged one (edited,
    truncated, of another type) is an :class:`OptinError` naming it and how to prepare the model again."""
    entry = zoo_entry(name)
    p = task_dir(name) / "zoo_info.json"
    if not p.exists():
        return None
    try:
        d = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        problem = getattr(exc, "strerror", None) or short_reason(exc, 80)
    else:
        problem = _info_problem(d, entry)
    if problem:
        raise OptinError(f"the zoo model's record {p} is damaged ({problem}); prepare it again with: optin-deploy zoo prepare {name} --force")
    return d


def list_tasks() -> list[dict]:
    """The zoo's models: name, description, data, whether prepared, folder and test accuracy (``damaged``: the
    message of a prepared model whose record is unreadable)."""
    out = []
    for e in ZOO.values():
        try:
            i, damaged = info(e.name), None
        except OptinError as exc:
            i, damaged = None, str(exc)
        out.append({
            "name": e.name, "description": e.description, "data": e.data, "default": e.name == DEFAULT_TASK,
            "prepared": i is not None, "path": str(task_dir(e.name)),
            "test_accuracy": None if i is None else i.get("test_accuracy"), "damaged": damaged,
        })
    return out


def get_task(name: str = DEFAULT_TASK, *, progress: bool = True) -> Task:
    """A zoo task (model in eval mode, tokenizer, max length, data), trained first if needed."""
    entry = zoo_entry(name)
    folder = prepare(name, progress=progress)
    from .data.builtin import load_builtin
    from .models import load_model

    set_threads()
    try:
        model = load_model(folder, task="embedding" if entry.kind == "embedding" else None)
    except OptinError as exc:  # a file of the cached model removed or damaged since it was prepared
        raise type(exc)(f"{exc}; this zoo model is prepared again with: optin-deploy zoo prepare {name} --force") from None
    tok = None
    if entry.kind in ("text", "embedding"):
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    if entry.kind == "embedding":
        from .data.texts import load_texts

        return Task(name, model, load_texts(entry.data, seed=SEED), entry.max_length, tok, str(folder))
    return Task(name, model, load_builtin(entry.data, seed=SEED), entry.max_length, tok, str(folder))


def _model_classes(model: torch.nn.Module) -> int | None:
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "num_labels") and type(model).__name__.endswith("Classification"):
        return int(cfg.num_labels)
    n = getattr(model, "num_classes", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def load_task(
    model: str | None = None,
    data: str | None = None,
    *,
    max_length: int | None = 128,
    text_column: str = "text",
    label_column: str | None = "label",
    seed: int = SEED,
    progress: bool = True,
    task: str | None = None,
) -> Task:
    """The task a command works on.

    * neither given: the default zoo task (``minilm-sentiment``);
    * ``model`` a zoo name: that zoo task (with ``data`` replacing its data if given);
    * ``model`` None and ``data`` a built-in data set: the zoo task trained on it;
    * otherwise ``load_model(model)`` with ``load_data(data)``; the tokenizer comes from the model
      folder. ``data`` may be left out when the model folder records it (``optin_task.json`` or
      ``zoo_info.json`` with a ``data`` key, plus ``max_length``).

    ``max_length=None``: the model's own limit (its position embeddings, at most 512); texts are
    padded to the longest in each batch, so evaluation sees the data's own length up to that limit.
    The data's labels are read as the model's task (a classifier's data is classification) and
    string labels are matched to the model's ``id2label`` (:func:`match_labels`).
    ``task="embedding"`` (or a model folder with sentence-transformers files) makes it a
    sentence-embedding task: the model is the bare encoder with its pooling and the data are texts
    (:func:`optin_deploy.data.texts.load_texts`), no labels needed.
    """
    from .data.loaders import load_data
    from .models import check_tokenizer_fits, load_model, load_tokenizer, preprocessing

    flags = {"text_column": text_column, "label_column": label_column, "seed": seed}
    for what, v in (("model", model), ("data", data)):
        if v is not None and not str(v):  # Path("") is the current folder: never read it as one
            raise OptinError(f"the {what} is an empty string; pass a name or a path ('.' for the current folder)")
    if model is None:
        if data is None:
            return get_task(DEFAULT_TASK, progress=progress)
        if data in DATA_TO_TASK:
            return get_task(DATA_TO_TASK[data], progress=progress)
        raise OptinError(f"--data {data!r} needs a model: pass --model (a zoo name, a model folder, a hub name or timm:NAME)")
    if model in ZOO:
        zt = get_task(model, progress=progress)
        if data is not None and data != ZOO[model].data:
            flags["task_type"] = model_task_type(zt.model)
            flags["num_classes"] = _model_classes(zt.model)
            zt.data = _check_fit(zt.model, _load_for(zt, data, flags), model, data)
        return zt
    set_threads()
    m = load_model(model, task=task)
    folder = Path(str(model)).expanduser()
    if data is None:
        from .pruned_io import read_task_hint

        hint = read_task_hint(folder) if folder.is_dir() else None
        if hint is None:
            raise OptinError(f"model {model!r} does not record its data: pass --data (a built-in data set or a file/folder)")
        data = hint["data"]
        if Path(str(data)).is_absolute() and not Path(str(data)).exists():  # recorded as an absolute path (task_hint) that is gone
            raise OptinError(f"model {model!r} records its data as {data} (its optin_task.json), which is not there (a bundle moved to "
                             f"another machine?); pass --data with that data set's file or folder")
        if hint.get("max_length"):
            max_length = int(hint["max_length"])
        for k in ("text_column", "label_column"):
            if hint.get(k) and flags[k] in ("text", "label"):
                flags[k] = hint[k]
    default_length = max_length is None
    if max_length is None:
        max_length = model_max_length(m)
    flags["task_type"] = model_task_type(m)
    flags["num_classes"] = _model_classes(m)
    pre = preprocessing(m, model)
    if getattr(m, "output_kind", None) == "embedding":
        td = _embedding_texts(data, flags)
    elif pre["modality"] == "image":
        td = load_data(data, image_size=pre["image_size"], image_mean=pre["image_mean"], image_std=pre["image_std"],
                       num_channels=pre["num_channels"], **flags)
    else:
        td = load_data(data, **flags)
    if td.modality != pre["modality"]:
        raise OptinError(f"model {model!r} takes {pre['modality']} but data {data!r} is {td.modality}; pass matching data")
    td = _check_fit(m, td, model, data)
    tok = load_tokenizer(model) if td.modality == "text" else None
    if tok is not None:
        check_tokenizer_fits(tok, m, model)
        if getattr(m, "output_kind", None) == "embedding":  # a sentence-transformers folder: tokenised as the library does
            from .adapters import get_adapter
            from .adapters.embedding import check_lower_case, sentence_transformers_length
            from .progress import warn

            check_lower_case(m.pooling, tok, f"model {model!r}")
            limit = get_adapter(m).max_positions() or model_max_length(m)
            st_len = sentence_transformers_length(m.pooling, tok, limit, warn) if default_length else None
            max_length = st_len or max_length
    return Task(Path(str(model)).name or str(model), m, td, max_length if td.modality == "text" else None, tok, str(model))


def model_max_length(model: torch.nn.Module, cap: int = 512) -> int:
    """The longest input a text model takes (its position embeddings), at most ``cap``."""
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(int(n), cap) if isinstance(n, int) and n > 0 else cap


def model_task_type(model: torch.nn.Module) -> str | None:
    """``regression`` for a one-output regression head, ``classification`` for a classifier, else None.
    A multi-label classifier (independent sigmoids, ``problem_type = "multi_label_classification"``) is refused:
    its figures (argmax accuracy) would be wrong."""
    cfg = getattr(model, "config", None)
    if cfg is not None and getattr(cfg, "problem_type", None) == "multi_label_classification":
        raise OptinError(f"the model is a multi-label classifier ({type(model).__name__}, problem_type multi_label_classification: one "
                         f"sigmoid per label), which optin-deploy cannot evaluate (it measures single-label classifiers by accuracy "
                         f"and regression models by Spearman); use a single-label or regression checkpoint")
    if cfg is not None and getattr(cfg, "problem_type", None) == "regression":
        n = _model_classes(model)
        if n is not None and n > 1:  # Spearman was taken on its first output alone against the one label column
            raise OptinError(f"the model is a regression model with {n} outputs ({type(model).__name__}, problem_type regression, "
                             f"num_labels {n}: one score per target), which optin-deploy cannot evaluate (it measures one-output "
                             f"regression by Spearman against one label column); use a one-output regression or a classification checkpoint")
        return "regression"
    n = _model_classes(model)
    if n is None:
        return None
    return "regression" if n == 1 else "classification"


def _generic(names: list[str]) -> bool:
    return all(str(n).upper() == f"LABEL_{i}" for i, n in enumerate(names))


def _folder_key(name: str) -> str:
    """A label as a folder could spell it: lower case, letters and digits only."""
    return "".join(c for c in str(name).lower() if c.isalnum())


def match_labels(model: torch.nn.Module, td: TaskData, model_spec: str, data_spec: str) -> TaskData:
    """Renumber string labels to the model's ``id2label`` ids, matched case-insensitively (class
    folder names also ignoring everything but letters and digits, when that match is unambiguous).

    A data label the model does not know is an error naming both sets. Integer labels are class ids
    as they are. Models without ``id2label`` (timm) keep the data's sorted order."""
    kind = td.source.get("label_kind")
    if td.task_type != "classification" or not td.label_names or kind not in ("str", "folder"):
        return td
    cfg = getattr(model, "config", None)
    id2label = getattr(cfg, "id2label", None) if cfg is not None else None
    if not id2label:
        return td
    model_names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    if kind == "folder" and _generic(model_names):
        return td  # class folders of a model without label names: sorted order, as documented
    index = {}
    for i, n in enumerate(model_names):
        index.setdefault(n.strip().lower(), i)
    exact = {n.strip(): i for i, n in enumerate(model_names)}
    for n in td.label_names:  # two model labels one data label could mean ("pos" twice, "Fresh" and "fresh"): never guess
        same = [m for m in model_names if m.strip().lower() == n.strip().lower()]
        if len(same) > 1 and (n.strip() not in exact or model_names.count(n.strip()) > 1):
            raise OptinError(f"data label {n!r} matches {len(same)} of the model {model_spec!r}'s labels ({', '.join(map(repr, same))}), "
                             f"so its class id is ambiguous; give each class its own name in the model's id2label, or use integer class ids")
    if kind == "folder":  # a folder name cannot hold "/" (nor some other characters): "T-shirt-top" is "T-shirt/top"
        loose: dict[str, int | None] = {}
        for i, n in enumerate(model_names):
            k = _folder_key(n)
            loose[k] = i if k not in loose else None  # two model labels with one key: no loose match for either
        for n in td.label_names:
            k = _folder_key(n)
            if n.strip().lower() not in index and loose.get(k) is not None:
                index[n.strip().lower()] = loose[k]
    unknown = [n for n in td.label_names if n.strip().lower() not in index]
    if unknown:
        hint = ("; the model's labels are generic, so give integer class ids 0..{} or set id2label in its config.json".format(len(model_names) - 1)
                if _generic(model_names) else "; rename the data's labels to the model's")
        raise OptinError(
            f"data {data_spec!r} has labels the model {model_spec!r} does not know: {', '.join(map(repr, unknown[:6]))} "
            f"(data labels: {', '.join(td.label_names[:12])}; model labels: {', '.join(model_names[:12])}){hint}"
        )
    perm = torch.tensor([exact[n.strip()] if n.strip() in exact else index[n.strip().lower()] for n in td.label_names], dtype=torch.long)
    for split in ("train", "validation", "test"):
        sp = getattr(td, split)
        if sp.labels is not None:
            sp.labels = perm[sp.labels]
    td.label_names = model_names
    td.source = {**td.source, "label_kind": "matched", "labels_matched": "by name to the model's id2label"}
    return td


def _load_for(task: Task, data: str, flags: dict) -> TaskData:
    from .data.loaders import load_data
    from .models import preprocessing

    pre = preprocessing(task.model, task.model_source)
    if getattr(task.model, "output_kind", None) == "embedding":
        return _embedding_texts(data, flags)
    if pre["modality"] == "image":
        return load_data(data, image_size=pre["image_size"], image_mean=pre["image_mean"], image_std=pre["image_std"],
                         num_channels=pre["num_channels"], **flags)
    return load_data(data, **flags)


def _embedding_texts(data: str, flags: dict) -> TaskData:
    """A sentence-embedding model's data: texts only. A label column asked for is said to go unused."""
    from .data.texts import load_texts
    from .progress import warn

    if flags.get("label_column") not in (None, "label"):
        warn(f"--label-column {flags['label_column']!r} is not used: a sentence-embedding model's data are texts only "
             f"(column {flags['text_column']!r}); its labels, if any, are ignored")
    return load_texts(data, text_column=flags["text_column"], seed=flags["seed"])


def _model_label_names(model: torch.nn.Module, n: int) -> list[str]:
    """The model's class names in id order (its ``id2label``), or ``0..n-1`` as strings."""
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    try:
        names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    except (TypeError, ValueError):
        names = []
    return names if len(names) == n else [str(i) for i in range(n)]


def _fit_class_ids(model: torch.nn.Module, td: TaskData, n: int, model_spec: str, data_spec: str) -> TaskData:
    """Integer labels are the model's class ids: any subset of ``0..n-1`` may occur in a split (a
    test set without the last class is still the model's task); an id outside that range is an error
    naming it and the range. The data then carries the model's ``n`` classes and names."""
    ids: set[int] = set()
    for split in ("train", "validation", "test"):
        labels = getattr(td, split).labels
        if labels is not None and len(labels):
            ids |= {int(v) for v in torch.unique(labels).tolist()}
    out = sorted(i for i in ids if i < 0 or i >= n)
    if out:
        shown = ", ".join(map(str, out[:8])) + (", ..." if len(out) > 8 else "")
        raise OptinError(
            f"data {data_spec!r} has class id{'s' if len(out) > 1 else ''} {shown} outside the range of model {model_spec!r}, "
            f"which predicts {n} classes (ids 0..{n - 1}); fix those labels (or drop those rows) or use a model trained on these classes"
        )
    td.label_names = _model_label_names(model, n)
    return td


def _class_label_ids(model: torch.nn.Module, td: TaskData, model_spec: str, data_spec: str) -> TaskData:
    """Labels saved as a ``datasets`` ClassLabel carry both names and ids. When the model knows every name they are
    matched by name (so another order of the same classes is right); when it knows none (``neg``/``pos`` on a
    ``rotten``/``fresh`` model, or a model with generic labels) the data's own ids are the class ids, and a named
    mismatch is said on stderr; some names known and some not is refused."""
    if td.source.get("label_kind") != "classlabel" or td.task_type != "classification":
        return td
    declared = list(td.label_names)  # the ClassLabel's names, in id order
    id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
    model_names = [str(id2label[k]) for k in sorted(id2label, key=int)] if id2label else []
    named = bool(model_names) and not _generic(model_names)
    if named:
        lower = {m.strip().lower() for m in model_names}
        known = [n for n in td.label_names if n.strip().lower() in lower]
        if len(known) == len(td.label_names):
            td.source = {**td.source, "label_kind": "str"}
            return match_labels(model, td, model_spec, data_spec)
        if known:
            unknown = [n for n in td.label_names if n.strip().lower() not in lower]
            raise OptinError(f"data {data_spec!r} names some of the model's classes and some others ({', '.join(map(repr, unknown[:6]))} "
                             f"are not the model's; data classes: {', '.join(declared[:12])}; model labels: {', '.join(model_names[:12])}); "
                             f"rename the data's classes to the model's")
    n = _model_classes(model)
    if n is not None and len(declared) != n:
        raise OptinError(f"model {model_spec!r} predicts {n} classes but data {data_spec!r} declares {len(declared)} "
                         f"({', '.join(declared[:6])}); use data with the model's classes or a fine-tuned model")
    how = "by class id"
    if named:
        how += f" (the data's class names {', '.join(declared[:6])} are not the model's {', '.join(model_names[:6])})"
        from .progress import warn

        warn(f"data {data_spec!r}: its class names ({', '.join(declared[:6])}) are not the model's ({', '.join(model_names[:6])}); "
             f"its class ids are taken as the model's (id 0 = {model_names[0]!r}); rename the classes if that is wrong")
    td.source = {**td.source, "label_kind": "int", "labels_matched": how}
    return td


def _check_fit(model: torch.nn.Module, td: TaskData, model_spec: str, data_spec: str) -> TaskData:
    td = _class_label_ids(model, td, model_spec, data_spec)
    names = [str(v) for v in (getattr(getattr(model, "config", None), "id2label", None) or {}).values()]
    if names and not _generic(names):  # named classes: unknown labels are named first, with both sets
        td = match_labels(model, td, model_spec, data_spec)
    n = _model_classes(model)
    kind = model_task_type(model)
    if kind is not None and td.train.labels is not None and td.task_type != kind:
        raise OptinError(f"model {model_spec!r} is a {kind} model but data {data_spec!r} has {td.task_type} labels; pass matching data")
    if n is not None and td.train.labels is not None and td.task_type == "classification" and td.source.get("label_kind") == "int":
        td = _fit_class_ids(model, td, n, model_spec, data_spec)
    if n is not None and td.train.labels is not None and td.task_type == "classification" and td.num_labels != n:
        raise OptinError(
            f"model {model_spec!r} predicts {n} classes but data {data_spec!r} has {td.num_labels} labels "
            f"({', '.join(td.label_names[:6])}); use data with the model's classes or a fine-tuned model"
        )
    td = match_labels(model, td, model_spec, data_spec)
    if td.text_pair:  # the segment ids become a model input (where the family embeds them)
        mark_text_pair(model)
    return td
