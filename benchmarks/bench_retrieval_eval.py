"""Pairs per second of full-matrix retrieval scoring with an LXMERT-S-shaped cross-encoder, and what that means
for the 5,000,000 (caption, image) pairs of the Flickr30k 1k test (5,000 captions × 1,000 images).

    python benchmarks/bench_retrieval_eval.py --device cpu --hidden 128 --layers 2 --images 8
    python benchmarks/bench_retrieval_eval.py --device cuda --dtype bf16 --images 200 --batch-pairs 2048

Three paths over the same inputs, timed in the same run: ``pair encoder`` is the ``retrieval`` head's
evaluation today (``RetrievalHead.score_matrix``: each caption's and each image's own part encoded once by the
backbone's ``pair_encoder()``, only the cross-modality layers run per pair, the last one for the [CLS] positions
only); ``whole pairs`` is the evaluation before that (every pair through ``Backbone.encode``, batches gathered
by index), kept as the reference (``--no-old`` skips it) and checked against; the naive loop scores one pair per
forward pass and reads each score back (``--naive-pairs`` of them; 0 skips it). ``--repeat N`` times each of the
first two N times, alternating, and reports the median run; on CPU the ratio is also given by process CPU time.
Weights are random: the speed does not depend on them. Captions all have ``--tokens`` tokens ([CLS] and [SEP]
included), images ``--regions`` real regions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import click
import numpy as np
import torch
from mmcore_heads.retrieval import RetrievalHead
from mmcore_heads.scoring import PairInputs, ScoreMatrix, ScoringOptions, score_pairs, scoring_autocast

from mmcore.api import DataInfo, PairEncoder
from mmcore.plugins import load_plugins

FLICKR_PAIRS = 5_000 * 1_000
FIRST_WORD_ID = 1000  # BERT's vocabulary holds [unused] and single characters below this id


@dataclass(frozen=True)
class BenchConfig:
    """Model shape (LXMERT-S by default), data size, device, precision and batching."""

    device: str = "cpu"
    dtype: str = "fp32"  # fp32 | bf16 (autocast)
    hidden: int = 768
    layers: int = 5
    heads: int | None = None  # None: hidden // 64
    intermediate: int | None = None  # None: 4 * hidden
    regions: int = 36
    feat_dim: int = 2048
    tokens: int = 20
    vocab: int = 30522
    images: int = 8
    captions_per_image: int = 5
    batch_pairs: int = 512
    naive_pairs: int = 16
    old: bool = True  # also time the whole-pair path (the reference)
    repeat: int = 1  # timed runs of each path, alternating
    seed: int = 0


@dataclass
class Result:
    """One method's timing."""

    method: str
    pairs: int
    seconds: float
    scores: list[float] = field(default_factory=list)  # the naive loop's, to check the batched ones against
    cpu_seconds: float | None = None  # this process's CPU time (all threads): steadier than wall on a busy machine

    @property
    def rate(self) -> float:
        """Pairs per second."""
        return self.pairs / max(self.seconds, 1e-12)


