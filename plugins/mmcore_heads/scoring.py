"""Batched cross-encoder scoring of (caption, image) pairs for retrieval at scale.

Every caption is tokenised once and every image's visual fields are loaded once, both kept as device tensors;
a batch of pairs is two index vectors gathered from them, so there is no per-pair Python work. Pairs are
ordered by caption length so each batch is padded only to its own longest caption. Scores land in a device
buffer; the host reads it back only every ``progress_every`` batches (to move the bar and fill the matrix),
and the matrix with its done-mask is written atomically every ``checkpoint_every`` batches when a cache file
is given, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import inspect
import time
import zipfile
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mmcore.api import TEXT_FIELDS, Batch, EvalContext, Example, MMCoreError, PairEncoder
from mmcore.data.fileio import atomic_path

ScoreFn = Callable[[Batch], Tensor]
# What Backbone.encode reads of an image; the other visual fields (detector labels) are kept but not gathered.
ENCODED_IMAGE_FIELDS = ("visual_feats", "visual_pos", "visual_mask")
_TEXT_TENSORS = ("input_ids", "attention_mask", "position_ids")
_IMAGE_CHUNK = 256
_TEXT_CHUNK = 1024


@dataclass
class PairInputs:
    """Every caption's token tensors [C,T] and every image's visual tensors [I,...], on one device."""

    text: dict[str, Tensor]
    image: dict[str, Tensor]
    lengths: np.ndarray  # [C] real tokens per caption, on the host: each batch is trimmed to its longest
    image_keys: tuple[str, ...] = ENCODED_IMAGE_FIELDS  # the image fields a batch of pairs gathers

    @property
    def num_captions(self) -> int:
        """C."""
        return int(self.lengths.shape[0])

    @property
    def device(self) -> torch.device:
        """Where the tensors are."""
        return next(iter(self.text.values())).device

    @property
    def num_images(self) -> int:
        """I."""
        return int(next(iter(self.image.values())).shape[0])

    def batch(self, captions: Tensor, images: Tensor, length: int) -> Batch:
        """The pairs (captions[k], images[k]) as one batch (device index vectors), texts cut to ``length``."""
        out: Batch = {k: v[:, :length].index_select(0, captions) for k, v in self.text.items()}
        out.update({k: self.image[k].index_select(0, images) for k in self.image_keys if k in self.image})
        return out

    def encoded(self, encoder: PairEncoder) -> PairInputs:
        """These captions and images through a backbone's :class:`PairEncoder` (each one once, in chunks that
        bound the memory of the intermediate activations); batches of the result gather the encoded rows."""
        text: dict[str, list[Tensor]] = {}
        for start in range(0, self.num_captions, _TEXT_CHUNK):
            for key, value in encoder.texts({k: v[start : start + _TEXT_CHUNK] for k, v in self.text.items()}).items():
                text.setdefault(key, []).append(value)
        image: dict[str, list[Tensor]] = {}
        for start in range(0, self.num_images, _IMAGE_CHUNK):
            chunk = {k: v[start : start + _IMAGE_CHUNK] for k, v in self.image.items() if k in ENCODED_IMAGE_FIELDS}
            for key, value in encoder.images(chunk).items():
                image.setdefault(key, []).append(value)
        return PairInputs({k: torch.cat(v) for k, v in text.items()}, {k: torch.cat(v) for k, v in image.items()},
                          self.lengths, tuple(image))


def encode_inputs(ctx: EvalContext, captions: Sequence[str], image_ids: Sequence[str],
                  image: Callable[[str], Example]) -> PairInputs:
    """Tokenise ``captions`` in one pass (one padding for all) and load each image once, as device tensors."""
    tokens = ctx.collate([{"text": c} for c in captions])
    text = {k: tokens[k] for k in _TEXT_TENSORS if isinstance(tokens.get(k), Tensor)}
    if "input_ids" not in text or "attention_mask" not in text:
        raise MMCoreError("head 'retrieval': the collator gave no input_ids/attention_mask for the captions")
    lengths = text["attention_mask"].sum(dim=1).cpu().numpy().astype(np.int64)
    chunks: dict[str, list[Tensor]] = {}
    for start in range(0, len(image_ids), _IMAGE_CHUNK):
        batch = ctx.collate([image(i) for i in image_ids[start : start + _IMAGE_CHUNK]])
        for key, value in batch.items():
            if isinstance(value, Tensor) and key not in TEXT_FIELDS:
                chunks.setdefault(key, []).append(value)
    try:
        images = {k: torch.cat(v) for k, v in chunks.items()}
    except RuntimeError:
        raise MMCoreError("head 'retrieval': the view's images differ in region count; a feature store pads "
                          "every image to the same number of regions") from None
    if "visual_feats" not in images:
        raise MMCoreError("head 'retrieval': the view's images have no visual_feats")
    return PairInputs(text, images, lengths)


def pair_order(candidates: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(caption, image) indices of the true cells of ``candidates`` [C,I], shortest captions first."""
    order = np.argsort(lengths, kind="stable")
    rows, images = np.nonzero(candidates[order])
    return order[rows], images


