"""Two processes under torchrun (gloo on CPU) train as one process with the same global batch: per-step losses
agree to 1e-5 (relative), with and without gradient accumulation; rank 0 alone writes the run directory; a killed
two-process run resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# A loss that is a mean over examples and draws nothing at random: the one-process and two-process runs then
# compute the same function of the same global batch (only the summation order differs).
POOLED_TASK = '''
import mmcore
from mmcore import PAIR_FIELDS, Task


class PooledNorm(Task):
    """Keep the pooled output's norm near one."""
    name = "pooled_norm"
    requires = PAIR_FIELDS

    def loss(self, output, batch):
        return (output.pooled.norm(dim=-1) - 1).pow(2).mean()


@mmcore.hookimpl
def mmcore_register_tasks(registry):
    registry.add_task(PooledNorm)
'''

# Dropout off; 32 examples in global batches of 8. The phrase stage accumulates: 8 = 2 processes × 2 × 4 / 2.
RECIPE = """\
name: ddp
seed: 2
log_every: 1
precision: fp32  # pinned: compared to 1e-5, which bf16 rounding (e.g. precision: auto on an AMX CPU) would miss
eval_batch_size: 64
plugins: [pooled.py]
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2,
           hidden_dropout: 0.0, attention_dropout: 0.0}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - {name: token, data: {view: token, limit: 32}, tasks: {pooled_norm: {}}, max_steps: 4, batch_size: 8,
     max_text_len: 12}
  - {name: phrase, data: {view: phrase, limit: 32}, tasks: {pooled_norm: {}}, max_steps: 3, batch_size: 8,
     grad_accum: 2}
finetune:
  - {name: vqa, head: vqa, data: {view: vqa, limit: 24}, max_steps: 3, batch_size: 8}
"""

RTOL = 1e-5


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ddp")
    (path / "pooled.py").write_text(POOLED_TASK)
    (path / "ddp.yaml").write_text(RECIPE)
    return path


def _torchrun(args: list[str], cwd: Path, **popen) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "mmcore", *args]
    return subprocess.Popen(command, cwd=cwd, env={**env, **popen.pop("env", {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, **popen)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode()[-4000:]
    return out.decode()


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_with_the_same_global_batch(workdir):
    common = ["--output-dir", str(workdir / "runs"), "--cache-dir", str(workdir / "cache"), "--quiet"]
    # One process, one thread (torchrun gives each of its processes one thread too).
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    _finish(subprocess.Popen([sys.executable, "-m", "mmcore", "run", "ddp.yaml", "--run-name", "one", *common],
                             cwd=workdir, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT))
    out = _finish(_torchrun(["run", "ddp.yaml", "--run-name", "two", *common], workdir))
    assert out.count("main results (%)") == 1  # rank 0 alone prints the tables

    single, double = (_records(workdir / "runs" / "ddp" / name) for name in ("one", "two"))
    # One record per logged step: rank 0 alone writes metrics.jsonl.
    assert [(r["scope"], r["step"]) for r in double] == [(r["scope"], r["step"]) for r in single]
    training = [r for r in single if "split" not in r]  # the rest: the fine-tuning's per-epoch validation
    assert [r["scope"] for r in training].count("phrase") == 3 and len(training) == 10
    assert [r for r in double if "split" in r] == [r for r in single if "split" in r]
    for a, b in zip(single, double):
        if "split" in a:
            continue
        for key in [k for k in a if k == "loss" or k == "pooled_norm"]:
            assert b[key] == pytest.approx(a[key], rel=RTOL), (a["scope"], a["step"], key)
        assert b["lr"] == a["lr"]
    assert single[0]["loss"] != single[3]["loss"]  # it trains

    results = [json.loads((workdir / "runs" / "ddp" / name / "results.json").read_text()) for name in ("one", "two")]
    for name in ("token", "phrase"):
        assert {k: results[1]["_stages"][name][k] for k in ("steps", "samples")} == \
               {k: results[0]["_stages"][name][k] for k in ("steps", "samples")}
    # Evaluated by rank 0 on weights that agree to float rounding.
    assert results[1]["vqa"]["metrics"] == results[0]["vqa"]["metrics"]
    assert results[1]["vqa"]["steps"] == 3


PAUSE_PLUGIN = '''
import os
import time
from pathlib import Path

import mmcore


@mmcore.hookimpl
def mmcore_log(run, step, metrics):
    if os.environ.get("MMCORE_TEST_PAUSE") == f"log:{metrics['scope']}:{step}":
        Path(os.environ["MMCORE_TEST_MARK"]).write_text("paused")
        time.sleep(600)
'''


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_exactly(workdir):
    (workdir / "pause.py").write_text(PAUSE_PLUGIN)
    env = {"MMCORE_PLUGINS": str(workdir / "pause.py"), "MMCORE_TEST_MARK": str(workdir / "paused")}
    common = ["--output-dir", str(workdir / "runs"), "--cache-dir", str(workdir / "cache"), "--quiet",
              "--set", "checkpoint_every=2"]
    _finish(_torchrun(["run", "ddp.yaml", "--run-name", "whole", *common], workdir, env=env))
    # Rank 0 pauses after logging step 3 of the token stage (the checkpoint of step 2 is written); rank 1 waits
    # for it in the next collective. Kill the launcher and both workers.
    proc = _torchrun(["run", "ddp.yaml", "--run-name", "killed", *common], workdir,
                     env={**env, "MMCORE_TEST_PAUSE": "log:token:3"}, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (workdir / "paused").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read().decode()[-4000:]
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    run = workdir / "runs" / "ddp" / "killed"
    assert (run / "stages" / "token" / "partial.pt").is_file()
    _finish(_torchrun(["run", "--resume", str(run), "--cache-dir", str(workdir / "cache"), "--quiet"], workdir,
                      env=env))
    whole, killed = (_records(workdir / "runs" / "ddp" / name) for name in ("whole", "killed"))
    for record in (*whole, *killed):
        record.pop("samples_per_s", None)  # validation records carry none
    assert killed == whole
    results = [json.loads((workdir / "runs" / "ddp" / n / "results.json").read_text()) for n in ("whole", "killed")]
    assert results[1]["vqa"]["metrics"] == results[0]["vqa"]["metrics"]
