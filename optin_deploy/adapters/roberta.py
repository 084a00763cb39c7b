"""RoBERTa-layout encoders: RoBERTa, XLM-RoBERTa, CamemBERT (``RobertaModel``,
``XLMRobertaForSequenceClassification``, ``CamembertModel``...).

The blocks are BERT's (post-norm, separate q/k/v), so everything but two facts comes from
:class:`~optin_deploy.adapters.bert.BertAdapter`: the task models keep the encoder under
``.roberta``, and position ids start at ``padding_idx + 1``, so ``padding_idx + 1`` rows of the
position table are never used and the longest input is ``max_position_embeddings - padding_idx - 1``
tokens (514 - 2 = 512 for the released checkpoints).
"""

from __future__ import annotations

from .bert import BertAdapter
from .registry import register


@register
class RobertaAdapter(BertAdapter):
    family = "roberta"
    description = "transformers RoBERTa / XLM-RoBERTa / CamemBERT (RobertaModel, XLMRobertaForSequenceClassification...)"
    model_types = ("roberta", "xlm-roberta", "camembert")
    base_attrs = ("roberta",)

    def position_offset(self) -> int:
        pad = getattr(self.model.config, "pad_token_id", None)
        return (1 if pad is None else int(pad)) + 1
