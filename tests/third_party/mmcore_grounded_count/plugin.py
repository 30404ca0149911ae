"""Registers the ``grounded_count`` task: predict how many regions' detector labels the text mentions."""

from __future__ import annotations

import torch
from torch import Tensor, nn

import mmcore
from mmcore import BackboneOutput, Batch, Task
from mmcore.api import OptionError


class GroundedCount(Task):
    """Regress the share of real regions whose detector label's first WordPiece occurs in the text."""

    name = "grounded_count"
    defaults = {"scale": 1.0}
    order = 10  # from clean inputs, before any masking

    @classmethod
    def check_options(cls, options) -> None:
        if options["scale"] < 0:
            raise OptionError("scale", f"must be >= 0 (it multiplies a squared error), got {options['scale']}")

    def __init__(self, info, backbone, **options) -> None:
        super().__init__(info, backbone, **options)
        first = [ids[0] if ids else info.unk_token_id for ids in info.object_token_ids]
        self.register_buffer("label_token", torch.tensor(first, dtype=torch.long), persistent=False)
        self.regressor = nn.Linear(backbone.hidden_size, 1)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> None:
        tokens = self.label_token[batch["obj_labels"]]  # [B,O]
        hits = (tokens[:, :, None] == batch["input_ids"][:, None, :]).any(-1).float()
        mask = batch["visual_mask"].float()
        batch["grounded_share"] = (hits * mask).sum(1) / mask.sum(1).clamp(min=1)

    def loss(self, output: BackboneOutput, batch: Batch) -> Tensor:
        pred = self.regressor(output.pooled).squeeze(-1)
        return self.options["scale"] * nn.functional.mse_loss(pred, batch["grounded_share"])


@mmcore.hookimpl
def mmcore_register_tasks(registry) -> None:
    registry.add_task(GroundedCount)
