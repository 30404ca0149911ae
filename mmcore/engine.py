"""The stage loop: build, train, checkpoint, carry weights, evaluate zero-shot, fine-tune; write the run directory."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from mmcore import distributed
from mmcore.api import Backbone, Batch, Dataset, Example, ExampleSource, Head, RunInfo, Task
from mmcore.blame import blame, blame_hook, call, failures_logged, position
from mmcore.buildcheck import build_all
from mmcore.checkpointing import (
    CheckpointFiles,
    check_fits,
    cpu_state,
    read_backbone_weights,
)
from mmcore.data.collate import Collator
from mmcore.evalcontext import EvalContext
from mmcore.errors import MMCoreError
from mmcore.finetuning import finetune, start_state, started_from
from mmcore.layout import Layout
from mmcore.loggers import run_loggers
from mmcore.machine import machine_fingerprint
from mmcore.phases import phase
from mmcore.plugins import Plugins
from mmcore.progress import Reporter
from mmcore.rundir import RunDir, fingerprint
from mmcore.schema.keys import setting
from mmcore.stats import query_intervals
from mmcore.summary import write_summary
from mmcore.threads import apply_threads, choose_threads
from mmcore.training import (
    EpochSampler,
    MixedExamples,
    PrepareCollate,
    autocast,
    train_loop,
)


def default_cache_dir() -> Path:
    """Where generated/converted data is cached: ``$MMCORE_CACHE`` or ``~/.cache/mmcore``."""
    return Path(os.environ.get("MMCORE_CACHE", Path.home() / ".cache" / "mmcore"))


def pick_device(spec: str) -> torch.device:
    """``auto`` means CUDA when available, else CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MMCoreError(f"device {spec!r} requested but CUDA is not available")
    return device


