"""Sentence-embedding models: a bare text encoder of any supported family, plus pooling and an
optional L2 normalisation.

:class:`SentenceEmbedder` wraps the encoder (a transformers base model such as ``BertModel``) and
returns one vector per text, the output a semantic-search system stores and compares. Its pooling
comes from the sentence-transformers files of the model folder when it has them
(``modules.json``, ``1_Pooling/config.json``, a ``Normalize`` module); otherwise it is mean pooling
over the real tokens, without normalisation (:func:`read_pooling`). The pooling definitions follow
sentence-transformers' ``Pooling`` module (``mean``, ``cls``, ``max``, ``lasttoken``,
``mean_sqrt_len_tokens``; several modes are concatenated in that order of the config).

The pruning machinery reaches the encoder through :func:`embedding_adapter`: the family's own
adapter, on the wrapped encoder, with ``forward`` returning the pooled embedding and
``output_kind = "embedding"`` (so OPTIN's final-output term compares embeddings by cosine instead of
logits by KL). Nothing here knows a family: the family adapter does.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptinError

POOLING_MODES = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens")
# sentence-transformers' older boolean keys in 1_Pooling/config.json, in its concatenation order
_LEGACY_KEYS = (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"), ("pooling_mode_lasttoken", "lasttoken"))


@dataclass
class PoolingSpec:
    """How token features become one sentence vector."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    source: str = "default: mean pooling over the real tokens, no normalisation (no sentence-transformers files)"
    max_seq_length: int | None = None
    files: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.modes = tuple(self.modes)
        bad = [m for m in self.modes if m not in POOLING_MODES]
        if bad or not self.modes:
            raise OptinError(f"unsupported pooling mode(s) {bad or '(none)'}; supported: {', '.join(POOLING_MODES)}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["modes"] = list(self.modes)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PoolingSpec":
        return cls(tuple(d.get("modes", ("mean",))), bool(d.get("normalize", False)), d.get("source", ""), d.get("max_seq_length"),
                   list(d.get("files", [])))

    def describe(self) -> str:
        return f"{'+'.join(self.modes)} pooling{', L2-normalised' if self.normalize else ''} ({self.source})"


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OptinError(f"{path} is not valid JSON ({exc}); fix or delete it") from None


def has_sentence_transformers_files(folder: str | Path) -> bool:
    return (Path(folder) / "modules.json").is_file()


def read_pooling(folder: str | Path | None) -> PoolingSpec:
    """The pooling of a model folder: from its sentence-transformers files, else mean pooling."""
    if folder is None or not has_sentence_transformers_files(folder):
        return PoolingSpec()
    folder = Path(folder)
    modules = _read_json(folder / "modules.json")
    if not isinstance(modules, list):
        raise OptinError(f"{folder / 'modules.json'} should be a list of modules; fix or delete it")
    types = [str(m.get("type", "")) for m in modules if isinstance(m, dict)]
    pool = next((m for m in modules if isinstance(m, dict) and str(m.get("type", "")).endswith("Pooling")), None)
    unknown = [t for t in types if not t.endswith(("Transformer", "Pooling", "Normalize"))]
    if unknown:
        raise OptinError(f"{folder / 'modules.json'} has modules optin-deploy cannot reproduce ({', '.join(unknown)}); "
                         "only Transformer + Pooling (+ Normalize) pipelines are supported")
    files = ["modules.json"]
    modes: tuple[str, ...] = ("mean",)
    if pool is not None:
        cfg_path = folder / str(pool.get("path", "1_Pooling")) / "config.json"
        if cfg_path.is_file():
            cfg = _read_json(cfg_path)
            files.append(str(cfg_path.relative_to(folder)))
            if isinstance(cfg.get("pooling_mode"), (str, list)):
                pm = cfg["pooling_mode"]
                modes = (pm,) if isinstance(pm, str) else tuple(pm)
            else:
                modes = tuple(m for k, m in _LEGACY_KEYS if cfg.get(k))
                if cfg.get("pooling_mode_weightedmean_tokens"):
                    raise OptinError(f"{cfg_path}: weighted-mean pooling is not supported; supported: {', '.join(POOLING_MODES)}")
            if not modes:
                raise OptinError(f"{cfg_path} enables no pooling mode; set one of {', '.join(POOLING_MODES)}")
    normalize = any(t.endswith("Normalize") for t in types)
    max_len = None
    sb = folder / "sentence_bert_config.json"
    if sb.is_file():
        files.append(sb.name)
        max_len = _read_json(sb).get("max_seq_length")
    return PoolingSpec(modes, normalize, "sentence-transformers files: " + ", ".join(files), max_len, files)


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, modes: tuple[str, ...] = ("mean",)) -> torch.Tensor:
    """Sentence vectors ``B x (len(modes) * d)`` from token features ``B x T x d`` and the ``B x T`` mask,
    with sentence-transformers' definitions (mean/sqrt-len over real tokens, the first real token for
    ``cls``, the max over real tokens, the last real token for ``lasttoken``)."""
    x = token_embeddings
    mask = attention_mask.to(x.dtype).unsqueeze(-1)  # B x T x 1
    out = []
    for mode in modes:
        if mode in ("mean", "mean_sqrt_len_tokens"):
            total = (x * mask).sum(1)
            count = mask.sum(1).clamp(min=1e-9)
            out.append(total / (count if mode == "mean" else count.sqrt()))
        elif mode == "cls":
            first = attention_mask.to(torch.int32).argmax(dim=1)
            out.append(torch.gather(x, 1, first.long().view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1))
        elif mode == "max":
            out.append(x.masked_fill(mask == 0, float("-inf")).max(dim=1).values)
        elif mode == "lasttoken":
            T = x.shape[1]
            values, idx = attention_mask.to(torch.int32).flip(1).max(1)
            idx = torch.where(values == 0, torch.full_like(idx, T - 1), idx)
            last = (T - idx - 1).long()
            out.append(torch.gather(x * mask, 1, last.view(-1, 1, 1).expand(-1, 1, x.shape[-1])).squeeze(1))
        else:  # pragma: no cover - PoolingSpec validates the modes
            raise OptinError(f"unsupported pooling mode {mode!r}")
    return out[0] if len(out) == 1 else torch.cat(out, dim=-1)


