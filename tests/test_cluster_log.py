"""A run whose output goes to a file (a cluster job's log): progress lines during a stage, whole lines, and no
empty table."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_end_to_end import write_recipe

RECIPE = """\
name: logged
seed: 3
log_every: 2
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 1}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}, mrfr: {}}, max_steps: 5, batch_size: 8, max_text_len: 12}
finetune:
  - {name: vqa, head: vqa, data: {view: vqa}, max_steps: 2, batch_size: 8}
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run_to_log(tmp_path: Path, cache: Path, recipe: Path, *args: str) -> str:
    """``mmcore run RECIPE ... > log 2>&1`` in a fresh process: no terminal, as under a batch scheduler."""
    log = tmp_path / f"{recipe.stem}.log"
    deep = tmp_path / ("a-rather-long-folder-name-for-the-runs-of-this-cluster-job" * 2)
    with open(log, "w") as handle:
        proc = subprocess.run([sys.executable, "-m", "mmcore", "run", str(recipe), "--output-dir", str(deep),
                               "--run-name", "a", "--cache-dir", str(cache), *args],
                              stdout=handle, stderr=subprocess.STDOUT, check=False,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "80"})
    text = log.read_text()
    assert proc.returncode == 0, text
    run_path = deep / recipe.stem / "a"
    assert any(line.endswith(f" → {run_path}") for line in text.splitlines()), text  # the path is never wrapped
    return text


def test_a_logged_run_prints_progress_every_log_every_steps(tmp_path, cache):
    text = run_to_log(tmp_path, cache, write_recipe(tmp_path, RECIPE, "logged.yaml"))
    lines = [line for line in text.splitlines() if line.startswith("stage 1/1 token: step ")]
    # log_every: 2 over 5 steps: steps 2 and 4, and the last one.
    assert [int(re.search(r"step (\d+)/5", line)[1]) for line in lines] == [2, 4, 5], text
    for line in lines:
        pattern = r" · loss \d+\.\d{4} · [\d,]+ samples/s · mlm \d+\.\d{4} · mrfr \d+\.\d{4} · ETA \d+:\d\d:\d\d$"
        assert re.search(pattern, line), line
    assert "pre-training" in text  # the stage table


def test_a_run_without_stages_prints_no_empty_pre_training_table(tmp_path, cache):
    recipe = write_recipe(tmp_path, RECIPE.replace("name: logged", "name: tuned"), "tuned.yaml")
    text = run_to_log(tmp_path, cache, recipe, "--set", "stages=[]")
    assert "pre-training" not in text
    assert re.search(r"^fine-tune vqa: step 2/2 · loss \d+\.\d{4}", text, re.MULTILINE), text


def test_a_seed_group_logs_whole_progress_lines(tmp_path, cache):
    """The seeds of a group print the same unwrapped lines as a single run (``COLUMNS=80`` above)."""
    text = run_to_log(tmp_path, cache, write_recipe(tmp_path, RECIPE, "logged.yaml"), "--seeds", "3,4",
                      "--set", "finetune=[]")
    lines = [line for line in text.splitlines() if line.startswith("stage 1/1 token: step ")]
    assert len(lines) == 2 * 3, text  # two seeds, three progress lines each
    assert all(re.search(r" · mrfr \d+\.\d{4} · ETA \d+:\d\d:\d\d$", line) for line in lines), text