class Engine:
    """Runs one resolved recipe into one run directory."""

    def __init__(self, recipe: dict[str, Any], plugins: Plugins, run: RunDir, reporter: Reporter,
                 cache_dir: Path | None = None, threads: int | None = None) -> None:
        self.dist = distributed.setup()
        # Progress and messages from rank 0 only; the others would repeat them.
        reporter = reporter if self.dist.is_main else Reporter(reporter.console, quiet=True)
        self.recipe, self.plugins, self.run, self.reporter = recipe, plugins, run, reporter
        self.registry = plugins.registry
        self.cache_dir = cache_dir or default_cache_dir()
        self.device = self.dist.device(pick_device(recipe["device"]))
        self.seed = int(recipe["seed"])
        self.run_info = self._run_info()
        self._datasets: dict[str, Dataset] = {}
        self.results: dict[str, Any] = run.read_results()
        self._use_threads(threads)

    def _run_info(self) -> RunInfo:
        """What the run hooks receive as ``run``: read-only facts, not the engine (plugins must not reach into it)."""
        return RunInfo(run_dir=self.run.path, recipe_name=str(self.recipe.get("name", "")),
                       recipe=MappingProxyType(copy.deepcopy(self.recipe)), seed=self.seed, rank=self.dist.rank,
                       world_size=self.dist.world_size)

    def _use_threads(self, cli: int | None) -> None:
        """Choose and set the intra-op thread count (``--threads``, ``OMP_NUM_THREADS``, the recipe's ``threads``, else
        the CPUs this process may use); recorded in ``results.json`` under ``_run``."""
        choice = choose_threads(cli=cli, recipe=self.recipe.get("threads"))
        apply_threads(choice)
        self.results.setdefault("_run", {})["threads"] = choice.record()
        self.results["_run"]["machine"] = machine_fingerprint()  # what a bit-identical rerun needs besides the recipe
        self.reporter.message(f"[dim]{choice.threads} intra-op thread(s) ({choice.source})[/dim]")

    # ----- data -------------------------------------------------------------------------------------------
    def dataset(self, name: str) -> Dataset:
        """The prepared dataset ``name`` with the recipe's options (built once per run)."""
        if name not in self._datasets:
            entry = self.registry.get("dataset", name)
            dataset = call(self.registry, entry, "__init__", entry.factory,
                           self.recipe["datasets"].get(name, dict(entry.defaults)), self.cache_dir)
            self.reporter.message(f"[dim]preparing dataset {name}…[/dim]")
            with self.dist.main_first(), blame(self.registry, entry, "prepare"):  # rank 0 generates or converts
                dataset.prepare(self.reporter.message)
            self._datasets[name] = dataset
        return self._datasets[name]

    def primary_dataset(self) -> Dataset:
        """The first dataset the recipe uses: it sizes the backbone and gives the tokenizer."""
        for section in ("stages", "finetune", "zero_shot"):
            for item in self.recipe[section]:
                if item["data"]:
                    return self.dataset(item["data"][0]["dataset"])
        raise MMCoreError("the recipe uses no data: add a stage, zero_shot or finetune entry")

    def views(self, data: list[dict[str, Any]], split: str | None = None) -> tuple[list[ExampleSource], MixedExamples]:
        """The views of a recipe entry's ``data`` (in ``split``, else each one's own) and their mixture."""
        views = [call(self.registry, self.registry.get("dataset", d["dataset"]), "view",
                      self.dataset(d["dataset"]).view, d["view"], split or d["split"]) for d in data]
        return views, MixedExamples(views, [d.get("limit") for d in data])

    # ----- models -----------------------------------------------------------------------------------------
    def build_backbone(self) -> Backbone:
        """A freshly initialised backbone (seeded) sized for the primary dataset."""
        spec = dict(self.recipe["backbone"])
        entry = self.registry.get("backbone", spec.pop("name"))
        backbone = call(self.registry, entry, "__init__", entry.factory, spec, self.info).to(self.device)
        if self.recipe.get("compile"):
            backbone.compile()  # in place: parameter names, checkpoints and hooks stay those of the plain module
        return backbone

    def build_tasks(self, stage: dict[str, Any], backbone: Backbone) -> dict[str, Task]:
        """The stage's tasks, in corruption order."""
        tasks = {}
        for name, options in stage["tasks"].items():
            opts = {k: v for k, v in options.items() if k != "weight"}
            entry = self.registry.get("task", name)
            task = call(self.registry, entry, "__init__", entry.factory, self.info, backbone, **opts)
            tasks[name] = task.to(self.device)
        return dict(sorted(tasks.items(), key=lambda kv: kv[1].order))

    # ----- the run ----------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Run every stage, zero-shot evaluation and fine-tuning not already complete; return all results. The run's
        loggers (``metrics.jsonl``'s and the recipe's ``loggers``) are registered from its start to its end."""
        with failures_logged(self.run.path if self.run.main else None), \
                run_loggers(self.plugins.manager, self.registry, self.run, self.recipe.get("loggers") or {}):
            return self._execute()

    def _execute(self) -> dict[str, Any]:
        start = time.perf_counter()
        primary = self.primary_dataset()
        entry = self.registry.get("dataset", primary.name)
        self.info = call(self.registry, entry, "info", primary.info)
        self.tokenizer = call(self.registry, entry, "tokenizer", primary.tokenizer)
        self._check_init_checkpoints()
        build_all(self.recipe, self.registry, self.info)  # an option a plugin rejects fails before any training
        if self.dist.enabled:  # every process prepares now: rank 0 alone evaluates, and must not wait for the others
            for item in [*self.recipe["zero_shot"], *self.recipe["finetune"]]:
                for data in item["data"]:
                    self.dataset(data["dataset"])
        state = self._pretrain()
        pretrained = self.pretrained_tasks(state)
        for item in self.recipe["zero_shot"]:
            if item["name"] in self.results:
                self.reporter.message(f"[dim]zero-shot {item['name']}: done, skipped[/dim]")
                continue
            origin = start_state(self, item, state, pretrained)  # the final weights, or those of its `init` stage
            self._record(item["name"], {**self._zero_shot(item, *origin), **started_from(item)})
        for item in self.recipe["finetune"]:
            if item["name"] in self.results:
                self.reporter.message(f"[dim]fine-tuning {item['name']}: done, skipped[/dim]")
                continue
            self._record(item["name"], finetune(self, item, state, pretrained))
        self.results.setdefault("_run", {})["seconds_this_session"] = round(time.perf_counter() - start, 1)
        self.run.write_results(self.results)
        if self.run.main:
            write_summary(self.run, self.recipe, self.results, Layout.of(self.registry))
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
                torch.manual_seed(self.seed)
                backbone = self.build_backbone()
            check_fits(read_backbone_weights(init), backbone, self._init_where(stage), init)

    @staticmethod
    def _init_where(stage: dict[str, Any]) -> str:
        return stage.get("_init_where") or f"stage {stage['name']!r}: init"

    def _initial_backbone(self, stage: dict[str, Any], state: dict[str, Any]) -> tuple[Backbone, dict[str, Any]]:
        torch.manual_seed(self.seed)
        backbone = self.build_backbone()
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
        with blame_hook(self.registry, self.plugins.manager, "mmcore_stage_start"):
            self.plugins.hook.mmcore_stage_start(run=self.run_info, stage=MappingProxyType(stage))
        files = self._files(self.run.stage_checkpoint(name), name, f"stage {name!r}")
        partial = files.begin()
        backbone, init = self._initial_backbone(stage, state)
        init["fingerprint"] = fingerprint(backbone.state_dict())
        tasks = self.build_tasks(stage, backbone)
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
        generator = torch.Generator(device=self.device).manual_seed(self.dist.seed(self.seed + index))

        entries = {task_name: self.registry.get("task", task_name) for task_name in tasks}
        backbone_entry = self.registry.get("backbone", self.recipe["backbone"]["name"])

        def step(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
            with phase("masking"):
                for task_name, task in tasks.items():
                    call(self.registry, entries[task_name], "corrupt", task.corrupt, batch, generator)
            output = call(self.registry, backbone_entry, "forward", backbone.encode, batch)
            parts = {task_name: call(self.registry, entries[task_name], "loss", task.loss, output, batch)
                     for task_name, task in tasks.items()}
            total = sum(weights[task_name] * loss for task_name, loss in parts.items())
            return total, parts

        def saved() -> dict[str, Any]:
            return {"stage": name, "index": index, "init": init, "backbone": cpu_state(backbone),
                    "tasks": {task_name: cpu_state(t) for task_name, t in tasks.items()}, "mmcore_format": 2}

        _, data = self.views(stage["data"])
        prepare = [_as_list(task.prepare, self.registry, entries[n]) for n, task in tasks.items()]
        collate = PrepareCollate(prepare, Collator(self.tokenizer, stage["max_text_len"]), self.dist.seed(self.seed + index))
        sampler = EpochSampler(data, [d["weight"] for d in stage["data"]], self.seed + index)
        result = train_loop(
            description=f"stage {index + 1}/{len(self.recipe['stages'])} {name}",
            step_fn=step, modules=[backbone, *tasks.values()], data=data, sampler=sampler, collate=collate,
            batch_size=stage["batch_size"], epochs=stage["epochs"], max_steps=stage["max_steps"], optim=stage["optim"],
            device=self.device, reporter=self.reporter, log_every=self.recipe["log_every"],
            log=lambda s, e, m: self.log(name, s, e, m), generators={"corrupt": generator},
            precision=setting(self.recipe, "precision"),
            **self.checkpointing(stage, files, partial, saved),
        )
        final = saved()
        metrics = {"steps": result.steps, "samples": result.samples, "seconds": round(result.seconds, 1),
                   **{f"final_{k}": v for k, v in result.last_losses.items()}}
        with phase("checkpoint"):
            files.save_final({**final, "step": result.steps, "fingerprint": fingerprint(final["backbone"]),
                              "rng": torch.get_rng_state(), "training": result.state, "metrics": metrics})
        stages = self.results.setdefault("_stages", {})
        stages[name] = metrics
        self.run.write_results(self.results)
        self.plugins.hook.mmcore_stage_end(run=self.run_info, stage=MappingProxyType(stage), metrics=metrics)
        return {"backbone": final["backbone"], "tasks": {**state["tasks"], **final["tasks"]}, "stage": name}

    def _files(self, final: Path, scope: str, what: str) -> CheckpointFiles:
        return CheckpointFiles(self.run, final, scope, what)

    def checkpointing(self, item: dict[str, Any], files: CheckpointFiles, partial: dict[str, Any] | None,
                      saved: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """train_loop's arguments for accumulation, data-loader workers, checkpoints inside a stage or fine-tuning, and
        resuming one."""
        def checkpoint(training: dict[str, Any]) -> None:
            if self.run.main:  # the others would copy their weights only to drop them
                files.save_partial({**saved(), "step": training["step"], "training": training})

        resume = None if partial is None else {**partial["training"], "path": str(files.partial)}
        return {"grad_accum": item["grad_accum"], "checkpoint_every": item["checkpoint_every"],
                "checkpoint": checkpoint, "resume": resume, "dist": self.dist, "num_workers": item["num_workers"]}

    def log(self, scope: str, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """Log a training step's metrics (rounded) to ``metrics.jsonl`` and the ``mmcore_log`` hook."""
        self.log_record({"scope": scope, "step": step, "epoch": epoch, **{k: round(v, 6) for k, v in metrics.items()}})

    def log_record(self, record: dict[str, Any]) -> None:
        """Pass ``record`` to the ``mmcore_log`` hook: the core's logger appends it to ``metrics.jsonl``, and every
        enabled logger receives it (see :mod:`mmcore.loggers`)."""
        if self.dist.is_main:  # the record is already reduced over processes
            with blame_hook(self.registry, self.plugins.manager, "mmcore_log"):
                self.plugins.hook.mmcore_log(run=self.run_info, step=int(record["step"]), metrics=record)

    def scratch(self, name: str) -> Path:
        """The folder of evaluation ``name`` for work that survives an interruption: ``<run>/eval/<name>/``."""
        return self.run.path / "eval" / name

    def pretrained_tasks(self, state: dict[str, Any], through: str | None = None) -> dict[str, Task]:
        """Task modules rebuilt with the trained weights of each task name in ``state`` (for zero-shot heads),
        with the options of the stages up to ``through`` (default: all)."""
        if state["backbone"] is None:
            return {}
        backbone = self.build_backbone()
        stages = self.recipe["stages"]
        if through is not None:
            stages = stages[: [s["name"] for s in stages].index(through) + 1]
        # The last stage that trains a task decides its options; each task is built once.
        last = {name: options for stage in stages for name, options in stage["tasks"].items()}
        tasks = self.build_tasks({"tasks": {n: o for n, o in last.items() if n in state["tasks"]}}, backbone)
        for name, task in tasks.items():
            task.load_state_dict(state["tasks"][name])
        return tasks

    def pretrained_backbone(self, state: dict[str, Any]) -> Backbone:
        """A backbone with the pre-trained weights of ``state`` (freshly initialised, seeded, when there are none)."""
        torch.manual_seed(self.seed)
        backbone = self.build_backbone()
        if state["backbone"] is not None:
            backbone.load_state_dict(state["backbone"])
        return backbone

    def build_head(self, item: dict[str, Any], pretrained: dict[str, Task], hidden: int) -> Head:
        """The head of a zero-shot or fine-tuning entry, with its options, on the run's device."""
        entry = self.registry.get("head", item["head"])
        return call(self.registry, entry, "__init__", entry.factory, self.info, hidden, pretrained,
                    **item.get("options", {})).to(self.device)

    def evaluate(self, head: Head, backbone: Backbone, item: dict[str, Any], split: str,
                 scratch: Path | None = None) -> dict[str, float]:
        """The head's metrics on ``split`` of the entry's view, in eval mode without gradients (``scratch``: the
        evaluation's folder for resumable work)."""
        views, _ = self.views(item["data"], split)
        backbone.eval()
        head.eval()
        with EvalContext(Collator(self.tokenizer, item["max_text_len"]), self.device,
                         self.recipe["eval_batch_size"], self.reporter, scratch) as ctx, torch.no_grad(), \
                autocast(self.device, setting(self.recipe, "precision")):
            metrics = call(self.registry, self.registry.get("head", head.name), "evaluate", head.evaluate,
                           backbone, views[0], ctx)
        return {k: float(v) for k, v in metrics.items()}

    def _zero_shot(self, item: dict[str, Any], state: dict[str, Any], pretrained: dict[str, Task]) -> dict[str, Any]:
        position.enter(f"zero-shot evaluation {item['name']!r}")
        backbone = self.pretrained_backbone(state)
        # Only the tasks the start stage itself trained match its weights: a head left over from an earlier stage
        # was trained against a backbone that has moved on since (the paper's S -> P -> T has no zero-shot score).
        own = next((list(s["tasks"]) for s in self.recipe["stages"] if s["name"] == state.get("stage")), [])
        head = self.build_head(item, {n: t for n, t in pretrained.items() if n in own}, backbone.hidden_size)
        split = item["data"][0]["split"]
        base = {"kind": "zero_shot", "head": item["head"], "split": split}
        if not head.zero_shot_ready:
            why = ("nothing was pre-trained" if state.get("stage") is None else
                   f"stage {state['stage']!r}, whose weights it starts from, trained no task the {item['head']!r} "
                   f"head can start from (it trained {', '.join(own) or 'none'})")
            self.reporter.message(f"[yellow]zero-shot {item['name']}: skipped: no zero-shot head ({why})[/yellow]")
            return {**base, "skipped": f"no zero-shot head: {why}"}
        metrics, intervals = self.dist.on_main(  # rank 0 evaluates
            lambda: (self.evaluate(head, backbone, item, split, self.scratch(item["name"])), self.query_intervals(head)))
        return {**base, "metrics": metrics, **intervals}

    @staticmethod
    def query_intervals(head: Head) -> dict[str, Any]:
        """``{"intervals": ...}``: a bootstrap interval over the test queries of the head's last evaluation for each
        metric it gave per-query values for (empty when it gave none)."""
        values = {k: torch.as_tensor(v).detach().double().cpu().numpy() for k, v in head.query_values().items()}
        return {"intervals": query_intervals(values)} if values else {}


def _as_list(prepare: Any, registry: Any, entry: Any) -> Callable[[Example, ExampleSource, Any], list[Example]]:
    """Adapt a task's one-example ``prepare`` to the list-returning form the collate function chains; a failure
    names the task's plugin (``entry``)."""
    def one(example: Example, source: ExampleSource, rng: Any) -> list[Example]:
        with blame(registry, entry, "prepare"):
            return [prepare(example, source, rng)]
    return one
