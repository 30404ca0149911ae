"""Identical reruns: the same recipe in separate processes gives bit-identical metrics and losses.

Each run gets its own empty data cache, so world generation, hard negatives and the vocabulary are rebuilt
too, and a different ``PYTHONHASHSEED``, so any iteration over a set or a hash-keyed dict that reaches a
result shows up as a difference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from helpers import comparable

# Every pre-training task of msp_tps, zero-shot retrieval and both fine-tunings, at a size that runs in seconds.
TINY_MSP = """\
name: tiny_msp
seed: 5
log_every: 1
eval_batch_size: 64
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}, mrfr: {}, moc: {}, ifrs: {shuffle_prob: 0.5}},
     max_steps: 3, batch_size: 8, max_text_len: 12}
  - {name: phrase, data: {view: phrase}, tasks: {mlm: {}, mrfr: {}, moc: {}, titp: {}}, max_steps: 3, batch_size: 8}
  - {name: sentence, data: {view: sentence}, tasks: {mlm: {}, mrfr: {}, moc: {}, tits: {}, itm_hs: {}},
     max_steps: 3, batch_size: 8}
zero_shot:
  - {name: zs_retrieval, head: retrieval, data: {view: retrieval, split: test}}
finetune:
  - {name: vqa, head: vqa, data: {view: vqa}, max_steps: 3, batch_size: 8}
  - {name: retrieval, head: retrieval, data: {view: retrieval}, max_steps: 3, batch_size: 4}
"""


def _run_in_process(tmp_path: Path, label: str, hash_seed: str) -> Path:
    recipe = tmp_path / "tiny_msp.yaml"
    recipe.write_text(TINY_MSP)
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "MMCORE_CACHE": str(tmp_path / f"cache_{label}")}
    subprocess.run([sys.executable, "-m", "mmcore", "run", str(recipe), "--output-dir", str(tmp_path / "runs"),
                    "--run-name", label, "--quiet"], env=env, check=True, capture_output=True, timeout=600)
    return tmp_path / "runs" / "tiny_msp" / label


def test_reruns_in_separate_processes_are_bit_identical(tmp_path):
    run_a, run_b = _run_in_process(tmp_path, "a", "1"), _run_in_process(tmp_path, "b", "2")
    first, second = comparable(run_a), comparable(run_b)
    results, records = first
    assert {"vqa", "retrieval", "zs_retrieval"} <= set(results)
    assert any("loss" in key for record in records for key in record)  # the comparison covers losses
    assert first == second

    # What a rerun elsewhere must match to promise the same bits is recorded beside the results.
    machine = json.loads((run_a / "results.json").read_text())["_run"]["machine"]
    assert machine["torch"] and machine["cpu_capability"] and machine["processor"]
