"""A test kit for plugin authors: contract checks for a task, a head and a dataset, and a tiny recipe run.

``check_task(MyTask)`` builds the task on a tiny synthetic world (:mod:`mmcore.testing.tiny`: a batch made from
the declared fields, a one-layer backbone) and checks what the engine relies on: its declarations and options, that
``prepare`` leaves the view's example alone, that ``corrupt`` changes no field's shape, a finite scalar loss whose
gradient reaches the backbone, the same result twice under one seed, and (on a CUDA device) no host sync in the
step. ``check_head`` and ``check_dataset`` do the same for heads and datasets; ``tiny_run`` runs a whole recipe and
returns its ``results.json``. Each raises ``AssertionError`` naming the broken rule. See docs/plugins.md.
"""

from __future__ import annotations

import copy
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmcore.api import Backbone, Batch, DataInfo, Dataset, ExampleSource, Head, Task
from mmcore.data.collate import Collator, to_device
from mmcore.testing.tiny import TinyBackbone, TinySource, tiny_info, tiny_tokenizer

__all__ = ["Report", "TaskRun", "check_dataset", "check_head", "check_task", "run_task", "tiny_info", "tiny_run",
           "TinyBackbone", "TinySource", "tiny_tokenizer"]

OPTION_TYPES = (bool, int, float, str, list, dict, type(None))
Extra = Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]


@dataclass
class Report:
    """What a contract check verified, and what it could not check here (e.g. host syncs without CUDA)."""

    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


@dataclass
class TaskRun:
    """One training step of a task on the tiny world: the corrupted batch, the loss and the modules."""

    task: Task
    backbone: Backbone
    batch: Batch
    loss: torch.Tensor


def _check_declarations(cls: type, report: Report, options: dict[str, Any]) -> None:
    assert getattr(cls, "name", ""), f"{cls.__qualname__} has no 'name'"
    assert isinstance(cls.defaults, dict), f"{cls.name}: defaults must be a dict of option -> default"
    for option, default in cls.defaults.items():
        assert isinstance(default, OPTION_TYPES), (f"{cls.name}: option {option!r} defaults to a "
                                                   f"{type(default).__name__}; recipes can give only YAML values")
    unknown = set(options) - set(cls.defaults)
    assert not unknown, f"{cls.name}: options {sorted(unknown)} are not in its defaults (recipes would reject them)"
    cls.check_options({**cls.defaults, **options})  # the defaults themselves must pass the plugin's own check
    report.checked.append("declarations and options")


def _source(info: DataInfo, seed: int, extra: Extra | None) -> TinySource:
    return TinySource(info, seed=seed, extra=extra)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (np.ndarray, torch.Tensor)) or isinstance(b, (np.ndarray, torch.Tensor)):
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    return bool(a == b)