def build(cfg: BenchConfig) -> tuple[torch.nn.Module, RetrievalHead, PairInputs]:
    """A random-weight ``lxmert_s`` backbone and ``retrieval`` head in eval mode, and random inputs on the device."""
    torch.manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    info = DataInfo(vocab_size=cfg.vocab, feature_dim=cfg.feat_dim, max_regions=cfg.regions, num_objects=1600,
                    num_attributes=400, pad_token_id=0, cls_token_id=101, sep_token_id=102, mask_token_id=103,
                    unk_token_id=100, special_token_ids=(0, 100, 101, 102, 103), object_token_ids=())
    options = {"hidden_size": cfg.hidden, "num_attention_heads": cfg.heads or max(1, cfg.hidden // 64),
               "intermediate_size": cfg.intermediate or 4 * cfg.hidden, "x_layers": cfg.layers}
    backbone = load_plugins().registry.get("backbone", "lxmert_s").factory(options, info).to(device).eval()
    head = RetrievalHead(info, cfg.hidden, {}).to(device).eval()
    captions = cfg.images * cfg.captions_per_image
    ids = torch.randint(FIRST_WORD_ID, cfg.vocab, (captions, cfg.tokens))
    ids[:, 0], ids[:, -1] = info.cls_token_id, info.sep_token_id
    positions = torch.arange(cfg.tokens).clamp(max=cfg.tokens - 2) + 1  # [CLS] 1, words 2.., [SEP] 1
    positions[-1] = 1
    text = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": positions.expand_as(ids).clone()}
    image = {"visual_feats": torch.randn(cfg.images, cfg.regions, cfg.feat_dim).relu(),
             "visual_pos": torch.rand(cfg.images, cfg.regions, 4), "visual_mask": torch.ones(cfg.images, cfg.regions, dtype=torch.long)}
    inputs = PairInputs({k: v.to(device) for k, v in text.items()}, {k: v.to(device) for k, v in image.items()},
                        np.full(captions, cfg.tokens, dtype=np.int64))
    return backbone, head, inputs


def _timed(method: str, inputs: PairInputs, score: Callable[[dict], torch.Tensor], options: ScoringOptions,
           encode: Callable[[], PairInputs] | None = None) -> tuple[Result, ScoreMatrix]:
    """Time one full-matrix scoring (after one warm-up row), including any per-caption/per-image encoding."""
    shape = (inputs.num_captions, inputs.num_images)
    warm = np.zeros(shape, dtype=bool)
    warm[0, :] = True  # one pass to warm kernels and the allocator up
    score_pairs(encode() if encode else inputs, score, ScoreMatrix(shape), warm, lambda n: None, options)
    matrix = ScoreMatrix(shape)
    start, cpu_start = time.perf_counter(), time.process_time()
    scored = encode() if encode else inputs
    score_pairs(scored, score, matrix, np.ones(shape, dtype=bool), lambda n: None, options)
    if inputs.device.type == "cuda":
        torch.cuda.synchronize(inputs.device)
    result = Result(method, shape[0] * shape[1], time.perf_counter() - start)
    result.cpu_seconds = time.process_time() - cpu_start
    return result, matrix


def run_benchmark(cfg: BenchConfig) -> tuple[list[Result], dict[str, float]]:
    """Time the pair-encoder path and the whole-pair path (alternately, ``cfg.repeat`` times each; the run with the
    median time is reported) and the naive loop; (results, max |score difference| by check)."""
    backbone, head, inputs = build(cfg)
    options = ScoringOptions(batch_pairs=cfg.batch_pairs, bf16=cfg.dtype == "bf16")
    encoder = backbone.pair_encoder()
    runs: dict[str, list[tuple[Result, ScoreMatrix]]] = {"new": [], "old": []}
    for _ in range(cfg.repeat):
        with torch.inference_mode():
            runs["new"].append(_timed(f"pair encoder ({cfg.batch_pairs} pairs/pass)", inputs,
                                      lambda b: head.pooled_scores(encoder.pooled(b)), options,
                                      lambda: _encoded(inputs, encoder, options)))
        if cfg.old:
            with torch.no_grad():
                runs["old"].append(_timed(f"whole pairs ({cfg.batch_pairs} pairs/pass)", inputs,
                                          lambda b: head.scores(backbone, b), options))
    (new, new_matrix), *rest = [_median(runs[k]) for k in ("new", "old") if runs[k]]
    results, diffs = [new], {}
    if rest:
        old, old_matrix = rest[0]
        results.append(old)
        diffs["pair encoder vs whole pairs"] = float(np.abs(new_matrix.scores - old_matrix.scores).max())
    if cfg.naive_pairs > 0:
        with torch.no_grad():
            naive, pairs = _naive(cfg, backbone, head, inputs)
        results.append(naive)
        diffs["pair encoder vs naive"] = float(np.abs(np.array([new_matrix.scores[c, i] for c, i in pairs])
                                                      - np.array(naive.scores)).max())
    return results, diffs


def _median(runs: list[tuple[Result, ScoreMatrix]]) -> tuple[Result, ScoreMatrix]:
    return sorted(runs, key=lambda run: run[0].seconds)[len(runs) // 2]


def _encoded(inputs: PairInputs, encoder: PairEncoder, options: ScoringOptions) -> PairInputs:
    with scoring_autocast(inputs, options):
        return inputs.encoded(encoder)


def _naive(cfg: BenchConfig, backbone: torch.nn.Module, head: RetrievalHead,
           inputs: PairInputs) -> tuple[Result, list[tuple[int, int]]]:
    """One pair per forward pass, each score read back."""
    pairs = [(c, i) for c in range(inputs.num_captions) for i in range(inputs.num_images)][: cfg.naive_pairs]
    autocast = torch.autocast(inputs.device.type, dtype=torch.bfloat16, enabled=cfg.dtype == "bf16")
    scores = []
    start = time.perf_counter()
    for c, i in pairs:
        cap = torch.tensor([c], device=inputs.device)
        img = torch.tensor([i], device=inputs.device)
        with autocast:
            scores.append(float(head.scores(backbone, inputs.batch(cap, img, cfg.tokens))[0]))  # a per-pair read-back
    result = Result("naive (1 pair/pass)", len(pairs), time.perf_counter() - start)
    result.scores = scores
    return result, pairs


MATRIX_PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm")


def operator_shares(cfg: BenchConfig, top: int = 8) -> str:
    """Self CPU time of the operators of one pair-encoder scoring of the whole matrix, largest first, and the
    ceiling on any speed-up that keeps the work of the matrix products (their share's inverse)."""
    from torch.profiler import ProfilerActivity, profile

    backbone, head, inputs = build(cfg)
    options = ScoringOptions(batch_pairs=cfg.batch_pairs, bf16=cfg.dtype == "bf16")
    encoder = backbone.pair_encoder()
    shape = (inputs.num_captions, inputs.num_images)

    def score() -> None:
        score_pairs(encoded, lambda b: head.pooled_scores(encoder.pooled(b)), ScoreMatrix(shape),
                    np.ones(shape, dtype=bool), lambda n: None, options)

    with torch.inference_mode():
        encoded = _encoded(inputs, encoder, options)
        score()  # warm-up: the first pass pays for allocations and kernel selection
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            score()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    lines = ["| operator | share of self CPU time |", "|---|---:|"]
    lines += [f"| {e.key} | {100 * e.self_cpu_time_total / total:.1f}% |" for e in events[:top]]
    products = sum(e.self_cpu_time_total for e in events if e.key in MATRIX_PRODUCTS) / total
    lines.append(f"\nmatrix products: {100 * products:.1f}% of the time; with everything else free, at most "
                 f"{1 / max(products, 1e-9):.2f}x the pairs/s without fewer multiply-adds")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    """``1 h 02 min``, ``3 min 07 s`` or ``12.3 s``."""
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    if seconds >= 60:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{seconds:.1f} s"


def format_table(cfg: BenchConfig, results: list[Result]) -> str:
    """A markdown table: method, pairs timed, seconds, pairs/s, projected time for the Flickr30k 1k test."""
    lines = ["| method | pairs | seconds | pairs/s | Flickr30k 1k test (5M pairs) |", "|---|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.method} | {r.pairs:,} | {r.seconds:.2f} | {r.rate:,.1f} | {duration(FLICKR_PAIRS / r.rate)} |")
    return "\n".join(lines)


@click.command()
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True)
@click.option("--hidden", default=768, show_default=True)
@click.option("--layers", default=5, show_default=True, help="Cross-modality layers.")
@click.option("--heads", type=int, default=None, help="Attention heads (default hidden/64).")
@click.option("--regions", default=36, show_default=True)
@click.option("--feat-dim", default=2048, show_default=True)
@click.option("--tokens", default=20, show_default=True, help="Tokens per caption, [CLS] and [SEP] included.")
@click.option("--images", default=8, show_default=True)
@click.option("--captions-per-image", default=5, show_default=True)
@click.option("--batch-pairs", default=512, show_default=True)
@click.option("--naive-pairs", default=16, show_default=True, help="Pairs timed one by one (0: skip).")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Timed runs of each path, alternating; the median run is reported.")
@click.option("--old/--no-old", default=True, show_default=True,
              help="Also time the whole-pair path (the evaluation before pair encoders) and compare the scores.")
@click.option("--profile", is_flag=True,
              help="Only profile one pair-encoder scoring: each operator's share of its time, and the speed-up left "
                   "if everything but the matrix products took no time.")
def main(profile: bool, **kwargs: object) -> None:
    """Print pairs/s of batched and naive retrieval scoring and the projected Flickr30k 1k test time."""
    cfg = BenchConfig(**kwargs)  # type: ignore[arg-type]
    if profile:
        click.echo(operator_shares(cfg))
        return
    results, diffs = run_benchmark(cfg)
    heads = cfg.heads or max(1, cfg.hidden // 64)
    click.echo(f"lxmert_s: hidden {cfg.hidden}, {cfg.layers} cross-modality layers, {heads} heads; {cfg.regions} "
               f"regions × {cfg.feat_dim}-d, {cfg.tokens} tokens; {cfg.images} images × {cfg.captions_per_image} "
               f"captions; {cfg.device} {cfg.dtype}, {torch.get_num_threads()} threads")
    click.echo(format_table(cfg, results))
    if cfg.old:
        new, old = results[0], results[1]
        line = f"pair encoder / whole pairs: {new.rate / old.rate:.2f}x the pairs/s"
        if cfg.device == "cpu" and new.cpu_seconds and old.cpu_seconds:
            line += f" ({old.cpu_seconds / new.cpu_seconds:.2f}x by process CPU time)"
        click.echo(line)
    for check, diff in diffs.items():
        click.echo(f"{check}: max |score difference| {diff:.2e}")


if __name__ == "__main__":
    main()
