"""Checkpoints inside a stage and resuming from them: the loop continues bit for bit, a real run killed with SIGKILL
at several points and resumed ends with the results of an uninterrupted run, and a failed write keeps the old file."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import Rows, comparable
from torch import nn

from mmcore.callbacks import TrainerCallback
from mmcore.cli import main
from mmcore.errors import MMCoreError
from mmcore.progress import Reporter
from mmcore.rundir import RunDir, atomic_torch_save
from mmcore.trainer import Data, Model, Runtime, Schedule, Trainer
from mmcore.training import EpochSampler, MixedExamples

ROOT = Path(__file__).resolve().parents[1]

# ---- the loop: a checkpoint continues exactly ----------------------------------------------------------------


class NoisyStack:
    """A collate function with its own ``rng`` (as PrepareCollate): adds seeded noise to each example."""

    def __init__(self, seed: int) -> None:
        import random

        self.seed, self.rng = seed, random.Random(seed)

    def set_epoch(self, epoch: int) -> None:
        import random

        self.rng = random.Random(self.seed * 7919 + epoch)

    def __call__(self, items):
        return {"x": torch.stack([example + self.rng.random() for example, _ in items])}


def _loop(steps: int, *, resume=None, checkpoint_every=0, accum: int = 1, epochs: int = 3):
    """A dropout model on 24 examples in batches of 8 (3 steps per epoch); everything random comes from the loop's
    state: global torch RNG (dropout), the collate rng, a named generator and the sampler."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.3), nn.Linear(16, 1))
    if resume is not None:
        model.load_state_dict(resume["model"])
    generator = torch.Generator().manual_seed(5)
    data = MixedExamples([Rows(torch.randn(24, 4).unbind(0))], [None])
    saved, logs = [], []

    def step_fn(batch):
        noise = torch.randn(batch["x"].shape, generator=generator) * 0.1
        fit = model(batch["x"] + noise).pow(2).mean()
        return fit, {"fit": fit}

    class Record(TrainerCallback):
        def on_log(self, step, epoch, metrics):
            logs.append({"step": step, "epoch": epoch, **metrics})

        def on_checkpoint(self, state):  # a copy, as a file would be: the optimiser's state dict holds live tensors
            saved.append(copy.deepcopy({"model": model.state_dict(), "training": state}))

    optim = {"lr": 0.05, "weight_decay": 0.01, "warmup": 0.2, "clip": 1.0, "betas": [0.9, 0.999], "eps": 1e-6}
    result = Trainer(
        "demo", Model(step_fn, [model]), Data(data, EpochSampler(data, [1.0], 3), NoisyStack(3), batch_size=8),
        Schedule(epochs, steps, optim, log_every=2, grad_accum=accum, checkpoint_every=checkpoint_every),
        Runtime(torch.device("cpu"), Reporter(quiet=True), generators={"noise": generator}), [Record()],
    ).fit(None if resume is None else resume["training"])
    for record in logs:
        record.pop("samples_per_s")
    return model, result, saved, logs


@pytest.mark.parametrize("accum", [1, 2])
def test_resuming_from_any_checkpoint_continues_bit_for_bit(accum):
    model, result, saved, logs = _loop(8, checkpoint_every=1, accum=accum)
    assert [c["training"]["step"] for c in saved] == list(range(1, 8))
    assert result.steps == 8 and result.samples == 64
    # Step 3 ends epoch 0 (the next epoch's iterator is not made yet); steps 4 and 5 are inside epoch 1; step 5
    # leaves a log window half full.
    for index in (2, 3, 4):
        resumed, again, _, resumed_logs = _loop(8, resume=saved[index], checkpoint_every=1, accum=accum)
        for name, value in model.state_dict().items():
            assert torch.equal(resumed.state_dict()[name], value), (index, name)
        assert again.last_losses == result.last_losses and again.samples == result.samples
        step = saved[index]["training"]["step"]
        assert resumed_logs == [r for r in logs if r["step"] > step]


def test_without_checkpoints_the_loop_trains_as_with_them():
    plain, result, saved, logs = _loop(5)
    checkpointed, again, _, again_logs = _loop(5, checkpoint_every=2)
    assert saved == [] and logs == again_logs and result.last_losses == again.last_losses
    assert all(torch.equal(v, checkpointed.state_dict()[k]) for k, v in plain.state_dict().items())


def test_accumulation_takes_the_same_samples_per_step():
    _, one, _, one_logs = _loop(6)
    _, two, _, two_logs = _loop(6, accum=2)
    assert one.samples == two.samples == 48 and [r["step"] for r in one_logs] == [r["step"] for r in two_logs]


