"""A tiny synthetic world for plugin tests, built from the declared batch fields alone (no dataset plugin): a
:class:`~mmcore.api.DataInfo`, a word-level tokenizer, an :class:`~mmcore.api.ExampleSource` of random image-text
pairs and a one-layer :class:`~mmcore.api.Backbone`."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmcore.api import Backbone, BackboneOutput, DataInfo, Example

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
WORDS = 40  # the vocabulary: the specials, then "w0" ... "w39"; object i is named "w<i>"


def tiny_info(*, feature_dim: int = 16, max_regions: int = 6, num_objects: int = 12, num_attributes: int = 5,
              answers: dict[str, tuple[str, ...]] | None = None) -> DataInfo:
    """The tiny world's data facts: object ``i`` is the word ``w<i>``, so texts can mention regions' labels."""
    word = {f"w{i}": len(SPECIALS) + i for i in range(WORDS)}
    return DataInfo(
        vocab_size=len(SPECIALS) + WORDS, feature_dim=feature_dim, max_regions=max_regions, num_objects=num_objects,
        num_attributes=num_attributes, pad_token_id=0, unk_token_id=1, cls_token_id=2, sep_token_id=3,
        mask_token_id=4, special_token_ids=(0, 1, 2, 3, 4),
        object_token_ids=tuple((word[f"w{i}"],) for i in range(num_objects)),
        object_names=tuple(f"w{i}" for i in range(num_objects)),
        attribute_names=tuple(f"a{i}" for i in range(num_attributes)), answers=dict(answers or {}))


def tiny_tokenizer() -> Any:
    """A fast word-level tokenizer over the tiny vocabulary (``[CLS] words [SEP]``), as datasets return."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)} | {f"w{i}": len(SPECIALS) + i for i in range(WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                        special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")


class TinySource:
    """An :class:`~mmcore.api.ExampleSource` of ``images`` random images with two texts each, seeded.

    Each example has every field of :data:`~mmcore.api.PAIR_FIELDS` but the collator's (``text`` instead of
    ``input_ids``/``attention_mask``/``position_ids``); ``extra(example, rng)`` may add a plugin's own fields.
    Texts name some of the image's region labels, so grounding objectives have something to find.
    """

    def __init__(self, info: DataInfo, images: int = 8, seed: int = 0, extra: Any = None) -> None:
        rng = np.random.default_rng(seed)
        self.info, self._images, self._examples = info, {}, []
        for index in range(images):
            img_id = f"img{index}"
            regions = info.max_regions
            labels = rng.integers(0, info.num_objects, regions)
            boxes = np.sort(rng.random((regions, 2, 2)), axis=1).reshape(regions, 4)[:, [0, 2, 1, 3]]
            self._images[img_id] = {
                "img_id": img_id, "visual_feats": rng.normal(size=(regions, info.feature_dim)).astype(np.float32),
                "visual_pos": boxes.astype(np.float32), "visual_mask": np.ones(regions, dtype=np.int64),
                "obj_labels": labels.astype(np.int64), "obj_conf": rng.random(regions).astype(np.float32),
                "attr_labels": rng.integers(0, info.num_attributes, regions).astype(np.int64),
                "attr_conf": rng.random(regions).astype(np.float32)}
            for _ in range(2):
                words = [f"w{label}" for label in labels[:3]] + [f"w{w}" for w in rng.integers(0, WORDS, 3)]
                example = {**self._images[img_id], "text": " ".join(words)}
                if extra is not None:
                    example.update(extra(example, rng))
                self._examples.append(example)

    def __len__(self) -> int:
        return len(self._examples)

    def __getitem__(self, index: int) -> Example:
        return self._examples[index]

    def image(self, img_id: str) -> Example:
        """The visual fields of one image."""
        return dict(self._images[img_id])

    def image_ids(self) -> Sequence[str]:
        """Every image id."""
        return list(self._images)

    def random_text(self, rng: random.Random, exclude_img_id: str) -> str:
        """A text of another image."""
        return rng.choice([e["text"] for e in self._examples if e["img_id"] != exclude_img_id])

    def hard_negatives(self, img_id: str) -> Sequence[str]:
        """Every other image, in id order (the tiny world has no similarity)."""
        return [i for i in self._images if i != img_id]


class TinyBackbone(Backbone):
    """One transformer layer over [text tokens; projected regions]; ``pooled`` is the [CLS] state."""

    def __init__(self, info: DataInfo, hidden_size: int = 16) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.words = nn.Embedding(info.vocab_size, hidden_size)
        self.regions = nn.Linear(info.feature_dim + 4, hidden_size)
        self.layer = nn.TransformerEncoderLayer(hidden_size, 2, 2 * hidden_size, dropout=0.0, batch_first=True)

    def forward(  # type: ignore[override]
        self, input_ids: Tensor, attention_mask: Tensor, visual_feats: Tensor, visual_pos: Tensor,
        visual_mask: Tensor | None = None, position_ids: Tensor | None = None,
    ) -> BackboneOutput:
        regions = self.regions(torch.cat([visual_feats, visual_pos], dim=-1))
        if visual_mask is None:
            visual_mask = torch.ones(regions.shape[:2], dtype=torch.long, device=regions.device)
        states = torch.cat([self.words(input_ids), regions], dim=1)
        pad = torch.cat([attention_mask, visual_mask], dim=1) == 0
        states = self.layer(states, src_key_padding_mask=pad)
        text = states[:, : input_ids.shape[1]]
        return BackboneOutput(text=text, vision=states[:, input_ids.shape[1]:], pooled=text[:, 0])

    def word_embeddings(self) -> nn.Embedding:
        """The token embedding table (an MLM decoder ties to it)."""
        return self.words
