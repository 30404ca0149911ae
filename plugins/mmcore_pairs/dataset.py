"""The ``pairs`` dataset: a prepared dataset directory (``mmcore data prepare``), or a source folder of images and
JSONL annotations prepared on first use into the cache, keyed by the content hash of its files."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from mmcore.api import PAIR_FIELDS, SECOND_IMAGE_FIELDS, DataInfo, Dataset, ExampleSource, MMCoreError
from mmcore.data.annotations import read_vocab_txt
from mmcore.data.datacheck import QuestionPrior, prior_score
from mmcore.data.extract import build_extractor
from mmcore.data.hardneg import load_hard_negatives
from mmcore.data.prepare import (
    PrepareOptions,
    content_hash,
    is_prepared,
    prepare,
    read_annotations,
    read_manifest,
)
from mmcore.data.store import CACHE_MODES, FeatureStore
from mmcore.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, word_token_ids
from mmcore.data.userdata import Annotations
from mmcore_pairs.views import build_view

# The annotation kind each view reads (retrieval falls back to the captions when there is no retrieval file).
VIEW_KINDS = {"token": None, "phrase": "phrases", "sentence": "captions", "vqa": "vqa", "gqa": "gqa",
              "nlvr2": "nlvr2", "retrieval": "retrieval"}


class Pairs(Dataset):
    """Your images and JSONL captions, phrases, questions, statements and retrieval texts (docs/your-data.md)."""

    name: ClassVar[str] = "pairs"
    defaults: ClassVar[dict[str, Any]] = {
        "root": "",  # a prepared dataset directory, or a source folder (images/ + *.jsonl) prepared on first use
        "extractor": "grid",  # for a source folder: the registered extractor and its options
        "extractor_options": {},
        "tokenizer": "",  # for a source folder: a local Hugging Face tokenizer directory instead of a WordPiece one
        "vocab_size": 8000,
        "min_answer_count": 1,
        "normalise": "standardise",  # for a source folder: or "none" (see mmcore data prepare --normalise)
        "phrases_per_image": 3,  # phrase view: descriptions per image, each min..max phrases joined with ", "
        "min_phrases": 2,
        "max_phrases": 4,
        "seed": 0,
        "features_cache": "ram",  # disk | ram | gpu
    }
    views: ClassVar[dict[str, frozenset[str]]] = {
        "token": PAIR_FIELDS,
        "phrase": PAIR_FIELDS,
        "sentence": PAIR_FIELDS,
        "vqa": PAIR_FIELDS | {"vqa_target", "question_id"},
        "gqa": PAIR_FIELDS | {"gqa_target", "question_id"},
        "nlvr2": PAIR_FIELDS | SECOND_IMAGE_FIELDS | {"nlvr2_label", "identifier"},
        "retrieval": PAIR_FIELDS | {"caption_index", "image_index"},
    }
    view_labels: ClassVar[dict[str, str]] = {"token": "T", "phrase": "P", "sentence": "S"}  # as in Table 4

    def __init__(self, options: dict[str, Any], cache_dir: Path) -> None:
        super().__init__(options, Path(cache_dir))
        if not self.options["root"]:
            raise MMCoreError("dataset 'pairs': option root is required (a prepared dataset directory or a folder "
                              "of images/ and JSONL annotations; see docs/your-data.md)")
        if self.options["features_cache"] not in CACHE_MODES:
            raise MMCoreError(f"dataset 'pairs': option features_cache must be one of {', '.join(CACHE_MODES)}")
        for key in ("phrases_per_image", "min_phrases", "max_phrases", "vocab_size", "min_answer_count"):
            if not isinstance(self.options[key], int) or self.options[key] < 1:
                raise MMCoreError(f"dataset 'pairs': option {key} must be a positive integer")
        self.root = Path(self.options["root"]).expanduser()
        self._directory: Path | None = None
        self._store: FeatureStore | None = None
        self._tokenizer: Any = None
        self._info: DataInfo | None = None
        self._annotations: Annotations | None = None
        self._views: dict[tuple[str, str], ExampleSource] = {}

    # ---- preparation ----------------------------------------------------------------------------------------

    def _prepare_options(self) -> PrepareOptions:
        extra = self.options["extractor_options"]
        if not isinstance(extra, dict):
            raise MMCoreError("dataset 'pairs': option extractor_options must be a mapping")
        items = [f"{k}={json.dumps(v)}" for k, v in extra.items()]
        tokenizer = Path(self.options["tokenizer"]).expanduser() if self.options["tokenizer"] else None
        return PrepareOptions(extractor=build_extractor(str(self.options["extractor"]), items),
                              tokenizer=tokenizer, vocab_size=int(self.options["vocab_size"]),
                              min_answer_count=int(self.options["min_answer_count"]),
                              normalise=str(self.options["normalise"]))

    def prepare(self, progress: Callable[[str], None] | None = None) -> None:
        """Use ``root`` when it is prepared; otherwise prepare it into the cache unless an equal copy is there."""
        if not self.root.is_dir():
            raise MMCoreError(f"dataset 'pairs': root {self.root} is not a directory (option root)")
        if is_prepared(self.root):
            self._directory = self.root
            return
        options = self._prepare_options()
        target = self.cache_dir / "pairs" / content_hash(self.root, options)[:16]
        if not is_prepared(target):
            if progress is not None:
                progress(f"pairs: preparing {self.root} into {target}")
            prepare(self.root, target, options, overwrite=True, quiet=progress is None)
        self._directory = target

    @property
    def directory(self) -> Path:
        """The prepared dataset directory in use."""
        if self._directory is None:
            self.prepare()
        assert self._directory is not None
        return self._directory

    def manifest(self) -> dict[str, Any]:
        """The prepared directory's ``dataset.json``."""
        return read_manifest(self.directory)

    def store(self) -> FeatureStore:
        """The feature store of every annotated image (opened once)."""
        if self._store is None:
            self._store = FeatureStore(self.directory / self.manifest()["features"],
                                       cache=str(self.options["features_cache"]))
        return self._store

    def annotations(self) -> Annotations:
        """Every normalised record (read once)."""
        if self._annotations is None:
            self._annotations = read_annotations(self.directory)
        return self._annotations

    # ---- the Dataset contract ---------------------------------------------------------------------------------

    def tokenizer(self) -> Any:
        """The built WordPiece vocabulary, or the tokenizer named when preparing."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.directory / self.manifest()["tokenizer"])
        return self._tokenizer

    def object_names(self) -> list[str]:
        """The detector's object names (a single placeholder when the features carry no labels)."""
        path = self.directory / "objects_vocab.txt"
        return read_vocab_txt(path) if path.is_file() else ["none"]

    def attribute_names(self) -> list[str]:
        """The detector's attribute names (a single placeholder when the features carry no labels)."""
        path = self.directory / "attributes_vocab.txt"
        return read_vocab_txt(path) if path.is_file() else ["none"]

    def answers(self, kind: str) -> list[str]:
        """The answer table of a question kind (``vqa``, ``gqa``), built from its training answers."""
        name = self.manifest()["answers"].get(kind)
        if name is None:
            raise MMCoreError(f"dataset 'pairs': {self.root} has no training {kind} questions, so no {kind} answers")
        return [str(a) for a in json.loads((self.directory / name).read_text(encoding="utf-8"))]

    def info(self) -> DataInfo:
        """Vocabulary, feature and answer-table facts."""
        if self._info is None:
            tok, manifest = self.tokenizer(), self.manifest()
            objects, attributes = self.object_names(), self.attribute_names()
            self._info = DataInfo(
                vocab_size=len(tok), feature_dim=int(manifest["feature_dim"]),
                max_regions=int(manifest["max_regions"]), num_objects=len(objects),
                num_attributes=len(attributes), pad_token_id=int(tok.pad_token_id),
                cls_token_id=int(tok.cls_token_id), sep_token_id=int(tok.sep_token_id),
                mask_token_id=int(tok.mask_token_id), unk_token_id=int(tok.unk_token_id),
                special_token_ids=tuple(int(tok.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS),
                object_token_ids=word_token_ids(tok, objects), object_names=tuple(objects),
                attribute_names=tuple(attributes),
                answers={kind: tuple(self.answers(kind)) for kind in manifest["answers"]},
            )
        return self._info

    def view(self, name: str, split: str) -> ExampleSource:
        """The examples of one view and split (built once, then cached)."""
        if name not in self.views:
            raise MMCoreError(f"dataset 'pairs' has no view {name!r}; views: {', '.join(self.views)}")
        if split not in self.splits:
            raise MMCoreError(f"dataset 'pairs' has no split {split!r}; splits: {', '.join(self.splits)}")
        key = (name, split)
        if key not in self._views:
            self._views[key] = build_view(self, name, split)
        return self._views[key]

    def hard_negatives(self, split: str) -> dict[str, list[str]] | None:
        """Each training image's nearest training images (None for other splits or when there is no file)."""
        name = self.manifest().get("hard_negatives")
        return load_hard_negatives(self.directory / name) if split == "train" and name else None

    def phrase_rng(self, img_id: str) -> random.Random:
        """Seeded per image, so the phrase view is the same on every load."""
        return random.Random(f"{self.options['seed']}:{img_id}:phrase-view")

    def question_prior(self, kind: str) -> QuestionPrior:
        """The question-only baseline's answers, fitted on the training questions of ``kind``."""
        return QuestionPrior.fit((r.text, r.data.get("type"), r.data["label"])
                                 for r in self.annotations().of(kind, "train"))

    def question_only(self, kind: str, split: str) -> float:
        """The question-only baseline's score on one split of ``kind`` (a fraction)."""
        records = self.annotations().of(kind, split)
        questions = [(r.text, r.data.get("type"), r.data["label"]) for r in records]
        return prior_score(self.question_prior(kind), questions).get("all", 0.0)
