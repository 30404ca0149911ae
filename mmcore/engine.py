"""The stage loop: build, train, checkpoint, carry weights, evaluate zero-shot, fine-tune; write the run directory."""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor

from mmcore.api import Backbone, Batch, Dataset, Example, ExampleSource, Head, Task
from mmcore.data.collate import Collator, to_device
from mmcore.errors import MMCoreError
from mmcore.plugins import Plugins
from mmcore.progress import Reporter
from mmcore.rundir import RunDir, atomic_torch_save, fingerprint
from mmcore.summary import write_summary
from mmcore.training import EpochSampler, MixedExamples, PrepareCollate, train_loop


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


class EvalContext:
    """The engine's :class:`mmcore.api.EvalContext`: device batches with a progress bar.

    Use it as a context manager: bars opened with :meth:`progress` are closed on exit even if a head stops
    before reaching the total.
    """

    def __init__(self, collator: Collator, device: torch.device, batch_size: int, reporter: Reporter) -> None:
        self.collator, self.device, self.batch_size, self.reporter = collator, device, batch_size, reporter
        self._open_bars = ExitStack()

    def __enter__(self) -> "EvalContext":
        return self

    def __exit__(self, *exc: object) -> None:
        self._open_bars.close()

    def collate(self, examples: list[Example]) -> Batch:
        """Tokenise and stack ``examples`` into a device batch."""
        return to_device(self.collator(examples), self.device)

    def progress(self, total: int, description: str) -> Callable[[int], None]:
        """Start a progress bar of ``total`` units; returns ``advance(n)``."""
        return self._open_bars.enter_context(self.reporter.bar(description, total)).advance

    def batches(self, examples: Sequence[Example], description: str) -> Iterator[Batch]:
        """Device batches over ``examples`` in order, with a progress bar."""
        with self.reporter.bar(description, len(examples)) as bar:
            for start in range(0, len(examples), self.batch_size):
                chunk = [examples[i] for i in range(start, min(start + self.batch_size, len(examples)))]
                yield self.collate(chunk)
                bar.advance(len(chunk))


