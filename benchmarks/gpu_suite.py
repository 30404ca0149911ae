"""The GPU suite: one run on a machine with one CUDA GPU, one JSON and one markdown table (``benchmarks/gpu_suite.sh``).

Three parts, each timed with the device synchronised around every measurement:

- ``step``: ``bench_pretrain_step`` at B = 256, 512, 1024 in bf16, eager and ``torch.compile``d, mmcore's
  ``lxmert_s`` and transformers' ``LxmertForPreTraining`` alternating in the same run: samples/s, TFLOP/s, MFU
  against the GPU's bf16 dense peak (H200: 989 TFLOP/s) and peak memory (``torch.cuda.max_memory_allocated``).
- ``engine``: the paper-size recipe (``recipes/paper/msp_tps_paper_size.yaml``: 768 hidden, 36 regions of 2048-d
  features on synthworld) through the real engine, ``--engine-steps`` steps of each stage: samples/s, GPU
  utilisation sampled while it trains (``torch.cuda.utilization`` or ``nvidia-smi``), and the loop's host time in
  the data path (read, prepare, collate, host-to-device) against the step (masking, forward, backward,
  optimiser); a data path whose time approaches the step's, with utilisation well under 100%, starves the GPU.
- ``retrieval``: pairs/s of the retrieval head's scoring at paper size, old (whole pairs) and new (pair
  encoder), and the projected time of the 5,000,000-pair Flickr30k 1k test.

``--dry-run`` runs every part at a toy size on the CPU (eager only: compiling needs minutes there).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_pretrain_step as step_bench  # noqa: E402
import bench_retrieval_eval as retrieval_bench  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
H200_BF16_PEAK = 989.4e12  # dense bf16 tensor-core FLOP/s of an H200 SXM
DATA_PHASES = ("read", "prepare", "collate", "fetch", "host_to_device")
STEP_PHASES = ("masking", "forward", "backward", "optimizer")
ENGINE_WORLD_IMAGES = 600  # pre-training images of the engine part's world (paper-size features: 36 x 2048)
TOY_WORLD = ["train_images=24", "val_images=4", "test_images=4", "vqa_train_images=8", "retrieval_train_images=8",
             "gqa_train_images=4", "nlvr2_train_pairs=4", "max_regions=4", "feature_dim=16", "hard_negatives_top=5"]


def sync(device: torch.device) -> None:
    """Wait for the device (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----- part 1: the step ---------------------------------------------------------------------------------------


def step_part(device: torch.device, batches: list[int], compiled: list[bool], dry_run: bool) -> list[dict[str, Any]]:
    """One row per (model, batch, eager/compiled): samples/s, TFLOP/s, MFU, peak memory."""
    base = step_bench.BenchConfig(device=device.type, dtype="fp32" if dry_run else "bf16", steps=3 if dry_run else 10,
                                  warmup=1 if dry_run else 2)
    if dry_run:
        base = replace(base, hidden=32, layers=1, heads=2, text_len=8, regions=4, feat_dim=16, vocab=1100,
                       num_objects=20, num_attributes=10, mlm_max_predictions=2, region_max_predictions=2)
    rows = []
    for compile_ in compiled:
        for batch in batches:
            cfg = replace(base, batch=batch, compile=compile_)
            for result in step_bench.run_benchmark(cfg):
                seconds = result.median
                tflops = result.flops / seconds / 1e12
                rows.append({"model": result.model, "batch": batch, "dtype": result.dtype, "compiled": compile_,
                             "samples_per_s": batch / seconds, "step_ms": seconds * 1e3, "tflops": tflops,
                             "mfu": tflops * 1e12 / H200_BF16_PEAK if device.type == "cuda" else None,
                             "peak_memory_gib": None if result.peak_bytes is None else result.peak_bytes / 2**30})
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ----- part 2: the engine -------------------------------------------------------------------------------------


class UtilisationSampler:
    """GPU utilisation (%) every ``every`` seconds in a thread: torch.cuda.utilization, else nvidia-smi."""

    def __init__(self, device: torch.device, every: float = 0.2) -> None:
        self.device, self.every = device, every
        self.samples: list[float] = []
        self.source: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        if self.device.type != "cuda":
            return None
        if self.source in (None, "torch.cuda.utilization"):
            try:
                value = float(torch.cuda.utilization(self.device))
                self.source = "torch.cuda.utilization"
                return value
            except Exception:  # no pynvml / amdsmi: try the command line
                self.source = "nvidia-smi"
        if shutil.which("nvidia-smi") is None:
            self.source = "unavailable"
            return None
        index = self.device.index or 0
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, check=False)
        try:
            return float(out.stdout.strip().splitlines()[0])
        except (ValueError, IndexError):
            return None

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.samples.append(value)
            if self.source == "unavailable":
                return
            self._stop.wait(self.every)

    def __enter__(self) -> UtilisationSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        """Mean utilisation over the samples, or None without any."""
        return sum(self.samples) / len(self.samples) if self.samples else None


