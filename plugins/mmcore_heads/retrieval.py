"""The ``retrieval`` head: an ITM-style matching score, fine-tuned with three negatives per positive pair and
evaluated by scoring the caption × image matrix of a view: every pair (a cross-encoder has no shortcut), or a
shortlist re-ranked after a cheap first stage; optionally on the first N images only, and resumable through a
score cache file."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from mmcore.api import (
    IMAGE_FIELDS,
    Backbone,
    Batch,
    DataInfo,
    EvalContext,
    Example,
    ExampleSource,
    Head,
    MMCoreError,
    Metric,
    Task,
    init_bert_,
)
from mmcore_heads.metrics import DEFAULT_KS, first_caption_tr, recall_at_k, recall_hits
from mmcore_heads.scoring import (
    ScoreMatrix,
    ScoringOptions,
    as_path,
    cache_key,
    encode_inputs,
    score_pairs,
    scoring_autocast,
)
from mmcore_heads.shortlist import FIRST_STAGES, first_stage_scores, shortlist_mask

NEGATIVE_KINDS = ("random_image", "hard_caption", "random_caption")
# Bounded retries when a drawn negative happens to repeat the positive's text (synthetic scenes can share a
# caption); after that the draw is kept, which only makes that one negative noisy.
_RETRIES = 8


class RetrievalHead(Head):
    """Image-text retrieval: score = matched minus mismatched logit of Linear(H,2) on pooled; IR/TR R@1/5/10."""

    name: ClassVar[str] = "retrieval"
    epochs: ClassVar[int] = 8  # the paper's fine-tuning epochs
    # R@1/5/10 make the paper's Tables 2-3 columns; Table 4 shows the averages, then R@1.
    metrics: ClassVar[tuple[Metric, ...]] = (
        Metric("ir_r1", "IR R@1", results=True, headline=3, primary=True),
        Metric("ir_r5", "IR R@5", results=True),
        Metric("ir_r10", "IR R@10", results=True),
        Metric("tr_r1", "TR R@1", results=True, headline=4),
        Metric("tr_r5", "TR R@5", results=True),
        Metric("tr_r10", "TR R@10", results=True),
        Metric("ir_mean", "IR avg", headline=1,
               description="mean of IR R@1, R@5 and R@10 (as in the paper's Table 4)"),
        Metric("tr_mean", "TR avg", headline=2, description="mean of TR R@1, R@5 and R@10"),
        *(Metric(f"tr_first_caption_r{k}", f"TR-1st R@{k}") for k in DEFAULT_KS),
    )
    display_order: ClassVar[int] = 40
    requires: ClassVar[frozenset[str]] = frozenset({"text", "visual_feats", "visual_pos", "img_id"})
    defaults: ClassVar[dict[str, Any]] = {
        "init_from": ["itm_hs", "itm"],  # pre-training tasks whose ITM classifier seeds `match`, first found wins
        "negatives": list(NEGATIVE_KINDS),  # one negative of each listed kind per positive pair
        "hard_pool": 100,  # hard captions come from the first this-many hard-negative images (ViLBERT: 100)
        "eval_batch_pairs": 512,  # (caption, image) pairs per forward pass in evaluation
        "ks": list(DEFAULT_KS),
        "images": 0,  # evaluate on the first N images of the view and their captions only (0: every image)
        "shortlist": 0,  # cross-encode only each caption's top-K images and each image's top-K captions (0: all)
        "shortlist_by": "labels",  # the first stage: labels (detected object names) | backbone (per modality)
        # .npz keeping scores + done-mask, so an interrupted evaluation resumes ("": the context's scratch folder, if any)
        "score_cache": "",
        "checkpoint_every": 200,  # batches between writes of score_cache
        "progress_every": 16,  # batches between progress updates (each waits for the device)
        "bf16": False,  # score under bfloat16 autocast (for CUDA; CPU autocast is rarely faster)
    }
    # A single name or k stands for a list of one.
    option_types: ClassVar[dict[str, Any]] = {"init_from": list[str] | str, "negatives": list[str] | str,
                                              "ks": list[int] | int}

    def __init__(self, info: DataInfo, hidden_size: int, pretrained: dict[str, Task], **options: Any) -> None:
        super().__init__(info, hidden_size, pretrained, **options)
        self.hidden_size = hidden_size
        self.negatives: tuple[str, ...] = tuple(_as_list(self.options["negatives"]))
        unknown = [n for n in self.negatives if n not in NEGATIVE_KINDS]
        if unknown:
            raise MMCoreError(f"head 'retrieval': unknown negatives {unknown}; known: {', '.join(NEGATIVE_KINDS)}")
        self.ks: tuple[int, ...] = tuple(int(k) for k in _as_list(self.options["ks"]))
        self.scoring = _scoring_options(self.options)
        # Called with the number of batches scored so far after each evaluation batch (tests interrupt with it).
        self.batch_hook: Callable[[int], None] | None = None
        self._query_hits: dict[str, Tensor] = {}  # of the last evaluate(), for query_values()
        self.match = nn.Linear(hidden_size, 2)
        init_bert_(self.match)
        self.initialized_from: str | None = None
        self.zero_shot_ready = False
        for task_name in _as_list(self.options["init_from"]):
            classifier = getattr(pretrained.get(task_name), "classifier", None)
            if classifier is not None:
                self._copy_classifier(task_name, classifier)
                break

    def _copy_classifier(self, task_name: str, classifier: Any) -> None:
        if not isinstance(classifier, nn.Linear) or tuple(classifier.weight.shape) != (2, self.hidden_size):
            raise MMCoreError(
                f"head 'retrieval': task {task_name!r} has a classifier that is not Linear({self.hidden_size}, 2)"
            )
        with torch.no_grad():
            # A copy, not a shared module: fine-tuning must not change the pre-trained task.
            self.match.weight.copy_(classifier.weight)
            if classifier.bias is None:
                self.match.bias.zero_()
            else:
                self.match.bias.copy_(classifier.bias)
        self.initialized_from = task_name
        self.zero_shot_ready = True

    # ---- scoring and training -------------------------------------------------------------------------------

    def scores(self, backbone: Backbone, batch: Batch) -> Tensor:
        """Matching score [B] = logit[1] − logit[0], so sigmoid(score) is softmax(ITM)[matched]."""
        return self.pooled_scores(backbone.encode(batch).pooled)

    def pooled_scores(self, pooled: Tensor) -> Tensor:
        """The matching score [B] of pooled outputs [B,H] (see :meth:`scores`), computed in fp32 even under bf16
        autocast: a bf16 score has 8 bits of mantissa, so ranking 1,000 images by it would tie many of them."""
        with torch.autocast(pooled.device.type, enabled=False):
            logits = self.match(pooled.float())
        return logits[:, 1] - logits[:, 0]

    def pair_scores(self, backbone: Backbone, batch: Batch) -> Tensor:
        """The matching score [B] of each (caption, image) pair: :meth:`scores`."""
        return self.scores(backbone, batch)

    def loss(self, backbone: Backbone, batch: Batch) -> Tensor:
        """BCE-with-logits of the matching score against ``match_label`` (1 = matched)."""
        return F.binary_cross_entropy_with_logits(self.scores(backbone, batch), batch["match_label"].float())

    def prepare(self, example: Example, source: ExampleSource, rng: random.Random) -> list[Example]:
        """The positive pair plus one negative per kind in ``negatives`` (LXMERT-S: random image with the same
        caption, same image with a hard caption, same image with a random caption)."""
        text, img_id = example["text"], example["img_id"]
        keys = [k for k in example if k in IMAGE_FIELDS]
        own_image = {k: example[k] for k in keys}
        out = [_pair(text, own_image, 1.0)]
        for kind in self.negatives:
            if kind == "random_image":
                other = _random_other_image(source, img_id, text, rng)
                out.append(_pair(text, _image_fields(source, other, keys), 0.0))
            elif kind == "hard_caption":
                out.append(_pair(self._hard_caption(source, img_id, text, rng), own_image, 0.0))
            else:
                out.append(_pair(_random_caption(source, img_id, text, rng), own_image, 0.0))
        return out

    def _hard_caption(self, source: ExampleSource, img_id: str, text: str, rng: random.Random) -> str:
        pool = [h for h in list(source.hard_negatives(img_id)[: int(self.options["hard_pool"])]) if h != img_id]
        captions_of = getattr(source, "captions_of", None)
        if pool and captions_of is not None:
            hard = pool[rng.randrange(len(pool))]
            candidates = [c for c in captions_of(hard) if c != text]
            if candidates:
                return candidates[rng.randrange(len(candidates))]
        # No hard image (or it has no usable caption): a random other image's caption, as the contract says.
        return _random_caption(source, img_id, text, rng)

    # ---- evaluation ----------------------------------------------------------------------------------------

    def evaluate(self, backbone: Backbone, view: ExampleSource, ctx: EvalContext) -> dict[str, float]:
        """IR/TR R@K over the caption × image matrix, plus LXMERT-S's ``tr_first_caption_r{k}`` variant.

        With ``images: N`` only the first N images and their captions take part; with ``shortlist: K`` pairs
        outside the shortlist score -inf, i.e. rank below every scored pair.
        """
        _, _, caption_image = self._selection(view)
        scores = self.score_matrix(backbone, view, ctx)
        self._query_hits = {k: v.cpu() for k, v in recall_hits(scores, caption_image, self.ks).items()}
        return {**recall_at_k(scores, caption_image, self.ks), **first_caption_tr(scores, caption_image, self.ks)}

    def query_values(self) -> dict[str, Tensor]:
        """Each query's hit in the last :meth:`evaluate` (captions for IR, images for TR), by metric."""
        return dict(self._query_hits)

    def score_matrix(self, backbone: Backbone, view: ExampleSource, ctx: EvalContext) -> Tensor:
        """Scores [C,I] of the selected captions against the selected images (see :mod:`mmcore_heads.scoring`).

        Every pair is scored by the cross-encoder unless ``shortlist`` is set; then only each caption's top-K
        images and each image's top-K captions by the ``shortlist_by`` first stage are, and the rest are -inf.
        A backbone with a :meth:`~mmcore.api.Backbone.pair_encoder` (in eval mode) encodes each caption's and
        each image's own part once; only the pairs' joint part runs per pair.
        """
        captions, image_ids, _ = self._selection(view)
        inputs = encode_inputs(ctx, captions, image_ids, view.image)
        shape = (len(captions), len(image_ids))
        k = int(self.options["shortlist"])
        if k:
            first = first_stage_scores(str(self.options["shortlist_by"]), inputs, self.info, backbone, ctx)
            candidates = shortlist_mask(first, k)
        else:
            candidates = np.ones(shape, dtype=bool)
        cache = as_path(self.options["score_cache"])
        scratch = getattr(ctx, "scratch", None)  # a context from before scratch folders existed has none
        if cache is None and scratch is not None:  # the engine's folder of this evaluation: resumable by default
            cache = Path(scratch) / "scores.npz"
        encoder = None if backbone.training else backbone.pair_encoder()
        key = cache_key([backbone, self], inputs, image_ids, self.scoring.bf16,
                        encoder is not None) if cache is not None else ""
        matrix = ScoreMatrix(shape, cache, key)
        advance = ctx.progress(int(candidates.sum()), "retrieval: scoring caption × image pairs")
        with torch.inference_mode():
            if encoder is None:
                score_pairs(inputs, lambda batch: self.scores(backbone, batch), matrix, candidates, advance,
                            self.scoring, self.batch_hook)
            else:
                with scoring_autocast(inputs, self.scoring):
                    encoded = inputs.encoded(encoder)
                score_pairs(encoded, lambda batch: self.pooled_scores(encoder.pooled(batch)), matrix, candidates,
                            advance, self.scoring, self.batch_hook)
        scores = torch.from_numpy(matrix.scores).masked_fill(torch.from_numpy(~candidates), float("-inf"))
        return scores.to(ctx.device)

    def _selection(self, view: ExampleSource) -> tuple[list[str], list[str], list[int]]:
        """(captions, image ids, caption -> image index) of the images evaluated (all, or the first ``images``)."""
        captions: Sequence[str] = _retrieval_attr(view, "captions")
        image_ids: Sequence[str] = _retrieval_attr(view, "images")
        owners: Sequence[int] = _retrieval_attr(view, "caption_image")
        if len(captions) == 0 or len(image_ids) == 0:
            raise MMCoreError("head 'retrieval': the evaluation view has no captions or no images")
        limit = int(self.options["images"]) or len(image_ids)
        keep = [c for c, owner in enumerate(owners) if owner < limit]
        return [captions[c] for c in keep], list(image_ids[:limit]), [int(owners[c]) for c in keep]


