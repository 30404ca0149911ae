"""One pre-training stage of a recipe through the real engine against the bare training step on the same batches.

    python benchmarks/bench_stage.py                          # token, phrase and sentence stages of msp_tps
    python benchmarks/bench_stage.py --stage sentence --steps 60 --repeat 3
    python benchmarks/bench_stage.py --stage token --busy 1   # beside one busy process: thread counts compared

The engine run is ``Engine.execute`` (over a freshly opened ``RunContext``) on the recipe with that stage alone (fresh weights, ``--steps`` steps, no
evaluation): data view, per-example prepare, tokenise/collate, masking, step, logging to ``metrics.jsonl`` and the
stage's checkpoint, as the recipe configures them. Its samples/s is over the stage's wall clock (from the first
batch read to the checkpoint written). The bare step then runs the same stage's model, tasks and optimiser on the
same batches (made beforehand by the same sampler and collate, untimed): masking, forward, losses, backward,
clipping, AdamW and the schedule, nothing else. Engine and bare runs alternate ``--repeat`` times, so a busy
machine slows both alike; each pair gives a ratio, by wall clock and by this process's CPU time (at
``OMP_NUM_THREADS=1`` the CPU-time ratio compares the work done, whatever else runs on the machine).

The per-phase breakdown is the engine's own (``mmcore.phases``): ``read`` (the view's examples), ``prepare``
(tasks' per-example work), ``collate`` (tokenise and stack), ``fetch`` (the loader's remaining overhead),
``host_to_device``, ``masking``, ``forward`` (encoder and losses), ``backward``, ``optimizer`` (non-finite
watch, clipping, AdamW, schedule), ``logging`` and ``checkpoint``; ``other`` is the loop's remaining time.

``--busy N`` starts N busy processes beside the run and measures the engine stage with torch's default thread
count, with mmcore's choice (``mmcore.threads``: affinity and cgroup quota) and with one thread.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import torch

from mmcore.data.collate import Collator
from mmcore.data.loader import Batches
from mmcore.builders import build_backbone, build_tasks
from mmcore.context import RunContext
from mmcore.engine import Engine
from mmcore.phases import PhaseClock, recording
from mmcore.progress import Reporter
from mmcore.rundir import RunDir
from mmcore.threads import choose_threads
from mmcore.training import EpochSampler, PrepareCollate, make_optimizer, make_schedule

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("read", "prepare", "collate", "fetch", "host_to_device", "masking", "forward", "backward", "optimizer",
          "logging", "checkpoint")
DEFAULT_THREADS = torch.get_num_threads()  # torch's own choice, before anything sets it


@dataclass
class StageRun:
    """One engine run of a stage: samples, wall seconds and the phases' exclusive seconds."""

    samples: int
    seconds: float
    cpu_seconds: float  # this process's CPU time over the same span (all threads)
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Samples per second."""
        return self.samples / max(self.seconds, 1e-9)

    @property
    def cpu_rate(self) -> float:
        """Samples per CPU second: barely moved by other work on the machine (at one thread, the work done)."""
        return self.samples / max(self.cpu_seconds, 1e-9)


def stage_recipe(recipe: Path, stage: str, steps: int) -> tuple[Any, dict[str, Any]]:
    """(plugins, resolved recipe) holding only ``stage``, from fresh weights, for ``steps`` steps, no evaluation."""
    from mmcore.recipeload import prepare_recipe

    _, plugins, resolved = prepare_recipe(recipe, ("zero_shot=[]", "finetune=[]"))
    chosen = [s for s in resolved["stages"] if s["name"] == stage]
    if not chosen:
        raise click.BadParameter(f"{recipe} has no stage {stage!r}", param_hint="--stage")
    resolved["stages"] = [{**chosen[0], "init": "none", "max_steps": steps}]
    return plugins, resolved


def run_engine(plugins: Any, resolved: dict[str, Any], cache_dir: Path | None, threads: int | None) -> StageRun:
    """The stage through ``Engine.execute`` in a temporary run directory, its phases recorded."""
    with tempfile.TemporaryDirectory(prefix="bench_stage_") as tmp:
        run = RunDir.create(Path(tmp), resolved["name"], "run")
        # Opening the context prepares the world: generating or loading it is not part of the stage.
        engine = Engine(RunContext.open(resolved, plugins, run, Reporter(quiet=True), cache_dir, threads))
        clock = PhaseClock()
        with recording(clock):
            results = engine.execute()
    stage = resolved["stages"][0]["name"]
    spent = dict(clock.seconds)
    spent["other"] = max(0.0, clock.wall - sum(spent.values()))
    return StageRun(int(results["_stages"][stage]["samples"]), clock.wall, clock.cpu, spent)


class BareStep:
    """The stage's model, tasks and optimiser, and its batches made beforehand: times the step alone."""

    def __init__(self, plugins: Any, resolved: dict[str, Any], cache_dir: Path | None) -> None:
        ctx = RunContext.open(resolved, plugins, None, Reporter(quiet=True), cache_dir)  # writes no run
        stage, seed = resolved["stages"][0], ctx.seed
        torch.manual_seed(seed)
        self.backbone = build_backbone(ctx)
        self.tasks = build_tasks(ctx, stage, self.backbone)
        self.weights = {name: float(opts["weight"]) for name, opts in stage["tasks"].items()}
        self.batches = self._batches(ctx, stage, seed)
        self.stage, self.seed = stage, seed

    def _batches(self, ctx: RunContext, stage: dict[str, Any], seed: int) -> list[dict[str, Any]]:
        # The engine's sampler and collate for stage index 0, with its seeds: the batches its loop saw.
        _, data = ctx.views(stage["data"])
        prepare = [_listed(task.prepare) for task in self.tasks.values()]
        collate = PrepareCollate(prepare, Collator(ctx.tokenizer, stage["max_text_len"]), ctx.processes.seed(seed))
        sampler = EpochSampler(data, [d["weight"] for d in stage["data"]], seed)
        out: list[dict[str, Any]] = []
        epoch = 0
        with Batches(data, stage["batch_size"], sampler, collate) as loader:
            while len(out) < int(stage["max_steps"]):
                sampler.set_epoch(epoch)
                collate.set_epoch(epoch)
                for batch in loader.epoch():
                    out.append(batch)
                    if len(out) == int(stage["max_steps"]):
                        break
                epoch += 1
        return out

    def run(self) -> StageRun:
        """Time masking, forward, losses, backward, clipping, AdamW and the schedule over every batch."""
        modules = [self.backbone, *self.tasks.values()]
        params = [p for m in modules for p in m.parameters() if p.requires_grad]
        optimizer = make_optimizer(params, self.stage["optim"], torch.device("cpu"))
        schedule = make_schedule(optimizer, len(self.batches), self.stage["optim"]["warmup"])
        generator = torch.Generator().manual_seed(self.seed)
        for module in modules:
            module.train()
        seconds, cpu_seconds, samples = 0.0, 0.0, 0
        for original in self.batches:
            batch = {k: v.clone() if isinstance(v, torch.Tensor) else list(v) for k, v in original.items()}
            start, cpu_start = time.perf_counter(), time.process_time()
            optimizer.zero_grad(set_to_none=True)
            for task in self.tasks.values():
                task.corrupt(batch, generator)
            output = self.backbone.encode(batch)
            loss = sum(self.weights[n] * task.loss(output, batch) for n, task in self.tasks.items())
            loss.backward()
            if self.stage["optim"]["clip"]:
                torch.nn.utils.clip_grad_norm_(params, self.stage["optim"]["clip"])
            optimizer.step()
            schedule.step()
            seconds += time.perf_counter() - start
            cpu_seconds += time.process_time() - cpu_start
            samples += int(batch["input_ids"].shape[0])
        return StageRun(samples, seconds, cpu_seconds)


