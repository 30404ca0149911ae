"""benchmarks/bench_stage.py at a toy size: the engine's stage and the bare step on the same batches, the ratio
and the engine's phases."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
seed: 2
backbone: {name: lxmert_s, hidden_size: 16, num_attention_heads: 2, intermediate_size: 32, x_layers: 1}
datasets:
  synthworld: {train_images: 16, val_images: 4, test_images: 4, vqa_train_images: 4, retrieval_train_images: 4,
               max_regions: 4, feature_dim: 8, hard_negatives_top: 3}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}, mrfr: {}}, epochs: 1, batch_size: 4}
  - {name: sentence, data: {view: sentence}, tasks: {mlm: {}, itm_hs: {}}, epochs: 1, batch_size: 4}
"""


def test_a_stage_against_its_bare_step(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_stage", ROOT / "benchmarks" / "bench_stage.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench
    spec.loader.exec_module(bench)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent(TINY))
    plugins, resolved = bench.stage_recipe(recipe, "sentence", 3)
    assert [s["name"] for s in resolved["stages"]] == ["sentence"] and resolved["stages"][0]["init"] == "none"
    bare = bench.BareStep(plugins, resolved, tmp_path / "cache")
    assert len(bare.batches) == 3 and all(b["input_ids"].shape[0] == 4 for b in bare.batches)
    engine = bench.run_engine(plugins, resolved, tmp_path / "cache", 1)
    step = bare.run()
    assert engine.samples == step.samples == 12 and engine.rate > 0 and step.cpu_rate > 0
    assert {"read", "collate", "masking", "forward", "backward", "optimizer", "checkpoint"} <= set(engine.phases)
    table = bench.phase_table([engine])
    assert table.count("\n") == len(bench.PHASES) + 2 and "| forward |" in table and "| other |" in table