def engine_part(device: torch.device, steps: int, dry_run: bool, cache_dir: Path | None) -> dict[str, Any]:
    """The paper-size recipe's stages through the engine for ``steps`` steps each, no evaluation."""
    from mmcore.recipeload import prepare_recipe
    from mmcore.context import RunContext
    from mmcore.engine import Engine
    from mmcore.phases import PhaseClock, recording
    from mmcore.progress import Reporter
    from mmcore.rundir import RunDir

    overrides = ["zero_shot=[]", "finetune=[]", f"device={device.type}"]
    overrides += [f"stages.{s}.max_steps={steps}" for s in ("token", "phrase", "sentence")]
    if dry_run:
        overrides += [f"datasets.synthworld.{o}" for o in TOY_WORLD]
        overrides += ["backbone.hidden_size=32", "backbone.num_attention_heads=2", "backbone.intermediate_size=64",
                      "backbone.x_layers=1"] + [f"stages.{s}.batch_size=4" for s in ("token", "phrase", "sentence")]
    else:  # a smaller world at the same feature size: generating it is not what is measured
        overrides += [f"datasets.synthworld.train_images={ENGINE_WORLD_IMAGES}"]
    _, plugins, resolved = prepare_recipe(ROOT / "recipes" / "paper" / "msp_tps_paper_size.yaml", tuple(overrides))
    with tempfile.TemporaryDirectory(prefix="gpu_suite_") as tmp:
        run = RunDir.create(Path(tmp), resolved["name"], "run")
        # Opening the context prepares the world: generating it is not part of the measurement.
        engine = Engine(RunContext.open(resolved, plugins, run, Reporter(quiet=True), cache_dir))
        clock = PhaseClock()
        with UtilisationSampler(device) as util, recording(clock):
            results = engine.execute()
        sync(device)
    samples = sum(int(s["samples"]) for s in results["_stages"].values())
    data = sum(clock.seconds.get(p, 0.0) for p in DATA_PHASES)
    step = sum(clock.seconds.get(p, 0.0) for p in STEP_PHASES)
    return {"steps_per_stage": steps, "samples": samples, "seconds": clock.wall,
            "samples_per_s": samples / max(clock.wall, 1e-9),
            "gpu_utilisation_pct": util.mean, "utilisation_source": util.source,
            "data_path_s": data, "step_s": step, "data_to_step": data / max(step, 1e-9),
            "phases_s": dict(clock.seconds),
            "stages": {name: {"samples": s["samples"], "seconds": s["seconds"]}
                       for name, s in results["_stages"].items()}}


# ----- part 3: retrieval --------------------------------------------------------------------------------------


def retrieval_part(device: torch.device, images: int, dry_run: bool) -> dict[str, Any]:
    """Pairs/s of the new and the old scoring path and the projected Flickr30k 1k test time."""
    cfg = retrieval_bench.BenchConfig(device=device.type, dtype="fp32" if dry_run else "bf16", images=images,
                                      batch_pairs=4 if dry_run else 2048, naive_pairs=0)
    if dry_run:
        cfg = replace(cfg, hidden=16, layers=1, heads=2, regions=3, feat_dim=8, tokens=6, vocab=1100)
    results, diffs = retrieval_bench.run_benchmark(cfg)
    sync(device)
    rows = [{"method": r.method, "pairs": r.pairs, "seconds": r.seconds, "pairs_per_s": r.rate,
             "flickr30k_5m_pairs_s": retrieval_bench.FLICKR_PAIRS / r.rate} for r in results]
    return {"rows": rows, "max_score_difference": diffs}


