"""ELECTRA discriminators (``ElectraModel``, ``ElectraForSequenceClassification``).

The encoder blocks are BERT's (post-norm, separate q/k/v, ``attention.output.dense``,
``intermediate.dense`` / ``output.dense``); the embeddings may be narrower than the blocks
(``embedding_size``, projected up by ``embeddings_project``), which pruning does not touch. The
task models keep the encoder under ``.electra``; the sequence-classification head is ELECTRA's
two-layer ``ElectraClassificationHead`` on the first token.
"""

from __future__ import annotations

from .bert import BertAdapter
from .registry import register


@register
class ElectraAdapter(BertAdapter):
    family = "electra"
    description = "transformers ELECTRA (ElectraModel, ElectraForSequenceClassification)"
    model_types = ("electra",)
    base_attrs = ("electra",)
