"""Data-loader worker processes: they only read examples (from an HDF5 store of their own), the training process
collates, so losses, weights and a resumed run are those of a run without workers, bit for bit."""

from __future__ import annotations

import copy
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from helpers import comparable
from mmcore_synth.dataset import SynthWorld

from mmcore.api import Example
from mmcore.callbacks import TrainerCallback
from mmcore.cli import main
from mmcore.data.collate import Collator
from mmcore.data.loader import Batches, useful_workers
from mmcore.errors import MMCoreError
from mmcore.plugins import load_plugins
from mmcore.progress import Reporter
from mmcore.trainer import Data, Model, Runtime, Schedule, Trainer
from mmcore.training import EpochSampler, MixedExamples, PrepareCollate

WORLD = {"train_images": 16, "val_images": 4, "test_images": 4, "vqa_train_images": 8, "retrieval_train_images": 8,
         "gqa_train_images": 4, "nlvr2_train_pairs": 4, "max_regions": 6, "feature_dim": 16, "hard_negatives_top": 5}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("worlds")
    SynthWorld(dict(WORLD), path).prepare()
    return path


class Recording:
    """A view that adds to each example the process that read it and whether that process's own HDF5 handle
    served the read."""

    def __init__(self, view: Any) -> None:
        self.view, self.store = view, view.store

    def __len__(self) -> int:
        return len(self.view)

    def __getitem__(self, index: int) -> Example:
        example = self.view[index]
        own = self.store._handle is not None and self.store._pid == os.getpid()
        return {**example, "reader_pid": os.getpid(), "own_handle": own}

    def __getattr__(self, name: str) -> Any:  # image(), random_text(), hard_negatives(), image_ids()
        return getattr(self.view, name)


