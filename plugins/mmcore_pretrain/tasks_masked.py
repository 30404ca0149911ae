"""Masked-modelling tasks: MLM (tokens), MRFR and MOC (regions; they share one region mask)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from mmcore.api import FOCUS_TOKENS, Backbone, BackboneOutput, Batch, DataInfo, MMCoreError, Task

from .fields import FORWARD_FIELDS, IGNORE_INDEX
from .heads import ObjectHead, TiedLMHead, regression_head
from .masking import mask_regions_once, mask_tokens_once, selected_first


MASK_WORDS = ("focus", "uniform")  # MLM's mask_words: the view's marked words where it marks any, or all alike


def special_token_ids(info: DataInfo) -> list[int]:
    """Every id that is never a prediction target or a random replacement: declared specials and named ones."""
    named = {info.pad_token_id, info.cls_token_id, info.sep_token_id, info.mask_token_id}
    return sorted(set(info.special_token_ids) | named)


class MLMTask(Task):
    """Masked language modelling: predict the 15% selected WordPieces with a decoder tied to the embeddings.

    ``mask_words``: ``focus`` (default) selects, in each text whose view marks words (``focus_tokens``: the
    phrase views' attribute and category words, as the paper's phrase stage masks), only among those; texts
    without marked words, and every text under ``uniform``, select among all their WordPieces alike.

    ``max_predictions`` (per sequence) is off by default: the loss then gathers exactly the selected tokens, a
    boolean gather whose size the host must learn (one sync per step). Set it (e.g. 8 for 20-token texts) to
    cap selections per row and gather a fixed [B, max_predictions] block: static shapes, no sync.
    """

    name: ClassVar[str] = "mlm"
    display_order: ClassVar[int] = 10  # the paper's task order (Table 4)
    requires: ClassVar[frozenset[str]] = FORWARD_FIELDS
    defaults: ClassVar[dict[str, Any]] = {"mask_prob": 0.15, "max_predictions": None, "mask_words": "focus"}
    option_types: ClassVar[dict[str, Any]] = {"max_predictions": int | None}
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
        self.max_predictions = _cap(self.options["max_predictions"], self.name)
        if self.options["mask_words"] not in MASK_WORDS:
            raise MMCoreError(f"task mlm: option 'mask_words' must be one of {', '.join(MASK_WORDS)}, "
                              f"got {self.options['mask_words']!r}")

    def corrupt(self, batch: Batch, generator: torch.Generator) -> None:
        """Mask tokens (sets ``mlm_labels``); with ``mask_words: focus``, the view's marked words."""
        focus = batch.get(FOCUS_TOKENS) if self.options["mask_words"] == "focus" else None
        mask_tokens_once(
            batch,
            generator,
            float(self.options["mask_prob"]),
            special_ids=self.special_ids,
            mask_token_id=self.info.mask_token_id,
            random_pool=self.random_pool,
            max_per_row=self.max_predictions,
            focus=focus,
        )

    def loss(self, output: BackboneOutput, batch: Batch) -> Tensor:
        """Cross-entropy over selected tokens only; 0 when the batch has none."""
        labels: Tensor = batch["mlm_labels"]
        selected = labels != IGNORE_INDEX
        weight = self._backbone[0].word_embeddings().weight
        cap = self.max_predictions
        # Gather first: the vocabulary projection runs on ~15% of positions instead of all of them.
        if cap is None:
            hidden, targets = output.text[selected], labels[selected]
        else:
            # Selected positions first in each row (at most ``cap`` of them), then -100 filler that CE ignores.
            first = selected_first(selected, min(cap, labels.shape[1]))
            hidden = torch.gather(output.text, 1, first[..., None].expand(-1, -1, output.text.shape[-1]))
            hidden, targets = hidden.flatten(0, 1), torch.gather(labels, 1, first).flatten()
        total = F.cross_entropy(self.head(hidden, weight), targets, reduction="sum", ignore_index=IGNORE_INDEX)
        return total / selected.sum().clamp(min=1)


class MRFRTask(Task):
    """Masked region feature regression: smooth-L1 to the unmasked ROI feature on masked regions.

    ``max_predictions`` (per image; shared with MOC, the first task to mask wins) caps the masked regions of a
    row and lets the head run on a fixed [B, max_predictions] block of them instead of on every region.
    """

    name: ClassVar[str] = "mrfr"
    display_order: ClassVar[int] = 20  # the paper's task order (Table 4)
    requires: ClassVar[frozenset[str]] = FORWARD_FIELDS
    defaults: ClassVar[dict[str, Any]] = {"mask_prob": 0.15, "max_predictions": None}
    option_types: ClassVar[dict[str, Any]] = {"max_predictions": int | None}
    order: ClassVar[int] = 30

    def __init__(self, info: DataInfo, backbone: Backbone, **options: Any) -> None:
        super().__init__(info, backbone, **options)
        self.head = regression_head(backbone.hidden_size, info.feature_dim)
        self.max_predictions = _cap(self.options["max_predictions"], self.name)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> None:
        """Mask regions (shared with MOC; sets ``region_mask``, ``region_index`` and ``visual_feats_orig``)."""
        mask_regions_once(batch, generator, float(self.options["mask_prob"]),
                          max_per_row=self.max_predictions)

    def loss(self, output: BackboneOutput, batch: Batch) -> Tensor:
        """LXMERT's MRFR: per-region smooth-L1 (mean over dims), summed on masked regions / real regions / p."""
        vision, counted, index = masked_regions(output.vision, batch)
        pred = self.head(vision).float()
        target = batch["visual_feats_orig"]
        if index is not None:
            target = torch.gather(target, 1, index[..., None].expand(-1, -1, target.shape[-1]))
        per_region = F.smooth_l1_loss(pred, target.float(), reduction="none").mean(-1)
        # where, not multiply: whatever the head predicts on unmasked regions cannot leak in (not even NaN).
        total = torch.where(counted, per_region, torch.zeros_like(per_region)).sum()
        real = batch["visual_mask"].sum().clamp(min=1)
        return total / real / float(self.options["mask_prob"])