def test_a_resume_for_another_schedule_is_refused():
    _, _, saved, _ = _loop(6, checkpoint_every=2)
    with pytest.raises(MMCoreError, match="written for 6 steps of batch 8, but the recipe now gives 5 steps"):
        _loop(5, resume=saved[0])


# ---- the sampler: an epoch's order and its shards --------------------------------------------------------------


class ListView(list):
    """Examples are their own indices."""


def test_epoch_order_is_a_function_of_seed_and_epoch_and_shards_are_disjoint():
    data = MixedExamples([ListView(range(10))], [None])
    sampler = EpochSampler(data, [1.0], seed=4)
    sampler.set_epoch(2)
    whole = list(sampler)
    assert whole == sampler.order(2) == EpochSampler(data, [1.0], seed=4).order(2) and whole != sampler.order(1)
    sampler.set_epoch(2, start=3)
    assert list(sampler) == whole[3:] and len(sampler) == 7
    shards = []
    for rank in range(3):
        sampler.shard(rank, 3)
        sampler.set_epoch(2)
        shards.append(list(sampler))
    padded = whole + whole[:2]  # 10 items padded to 12, as DistributedSampler does
    assert [len(s) for s in shards] == [4, 4, 4]
    assert shards == [padded[0::3], padded[1::3], padded[2::3]]
    sampler.shard(1, 3)
    sampler.set_epoch(2, start=2)
    assert list(sampler) == padded[1::3][2:]


# ---- atomic writes -------------------------------------------------------------------------------------------


def test_a_failed_checkpoint_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "stages" / "token" / "partial.pt"
    atomic_torch_save(path, {"step": 2, "w": torch.ones(3)})

    def torn(obj, handle):  # writes part of a file, then the process "dies"
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", torn)  # rundir imports torch when it saves
    with pytest.raises(OSError):
        atomic_torch_save(path, {"step": 4, "w": torch.zeros(3)})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["partial.pt"]  # no temporary file left behind


def test_drop_metrics_removes_records_logged_after_the_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    for scope, step in [("token", 1), ("token", 2), ("phrase", 1), ("phrase", 2), ("phrase", 3)]:
        run.log_metrics({"scope": scope, "step": step})
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"scope": "phrase", "st')  # torn by a kill
    run.drop_metrics("phrase", after_step=2)
    assert [(r["scope"], r["step"]) for r in run.read_metrics()] == [("token", 1), ("token", 2), ("phrase", 1),
                                                                     ("phrase", 2)]
    assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n")


# ---- the recipe keys -----------------------------------------------------------------------------------------

BAD_BATCH = """\
name: t
checkpoint_every: 5
backbone: {name: lxmert_s}
datasets: {synthworld: {}}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}}, batch_size: 30, grad_accum: 4}
  - {name: phrase, data: {view: phrase}, tasks: {mlm: {}}, checkpoint_every: 0}
"""


def test_recipe_keys_are_resolved_and_the_batch_rule_is_checked(tmp_path, monkeypatch):
    recipe = tmp_path / "t.yaml"
    recipe.write_text(BAD_BATCH)
    result = CliRunner().invoke(main, ["validate", str(recipe)], terminal_width=400)
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "stages[0].batch_size" in text and "t.yaml:6" in text
    assert "batch_size 30 must be divisible by processes × grad_accum = 1 × 4 = 4" in text
    monkeypatch.setenv("WORLD_SIZE", "4")  # as torchrun sets it: 32 = 4 processes × 4 × 2
    result = CliRunner().invoke(main, ["show", str(recipe), "--set", "stages.token.batch_size=32"])
    assert result.exit_code == 0, result.output
    assert "grad_accum: 4" in result.output and "checkpoint_every: 5" in result.output
    result = CliRunner().invoke(main, ["validate", str(recipe), "--set", "stages.token.batch_size=8"],
                                terminal_width=400)
    assert result.exit_code == 2 and "= 4 × 4 = 16" in " ".join(result.output.split())


# ---- a real run, killed and resumed --------------------------------------------------------------------------

PAUSE_PLUGIN = '''
"""Pause the run at one point (env MMCORE_TEST_PAUSE: "log:SCOPE:STEP" or "start:STAGE") so it can be killed there."""
import os
import time
from pathlib import Path

import mmcore


def _pause(point):
    if os.environ.get("MMCORE_TEST_PAUSE") == point:
        Path(os.environ["MMCORE_TEST_MARK"]).write_text(point)
        time.sleep(600)


@mmcore.hookimpl
def mmcore_log(run, step, metrics):
    _pause(f"log:{metrics['scope']}:{step}")


@mmcore.hookimpl
def mmcore_stage_start(run, stage):
    _pause(f"start:{stage['name']}")
'''