def _loop(cache_dir: Path, workers: int, *, resume: dict | None = None) -> tuple[dict, list, list, set]:
    """Five steps of the sentence stage's tasks (ITM_HS swaps images in the collate) on a tiny LXMERT-S with
    dropout, features read from disk; a checkpoint after every step."""
    data = SynthWorld({**WORLD, "features_cache": "disk"}, cache_dir)
    registry, info = load_plugins().registry, data.info()
    torch.manual_seed(0)
    backbone = registry.get("backbone", "lxmert_s").factory(
        {"hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32, "x_layers": 1}, info)
    tasks = [registry.get("task", name).factory(info, backbone) for name in ("itm_hs", "mlm", "mrfr", "moc")]
    modules = torch.nn.ModuleList([backbone, *tasks])
    if resume is not None:
        modules.load_state_dict(resume["weights"])
    view = Recording(data.view("sentence", "train"))
    view.store.image(view.image_ids()[0])  # the parent holds an open handle when the workers start
    mixed = MixedExamples([view], [None])
    generator = torch.Generator().manual_seed(3)
    readers: set[int] = set()

    def step(batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        assert bool(batch["own_handle"].all())
        readers.update(batch["reader_pid"].tolist())
        for task in tasks:
            task.corrupt(batch, generator)
        output = backbone.encode(batch)
        parts = {task.name: task.loss(output, batch) for task in tasks}
        return sum(parts.values()), parts

    saved, logs = [], []
    collate = PrepareCollate([lambda ex, src, rng, t=tasks[0]: [t.prepare(ex, src, rng)]],
                             Collator(data.tokenizer(), 12), seed=7)
    optim = {"lr": 1e-3, "weight_decay": 0.01, "warmup": 0.2, "clip": 1.0, "betas": [0.9, 0.999], "eps": 1e-6}

    class Record(TrainerCallback):
        def on_log(self, step, epoch, metrics):
            logs.append({"step": step, **{k: v for k, v in metrics.items() if k != "samples_per_s"}})

        def on_checkpoint(self, state):
            saved.append(copy.deepcopy({"weights": modules.state_dict(), "training": state}))

    Trainer("t", Model(step, list(modules)),
            Data(mixed, EpochSampler(mixed, [1.0], 7), collate, batch_size=16, num_workers=workers),
            Schedule(2, 7, optim, log_every=1, checkpoint_every=1),
            Runtime(torch.device("cpu"), Reporter(quiet=True), generators={"corrupt": generator}),
            [Record()]).fit(None if resume is None else resume["training"])
    return modules.state_dict(), logs, saved, readers


def test_workers_read_and_every_loss_and_weight_is_as_without(cache_dir: Path) -> None:
    plain, plain_logs, _, plain_readers = _loop(cache_dir, 0)
    assert plain_readers == {os.getpid()} and len(plain_logs) == 7  # 80 pairs, batches of 16: 5 steps an epoch
    weights, logs, saved, readers = _loop(cache_dir, 2)
    assert len(readers) == 2 and os.getpid() not in readers  # every example was read in a worker
    assert not multiprocessing.active_children()  # and the workers ended with the loop
    assert logs == plain_logs  # every loss of every task, exactly
    assert all(torch.equal(weights[k], v) for k, v in plain.items())
    # Resumed with workers from inside an epoch (step 3) and from the next epoch (step 6): the same run.
    for index in (2, 5):
        resumed, resumed_logs, _, _ = _loop(cache_dir, 2, resume=saved[index])
        assert resumed_logs == [r for r in plain_logs if r["step"] > index + 1]
        assert all(torch.equal(resumed[k], v) for k, v in plain.items())


def test_workers_are_used_only_where_features_are_read_from_disk(cache_dir: Path) -> None:
    for mode, expected in (("disk", 3), ("ram", 0), ("gpu", 0)):
        view = SynthWorld({**WORLD, "features_cache": mode}, cache_dir).view("token", "train")
        assert useful_workers([view], 3) == expected, mode
    assert useful_workers([list(range(4))], 3) == 3  # a view whose store is unknown: as asked


class Damaged(list):
    """A view whose item 5 cannot be read."""

    def __getitem__(self, index: int) -> Example:
        if index == 5:
            raise MMCoreError("store.h5: dataset 'features' holds NaN or inf for image 'x5' (row 5)")
        return {"x": float(index)}


def test_a_user_error_in_a_worker_is_raised_as_itself() -> None:
    mixed = MixedExamples([Damaged(range(8))], [None])
    sampler = EpochSampler(mixed, [1.0], 0)
    batches = Batches(mixed, 4, sampler, lambda items: {"x": [ex["x"] for ex, _ in items]}, num_workers=2)
    with pytest.raises(MMCoreError) as caught:
        list(batches.epoch())
    assert str(caught.value) == "store.h5: dataset 'features' holds NaN or inf for image 'x5' (row 5)"


# ---- a whole run: workers, an interruption inside a stage, resuming -------------------------------------------

STOP_PLUGIN = '''
import os
import mmcore


class Stopped(Exception):
    """Ends the run in the middle, as a kill would (the partial checkpoint before it stays)."""


@mmcore.hookimpl
def mmcore_log(run, step, metrics):
    if os.environ.get("MMCORE_TEST_STOP") == f"{metrics['scope']}:{step}":
        raise Stopped(os.environ["MMCORE_TEST_STOP"])
'''

# 16 token pairs in batches of 8: the stop at step 3 is inside the second epoch, after the checkpoint of step 2.
RUN = """\
name: w
seed: 5
log_every: 1
checkpoint_every: 2
num_workers: {workers}
backbone: {{name: lxmert_s, hidden_size: 16, num_attention_heads: 2, intermediate_size: 32, x_layers: 1}}
datasets:
  synthworld: {{train_images: 16, val_images: 4, test_images: 4, vqa_train_images: 8, retrieval_train_images: 8,
               gqa_train_images: 4, nlvr2_train_pairs: 4, max_regions: 6, feature_dim: 16, hard_negatives_top: 5,
               features_cache: disk}}
stages:
  - {{name: token, data: {{view: token}}, tasks: {{mlm: {{}}, mrfr: {{}}, moc: {{}}}}, epochs: 3, max_steps: 5,
     batch_size: 8, max_text_len: 12}}
  - {{name: sentence, data: {{view: sentence, limit: 24}}, tasks: {{mlm: {{}}, itm_hs: {{}}}}, max_steps: 3,
     batch_size: 8, num_workers: 1}}
finetune:
  - {{name: vqa, head: vqa, data: {{view: vqa, limit: 16}}, epochs: 2, batch_size: 8}}
"""


def test_a_run_with_workers_stopped_and_resumed_ends_as_one_without(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "stop.py").write_text(STOP_PLUGIN)
    monkeypatch.setenv("MMCORE_PLUGINS", str(tmp_path / "stop.py"))
    common = ["--output-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    for workers in (0, 2):
        (tmp_path / f"w{workers}.yaml").write_text(RUN.format(workers=workers))
    runner = CliRunner()
    result = runner.invoke(main, ["run", str(tmp_path / "w0.yaml"), "--run-name", "plain", *common])
    assert result.exit_code == 0, result.output

    monkeypatch.setenv("MMCORE_TEST_STOP", "token:3")
    result = runner.invoke(main, ["run", str(tmp_path / "w2.yaml"), "--run-name", "stopped", *common])
    assert result.exit_code == 1 and "raised Stopped: token:3 in mmcore_log()" in result.output, result.output
    run = tmp_path / "runs" / "w" / "stopped"
    assert torch.load(run / "stages" / "token" / "partial.pt", weights_only=True)["step"] == 2
    del result  # its traceback holds the stopped loop, and so its worker processes
    monkeypatch.delenv("MMCORE_TEST_STOP")
    result = runner.invoke(main, ["run", "--resume", str(run), *common[2:]])
    assert result.exit_code == 0, result.output

    plain_results, plain_records = comparable(tmp_path / "runs" / "w" / "plain")
    results, records = comparable(run)
    assert plain_results["_stages"]["token"]["steps"] == 5 and "accuracy" in plain_results["vqa"]["metrics"]
    assert results == plain_results and records == plain_records  # every loss, step count and metric
    resolved = (run / "recipe.resolved.yaml").read_text()
    assert "num_workers: 2" in resolved and "num_workers: 1" in resolved


def test_a_negative_num_workers_is_located(tmp_path: Path) -> None:
    recipe = tmp_path / "w.yaml"
    recipe.write_text(RUN.format(workers=-1).replace("num_workers: 1}", "num_workers: 1.5}"))
    result = CliRunner().invoke(main, ["validate", str(recipe)], terminal_width=400)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "w.yaml:5" in text and "num_workers: must be >= 0, got -1" in text
    assert "stages[1].num_workers" in text and "must be an integer, got 1.5" in text