class Engine:
    """Runs one resolved recipe into one run directory."""

    def __init__(self, recipe: dict[str, Any], plugins: Plugins, run: RunDir, reporter: Reporter,
                 cache_dir: Path | None = None) -> None:
        self.recipe, self.plugins, self.run, self.reporter = recipe, plugins, run, reporter
        self.registry = plugins.registry
        self.cache_dir = cache_dir or default_cache_dir()
        self.device = pick_device(recipe["device"])
        self.seed = int(recipe["seed"])
        self._datasets: dict[str, Dataset] = {}
        self.results: dict[str, Any] = run.read_results()

    # ----- data -------------------------------------------------------------------------------------------
    def dataset(self, name: str) -> Dataset:
        """The prepared dataset ``name`` with the recipe's options (built once per run)."""
        if name not in self._datasets:
            entry = self.registry.get("dataset", name)
            dataset = entry.factory(self.recipe["datasets"].get(name, dict(entry.defaults)), self.cache_dir)
            self.reporter.message(f"[dim]preparing dataset {name}…[/dim]")
            dataset.prepare(self.reporter.message)
            self._datasets[name] = dataset
        return self._datasets[name]

    def _primary_dataset(self) -> Dataset:
        for section in ("stages", "finetune", "zero_shot"):
            for item in self.recipe[section]:
                if item["data"]:
                    return self.dataset(item["data"][0]["dataset"])
        raise MMCoreError("the recipe uses no data: add a stage, zero_shot or finetune entry")

    def _views(self, data: list[dict[str, Any]], split: str | None = None) -> tuple[list[ExampleSource], MixedExamples]:
        views = [self.dataset(d["dataset"]).view(d["view"], split or d["split"]) for d in data]
        return views, MixedExamples(views, [d.get("limit") for d in data])

    # ----- models -----------------------------------------------------------------------------------------
    def build_backbone(self) -> Backbone:
        """A freshly initialised backbone (seeded) sized for the primary dataset."""
        spec = dict(self.recipe["backbone"])
        entry = self.registry.get("backbone", spec.pop("name"))
        return entry.factory(spec, self.info).to(self.device)

    def build_tasks(self, stage: dict[str, Any], backbone: Backbone) -> dict[str, Task]:
        """The stage's tasks, in corruption order."""
        tasks = {}
        for name, options in stage["tasks"].items():
            opts = {k: v for k, v in options.items() if k != "weight"}
            tasks[name] = self.registry.get("task", name).factory(self.info, backbone, **opts).to(self.device)
        return dict(sorted(tasks.items(), key=lambda kv: kv[1].order))

    # ----- the run ----------------------------------------------------------------------------------------
    def execute(self) -> dict[str, Any]:
        """Run every stage, zero-shot evaluation and fine-tuning not already complete; return all results."""
        start = time.perf_counter()
        self.info = self._primary_dataset().info()
        self.tokenizer = self._primary_dataset().tokenizer()
        state = self._pretrain()
        pretrained = self._pretrained_tasks(state)
        for item in self.recipe["zero_shot"]:
            if item["name"] in self.results:
                self.reporter.message(f"[dim]zero-shot {item['name']}: done, skipped[/dim]")
                continue
            self._record(item["name"], self._zero_shot(item, state, pretrained))
        for item in self.recipe["finetune"]:
            if item["name"] in self.results:
                self.reporter.message(f"[dim]fine-tuning {item['name']}: done, skipped[/dim]")
                continue
            self._record(item["name"], self._finetune(item, state, pretrained))
        self.results.setdefault("_run", {})["seconds_this_session"] = round(time.perf_counter() - start, 1)
        self.run.write_results(self.results)
        write_summary(self.run, self.recipe, self.results)
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
                ckpt = torch.load(path, map_location="cpu", weights_only=False)
                state = {"backbone": ckpt["backbone"], "tasks": {**state["tasks"], **ckpt["tasks"]}, "stage": stage["name"]}
                self.reporter.message(f"[dim]stage {stage['name']}: checkpoint found, skipped[/dim]")
                continue
            state = self._train_stage(index, stage, state)
        return state

    def _initial_backbone(self, stage: dict[str, Any], state: dict[str, Any]) -> tuple[Backbone, dict[str, Any]]:
        torch.manual_seed(self.seed)
        backbone = self.build_backbone()
        init = stage["init"]
        if init in ("previous", None) and state["backbone"] is not None:
            backbone.load_state_dict(state["backbone"])
            return backbone, {"from": state["stage"]}
        if init not in ("previous", "none", None):
            ckpt = torch.load(init, map_location="cpu", weights_only=False)
            weights = ckpt.get("backbone", ckpt) if isinstance(ckpt, dict) else ckpt
            try:
                backbone.load_state_dict(weights)
            except RuntimeError as exc:
                raise MMCoreError(f"stage {stage['name']!r}: checkpoint {init} does not fit the backbone: {exc}") from None
            return backbone, {"from": str(init)}
        return backbone, {"from": None}

    def _train_stage(self, index: int, stage: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        self.plugins.hook.mmcore_stage_start(run=self, stage=stage)
        backbone, init = self._initial_backbone(stage, state)
        init["fingerprint"] = fingerprint(backbone.state_dict())
        tasks = self.build_tasks(stage, backbone)
        carried = state["tasks"] if init["from"] == state["stage"] and state["stage"] is not None else {}
        for name, task in tasks.items():
            if name in carried:
                task.load_state_dict(carried[name])
        weights = {name: float(opts["weight"]) for name, opts in stage["tasks"].items()}
        generator = torch.Generator(device=self.device).manual_seed(self.seed + index)

        def step(batch: Batch) -> tuple[Tensor, dict[str, Tensor]]:
            for task in tasks.values():
                task.corrupt(batch, generator)
            output = backbone.encode(batch)
            parts = {name: task.loss(output, batch) for name, task in tasks.items()}
            total = sum(weights[name] * loss for name, loss in parts.items())
            return total, parts

        views, data = self._views(stage["data"])
        prepare = [_as_list(task.prepare) for task in tasks.values()]
        collate = PrepareCollate(prepare, Collator(self.tokenizer, stage["max_text_len"]), self.seed + index)
        sampler = EpochSampler(data, [d["weight"] for d in stage["data"]], self.seed + index)
        result = train_loop(
            description=f"stage {index + 1}/{len(self.recipe['stages'])} {stage['name']}",
            step_fn=step, modules=[backbone, *tasks.values()], data=data, sampler=sampler, collate=collate,
            batch_size=stage["batch_size"], epochs=stage["epochs"], max_steps=stage["max_steps"], optim=stage["optim"],
            device=self.device, reporter=self.reporter, log_every=self.recipe["log_every"],
            log=lambda s, e, m: self._log(stage["name"], s, e, m),
        )
        backbone_state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
        task_states = {name: {k: v.detach().cpu() for k, v in t.state_dict().items()} for name, t in tasks.items()}
        atomic_torch_save(self.run.stage_checkpoint(stage["name"]), {
            "stage": stage["name"], "index": index, "backbone": backbone_state, "tasks": task_states,
            "step": result.steps, "init": init, "fingerprint": fingerprint(backbone_state),
            "rng": torch.get_rng_state(), "mmcore_format": 1,
        })
        metrics = {"steps": result.steps, "samples": result.samples, "seconds": round(result.seconds, 1),
                   **{f"final_{k}": v for k, v in result.last_losses.items()}}
        stages = self.results.setdefault("_stages", {})
        stages[stage["name"]] = metrics
        self.run.write_results(self.results)
        self.plugins.hook.mmcore_stage_end(run=self, stage=stage, metrics=metrics)
        return {"backbone": backbone_state, "tasks": {**state["tasks"], **task_states}, "stage": stage["name"]}

    def _log(self, scope: str, step: int, epoch: int, metrics: dict[str, float]) -> None:
        record = {"scope": scope, "step": step, "epoch": epoch, **{k: round(v, 6) for k, v in metrics.items()}}
        self.run.log_metrics(record)
        self.plugins.hook.mmcore_log(run=self, step=step, metrics=record)

    def _pretrained_tasks(self, state: dict[str, Any]) -> dict[str, Task]:
        """Task modules rebuilt with the final trained weights of each task name (for zero-shot heads)."""
        if state["backbone"] is None:
            return {}
        backbone = self.build_backbone()
        # The last stage that trains a task decides its options; each task is built once.
        last = {name: options for stage in self.recipe["stages"] for name, options in stage["tasks"].items()}
        tasks = self.build_tasks({"tasks": {n: o for n, o in last.items() if n in state["tasks"]}}, backbone)
        for name, task in tasks.items():
            task.load_state_dict(state["tasks"][name])
        return tasks

    def _pretrained_backbone(self, state: dict[str, Any]) -> Backbone:
        torch.manual_seed(self.seed)
        backbone = self.build_backbone()
        if state["backbone"] is not None:
            backbone.load_state_dict(state["backbone"])
        return backbone

    def _build_head(self, item: dict[str, Any], pretrained: dict[str, Task], hidden: int) -> Head:
        entry = self.registry.get("head", item["head"])
        return entry.factory(self.info, hidden, pretrained, **item.get("options", {})).to(self.device)

    def _evaluate(self, head: Head, backbone: Backbone, item: dict[str, Any], split: str) -> dict[str, float]:
        views, _ = self._views(item["data"], split)
        backbone.eval()
        head.eval()
        with EvalContext(Collator(self.tokenizer, item["max_text_len"]), self.device,
                         self.recipe["eval_batch_size"], self.reporter) as ctx, torch.no_grad():
            metrics = head.evaluate(backbone, views[0], ctx)
        return {k: float(v) for k, v in metrics.items()}

    def _zero_shot(self, item: dict[str, Any], state: dict[str, Any], pretrained: dict[str, Task]) -> dict[str, Any]:
        backbone = self._pretrained_backbone(state)
        head = self._build_head(item, pretrained, backbone.hidden_size)
        split = item["data"][0]["split"]
        base = {"kind": "zero_shot", "head": item["head"], "split": split}
        if not head.zero_shot_ready:
            self.reporter.message(f"[yellow]zero-shot {item['name']}: skipped (no pre-trained head to start from)[/yellow]")
            return {**base, "skipped": "no pre-trained head for zero-shot (e.g. no ITM task was trained)"}
        metrics = self._evaluate(head, backbone, item, split)
        return {**base, "metrics": metrics}

    def _finetune(self, item: dict[str, Any], state: dict[str, Any], pretrained: dict[str, Task]) -> dict[str, Any]:
        self.plugins.hook.mmcore_stage_start(run=self, stage=item)
        backbone = self._pretrained_backbone(state)
        torch.manual_seed(self.seed + 1000)
        head = self._build_head(item, pretrained, backbone.hidden_size)
        views, data = self._views(item["data"])
        collate = PrepareCollate([head.prepare], Collator(self.tokenizer, item["max_text_len"]), self.seed + 1000)
        sampler = EpochSampler(data, [1.0], self.seed + 1000)
        result = train_loop(
            description=f"fine-tune {item['name']}", step_fn=lambda b: (head.loss(backbone, b), {}),
            modules=[backbone, head], data=data, sampler=sampler, collate=collate, batch_size=item["batch_size"],
            epochs=item["epochs"], max_steps=item["max_steps"], optim=item["optim"], device=self.device,
            reporter=self.reporter, log_every=self.recipe["log_every"],
            log=lambda s, e, m: self._log(item["name"], s, e, m),
        )
        atomic_torch_save(self.run.finetune_checkpoint(item["name"]), {
            "name": item["name"], "backbone": backbone.state_dict(), "head": head.state_dict(), "step": result.steps,
            "mmcore_format": 1,
        })
        metrics = self._evaluate(head, backbone, item, item["eval_split"])
        self.plugins.hook.mmcore_stage_end(run=self, stage=item, metrics=metrics)
        return {"kind": "finetune", "head": item["head"], "split": item["eval_split"], "steps": result.steps,
                "seconds": round(result.seconds, 1), "metrics": metrics}


def _as_list(prepare: Any):
    """Adapt a task's one-example ``prepare`` to the list-returning form the collate function chains."""
    return lambda example, source, rng: [prepare(example, source, rng)]
