"""Batch corruptions shared by tasks: token masking (MLM), region masking (MRFR + MOC), triplet shuffling (IFRS).

Each helper works in place on a collated device batch, draws only from the given ``torch.Generator`` and never
synchronises with the host, so the engine can run it inside a captured or compiled step. Each is idempotent:
a second call in the same step is a no-op, which is how MRFR and MOC share ONE region mask.

Ordering (``Task.order``): IFRS shuffles at 20, masking runs at 30. So:

- ``ifrs_target`` holds the features *before* shuffling (IFRS predicts the original order, paper eq. 1);
- ``visual_feats_orig`` holds the features *after* shuffling, *before* masking: MRFR reconstructs what the
  model would have seen at that position had it not been masked. The detector fields (``obj_labels``, ...)
  travel with the shuffled features, so MOC's targets also describe the feature that sits at the position.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmcore.api import Batch

from .fields import DETECTOR_FIELDS, IGNORE_INDEX


def _rand(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator, device=generator.device)


def content_tokens(input_ids: Tensor, attention_mask: Tensor, special_ids: Tensor) -> Tensor:
    """[B,T] bool: real (non-padding) tokens that are not special tokens."""
    return attention_mask.bool() & ~torch.isin(input_ids, special_ids)


def mask_tokens_once(
    batch: Batch,
    generator: torch.Generator,
    prob: float,
    *,
    special_ids: Tensor,
    mask_token_id: int,
    random_pool: Tensor,
    max_per_row: int | None = None,
    focus: Tensor | None = None,
) -> None:
    """BERT masking: select content tokens with ``prob``; 80% [MASK], 10% a random ``random_pool`` id, 10% kept.

    Sets ``mlm_labels`` (original id at selected positions, -100 elsewhere) and rewrites ``input_ids``. With
    ``max_per_row`` a row keeps at most that many selections, chosen at random (BERT's max_predictions_per_seq).
    With ``focus`` ([B,T] bool) a row selects only among its focus tokens; a row with none, among all its tokens.
    """
    if "mlm_labels" in batch:
        return
    ids: Tensor = batch["input_ids"]
    priority = _rand(ids.shape, generator)
    eligible = content_tokens(ids, batch["attention_mask"], special_ids)
    if focus is not None:
        marked = eligible & focus
        eligible = torch.where(marked.any(dim=1, keepdim=True), marked, eligible)
    selected = eligible & (priority < prob)
    if max_per_row is not None and max_per_row < ids.shape[1]:
        # The selected tokens with the smallest priorities survive: a uniform subset, static shapes, no sync.
        rank = torch.where(selected, priority, 2.0).argsort(dim=1).argsort(dim=1)
        selected = selected & (rank < max_per_row)
    action = _rand(ids.shape, generator)
    to_mask = selected & (action < 0.8)
    to_random = selected & (action >= 0.8) & (action < 0.9)
    pick = torch.randint(random_pool.numel(), ids.shape, generator=generator, device=generator.device)
    corrupted = torch.where(to_mask, torch.full_like(ids, mask_token_id), ids)
    corrupted = torch.where(to_random, random_pool[pick], corrupted)
    batch["mlm_labels"] = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    batch["input_ids"] = corrupted


def mask_regions_once(
    batch: Batch, generator: torch.Generator, prob: float, *, max_per_row: int | None = None
) -> None:
    """LXMERT region masking: select real regions with ``prob``; 80% zeroed, 10% swapped, 10% kept.

    A swapped region takes a random real region of another image of the batch (of its own image only when the
    batch holds a single image). Sets ``region_mask`` [B,O] bool, ``visual_feats_orig`` and ``region_index``
    [B,K] long (each row's selected regions first, in order, then the others; K = ``max_per_row`` capped at O,
    else O); rewrites ``visual_feats``. With ``max_per_row`` a row keeps at most that many selections, chosen at
    random, so the first K entries of ``region_index`` hold every selected region: losses gather them into a
    fixed [B,K] block instead of running their heads on all O regions. The first caller's ``prob`` and
    ``max_per_row`` win when MRFR and MOC are configured differently.
    """
    if "region_mask" in batch:
        return
    feats: Tensor = batch["visual_feats"]
    real = batch["visual_mask"].bool()
    b, o, _ = feats.shape
    priority = _rand((b, o), generator)
    selected = real & (priority < prob)
    if max_per_row is not None and max_per_row < o:
        # The selected regions with the smallest priorities survive: a uniform subset, static shapes, no sync.
        rank = torch.where(selected, priority, 2.0).argsort(dim=1).argsort(dim=1)
        selected = selected & (rank < max_per_row)
    action = _rand((b, o), generator)
    to_zero = selected & (action < 0.8)
    to_swap = selected & (action >= 0.8) & (action < 0.9)

    rows = torch.arange(b, device=feats.device)
    if b > 1:
        offset = torch.randint(1, b, (b, o), generator=generator, device=generator.device)
    else:
        offset = torch.zeros((b, o), dtype=torch.long, device=feats.device)
    src_image = (rows[:, None] + offset) % b
    # Put each image's real regions first so a uniform index below its count lands on a real region,
    # whatever the padding layout.
    real_first = torch.argsort((~real).to(torch.int8), dim=1, stable=True)
    src_count = real.sum(1)[src_image].clamp(min=1)
    pick = torch.minimum((_rand((b, o), generator) * src_count).long(), src_count - 1)
    src_region = real_first[src_image, pick]
    swapped = feats[src_image, src_region]

    corrupted = feats.masked_fill(to_zero[..., None], 0.0)
    corrupted = torch.where(to_swap[..., None], swapped, corrupted)
    batch["visual_feats_orig"] = feats
    batch["visual_feats"] = corrupted
    batch["region_mask"] = selected
    width = o if max_per_row is None else min(max_per_row, o)
    batch["region_index"] = selected_first(selected, width)


def selected_first(selected: Tensor, width: int) -> Tensor:
    """[B,width] positions of each row's true entries first (in position order), then the false ones."""
    return torch.argsort((~selected).to(torch.int8), dim=1, stable=True)[:, :width]


def shuffle_triplets_once(batch: Batch, generator: torch.Generator, prob: float) -> None:
    """IFRS: shuffle each triplet of regions (0-2, 3-5, ...) with ``prob`` by a random cyclic permutation.

    Only triplets whose three regions are all real take part, and a cyclic permutation moves every region of a
    shuffled triplet. Only the features move (boxes and text keep their order); the detector fields move with
    their features. Sets ``ifrs_mask`` [B,O] bool and ``ifrs_target`` (the unshuffled features).
    """
    if "ifrs_mask" in batch:
        return
    feats: Tensor = batch["visual_feats"]
    real = batch["visual_mask"].bool()
    b, o, f = feats.shape
    n = o // 3
    device = feats.device
    source = torch.arange(o, device=device).expand(b, o).clone()
    moved = torch.zeros((b, o), dtype=torch.bool, device=device)
    if n > 0:
        whole = real[:, : 3 * n].reshape(b, n, 3).all(-1)
        chosen = whole & (_rand((b, n), generator) < prob)
        # shift 1: (r_i, r_i+1, r_i+2) -> (r_i+1, r_i+2, r_i) as in the paper's example; shift 2: the other cycle.
        shift = (1 + (_rand((b, n), generator) < 0.5).long()) * chosen.long()
        base = torch.arange(n, device=device) * 3
        within = torch.arange(3, device=device)
        src = base[None, :, None] + (within[None, None, :] + shift[..., None]) % 3
        source[:, : 3 * n] = src.reshape(b, 3 * n)
        moved[:, : 3 * n] = chosen[..., None].expand(b, n, 3).reshape(b, 3 * n)

    batch["ifrs_target"] = feats
    batch["ifrs_mask"] = moved
    batch["visual_feats"] = torch.gather(feats, 1, source[..., None].expand(b, o, f))
    for key in DETECTOR_FIELDS:
        value = batch.get(key)
        if isinstance(value, Tensor) and value.shape[:2] == (b, o):
            batch[key] = torch.gather(value, 1, source.reshape((b, o) + (1,) * (value.dim() - 2)).expand_as(value))
