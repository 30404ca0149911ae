"""The Trainer's callbacks: when each hook is called, what it sees, and that listening changes nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from helpers import Rows, Stack
from torch import nn

from mmcore.callbacks import TrainerCallback
from mmcore.progress import Reporter
from mmcore.trainer import Data, Model, Runtime, Schedule, Trainer
from mmcore.training import EpochSampler, MixedExamples


class Events(TrainerCallback):
    """Records every hook call in order, with copies of what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_log(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self.calls.append(("log", step, epoch, dict(metrics)))

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        self.calls.append(("checkpoint", state["step"], copy.deepcopy(state)))

    def on_epoch_end(self, epoch: int, state: dict[str, Any]) -> None:
        self.calls.append(("epoch_end", epoch, state["step"]))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [call[1:] for call in self.calls if call[0] == kind]


class LogOnly(TrainerCallback):
    """A third-party callback: overrides on_log only."""

    def __init__(self) -> None:
        self.records: list[dict[str, float]] = []

    def on_log(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        self.records.append({"step": step, **metrics})
        metrics.clear()  # its copy: the other callbacks still see everything


def _trainer(callbacks: list[TrainerCallback], *, max_steps: int | None = None, epochs: int = 3, log_every: int = 4,
             checkpoint_every: int = 0) -> tuple[nn.Module, Trainer]:
    """A dropout model on 24 examples in batches of 8 (3 steps an epoch), and its trainer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
    data = MixedExamples([Rows(torch.randn(24, 4).unbind(0))], [None])

    def step_fn(batch):
        fit = model(batch["x"]).pow(2).mean()
        return fit + 0.5, {"fit": fit}

    optim = {"lr": 0.05, "weight_decay": 0.01, "warmup": 0.2, "clip": 1.0, "betas": [0.9, 0.999], "eps": 1e-6}
    trainer = Trainer("demo", Model(step_fn, [model]), Data(data, EpochSampler(data, [1.0], 1), Stack(), batch_size=8),
                      Schedule(epochs, max_steps, optim, log_every=log_every, checkpoint_every=checkpoint_every),
                      Runtime(torch.device("cpu"), Reporter(quiet=True)), callbacks)
    return model, trainer


def _train(callbacks: list[TrainerCallback], **options: Any):
    """(model, result) of training with ``callbacks``."""
    model, trainer = _trainer(callbacks, **options)
    return model, trainer.fit()


def test_on_epoch_end_is_called_once_per_epoch_with_its_index():
    events = Events()
    _, result = _train([events])
    assert result.steps == 9
    assert events.of("epoch_end") == [(0, 3), (1, 6), (2, 9)]


def test_an_epoch_cut_short_by_max_steps_still_ends():
    events = Events()
    _train([events], max_steps=7)
    assert events.of("epoch_end") == [(0, 3), (1, 6), (2, 7)]


@pytest.mark.parametrize(("every", "steps"), [(2, [2, 4, 6, 8]), (3, [3, 6]), (0, [])])
def test_on_checkpoint_every_n_steps_but_not_at_the_final_step(every, steps):
    events = Events()
    _, result = _train([events], checkpoint_every=every)
    assert [call[0] for call in events.of("checkpoint")] == steps
    assert result.state is not None and result.state["step"] == 9  # the final state is the caller's


def test_an_epoch_end_is_told_before_the_checkpoint_of_the_same_step():
    events = Events()
    _train([events], checkpoint_every=3)
    told = [(call[0], call[2] if call[0] == "epoch_end" else call[1]) for call in events.calls if call[0] != "log"]
    assert told == [("epoch_end", 3), ("checkpoint", 3), ("epoch_end", 6), ("checkpoint", 6), ("epoch_end", 9)]


def test_a_third_party_callback_observes_every_log_point():
    spy, events = LogOnly(), Events()
    _train([spy, events], log_every=4)
    assert [r["step"] for r in spy.records] == [4, 8, 9]  # every log_every steps, and the final one
    assert {"loss", "fit", "lr", "samples_per_s"} <= set(spy.records[0])
    assert spy.records[0]["loss"] == pytest.approx(spy.records[0]["fit"] + 0.5)
    assert [(step, epoch) for step, epoch, _ in events.of("log")] == [(4, 1), (8, 2), (9, 2)]
    assert all("loss" in metrics for _, _, metrics in events.of("log"))  # untouched by the spy's clear()


def test_listening_to_epoch_ends_and_checkpoints_changes_no_loss_or_weight():
    quiet, listener = LogOnly(), LogOnly()
    plain, plain_result = _train([quiet])
    listened, result = _train([listener, Events()], checkpoint_every=2)
    strip = lambda records: [{k: v for k, v in r.items() if k != "samples_per_s"} for r in records]
    assert strip(quiet.records) == strip(listener.records) and plain_result.last_losses == result.last_losses
    assert all(torch.equal(v, listened.state_dict()[k]) for k, v in plain.state_dict().items())


class KeepAt(TrainerCallback):
    """Keeps a copy of the model and training state at one checkpoint step, as partial.pt would."""

    def __init__(self, model: nn.Module, step: int) -> None:
        self.model, self.step = model, step
        self.saved: dict[str, Any] = {}

    def on_checkpoint(self, state: dict[str, Any]) -> None:
        if state["step"] == self.step:
            self.saved = copy.deepcopy({"weights": self.model.state_dict(), "training": state})


def test_a_resumed_run_tells_only_the_epoch_ends_still_to_come():
    model, trainer = _trainer([], checkpoint_every=3)
    keep = KeepAt(model, 3)  # the end of epoch 0
    trainer.callbacks.append(keep)
    trainer.fit()
    events = Events()
    resumed, again = _trainer([events], checkpoint_every=3)
    resumed.load_state_dict(keep.saved["weights"])
    again.fit(keep.saved["training"])
    assert events.of("epoch_end") == [(1, 6), (2, 9)]
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in model.state_dict().items())


def test_schedule_of_a_recipe_item_takes_its_keys():
    item = {"epochs": 2, "max_steps": 5, "optim": {"lr": 1.0}, "grad_accum": 2, "checkpoint_every": 4}
    schedule = Schedule.of(item, log_every=3, precision="bf16")
    assert schedule == Schedule(2, 5, {"lr": 1.0}, log_every=3, grad_accum=2, precision="bf16", checkpoint_every=4)
