"""The pre-training step benchmark still runs: one step of each model at a toy size on CPU."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_pretrain_step.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_pretrain_step", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_benchmark_runs_one_step_of_each_model_at_a_toy_size() -> None:
    bench = load_bench()
    cfg = bench.BenchConfig(hidden=32, layers=1, heads=4, batch=2, steps=1, warmup=0, dtype="fp32")
    results = bench.run_benchmark(cfg)
    by_model = {r.model: r for r in results}
    assert set(by_model) == {"mmcore", "transformers"}
    for result in results:
        assert len(result.seconds) == 1 and result.seconds[0] > 0
        assert all(math.isfinite(v) for v in result.losses)
    # mmcore decodes 8 gathered positions per text instead of all 20 and runs its region heads on 12 of 36
    # regions, so a step at this size (the 30522-word decoder dominates) counts clearly fewer FLOPs.
    assert 0 < by_model["mmcore"].flops < 0.8 * by_model["transformers"].flops
    table = bench.format_table(cfg, results)
    assert table.count("\n") == 4 and "| fp32  | mmcore " in table and "# fp32: per-pair speed ratio" in table


def test_benchmark_feeds_both_models_the_same_masked_batch() -> None:
    bench = load_bench()
    cfg = bench.BenchConfig(hidden=32, layers=1, heads=4, batch=3)
    info = bench.make_info(cfg)
    device = torch.device("cpu")
    _, tasks = bench.build_mmcore(cfg, info, device)
    batch = bench.make_batch(cfg, info)
    clean_ids = batch["input_ids"].clone()
    bench.corrupt(batch, tasks, device, cfg.seed)
    inputs = bench.transformers_inputs(batch)
    selected = batch["mlm_labels"] != -100
    assert selected.any() and torch.equal(batch["mlm_labels"][selected], clean_ids[selected])
    assert inputs["input_ids"] is batch["input_ids"] and inputs["labels"] is batch["mlm_labels"]
    masked = batch["region_mask"]
    assert masked.any() and (masked.sum(1) <= cfg.region_max_predictions).all()
    # transformers weights each visual loss by its mask: only mmcore's masked regions count, with their confidences
    _, obj_weight = inputs["obj_labels"]["obj"]
    assert torch.equal(obj_weight, masked.float() * batch["obj_conf"])
    assert torch.equal(inputs["obj_labels"]["feat"][0], batch["visual_feats_orig"])
    assert torch.equal(inputs["obj_labels"]["feat"][1], masked.float())
