"""Image-text matching: ITM (swap the text, LXMERT) and ITM_HS (swap the image for a hard negative, paper §3.3)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
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
from mmcore.data.hubness import balancing_weights

from .fields import FORWARD_FIELDS

MATCHED, MISMATCHED = 1, 0


class ITMTask(Task):
    """Image-text matching: with ``replace_prob`` the text is one of another image; 2-way classifier on pooled."""

    name: ClassVar[str] = "itm"
    display_order: ClassVar[int] = 80  # the paper's task order (Table 4)
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
    """ITM_HS: with ``replace_prob`` the image is one of its top-M hard negatives (a random image if none).

    ``balance_negatives`` draws each hard negative in inverse proportion to the number of the view's top-M
    lists it is in, instead of uniformly: hub images then stop being mostly mismatched, which otherwise lets the
    classifier lower the loss from the image alone (:mod:`mmcore.data.hubness`).
    """

    name: ClassVar[str] = "itm_hs"
    display_order: ClassVar[int] = 50  # the paper's task order (Table 4)
    requires: ClassVar[frozenset[str]] = FORWARD_FIELDS | {"img_id"}
    defaults: ClassVar[dict[str, Any]] = {"replace_prob": 0.5, "top_m": 100, "balance_negatives": False}
    order: ClassVar[int] = 0

    def __init__(self, info: DataInfo, backbone: Backbone, **options: Any) -> None:
        super().__init__(info, backbone, **options)
        self._weights: dict[int, tuple[ExampleSource, dict[str, float]]] = {}  # id(source) -> (source, weights)

    def prepare(self, example: Example, source: ExampleSource, rng: random.Random) -> Example:
        """Maybe replace every visual field by a hard-negative image's; keep the text; set ``itm_label``."""
        out = dict(example)
        if rng.random() >= float(self.options["replace_prob"]):
            out["itm_label"] = MATCHED
            return out
        own = str(example["img_id"])
        top_m = int(self.options["top_m"])
        weights = self._balancing_weights(source, top_m) if self.options["balance_negatives"] else None
        negative = _draw_negative(own, source, rng, top_m, weights)
        if negative is None:  # a view with a single image cannot make a mismatched pair
            out["itm_label"] = MATCHED
            return out
        image = source.image(negative)
        out.update({key: value for key, value in image.items() if key not in TEXT_FIELDS})
        out["itm_label"] = MISMATCHED
        return out

    def _balancing_weights(self, source: ExampleSource, top_m: int) -> dict[str, float]:
        """1 / in-degree over the view's top-M lists, computed once per view (the source is kept, so its id
        stays its own)."""
        cached = self._weights.get(id(source))
        if cached is None:
            listed = [h for img_id in source.image_ids() for h in _hard_set(source, img_id, top_m)]
            names, members = np.unique(np.array(listed, dtype=str), return_inverse=True)
            weights = balancing_weights(members, len(names))
            cached = self._weights[id(source)] = (source, dict(zip(names.tolist(), weights.tolist())))
        return cached[1]


def _hard_set(source: ExampleSource, own: str, top_m: int) -> list[str]:
    """The first ``top_m`` hard negatives of ``own``, the image itself dropped."""
    return [h for h in source.hard_negatives(own) if h != own][:top_m]


def _draw_negative(own: str, source: ExampleSource, rng: random.Random, top_m: int,
                   weights: Mapping[str, float] | None = None) -> str | None:
    """One of the first ``top_m`` hard negatives (uniformly, or in proportion to ``weights``), else any other
    image."""
    hard = _hard_set(source, own, top_m)
    if hard and weights is not None:
        return rng.choices(hard, weights=[weights[h] for h in hard])[0]
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
