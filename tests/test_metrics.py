"""Hand-checked values for the downstream metrics of ``mmcore_heads.metrics``."""

from __future__ import annotations

import pytest
import torch
from mmcore_heads.metrics import (
    classification_accuracy,
    classification_hits,
    exact_match_accuracy,
    exact_match_scores,
    first_caption_tr,
    first_captions,
    image_retrieval_ranks,
    recall_at_k,
    recall_hits,
    text_retrieval_ranks,
    vqa_accuracy,
)

# ---- VQA soft accuracy ------------------------------------------------------------------------------------------

TARGETS = torch.tensor(
    [
        [0.0, 0.3, 0.9, 0.0],
        [1.0, 0.0, 0.0, 0.6],
        [0.0, 0.0, 0.0, 0.0],
    ]
)


def test_vqa_accuracy_partial_scores_from_logits() -> None:
    # argmax per question: q0 -> 1 (score 0.3), q1 -> 3 (0.6), q2 -> 0 (0.0); mean = 0.9 / 3 = 0.3.
    logits = torch.tensor([[0.0, 5.0, 1.0, -1.0], [0.0, 0.1, 0.2, 3.0], [9.0, 0.0, 0.0, 0.0]])
    assert vqa_accuracy(logits, TARGETS) == pytest.approx(0.3)


def test_vqa_accuracy_from_predicted_ids() -> None:
    # q0 -> 2 (0.9), q1 -> 0 (1.0), q2 -> 3 (0.0): (0.9 + 1.0 + 0.0) / 3 = 0.6333...
    assert vqa_accuracy(torch.tensor([2, 0, 3]), TARGETS) == pytest.approx(1.9 / 3)


def test_vqa_accuracy_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        vqa_accuracy(torch.tensor([0, 1]), TARGETS)


# ---- GQA exact match --------------------------------------------------------------------------------------------

# One gold answer per question (score 1.0); q3's gold answer is not in the table (all zero).
GQA_TARGETS = torch.tensor(
    [
        [0.0, 1.0, 0.0],
        [1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
        [0.0, 0.0, 0.0],
    ]
)


def test_gqa_exact_match_from_logits() -> None:
    # argmax: q0 -> 1 (right), q1 -> 2 (wrong), q2 -> 2 (right), q3 -> 0 (cannot be right): 2 / 4.
    logits = torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.5, 3.0], [-1.0, -2.0, 0.0], [5.0, 0.0, 0.0]])
    assert exact_match_scores(logits, GQA_TARGETS).tolist() == [1.0, 0.0, 1.0, 0.0]
    assert exact_match_accuracy(logits, GQA_TARGETS) == pytest.approx(0.5)


def test_exact_match_counts_any_gold_answer_whatever_its_score() -> None:
    # LXMERT's GQA rule is `answer in label`: a 0.3-scored answer is a hit (1.0), unlike VQA's soft 0.3.
    pred = torch.tensor([1, 3, 0])
    assert exact_match_scores(pred, TARGETS).tolist() == [1.0, 1.0, 0.0]
    assert exact_match_accuracy(pred, TARGETS) == pytest.approx(2 / 3)
    assert vqa_accuracy(pred, TARGETS) == pytest.approx((0.3 + 0.6 + 0.0) / 3)


def test_exact_match_of_no_questions_is_an_error() -> None:
    with pytest.raises(ValueError):
        exact_match_accuracy(torch.zeros(0, 3), torch.zeros(0, 3))


# ---- NLVR2 accuracy ---------------------------------------------------------------------------------------------


def test_nlvr2_accuracy_from_two_way_logits() -> None:
    # predictions (argmax): 1, 0, 0, 1, 1 against labels 1, 0, 1, 0, 1 -> 3 of 5 right.
    logits = torch.tensor([[0.1, 0.9], [2.0, -1.0], [0.3, 0.2], [-1.0, 1.0], [0.0, 0.5]])
    labels = torch.tensor([1, 0, 1, 0, 1])
    assert classification_accuracy(logits, labels) == pytest.approx(0.6)


def test_nlvr2_accuracy_skips_unlabelled_statements() -> None:
    pred, labels = torch.tensor([1, 0, 1, 1]), torch.tensor([1, -1, 0, -1])
    correct, labelled = classification_hits(pred, labels)
    assert correct.tolist() == [True, False, False, False]
    assert labelled.tolist() == [True, False, True, False]
    assert classification_accuracy(pred, labels) == pytest.approx(0.5)  # 1 right of the 2 labelled
    with pytest.raises(ValueError):
        classification_accuracy(pred, torch.full((4,), -1))
    with pytest.raises(ValueError):
        classification_accuracy(pred, torch.tensor([1, 0]))


# ---- retrieval: 3 images (A, B, C) x 5 captions each ----------------------------------------------------------

CAPTION_IMAGE = [0] * 5 + [1] * 5 + [2] * 5
#                         A     B     C        IR rank of the caption's image (ties pessimistic)
SCORES = torch.tensor(
    [
        [0.9, 0.1, 0.2],  # c0  (A): 0
        [0.5, 0.5, 0.1],  # c1  (A): B ties A -> 1
        [0.2, 0.8, 0.3],  # c2  (A): B, C above -> 2
        [0.4, 0.3, 0.4],  # c3  (A): C ties -> 1
        [0.1, 0.1, 0.1],  # c4  (A): all tie -> 2
        [0.3, 0.6, 0.5],  # c5  (B): 0
        [0.0, 0.2, 0.1],  # c6  (B): 0
        [0.6, 0.1, 0.0],  # c7  (B): A above -> 1
        [0.2, 0.2, 0.2],  # c8  (B): all tie -> 2
        [0.1, 0.4, 0.4],  # c9  (B): C ties -> 1
        [0.3, 0.2, 0.2],  # c10 (C): A above, B ties -> 2
        [0.9, 0.8, 0.0],  # c11 (C): 2
        [0.1, 0.5, 0.8],  # c12 (C): 0
        [0.2, 0.1, 0.8],  # c13 (C): 0
        [0.4, 0.0, 0.35],  # c14 (C): A above -> 1
    ]
)
KS = (1, 2, 3)


