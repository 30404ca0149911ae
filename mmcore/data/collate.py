"""Turn a list of examples into a batch: tokenise texts, stack numeric fields, keep the rest as lists."""

from __future__ import annotations

from numbers import Number
from typing import Any, Sequence

import numpy as np
import torch

from mmcore.api import Batch, Example


def whole_word_positions(word_ids: Sequence[int | None], attention: Sequence[int]) -> list[int]:
    """LXMERT-S position ids: padding 0, special tokens 1, words numbered from 2 (WordPiece pieces share one)."""
    positions = []
    for word, real in zip(word_ids, attention):
        positions.append(0 if not real else (1 if word is None else word + 2))
    return positions


class Collator:
    """Batches examples: ``text`` becomes ``input_ids``/``attention_mask``/``position_ids``; arrays are stacked."""

    def __init__(self, tokenizer: Any, max_text_len: int = 20) -> None:
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len

    def __call__(self, examples: list[Example]) -> Batch:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        batch: Batch = {}
        if "text" in examples[0]:
            texts = [ex["text"] for ex in examples]
            enc = self.tokenizer(texts, padding="longest", truncation=True, max_length=self.max_text_len)
            batch["input_ids"] = torch.tensor(enc["input_ids"], dtype=torch.long)
            batch["attention_mask"] = torch.tensor(enc["attention_mask"], dtype=torch.long)
            batch["position_ids"] = torch.tensor(
                [whole_word_positions(enc.word_ids(i), enc["attention_mask"][i]) for i in range(len(texts))],
                dtype=torch.long,
            )
        for key in examples[0]:
            values = [ex[key] for ex in examples]
            batch[key] = _stack(key, values)
        return batch


def _stack(key: str, values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, np.ndarray):
        try:
            return torch.from_numpy(np.stack(values))
        except ValueError as exc:
            raise ValueError(f"field {key!r} has arrays of different shapes in one batch") from exc
    if isinstance(first, torch.Tensor):
        return torch.stack(values)
    if isinstance(first, (bool, np.bool_)):
        return torch.tensor(values, dtype=torch.bool)
    if isinstance(first, (int, np.integer)):
        return torch.tensor(values, dtype=torch.long)
    if isinstance(first, (float, np.floating)) or isinstance(first, Number):
        return torch.tensor(values, dtype=torch.float32)
    return list(values)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a batch to ``device`` (non-blocking where the source is pinned)."""
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