class SentenceEmbedder(nn.Module):
    """A bare encoder plus pooling (and L2 normalisation when the model asks for it).

    ``forward(input_ids, attention_mask)`` returns the ``B x D`` sentence embeddings: the output
    the ONNX export names ``sentence_embedding``.
    """

    output_kind = "embedding"
    output_name = "sentence_embedding"
    main_input_name = "input_ids"

    def __init__(self, backbone: nn.Module, pooling: PoolingSpec | None = None):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling or PoolingSpec()
        self.config = getattr(backbone, "config", None)

    def token_embeddings(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return out[0] if isinstance(out, (tuple, list)) else out.last_hidden_state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        emb = pool(self.token_embeddings(input_ids, attention_mask), attention_mask, self.pooling.modes)
        return F.normalize(emb, p=2, dim=-1) if self.pooling.normalize else emb


# ----------------------------------------------------------------------------------------- adapter

_CLASSES: dict[type, type] = {}


class _EmbeddingMixin:
    """Turns a family adapter into one for :class:`SentenceEmbedder`: the family's methods act on the
    wrapped encoder; the forward pass returns the pooled (normalised) embedding."""

    output_kind = "embedding"

    def __init__(self, model: SentenceEmbedder):
        super().__init__(model.backbone)  # type: ignore[call-arg]
        self.wrapper = model

    @property
    def root(self) -> nn.Module:
        return self.wrapper

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.wrapper(inputs["input_ids"], inputs.get("attention_mask"))

    def logits(self, outputs) -> torch.Tensor:
        return outputs

    def structure(self) -> dict:
        spec = super().structure()  # type: ignore[misc]
        spec["embedding"] = self.wrapper.pooling.to_dict()
        return spec


def embedding_adapter(model: SentenceEmbedder, family_adapter: type):
    """The adapter of ``model``: ``family_adapter`` (the family of its encoder) made to pool."""
    if getattr(family_adapter, "modality", "text") != "text":
        raise OptinError(f"embedding models need a text encoder; {family_adapter.family} is a {family_adapter.modality} family")
    cls = _CLASSES.get(family_adapter)
    if cls is None:
        cls = type(f"Embedding{family_adapter.__name__}", (_EmbeddingMixin, family_adapter), {})
        _CLASSES[family_adapter] = cls
    return cls(model)


def wrap_from_structure(model: nn.Module, spec: dict) -> nn.Module:
    """Rebuild the wrapper of a saved embedding model (``spec["embedding"]``); other models unchanged."""
    emb = spec.get("embedding")
    return SentenceEmbedder(model, PoolingSpec.from_dict(emb)) if emb else model