def _listed(prepare: Any) -> Any:
    def call(example: dict, source: Any, rng: Any) -> list[dict]:
        out = prepare(example, source, rng)
        return out if isinstance(out, list) else [out]
    return call


def busy_processes(count: int) -> list[subprocess.Popen]:
    """``count`` processes that each keep one core busy until stopped."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def phase_table(runs: list[StageRun]) -> str:
    """Median seconds per phase over the engine runs, and its share of the stage's wall clock."""
    wall = statistics.median(r.seconds for r in runs)
    lines = ["| phase | seconds | share |", "|---|---:|---:|"]
    for name in (*PHASES, "other"):
        value = statistics.median(r.phases.get(name, 0.0) for r in runs)
        lines.append(f"| {name} | {value:.2f} | {100 * value / wall:.1f}% |")
    return "\n".join(lines)


def measure_stage(recipe: Path, stage: str, steps: int, repeat: int, cache_dir: Path | None) -> str:
    """Engine and bare step, alternating ``repeat`` times: a samples/s table with ratios, and the phase table."""
    plugins, resolved = stage_recipe(recipe, stage, steps)
    bare = BareStep(plugins, resolved, cache_dir)
    engine_runs, bare_runs = [], []
    for _ in range(repeat):
        engine_runs.append(run_engine(plugins, resolved, cache_dir, None))
        bare_runs.append(bare.run())
    lines = [f"## stage {stage}: {steps} steps of batch {resolved['stages'][0]['batch_size']}", "",
             "| run | engine samples/s | bare step samples/s | engine / bare | engine samples/CPU-s | "
             "bare samples/CPU-s | engine / bare (CPU time) |", "|---|---:|---:|---:|---:|---:|---:|"]
    ratios, cpu_ratios = [], []
    for i, (e, b) in enumerate(zip(engine_runs, bare_runs), start=1):
        ratios.append(e.rate / b.rate)
        cpu_ratios.append(e.cpu_rate / b.cpu_rate)
        lines.append(f"| {i} | {e.rate:.1f} | {b.rate:.1f} | {ratios[-1]:.3f} | {e.cpu_rate:.1f} | {b.cpu_rate:.1f} | "
                     f"{cpu_ratios[-1]:.3f} |")
    median = statistics.median
    lines += [f"| median | {median(e.rate for e in engine_runs):.1f} | {median(b.rate for b in bare_runs):.1f} | "
              f"{median(ratios):.3f} | {median(e.cpu_rate for e in engine_runs):.1f} | "
              f"{median(b.cpu_rate for b in bare_runs):.1f} | {median(cpu_ratios):.3f} |", "",
              "engine phases (median over runs):", "", phase_table(engine_runs)]
    return "\n".join(lines)


