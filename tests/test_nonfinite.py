"""The non-finite-loss guard: stop naming the stage, step and task(s), or skip the update exactly and count it."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import Rows, Stack
from torch import nn

from mmcore import cli, trainer
from mmcore.callbacks import TrainerCallback
from mmcore.cli import main
from mmcore.errors import MMCoreError
from mmcore.progress import Reporter
from mmcore.trainer import Data, Model, Runtime, Schedule, Trainer
from mmcore.training import EpochSampler, MixedExamples

# ---- the loop itself ----------------------------------------------------------------------------------------


def _loop(nan_steps: set[int] | str, *, nonfinite: str, log_every: int, steps: int = 4):
    """Train a linear model for ``steps`` steps, its ``fit`` loss NaN at ``nan_steps`` ("all" for every step)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    data = MixedExamples([Rows(torch.randn(32, 3).unbind(0))], [None])
    seen: list[float] = []
    logs: list[dict[str, float]] = []

    def step_fn(batch):
        fit = model(batch["x"]).pow(2).mean()
        if nan_steps == "all" or len(seen) + 1 in nan_steps:
            fit = fit * math.nan
        seen.append(float(fit.detach()))  # the test may wait for the host; the loop must not need to
        aux = torch.tensor(0.25)
        return fit + aux, {"fit": fit, "aux": aux}

    optim = {"lr": 0.1, "weight_decay": 0.01, "warmup": 0.0, "clip": 1.0, "betas": [0.9, 0.999], "eps": 1e-6,
             "nonfinite": nonfinite}

    class Record(TrainerCallback):
        def on_log(self, step, epoch, metrics):
            logs.append({"step": step, **metrics})

    run = lambda: Trainer(
        "stage 1/1 demo", Model(step_fn, [model]), Data(data, EpochSampler(data, [1.0], 0), Stack(), batch_size=4),
        Schedule(1, steps, optim, log_every=log_every), Runtime(torch.device("cpu"), Reporter(quiet=True)),
        [Record()]).fit()
    return run, model, start, seen, logs


def test_stop_names_the_first_bad_step_and_task_at_the_next_log_point():
    run, _, _, seen, logs = _loop({2}, nonfinite="stop", log_every=10)
    with pytest.raises(MMCoreError) as info:
        run()
    # Steps 3 and 4 are NaN too (the weights are), but the first bad step and its task are what is reported.
    assert str(info.value).startswith("stage 1/1 demo: non-finite loss (NaN or inf) at step 2 in fit;")
    assert len(seen) == 4 and logs == []  # noticed at the end of the window, not by waiting every step


def test_stop_at_a_log_point_keeps_earlier_records():
    run, _, _, _, logs = _loop({3}, nonfinite="stop", log_every=1)
    with pytest.raises(MMCoreError, match="at step 3 in fit;"):
        run()
    assert [r["step"] for r in logs] == [1, 2]


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused-found-inf"])
def test_skip_every_step_leaves_the_weights_exactly_untouched(monkeypatch, fused):
    if fused:  # the path make_optimizer takes on CUDA: the skip happens on the device
        make = trainer.make_optimizer
        monkeypatch.setattr(trainer, "make_optimizer", lambda params, optim, device: torch.optim.AdamW(
            make(params, optim, device).param_groups, lr=optim["lr"], fused=True))
    run, model, start, _, logs = _loop("all", nonfinite="skip", log_every=2)
    result = run()
    assert result.steps == 4 and result.skipped == 4
    for name, value in model.state_dict().items():  # not even AdamW's decoupled weight decay moved them
        assert torch.equal(value, start[name]), name
    assert [r["skipped_steps"] for r in logs] == [2, 4] and all("loss" not in r for r in logs)


