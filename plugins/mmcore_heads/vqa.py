"""The ``vqa`` head: LXMERT's answer classifier over the pooled output, trained on soft answer scores."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmcore.api import Backbone, Batch, DataInfo, EvalContext, ExampleSource, Head, Task, init_bert_
from mmcore.errors import MMCoreError
from mmcore_heads.metrics import vqa_scores


class VQAHead(Head):
    """VQA: Linear(H,sH) → GeLU → LayerNorm → Linear(sH,A) on pooled; BCE on soft scores; soft accuracy."""

    name: ClassVar[str] = "vqa"
    requires: ClassVar[frozenset[str]] = frozenset({"text", "visual_feats", "visual_pos", "vqa_target"})
    defaults: ClassVar[dict[str, Any]] = {
        "answers_key": "vqa",  # which table of DataInfo.answers the targets index
        "hidden_scale": 2,  # LXMERT's logit_fc widens to 2H before the answer layer
    }

    def __init__(self, info: DataInfo, hidden_size: int, pretrained: dict[str, Task], **options: Any) -> None:
        super().__init__(info, hidden_size, pretrained, **options)
        key = self.options["answers_key"]
        answers = info.answers.get(key)
        if not answers:
            known = ", ".join(sorted(info.answers)) or "(none)"
            raise MMCoreError(f"head 'vqa': the dataset has no answer table {key!r}; answer tables: {known}")
        self.answers: tuple[str, ...] = tuple(answers)
        width = int(self.options["hidden_scale"]) * hidden_size
        self.logit_fc = nn.Sequential(
            nn.Linear(hidden_size, width), nn.GELU(), nn.LayerNorm(width, eps=1e-12),
            nn.Linear(width, len(self.answers)),
        )
        init_bert_(self.logit_fc)
        self.zero_shot_ready = False

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
        target = batch["vqa_target"].float()
        return F.binary_cross_entropy_with_logits(logits, target) * logits.shape[1]

    def evaluate(self, backbone: Backbone, view: ExampleSource, ctx: EvalContext) -> dict[str, float]:
        """``{"accuracy": ...}``: mean soft score of the argmax answer, a fraction in [0,1]."""
        total = torch.zeros((), dtype=torch.float64, device=ctx.device)
        count = 0
        for batch in ctx.batches(view, "vqa"):  # type: ignore[arg-type]  # a view is a sequence of examples
            scores = vqa_scores(self.logits(backbone, batch), batch["vqa_target"])
            # Accumulate on the device: a .item() per batch would stall the GPU every step.
            total += scores.sum(dtype=torch.float64)
            count += scores.shape[0]
        if count == 0:
            raise MMCoreError("head 'vqa': the evaluation view has no examples")
        return {"accuracy": float(total) / count}
