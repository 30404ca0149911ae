"""The ``gqa`` head: the VQA answer classifier over GQA's answer table (one answer per question, score 1.0),
evaluated by exact match, as LXMERT fine-tunes and scores GQA."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor

from mmcore.api import Metric
from mmcore_heads.metrics import exact_match_scores
from mmcore_heads.predictions import QuestionId, write_gqa_predictions
from mmcore_heads.vqa import AnswerHead


class GQAHead(AnswerHead):
    """GQA: the VQA head's classifier and BCE over GQA's answers; exact-match accuracy."""

    name: ClassVar[str] = "gqa"
    epochs: ClassVar[int] = 5  # the paper's fine-tuning epochs
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("accuracy", "Acc", "GQA acc", results=True, primary=True),
        Metric("question_only", "Q-only", floor="the model answers from the question, not the image"),
    )
    display_order: ClassVar[int] = 20
    target_field: ClassVar[str] = "gqa_target"
    requires: ClassVar[frozenset[str]] = frozenset({"text", "visual_feats", "visual_pos", "gqa_target"})
    defaults: ClassVar[dict[str, Any]] = {**AnswerHead.defaults, "answers_key": "gqa"}

    def question_scores(self, logits: Tensor, targets: Tensor) -> Tensor:
        """1.0 when the argmax answer is the gold answer, else 0.0."""
        return exact_match_scores(logits, targets)

    def write_answers(self, path: Path, predictions: Sequence[tuple[QuestionId, str]]) -> Path:
        """GQA's ``[{questionId, prediction}]``."""
        return write_gqa_predictions(path, predictions)
