"""Pairs per second of full-matrix retrieval scoring with an LXMERT-S-shaped cross-encoder, and what that means
for the 5,000,000 (caption, image) pairs of the Flickr30k 1k test (5,000 captions × 1,000 images).

    python benchmarks/bench_retrieval_eval.py --device cpu --hidden 128 --layers 2 --images 8
    python benchmarks/bench_retrieval_eval.py --device cuda --dtype bf16 --images 200 --batch-pairs 2048

The batched path is the ``retrieval`` head's evaluation (``mmcore_heads.scoring.score_pairs``): inputs on the
device once, batches gathered by index, the host reading scores back only every few batches. The naive
reference scores one pair per forward pass and reads each score back (``--naive-pairs`` of them; 0 skips it),
and the batched scores of those pairs are checked against it. Weights are random: the speed does not depend on
them. Captions all have ``--tokens`` tokens ([CLS] and [SEP] included), images ``--regions`` real regions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import click
import numpy as np
import torch
from mmcore_heads.retrieval import RetrievalHead
from mmcore_heads.scoring import PairInputs, ScoreMatrix, ScoringOptions, score_pairs

from mmcore.api import DataInfo
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
    seed: int = 0


@dataclass
class Result:
    """One method's timing."""

    method: str
    pairs: int
    seconds: float

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


def run_benchmark(cfg: BenchConfig) -> tuple[list[Result], float | None]:
    """Time batched full-matrix scoring and the naive loop; (results, max |batched − naive| or None)."""
    backbone, head, inputs = build(cfg)
    bf16 = cfg.dtype == "bf16"
    options = ScoringOptions(batch_pairs=cfg.batch_pairs, bf16=bf16)
    shape = (inputs.num_captions, inputs.num_images)

    def score(batch: dict) -> torch.Tensor:
        return head.scores(backbone, batch)

    with torch.no_grad():
        warm = np.zeros(shape, dtype=bool)
        warm[0, :] = True  # one pass to warm kernels and the allocator up
        score_pairs(inputs, score, ScoreMatrix(shape), warm, lambda n: None, options)
        matrix = ScoreMatrix(shape)
        start = time.perf_counter()
        score_pairs(inputs, score, matrix, np.ones(shape, dtype=bool), lambda n: None, options)
        results = [Result(f"batched ({cfg.batch_pairs} pairs/pass)", shape[0] * shape[1], time.perf_counter() - start)]
        if cfg.naive_pairs <= 0:
            return results, None
        pairs = [(c, i) for c in range(shape[0]) for i in range(shape[1])][: cfg.naive_pairs]
        autocast = torch.autocast(inputs.text["input_ids"].device.type, dtype=torch.bfloat16, enabled=bf16)
        naive = []
        start = time.perf_counter()
        for c, i in pairs:
            cap = torch.tensor([c], device=inputs.text["input_ids"].device)
            img = torch.tensor([i], device=cap.device)
            with autocast:
                naive.append(float(score(inputs.batch(cap, img, cfg.tokens))[0]))  # a per-pair read-back
        results.append(Result("naive (1 pair/pass)", len(pairs), time.perf_counter() - start))
    batched = np.array([matrix.scores[c, i] for c, i in pairs])
    return results, float(np.abs(batched - np.array(naive)).max())


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
def main(**kwargs: object) -> None:
    """Print pairs/s of batched and naive retrieval scoring and the projected Flickr30k 1k test time."""
    cfg = BenchConfig(**kwargs)  # type: ignore[arg-type]
    results, diff = run_benchmark(cfg)
    heads = cfg.heads or max(1, cfg.hidden // 64)
    click.echo(f"lxmert_s: hidden {cfg.hidden}, {cfg.layers} cross-modality layers, {heads} heads; {cfg.regions} "
               f"regions × {cfg.feat_dim}-d, {cfg.tokens} tokens; {cfg.images} images × {cfg.captions_per_image} "
               f"captions; {cfg.device} {cfg.dtype}, {torch.get_num_threads()} threads")
    click.echo(format_table(cfg, results))
    if diff is not None:
        click.echo(f"batched vs naive: max |score difference| {diff:.2e} over {min(cfg.naive_pairs, results[0].pairs)} pairs")


if __name__ == "__main__":
    main()
