"""Evaluating a head on a view of the run's data: its metrics, the bootstrap intervals over its test queries, and
the folder where an evaluation keeps work that survives an interruption."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmcore.api import Backbone, Head
from mmcore.blame import call
from mmcore.context import RunContext
from mmcore.data.collate import Collator
from mmcore.evalcontext import EvalContext
from mmcore.stats import query_intervals as bootstrap_intervals
from mmcore.training import autocast


def scratch(ctx: RunContext, name: str) -> Path:
    """The folder of evaluation ``name`` for work that survives an interruption: ``<run>/eval/<name>/``."""
    return ctx.run.path / "eval" / name


def evaluate(ctx: RunContext, head: Head, backbone: Backbone, item: dict[str, Any], split: str,
             folder: Path | None = None) -> dict[str, float]:
    """The head's metrics on ``split`` of the entry's view, in eval mode without gradients (``folder``: the
    evaluation's folder for resumable work)."""
    views, _ = ctx.views(item["data"], split)
    backbone.eval()
    head.eval()
    with EvalContext(Collator(ctx.tokenizer, item["max_text_len"]), ctx.device,
                     ctx.recipe["eval_batch_size"], ctx.reporter, folder) as evaluation, torch.no_grad(), \
            autocast(ctx.device, ctx.precision.precision):
        metrics = call(ctx.registry, ctx.registry.get("head", head.name), "evaluate", head.evaluate,
                       backbone, views[0], evaluation)
    return {k: float(v) for k, v in metrics.items()}


def query_intervals(head: Head) -> dict[str, Any]:
    """``{"intervals": ...}``: a bootstrap interval over the test queries of the head's last evaluation for each
    metric it gave per-query values for (empty when it gave none)."""
    values = {k: torch.as_tensor(v).detach().double().cpu().numpy() for k, v in head.query_values().items()}
    return {"intervals": bootstrap_intervals(values)} if values else {}
