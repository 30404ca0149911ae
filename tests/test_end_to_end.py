"""A tiny curriculum through the real CLI, engine and built-in plugins (seconds), plus resume and user plugins."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mmcore.cli import main

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
seed: 3
log_every: 1
eval_batch_size: 64
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - name: token
    data: {view: token}
    tasks: {mlm: {}, mrfr: {}, moc: {}, ifrs: {shuffle_prob: 0.5}}
    max_steps: 3
    batch_size: 8
    max_text_len: 12
  - name: phrase
    data: {view: phrase}
    tasks: {mlm: {}, mrfr: {}, moc: {}, titp: {}}
    max_steps: 2
    batch_size: 8
  - name: sentence
    data: {view: sentence}
    tasks: {mlm: {}, mrfr: {}, moc: {}, tits: {}, itm_hs: {}}
    max_steps: 2
    batch_size: 8
zero_shot:
  - {name: zs_retrieval, head: retrieval, data: {view: retrieval, split: test}}
finetune:
  - {name: vqa, head: vqa, data: {view: vqa}, max_steps: 2, batch_size: 8}
  - {name: retrieval, head: retrieval, data: {view: retrieval}, max_steps: 2, batch_size: 4}
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run_cli(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, terminal_width=200)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def write_recipe(tmp_path: Path, text: str = TINY, name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_tiny_curriculum_end_to_end(tmp_path, cache_dir):
    recipe = write_recipe(tmp_path)
    output = run_cli(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "a",
                      "--cache-dir", str(cache_dir), "--quiet"])
    run = tmp_path / "runs" / "tiny" / "a"
    for name in ("recipe.resolved.yaml", "metrics.jsonl", "results.json", "summary.md"):
        assert (run / name).is_file(), name
    ckpts = {s: torch.load(run / "stages" / s / "checkpoint.pt", weights_only=False) for s in ("token", "phrase", "sentence")}
    # Each stage started from exactly the weights the previous stage ended with.
    assert ckpts["token"]["init"]["from"] is None
    assert ckpts["phrase"]["init"] == {"from": "token", "fingerprint": ckpts["token"]["fingerprint"]}
    assert ckpts["sentence"]["init"]["fingerprint"] == ckpts["phrase"]["fingerprint"]
    assert ckpts["phrase"]["fingerprint"] != ckpts["token"]["fingerprint"]  # and then trained
    assert set(ckpts["sentence"]["tasks"]) == {"mlm", "mrfr", "moc", "tits", "itm_hs"}
    results = json.loads((run / "results.json").read_text())
    assert results["_stages"]["token"]["steps"] == 3
    assert 0.0 <= results["zs_retrieval"]["metrics"]["ir_r1"] <= 1.0
    assert 0.0 <= results["vqa"]["metrics"]["accuracy"] <= 1.0
    assert "tr_r10" in results["retrieval"]["metrics"]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    token_records = [r for r in records if r["scope"] == "token"]
    assert len(token_records) == 3 and all({"mlm", "mrfr", "moc", "ifrs", "loss"} <= set(r) for r in token_records)
    assert any("itm_hs" in r for r in records if r["scope"] == "sentence")
    assert "IR R@1" in output and "vqa" in output  # the final results table
    assert "zs_retrieval" in (run / "summary.md").read_text()


def test_resume_skips_finished_stages_and_evaluations(tmp_path, cache_dir):
    recipe = write_recipe(tmp_path)
    runs = tmp_path / "runs"
    run_cli(["run", str(recipe), "--output-dir", str(runs), "--run-name", "r", "--cache-dir", str(cache_dir), "--quiet"])
    run = runs / "tiny" / "r"
    token_ckpt = run / "stages" / "token" / "checkpoint.pt"
    before = token_ckpt.stat().st_mtime_ns
    (run / "stages" / "sentence" / "checkpoint.pt").unlink()
    results = json.loads((run / "results.json").read_text())
    vqa_before = results["vqa"]
    del results["retrieval"]
    (run / "results.json").write_text(json.dumps(results))
    run_cli(["run", "--resume", str(run), "--cache-dir", str(cache_dir), "--quiet"])
    assert token_ckpt.stat().st_mtime_ns == before  # finished stage not retrained
    assert (run / "stages" / "sentence" / "checkpoint.pt").is_file()
    after = json.loads((run / "results.json").read_text())
    assert after["vqa"] == vqa_before and "retrieval" in after


def test_existing_run_dir_needs_resume_or_overwrite(tmp_path, cache_dir):
    recipe = write_recipe(tmp_path, TINY.replace("max_steps: 3", "max_steps: 1"))
    args = ["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "x", "--cache-dir", str(cache_dir),
            "--quiet", "--set", "finetune=[]", "--set", "zero_shot=[]", "--set", "stages.phrase.max_steps=1",
            "--set", "stages.sentence.max_steps=1"]
    run_cli(args)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "already exists" in result.output and "--resume" in result.output


def test_init_none_starts_from_fresh_weights(tmp_path, cache_dir):
    recipe = write_recipe(tmp_path)
    run_cli(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "n", "--cache-dir", str(cache_dir),
             "--quiet", "--set", "stages.phrase.init=none", "--set", "finetune=[]", "--set", "zero_shot=[]"])
    stages = tmp_path / "runs" / "tiny" / "n" / "stages"
    token = torch.load(stages / "token" / "checkpoint.pt", weights_only=False)
    phrase = torch.load(stages / "phrase" / "checkpoint.pt", weights_only=False)
    assert phrase["init"]["from"] is None and phrase["init"]["fingerprint"] != token["fingerprint"]


def test_third_party_entry_point_task_runs_in_a_recipe(tmp_path, cache_dir, third_party):
    recipe = write_recipe(tmp_path, TINY.replace("tasks: {mlm: {}, mrfr: {}, moc: {}, ifrs: {shuffle_prob: 0.5}}",
                                                 "tasks: {mlm: {}, grounded_count: {scale: 2.0}}"))
    run_cli(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "t", "--cache-dir", str(cache_dir),
             "--quiet", "--set", "finetune=[]", "--set", "zero_shot=[]"])
    records = (tmp_path / "runs" / "tiny" / "t" / "metrics.jsonl").read_text().splitlines()
    token = [json.loads(r) for r in records if json.loads(r)["scope"] == "token"]
    assert token and all("grounded_count" in r for r in token)


def test_recipe_plugins_list_loads_a_local_file(tmp_path, cache_dir):
    (tmp_path / "my_tasks.py").write_text(textwrap.dedent("""
        import mmcore, torch
        from mmcore import Task

        class PooledNorm(Task):
            '''Keep the pooled output's norm near one.'''
            name = "pooled_norm"

            def loss(self, output, batch):
                return (output.pooled.norm(dim=-1) - 1).pow(2).mean()

        @mmcore.hookimpl
        def mmcore_register_tasks(registry):
            registry.add_task(PooledNorm)
    """))
    recipe = write_recipe(tmp_path, "plugins: [my_tasks.py]\n" + TINY.replace("ifrs: {shuffle_prob: 0.5}", "pooled_norm: {}"))
    run_cli(["validate", str(recipe)])
    run_cli(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "p", "--cache-dir", str(cache_dir),
             "--quiet", "--set", "finetune=[]", "--set", "zero_shot=[]", "--set", "stages.phrase.max_steps=1"])
    text = (tmp_path / "runs" / "tiny" / "p" / "metrics.jsonl").read_text()
    assert "pooled_norm" in text


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(ROOT)) for p in (ROOT / "recipes").rglob("*.yaml")
                                          if "base" not in p.parts))
def test_shipped_recipes_validate(recipe):
    run_cli(["validate", str(ROOT / recipe)])


def test_invalid_recipe_exits_2_without_traceback(tmp_path):
    recipe = write_recipe(tmp_path, TINY.replace("epochs", "epochs").replace("max_steps: 3", "max_steps: 3\n    epohcs: -1"))
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2
    assert "tiny.yaml:" in result.output and "stages[0].epohcs" in result.output and "did you mean 'epochs'" in result.output
    assert "Traceback" not in result.output
