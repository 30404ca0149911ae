"""Pre-training data path throughput per features cache (disk, ram, gpu), beside the training step's.

For each mode: batches/s and samples/s of the sentence-stage loader (ITM_HS pairing in the collate, then
MLM/MRFR/MOC corruption on the device) over a synthworld world, and the samples/s of the default CPU
backbone's training step (forward, backward, AdamW) on pre-made batches. The loader must outpace the step.
It is the training loop's loader (mmcore.data.loader.Batches); ``--num-workers N`` adds a row for the disk
cache read by N worker processes (the collate, masking included, still runs in the main process).

    python benchmarks/bench_loader.py [--batch-size 64] [--num-workers 2] [--batches 30] [--cache-dir DIR]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import torch
import yaml
from mmcore_synth.dataset import SynthWorld

from mmcore.api import Batch
from mmcore.data.collate import Collator, to_device
from mmcore.data.loader import Batches
from mmcore.context import default_cache_dir
from mmcore.plugins import load_plugins
from mmcore.training import EpochSampler, MixedExamples, PrepareCollate, make_optimizer

RECIPES = Path(__file__).resolve().parent.parent / "recipes" / "base"
TASKS = ("itm_hs", "mlm", "mrfr", "moc")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(data: SynthWorld, device: torch.device) -> tuple[Any, list[Any]]:
    """The default CPU backbone (recipes/base/lxmert_s_cpu.yaml) and the sentence tasks, through the registry."""
    spec = yaml.safe_load((RECIPES / "lxmert_s_cpu.yaml").read_text())["backbone"]
    registry = load_plugins().registry
    torch.manual_seed(0)
    info = data.info()
    backbone = registry.get("backbone", spec.pop("name")).factory(spec, info).to(device)
    tasks = [registry.get("task", name).factory(info, backbone).to(device) for name in TASKS]
    return backbone, sorted(tasks, key=lambda t: t.order)


def loader_rate(data: SynthWorld, tasks: list[Any], device: torch.device, batch_size: int, workers: int,
                batches: int) -> tuple[float, float, list[Batch]]:
    """(batches/s, samples/s) of ``batches`` loader batches moved to ``device`` and corrupted, and some of them."""
    mixed = MixedExamples([data.view("sentence", "train")], [None])
    sampler = EpochSampler(mixed, [1.0], seed=0)
    collate = PrepareCollate([lambda ex, src, rng, t=t: [t.prepare(ex, src, rng)] for t in tasks if t.name == "itm_hs"],
                             Collator(data.tokenizer(), 20), seed=0)
    loader = Batches(mixed, batch_size, sampler, collate, workers, pin_memory=device.type == "cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    kept: list[Batch] = []
    count, samples, epoch, start = 0, 0, 0, 0.0
    while count < batches:
        sampler.set_epoch(epoch)
        collate.set_epoch(epoch)
        for batch in loader.epoch():
            if count == 1 and not start:
                _sync(device)
                start = time.perf_counter()  # after the first batch: worker start-up and caches are not steady state
            batch = to_device(batch, device)
            for task in tasks:
                task.corrupt(batch, generator)
            samples += int(batch["input_ids"].shape[0]) if count else 0
            count += 1
            if len(kept) < 4:
                kept.append(batch)
            if count >= batches:
                break
        epoch += 1
    _sync(device)
    seconds = time.perf_counter() - start
    return (count - 1) / seconds, samples / seconds, kept


def step_rate(backbone: Any, tasks: list[Any], batches: list[Batch], device: torch.device, steps: int) -> float:
    """Samples/s of forward + backward + AdamW step on pre-made (already corrupted) batches."""
    modules = [backbone, *tasks]
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    optim = make_optimizer(params, {"lr": 1e-4, "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-6}, device)
    for m in modules:
        m.train()

    def one(batch: Batch) -> None:
        optim.zero_grad(set_to_none=True)
        output = backbone.encode(batch)
        sum(t.loss(output, batch) for t in tasks).backward()
        optim.step()

    one(batches[0])  # warm-up
    _sync(device)
    start, samples = time.perf_counter(), 0
    for i in range(steps):
        batch = batches[i % len(batches)]
        one(batch)
        samples += int(batch["input_ids"].shape[0])
    _sync(device)
    return samples / (time.perf_counter() - start)


@click.command()
@click.option("--batch-size", default=64, show_default=True)
@click.option("--num-workers", default=0, show_default=True,
              help="also time the disk cache with this many worker processes reading examples")
@click.option("--batches", default=30, show_default=True, help="loader batches timed per mode")
@click.option("--steps", default=5, show_default=True, help="training steps timed")
@click.option("--cache-dir", default=None, type=click.Path(path_type=Path), help="default: the engine's cache")
@click.option("--device", default="cuda" if torch.cuda.is_available() else "cpu", show_default=True)
def main(batch_size: int, num_workers: int, batches: int, steps: int, cache_dir: Path | None, device: str) -> None:
    """Print loader and training-step throughput per features cache."""
    cache_dir = cache_dir or default_cache_dir()
    dev = torch.device(device)
    options = yaml.safe_load((RECIPES / "synthworld.yaml").read_text())["datasets"]["synthworld"]
    rows = []
    kept: list[Batch] = []
    modes = [("disk", 0), *([("disk", num_workers)] if num_workers else []), ("ram", 0), ("gpu", 0)]
    for mode, workers in modes:
        data = SynthWorld({**options, "features_cache": mode}, cache_dir)
        data.prepare()
        _, tasks = build(data, dev)
        per_batch, per_sample, got = loader_rate(data, tasks, dev, batch_size, workers, batches)
        kept = kept or got
        where = f", {workers} workers" if workers else " (" + dev.type + ")" if mode == "gpu" else ""
        rows.append((f"loader {mode}{where}", per_batch, per_sample))
    backbone, tasks = build(SynthWorld({**options}, cache_dir), dev)
    fresh = [to_device(b, dev) for b in kept]
    rate = step_rate(backbone, tasks, fresh, dev, steps)
    rows.append(("training step (lxmert_s_cpu)", rate / batch_size, rate))
    print(f"batch {batch_size}, device {dev}, torch threads {torch.get_num_threads()}")
    print(f"{'':32s}{'batches/s':>12s}{'samples/s':>12s}")
    for name, b, s in rows:
        print(f"{name:32s}{b:12.1f}{s:12.0f}")


if __name__ == "__main__":
    main()