def measure_busy(recipe: Path, stage: str, steps: int, busy: int, cache_dir: Path | None) -> str:
    """The engine stage beside ``busy`` busy processes at torch's default, mmcore's chosen and one thread."""
    plugins, resolved = stage_recipe(recipe, stage, steps)
    choice = choose_threads(env={})
    settings = [("torch default", DEFAULT_THREADS), (f"mmcore choice ({choice.source})", choice.threads),
                ("one thread", 1)]
    lines = [f"## stage {stage} beside {busy} busy process(es): {steps} steps", "",
             "| threads | count | engine samples/s |", "|---|---:|---:|"]
    workers = busy_processes(busy)
    try:
        for label, count in settings:
            result = run_engine(plugins, resolved, cache_dir, count)
            lines.append(f"| {label} | {count} | {result.rate:.1f} |")
            click.echo(lines[-1], err=True)
    finally:
        for process in workers:
            process.kill()
            process.wait()
    return "\n".join(lines)


@click.command()
@click.option("--recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=ROOT / "recipes" / "msp_tps.yaml", show_default=True)
@click.option("--stage", "stages", type=click.Choice(["token", "phrase", "sentence"]), multiple=True,
              help="Stage(s) to measure (repeatable; default: all three).")
@click.option("--steps", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--repeat", type=click.IntRange(min=1), default=2, show_default=True,
              help="Engine / bare pairs per stage.")
@click.option("--busy", type=click.IntRange(min=0), default=0, show_default=True,
              help="Run beside N busy processes and compare thread counts instead.")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None)
def main(recipe: Path, stages: tuple[str, ...], steps: int, repeat: int, busy: int, cache_dir: Path | None) -> None:
    """Print engine vs bare-step samples/s, their ratio and the engine's phases, per stage."""
    click.echo(f"# {recipe.name}; torch {torch.__version__}; {os.cpu_count()} CPUs; load average "
               f"{os.getloadavg()[0]:.2f}; OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    for stage in stages or ("token", "phrase", "sentence"):
        if busy:
            click.echo(measure_busy(recipe, stage, steps, busy, cache_dir))
        else:
            click.echo(measure_stage(recipe, stage, steps, repeat, cache_dir))
        click.echo("")


if __name__ == "__main__":
    main()
