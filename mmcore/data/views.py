"""Generic views over a feature store: (text, image) pairs, questions over an answer table, statements about two
images, and images with their captions for ranking.

Every view implements :class:`mmcore.api.ExampleSource`. An example is ``{text, **visual fields of its image,
**extras}``; the visual fields are fresh arrays, so tasks may modify them in place.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mmcore.api import FOCUS_SPANS, SECOND_IMAGE_SUFFIX, Example
from mmcore.data.store import FeatureStore
from mmcore.errors import MMCoreError

__all__ = ["PairView", "AnswerView", "CaptionRankingView", "TwoImageView", "WordMarker", "token_pairs",
    "remove_verb_phrases", "join_phrases", "phrase_descriptions"]

_REJECTION_TRIES = 64
_WORD = re.compile(r"\w+")


class PairView:
    """(img_id, text) pairs over a :class:`FeatureStore`, with optional hard negatives and per-pair extras."""

    def __init__(self, pairs: Sequence[tuple[str, str]], store: FeatureStore,
                 hard_negatives: Mapping[str, Sequence[str]] | None = None,
                 extra: Sequence[dict[str, Any]] | None = None) -> None:
        self.pairs = [(str(img_id), str(text)) for img_id, text in pairs]
        self.store = store
        if extra is not None and len(extra) != len(self.pairs):
            raise MMCoreError(f"view: {len(extra)} extra records for {len(self.pairs)} pairs")
        self._extra_rows = list(extra) if extra is not None else None
        self._image_ids = list(dict.fromkeys(img_id for img_id, _ in self.pairs))
        missing = [i for i in self._image_ids if i not in store]
        if missing:
            raise MMCoreError(f"{len(missing)} image(s) of this view are not in the feature store {store.path}: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        self._image_set = frozenset(self._image_ids)
        self._hard_source = hard_negatives or {}
        self._hard_cache: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Example:
        img_id, text = self.pairs[index]
        example: Example = {"text": text, **self.store.image(img_id)}
        example.update(self.extra(index))
        return example

    def extra(self, index: int) -> dict[str, Any]:
        """The extra fields of one example (subclasses compute theirs here)."""
        return dict(self._extra_rows[index]) if self._extra_rows is not None else {}

    def image(self, img_id: str) -> Example:
        """The visual fields of one image (any image of the store, not only this view's)."""
        return self.store.image(img_id)

    def image_ids(self) -> list[str]:
        """The distinct images of this view, in order of first appearance."""
        return self._image_ids

    def random_text(self, rng: random.Random, exclude_img_id: str) -> str:
        """A text of this view whose image is not ``exclude_img_id``."""
        if not self.pairs:
            raise MMCoreError("random_text: the view is empty")
        for _ in range(_REJECTION_TRIES):
            img_id, text = self.pairs[rng.randrange(len(self.pairs))]
            if img_id != exclude_img_id:
                return text
        # Rejection only fails when nearly every pair is of one image; fall back to an exact draw.
        others = [text for img_id, text in self.pairs if img_id != exclude_img_id]
        if not others:
            raise MMCoreError(f"random_text: every text of this view belongs to image {exclude_img_id!r}")
        return others[rng.randrange(len(others))]

    def hard_negatives(self, img_id: str) -> list[str]:
        """The images of this view nearest to ``img_id`` (nearest first, itself excluded); empty if unknown."""
        cached = self._hard_cache.get(img_id)
        if cached is None:
            near = self._hard_source.get(img_id, ())
            cached = [h for h in near if h != img_id and h in self._image_set]
            self._hard_cache[img_id] = cached
        return cached


class AnswerView(PairView):
    """Questions over an answer table; examples add ``<target_field>`` float32 [A] (the label's scores over
    ``answers``) and ``question_id`` (of ``question_id_type``). Answers outside the table are dropped from the
    target, as no classifier over the table can predict them. ``target_field`` is the field the answer head that
    reads this view requires."""

    def __init__(self, records: Sequence[dict[str, Any]], answers: Sequence[str], store: FeatureStore,
                 hard_negatives: Mapping[str, Sequence[str]] | None = None, *, target_field: str,
                 question_id_type: type = int) -> None:
        super().__init__([(r["img_id"], r["sent"]) for r in records], store, hard_negatives)
        self.target_field, self.question_id_type = target_field, question_id_type
        self.answers = list(answers)
        self._answer_index = {a: i for i, a in enumerate(self.answers)}
        self.question_ids = [self.question_id_type(r["question_id"]) for r in records]
        self.labels: list[dict[str, float]] = [dict(r.get("label", {})) for r in records]

    def extra(self, index: int) -> dict[str, Any]:
        target = np.zeros(len(self.answers), dtype=np.float32)
        for answer, score in self.labels[index].items():
            j = self._answer_index.get(answer)
            if j is not None:
                target[j] = score
        return {self.target_field: target, "question_id": self.question_ids[index]}


class CaptionRankingView(PairView):
    """Images with their captions, for ranking captions against images: one positive pair per caption; examples
    add ``caption_index``, ``image_index``.

    ``images`` lists the images, ``captions`` every caption (image by image) and ``caption_image[c]`` the index
    into ``images`` of caption c's image.
    """

    def __init__(self, items: Sequence[tuple[str, Sequence[str]]], store: FeatureStore,
                 hard_negatives: Mapping[str, Sequence[str]] | None = None) -> None:
        self.images = [str(img_id) for img_id, _ in items]
        if len(set(self.images)) != len(self.images):
            raise MMCoreError("caption view: an image is listed more than once")
        self.captions = [str(c) for _, caps in items for c in caps]
        self.caption_image = [i for i, (_, caps) in enumerate(items) for _ in caps]
        self._by_image = {img_id: [str(c) for c in caps] for img_id, caps in items}
        super().__init__([(self.images[i], c) for c, i in zip(self.captions, self.caption_image)], store,
                         hard_negatives)

    def captions_of(self, img_id: str) -> list[str]:
        """The captions of one image (empty if the image is not in this view)."""
        return self._by_image.get(img_id, [])

    def extra(self, index: int) -> dict[str, Any]:
        return {"caption_index": index, "image_index": self.caption_image[index]}


class TwoImageView:
    """Statements about two images, true or false. An example is ``{text, **fields of img0, **fields of img1 with
    the suffix _1, <label_field> (1 true, 0 false, -1 unlabelled), identifier}``; ``label_field`` is the field the
    head that reads this view requires."""

    def __init__(self, records: Sequence[dict[str, Any]], store: FeatureStore, *, label_field: str) -> None:
        self.records = [dict(r) for r in records]
        self.store = store
        self.label_field = label_field
        self._image_ids = list(dict.fromkeys(str(r[k]) for r in self.records for k in ("img0", "img1")))
        missing = [i for i in self._image_ids if i not in store]
        if missing:
            raise MMCoreError(f"{len(missing)} image(s) of this two-image view are not in the feature store "
                              f"{store.path}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Example:
        rec = self.records[index]
        second = {k + SECOND_IMAGE_SUFFIX: v for k, v in self.store.image(str(rec["img1"])).items()}
        return {"text": rec["sent"], **self.store.image(str(rec["img0"])), **second,
                self.label_field: int(rec.get("label", -1)), "identifier": str(rec["identifier"])}

    def image(self, img_id: str) -> Example:
        """The visual fields of one image (any image of the store)."""
        return self.store.image(img_id)

    def image_ids(self) -> list[str]:
        """The distinct images of this view (left and right), in order of first appearance."""
        return self._image_ids

    def random_text(self, rng: random.Random, exclude_img_id: str) -> str:
        """A statement of a pair that does not show ``exclude_img_id``."""
        if not self.records:
            raise MMCoreError("random_text: the view is empty")
        for _ in range(_REJECTION_TRIES):
            rec = self.records[rng.randrange(len(self.records))]
            if exclude_img_id not in (rec["img0"], rec["img1"]):
                return str(rec["sent"])
        others = [r["sent"] for r in self.records if exclude_img_id not in (r["img0"], r["img1"])]
        if not others:
            raise MMCoreError(f"random_text: every statement of this view shows image {exclude_img_id!r}")
        return str(others[rng.randrange(len(others))])

    def hard_negatives(self, img_id: str) -> list[str]:
        """None: statements about two images have no difficult-sample file."""
        return []


def token_pairs(store: FeatureStore, object_names: Sequence[str], img_ids: Sequence[str]) -> list[tuple[str, str]]:
    """(img_id, the detector's object labels of its real regions in region order, space-joined): the paper's
    token-stage text."""
    pairs = []
    for img_id in img_ids:
        labels = store.labels(img_id)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(object_names)):
            raise MMCoreError(f"{store.path}: image {img_id!r} has object ids outside the "
                              f"{len(object_names)}-name objects vocabulary")
        pairs.append((img_id, " ".join(object_names[j] for j in labels)))
    return pairs


class WordMarker:
    """Finds whole-word occurrences of a vocabulary's names in texts (case-insensitive; a longer name wins, so
    ``traffic light`` is one span, not ``light`` alone): the phrase views mark attribute and category words so.

    Texts and names are split into words (``\\w+``); a name of several words matches consecutive words joined by
    spaces, hyphens or apostrophes only (never across a comma).
    """

    def __init__(self, names: Sequence[str]) -> None:
        self._names = {tuple(w.lower() for w in _WORD.findall(n)) for n in names} - {()}
        self._longest = max(map(len, self._names), default=0)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """(start, end) character spans of the names in ``text``, left to right, not overlapping."""
        words = [(m.start(), m.end(), m.group().lower()) for m in _WORD.finditer(text)]
        joined = [not text[a[1]:b[0]].strip(" -'") for a, b in zip(words, words[1:])]
        out, i = [], 0
        while i < len(words):
            for k in range(min(self._longest, len(words) - i), 0, -1):
                if all(joined[i:i + k - 1]) and tuple(w for _, _, w in words[i:i + k]) in self._names:
                    out.append((words[i][0], words[i + k - 1][1]))
                    i += k
                    break
            else:
                i += 1
        return out

    def extras(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """Per-text extra fields for a :class:`PairView`: ``focus_spans``, the marked words of each text."""
        return [{FOCUS_SPANS: self.spans(text)} for text in texts]


def remove_verb_phrases(phrases: Sequence[str], is_verb: Callable[[str], bool]) -> list[str]:
    """The phrases none of whose words is a verb (the paper drops VG phrases containing verbs)."""
    return [p for p in phrases if not any(is_verb(w) for w in p.lower().replace(",", " ").split())]


def join_phrases(phrases: Sequence[str]) -> str:
    """One phrase-level description: the phrases joined with ", "."""
    return ", ".join(p.strip() for p in phrases if p.strip())


def phrase_descriptions(phrases: Sequence[str], count: int, rng: random.Random, min_phrases: int = 3,
                        max_phrases: int = 5) -> list[str]:
    """Up to ``count`` distinct descriptions of one image, each a random subset of its phrases, joined.

    Each subset holds ``min_phrases``..``max_phrases`` phrases (all of them when fewer), so descriptions stay
    short enough for a 20-token text and one image yields several pairs.
    """
    phrases = [p for p in dict.fromkeys(phrases) if p.strip()]
    if not phrases:
        return []
    out: list[str] = []
    for _ in range(count * 4):  # a few extra draws so duplicates rarely cost a description
        if len(out) == count:
            break
        size = min(len(phrases), rng.randint(min_phrases, max_phrases))
        text = join_phrases(rng.sample(phrases, size))
        if text not in out:
            out.append(text)
    return out