# ----- report -------------------------------------------------------------------------------------------------


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    """The report's tables."""
    lines = [f"# GPU suite{' (dry run, CPU, toy sizes)' if report['dry_run'] else ''}", "",
             f"{report['machine']['device']}; torch {report['machine']['torch']}; {report['elapsed_s']:.0f} s", ""]
    if "step" in report["parts"]:
        lines += ["## pre-training step", "",
                  "| model | B | dtype | compiled | samples/s | step ms | TFLOP/s | MFU | peak GiB |",
                  "|---|---:|---|---|---:|---:|---:|---:|---:|"]
        for r in report["parts"]["step"]:
            mfu = "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            lines.append(f"| {r['model']} | {r['batch']} | {r['dtype']} | {'yes' if r['compiled'] else 'no'} | "
                         f"{_fmt(r['samples_per_s'])} | {_fmt(r['step_ms'])} | {_fmt(r['tflops'], 2)} | {mfu} | "
                         f"{_fmt(r['peak_memory_gib'], 2)} |")
        lines.append("")
    if "engine" in report["parts"]:
        e = report["parts"]["engine"]
        lines += ["## paper-size recipe through the engine", "",
                  "| steps/stage | samples | seconds | samples/s | GPU util % | data path s | step s | data / step |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {e['steps_per_stage']} | {e['samples']} | {_fmt(e['seconds'])} | {_fmt(e['samples_per_s'])} | "
                  f"{_fmt(e['gpu_utilisation_pct'])} | {_fmt(e['data_path_s'], 2)} | {_fmt(e['step_s'], 2)} | "
                  f"{_fmt(e['data_to_step'], 2)} |", ""]
    if "retrieval" in report["parts"]:
        lines += ["## retrieval scoring", "", "| method | pairs | pairs/s | Flickr30k 1k test (5M pairs) |",
                  "|---|---:|---:|---:|"]
        for r in report["parts"]["retrieval"]["rows"]:
            lines.append(f"| {r['method']} | {r['pairs']:,} | {_fmt(r['pairs_per_s'])} | "
                         f"{retrieval_bench.duration(r['flickr30k_5m_pairs_s'])} |")
        lines.append("")
    notes = [f"- {name} failed: {error}" for name, error in report.get("errors", {}).items()]
    notes += [f"- skipped {what}" for what in report.get("skipped", [])]
    if notes:
        lines += ["## not measured", "", *notes, ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path, stem: str) -> None:
    """Write OUT/STEM.json and .md under temporary names, then rename: a killed run leaves the last whole report."""
    out.mkdir(parents=True, exist_ok=True)
    for path, text in ((out / f"{stem}.json", json.dumps(report, indent=2) + "\n"),
                       (out / f"{stem}.md", markdown(report))):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)


@click.command()
@click.option("--dry-run", is_flag=True, help="Every part at a toy size on the CPU.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=ROOT / "benchmarks" / "results",
              show_default=True, help="Folder for gpu_suite.json and gpu_suite.md.")
@click.option("--parts", default="step,engine,retrieval", show_default=True)
@click.option("--batches", default="256,512,1024", show_default=True, help="Step batch sizes.")
@click.option("--engine-steps", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--retrieval-images", type=click.IntRange(min=1), default=200, show_default=True,
              help="Images (x5 captions) scored in the retrieval part.")
@click.option("--budget-s", type=click.FloatRange(min=0), default=420, show_default=True,
              help="Compiled step rows (run last, compilation takes minutes) start only within this many seconds.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def main(dry_run: bool, out: Path, parts: str, batches: str, engine_steps: int, retrieval_images: int,
         budget_s: float, cache_dir: Path | None) -> None:
    """Run the suite; write OUT/gpu_suite.json and OUT/gpu_suite.md (gpu_suite_dry_run.* with --dry-run).

    The report is rewritten after every part, so a run stopped early keeps what it measured; on the GPU a
    part that fails is recorded with its error and the others still run.
    """
    if not dry_run and not torch.cuda.is_available():
        raise click.UsageError("no CUDA GPU here: run on a GPU machine, or --dry-run for the CPU toy version")
    device = torch.device("cpu" if dry_run else "cuda")
    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    stem = "gpu_suite_dry_run" if dry_run else "gpu_suite"
    start = time.perf_counter()
    report: dict[str, Any] = {"dry_run": dry_run, "parts": {}, "errors": {}, "skipped": [], "machine": {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({platform.processor() or platform.machine()})"),
        "torch": torch.__version__, "cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}}

    def measure(label: str, key: str, run: Callable[[], Any]) -> None:
        """Run one part, store it under parts[key] (step rows are appended), record a failure, save the report."""
        try:
            value = run()
            if key == "step":
                report["parts"].setdefault("step", []).extend(value)
            else:
                report["parts"][key] = value
        except Exception as error:  # a first run on a new machine: keep the other parts' figures
            if dry_run:
                raise
            report["errors"][label] = f"{type(error).__name__}: {error}"
            click.echo(f"{label} failed: {report['errors'][label]}", err=True)
        finally:
            report["elapsed_s"] = time.perf_counter() - start
            write_report(report, out, stem)

    sizes = [2, 4] if dry_run else [int(b) for b in batches.split(",")]
    if "step" in chosen:
        measure("step eager", "step", lambda: step_part(device, sizes, [False], dry_run))
    if "engine" in chosen:
        measure("engine", "engine", lambda: engine_part(device, 2 if dry_run else engine_steps, dry_run, cache_dir))
    if "retrieval" in chosen:
        measure("retrieval", "retrieval", lambda: retrieval_part(device, 3 if dry_run else retrieval_images, dry_run))
    if "step" in chosen and not dry_run:  # compiling on the CPU takes minutes: the dry run stays eager
        for batch in sizes:
            if time.perf_counter() - start > budget_s:
                report["skipped"].append(f"compiled step at B={batch}: past the {budget_s:.0f} s budget")
                continue
            measure(f"step compiled B={batch}", "step", lambda b=batch: step_part(device, [b], [True], dry_run))
    report["elapsed_s"] = time.perf_counter() - start
    write_report(report, out, stem)
    click.echo(markdown(report))
    click.echo(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
