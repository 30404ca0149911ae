"""The ``vqa`` head, and :class:`AnswerHead`, the answer classifier it shares with ``gqa``: LXMERT's logit_fc over
the pooled output, trained with BCE on soft answer scores, predicting the argmax answer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmcore.api import (
    Backbone,
    Batch,
    DataInfo,
    EvalContext,
    ExampleSource,
    Head,
    MMCoreError,
    Metric,
    Task,
    init_bert_,
)
from mmcore_heads.metrics import vqa_scores
from mmcore_heads.predictions import QuestionId, write_vqa_predictions

PREDICTIONS_JSON = "predictions.json"


class AnswerHead(Head):
    """Linear(H,sH) → GeLU → LayerNorm → Linear(sH,A) on pooled; BCE on the soft scores in ``target_field``.

    Subclasses set ``name``, ``target_field``, ``requires``, ``defaults["answers_key"]``, how a question is scored
    (:meth:`question_scores`) and how predictions are written (:meth:`write_answers`).
    """

    target_field: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {
        "answers_key": "",  # which table of DataInfo.answers the targets index
        "hidden_scale": 2,  # LXMERT's logit_fc widens to 2H before the answer layer
    }

    def __init__(self, info: DataInfo, hidden_size: int, pretrained: dict[str, Task], **options: Any) -> None:
        super().__init__(info, hidden_size, pretrained, **options)
        key = self.options["answers_key"]
        answers = info.answers.get(key)
        if not answers:
            known = ", ".join(sorted(info.answers)) or "(none)"
            raise MMCoreError(f"head {self.name!r}: the dataset has no answer table {key!r}; answer tables: {known}")
        self.answers: tuple[str, ...] = tuple(answers)
        width = int(self.options["hidden_scale"]) * hidden_size
        self.logit_fc = nn.Sequential(
            nn.Linear(hidden_size, width), nn.GELU(), nn.LayerNorm(width, eps=1e-12),
            nn.Linear(width, len(self.answers)),
        )
        init_bert_(self.logit_fc)
        self.zero_shot_ready = False
        self.predictions: list[tuple[QuestionId, str]] = []  # (question id, answer) of the last evaluate()

    @property
    def num_answers(self) -> int:
        """The size A of the answer table."""
        return len(self.answers)

    def logits(self, backbone: Backbone, batch: Batch) -> Tensor:
        """Answer logits [B,A] for a collated batch."""
        return self.logit_fc(backbone.encode(batch).pooled)

    def loss(self, backbone: Backbone, batch: Batch) -> Tensor:
        """BCE-with-logits against the soft scores, mean over B×A times A (LXMERT's scaling)."""
        # float32 even under autocast: soft scores like 0.3 are not exact in bf16.
        logits = self.logits(backbone, batch).float()
        target = batch[self.target_field].float()
        return F.binary_cross_entropy_with_logits(logits, target) * logits.shape[1]

    def question_scores(self, logits: Tensor, targets: Tensor) -> Tensor:
        """Per-question score [N] of the argmax answer; ``accuracy`` is their mean."""
        raise NotImplementedError

    def top_predictions(self, backbone: Backbone, batch: Batch, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` most probable answers of each question, by softmax over the answer table (the head trains
        one sigmoid per answer; the softmax makes them one distribution, as the MSP paper's Figure 3 shows)."""
        probabilities = torch.softmax(self.logits(backbone, batch).float(), dim=-1)
        values, indices = probabilities.topk(min(k, self.num_answers), dim=-1)
        return [[(self.answers[i], float(p)) for i, p in zip(row_i, row_p)]
                for row_i, row_p in zip(indices.tolist(), values.tolist())]

    def gold_labels(self, batch: Batch) -> list[dict[str, float]]:
        """Each question's answers with a non-zero target score (VQA: soft scores; GQA: the one answer, 1.0)."""
        targets = batch[self.target_field].float().cpu()
        return [{self.answers[i]: float(row[i]) for i in row.nonzero().flatten().tolist()} for row in targets]

    def evaluate(self, backbone: Backbone, view: ExampleSource, ctx: EvalContext) -> dict[str, float]:
        """``{"accuracy": ...}``: the mean question score of the argmax answer, a fraction in [0,1]; keeps the
        predicted answer of every question for :meth:`write_predictions`."""
        total = torch.zeros((), dtype=torch.float64, device=ctx.device)
        count = 0
        answer_ids: list[Tensor] = []
        question_ids: list[Tensor | Sequence[QuestionId]] = []
        all_scores: list[Tensor] = []
        for batch in ctx.batches(view, self.name):  # type: ignore[arg-type]  # a view is a sequence of examples
            logits = self.logits(backbone, batch)
            scores = self.question_scores(logits, batch[self.target_field])
            # Accumulate on the device: a .item() per batch would stall the GPU every step.
            total += scores.sum(dtype=torch.float64)
            all_scores.append(scores)
            answer_ids.append(logits.argmax(dim=-1))
            question_ids.append(batch.get("question_id", range(count, count + scores.shape[0])))
            count += scores.shape[0]
        if count == 0:
            raise MMCoreError(f"head {self.name!r}: the evaluation view has no examples")
        answers = [self.answers[i] for i in torch.cat(answer_ids).tolist()]
        ids = [q for chunk in question_ids for q in (chunk.tolist() if isinstance(chunk, Tensor) else chunk)]
        self.predictions = list(zip(ids, answers))
        return {"accuracy": float(total) / count, **_view_baselines(view, torch.cat(all_scores).tolist())}

    def write_answers(self, path: Path, predictions: Sequence[tuple[QuestionId, str]]) -> Path:
        """Write (question id, answer) pairs in this benchmark's prediction format; returns the path."""
        raise NotImplementedError

    def write_predictions(self, directory: Path) -> Path | None:
        """``predictions.json`` of the last :meth:`evaluate` (``None`` before any)."""
        if not self.predictions:
            return None
        return self.write_answers(Path(directory) / PREDICTIONS_JSON, self.predictions)


def _view_baselines(view: ExampleSource, scores: list[float]) -> dict[str, float]:
    """What a view offers to compare with (optional attributes): ``question_only``, the score of answering
    each question with its most frequent training answer, and ``question_types`` (one per example), giving one
    ``accuracy_<type>`` per type."""
    out: dict[str, float] = {}
    baseline = getattr(view, "question_only", None)
    if baseline is not None:
        out["question_only"] = float(baseline)
    types = getattr(view, "question_types", None)
    if types is not None and len(types) == len(scores):
        per_type: dict[str, list[float]] = {}
        for qtype, score in zip(types, scores):
            if qtype is not None:
                per_type.setdefault(str(qtype), []).append(score)
        out.update({f"accuracy_{t}": sum(v) / len(v) for t, v in sorted(per_type.items())})
    return out


class VQAHead(AnswerHead):
    """VQA: Linear(H,sH) → GeLU → LayerNorm → Linear(sH,A) on pooled; BCE on soft scores; soft accuracy."""

    name: ClassVar[str] = "vqa"
    epochs: ClassVar[int] = 6  # the paper's fine-tuning epochs
    # The paper's Tables 2-3 column, and Table 4's first.
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("accuracy", "Acc", "VQA acc", results=True, headline=1, primary=True),
        Metric("question_only", "Q-only", floor="the model answers from the question, not the image"),
    )
    display_order: ClassVar[int] = 10
    target_field: ClassVar[str] = "vqa_target"
    requires: ClassVar[frozenset[str]] = frozenset({"text", "visual_feats", "visual_pos", "vqa_target"})
    defaults: ClassVar[dict[str, Any]] = {**AnswerHead.defaults, "answers_key": "vqa"}

    def question_scores(self, logits: Tensor, targets: Tensor) -> Tensor:
        """The VQA soft score of the argmax answer."""
        return vqa_scores(logits, targets)

    def write_answers(self, path: Path, predictions: Sequence[tuple[QuestionId, str]]) -> Path:
        """VQA's ``[{question_id, answer}]``."""
        return write_vqa_predictions(path, predictions)