def test_image_retrieval_ranks_are_pessimistic_about_ties() -> None:
    expected = [0, 1, 2, 1, 2, 0, 0, 1, 2, 1, 2, 2, 0, 0, 1]
    assert image_retrieval_ranks(SCORES, CAPTION_IMAGE).tolist() == expected


def test_text_retrieval_rank_is_the_best_of_five() -> None:
    # A: best own caption c0 = 0.9; other captions >= 0.9: c11 (0.9, a tie) -> rank 1.
    # B: best own caption c5 = 0.6; others >= 0.6: c2 (0.8), c11 (0.8) -> rank 2.
    # C: own captions c12 and c13 tie at 0.8 (a tie between two ground truths is still a hit); the best other
    #    caption is c5 (0.5) -> rank 0, although C's first caption c10 (0.2) alone would rank 5th.
    assert text_retrieval_ranks(SCORES, CAPTION_IMAGE).tolist() == [1, 2, 0]


def test_recall_at_k_hand_computed() -> None:
    got = recall_at_k(SCORES, CAPTION_IMAGE, KS)
    # IR ranks: five 0s, five 1s, five 2s -> R@1 5/15, R@2 10/15, R@3 15/15; mean (1/3 + 2/3 + 1) / 3 = 2/3.
    # TR ranks [1, 2, 0] -> R@1 1/3, R@2 2/3, R@3 1; mean 2/3.
    expected = {
        "ir_r1": 1 / 3, "ir_r2": 2 / 3, "ir_r3": 1.0, "ir_mean": 2 / 3,
        "tr_r1": 1 / 3, "tr_r2": 2 / 3, "tr_r3": 1.0, "tr_mean": 2 / 3,
    }
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key


def test_recall_at_k_default_names_and_caption_order_invariance() -> None:
    got = recall_at_k(SCORES, CAPTION_IMAGE)
    assert set(got) == {f"{m}_r{k}" for m in ("ir", "tr") for k in (1, 5, 10)} | {"ir_mean", "tr_mean"}
    # With 3 images every K >= 3 is a hit.
    assert got["ir_r5"] == got["ir_r10"] == got["tr_r5"] == got["tr_r10"] == 1.0
    perm = torch.randperm(len(CAPTION_IMAGE), generator=torch.Generator().manual_seed(0))
    shuffled = recall_at_k(SCORES[perm], [CAPTION_IMAGE[i] for i in perm.tolist()])
    assert shuffled == got


def test_constant_scores_give_zero_recall_at_one() -> None:
    # Pessimistic ties: a scorer that cannot tell pairs apart must not look perfect.
    got = recall_at_k(torch.zeros(15, 3), CAPTION_IMAGE, KS)
    assert got["ir_r1"] == got["tr_r1"] == 0.0
    assert got["ir_r3"] == 1.0  # rank 2 of 3 images
    assert got["tr_r3"] == 0.0  # 10 other captions tie above each image's best


def test_first_caption_text_retrieval_variant() -> None:
    assert first_captions(CAPTION_IMAGE, 3).tolist() == [0, 5, 10]
    # Sub-matrix of first captions (rows c0, c5, c10) x images:
    #   c0 [0.9 0.1 0.2], c5 [0.3 0.6 0.5], c10 [0.3 0.2 0.2]
    # A: column [0.9 0.3 0.3], own 0.9 -> rank 0.  B: [0.1 0.6 0.2], own 0.6 -> rank 0.
    # C: [0.2 0.5 0.2], own c10 = 0.2; c5 (0.5) above, c0 ties -> rank 2.
    got = first_caption_tr(SCORES, CAPTION_IMAGE, KS)
    expected = {"tr_first_caption_r1": 2 / 3, "tr_first_caption_r2": 2 / 3, "tr_first_caption_r3": 1.0}
    assert got == pytest.approx(expected)


def test_first_caption_is_the_lowest_index_whatever_the_order() -> None:
    assert first_captions([2, 0, 1, 0, 2, 1], 3).tolist() == [1, 2, 0]


def test_image_without_caption_is_an_error() -> None:
    with pytest.raises(ValueError):
        recall_at_k(torch.zeros(2, 3), [0, 1])
    with pytest.raises(ValueError):
        recall_at_k(torch.zeros(2, 2), [0, 2])


def test_recall_hits_are_the_per_query_values_behind_every_recall():
    # 3 images, 6 captions (2 each); random scores with ties, so pessimistic ranks matter.
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (6, 3), generator=generator).float()
    owner = [0, 0, 1, 1, 2, 2]
    hits = recall_hits(scores, owner, ks=(1, 2))
    means = {**recall_at_k(scores, owner, ks=(1, 2)), **first_caption_tr(scores, owner, ks=(1, 2))}
    assert set(hits) == set(means)
    for metric, values in hits.items():
        assert values.shape == ((6,) if metric.startswith("ir") else (3,)), metric
        assert float(values.mean()) == pytest.approx(means[metric], abs=1e-6), metric  # theirs: float32
    assert hits["ir_r1"].tolist() == (image_retrieval_ranks(scores, owner) < 1).double().tolist()

