"""Sentence-embedding models: a bare text encoder of any supported family, plus pooling and an
optional L2 normalisation.

:class:`SentenceEmbedder` wraps the encoder (a transformers base model such as ``BertModel``) and
returns one vector per text, the output a semantic-search system stores and compares. Its pooling
comes from the sentence-transformers files of the model folder when it has them
(``modules.json``, ``1_Pooling/config.json``, a ``Normalize`` module); otherwise it is mean pooling
over the real tokens, without normalisation (:func:`read_pooling`). The pooling definitions follow
sentence-transformers' ``Pooling`` module (``mean``, ``cls``, ``max``, ``lasttoken``,
``mean_sqrt_len_tokens``, ``weightedmean``; several modes are concatenated in that order of the config).

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

POOLING_MODES = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len_tokens", "weightedmean")
# sentence-transformers' older boolean keys in 1_Pooling/config.json, in its concatenation order
_LEGACY_KEYS = (("pooling_mode_cls_token", "cls"), ("pooling_mode_max_tokens", "max"), ("pooling_mode_mean_tokens", "mean"),
                ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"), ("pooling_mode_weightedmean_tokens", "weightedmean"),
                ("pooling_mode_lasttoken", "lasttoken"))


@dataclass
class PoolingSpec:
    """How token features become one sentence vector."""

    modes: tuple[str, ...] = ("mean",)
    normalize: bool = False
    source: str = "default: mean pooling over the real tokens, no normalisation (no sentence-transformers files)"
    max_seq_length: int | None = None
    files: list[str] = field(default_factory=list)
    do_lower_case: bool = False  # sentence_bert_config.json: texts are lower-cased before tokenising (the tokenizer must do it)

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
                   list(d.get("files", [])), bool(d.get("do_lower_case", False)))

    def describe(self) -> str:
        return f"{'+'.join(self.modes)} pooling{', L2-normalised' if self.normalize else ''} ({self.source})"


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise OptinError(f"{path} is not valid JSON ({exc}); fix or delete it") from None


def has_sentence_transformers_files(folder: str | Path) -> bool:
    return (Path(folder) / "modules.json").is_file()


# the sentence-transformers modules this wrapper reproduces, by the last part of the class path modules.json names
# (``sentence_transformers.models.Pooling`` in older files, ``sentence_transformers.sentence_transformer.modules.pooling.Pooling``
# in newer ones). The type is compared as a name only: nothing a model folder names is ever imported.
_ST_PIPELINE = ("Transformer", "Pooling", "Normalize")


def _module_kind(t: object) -> str | None:
    """``Transformer`` / ``Pooling`` / ``Normalize`` for sentence-transformers' own classes of those names, else None (a
    class of the user's own such as ``mypkg.MyPooling``, a sparse encoder's ``MLMTransformer`` / ``SpladePooling``, a
    ``Dense``...)."""
    if not isinstance(t, str) or not t.startswith("sentence_transformers."):
        return None
    parts = t.split(".")
    if parts[-1] not in _ST_PIPELINE or any(p in ("sparse_encoder", "cross_encoder", "multi_vector_encoder") for p in parts):
        return None
    return parts[-1]


def _inside(folder: Path, rel: object, what: str) -> Path:
    """``folder / rel`` for a module path of modules.json, refused when it leaves the model folder."""
    if not isinstance(rel, str) or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise OptinError(f"{folder / 'modules.json'}: the {what} module's path {rel!r} is not a folder inside the model folder; "
                         f"modules.json must name sub-folders of the model (such as \"1_Pooling\")")
    return folder / rel


def read_pooling(folder: str | Path | None) -> PoolingSpec:
    """The pooling of a model folder: from its sentence-transformers files, else mean pooling.

    Only the pipeline sentence-transformers itself builds from these files is reproduced: its ``Transformer``
    (the folder's own encoder), then ``Pooling``, then optionally ``Normalize``. Any other module, another order,
    a module folder that is missing or outside the model folder, a default prompt the library would prepend to every
    text, or settings of the wrong type are refused in one line: an embedding computed otherwise than
    ``SentenceTransformer.encode`` would be silently wrong."""
    if folder is None or not has_sentence_transformers_files(folder):
        return PoolingSpec()
    folder = Path(folder)
    mfile = folder / "modules.json"
    modules = _read_json(mfile)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise OptinError(f"{mfile} should be a list of modules (objects with idx, name, path, type); fix or delete it")
    types = [m.get("type") for m in modules]
    kinds = [_module_kind(t) for t in types]
    unknown = [str(t) for t, k in zip(types, kinds) if k is None]
    if unknown:
        raise OptinError(f"{mfile} has modules optin-deploy cannot reproduce ({', '.join(unknown)}); only sentence-transformers' "
                         "Transformer + Pooling (+ Normalize) pipelines are supported (a module's code is never run)")
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise OptinError(f"{mfile} lists the modules {' -> '.join(kinds) or '(none)'}; optin-deploy reproduces Transformer -> Pooling "
                         "(-> Normalize) in that order, one of each")
    tpath = modules[0].get("path", "")
    if tpath not in ("", ".", "./"):
        raise OptinError(f"{mfile}: the Transformer module is in {tpath!r}, not the model folder itself; optin-deploy reads the "
                         f"encoder from the folder's own config.json and weights (move that module's files into the model folder "
                         f"and set its path to \"\")")
    files = ["modules.json"]
    pool_dir = _inside(folder, modules[1].get("path"), "Pooling")
    cfg_path = pool_dir / "config.json"
    if not cfg_path.is_file():
        raise OptinError(f"{cfg_path} is missing: the Pooling module of {mfile} has no config.json, so its pooling mode is "
                         f"unknown; restore the file (sentence-transformers writes it with model.save)")
    cfg = _read_json(cfg_path)
    if not isinstance(cfg, dict):
        raise OptinError(f"{cfg_path} should be a JSON object (pooling_mode, ...); fix or delete it")
    files.append(str(cfg_path.relative_to(folder)))
    pm = cfg.get("pooling_mode")
    if pm is not None:
        if isinstance(pm, str):
            modes: tuple = (pm,)
        elif isinstance(pm, list) and pm and all(isinstance(x, str) for x in pm):
            modes = tuple(pm)
        else:
            raise OptinError(f"{cfg_path}: pooling_mode is {pm!r}, not a mode name or a list of them ({', '.join(POOLING_MODES)})")
    else:
        modes = tuple(m for k, m in _LEGACY_KEYS if cfg.get(k))
        if not modes:
            raise OptinError(f"{cfg_path} enables no pooling mode; set one of {', '.join(POOLING_MODES)}")
    bad = [m for m in modes if m not in POOLING_MODES]
    if bad:
        raise OptinError(f"{cfg_path}: unsupported pooling mode(s) {', '.join(map(repr, bad))}; supported: {', '.join(POOLING_MODES)}")
    include_prompt = cfg.get("include_prompt", True)
    max_len, lower = None, False
    sb = folder / "sentence_bert_config.json"
    if sb.is_file():
        files.append(sb.name)
        sbc = _read_json(sb)
        if not isinstance(sbc, dict):
            raise OptinError(f"{sb} should be a JSON object (max_seq_length, do_lower_case); fix or delete it")
        max_len = sbc.get("max_seq_length")
        if max_len is not None and (isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1):
            raise OptinError(f"{sb}: max_seq_length is {max_len!r}, not a number of tokens; fix it (sentence-transformers truncates texts there)")
        lower = sbc.get("do_lower_case", False)
        if not isinstance(lower, bool):
            raise OptinError(f"{sb}: do_lower_case is {lower!r}, not true or false; fix it")
    stc = folder / "config_sentence_transformers.json"
    if stc.is_file():
        c = _read_json(stc)
        if not isinstance(c, dict):
            raise OptinError(f"{stc} should be a JSON object; fix or delete it")
        prompts = c.get("prompts") or {}
        name = c.get("default_prompt_name")
        prompt = prompts.get(name) if isinstance(prompts, dict) and name is not None else None
        if name is not None and prompt != "":
            raise OptinError(f"{stc} sets default_prompt_name {name!r} ({'prompt ' + repr(prompt) if isinstance(prompt, str) else 'not in its prompts'}), "
                             f"which sentence-transformers puts before every text{' and leaves out of the pooling' if include_prompt is False else ''}; "
                             f"optin-deploy embeds the texts as given, so its embeddings would not be the model's: set default_prompt_name "
                             f"to null{' (and, with include_prompt true, put the prompt in your texts)' if include_prompt is not False else ''}")
        files.append(stc.name)
    normalize = kinds[-1] == "Normalize"
    if stc.is_file():
        # the similarity the model was trained for: the figures (cosine to the dense model, recall@10) rank neighbours by
        # cosine, which ranks as dot product and euclidean distance do on normalised vectors, and not otherwise
        sim = c.get("similarity_fn_name")
        if sim is not None and sim != "cosine" and not (normalize and sim in ("dot", "dot_product", "euclidean")):
            raise OptinError(f"{stc} sets similarity_fn_name {sim!r}{'' if normalize else ' without a Normalize module'}; optin-deploy "
                             f"measures embeddings (cosine to the dense model, recall@10) by cosine similarity, which would not rank "
                             f"neighbours as this model's similarity does; only cosine (or dot / euclidean after Normalize) is supported")
    return PoolingSpec(modes, normalize, "sentence-transformers files: " + ", ".join(files), max_len, files, lower)


def pool(token_embeddings: torch.Tensor, attention_mask: torch.Tensor, modes: tuple[str, ...] = ("mean",)) -> torch.Tensor:
    """Sentence vectors ``B x (len(modes) * d)`` from token features ``B x T x d`` and the ``B x T`` mask,
    with sentence-transformers' definitions (mean/sqrt-len over real tokens, the first real token for
    ``cls``, the max over real tokens, the last real token for ``lasttoken``, the mean weighted by the position counted
    from the first real token for ``weightedmean``)."""
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
        elif mode == "weightedmean":  # position weights 1, 2, ... counted from the first real token (left padding too)
            first = attention_mask.to(torch.int32).argmax(dim=1).to(x.dtype)
            weights = torch.arange(1, x.shape[1] + 1, device=x.device, dtype=x.dtype).view(1, -1, 1) - first.view(-1, 1, 1)
            wmask = mask * weights
            out.append((x * wmask).sum(1) / wmask.sum(1).clamp(min=1e-9))
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


# ----------------------------------------------------------------------------------- tokenisation

_CASE_PROBE = "The Quick Brown Fox MEETS Paris"


def sentence_transformers_length(spec: PoolingSpec, tokenizer, model_limit: int, warn=None) -> int | None:
    """The maximum length sentence-transformers tokenises a folder's texts to, or None for a model without its files:
    ``max_seq_length`` of ``sentence_bert_config.json``, else the tokenizer's ``model_max_length`` capped at the model's
    position embeddings (``model_limit``). A length past ``model_limit`` is capped there (``warn`` says so): the
    library itself would fail on such a text."""
    if not spec.files:
        return None
    n = spec.max_seq_length
    if n is None:
        t = getattr(tokenizer, "model_max_length", None)
        n = int(t) if isinstance(t, int) and 0 < t < 10**6 else model_limit
    if n > model_limit:
        if warn is not None:
            warn(f"sentence_bert_config.json sets max_seq_length {n}, past the {model_limit} positions the model embeds; texts "
                 f"are truncated to {model_limit} tokens (sentence-transformers would fail on longer ones)")
        n = model_limit
    return n


def check_lower_case(spec: PoolingSpec, tokenizer, where: str) -> None:
    """``do_lower_case`` in ``sentence_bert_config.json`` makes sentence-transformers lower-case every text before its
    tokenizer sees it; optin-deploy (and the bundle's tokenizer) tokenise with the tokenizer alone, which is the same
    only when the tokenizer lower-cases by itself. Otherwise refused in one line."""
    if not spec.do_lower_case or tokenizer is None:
        return
    ids = lambda t: list(tokenizer(t)["input_ids"])  # noqa: E731
    if ids(_CASE_PROBE) != ids(_CASE_PROBE.lower()):
        raise OptinError(f"{where}: sentence_bert_config.json sets do_lower_case true, so sentence-transformers lower-cases every "
                         f"text, but the folder's tokenizer keeps case (it would give other tokens, and the served bundle's tokenizer "
                         f"too); save a tokenizer that lower-cases (e.g. do_lower_case=True) in the folder, or set do_lower_case false "
                         f"if the model was trained on cased text")
