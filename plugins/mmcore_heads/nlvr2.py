"""The ``nlvr2`` head: is a statement true of a pair of images? LXMERT's NLVR2 classifier over the two pooled
outputs of (sentence, img0) and (sentence, img1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmcore.api import (
    SECOND_IMAGE_SUFFIX,
    Backbone,
    Batch,
    DataInfo,
    EvalContext,
    ExampleSource,
    Head,
    MMCoreError,
    Metric,
    Task,
    init_bert_,
)
from mmcore_heads.metrics import classification_hits
from mmcore_heads.predictions import write_nlvr2_predictions

PREDICTIONS_CSV = "predictions.csv"
UNLABELLED = -1  # nlvr2_label of a statement without a label (NLVR2's hidden test set)
LABELS = ("false", "true")  # class 0, class 1
_TEXT_KEYS = ("input_ids", "attention_mask", "position_ids")
_IMAGE_KEYS = ("visual_feats", "visual_pos", "visual_mask")


def stack_images(batch: Batch) -> Batch:
    """A backbone batch of 2B (sentence, image) pairs: rows 0..B-1 hold img0, rows B..2B-1 img1 (the text is
    repeated), so both images go through the encoder in one call."""
    out: Batch = {k: torch.cat([batch[k], batch[k]]) for k in _TEXT_KEYS if k in batch}
    for key in _IMAGE_KEYS:
        first, second = batch.get(key), batch.get(key + SECOND_IMAGE_SUFFIX)
        if first is None and second is None:
            continue
        if first is None or second is None:
            # Only one image has a region mask: the other's regions are all real.
            present = first if first is not None else second
            first = first if first is not None else torch.ones_like(present)
            second = second if second is not None else torch.ones_like(present)
        out[key] = torch.cat([first, second])
    return out


class NLVR2Head(Head):
    """NLVR2: Linear(2H,2H) → GeLU → LayerNorm → Linear(2H,2) on two concatenated pooled outputs; accuracy.

    The pooled outputs are those of (sentence, img0) and (sentence, img1); cross-entropy over false/true
    (class 1 = true).
    """

    name: ClassVar[str] = "nlvr2"
    epochs: ClassVar[int] = 8  # the paper's fine-tuning epochs
    metrics: ClassVar[tuple[Metric, ...]] = (Metric("accuracy", "Acc", "NLVR2 acc", results=True, primary=True),)
    display_order: ClassVar[int] = 30
    requires: ClassVar[frozenset[str]] = frozenset(
        {"text", "visual_feats", "visual_pos", "visual_feats_1", "visual_pos_1", "nlvr2_label"}
    )
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, info: DataInfo, hidden_size: int, pretrained: dict[str, Task], **options: Any) -> None:
        super().__init__(info, hidden_size, pretrained, **options)
        width = 2 * hidden_size
        self.logit_fc = nn.Sequential(
            nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width, eps=1e-12), nn.Linear(width, 2),
        )
        init_bert_(self.logit_fc)
        self.zero_shot_ready = False
        self.predictions: list[tuple[str, bool]] = []  # (identifier, predicted true) of the last evaluate()

    def logits(self, backbone: Backbone, batch: Batch) -> Tensor:
        """True/false logits [B,2] for a collated two-image batch."""
        pooled = backbone.encode(stack_images(batch)).pooled
        half = pooled.shape[0] // 2
        return self.logit_fc(torch.cat([pooled[:half], pooled[half:]], dim=-1))

    def top_predictions(self, backbone: Backbone, batch: Batch, k: int) -> list[list[tuple[str, float]]]:
        """``true`` / ``false`` with their softmax probabilities, the more probable first (at most ``k``)."""
        probabilities = torch.softmax(self.logits(backbone, batch).float(), dim=-1).tolist()
        return [sorted(zip(LABELS, row), key=lambda pair: -pair[1])[:k] for row in probabilities]

    def gold_labels(self, batch: Batch) -> list[dict[str, float]]:
        """``{"true": 1.0}`` or ``{"false": 1.0}``; empty for an unlabelled statement."""
        return [{} if label == UNLABELLED else {LABELS[label]: 1.0} for label in batch["nlvr2_label"].tolist()]

    def loss(self, backbone: Backbone, batch: Batch) -> Tensor:
        """Cross-entropy against ``nlvr2_label`` (unlabelled statements are ignored)."""
        logits = self.logits(backbone, batch).float()
        return F.cross_entropy(logits, batch["nlvr2_label"].long(), ignore_index=UNLABELLED)

    def evaluate(self, backbone: Backbone, view: ExampleSource, ctx: EvalContext) -> dict[str, float]:
        """``{"accuracy": ...}`` over the labelled statements; keeps every prediction for
        :meth:`write_predictions`."""
        correct = torch.zeros((), dtype=torch.long, device=ctx.device)
        labelled = torch.zeros((), dtype=torch.long, device=ctx.device)
        predicted: list[Tensor] = []
        identifiers: list[str] = []
        for batch in ctx.batches(view, self.name):  # type: ignore[arg-type]  # a view is a sequence of examples
            logits = self.logits(backbone, batch)
            hits, known = classification_hits(logits, batch["nlvr2_label"], UNLABELLED)
            correct += hits.sum()
            labelled += known.sum()
            predicted.append(logits.argmax(dim=-1))
            start = len(identifiers)
            identifiers += [str(i) for i in batch.get("identifier", range(start, start + logits.shape[0]))]
        if not identifiers:
            raise MMCoreError("head 'nlvr2': the evaluation view has no examples")
        self.predictions = list(zip(identifiers, [bool(p) for p in torch.cat(predicted).tolist()]))
        if int(labelled) == 0:
            raise MMCoreError("head 'nlvr2': the evaluation view has no labelled statements")
        return {"accuracy": int(correct) / int(labelled)}

    def write_predictions(self, directory: Path) -> Path | None:
        """``predictions.csv`` (``identifier,True|False`` lines) of the last :meth:`evaluate`."""
        if not self.predictions:
            return None
        return write_nlvr2_predictions(Path(directory) / PREDICTIONS_CSV, self.predictions)
