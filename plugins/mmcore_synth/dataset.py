"""The ``synthworld`` dataset: a seeded COCO + Visual Genome look-alike generated on first use, then read
back through mmcore's core readers exactly as real data is."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from mmcore.api import PAIR_FIELDS, SECOND_IMAGE_FIELDS, DataInfo, Dataset, ExampleSource, MMCoreError
from mmcore.data import annotations as ann
from mmcore.data.hardneg import load_hard_negatives
from mmcore.data.store import CACHE_MODES, FeatureStore
from mmcore.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, word_token_ids
from mmcore.data.views import (
    AnswerView,
    CaptionRankingView,
    PairView,
    TwoImageView,
    WordMarker,
    phrase_descriptions,
    remove_verb_phrases,
    token_pairs,
)
from mmcore_synth.generate import GENERATOR_VERSION, GQA_ANSWERS, generate, image_ids
from mmcore_synth.world import VERBS

# Options read when views are built, not when the world is generated: they do not change the cache key.
_VIEW_OPTIONS = frozenset({"phrases_per_image", "in_memory", "features_cache", "hard_negative_pool"})
# Which images the pre-training views' difficult-sample file covers (see ``SynthWorld.defaults``).
_HARD_NEGATIVE_FILES = {"retrieval": "retrieval_hard_negatives.npz", "train": "hard_negatives.npz"}
_PRETRAIN_VIEWS = ("token", "phrase", "sentence")


class SynthWorld(Dataset):
    """Seeded synthetic scenes with detector features and every view: token, phrase, sentence, vqa, gqa, nlvr2,
    retrieval."""

    name: ClassVar[str] = "synthworld"
    defaults: ClassVar[dict[str, Any]] = {
        "seed": 0,
        "train_images": 1500,
        "val_images": 100,
        "test_images": 100,
        "vqa_train_images": 300,  # downstream training is deliberately small: pre-training has to pay off
        "retrieval_train_images": 150,
        "gqa_train_images": 300,  # GQA questions come from the first this-many train images
        "nlvr2_train_pairs": 600,  # NLVR2 train image pairs (one statement each); val/test: 2 pairs per image
        "questions_per_image": 4,  # VQA and GQA questions per image
        "captions_per_image": 5,
        "phrases_per_image": 3,  # phrase descriptions per image: phrase pairs ≈ 3× token pairs
        "max_regions": 36,
        "feature_dim": 2048,
        "feature_noise": 0.6,  # i.i.d. Gaussian noise (std at a 128-d reference; see mmcore_synth.features)
        "nuisance": 1.5,  # scale of the per-region nuisance factors fed through the feature map
        "label_accuracy": 0.8,  # detector object-label accuracy
        "attr_accuracy": 0.7,  # detector attribute-label accuracy
        "hard_negatives_top": 100,
        # Which images ITM_HS's difficult-sample file covers: ``train`` gives every pre-training image its top-M
        # nearest images; ``retrieval`` mirrors ViLBERT's file, which covers Flickr30k's retrieval images only
        # (the others then get a random negative, as the paper specifies). README: both measured.
        "hard_negative_pool": "train",
        "vocab_size": 1000,
        "features_cache": "ram",  # disk | ram | gpu: where the visual fields live while training
        "in_memory": True,  # superseded by features_cache (false still means disk when features_cache is ram)
    }
    views: ClassVar[dict[str, frozenset[str]]] = {
        "token": PAIR_FIELDS,
        "phrase": PAIR_FIELDS,
        "sentence": PAIR_FIELDS,
        "vqa": PAIR_FIELDS | {"vqa_target", "question_id"},
        "retrieval": PAIR_FIELDS | {"caption_index", "image_index"},
        "gqa": PAIR_FIELDS | {"gqa_target", "question_id"},
        "nlvr2": PAIR_FIELDS | SECOND_IMAGE_FIELDS | {"nlvr2_label", "identifier"},
    }
    view_labels: ClassVar[dict[str, str]] = {"token": "T", "phrase": "P", "sentence": "S"}  # as in Table 4

    def __init__(self, options: dict[str, Any], cache_dir: Path) -> None:
        super().__init__(options, Path(cache_dir))
        self._check_options()
        self._store: FeatureStore | None = None
        self._tokenizer: Any = None
        self._info: DataInfo | None = None
        self._views: dict[tuple[str, str], ExampleSource] = {}

    def _check_options(self) -> None:
        o = self.options
        for key in ("train_images", "val_images", "test_images", "max_regions", "feature_dim", "gqa_train_images",
                    "nlvr2_train_pairs"):
            if int(o[key]) < (1 if key != "max_regions" else 2):
                raise MMCoreError(f"dataset 'synthworld': option {key} must be positive, got {o[key]}")
        if int(o["train_images"]) < 2:
            raise MMCoreError("dataset 'synthworld': train_images must be at least 2 (pairs need other images)")
        for key in ("label_accuracy", "attr_accuracy"):
            if not 0.0 <= float(o[key]) <= 1.0:
                raise MMCoreError(f"dataset 'synthworld': option {key} must lie in [0, 1], got {o[key]}")
        if o["features_cache"] not in CACHE_MODES:
            raise MMCoreError(f"dataset 'synthworld': option features_cache must be one of {', '.join(CACHE_MODES)}, "
                              f"got {o['features_cache']!r}")
        if o["hard_negative_pool"] not in _HARD_NEGATIVE_FILES:
            raise MMCoreError(f"dataset 'synthworld': option hard_negative_pool must be one of "
                              f"{', '.join(_HARD_NEGATIVE_FILES)}, got {o['hard_negative_pool']!r}")

    # ---- generation and cache ------------------------------------------------------------------------------

    def generation_options(self) -> dict[str, Any]:
        """The options that determine the generated files (the cache key)."""
        return {k: v for k, v in sorted(self.options.items()) if k not in _VIEW_OPTIONS}

    @property
    def directory(self) -> Path:
        """``cache_dir/synthworld/<short hash of the generation options>/``."""
        key = json.dumps({"version": GENERATOR_VERSION, **self.generation_options()}, sort_keys=True)
        return self.cache_dir / "synthworld" / hashlib.sha256(key.encode()).hexdigest()[:12]

    def prepare(self, progress: Callable[[str], None] | None = None) -> None:
        """Generate the world unless a complete copy is cached (generated in a temp dir, renamed when done)."""
        final = self.directory
        if final.is_dir():
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            generate(self.generation_options(), tmp, progress)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished the same world first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _ready(self) -> Path:
        if not self.directory.is_dir():
            self.prepare()
        return self.directory

    def store(self) -> FeatureStore:
        """The feature store of every image (loaded once)."""
        if self._store is None:
            cache = self.options["features_cache"]
            if cache == "ram" and not self.options["in_memory"]:
                cache = "disk"
            self._store = FeatureStore(self._ready() / "features.h5", cache=cache)
        return self._store

    # ---- the Dataset contract ------------------------------------------------------------------------------

    def tokenizer(self) -> Any:
        """The WordPiece tokenizer built from the world's texts (``vocab.txt``)."""
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self._ready())
        return self._tokenizer

    def object_names(self) -> list[str]:
        """The detector's objects vocabulary, read back from ``objects_vocab.txt``."""
        return ann.read_vocab_txt(self._ready() / "objects_vocab.txt")

    def attribute_names(self) -> list[str]:
        """The detector's attributes vocabulary, read back from ``attributes_vocab.txt``."""
        return ann.read_vocab_txt(self._ready() / "attributes_vocab.txt")

    def info(self) -> DataInfo:
        """Vocabulary, feature and answer-table facts for backbones, tasks and heads."""
        if self._info is None:
            self._info = self._read_info()
        return self._info

    def _read_info(self) -> DataInfo:
        tok = self.tokenizer()
        objects, attributes = self.object_names(), self.attribute_names()
        special = tuple(int(tok.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS)
        return DataInfo(
            vocab_size=len(tok),
            feature_dim=int(self.options["feature_dim"]),
            max_regions=int(self.options["max_regions"]),
            num_objects=len(objects),
            num_attributes=len(attributes),
            pad_token_id=int(tok.pad_token_id),
            cls_token_id=int(tok.cls_token_id),
            sep_token_id=int(tok.sep_token_id),
            mask_token_id=int(tok.mask_token_id),
            unk_token_id=int(tok.unk_token_id),
            special_token_ids=special,
            object_token_ids=word_token_ids(tok, objects),
            object_names=tuple(objects),
            attribute_names=tuple(attributes),
            answers={"vqa": tuple(ann.read_answer_table(self._ready())),
                     "gqa": tuple(ann.read_answer_file(self._ready() / GQA_ANSWERS))},
        )

    def view(self, name: str, split: str) -> ExampleSource:
        """The examples of one view and split (built once, then cached)."""
        if name not in self.views:
            raise MMCoreError(f"dataset 'synthworld' has no view {name!r}; views: {', '.join(self.views)}")
        if split not in self.splits:
            raise MMCoreError(f"dataset 'synthworld' has no split {split!r}; splits: {', '.join(self.splits)}")
        if name in _PRETRAIN_VIEWS and split == "test":
            raise MMCoreError(f"dataset 'synthworld': pre-training view {name!r} has splits train and val only "
                              "(test images are kept unseen for downstream evaluation)")
        key = (name, split)
        if key not in self._views:
            self._views[key] = self._build(name, split)
        return self._views[key]

    def _build(self, name: str, split: str) -> ExampleSource:
        root, store = self._ready(), self.store()
        pool = _HARD_NEGATIVE_FILES[str(self.options["hard_negative_pool"])]
        hard = load_hard_negatives(root / pool) if split == "train" else None
        if name == "token":
            return PairView(token_pairs(store, self.object_names(), image_ids(self.options)[split]), store, hard)
        if name in ("phrase", "sentence"):
            records = ann.read_pretrain(root / f"pretrain_{split}.json")
            if name == "sentence":
                return PairView(ann.pretrain_sentences(records, "mscoco"), store, hard)
            pairs = self._phrase_pairs(records)
            # The phrases' attribute and category words, which the phrase stage's MLM masks.
            marker = WordMarker([*self.attribute_names(), *self.object_names()])
            return PairView(pairs, store, hard, extra=marker.extras([text for _, text in pairs]))
        if name == "vqa":
            return AnswerView(ann.read_vqa(root / f"vqa_{split}.json"), ann.read_answer_table(root), store, hard,
                              target_field="vqa_target")
        if name == "gqa":
            return AnswerView(ann.read_gqa(root / f"gqa_{split}.json"), ann.read_answer_file(root / GQA_ANSWERS),
                              store, hard, target_field="gqa_target", question_id_type=str)  # GQA's ids are strings
        if name == "nlvr2":
            return TwoImageView(ann.read_nlvr2(root / f"nlvr2_{split}.json"), store, label_field="nlvr2_label")
        items = ann.read_retrieval(root / f"retrieval_{split}.json")
        hard = load_hard_negatives(root / "retrieval_hard_negatives.npz") if split == "train" else None
        return CaptionRankingView(items, store, hard)

    def _phrase_pairs(self, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """Raw VG phrases minus those with a verb (the world knows its verbs), grouped into descriptions."""
        pairs = []
        count = int(self.options["phrases_per_image"])
        for rec in records:
            kept = remove_verb_phrases(rec["sentf"].get("vg", []), VERBS.__contains__)
            # Seeded per image so the phrase view is the same on every load.
            rng = random.Random(f"{self.options['seed']}:{rec['img_id']}:phrase-view")
            # 2-4 phrases of ~3 words each keep a description within the 20-token text limit.
            descriptions = phrase_descriptions(kept, count, rng, min_phrases=2, max_phrases=4)
            pairs += [(rec["img_id"], text) for text in descriptions]
        return pairs