def _scoring_options(options: dict[str, Any]) -> ScoringOptions:
    lowest = {"eval_batch_pairs": 1, "checkpoint_every": 1, "progress_every": 1, "images": 0, "shortlist": 0}
    for name, low in lowest.items():
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise MMCoreError(f"head 'retrieval': option {name!r} must be an integer >= {low}, got {value!r}")
    if options["shortlist_by"] not in FIRST_STAGES:
        raise MMCoreError(f"head 'retrieval': unknown shortlist_by {options['shortlist_by']!r}; known: "
                          f"{', '.join(FIRST_STAGES)}")
    return ScoringOptions(batch_pairs=int(options["eval_batch_pairs"]), progress_every=int(options["progress_every"]),
                          checkpoint_every=int(options["checkpoint_every"]), bf16=bool(options["bf16"]))


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, (str, int)) else list(value)


def _pair(text: str, image: Example, label: float) -> Example:
    return {"text": text, **image, "match_label": label}


def _image_fields(source: ExampleSource, img_id: str, keys: list[str]) -> Example:
    image = source.image(img_id)
    missing = [k for k in keys if k not in image]
    if missing:
        raise MMCoreError(f"head 'retrieval': image {img_id!r} of the view lacks fields {missing}")
    return {k: image[k] for k in keys}


