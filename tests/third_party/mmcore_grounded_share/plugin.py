"""Registers the ``grounded_share`` head: from the pooled output, predict the share of an image's regions whose
detector label the text mentions; it declares its own metrics, which every results table shows."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import mmcore
from mmcore.api import Backbone, Batch, DataInfo, EvalContext, ExampleSource, Head, Metric, Task

TOLERANCE = 0.1


class GroundedShare(Head):
    """Regress the share of real regions whose detector label's first WordPiece occurs in the text."""

    name = "grounded_share"
    metrics = (
        Metric("share_within", "Within 0.1", "Grounded share ±0.1", results=True, headline=1, primary=True,
               description="share of examples whose predicted grounded share is within 0.1 of the truth"),
        Metric("share_error", "Abs error", "Grounded share error", results=True),
        Metric("examples", "Examples", "Grounded examples", results=True, percent=False),  # a count, not a fraction
    )
    display_order = 5  # before the built-in heads: a third party picks its own place

    def __init__(self, info: DataInfo, hidden_size: int, pretrained: dict[str, Task], **options: Any) -> None:
        super().__init__(info, hidden_size, pretrained, **options)
        first = [ids[0] if ids else info.unk_token_id for ids in info.object_token_ids]
        self.register_buffer("label_token", torch.tensor(first, dtype=torch.long), persistent=False)
        self.regressor = nn.Linear(hidden_size, 1)

    def _share(self, batch: Batch) -> Tensor:
        tokens = self.label_token[batch["obj_labels"]]  # [B,O]
        hits = (tokens[:, :, None] == batch["input_ids"][:, None, :]).any(-1).float()
        mask = batch["visual_mask"].float()
        return (hits * mask).sum(1) / mask.sum(1).clamp(min=1)

    def _predict(self, backbone: Backbone, batch: Batch) -> Tensor:
        return self.regressor(backbone.encode(batch).pooled).squeeze(-1)

    def loss(self, backbone: Backbone, batch: Batch) -> Tensor:
        return nn.functional.mse_loss(self._predict(backbone, batch), self._share(batch))

    def evaluate(self, backbone: Backbone, view: ExampleSource, ctx: EvalContext) -> dict[str, float]:
        batches = ctx.batches(view, self.name)  # type: ignore[arg-type]  # a view is a sequence of examples
        error = torch.cat([(self._predict(backbone, batch) - self._share(batch)).abs() for batch in batches])
        return {"share_within": float((error <= TOLERANCE).float().mean()), "share_error": float(error.mean()),
                "examples": float(len(error))}


@mmcore.hookimpl
def mmcore_register_heads(registry) -> None:
    registry.add_head(GroundedShare)
