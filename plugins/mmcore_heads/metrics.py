"""Downstream metrics as pure tensor functions: VQA soft accuracy, GQA exact match, NLVR2 (classification)
accuracy and retrieval recall at K.

Retrieval ranks are 0-based and pessimistic about ties: a competing candidate whose score is greater than *or
equal to* the ground truth's counts as ranked above it. A constant scorer therefore gets R@K = 0 (not 1), and
ties never inflate a result. In text retrieval an image's ground truth is its best-scoring caption and only
*non*-ground-truth captions compete with it, which is "the best rank among its ground-truth captions": another
ground-truth caption tied with the best one is still a hit, not a competitor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def vqa_scores(logits_or_pred: Tensor, targets: Tensor) -> Tensor:
    """Per-question soft score ``targets[q, prediction[q]]`` [N]; predictions are argmax of [N,A] logits or ids [N]."""
    if targets.dim() != 2:
        raise ValueError(f"targets must be [N, A] soft scores, got shape {tuple(targets.shape)}")
    pred = logits_or_pred.argmax(dim=-1) if logits_or_pred.dim() == 2 else logits_or_pred.long()
    if pred.shape[0] != targets.shape[0]:
        raise ValueError(f"{pred.shape[0]} predictions for {targets.shape[0]} targets")
    return targets.gather(1, pred.view(-1, 1).to(targets.device)).squeeze(1).float()


def vqa_accuracy(logits_or_pred: Tensor, targets: Tensor) -> float:
    """VQA accuracy in [0,1]: the mean over questions of the soft score of the predicted answer."""
    scores = vqa_scores(logits_or_pred, targets)
    if scores.numel() == 0:
        raise ValueError("VQA accuracy of zero questions is undefined")
    return float(scores.mean())


def exact_match_scores(logits_or_pred: Tensor, targets: Tensor) -> Tensor:
    """Per-question 1.0 when the predicted answer is a gold one (``targets[q, prediction] > 0``), else 0.0 [N].

    GQA's rule (LXMERT: ``ans in label``): a question has one answer, scored 1.0, and a question whose answer is
    not in the table can never be answered right.
    """
    return (vqa_scores(logits_or_pred, targets) > 0).float()


def exact_match_accuracy(logits_or_pred: Tensor, targets: Tensor) -> float:
    """GQA accuracy in [0,1]: the share of questions whose predicted answer is the gold answer."""
    scores = exact_match_scores(logits_or_pred, targets)
    if scores.numel() == 0:
        raise ValueError("exact-match accuracy of zero questions is undefined")
    return float(scores.mean())


def classification_hits(logits_or_pred: Tensor, labels: Tensor, ignore_index: int = -1) -> tuple[Tensor, Tensor]:
    """(correct [N] bool, labelled [N] bool): argmax of [N,C] logits (or class ids [N]) against ``labels`` [N];
    examples labelled ``ignore_index`` are neither correct nor labelled."""
    pred = logits_or_pred.argmax(dim=-1) if logits_or_pred.dim() == 2 else logits_or_pred.long()
    labels = labels.to(pred.device).long().view(-1)
    if pred.shape != labels.shape:
        raise ValueError(f"{pred.shape[0]} predictions for {labels.shape[0]} labels")
    labelled = labels != ignore_index
    return (pred == labels) & labelled, labelled


def classification_accuracy(logits_or_pred: Tensor, labels: Tensor, ignore_index: int = -1) -> float:
    """NLVR2 accuracy in [0,1]: the share of labelled examples whose predicted class is the label."""
    correct, labelled = classification_hits(logits_or_pred, labels, ignore_index)
    if not bool(labelled.any()):
        raise ValueError("accuracy over zero labelled examples is undefined")
    return float(correct.sum()) / int(labelled.sum())


def _caption_image_tensor(caption_image: Sequence[int] | Tensor, scores: Tensor) -> Tensor:
    owner = torch.as_tensor(caption_image, dtype=torch.long, device=scores.device)
    if scores.dim() != 2 or owner.shape != (scores.shape[0],):
        raise ValueError(
            f"scores must be [C, I] with one caption_image entry per caption; got scores {tuple(scores.shape)} "
            f"and {owner.numel()} caption_image entries"
        )
    if owner.numel() and (int(owner.min()) < 0 or int(owner.max()) >= scores.shape[1]):
        raise ValueError(f"caption_image has an index outside [0, {scores.shape[1]})")
    return owner


def image_retrieval_ranks(scores: Tensor, caption_image: Sequence[int] | Tensor) -> Tensor:
    """0-based rank [C] of each caption's image among all images (ties pessimistic)."""
    owner = _caption_image_tensor(caption_image, scores)
    truth = scores.gather(1, owner.view(-1, 1))
    # The ground truth itself satisfies ">=", hence the -1.
    return (scores >= truth).sum(dim=1) - 1