def _retry(draw: Callable[[], Any], bad: Callable[[Any], bool]) -> Any:
    value = draw()
    for _ in range(_RETRIES):
        if not bad(value):
            break
        value = draw()
    return value


def _random_other_image(source: ExampleSource, img_id: str, text: str, rng: random.Random) -> str:
    ids = source.image_ids()
    if len(ids) < 2:
        raise MMCoreError("head 'retrieval': a random-image negative needs a view with at least two images")

    def draw() -> str:
        # Rejection is cheap when the view has many images; the scan only guards a view of one repeated id.
        for _ in range(64):
            other = ids[rng.randrange(len(ids))]
            if other != img_id:
                return other
        others = [i for i in ids if i != img_id]
        if not others:
            raise MMCoreError(f"head 'retrieval': the view has no image other than {img_id!r}")
        return others[rng.randrange(len(others))]

    captions_of = getattr(source, "captions_of", None)
    if captions_of is None:
        return draw()
    return _retry(draw, lambda other: text in captions_of(other))


def _random_caption(source: ExampleSource, img_id: str, text: str, rng: random.Random) -> str:
    return _retry(lambda: source.random_text(rng, img_id), lambda other: other == text)


def _retrieval_attr(view: Any, name: str) -> Any:
    if not hasattr(view, name):
        raise MMCoreError(f"head 'retrieval' needs a retrieval view (with `{name}`); got {type(view).__name__}")
    return getattr(view, name)
