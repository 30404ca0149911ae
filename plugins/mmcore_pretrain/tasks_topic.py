"""TITP / TITS (paper §3.2-3.3): predict the topic W ∩ L as a multi-hot over the WordPiece vocabulary."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from mmcore.api import Backbone, BackboneOutput, Batch, DataInfo, Task

from .fields import FORWARD_FIELDS
from .heads import topic_head
from .masking import content_tokens
from .tasks_masked import special_token_ids


class TITPTask(Task):
    """Topic of Image and Text (phrase): BCE over the vocabulary against W ∩ L on the pooled output.

    W = the text's content WordPiece ids, L = the WordPiece ids of the detector labels of the real regions.
    Runs at order 10: after ITM re-pairing (done in ``prepare``) so the topic describes the actual pair, and
    before MLM masking so W comes from the clean text.
    """

    name: ClassVar[str] = "titp"
    display_order: ClassVar[int] = 70  # the paper's task order (Table 4)
    requires: ClassVar[frozenset[str]] = FORWARD_FIELDS | {"obj_labels"}
    defaults: ClassVar[dict[str, Any]] = {}
    order: ClassVar[int] = 10

    def __init__(self, info: DataInfo, backbone: Backbone, **options: Any) -> None:
        super().__init__(info, backbone, **options)
        self.vocab_size = info.vocab_size
        self.head = topic_head(backbone.hidden_size, info.vocab_size)
        specials = special_token_ids(info)
        self.register_buffer("special_ids", torch.tensor(specials, dtype=torch.long), persistent=False)
        self.register_buffer("object_pieces", _object_piece_table(info, set(specials)), persistent=False)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> None:
        """Set ``topic_labels`` [B,V] float from the clean ``input_ids`` and the real regions' ``obj_labels``."""
        ids: Tensor = batch["input_ids"]
        b, v = ids.shape[0], self.vocab_size
        # Scatter into one spare column (index V) for everything that must not count, then drop it.
        words = torch.where(content_tokens(ids, batch["attention_mask"], self.special_ids), ids, v)
        in_text = ids.new_zeros((b, v + 1), dtype=torch.float32).scatter_(1, words, 1.0)
        labels = batch["obj_labels"].long().clamp(0, self.object_pieces.shape[0] - 1)
        pieces = self.object_pieces[labels]  # [B,O,P]
        pieces = torch.where(batch["visual_mask"].bool()[..., None], pieces, v)
        in_labels = ids.new_zeros((b, v + 1), dtype=torch.float32).scatter_(1, pieces.reshape(b, -1), 1.0)
        batch["topic_labels"] = (in_text * in_labels)[:, :v]

    def loss(self, output: BackboneOutput, batch: Batch) -> Tensor:
        """Binary cross-entropy with logits, averaged over the vocabulary and the batch (paper eq. 2/4)."""
        logits = self.head(output.pooled).float()
        return F.binary_cross_entropy_with_logits(logits, batch["topic_labels"])


class TITSTask(TITPTask):
    """Topic of Image and Text (sentence): the same objective as TITP, named for the sentence stage."""

    name: ClassVar[str] = "tits"
    display_order: ClassVar[int] = 40  # the paper's task order (Table 4)


def _object_piece_table(info: DataInfo, specials: set[int]) -> Tensor:
    """[num_objects, P] WordPiece ids of each object name, padded with V (the spare column).

    Equivalent to a [num_objects, V] multi-hot but P (a few pieces) instead of V wide: indexing it per region
    stays small on the device, where a dense row per region would be [B,O,V].
    """
    v = info.vocab_size
    rows = [[i for i in pieces if 0 <= i < v and i not in specials] for pieces in info.object_token_ids]
    rows += [[] for _ in range(max(0, info.num_objects - len(rows)))]
    width = max(1, max((len(r) for r in rows), default=1))
    table = torch.full((max(1, len(rows)), width), v, dtype=torch.long)
    for index, row in enumerate(rows):
        table[index, : len(row)] = torch.tensor(row, dtype=torch.long)
    return table
