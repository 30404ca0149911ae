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
from test_end_to_end import TINY  # every msp_tps task, zero-shot retrieval and both fine-tunings, in seconds


def _run_in_process(tmp_path: Path, label: str, hash_seed: str) -> Path:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(TINY)
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "MMCORE_CACHE": str(tmp_path / f"cache_{label}")}
    subprocess.run([sys.executable, "-m", "mmcore", "run", str(recipe), "--output-dir", str(tmp_path / "runs"),
                    "--run-name", label, "--quiet"], env=env, check=True, capture_output=True, timeout=600)
    return tmp_path / "runs" / "tiny" / label


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
