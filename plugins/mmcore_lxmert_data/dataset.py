"""The ``lxmert`` dataset: LXMERT's annotation files as shipped, read over feature stores made by ``mmcore data``.

Expected layout under ``data_root`` (every file name is an option; the defaults follow LXMERT's ``data/``)::

    data_root/
      vocab.txt                      BERT uncased WordPiece vocabulary (bert-base-uncased's vocab.txt)
      objects_vocab.txt              bottom-up-attention's 1600 object names, one per line (``name,alias`` ok)
      attributes_vocab.txt           its 400 attribute names
      lxmert/mscoco_train.json       pre-training JSON [{img_id, sentf: {source: [sentence]}, labelf}]
      lxmert/mscoco_nominival.json   (train)        lxmert/vgnococo.json (train)
      lxmert/mscoco_minival.json     (val)
      vqa/train.json  vqa/nominival.json (train; val: a held-out slice of their images, option vqa_holdout)
      vqa/minival.json (test: test.json has no answers; model selection never sees it)
      vqa/trainval_ans2label.json    the 3129-answer table
      flickr30k/flickr30k_train2014.json  flickr30k/flickr30k_test2014.json   [{img_path, sentences}]
      gqa/train.json  gqa/valid.json  gqa/testdev.json   [{img_id, label: {answer: 1.0}, question_id, sent}]
      gqa/trainval_ans2label.json    GQA's own answer table
      nlvr2/train.json  nlvr2/valid.json  nlvr2/test.json   [{identifier, img0, img1, label (0/1), sent, uid}]
      mscoco_imgfeat/train2014_obj36.h5   mscoco_imgfeat/val2014_obj36.h5     ← mmcore data convert-tsv
      vg_gqa_imgfeat/vg_gqa_obj36.h5      flickr30k_imgfeat/flickr30k_obj36.h5  (from LXMERT's *.tsv)
      vg_gqa_imgfeat/gqa_testdev_obj36.h5  nlvr2_imgfeat/{train,valid,test}_obj36.h5

Relative paths are resolved against ``data_root``, itself relative to the working directory. Views (same names
and fields as ``synthworld``): ``token`` (each image's detector labels in region order, as text; the images with
``mscoco`` captions unless ``token_images: all``), ``phrase``
(the ``vg`` phrases of an image minus those with a verb, a few joined with commas), ``sentence`` (``mscoco``
captions), ``vqa``, ``gqa``, ``nlvr2`` (a statement about two images) and ``retrieval``. A view is read, checked and counted the first time a stage uses it.

Annotations whose image is in none of the family's stores are an error naming the file and record
(``missing_images: error``, the default) or, with ``missing_images: skip``, counted and skipped with a warning.
VQA and GQA answers outside their answer table are always counted, dropped and warned about.
"""

from __future__ import annotations

import os
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import h5py

from mmcore.api import PAIR_FIELDS, SECOND_IMAGE_FIELDS, DataInfo, Dataset, ExampleSource, MMCoreError
from mmcore.data import annotations as ann
from mmcore.data.hardneg import load_hard_negatives
from mmcore.data.store import CACHE_MODES, FeatureStore
from mmcore.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, word_token_ids
from mmcore_lxmert_data.stores import StoreUnion
from mmcore_lxmert_data.verbs import load_verb_filter

FAMILIES = {"token": "pretrain", "phrase": "pretrain", "sentence": "pretrain", "vqa": "vqa", "gqa": "gqa",
            "nlvr2": "nlvr2", "retrieval": "retrieval"}
_FAMILY_NAMES = ("pretrain", "vqa", "gqa", "nlvr2", "retrieval")
_FILE_LISTS = [f"{family}_{split}" for family in _FAMILY_NAMES for split in ("train", "val", "test")]
_STORE_LISTS = tuple(f"{family}_features" for family in _FAMILY_NAMES)
_ANSWER_TABLES = {"vqa": "answer_table", "gqa": "gqa_answer_table"}  # DataInfo.answers key -> option


