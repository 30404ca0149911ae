"""Cheap first-stage scores for re-ranking a retrieval shortlist with the cross-encoder.

Two scorers, each far cheaper than the C×I cross-encoder passes:

- ``labels`` (no model): cosine between the set of a caption's word pieces and the set of word pieces of the
  object names the detector found in an image (``obj_labels`` of its real regions, ``DataInfo.object_token_ids``);
  a C×U by U×I product over the U word pieces of object names.
- ``backbone``: the backbone run once per caption (with a single blank region) and once per image (with an empty
  text), a dual-encoder-style cosine between the mean of the caption's text-stream outputs and the mean of the
  image's vision-stream outputs: C + I forward passes instead of C × I.

:func:`shortlist_mask` keeps, for the cross-encoder, each caption's top-K images and each image's top-K captions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from mmcore.api import Backbone, DataInfo, EvalContext, MMCoreError
from mmcore_heads.scoring import PairInputs

FIRST_STAGES = ("labels", "backbone")


def first_stage_scores(kind: str, inputs: PairInputs, info: DataInfo, backbone: Backbone,
                       ctx: EvalContext) -> Tensor:
    """[C,I] first-stage scores by ``kind`` (see the module docstring)."""
    if kind == "labels":
        return label_scores(inputs, info)
    if kind == "backbone":
        return modality_scores(inputs, backbone, ctx)
    raise MMCoreError(f"head 'retrieval': unknown shortlist_by {kind!r}; known: {', '.join(FIRST_STAGES)}")


def label_scores(inputs: PairInputs, info: DataInfo) -> Tensor:
    """Cosine [C,I] between caption word-piece sets and detected-object-name word-piece sets."""
    if "obj_labels" not in inputs.image:
        raise MMCoreError("head 'retrieval': shortlist_by 'labels' needs detector labels (obj_labels) in the "
                          "view's images; use shortlist_by: backbone")
    device = inputs.text["input_ids"].device
    specials = set(info.special_token_ids)
    vocab = sorted({t for name in info.object_token_ids for t in name if t not in specials})
    if not vocab:
        raise MMCoreError("head 'retrieval': the dataset names no object word pieces (object_token_ids); "
                          "use shortlist_by: backbone")
    column = torch.full((max(info.vocab_size, max(vocab) + 1),), -1, dtype=torch.long, device=device)
    column[torch.tensor(vocab, device=device)] = torch.arange(len(vocab), device=device)
    # Object id -> its word pieces, as a 0/1 matrix [num_objects, U].
    index = {t: j for j, t in enumerate(vocab)}
    names = torch.zeros(len(info.object_token_ids), len(vocab), device=device)
    for obj, pieces in enumerate(info.object_token_ids):
        names[obj, [index[t] for t in pieces if t in index]] = 1.0
    ids = inputs.text["input_ids"].clamp(0, column.shape[0] - 1)
    slot = torch.where(inputs.text["attention_mask"].bool(), column[ids], -1) + 1  # 0 = not an object piece
    words = torch.zeros(ids.shape[0], len(vocab) + 1, device=device).scatter_(1, slot, 1.0)[:, 1:]
    labels = inputs.image["obj_labels"].long()
    real = inputs.image.get("visual_mask", torch.ones_like(labels)).bool()
    real &= (labels >= 0) & (labels < len(info.object_token_ids))
    present = torch.zeros(labels.shape[0], len(info.object_token_ids) + 1, device=device)
    present.scatter_(1, torch.where(real, labels + 1, 0), 1.0)
    seen = (present[:, 1:] @ names).clamp(max=1.0)  # [I, U]
    return F.normalize(words, dim=1) @ F.normalize(seen, dim=1).T


def modality_scores(inputs: PairInputs, backbone: Backbone, ctx: EvalContext) -> Tensor:
    """Cosine [C,I] between per-caption text-stream means and per-image vision-stream means (C + I passes)."""
    size = max(1, int(ctx.batch_size))
    text = inputs.text
    feats = inputs.image["visual_feats"]
    blank = {
        "visual_feats": feats.new_zeros(1, 1, feats.shape[-1]),
        "visual_pos": torch.tensor([[[0.0, 0.0, 1.0, 1.0]]], device=feats.device),
        "visual_mask": torch.ones(1, 1, dtype=torch.long, device=feats.device),
    }
    captions = []
    for start in range(0, inputs.num_captions, size):
        stop = min(start + size, inputs.num_captions)
        length = int(inputs.lengths[start:stop].max())
        batch = {k: v[start:stop, :length] for k, v in text.items()}
        batch.update({k: v.expand(stop - start, *v.shape[1:]) for k, v in blank.items()})
        captions.append(_masked_mean(backbone.encode(batch).text.float(), batch["attention_mask"]))
    empty = ctx.collate([{"text": ""}])
    images = []
    for start in range(0, inputs.num_images, size):
        stop = min(start + size, inputs.num_images)
        batch = {k: empty[k].expand(stop - start, -1) for k in text}
        batch.update({k: inputs.image[k][start:stop] for k in ("visual_feats", "visual_pos", "visual_mask")
                      if k in inputs.image})
        mask = batch.get("visual_mask", torch.ones(stop - start, feats.shape[1], device=feats.device))
        images.append(_masked_mean(backbone.encode(batch).vision.float(), mask))
    return F.normalize(torch.cat(captions), dim=1) @ F.normalize(torch.cat(images), dim=1).T


def _masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def shortlist_mask(first: Tensor, k: int) -> np.ndarray:
    """[C,I] bool: each caption's top-``k`` images and each image's top-``k`` captions by ``first`` [C,I].

    Ties are broken by index (a stable sort), so the shortlist is deterministic.
    """
    first = first.float().cpu()
    num_captions, num_images = first.shape
    mask = torch.zeros(num_captions, num_images, dtype=torch.bool)
    top_images = torch.argsort(-first, dim=1, stable=True)[:, : min(k, num_images)]
    mask.scatter_(1, top_images, True)
    top_captions = torch.argsort(-first, dim=0, stable=True)[: min(k, num_captions)]
    mask.scatter_(0, top_captions, True)
    return mask.numpy()


def shortlist_coverage(mask: np.ndarray, caption_image: Sequence[int]) -> float:
    """Share of (caption, own image) pairs inside the shortlist (an upper bound on IR recall)."""
    owner = np.asarray(caption_image, dtype=np.int64)
    return float(mask[np.arange(owner.shape[0]), owner].mean()) if owner.size else 0.0
