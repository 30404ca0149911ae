"""Hubs in a hard-negative file: in-degree weights, how often each image is drawn, the text-blind loss floor."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mmcore.data.hubness import balancing_weights, negative_frequencies, text_blind_loss

# Four images; image 3 is a hub (in three of the four lists). Ragged lists are fine for the weights.
ROWS = [[1, 3], [3], [3], [0]]


def test_balancing_weights_are_one_over_in_degree() -> None:
    members = np.concatenate([np.array(r) for r in ROWS])
    assert balancing_weights(members, 5).tolist() == [1.0, 1.0, 0.0, 1 / 3, 0.0]


def test_negative_frequencies_by_hand() -> None:
    pool = np.array([[1, 3], [3, 3], [3, 3], [0, 0]])  # ROWS padded by repeating: the same draws
    # Uniform: every row's image is matched 1/4 of the time, its negative uniform over its row.
    assert negative_frequencies(pool) == pytest.approx([1 / 4, 1 / 8, 0, 5 / 8])
    # Balanced: row 0 draws image 1 with weight 1 and the hub with 1/3 -> 3/4 and 1/4 of that row's 1/4.
    weights = balancing_weights(np.concatenate([np.array(r) for r in ROWS]), 4)  # in-degrees 1, 1, 0, 3
    assert negative_frequencies(pool, weights) == pytest.approx([1 / 4, 3 / 16, 0, 9 / 16])


def test_text_blind_loss_by_hand() -> None:
    # Image 0 is image 1's and image 2's negative: mismatched 1/3 of the time, matched 1/6; image 1 half and
    # half; image 2 never mismatched. Best blind predictions: 1/3, 1/2, 1.
    pool = np.array([[1], [0], [0]])
    expected = -(1 / 6 * math.log(1 / 3) + 1 / 3 * math.log(2 / 3)) - 1 / 3 * math.log(1 / 2)
    assert text_blind_loss(pool) == pytest.approx(expected)
    # Every image some other one's only negative: the image alone says nothing.
    assert text_blind_loss(np.array([[1], [2], [0]])) == pytest.approx(math.log(2))
    assert text_blind_loss(np.array([[1], [2], [0]]), replace_prob=0.2) == pytest.approx(
        -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)))


def test_balancing_removes_most_of_a_hub_shortcut() -> None:
    # Nearest neighbours of random points: lopsided in-degrees, so the uniform draw leaks the label.
    from mmcore.data.hardneg import nearest_images

    rng = np.random.default_rng(0)
    pool = nearest_images(rng.standard_normal((400, 32)), top=20)
    uniform = text_blind_loss(pool)
    balanced = text_blind_loss(pool, balancing_weights(pool, len(pool)))
    assert uniform < math.log(2) - 0.02
    assert math.log(2) - balanced < (math.log(2) - uniform) / 4