def text_retrieval_ranks(scores: Tensor, caption_image: Sequence[int] | Tensor) -> Tensor:
    """0-based rank [I] of each image's best ground-truth caption among all captions (ties pessimistic)."""
    owner = _caption_image_tensor(caption_image, scores)
    images = torch.arange(scores.shape[1], device=scores.device)
    is_truth = owner.view(-1, 1) == images.view(1, -1)  # [C, I]
    if not bool(is_truth.any(dim=0).all()):
        missing = (~is_truth.any(dim=0)).nonzero().flatten()[:5].tolist()
        raise ValueError(f"every image needs at least one caption; images without one include {missing}")
    best = scores.masked_fill(~is_truth, float("-inf")).max(dim=0).values  # [I]
    return ((scores >= best.view(1, -1)) & ~is_truth).sum(dim=0)


def _recalls(ranks: Tensor, ks: Sequence[int], prefix: str) -> dict[str, float]:
    out = {f"{prefix}_r{k}": float((ranks < k).float().mean()) for k in ks}
    out[f"{prefix}_mean"] = sum(out.values()) / len(ks)
    return out


def recall_at_k(
    scores: Tensor, caption_image: Sequence[int] | Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Standard retrieval recalls from a [C,I] score matrix: ``ir_r{k}``, ``tr_r{k}``, ``ir_mean``, ``tr_mean``.

    IR: each caption ranks every image (share of captions whose image is in the top K). TR: each image ranks
    every caption, its rank being that of its best ground-truth caption (share of images).
    """
    if not ks:
        raise ValueError("ks must name at least one K")
    scores = scores.float()
    return {
        **_recalls(image_retrieval_ranks(scores, caption_image), ks, "ir"),
        **_recalls(text_retrieval_ranks(scores, caption_image), ks, "tr"),
    }


def first_captions(caption_image: Sequence[int] | Tensor, num_images: int) -> Tensor:
    """Index [I] of each image's first caption (the lowest caption index that belongs to it)."""
    owner = torch.as_tensor(caption_image, dtype=torch.long)
    count = owner.numel()
    # Indexed assignment with repeated indices has no defined winner; a min-reduction does.
    first = torch.full((num_images,), count, dtype=torch.long)
    first.scatter_reduce_(0, owner, torch.arange(count), reduce="amin")
    if bool((first >= count).any()):
        raise ValueError("every image needs at least one caption for the first-caption variant")
    return first


def first_caption_tr(
    scores: Tensor, caption_image: Sequence[int] | Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """LXMERT-S's text-retrieval variant, ``tr_first_caption_r{k}``: each image ranks only the first caption of
    every image (an I×I problem, not the standard 5-captions-per-image one)."""
    if not ks:
        raise ValueError("ks must name at least one K")
    first = first_captions(caption_image, scores.shape[1]).to(scores.device)
    sub = scores.float().index_select(0, first)  # row j = first caption of image j
    ranks = text_retrieval_ranks(sub, torch.arange(sub.shape[0], device=scores.device))
    return {f"tr_first_caption_r{k}": float((ranks < k).float().mean()) for k in ks}


def recall_hits(
    scores: Tensor, caption_image: Sequence[int] | Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, Tensor]:
    """Each query's hit behind :func:`recall_at_k` and :func:`first_caption_tr`: per metric a [Q] tensor whose mean is
    that metric (IR: one value per caption; TR: per image; ``*_mean``: the query's mean hit over ``ks``)."""
    if not ks:
        raise ValueError("ks must name at least one K")
    scores = scores.float()
    out: dict[str, Tensor] = {}
    for prefix, ranks in (("ir", image_retrieval_ranks(scores, caption_image)),
                          ("tr", text_retrieval_ranks(scores, caption_image))):
        hits = {f"{prefix}_r{k}": (ranks < k).double() for k in ks}
        out.update(hits)
        out[f"{prefix}_mean"] = torch.stack(list(hits.values())).mean(dim=0)
    first = first_captions(caption_image, scores.shape[1]).to(scores.device)
    sub = scores.index_select(0, first)
    ranks = text_retrieval_ranks(sub, torch.arange(sub.shape[0], device=scores.device))
    out.update({f"tr_first_caption_r{k}": (ranks < k).double() for k in ks})
    return out