class MOCTask(Task):
    """Masked object classification: confidence-weighted CE to the detector's object and attribute labels.

    With ``masked_only`` the classifiers run only on the masked regions (a fixed [B, max_predictions] block when
    ``max_predictions`` is set, as for MRFR); otherwise on every region.
    """

    name: ClassVar[str] = "moc"
    display_order: ClassVar[int] = 30  # the paper's task order (Table 4)
    requires: ClassVar[frozenset[str]] = FORWARD_FIELDS | {"obj_labels", "obj_conf", "attr_labels", "attr_conf"}
    defaults: ClassVar[dict[str, Any]] = {"mask_prob": 0.15, "masked_only": True, "max_predictions": None}
    option_types: ClassVar[dict[str, Any]] = {"max_predictions": int | None}
    order: ClassVar[int] = 30

    def __init__(self, info: DataInfo, backbone: Backbone, **options: Any) -> None:
        super().__init__(info, backbone, **options)
        self.head = ObjectHead(backbone.hidden_size, info.num_objects, info.num_attributes)
        self.max_predictions = _cap(self.options["max_predictions"], self.name)

    def corrupt(self, batch: Batch, generator: torch.Generator) -> None:
        """Mask regions (shared with MRFR). With ``masked_only: false`` the input is still masked, as in LXMERT."""
        mask_regions_once(batch, generator, float(self.options["mask_prob"]),
                          max_per_row=self.max_predictions)

    def loss(self, output: BackboneOutput, batch: Batch) -> Tensor:
        """Sum over counted regions of conf-weighted CE (objects + attributes), normalised like MRFR.

        Masked-only: / real regions / p (about a mean over masked regions). Every region: / real regions.
        """
        real = batch["visual_mask"].bool()
        if self.options["masked_only"]:
            vision, counted, index = masked_regions(output.vision, batch)
        else:
            vision, counted, index = output.vision, real, None
        obj_logits, attr_logits = self.head(vision)
        fields = [batch[k] for k in ("obj_labels", "obj_conf", "attr_labels", "attr_conf")]
        if index is not None:
            fields = [torch.gather(f, 1, index) for f in fields]
        obj_labels, obj_conf, attr_labels, attr_conf = fields
        per_region = _weighted_ce(obj_logits, obj_labels, obj_conf, counted)
        per_region = per_region + _weighted_ce(attr_logits, attr_labels, attr_conf, counted)
        total = torch.where(counted, per_region, torch.zeros_like(per_region)).sum()
        scale = float(self.options["mask_prob"]) if self.options["masked_only"] else 1.0
        return total / real.sum().clamp(min=1) / scale


def masked_regions(vision: Tensor, batch: Batch) -> tuple[Tensor, Tensor, Tensor | None]:
    """(region states, masked flags, gather index or None) for the masked-region losses.

    When region masking was capped (``region_index`` narrower than O) the states and flags are gathered into
    the fixed [B,K] block that holds every masked region; otherwise all O regions are returned as they are.
    """
    selected: Tensor = batch["region_mask"]
    index: Tensor | None = batch.get("region_index")
    if index is None or index.shape[1] >= vision.shape[1]:
        return vision, selected, None
    hidden = torch.gather(vision, 1, index[..., None].expand(-1, -1, vision.shape[-1]))
    return hidden, torch.gather(selected, 1, index), index


def _cap(value: Any, task: str) -> int | None:
    """A ``max_predictions`` option as an int (None = no cap); anything else is a located user error."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise MMCoreError(f"task {task}: option 'max_predictions' must be a positive integer or null, got {value!r}")
    return value


def _weighted_ce(logits: Tensor, labels: Tensor, conf: Tensor, counted: Tensor) -> Tensor:
    """Per-region CE [B,O] times the detector confidence; labels outside ``counted`` are made safe first."""
    # Padding regions may carry any label (e.g. -1); an out-of-range class is a device-side assert on CUDA.
    safe = torch.where(counted, labels.long(), torch.zeros_like(labels, dtype=torch.long))
    ce = F.cross_entropy(logits.flatten(0, 1).float(), safe.flatten(), reduction="none").view(labels.shape)
    return ce * conf.float()
