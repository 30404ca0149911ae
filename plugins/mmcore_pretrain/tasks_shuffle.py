"""IFRS (paper §3.1): shuffle region-feature triplets, regress the original features at shuffled positions."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor

from mmcore.api import Backbone, BackboneOutput, Batch, DataInfo, Task

from .fields import FORWARD_FIELDS
from .heads import regression_head
from .masking import shuffle_triplets_once


class IFRSTask(Task):
    """Image Features Random Shuffle: predict each shuffled region's original ROI feature (squared L2).

    The paper shuffles R, the FC-projected features; the projection is per region, so shuffling the ROI
    features while the boxes stay put is the same input. Runs before region masking (order 20 < 30), so its
    targets are the unshuffled features while MRFR's are the shuffled-but-unmasked ones (see ``masking``).
    """

    name: ClassVar[str] = "ifrs"
    display_order: ClassVar[int] = 60  # the paper's task order (Table 4)
    requires: ClassVar[frozenset[str]] = FORWARD_FIELDS
    defaults: ClassVar[dict[str, Any]] = {"shuffle_prob": 0.05}
    order: ClassVar[int] = 20

    def __init__(self, info: DataInfo, backbone: Backbone, **options: Any) -> None:
        super().__init__(info, backbone, **options)
        self.head = regression_head(backbone.hidden_size, info.feature_dim)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> None:
        """Shuffle triplets (sets ``ifrs_mask`` and ``ifrs_target``)."""
        shuffle_triplets_once(batch, generator, float(self.options["shuffle_prob"]))

    def loss(self, output: BackboneOutput, batch: Batch) -> Tensor:
        """Paper eq. (1): sum over shuffled regions of ||h - f||², averaged over the batch; 0 if none moved."""
        pred = self.head(output.vision).float()
        per_region = (pred - batch["ifrs_target"].float()).pow(2).sum(-1)
        moved: Tensor = batch["ifrs_mask"]
        total = torch.where(moved, per_region, torch.zeros_like(per_region)).sum()
        return total / moved.shape[0]