def run_task(task_class: type[Task], *, seed: int = 0, batch_size: int = 4, info: DataInfo | None = None,
             extra: Extra | None = None, device: str = "cpu", **options: Any) -> TaskRun:
    """Build ``task_class`` with ``options`` on the tiny world and run one step: ``prepare`` on each example,
    collate, ``corrupt``, the backbone, ``loss`` and a backward pass. ``extra`` adds fields to each example."""
    info = info or tiny_info()
    source = _source(info, seed, extra)
    torch.manual_seed(seed)
    backbone = TinyBackbone(info).to(device)
    task = task_class(info, backbone, **options).to(device)
    rng = random.Random(seed)
    examples = []
    for index in range(batch_size):
        original = copy.deepcopy(source[index])
        examples.append(task.prepare(dict(source[index]), source, rng))
        assert all(_same(source[index][k], v) for k, v in original.items()), \
            f"{task.name}.prepare changed the view's own example (copy it: out = dict(example))"
    batch = to_device(Collator(tiny_tokenizer(), 16)(examples), torch.device(device))
    missing = sorted(task.requires - set(batch))
    assert not missing, (f"{task.name} requires {missing}, which the tiny batch lacks: pass extra= to add them to "
                         "each example")
    shapes = {k: (v.shape, v.dtype) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    generator = torch.Generator(device=device).manual_seed(seed)
    with _no_host_sync(device):
        task.corrupt(batch, generator)
        loss = task.loss(backbone.encode(batch), batch)
    for key, (shape, dtype) in shapes.items():
        assert key in batch, f"{task.name}.corrupt removed the field {key!r} (other tasks of the stage read it)"
        now = batch[key]
        assert (now.shape, now.dtype) == (shape, dtype), \
            f"{task.name}.corrupt changed {key!r} from {tuple(shape)} {dtype} to {tuple(now.shape)} {now.dtype}"
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0, f"{task.name}.loss must return a scalar tensor"
    assert torch.isfinite(loss).item(), f"{task.name}.loss is not finite on the tiny batch: {loss.item()}"
    loss.backward()
    return TaskRun(task, backbone, batch, loss.detach())


@contextmanager
def _no_host_sync(device: str) -> Iterator[None]:
    """On CUDA, fail on any host-device synchronisation in the block (the engine's step never waits)."""
    if not device.startswith("cuda"):
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    except RuntimeError as exc:
        if "synchroniz" not in str(exc):
            raise
        raise AssertionError(f"corrupt/loss waits for the device (a host sync: .item(), .tolist(), nonzero, "
                             f"a Python bool of a tensor...): {exc}") from exc
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _reaches(backbone: Backbone, what: str) -> None:
    grads = [p.grad for p in backbone.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads), \
        f"{what}: no gradient reaches the backbone (is the loss built from the backbone's output?)"


def check_task(task_class: type[Task], *, seed: int = 0, extra: Extra | None = None, info: DataInfo | None = None,
               **options: Any) -> Report:
    """Check a task's contract on the tiny world (see the module docstring); returns what was checked."""
    report = Report()
    _check_declarations(task_class, report, options)
    assert isinstance(task_class.order, int), f"{task_class.name}: order must be an int (0 re-pair ... 30 mask)"
    first = run_task(task_class, seed=seed, info=info, extra=extra, **options)
    report.checked += ["prepare leaves the view's example alone", "corrupt keeps every field's shape and dtype",
                       "finite scalar loss"]
    _reaches(first.backbone, f"{task_class.name}.loss")
    report.checked.append("gradient reaches the backbone")
    second = run_task(task_class, seed=seed, info=info, extra=extra, **options)
    assert torch.equal(first.loss, second.loss), \
        f"{task_class.name}: two runs under seed {seed} differ ({first.loss.item()} vs {second.loss.item()}): draw " \
        "randomness only from prepare's rng and corrupt's generator"
    report.checked.append("deterministic under a seed")
    if torch.cuda.is_available():
        run_task(task_class, seed=seed, info=info, extra=extra, device="cuda", **options)
        report.checked.append("no host sync in corrupt/loss (CUDA)")
    else:
        report.skipped.append("no host sync in corrupt/loss: needs a CUDA device")
    return report


def check_head(head_class: type[Head], *, seed: int = 0, extra: Extra | None = None, info: DataInfo | None = None,
               pretrained: dict[str, Task] | None = None, **options: Any) -> Report:
    """Check a head: declarations, a finite loss whose gradient reaches the backbone, determinism, and that
    ``evaluate`` (in eval mode, without gradients, as the engine calls it) returns finite floats including the
    head's ``primary_metric``."""
    from mmcore.evalcontext import EvalContext
    from mmcore.progress import Reporter

    report = Report()
    _check_declarations(head_class, report, options)
    info = info or tiny_info()
    losses = []
    for _ in range(2):
        source = _source(info, seed, extra)
        torch.manual_seed(seed)
        backbone = TinyBackbone(info)
        head = head_class(info, backbone.hidden_size, pretrained or {}, **options)
        rng = random.Random(seed)
        examples = [new for i in range(4) for new in head.prepare(dict(source[i]), source, rng)]
        loss = head.loss(backbone, Collator(tiny_tokenizer(), 16)(examples))
        assert isinstance(loss, torch.Tensor) and loss.ndim == 0 and torch.isfinite(loss).item(), \
            f"{head_class.name}.loss must return a finite scalar tensor, got {loss!r}"
        loss.backward()
        _reaches(backbone, f"{head_class.name}.loss")
        losses.append(loss.detach())
    assert torch.equal(*losses), f"{head_class.name}: two runs under seed {seed} give different losses"
    report.checked += ["finite scalar loss", "gradient reaches the backbone", "deterministic under a seed"]
    backbone.eval()
    head.eval()
    with tempfile.TemporaryDirectory() as scratch, torch.no_grad(), EvalContext(
            Collator(tiny_tokenizer(), 16), torch.device("cpu"), 8, Reporter(quiet=True), Path(scratch)) as ctx:
        metrics = head.evaluate(backbone, source, ctx)
    assert isinstance(metrics, dict) and metrics, f"{head_class.name}.evaluate must return a dict of metrics"
    assert all(np.isfinite(float(v)) for v in metrics.values()), f"{head_class.name}.evaluate: {metrics}"
    assert head.primary_metric() in metrics, \
        f"{head_class.name}: primary_metric() {head.primary_metric()!r} is not among its metrics {sorted(metrics)}"
    report.checked.append("evaluate returns finite metrics with the primary one")
    return report


def check_dataset(dataset_class: type[Dataset], options: dict[str, Any] | None = None,
                  cache_dir: Path | None = None, splits: tuple[str, ...] = ("train",)) -> Report:
    """Check a dataset: declarations, ``prepare``/``info``/``tokenizer``, every view of ``splits`` is an
    :class:`~mmcore.api.ExampleSource` whose examples carry the fields the view declares, and a second
    instance with the same options gives the same examples."""
    report = Report()
    _check_declarations(dataset_class, report, options or {})
    assert dataset_class.views, f"{dataset_class.name}: views must map each view name to the fields it provides"
    with tempfile.TemporaryDirectory() as tmp:
        cache = cache_dir or Path(tmp)
        first, second = (dataset_class({**dataset_class.defaults, **(options or {})}, cache) for _ in range(2))
        for dataset in (first, second):
            dataset.prepare(None)
        assert isinstance(first.info(), DataInfo), f"{dataset_class.name}.info() must return a DataInfo"
        assert callable(first.tokenizer()), f"{dataset_class.name}.tokenizer() must return a (fast) tokenizer"
        report.checked.append("prepare, info, tokenizer")
        collated = {"input_ids", "attention_mask", "position_ids"}  # the collator makes these from ``text``
        for view, provided in dataset_class.views.items():
            for split in splits:
                source, again = first.view(view, split), second.view(view, split)
                assert isinstance(source, ExampleSource), f"{dataset_class.name}.view({view!r}) is no ExampleSource"
                assert len(source) > 0, f"{dataset_class.name}: view {view!r} split {split!r} is empty"
                example = source[0]
                missing = sorted(set(provided) - collated - set(example))
                assert not missing, f"{dataset_class.name}: view {view!r} declares {missing} its examples lack"
                image = source.image(example["img_id"]) if "img_id" in example else {}
                assert all(_same(image[k], example[k]) for k in image if k in example and k != "text"), \
                    f"{dataset_class.name}: view {view!r}: image() disagrees with the example's visual fields"
                assert all(_same(example[k], again[0][k]) for k in example), \
                    f"{dataset_class.name}: view {view!r}: two instances with the same options differ"
        report.checked.append("every view's examples carry its declared fields, deterministically")
    return report


def tiny_run(recipe: str | Path | dict[str, Any], plugins: list[str | Path] | tuple[str | Path, ...] = (), *,
             directory: Path | None = None, cache_dir: Path | None = None, overrides: tuple[str, ...] = ()) -> dict:
    """Run a recipe (a file, YAML text or a mapping) through ``mmcore run`` in this process, with ``plugins``
    (module names or ``.py`` files, as ``MMCORE_PLUGINS``) loaded; return its ``results.json``. A failed run
    raises ``AssertionError`` with the command's output."""
    import json
    import os

    import yaml
    from click.testing import CliRunner

    from mmcore.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(directory or tmp)
        path = Path(recipe) if isinstance(recipe, Path) or (isinstance(recipe, str) and "\n" not in recipe) else None
        if path is None:
            path = base / "tiny_run.yaml"
            path.write_text(recipe if isinstance(recipe, str) else yaml.safe_dump(recipe, sort_keys=False))
        cache = cache_dir or Path(os.environ.get("MMCORE_CACHE", base / "cache"))
        args = ["run", str(path), "--output-dir", str(base / "runs"), "--run-name", "tiny", "--quiet",
                "--cache-dir", str(cache), *[a for o in overrides for a in ("--set", o)]]
        env = {"MMCORE_PLUGINS": ",".join([os.environ.get("MMCORE_PLUGINS", ""), *map(str, plugins)]).strip(",")}
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 0, f"mmcore {' '.join(args)} failed:\n{result.output}"
        found = sorted((base / "runs").glob("*/tiny/results.json"))
        assert found, f"no results.json under {base / 'runs'}"
        return json.loads(found[0].read_text())