class ScoreMatrix:
    """A [C,I] float32 score matrix with a done-mask, mirrored in an ``.npz`` file when ``path`` is given.

    The file also holds ``key``, a digest of the model weights and inputs: a file written for other weights or
    other captions/images is not reused.
    """

    def __init__(self, shape: tuple[int, int], path: Path | None = None, key: str = "") -> None:
        self.path, self.key = path, key
        self.scores = np.zeros(shape, dtype=np.float32)
        self.done = np.zeros(shape, dtype=bool)
        if path is not None and path.exists():
            self._load(path, shape)

    def _load(self, path: Path, shape: tuple[int, int]) -> None:
        try:
            with np.load(path, allow_pickle=False) as data:
                key, scores, done = str(data["key"]), data["scores"], data["done"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            raise MMCoreError(f"score cache {path} is damaged or not a score cache; delete it to start the scoring "
                              "again") from None
        if key == self.key and scores.shape == shape and done.shape == shape:
            self.scores, self.done = scores.astype(np.float32), done.astype(bool)

    def fill(self, captions: np.ndarray, images: np.ndarray, values: np.ndarray) -> None:
        """Record scores of the pairs (captions[k], images[k])."""
        self.scores[captions, images] = values
        self.done[captions, images] = True

    def save(self) -> None:
        """Atomically write the matrix, the done-mask and the key (no-op without a path)."""
        if self.path is None:
            return
        with atomic_path(self.path) as tmp, open(tmp, "wb") as handle:
            # A file handle, not a name: np.savez would append ".npz" to the temporary name.
            np.savez(handle, key=np.array(self.key), scores=self.scores, done=self.done)


@dataclass(frozen=True)
class ScoringOptions:
    """How pairs are batched and how often the host looks at the device."""

    batch_pairs: int = 512
    progress_every: int = 16
    checkpoint_every: int = 200
    bf16: bool = False


def score_pairs(inputs: PairInputs, score: ScoreFn, matrix: ScoreMatrix, candidates: np.ndarray,
                advance: Callable[..., None], options: ScoringOptions,
                batch_hook: Callable[[int], None] | None = None) -> None:
    """Score every candidate pair not yet done in ``matrix`` with ``score`` (batch -> [B] scores), in place.

    ``advance(n)`` moves the progress bar (it also gets ``info`` with pairs/s when it accepts one).
    ``batch_hook(batches)`` runs after each batch (after any flush it triggers); tests use it to interrupt.
    """
    device = inputs.device
    info = _info_advance(advance)
    already = int((candidates & matrix.done).sum())
    if already:
        info(already, "resumed")
    captions, images = pair_order(candidates & ~matrix.done, inputs.lengths)
    total = int(captions.shape[0])
    if total == 0:
        return
    size = max(1, int(options.batch_pairs))
    cap_dev = torch.from_numpy(captions).to(device)
    img_dev = torch.from_numpy(images).to(device)
    out = torch.empty(total, dtype=torch.float32, device=device)
    autocast = scoring_autocast(inputs, options)
    flushed, scored, start = 0, 0, time.perf_counter()

    def flush() -> None:
        nonlocal flushed
        values = out[flushed:scored].cpu().numpy()  # the one wait for the device
        matrix.fill(captions[flushed:scored], images[flushed:scored], values)
        info(scored - flushed, f"{scored / max(1e-9, time.perf_counter() - start):,.0f} pairs/s")
        flushed = scored

    since_save = 0
    try:
        for index, first in enumerate(range(0, total, size), start=1):
            last = min(first + size, total)
            # Pairs are sorted by caption length, so the batch's longest caption is its last one.
            batch = inputs.batch(cap_dev[first:last], img_dev[first:last], int(inputs.lengths[captions[last - 1]]))
            with autocast:
                out[first:last] = score(batch).float()
            scored, since_save = last, since_save + 1
            checkpoint = since_save >= options.checkpoint_every or last == total
            if checkpoint or index % max(1, options.progress_every) == 0:
                flush()
            if checkpoint:
                matrix.save()
                since_save = 0
            if batch_hook is not None:
                batch_hook(index)
    except KeyboardInterrupt:
        # Ctrl-C keeps what was scored; a kill loses at most the batches since the last write.
        flush()
        matrix.save()
        raise


def scoring_autocast(inputs: PairInputs, options: ScoringOptions) -> AbstractContextManager[Any]:
    """bf16 autocast on the inputs' device when ``options.bf16``, else nothing."""
    return torch.autocast(inputs.device.type, dtype=torch.bfloat16) if options.bf16 else nullcontext()


def _info_advance(advance: Callable[..., None]) -> Callable[[int, str], None]:
    """``advance(n, info)`` when the context's bar takes an info text (the engine's does), else ``advance(n)``."""
    try:
        takes_info = "info" in inspect.signature(advance).parameters
    except (TypeError, ValueError):
        takes_info = False
    if takes_info:
        return lambda n, text: advance(n, info=text)
    return lambda n, text: advance(n)


def cache_key(modules: Sequence[nn.Module], inputs: PairInputs, image_ids: Sequence[str], bf16: bool,
              pair_encoder: bool = False) -> str:
    """A digest of the weights, the tokenised captions, the image ids and feature sums, the precision and whether
    a pair encoder scores (its scores differ from whole-pair encoding by rounding: one matrix holds one kind)."""
    digest = hashlib.sha1(f"bf16={bf16};images={len(image_ids)}{';pairs' if pair_encoder else ''}".encode())
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    for name in sorted(inputs.text):
        digest.update(inputs.text[name].cpu().numpy().tobytes())
    digest.update("\n".join(image_ids).encode())
    # Feature sums stand in for hashing every feature (hundreds of MB): regenerated data changes them.
    sums = torch.stack([inputs.image[k].double().sum() for k in ENCODED_IMAGE_FIELDS if k in inputs.image])
    digest.update(sums.cpu().numpy().tobytes())
    return digest.hexdigest()


def naive_scores(score: ScoreFn, collate: Callable[[list[Example]], Batch], captions: Sequence[str],
                 image_ids: Sequence[str], image: Callable[[str], Example]) -> Tensor:
    """Reference [C,I]: one collated pair per forward pass (what batched scoring must equal)."""
    out = torch.empty(len(captions), len(image_ids))
    fields = {i: image(i) for i in image_ids}
    for c, caption in enumerate(captions):
        for i, img_id in enumerate(image_ids):
            out[c, i] = score(collate([{"text": caption, **fields[img_id]}]))[0].float().cpu()
    return out


def as_path(value: Any) -> Path | None:
    """``None`` for an empty option, else the path."""
    return Path(str(value)).expanduser() if value not in (None, "") else None
