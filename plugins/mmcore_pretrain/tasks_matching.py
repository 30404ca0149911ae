"""Image-text matching: ITM (swap the text, LXMERT) and ITM_HS (swap the image for a hard negative, paper §3.3)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.nn import functional as F

from mmcore.api import (
    TEXT_FIELDS,
    Backbone,
    BackboneOutput,
    Batch,
    DataInfo,
    Example,
    ExampleSource,
    Task,
    init_bert_,
)

from .fields import FORWARD_FIELDS

MATCHED, MISMATCHED = 1, 0


class ITMTask(Task):
    """Image-text matching: with ``replace_prob`` the text is one of another image; 2-way classifier on pooled."""

    name: ClassVar[str] = "itm"
    requires: ClassVar[frozenset[str]] = FORWARD_FIELDS | {"text", "img_id"}
    defaults: ClassVar[dict[str, Any]] = {"replace_prob": 0.5}
    order: ClassVar[int] = 0

    def __init__(self, info: DataInfo, backbone: Backbone, **options: Any) -> None:
        super().__init__(info, backbone, **options)
        # Class 1 = matched; the retrieval head copies this layer for zero-shot scoring.
        self.classifier = init_bert_(nn.Linear(backbone.hidden_size, 2))

    def prepare(self, example: Example, source: ExampleSource, rng: random.Random) -> Example:
        """Maybe replace the text by a random other image's text; set ``itm_label``."""
        out = dict(example)  # never mutate the view's own example
        if rng.random() < float(self.options["replace_prob"]):
            out["text"] = source.random_text(rng, exclude_img_id=example["img_id"])
            out["itm_label"] = MISMATCHED
        else:
            out["itm_label"] = MATCHED
        return out

    def loss(self, output: BackboneOutput, batch: Batch) -> Tensor:
        """Cross-entropy of the pooled output's matched/mismatched logits."""
        return F.cross_entropy(self.classifier(output.pooled), batch["itm_label"])


class ITMHardSampleTask(ITMTask):
    """ITM_HS: with ``replace_prob`` the image is one of its top-M hard negatives (a random image if none)."""

    name: ClassVar[str] = "itm_hs"
    requires: ClassVar[frozenset[str]] = FORWARD_FIELDS | {"img_id"}
    defaults: ClassVar[dict[str, Any]] = {"replace_prob": 0.5, "top_m": 100}
    order: ClassVar[int] = 0

    def prepare(self, example: Example, source: ExampleSource, rng: random.Random) -> Example:
        """Maybe replace every visual field by a hard-negative image's; keep the text; set ``itm_label``."""
        out = dict(example)
        if rng.random() >= float(self.options["replace_prob"]):
            out["itm_label"] = MATCHED
            return out
        own = str(example["img_id"])
        negative = _draw_negative(own, source, rng, int(self.options["top_m"]))
        if negative is None:  # a view with a single image cannot make a mismatched pair
            out["itm_label"] = MATCHED
            return out
        image = source.image(negative)
        out.update({key: value for key, value in image.items() if key not in TEXT_FIELDS})
        out["itm_label"] = MISMATCHED
        return out


def _draw_negative(own: str, source: ExampleSource, rng: random.Random, top_m: int) -> str | None:
    """Uniform over the first ``top_m`` hard negatives (the image itself dropped), else any other image."""
    hard = [h for h in source.hard_negatives(own) if h != own][:top_m]
    if hard:
        return hard[rng.randrange(len(hard))]
    ids: Sequence[str] = source.image_ids()
    if len(ids) == 0 or (len(ids) == 1 and ids[0] == own):
        return None
    # One draw, then a shift past ``own`` if it was hit: uniform over the others without a retry loop.
    index = rng.randrange(len(ids))
    if ids[index] == own:
        index = (index + 1 + rng.randrange(len(ids) - 1)) % len(ids)
    return ids[index]
