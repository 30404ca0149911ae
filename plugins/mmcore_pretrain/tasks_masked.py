"""Masked-modelling tasks: MLM (tokens), MRFR and MOC (regions; they share one region mask)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from mmcore.api import Backbone, BackboneOutput, Batch, DataInfo, Task

from .fields import FORWARD_FIELDS, IGNORE_INDEX
from .heads import ObjectHead, TiedLMHead, regression_head
from .masking import mask_regions_once, mask_tokens_once


def special_token_ids(info: DataInfo) -> list[int]:
    """Every id that is never a prediction target or a random replacement: declared specials and named ones."""
    named = {info.pad_token_id, info.cls_token_id, info.sep_token_id, info.mask_token_id}
    return sorted(set(info.special_token_ids) | named)


class MLMTask(Task):
    """Masked language modelling: predict the 15% selected WordPieces with a decoder tied to the embeddings.

    ``max_predictions`` (per sequence) is off by default: the loss then gathers exactly the selected tokens, a
    boolean gather whose size the host must learn (one sync per step). Set it (e.g. 8 for 20-token texts) to
    cap selections per row and gather a fixed [B, max_predictions] block: static shapes, no sync.
    """

    name: ClassVar[str] = "mlm"
    requires: ClassVar[frozenset[str]] = FORWARD_FIELDS
    defaults: ClassVar[dict[str, Any]] = {"mask_prob": 0.15, "max_predictions": None}
    order: ClassVar[int] = 30

    def __init__(self, info: DataInfo, backbone: Backbone, **options: Any) -> None:
        super().__init__(info, backbone, **options)
        # A tuple keeps the backbone out of this module's parameters and state dict.
        self._backbone = (backbone,)
        embeddings = backbone.word_embeddings()
        self.head = TiedLMHead(backbone.hidden_size, embeddings.embedding_dim, embeddings.num_embeddings)
        specials = special_token_ids(info)
        vocab = min(info.vocab_size, embeddings.num_embeddings)
        pool = [i for i in range(vocab) if i not in set(specials)]
        self.register_buffer("special_ids", torch.tensor(specials, dtype=torch.long), persistent=False)
        self.register_buffer("random_pool", torch.tensor(pool, dtype=torch.long), persistent=False)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> None:
        """Mask tokens (sets ``mlm_labels``)."""
        mask_tokens_once(
            batch,
            generator,
            float(self.options["mask_prob"]),
            special_ids=self.special_ids,
            mask_token_id=self.info.mask_token_id,
            random_pool=self.random_pool,
            max_per_row=self._max_predictions(),
        )

    def _max_predictions(self) -> int | None:
        value = self.options["max_predictions"]
        return None if value is None else int(value)

    def loss(self, output: BackboneOutput, batch: Batch) -> Tensor:
        """Cross-entropy over selected tokens only; 0 when the batch has none."""
        labels: Tensor = batch["mlm_labels"]
        selected = labels != IGNORE_INDEX
        weight = self._backbone[0].word_embeddings().weight
        cap = self._max_predictions()
        # Gather first: the vocabulary projection runs on ~15% of positions instead of all of them.
        if cap is None:
            hidden, targets = output.text[selected], labels[selected]
        else:
            # Selected positions first in each row (at most ``cap`` of them), then -100 filler that CE ignores.
            first = torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, : min(cap, labels.shape[1])]
            hidden = torch.gather(output.text, 1, first[..., None].expand(-1, -1, output.text.shape[-1]))
            hidden, targets = hidden.flatten(0, 1), torch.gather(labels, 1, first).flatten()
        total = F.cross_entropy(self.head(hidden, weight), targets, reduction="sum", ignore_index=IGNORE_INDEX)
        return total / selected.sum().clamp(min=1)


class MRFRTask(Task):
    """Masked region feature regression: smooth-L1 to the unmasked ROI feature on masked regions."""

    name: ClassVar[str] = "mrfr"
    requires: ClassVar[frozenset[str]] = FORWARD_FIELDS
    defaults: ClassVar[dict[str, Any]] = {"mask_prob": 0.15}
    order: ClassVar[int] = 30

    def __init__(self, info: DataInfo, backbone: Backbone, **options: Any) -> None:
        super().__init__(info, backbone, **options)
        self.head = regression_head(backbone.hidden_size, info.feature_dim)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> None:
        """Mask regions (shared with MOC; sets ``region_mask`` and ``visual_feats_orig``)."""
        mask_regions_once(batch, generator, float(self.options["mask_prob"]))

    def loss(self, output: BackboneOutput, batch: Batch) -> Tensor:
        """LXMERT's MRFR: per-region smooth-L1 (mean over dims), summed on masked regions / real regions / p."""
        pred = self.head(output.vision).float()
        target = batch["visual_feats_orig"].float()
        per_region = F.smooth_l1_loss(pred, target, reduction="none").mean(-1)
        # where, not multiply: whatever the head predicts on unmasked regions cannot leak in (not even NaN).
        total = torch.where(batch["region_mask"], per_region, torch.zeros_like(per_region)).sum()
        real = batch["visual_mask"].sum().clamp(min=1)
        return total / real / float(self.options["mask_prob"])


class MOCTask(Task):
    """Masked object classification: confidence-weighted CE to the detector's object and attribute labels."""

    name: ClassVar[str] = "moc"
    requires: ClassVar[frozenset[str]] = FORWARD_FIELDS | {"obj_labels", "obj_conf", "attr_labels", "attr_conf"}
    defaults: ClassVar[dict[str, Any]] = {"mask_prob": 0.15, "masked_only": True}
    order: ClassVar[int] = 30

    def __init__(self, info: DataInfo, backbone: Backbone, **options: Any) -> None:
        super().__init__(info, backbone, **options)
        self.head = ObjectHead(backbone.hidden_size, info.num_objects, info.num_attributes)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> None:
        """Mask regions (shared with MRFR). With ``masked_only: false`` the input is still masked, as in LXMERT."""
        mask_regions_once(batch, generator, float(self.options["mask_prob"]))

    def loss(self, output: BackboneOutput, batch: Batch) -> Tensor:
        """Sum over counted regions of conf-weighted CE (objects + attributes), normalised like MRFR.

        Masked-only: / real regions / p (about a mean over masked regions). Every region: / real regions.
        """
        obj_logits, attr_logits = self.head(output.vision)
        real = batch["visual_mask"].bool()
        counted: Tensor = batch["region_mask"] if self.options["masked_only"] else real
        per_region = _weighted_ce(obj_logits, batch["obj_labels"], batch["obj_conf"], counted)
        per_region = per_region + _weighted_ce(attr_logits, batch["attr_labels"], batch["attr_conf"], counted)
        total = torch.where(counted, per_region, torch.zeros_like(per_region)).sum()
        scale = float(self.options["mask_prob"]) if self.options["masked_only"] else 1.0
        return total / real.sum().clamp(min=1) / scale


def _weighted_ce(logits: Tensor, labels: Tensor, conf: Tensor, counted: Tensor) -> Tensor:
    """Per-region CE [B,O] times the detector confidence; labels outside ``counted`` are made safe first."""
    # Padding regions may carry any label (e.g. -1); an out-of-range class is a device-side assert on CUDA.
    safe = torch.where(counted, labels.long(), torch.zeros_like(labels, dtype=torch.long))
    ce = F.cross_entropy(logits.flatten(0, 1).float(), safe.flatten(), reduction="none").view(labels.shape)
    return ce * conf.float()