# 16 token examples in batches of 8: 2 steps per epoch, so the checkpoints of the token stage fall on epoch ends;
# 24 VQA examples: 3 steps per epoch, so the fine-tuning's checkpoints at steps 2 and 4 are inside an epoch.
KILL = """\
name: kill
seed: 5
log_every: 1
checkpoint_every: 2
eval_batch_size: 64
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - {name: token, data: {view: token, limit: 16}, tasks: {mlm: {}, mrfr: {}, moc: {}, ifrs: {shuffle_prob: 0.5}},
     epochs: 3, max_steps: 5, batch_size: 8, max_text_len: 12}
  - {name: phrase, data: {view: phrase}, tasks: {mlm: {}, moc: {}, titp: {}}, max_steps: 3, batch_size: 8}
finetune:
  - {name: vqa, head: vqa, data: {view: vqa, limit: 24}, epochs: 2, max_steps: 5, batch_size: 8}
"""


def _mmcore(args: list[str], env: dict[str, str], pause: str | None = None, mark: Path | None = None) -> None:
    """Run ``python -m mmcore ARGS``; with ``pause``, wait until it pauses there, then SIGKILL it."""
    env = {**env, "MMCORE_TEST_PAUSE": pause or "", "MMCORE_TEST_MARK": str(mark)}
    proc = subprocess.Popen([sys.executable, "-m", "mmcore", *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if pause is None:
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, out.decode()[-3000:]
        return
    deadline = time.monotonic() + 600
    while not mark.exists():
        assert proc.poll() is None, f"finished before reaching {pause}: {proc.stdout.read().decode()[-3000:]}"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    mark.unlink()


def test_killed_three_times_and_resumed_ends_as_an_uninterrupted_run(tmp_path):
    (tmp_path / "pause.py").write_text(PAUSE_PLUGIN)
    recipe = tmp_path / "kill.yaml"
    recipe.write_text(KILL)
    # One thread: the runs compared are alike either way, and a busy machine's spinning OpenMP threads slow
    # two-thread runs several-fold.
    env = {**os.environ, "MMCORE_PLUGINS": str(tmp_path / "pause.py"), "OMP_NUM_THREADS": "1"}
    common = ["--cache-dir", str(tmp_path / "cache"), "--quiet"]
    fresh = ["run", str(recipe), "--output-dir", str(tmp_path / "runs"), *common]
    _mmcore([*fresh, "--run-name", "whole"], env)

    run, mark = tmp_path / "runs" / "kill" / "killed", tmp_path / "paused"
    token, phrase, vqa = run / "stages" / "token", run / "stages" / "phrase", run / "finetune" / "vqa"
    # 1. Mid-stage: at step 3 of the token stage, after the checkpoint of step 2 (an epoch's end).
    _mmcore([*fresh, "--run-name", "killed"], env, pause="log:token:3", mark=mark)
    assert torch.load(token / "partial.pt", weights_only=True)["step"] == 2 and not (token / "checkpoint.pt").exists()
    resume = ["run", "--resume", str(run), *common]
    # 2. Between stages: the token stage is complete, the phrase stage about to begin.
    _mmcore(resume, env, pause="start:phrase", mark=mark)
    assert (token / "checkpoint.pt").is_file() and not (token / "partial.pt").exists() and not phrase.exists()
    # 3. During the fine-tuning: at step 5, after the checkpoint of step 4 (inside the second epoch), which carries
    # the validation of the first epoch (after step 3) as the best so far.
    _mmcore(resume, env, pause="log:vqa:5", mark=mark)
    partial = torch.load(vqa / "partial.pt", weights_only=True)
    assert partial["step"] == 4 and partial["selection"]["best_epoch"] == 0 and not (vqa / "checkpoint.pt").exists()
    _mmcore(resume, env)

    whole_results, whole_records = comparable(tmp_path / "runs" / "kill" / "whole")
    killed_results, killed_records = comparable(run)
    assert whole_results["_stages"]["token"]["steps"] == 5 and "accuracy" in whole_results["vqa"]["metrics"]
    assert killed_results == whole_results  # every loss, step count and metric, exactly
    assert killed_records == whole_records  # metrics.jsonl: steps logged after a checkpoint appear once
    assert not [p for p in run.rglob("*") if p.name == "partial.pt" or ".tmp" in p.name]
    final = torch.load(token / "checkpoint.pt", weights_only=True)
    assert {"optimizer", "schedule", "rng", "epoch", "in_epoch", "window"} <= set(final["training"])