class LxmertData(Dataset):
    """LXMERT's pre-training, VQA, GQA, NLVR2 and Flickr30k JSON as shipped, over converted TSV features."""

    name: ClassVar[str] = "lxmert"
    defaults: ClassVar[dict[str, Any]] = {
        "data_root": "data",
        "vocab": "vocab.txt",
        "objects_vocab": "objects_vocab.txt",
        "attributes_vocab": "attributes_vocab.txt",
        "pretrain_train": ["lxmert/mscoco_train.json", "lxmert/mscoco_nominival.json", "lxmert/vgnococo.json"],
        "pretrain_val": ["lxmert/mscoco_minival.json"],
        "pretrain_test": [],
        "vqa_train": ["vqa/train.json", "vqa/nominival.json"],
        # Empty: `val` is a held-out slice of vqa_train's images (vqa_holdout), so that model selection never sees
        # the reported minival. List files here to select on them instead (the train split then keeps every image).
        "vqa_val": [],
        # LXMERT's vqa/test.json carries no answers (the VQA server scores it): evaluate locally on minival.
        "vqa_test": ["vqa/minival.json"],
        "vqa_holdout": 0.05,  # the fraction of vqa_train's images whose questions form `val` (when vqa_val is empty)
        "answer_table": "vqa/trainval_ans2label.json",
        # LXMERT's own GQA runs train on train + valid and report testdev; list both here to do the same.
        "gqa_train": ["gqa/train.json"],
        "gqa_val": ["gqa/valid.json"],
        "gqa_test": ["gqa/testdev.json"],
        "gqa_answer_table": "gqa/trainval_ans2label.json",
        "nlvr2_train": ["nlvr2/train.json"],
        "nlvr2_val": ["nlvr2/valid.json"],
        "nlvr2_test": ["nlvr2/test.json"],
        "retrieval_train": ["flickr30k/flickr30k_train2014.json"],
        "retrieval_val": [],
        "retrieval_test": ["flickr30k/flickr30k_test2014.json"],
        "pretrain_features": ["mscoco_imgfeat/train2014_obj36.h5", "mscoco_imgfeat/val2014_obj36.h5",
                              "vg_gqa_imgfeat/vg_gqa_obj36.h5"],
        "vqa_features": ["mscoco_imgfeat/train2014_obj36.h5", "mscoco_imgfeat/val2014_obj36.h5"],
        # GQA's testdev images are not Visual Genome images: LXMERT ships them in a store of their own.
        "gqa_features": ["vg_gqa_imgfeat/vg_gqa_obj36.h5", "vg_gqa_imgfeat/gqa_testdev_obj36.h5"],
        "nlvr2_features": ["nlvr2_imgfeat/train_obj36.h5", "nlvr2_imgfeat/valid_obj36.h5",
                           "nlvr2_imgfeat/test_obj36.h5"],
        "retrieval_features": ["flickr30k_imgfeat/flickr30k_obj36.h5"],
        "hard_negatives": "",  # .npz from `mmcore data hard-negatives`, for the pre-training train views (ITM_HS)
        "retrieval_hard_negatives": "",  # the same for retrieval fine-tuning
        # The token stage's images: those with captions of this `sentf` source (mscoco: the COCO caption images,
        # the paper's 0.12M), or "all" (every pre-training image, Visual Genome's included).
        "token_images": "mscoco",
        "verb_filter": "builtin",  # or "package.module:function" (phrase -> contains a verb)
        "phrases_per_image": 3,
        "min_phrases": 2,
        "max_phrases": 4,
        "seed": 0,
        "missing_images": "error",  # or "skip"
        "features_cache": "disk",  # disk | ram | gpu; real stores are tens of GB: read images from disk
        "in_memory": False,  # superseded by features_cache (true still means ram when features_cache is disk)
    }
    # A single file name stands for a list of one.
    option_types: ClassVar[dict[str, Any]] = {key: list[str] | str for key in (*_FILE_LISTS, *_STORE_LISTS)}
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
        for key in (*_FILE_LISTS, *_STORE_LISTS):
            value = self.options[key]
            self.options[key] = [value] if isinstance(value, str) else value
            if not isinstance(self.options[key], list) or not all(isinstance(v, str) for v in self.options[key]):
                raise MMCoreError(f"dataset 'lxmert': option {key} must be a list of file names, got {value!r}")
        if self.options["features_cache"] not in CACHE_MODES:
            raise MMCoreError(f"dataset 'lxmert': option features_cache must be one of {', '.join(CACHE_MODES)}, "
                              f"got {self.options['features_cache']!r}")
        if self.options["missing_images"] not in ("error", "skip"):
            raise MMCoreError(f"dataset 'lxmert': option missing_images must be 'error' or 'skip', "
                              f"got {self.options['missing_images']!r}")
        holdout = self.options["vqa_holdout"]
        if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 <= holdout < 1:
            raise MMCoreError(f"dataset 'lxmert': option vqa_holdout must be a fraction in [0, 1), got {holdout!r}")
        if not isinstance(self.options["token_images"], str) or not self.options["token_images"]:
            raise MMCoreError("dataset 'lxmert': option token_images must name a sentf source (e.g. mscoco) or be "
                              f"'all', got {self.options['token_images']!r}")
        for key in ("phrases_per_image", "min_phrases", "max_phrases"):
            if not isinstance(self.options[key], int) or self.options[key] < 1:
                raise MMCoreError(f"dataset 'lxmert': option {key} must be a positive integer")
        self.root = Path(self.options["data_root"]).expanduser()
        self._say: Callable[[str], None] | None = None
        self._stores: dict[Path, FeatureStore] = {}
        self._tokenizer: Any = None
        self._info: DataInfo | None = None
        self._views: dict[tuple[str, str], ExampleSource] = {}

    # ---- files ------------------------------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """A file name resolved against ``data_root`` (absolute names stay as they are)."""
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.root / path

    def _existing(self, option: str, name: str, what: str) -> Path:
        path = self.path(name)
        if not path.is_file():
            raise MMCoreError(f"dataset 'lxmert': {what} {path} not found (option {option}; data_root "
                              f"{self.root}); the expected layout is in plugins/mmcore_lxmert_data/README.md")
        return path

    def _message(self, text: str) -> None:
        if self._say is not None:
            self._say(text)

    def _warn(self, text: str) -> None:
        if self._say is not None:
            self._say(f"[yellow]warning:[/yellow] {text}")
        else:
            warnings.warn(text, stacklevel=3)

    def prepare(self, progress: Callable[[str], None] | None = None) -> None:
        """Check that data_root, the tokenizer vocabulary and the detector vocabularies exist."""
        self._say = progress
        if not self.root.is_dir():
            raise MMCoreError(f"dataset 'lxmert': data_root {self.root} is not a directory (option data_root)")
        self._existing("vocab", self.options["vocab"], "tokenizer vocabulary (BERT uncased vocab.txt)")
        for key in ("objects_vocab", "attributes_vocab"):
            self._existing(key, self.options[key], "detector vocabulary")
        self._message(f"lxmert: data in {self.root}")

    # ---- the Dataset contract ---------------------------------------------------------------------------------

    def tokenizer(self) -> Any:
        """BERT uncased WordPiece from the local ``vocab`` file (a ``vocab.txt``) or tokenizer directory."""
        if self._tokenizer is None:
            path = self.path(self.options["vocab"])
            if path.is_dir():
                self._tokenizer = load_tokenizer(path)
            else:
                path = self._existing("vocab", self.options["vocab"], "tokenizer vocabulary (BERT uncased vocab.txt)")
                if path.name != "vocab.txt":
                    raise MMCoreError(f"dataset 'lxmert': the tokenizer vocabulary must be named vocab.txt "
                                      f"(option vocab: {path}), or name a tokenizer directory")
                from transformers import BertTokenizerFast

                self._tokenizer = BertTokenizerFast.from_pretrained(str(path.parent), local_files_only=True,
                                                                    do_lower_case=True)
        return self._tokenizer

    def object_names(self) -> list[str]:
        """The detector's objects vocabulary (index = object id)."""
        return ann.read_vocab_txt(self._existing("objects_vocab", self.options["objects_vocab"], "detector vocabulary"))

    def attribute_names(self) -> list[str]:
        """The detector's attributes vocabulary (index = attribute id)."""
        return ann.read_vocab_txt(self._existing("attributes_vocab", self.options["attributes_vocab"],
                                                 "detector vocabulary"))

    def focus_words(self) -> list[str]:
        """Every object and attribute name of the detector's vocabularies, aliases included (``name,alias``)."""
        words = []
        for key in ("attributes_vocab", "objects_vocab"):
            path = self._existing(key, self.options[key], "detector vocabulary")
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as exc:
                raise MMCoreError(f"{path}: not a text vocabulary (byte {exc.start} is not UTF-8)") from None
            words += [w.strip() for line in lines for w in line.split(",")]
        return [w for w in words if w]

    def answers(self, task: str = "vqa") -> list[str] | None:
        """The answer table of ``vqa`` (option answer_table) or ``gqa`` (gqa_answer_table); None when absent."""
        path = self.path(self.options[_ANSWER_TABLES[task]])
        return ann.read_answer_file(path) if path.is_file() else None

    def info(self) -> DataInfo:
        """Vocabulary, feature and answer-table facts; feature sizes come from the stores that exist."""
        if self._info is None:
            tok = self.tokenizer()
            objects, attributes = self.object_names(), self.attribute_names()
            dim, regions = self._feature_shape()
            tables = {task: self.answers(task) for task in _ANSWER_TABLES}
            self._info = DataInfo(
                vocab_size=len(tok), feature_dim=dim, max_regions=regions, num_objects=len(objects),
                num_attributes=len(attributes), pad_token_id=int(tok.pad_token_id),
                cls_token_id=int(tok.cls_token_id), sep_token_id=int(tok.sep_token_id),
                mask_token_id=int(tok.mask_token_id), unk_token_id=int(tok.unk_token_id),
                special_token_ids=tuple(int(tok.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS),
                object_token_ids=word_token_ids(tok, objects), object_names=tuple(objects),
                attribute_names=tuple(attributes),
                answers={task: tuple(table) for task, table in tables.items() if table},
            )
        return self._info

    def _feature_shape(self) -> tuple[int, int]:
        """(feature_dim, max_regions) over every listed store that exists; they must agree on feature_dim."""
        shapes = {}
        for key in _STORE_LISTS:
            for name in self.options[key]:
                path = self.path(name)
                if path.is_file() and path not in shapes:
                    try:
                        with h5py.File(path, "r") as f:
                            shapes[path] = (int(f.attrs["feature_dim"]), int(f.attrs["max_boxes"]))
                    except (OSError, KeyError):
                        raise MMCoreError(f"dataset 'lxmert': {path} is not an mmcore feature store") from None
        if not shapes:
            listed = ", ".join(str(self.path(n)) for k in _STORE_LISTS for n in self.options[k])
            raise MMCoreError(f"dataset 'lxmert': no feature store found (looked for {listed}); convert LXMERT's "
                              "TSV files with `mmcore data convert-tsv IN.tsv OUT.h5`")
        dims = {dim for dim, _ in shapes.values()}
        if len(dims) > 1:
            raise MMCoreError("dataset 'lxmert': feature stores disagree on feature_dim: "
                              + ", ".join(f"{p} {d}" for p, (d, _) in shapes.items()))
        return dims.pop(), max(r for _, r in shapes.values())

    def _cache(self) -> str:
        cache = self.options["features_cache"]
        return "ram" if cache == "disk" and self.options["in_memory"] else cache

    def stores(self, family: str) -> StoreUnion:
        """The feature stores of a family (``pretrain``, ``vqa``, ``gqa``, ``nlvr2``, ``retrieval``) read as one;
        each file is opened once."""
        key = f"{family}_features"
        stores = []
        for name in self.options[key]:
            path = self._existing(key, name, "feature store")
            if path not in self._stores:
                self._stores[path] = FeatureStore(path, cache=self._cache())
            stores.append(self._stores[path])
        if not stores:
            raise MMCoreError(f"dataset 'lxmert': option {key} lists no feature store")
        if self._cache() == "gpu" and (len(stores) > 1 or stores[0].max_boxes != self.info().max_regions):
            # A batch gathers from one device table of max_regions rows per image.
            raise MMCoreError(f"dataset 'lxmert': features_cache 'gpu' needs option {key} to list one store of "
                              f"{self.info().max_regions} regions per image; use 'ram' or 'disk'")
        return StoreUnion(stores, self.info().max_regions)

    def view(self, name: str, split: str) -> ExampleSource:
        """The examples of one view and split (read, checked and counted once, then cached)."""
        if name not in self.views:
            raise MMCoreError(f"dataset 'lxmert' has no view {name!r}; views: {', '.join(self.views)}")
        if split not in self.splits:
            raise MMCoreError(f"dataset 'lxmert' has no split {split!r}; splits: {', '.join(self.splits)}")
        key = (name, split)
        if key not in self._views:
            from mmcore_lxmert_data.build import build_view

            view, summary = build_view(self, name, split, FAMILIES[name])
            self._message(f"lxmert {name}/{split}: {summary}")
            self._views[key] = view
        return self._views[key]

    def hard_negatives(self, option: str) -> dict[str, list[str]] | None:
        """The hard-negative file named by ``option``, or None when the option is empty."""
        name = self.options[option]
        return load_hard_negatives(self._existing(option, name, "hard-negative file")) if name else None

    def holds_out(self, family: str, split: str) -> bool:
        """Whether ``split`` of ``family`` is drawn from a held-out slice of the train files' images (``val``) or
        is those files without it (``train``): VQA with an empty ``vqa_val`` and a positive ``vqa_holdout``."""
        return (family == "vqa" and split in ("train", "val") and not self.options["vqa_val"]
                and self.options["vqa_holdout"] > 0)

    @classmethod
    def split_files(cls, options: dict[str, Any], view: str, split: str) -> list[str] | None:
        """The annotation files ``view``/``split`` reads (absolute; a held-out slice is named as such); see
        :meth:`mmcore.api.Dataset.split_files`."""
        family, opts = FAMILIES.get(view), {**cls.defaults, **options}
        if family is None or split not in cls.splits:
            return None
        names = opts[f"{family}_{split}"]
        root = Path(str(opts["data_root"])).expanduser()
        if family == "vqa" and split in ("train", "val") and not opts["vqa_val"] and opts["vqa_holdout"] > 0:
            part = "held-out images" if split == "val" else "without the held-out images"
            return [f"{os.path.abspath(root / name)} ({part})" for name in opts["vqa_train"]]
        return [os.path.abspath(root / name) for name in ([names] if isinstance(names, str) else names)]

    def files(self, family: str, split: str) -> list[Path]:
        """The annotation files of a family (pretrain, vqa, gqa, nlvr2, retrieval) and split (for a held-out
        ``val``, the train files it is drawn from); an error when none is listed."""
        key = f"{family}_train" if self.holds_out(family, split) else f"{family}_{split}"
        if not self.options[key]:
            raise MMCoreError(f"dataset 'lxmert': no {family} annotation file for split {split!r} (option {key} is "
                              "empty)")
        return [self._existing(key, name, "annotation file") for name in self.options[key]]

    def phrase_rng(self, img_id: str) -> random.Random:
        """Seeded per image, so the phrase view is the same on every load."""
        return random.Random(f"{self.options['seed']}:{img_id}:phrase-view")

    def verb_filter(self) -> Callable[[str], bool]:
        """The phrase → contains-a-verb callable named by ``verb_filter``."""
        return load_verb_filter(self.options["verb_filter"])

