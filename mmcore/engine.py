"""The stage loop of one run: build, train, checkpoint, carry weights, evaluate zero-shot, fine-tune; write the run
directory. Everything it works with comes from its :class:`~mmcore.context.RunContext`."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from mmcore.api import Backbone, Batch, Example, ExampleSource, Task
from mmcore.blame import blame, blame_hook, call, position
from mmcore.buildcheck import build_all
from mmcore.builders import build_backbone, build_head, build_tasks, pretrained_backbone, pretrained_tasks, \
    start_state, started_from
from mmcore.callbacks import RunLog
from mmcore.checkpointing import CheckpointFiles, PartialCheckpoints, check_fits, cpu_state, read_backbone_weights, \
    resume_state
from mmcore.context import RunContext
from mmcore.data.collate import Collator
from mmcore.evaluation import evaluate, query_intervals, scratch
from mmcore.finetuning import finetune
from mmcore.layout import Layout
from mmcore.machine import machine_fingerprint
from mmcore.phases import phase
from mmcore.plugins import Plugins
from mmcore.progress import Reporter
from mmcore.rundir import RunDir, fingerprint
from mmcore.summary import write_summary
from mmcore.trainer import Data, Model, Runtime, Schedule, Trainer
from mmcore.training import EpochSampler, PrepareCollate


def run_recipe(recipe: dict[str, Any], plugins: Plugins, run_dir: RunDir, reporter: Reporter,
               cache_dir: Path | None = None, threads: int | None = None) -> dict[str, Any]:
    """Open the run context of ``run_dir`` and run the resolved ``recipe`` into it; return its results."""
    return Engine(RunContext.open(recipe, plugins, run_dir, reporter, cache_dir, threads)).execute()


class Engine:
    """Runs one resolved recipe into one run directory: pre-training, then zero-shot evaluations and fine-tunings."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.recipe, self.run, self.reporter = ctx.recipe, ctx.run, ctx.reporter
        self.results: dict[str, Any] = self.run.read_results()
        # How many threads, on which machine: what a bit-identical rerun needs besides the recipe.
        self.results.setdefault("_run", {})["threads"] = ctx.threads.record()
        self.results["_run"]["precision"] = ctx.precision.record()
        self.results["_run"]["machine"] = machine_fingerprint()

    # ----- the run ----------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Run every stage, zero-shot evaluation and fine-tuning not already complete; return all results. The run's
        loggers (``metrics.jsonl``'s and the recipe's ``loggers``) are registered from its start to its end."""
        with self.ctx.logging():
            return self._execute()

    def _execute(self) -> dict[str, Any]:
        start = time.perf_counter()
        ctx = self.ctx
        self._check_init_checkpoints()
        build_all(self.recipe, ctx.registry, ctx.info)  # an option a plugin rejects fails before any training
        if ctx.processes.enabled:  # every process prepares now: rank 0 alone evaluates, and must not wait for the others
            for item in [*self.recipe["zero_shot"], *self.recipe["finetune"]]:
                for data in item["data"]:
                    ctx.dataset(data["dataset"])
        state = self._pretrain()
        pretrained = pretrained_tasks(ctx, state)
        for item in self.recipe["zero_shot"]:
            if item["name"] in self.results:
                self.reporter.message(f"[dim]zero-shot {item['name']}: done, skipped[/dim]")
                continue
            origin = start_state(ctx, item, state, pretrained)  # the final weights, or those of its `init` stage
            self._record(item["name"], {**self._zero_shot(item, *origin), **started_from(item)})
        for item in self.recipe["finetune"]:
            if item["name"] in self.results:
                self.reporter.message(f"[dim]fine-tuning {item['name']}: done, skipped[/dim]")
                continue
            self._record(item["name"], finetune(ctx, item, state, pretrained))
        self.results.setdefault("_run", {})["seconds_this_session"] = round(time.perf_counter() - start, 1)
        self.run.write_results(self.results)
        if self.run.main:
            write_summary(self.run, self.recipe, self.results, Layout.of(ctx.registry))
        return self.results

    def _record(self, name: str, result: dict[str, Any]) -> None:
        self.results[name] = result
        self.run.write_results(self.results)

    def _pretrain(self) -> dict[str, Any]:
        """Train every stage in order (skipping completed ones); return the final backbone and task states."""
        state: dict[str, Any] = {"backbone": None, "tasks": {}, "stage": None}
        for index, stage in enumerate(self.recipe["stages"]):
            path = self.run.stage_checkpoint(stage["name"])
            if path.exists():
                files = self._files(path, stage["name"], f"stage {stage['name']!r}")
                ckpt = files.read(path)
                files.discard_partial()
                state = {"backbone": ckpt["backbone"], "tasks": {**state["tasks"], **ckpt["tasks"]}, "stage": stage["name"]}
                if "metrics" in ckpt and stage["name"] not in self.results.get("_stages", {}):
                    # Stopped between writing the checkpoint and recording the stage: record it now.
                    self.results.setdefault("_stages", {})[stage["name"]] = ckpt["metrics"]
                    self.run.write_results(self.results)
                self.reporter.message(f"[dim]stage {stage['name']}: checkpoint found, skipped[/dim]")
                continue
            state = self._train_stage(index, stage, state)
        return state

    def _check_init_checkpoints(self) -> None:
        """Before any training: every ``init:`` checkpoint of a stage still to run fits the recipe's backbone."""
        backbone = None
        for stage in self.recipe["stages"]:
            init = stage["init"]
            if init in ("previous", "none", None) or self.run.stage_checkpoint(stage["name"]).exists():
                continue
            if backbone is None:
                torch.manual_seed(self.ctx.seed)
                backbone = build_backbone(self.ctx)
            check_fits(read_backbone_weights(init), backbone, self._init_where(stage), init)

    @staticmethod
    def _init_where(stage: dict[str, Any]) -> str:
        return stage.get("_init_where") or f"stage {stage['name']!r}: init"

    def _initial_backbone(self, stage: dict[str, Any], state: dict[str, Any]) -> tuple[Backbone, dict[str, Any]]:
        torch.manual_seed(self.ctx.seed)
        backbone = build_backbone(self.ctx)
        init = stage["init"]
        if init in ("previous", None) and state["backbone"] is not None:
            backbone.load_state_dict(state["backbone"])
            return backbone, {"from": state["stage"]}
        if init not in ("previous", "none", None):
            weights = read_backbone_weights(init)
            check_fits(weights, backbone, self._init_where(stage), init)
            backbone.load_state_dict(weights)
            return backbone, {"from": str(init)}
        return backbone, {"from": None}

    def _train_stage(self, index: int, stage: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        name = stage["name"]
        position.enter(f"stage {name!r}")
        ctx = self.ctx
        with blame_hook(ctx.registry, ctx.plugins.manager, "mmcore_stage_start"):
            ctx.plugins.hook.mmcore_stage_start(run=ctx.hook_run, stage=MappingProxyType(stage))
        files = self._files(self.run.stage_checkpoint(name), name, f"stage {name!r}")
        partial = files.begin()
        backbone, init = self._initial_backbone(stage, state)
        init["fingerprint"] = fingerprint(backbone.state_dict())
        tasks = build_tasks(ctx, stage, backbone)
        carried = state["tasks"] if init["from"] == state["stage"] and state["stage"] is not None else {}
        for task_name, task in tasks.items():
            if task_name in carried:
                task.load_state_dict(carried[task_name])
        if partial is not None:  # continue the stage: its weights so far, and where they began
            init = partial["init"]
            backbone.load_state_dict(partial["backbone"])
            for task_name, task in tasks.items():
                task.load_state_dict(partial["tasks"][task_name])
        weights = {task_name: float(opts["weight"]) for task_name, opts in stage["tasks"].items()}
        generator = torch.Generator(device=ctx.device).manual_seed(ctx.processes.seed(ctx.seed + index))

        entries = {task_name: ctx.registry.get("task", task_name) for task_name in tasks}
        backbone_entry = ctx.registry.get("backbone", self.recipe["backbone"]["name"])

        def step(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
            with phase("masking"):
                for task_name, task in tasks.items():
                    call(ctx.registry, entries[task_name], "corrupt", task.corrupt, batch, generator)
            output = call(ctx.registry, backbone_entry, "forward", backbone.encode, batch)
            parts = {task_name: call(ctx.registry, entries[task_name], "loss", task.loss, output, batch)
                     for task_name, task in tasks.items()}
            total = sum(weights[task_name] * loss for task_name, loss in parts.items())
            return total, parts

        def saved() -> dict[str, Any]:
            return {"stage": name, "index": index, "init": init, "backbone": cpu_state(backbone),
                    "tasks": {task_name: cpu_state(t) for task_name, t in tasks.items()}, "mmcore_format": 2}

        _, data = ctx.views(stage["data"])
        prepare = [_as_list(task.prepare, ctx.registry, entries[n]) for n, task in tasks.items()]
        collate = PrepareCollate(prepare, Collator(ctx.tokenizer, stage["max_text_len"]),
                                 ctx.processes.seed(ctx.seed + index))
        sampler = EpochSampler(data, [d["weight"] for d in stage["data"]], ctx.seed + index)
        trainer = Trainer(
            f"stage {index + 1}/{len(self.recipe['stages'])} {name}",
            Model(step, [backbone, *tasks.values()]),
            Data(data, sampler, collate, stage["batch_size"], stage["num_workers"]),
            Schedule.of(stage, log_every=self.recipe["log_every"], precision=ctx.precision.precision),
            Runtime(ctx.device, self.reporter, ctx.processes, {"corrupt": generator}),
            [RunLog(ctx, name), PartialCheckpoints(files, saved)])
        result = trainer.fit(resume_state(files, partial))
        final = saved()
        metrics = {"steps": result.steps, "samples": result.samples, "seconds": round(result.seconds, 1),
                   **{f"final_{k}": v for k, v in result.last_losses.items()}}
        with phase("checkpoint"):
            files.save_final({**final, "step": result.steps, "fingerprint": fingerprint(final["backbone"]),
                              "rng": torch.get_rng_state(), "training": result.state, "metrics": metrics})
        stages = self.results.setdefault("_stages", {})
        stages[name] = metrics
        self.run.write_results(self.results)
        ctx.plugins.hook.mmcore_stage_end(run=ctx.hook_run, stage=MappingProxyType(stage), metrics=metrics)
        return {"backbone": final["backbone"], "tasks": {**state["tasks"], **final["tasks"]}, "stage": name}

    def _files(self, final: Path, scope: str, what: str) -> CheckpointFiles:
        return CheckpointFiles(self.run, final, scope, what)

    def _zero_shot(self, item: dict[str, Any], state: dict[str, Any], pretrained: dict[str, Task]) -> dict[str, Any]:
        ctx = self.ctx
        position.enter(f"zero-shot evaluation {item['name']!r}")
        backbone = pretrained_backbone(ctx, state)
        # Only the tasks the start stage itself trained match its weights: a head left over from an earlier stage
        # was trained against a backbone that has moved on since (the paper's S -> P -> T has no zero-shot score).
        own = next((list(s["tasks"]) for s in self.recipe["stages"] if s["name"] == state.get("stage")), [])
        head = build_head(ctx, item, {n: t for n, t in pretrained.items() if n in own}, backbone.hidden_size)
        split = item["data"][0]["split"]
        base = {"kind": "zero_shot", "head": item["head"], "split": split}
        if not head.zero_shot_ready:
            why = ("nothing was pre-trained" if state.get("stage") is None else
                   f"stage {state['stage']!r}, whose weights it starts from, trained no task the {item['head']!r} "
                   f"head can start from (it trained {', '.join(own) or 'none'})")
            self.reporter.message(f"[yellow]zero-shot {item['name']}: skipped: no zero-shot head ({why})[/yellow]")
            return {**base, "skipped": f"no zero-shot head: {why}"}
        metrics, intervals = ctx.processes.on_main(  # rank 0 evaluates
            lambda: (evaluate(ctx, head, backbone, item, split, scratch(ctx, item["name"])), query_intervals(head)))
        return {**base, "metrics": metrics, **intervals}


def _as_list(prepare: Any, registry: Any, entry: Any) -> Callable[[Example, ExampleSource, Any], list[Example]]:
    """Adapt a task's one-example ``prepare`` to the list-returning form the collate function chains; a failure
    names the task's plugin (``entry``)."""
    def one(example: Example, source: ExampleSource, rng: Any) -> list[Example]:
        with blame(registry, entry, "prepare"):
            return [prepare(example, source, rng)]
    return one