def test_skip_one_step_trains_on_and_averages_only_finite_steps():
    run, model, start, seen, logs = _loop({2}, nonfinite="skip", log_every=4)
    result = run()
    assert result.skipped == 1 and len(logs) == 1 and logs[0]["skipped_steps"] == 1
    finite = [seen[0], seen[2], seen[3]]
    assert logs[0]["fit"] == pytest.approx(sum(finite) / 3, rel=1e-6)
    assert logs[0]["loss"] == pytest.approx(sum(finite) / 3 + 0.25, rel=1e-6)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert not torch.equal(model.weight, start["weight"])  # the other steps did update


# ---- through a recipe ---------------------------------------------------------------------------------------

NAN_TASK = '''
import math
import mmcore
from mmcore import PAIR_FIELDS, Task

class NanAt(Task):
    """Keep the pooled output small; NaN at the listed training steps (or at every step)."""
    name = "nan_at"
    requires = PAIR_FIELDS
    defaults = {"steps": [], "every": False}

    def __init__(self, info, backbone, **options):
        super().__init__(info, backbone, **options)
        self.calls = 0

    def loss(self, output, batch):
        self.calls += 1
        loss = output.pooled.pow(2).mean()
        return loss * math.nan if self.options["every"] or self.calls in self.options["steps"] else loss

@mmcore.hookimpl
def mmcore_register_tasks(registry):
    registry.add_task(NanAt)
'''

RECIPE = """\
name: nan
seed: 1
log_every: 5
plugins: [nan_task.py]
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}, moc: {}}, max_steps: 3, batch_size: 8, max_text_len: 12}
  - {name: phrase, data: {view: phrase}, tasks: {mlm: {}, nan_at: {steps: [2]}}, max_steps: 3, batch_size: 8}
"""


@pytest.fixture(autouse=True)
def wide_errors(monkeypatch):
    monkeypatch.setattr(cli.err_console, "width", 1000)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _invoke(args: list[str]):
    result = CliRunner().invoke(main, args, terminal_width=1000)
    assert "Traceback" not in result.output
    return result


def _recipe(tmp_path: Path) -> Path:
    (tmp_path / "nan_task.py").write_text(textwrap.dedent(NAN_TASK))
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    return tmp_path / "recipe.yaml"


def test_stop_then_resume_with_skip(tmp_path, cache_dir):
    recipe, runs = _recipe(tmp_path), tmp_path / "runs"
    args = ["--cache-dir", str(cache_dir), "--quiet"]
    result = _invoke(["run", str(recipe), "--output-dir", str(runs), "--run-name", "a", *args])
    assert result.exit_code == 4 and isinstance(result.exception, SystemExit), (result.output, result.exception)
    assert ("error: stage 2/2 phrase: non-finite loss (NaN or inf) at step 2 in nan_at; stopped, no checkpoint "
            "written") in " ".join(result.output.split())
    run = runs / "nan" / "a"
    # The finished stage stays (resumable); the stopped one left nothing, and no temporary file is around.
    assert (run / "stages" / "token" / "checkpoint.pt").is_file() and not (run / "stages" / "phrase").exists()
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    result = _invoke(["run", "--resume", str(run), "--set", "stages.phrase.optim.nonfinite=skip", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    phrase = torch.load(run / "stages" / "phrase" / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in phrase["backbone"].values())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["skipped_steps"] for r in records if r["scope"] == "phrase"] == [1]


def test_skip_every_step_keeps_the_stage_at_its_starting_weights(tmp_path, cache_dir):
    recipe = _recipe(tmp_path)
    result = _invoke(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "s",
                      "--cache-dir", str(cache_dir), "--quiet", "--set", "stages.phrase.optim.nonfinite=skip",
                      "--set", "stages.phrase.tasks.nan_at.every=true"])
    assert result.exit_code == 0, (result.output, result.exception)
    stages = tmp_path / "runs" / "nan" / "s" / "stages"
    token = torch.load(stages / "token" / "checkpoint.pt", weights_only=True)
    phrase = torch.load(stages / "phrase" / "checkpoint.pt", weights_only=True)
    assert token["fingerprint"] != token["init"]["fingerprint"]  # the token stage trained
    assert phrase["init"]["fingerprint"] == token["fingerprint"] == phrase["fingerprint"]  # the phrase stage did not
