"""Statistics of a hard-negative file (any task's): its hub images, and the shortcut they give a matching task.

Nearest-neighbour lists are lopsided: a few *hub* images sit in very many images' lists, others in none. When a
matching task draws each mismatched image uniformly from the matched image's list, hubs are shown far
more often as mismatched than as matched, so a classifier can lower the loss by recognising the image alone,
without reading the text. :func:`text_blind_loss` is the lowest loss such a classifier can reach; ln 2 means
the image alone says nothing. :func:`balancing_weights` draws each list member in inverse proportion to the
number of lists it is in, which makes every image about equally likely to be drawn.

``pool`` is the hard-negative file's [N, top] index array: row i lists image i's hard negatives.
"""

from __future__ import annotations

import numpy as np

__all__ = ["balancing_weights", "negative_frequencies"]


def balancing_weights(members: np.ndarray, num_images: int) -> np.ndarray:
    """Draw weight [num_images] of each image: 1 / how many lists it is in (0 if none). ``members``: every
    list's entries, in any shape (a pool, or ragged lists concatenated)."""
    count = np.bincount(np.asarray(members, dtype=np.int64).ravel(), minlength=num_images).astype(np.float64)
    return np.divide(1.0, count, out=np.zeros_like(count), where=count > 0)


def negative_frequencies(pool: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """How often [N] each image is drawn as the mismatched one (sums to 1) when every row's image is the matched
    one equally often and its mismatched image is drawn from its row in proportion to ``weights`` (None:
    uniformly)."""
    pool = np.asarray(pool, dtype=np.int64)
    n = len(pool)
    per_entry = np.ones(pool.shape) if weights is None else np.asarray(weights, dtype=np.float64)[pool]
    per_entry = per_entry / per_entry.sum(axis=1, keepdims=True) / n
    return np.bincount(pool.ravel(), weights=per_entry.ravel(), minlength=n)


def text_blind_loss(pool: np.ndarray, weights: np.ndarray | None = None, replace_prob: float = 0.5) -> float:
    """The lowest mean cross-entropy that a matched/mismatched classifier seeing only the image can reach.

    Each row's image is shown matched with probability ``1 - replace_prob``, else one of its row drawn as in
    :func:`negative_frequencies`. The best such classifier predicts P(matched | image) for each image.
    """
    n = len(pool)
    matched = np.full(n, (1.0 - replace_prob) / n)
    mismatched = replace_prob * negative_frequencies(pool, weights)
    total = matched + mismatched
    loss = 0.0
    for part in (matched, mismatched):
        seen = part > 0
        loss -= float(np.sum(part[seen] * np.log(part[seen] / total[seen])))
    return loss
