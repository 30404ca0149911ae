"""The contract between the engine and every plugin: data info, batches, backbones, tasks, heads, datasets.

Batch fields (one vocabulary for every plugin; the whole contract, with examples: docs/plugins.md):

- ``input_ids`` [B,T] long, ``attention_mask`` [B,T] long, ``position_ids`` [B,T] long
  (whole-word positions: padding 0, [CLS]/[SEP] 1, words numbered from 2; backbones may ignore it),
- ``visual_feats`` [B,O,F] float, ``visual_pos`` [B,O,4] float (x1,y1,x2,y2 in [0,1]),
  ``visual_mask`` [B,O] long (1 = a real region),
- ``obj_labels`` / ``obj_conf`` / ``attr_labels`` / ``attr_conf`` [B,O] (detector output),
- ``img_id`` list[str], ``text`` list[str],
- two-image examples (NLVR2) add the second image's fields with the suffix ``_1`` (``visual_feats_1``,
  ``visual_pos_1``, ``visual_mask_1``, ``img_id_1``, ...: :data:`SECOND_IMAGE_FIELDS`).

An *example* is the per-item dict a view yields: the same names without the batch dimension, numpy arrays for
the visual fields and a plain ``text`` string (the collator tokenises). Tasks and heads add their own fields
with a prefix (``itm_label``, ``vqa_target``, ...); the collator stacks any numeric field and keeps any other
as a list.

A view may mark words of its texts for masked-language objectives: ``focus_spans`` (:data:`FOCUS_SPANS`), a list
of (start, end) character spans into ``text``, becomes ``focus_tokens`` (:data:`FOCUS_TOKENS`) [B,T] bool, true
at the WordPieces inside a span (all false for an example without spans). The phrase views mark the attribute
and category words of their phrases, which the paper's phrase-stage MLM masks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    Any,
    ClassVar,
    NamedTuple,
    Protocol,
    runtime_checkable,
)

import numpy as np
import torch
from torch import Tensor, nn

from mmcore.display import Metric
from mmcore.errors import MMCoreError, OptionError, did_you_mean
from mmcore.hubcache import local_path, not_found_hint

__all__ = [
    "PAIR_FIELDS", "TEXT_FIELDS", "IMAGE_FIELDS", "SECOND_IMAGE_SUFFIX", "SECOND_IMAGE_FIELDS", "FOCUS_SPANS",
    "FOCUS_TOKENS", "Batch", "Example", "DataInfo", "BackboneOutput", "Backbone", "BackboneFactory", "PairEncoder",
    "ExampleSource", "Task", "EvalContext", "Head", "Dataset", "RunInfo", "Metric", "MMCoreError", "OptionError",
    "did_you_mean", "local_path", "not_found_hint", "init_bert_", "as_float_array",
]

Batch = dict[str, Any]
Example = dict[str, Any]

TEXT_FIELDS = frozenset({"input_ids", "attention_mask", "position_ids", "text"})
IMAGE_FIELDS = frozenset(
    {"visual_feats", "visual_pos", "visual_mask", "obj_labels", "obj_conf", "attr_labels", "attr_conf", "img_id"}
)
PAIR_FIELDS = TEXT_FIELDS | IMAGE_FIELDS
# The second image of a two-image example (NLVR2): the image fields with this suffix (``visual_feats_1``, ...).
SECOND_IMAGE_SUFFIX = "_1"
SECOND_IMAGE_FIELDS = frozenset(f + SECOND_IMAGE_SUFFIX for f in IMAGE_FIELDS)
FOCUS_SPANS = "focus_spans"  # example: character spans of the words a masked-language objective should target
FOCUS_TOKENS = "focus_tokens"  # batch: [B,T] bool, the WordPieces inside those spans


@dataclass(frozen=True)
class DataInfo:
    """What a dataset tells backbones, tasks and heads about its vocabulary and features."""

    vocab_size: int
    feature_dim: int
    max_regions: int
    num_objects: int
    num_attributes: int
    pad_token_id: int
    cls_token_id: int
    sep_token_id: int
    mask_token_id: int
    unk_token_id: int
    special_token_ids: tuple[int, ...]
    # WordPiece ids of each detector object label's name, in objects-vocabulary order (used by TITP/TITS: W ∩ L).
    object_token_ids: tuple[tuple[int, ...], ...]
    object_names: tuple[str, ...] = ()
    attribute_names: tuple[str, ...] = ()
    # Downstream answer tables, by view name (e.g. {"vqa": ("yes", "no", ...)}).
    answers: dict[str, tuple[str, ...]] = field(default_factory=dict)


class BackboneOutput(NamedTuple):
    """The encoder's outputs: per-token ``text`` [B,T,H], per-region ``vision`` [B,O,H], ``pooled`` [B,H]."""

    text: Tensor
    vision: Tensor
    pooled: Tensor


