"""``bash benchmarks/gpu_suite.sh --dry-run``: every part of the GPU suite at a toy size on the CPU, one JSON and
one markdown report; without a GPU and without --dry-run it refuses clearly."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def test_the_dry_run_runs_every_part_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(out),
                           "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True, env=env,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "gpu_suite_dry_run.json").read_text())
    assert report["dry_run"] is True and set(report["parts"]) == {"step", "engine", "retrieval"}
    assert report["errors"] == {} and report["skipped"] == []
    steps = report["parts"]["step"]
    assert {(r["model"], r["batch"]) for r in steps} == {(m, b) for m in ("mmcore", "transformers") for b in (2, 4)}
    assert all(r["samples_per_s"] > 0 and r["tflops"] > 0 and r["mfu"] is None for r in steps)
    engine = report["parts"]["engine"]
    assert engine["samples"] == 3 * 2 * 4  # three stages, two steps each, batch 4
    assert engine["data_path_s"] > 0 and engine["step_s"] > 0 and engine["gpu_utilisation_pct"] is None
    retrieval = report["parts"]["retrieval"]
    assert [r["pairs"] for r in retrieval["rows"]] == [45, 45]
    assert retrieval["max_score_difference"]["pair encoder vs whole pairs"] < 1e-5
    table = (out / "gpu_suite_dry_run.md").read_text()
    for heading in ("## pre-training step", "## paper-size recipe through the engine", "## retrieval scoring"):
        assert heading in table


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_real_run_refuses() -> None:
    spec = importlib.util.spec_from_file_location("gpu_suite", ROOT / "benchmarks" / "gpu_suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    result = CliRunner().invoke(module.main, [])
    assert result.exit_code == 2 and "no CUDA GPU here" in result.output
