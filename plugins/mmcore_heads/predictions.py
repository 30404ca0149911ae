"""Prediction files in each benchmark's submission format, written atomically (temp name, then rename).

- VQA: ``[{"question_id": ..., "answer": "..."}]`` (JSON, the VQA server's format).
- GQA: ``[{"questionId": "...", "prediction": "..."}]`` (JSON, the GQA server's format).
- NLVR2: one ``identifier,True`` / ``identifier,False`` line per statement (CSV without header).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from mmcore.data.fileio import write_json, write_lines

QuestionId = int | str


def write_vqa_predictions(path: str | os.PathLike[str], predictions: Sequence[tuple[QuestionId, str]]) -> Path:
    """Write (question_id, answer) pairs as VQA's result JSON; returns the path."""
    write_json(path, [{"question_id": qid, "answer": answer} for qid, answer in predictions])
    return Path(path)


def write_gqa_predictions(path: str | os.PathLike[str], predictions: Sequence[tuple[QuestionId, str]]) -> Path:
    """Write (questionId, prediction) pairs as GQA's submission JSON (ids as strings); returns the path."""
    write_json(path, [{"questionId": str(qid), "prediction": answer} for qid, answer in predictions])
    return Path(path)


def write_nlvr2_predictions(path: str | os.PathLike[str], predictions: Sequence[tuple[str, bool]]) -> Path:
    """Write (identifier, is-true) pairs as NLVR2's CSV lines ``identifier,True``; returns the path."""
    bad = [identifier for identifier, _ in predictions if "," in identifier or "\n" in identifier]
    if bad:
        raise ValueError(f"NLVR2 identifiers may not contain ',' or newlines: {bad[:3]}")
    write_lines(path, [f"{identifier},{bool(value)}" for identifier, value in predictions])
    return Path(path)
