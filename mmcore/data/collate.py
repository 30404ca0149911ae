"""Turn a list of examples into a batch: tokenise texts (each distinct text once), stack numeric fields, keep
the rest as lists."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from numbers import Number
from typing import Any

import numpy as np
import torch

from mmcore.api import FOCUS_SPANS, FOCUS_TOKENS, Batch, Example
from mmcore.data.devicecache import DeviceGather, RowRef, stack_refs
from mmcore.schema.keys import MAX_TEXT_LEN


def whole_word_positions(word_ids: Sequence[int | None], attention: Sequence[int]) -> list[int]:
    """LXMERT-S position ids: padding 0, special tokens 1, words numbered from 2 (WordPiece pieces share one)."""
    positions = []
    for word, real in zip(word_ids, attention):
        positions.append(0 if not real else (1 if word is None else word + 2))
    return positions


class Collator:
    """Batches examples: ``text`` becomes ``input_ids``/``attention_mask``/``position_ids``; arrays are stacked.

    Each distinct text is tokenised once, at its first batch, and its ids reused in every later batch and epoch
    (the cache lives in this object, so in the process that collates: in training, the main one, also when
    worker processes read the examples).
    """

    def __init__(self, tokenizer: Any, max_text_len: int = MAX_TEXT_LEN) -> None:
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self._tokens: dict[str, tuple[list[int], list[int]]] = {}  # text -> (ids, positions), unpadded
        self._offsets: dict[str, list[tuple[int, int]]] = {}  # text -> each token's character span
        self._focus: dict[tuple[str, tuple[tuple[int, int], ...]], list[int]] = {}  # -> token indices in spans
        self.pad_id = int(getattr(tokenizer, "pad_token_id", 0) or 0)
        self.pad_left = getattr(tokenizer, "padding_side", "right") == "left"

    def encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids``, ``attention_mask`` and ``position_ids`` of ``texts``, padded to the longest."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._tokens]
        if missing:
            enc = self.tokenizer(missing, truncation=True, max_length=self.max_text_len, return_offsets_mapping=True)
            for i, text in enumerate(missing):
                ids = list(enc["input_ids"][i])
                self._tokens[text] = (ids, whole_word_positions(enc.word_ids(i), [1] * len(ids)))
                self._offsets[text] = [(int(a), int(b)) for a, b in enc["offset_mapping"][i]]
        rows = [self._tokens[t] for t in texts]
        lengths = np.array([len(ids) for ids, _ in rows])
        width = int(lengths.max())
        # One scatter for the whole batch instead of a tensor per row: the real tokens' cells in row-major order
        # are the rows' tokens one after another.
        columns = np.arange(width)[None, :]
        real = columns >= width - lengths[:, None] if self.pad_left else columns < lengths[:, None]
        out = np.zeros((3, len(texts), width), dtype=np.int64)
        out[0].fill(self.pad_id)
        out[0][real] = list(chain.from_iterable(ids for ids, _ in rows))
        out[1][real] = 1
        out[2][real] = list(chain.from_iterable(positions for _, positions in rows))
        tensor = torch.from_numpy(out)
        return {"input_ids": tensor[0], "attention_mask": tensor[1], "position_ids": tensor[2]}

    def __call__(self, examples: list[Example]) -> Batch:
        if not examples:
            raise ValueError("cannot collate an empty list of examples")
        batch: Batch = {}
        if "text" in examples[0]:
            batch.update(self.encode([ex["text"] for ex in examples]))
            if any(FOCUS_SPANS in ex for ex in examples):
                batch[FOCUS_TOKENS] = self.focus_tokens(examples, batch["input_ids"].shape[1])
        for key in examples[0]:
            if key != FOCUS_SPANS:
                batch[key] = _stack(key, [ex[key] for ex in examples])
        return batch

    def focus_tokens(self, examples: list[Example], width: int) -> torch.Tensor:
        """[B,width] bool: the tokens of each example's (already encoded) text inside its ``focus_spans``."""
        out = torch.zeros((len(examples), width), dtype=torch.bool)
        for row, ex in enumerate(examples):
            text, spans = ex["text"], tuple((int(s), int(e)) for s, e in ex.get(FOCUS_SPANS, ()))
            key = (text, spans)
            if key not in self._focus:
                self._focus[key] = [j for j, (a, b) in enumerate(self._offsets[text])
                                    if b > a and any(s <= a and b <= e for s, e in spans)]
            shift = width - len(self._offsets[text]) if self.pad_left else 0
            out[row, [shift + j for j in self._focus[key]]] = True
        return out


def _stack(key: str, values: list[Any]) -> Any:
    first = values[0]
    if isinstance(first, RowRef):
        return stack_refs(key, values)
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
    if isinstance(first, (float, np.floating, Number)):
        return torch.tensor(values, dtype=torch.float32)
    return list(values)


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a batch to ``device`` (non-blocking where the source is pinned), and gather the
    fields of a ``gpu`` feature cache there."""
    out: Batch = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
        elif isinstance(value, DeviceGather):
            value = value.resolve(device)
        out[key] = value
    return out