class Backbone(nn.Module):
    """Base class for encoders: text ids + region features in, :class:`BackboneOutput` out."""

    hidden_size: int

    def forward(  # type: ignore[override]
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        visual_feats: Tensor,
        visual_pos: Tensor,
        visual_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> BackboneOutput:
        raise NotImplementedError

    def encode(self, batch: Batch, suffix: str = "") -> BackboneOutput:
        """Run the encoder on a batch's fields (``suffix`` selects e.g. the ``_1`` image of a two-image example)."""
        return self(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            visual_feats=batch["visual_feats" + suffix],
            visual_pos=batch["visual_pos" + suffix],
            visual_mask=batch.get("visual_mask" + suffix),
            position_ids=batch.get("position_ids"),
        )

    def word_embeddings(self) -> nn.Embedding:
        """The input word-embedding table (an MLM decoder ties its weights to it)."""
        raise NotImplementedError

    def parameter_counts(self) -> dict[str, int]:
        """Parameter counts by part, name -> count (``mmcore params`` prints them); default: ``total`` only."""
        return {"total": sum(p.numel() for p in self.parameters())}

    def pair_encoder(self) -> PairEncoder | None:
        """For scoring many (text, image) pairs in evaluation: a :class:`PairEncoder` that does each text's and
        each image's own work once; None (the default) encodes every pair whole with :meth:`encode`."""
        return None


@runtime_checkable
class PairEncoder(Protocol):
    """Scores many (text, image) pairs (retrieval's caption × image matrix) in evaluation mode, without grad.

    :meth:`texts` takes the text fields of all texts [C,T,...] and :meth:`images` the image fields of all images
    [I,...]; each returns tensors whose first dimension is still C / I (a text's second dimension its token
    position, so that a batch can be cut to its longest text), under keys distinct from each other's.
    :meth:`pooled` takes those rows gathered for a batch of pairs and returns the [B,H] ``pooled`` output that
    :meth:`Backbone.encode` gives for the same pairs, up to floating-point rounding.
    """

    def texts(self, fields: Batch) -> Batch: ...

    def images(self, fields: Batch) -> Batch: ...

    def pooled(self, pairs: Batch) -> Tensor: ...


BackboneFactory = Callable[[dict[str, Any], DataInfo], Backbone]


@runtime_checkable
class ExampleSource(Protocol):
    """What a view offers tasks and heads that build pairs: images by id, random texts, hard negatives."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Example: ...

    def image(self, img_id: str) -> Example:
        """The visual fields (``visual_feats``, ``visual_pos``, ``visual_mask``, labels, ``img_id``) of one image."""
        ...

    def image_ids(self) -> Sequence[str]:
        """Every image id this view draws from."""
        ...

    def random_text(self, rng: random.Random, exclude_img_id: str) -> str:
        """A text of this view that belongs to an image other than ``exclude_img_id``."""
        ...

    def hard_negatives(self, img_id: str) -> Sequence[str]:
        """Ids of the images most similar to ``img_id`` (nearest first, itself excluded); may be empty."""
        ...


class Task(nn.Module):
    """A pre-training objective: optionally re-pairs examples, corrupts the batch, owns a head, returns a loss.

    Subclasses set ``name``, ``requires`` (batch fields the stage's data must provide), ``defaults`` (every
    option with its default; the recipe may override only these keys) and ``order`` (when ``corrupt`` runs among
    the stage's tasks: 0 re-pairing, 10 targets from clean inputs, 20 shuffles, 30 masking).

    ``prepare`` returns a new dict (never modifies the view's example); ``corrupt`` changes fields in place without
    changing their shapes or removing any, and adds its own with its prefix. After ITM/ITM_HS re-pairing
    ``itm_label`` is 0 for a mismatched pair (ITM_HS also replaces ``img_id`` with the swapped-in image's), and one
    image appears several times per batch. See docs/plugins.md, "Tasks and how they compose in a stage".

    Tables name the task ``display_name`` (default: ``name`` in capitals) and list a curriculum's tasks by
    ``display_order``, then name.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = PAIR_FIELDS
    defaults: ClassVar[dict[str, Any]] = {}
    # Option -> type (an annotation: int | None, list[str], Literal[...]) where the default does not say it.
    option_types: ClassVar[dict[str, Any]] = {}
    order: ClassVar[int] = 50
    display_name: ClassVar[str] = ""
    display_order: ClassVar[int] = 100

    def __init__(self, info: DataInfo, backbone: Backbone, **options: Any) -> None:
        super().__init__()
        self.info = info
        self.options = {**self.defaults, **options}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Reject option values this task cannot take by raising :class:`OptionError`; ``mmcore validate`` calls it
        with the resolved options (defaults filled in), before any data or model exists. Default: accept all."""

    def prepare(self, example: Example, source: ExampleSource, rng: random.Random) -> Example:
        """Per-example work in the data loader (e.g. swap the image for a hard negative); default: unchanged."""
        return example

    def corrupt(self, batch: Batch, generator: torch.Generator) -> None:
        """Batch-level work before the forward pass (masking, shuffling, targets), in place; default: none."""

    def loss(self, output: BackboneOutput, batch: Batch) -> Tensor:
        """The scalar loss of this task for one forward pass over the corrupted batch."""
        raise NotImplementedError


class EvalContext(Protocol):
    """What the engine gives a head to evaluate: device, batch size, collation, a progress bar and a scratch folder.

    ``scratch`` is a directory of this evaluation alone (the engine's is ``<run>/eval/<name>/``), kept across an
    interruption so a head may keep resumable partial work there (the retrieval head its score cache); ``None``
    when the caller gives none.
    """

    device: torch.device
    batch_size: int
    scratch: Path | None

    def collate(self, examples: list[Example]) -> Batch:
        """Tokenise and stack examples into a batch already on ``device``."""
        ...

    def progress(self, total: int, description: str) -> Callable[..., None]:
        """Start a progress bar of ``total`` units; returns ``advance(n, info=None)``, which moves it by ``n`` units
        and, given ``info`` (a short string such as ``"1,200 pairs/s"``), shows it beside the bar."""
        ...

    def batches(self, examples: Sequence[Example], description: str) -> Iterator[Batch]:
        """Collated device batches over ``examples`` in order, with a progress bar."""
        ...


class Head(nn.Module):
    """A downstream objective for fine-tuning and evaluation; owns its metrics.

    ``pretrained`` maps pre-training task names to the trained task modules (so ``retrieval`` can start from the
    ITM classifier for zero-shot). ``zero_shot_ready`` says whether evaluation without fine-tuning makes sense.
    ``evaluate`` runs in eval mode under ``torch.no_grad()`` and returns fractions (tables print %), including
    :meth:`primary_metric`.

    ``metrics`` declares, as :class:`Metric`, what the tables show of ``evaluate``'s keys: their labels and order,
    which form the one-row results table and ``mmcore report``'s columns, and which is primary; keys it does not
    declare are shown after them by key. Heads' columns are ordered by ``display_order``, then name. See
    docs/plugins.md, "Heads and evaluation".
    """

    name: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = PAIR_FIELDS
    defaults: ClassVar[dict[str, Any]] = {}
    # Option -> type (an annotation: int | None, list[str], Literal[...]) where the default does not say it.
    option_types: ClassVar[dict[str, Any]] = {}
    epochs: ClassVar[int] = 1  # fine-tuning epochs when a recipe entry gives none
    metrics: ClassVar[tuple[Metric, ...]] = ()
    display_order: ClassVar[int] = 100

    def __init__(self, info: DataInfo, hidden_size: int, pretrained: dict[str, Task], **options: Any) -> None:
        super().__init__()
        self.info = info
        self.options = {**self.defaults, **options}
        self.zero_shot_ready = False

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Reject option values this head cannot take by raising :class:`OptionError`; ``mmcore validate`` calls it
        with the resolved options (defaults filled in), before any data or model exists. Default: accept all."""

    def prepare(self, example: Example, source: ExampleSource, rng: random.Random) -> list[Example]:
        """Per-example work in the data loader; may expand one example into several (e.g. negatives)."""
        return [example]

    def loss(self, backbone: Backbone, batch: Batch) -> Tensor:
        """The scalar training loss on a collated batch (the head runs the backbone itself)."""
        raise NotImplementedError

    def evaluate(self, backbone: Backbone, view: ExampleSource, ctx: EvalContext) -> dict[str, float]:
        """Metrics on a whole view (e.g. ``{"accuracy": 0.61}``), computed in eval mode without gradients."""
        raise NotImplementedError

    def primary_metric(self) -> str:
        """The metric that picks the best checkpoint (higher is better): the one ``metrics`` marks primary, else
        ``accuracy``."""
        return next((metric.key for metric in self.metrics if metric.primary), "accuracy")

    def write_predictions(self, directory: Path) -> Path | None:
        """Write the predictions of the last :meth:`evaluate` into ``directory`` in the task's submission format
        and return the file; default: the head keeps none, nothing is written, ``None``."""
        return None

    # ---- per-example inspection (``mmcore inspect``); a head implements those that fit its outputs -----------

    def top_predictions(self, backbone: Backbone, batch: Batch, k: int) -> list[list[tuple[str, float]]]:
        """For each example of a collated batch, the ``k`` most probable labels (e.g. answers) with their
        probabilities in [0,1], most probable first; a head with no discrete labels raises NotImplementedError."""
        raise NotImplementedError(f"head {self.name!r} does not predict labels")

    def gold_labels(self, batch: Batch) -> list[dict[str, float]]:
        """For each example of a collated batch, its correct labels with their scores (e.g. VQA's soft scores;
        empty when the example has no label); NotImplementedError when the head has no labels."""
        raise NotImplementedError(f"head {self.name!r} has no labels")

    def pair_scores(self, backbone: Backbone, batch: Batch) -> Tensor:
        """A matching score [B] of each (text, image) pair of a collated batch, higher for a better match;
        NotImplementedError for a head that does not match texts with images."""
        raise NotImplementedError(f"head {self.name!r} does not score text-image pairs")

    def query_values(self) -> dict[str, Tensor]:
        """Per-query values [Q] of the last :meth:`evaluate`, by metric, whose mean is that metric (e.g. each query's
        hit for recall@K); the engine records a 95% bootstrap interval over the queries for each. Default: none."""
        return {}


class Dataset:
    """A source of views. Subclasses set ``name``, ``defaults`` and ``views`` (view name -> provided fields), and
    may set ``view_labels`` (view name -> a short label, e.g. ``T``, that tables write for a stage's data).

    See docs/plugins.md, "Datasets, views and the feature store", for a complete one over a feature store.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    # Option -> type (an annotation: int | None, list[str], Literal[...]) where the default does not say it.
    option_types: ClassVar[dict[str, Any]] = {}
    views: ClassVar[dict[str, frozenset[str]]] = {}
    view_labels: ClassVar[dict[str, str]] = {}
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")

    def __init__(self, options: dict[str, Any], cache_dir: Path) -> None:
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise MMCoreError(f"dataset {self.name!r}: unknown option(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted(self.defaults))}")
        self.options = {**self.defaults, **options}
        self.cache_dir = cache_dir

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Reject option values this dataset cannot take by raising :class:`OptionError`; ``mmcore validate`` calls it
        with the resolved options (defaults filled in), before any data or model exists. Default: accept all."""

    def prepare(self, progress: Callable[[str], None] | None = None) -> None:
        """Make the data ready (generate, convert, check files); called once before any view is built."""

    def info(self) -> DataInfo:
        """Vocabulary and feature facts for building backbones, tasks and heads."""
        raise NotImplementedError

    def tokenizer(self) -> Any:
        """A fast tokenizer (``transformers.PreTrainedTokenizerFast``) for this dataset's texts."""
        raise NotImplementedError

    def view(self, name: str, split: str) -> ExampleSource:
        """The examples of one view and split."""
        raise NotImplementedError

    @classmethod
    def split_files(cls, options: dict[str, Any], view: str, split: str) -> list[str] | None:
        """Optional: names of the files (or named parts of files) ``view``/``split`` reads under ``options``,
        computed without reading any data. ``mmcore validate`` rejects a fine-tuning whose selection and
        evaluation splits share one. Default ``None``: not known, not checked."""
        return None


@dataclass(frozen=True)
class RunInfo:
    """The run, as the run hooks (``mmcore_stage_start``, ``mmcore_stage_end``, ``mmcore_log``) see it: read-only
    facts, one object per process for the whole run. See docs/plugins.md, "Hooks"."""

    run_dir: Path  # the run directory: results.json, metrics.jsonl, checkpoints
    recipe_name: str
    # The resolved recipe, every default filled in: a read-only mapping over a copy (changing it changes nothing).
    recipe: Mapping[str, Any] = field(repr=False)
    seed: int
    rank: int = 0  # this process among the training processes (torchrun); 0 of 1 without it
    world_size: int = 1

    @property
    def is_main_process(self) -> bool:
        """Rank 0: the process that writes the run directory and receives ``mmcore_log``."""
        return self.rank == 0


def init_bert_(module: nn.Module) -> nn.Module:
    """BERT initialisation in place (Linear N(0, 0.02), zero biases, unit LayerNorm), as LXMERT's heads use."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=0.02)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)
    return module


def as_float_array(x: Any) -> np.ndarray:
    """A float32 numpy copy of ``x`` (helper for plugins building examples)."""
    return np.asarray(x, dtype=np.float32)
