"""Repeated seeds: ``mmcore run RECIPE --seeds 0,1,2`` runs one seed group, aggregates it, and finishes it per seed."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mmcore.cli import main
from mmcore.seeds import same_group
from mmcore.stats import summarize
from tests.helpers import comparable, invoke
from tests.test_end_to_end import TINY


def flat(text: str) -> str:
    return " ".join(text.split())


def checkpoint_times(run: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in run.rglob("checkpoint.pt")}


@pytest.fixture(scope="module")
def group(tmp_path_factory) -> dict:
    """The tiny msp_tps-shaped curriculum (token -> phrase -> sentence, zero-shot and two fine-tunings) over 3 seeds."""
    tmp = tmp_path_factory.mktemp("seeds")
    recipe = tmp / "tiny.yaml"
    recipe.write_text(textwrap.dedent(TINY))
    args = ["run", str(recipe), "--output-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache"), "--quiet"]
    printed = invoke([*args, "--seeds", "0,1,2", "--run-name", "g"])
    return {"tmp": tmp, "recipe": recipe, "args": args, "path": tmp / "runs" / "tiny" / "g", "printed": printed}


def test_one_run_directory_per_training_seed(group):
    path = group["path"]
    assert sorted(p.name for p in path.iterdir()) == ["recipe.seeds.yaml", "results.json", "seed_0", "seed_1",
                                                      "seed_2", "summary.md"]
    assert yaml.safe_load((path / "recipe.seeds.yaml").read_text())["seeds"] == [0, 1, 2]
    initial = {}
    for seed in (0, 1, 2):
        resolved = yaml.safe_load((path / f"seed_{seed}" / "recipe.resolved.yaml").read_text())
        # The training seed changes, nothing else does: the dataset's own seed stays the recipe's.
        assert resolved["seed"] == seed and "seeds" not in resolved
        assert resolved["datasets"]["synthworld"]["seed"] == 0
        results = json.loads((path / f"seed_{seed}" / "results.json").read_text())
        assert {"zs_retrieval", "vqa", "retrieval"} <= set(results)
        initial[seed] = results["_stages"]["token"]["final_loss"]
    assert len(set(initial.values())) == 3  # different initialisation and data order per seed


def test_aggregate_results_and_tables(group):
    path = group["path"]
    aggregate = json.loads((path / "results.json").read_text())
    assert aggregate["_seeds"] == [0, 1, 2]
    per_seed = {s: json.loads((path / f"seed_{s}" / "results.json").read_text()) for s in (0, 1, 2)}
    accuracy = aggregate["vqa"]["metrics"]["accuracy"]
    values = [per_seed[s]["vqa"]["metrics"]["accuracy"] for s in (0, 1, 2)]
    expected = summarize(values)
    assert accuracy["values"] == {str(s): v for s, v in zip((0, 1, 2), values)}
    assert (accuracy["n"], accuracy["mean"], accuracy["std"]) == (3, expected.mean, expected.std)
    assert (accuracy["ci_low"], accuracy["ci_high"]) == (expected.low, expected.high)
    assert aggregate["retrieval"]["kind"] == "finetune" and aggregate["retrieval"]["metrics"]["ir_r1"]["n"] == 3
    summary = (path / "summary.md").read_text()
    row = f"| vqa | finetune | Acc | 3 | {100 * expected.mean:.2f} | {100 * expected.std:.2f} | " \
          f"[{100 * expected.low:.2f}, {100 * expected.high:.2f}] |"
    assert row in summary and "seed_2` (complete)" in summary
    paper = summary[summary.index("## Results (%)"):]
    header = paper[paper.index("| run |"):].splitlines()[0]
    assert header.startswith("| run | n | VQA acc | IR R@1 |") and "ZS-TR R@10 |" in header
    assert f"| tiny | 3 | {100 * expected.mean:.2f} ± {100 * expected.std:.2f} [{100 * expected.low:.2f}, " in paper
    printed = flat(group["printed"])
    assert f"Acc │ 3 │ {100 * expected.mean:.2f} │ {100 * expected.std:.2f} │" in printed
    assert "95% Student-t interval" in printed


def test_rerun_resumes_the_unfinished_seed_and_skips_the_finished(group):
    path = group["path"]
    seed_1 = path / "seed_1"
    before = comparable(seed_1)
    kept = {seed: checkpoint_times(path / f"seed_{seed}") for seed in (0, 2)}
    # Seed 1 stopped after its phrase stage: no sentence checkpoint, no evaluations.
    results = json.loads((seed_1 / "results.json").read_text())
    del results["_stages"]["sentence"]
    for name in ("zs_retrieval", "vqa", "retrieval"):
        del results[name]
    (seed_1 / "results.json").write_text(json.dumps(results))
    shutil.rmtree(seed_1 / "stages" / "sentence")
    shutil.rmtree(seed_1 / "finetune")
    printed = invoke(["run", "--resume", str(path), "--cache-dir", str(group["tmp"] / "cache")])
    text = flat(printed)
    assert "seed 0 (1/3): complete in" in text and "seed 2 (3/3): complete in" in text
    assert f"seed 1 (2/3) → {seed_1} (resuming)" in text
    assert "stage phrase: checkpoint found, skipped" in text
    for seed in (0, 2):
        assert checkpoint_times(path / f"seed_{seed}") == kept[seed]
    assert comparable(seed_1)[0] == before[0]  # the resumed seed ends as the uninterrupted one did
    aggregate = json.loads((path / "results.json").read_text())
    assert all(entry["complete"] for entry in aggregate["_runs"].values())
    assert sorted(p.name for p in path.iterdir() if p.is_dir()) == ["seed_0", "seed_1", "seed_2"]


def test_batch_rerun_finishes_seed_groups_per_seed(group):
    tmp = group["tmp"]
    vanilla = tmp / "vanilla.yaml"
    vanilla.write_text(textwrap.dedent(TINY).replace("name: tiny", "name: vanilla").split("stages:")[0]
                       + "seeds: [0, 1]\nstages: []\nfinetune:\n"
                         "  - {name: vqa, head: vqa, data: {view: vqa}, max_steps: 1, batch_size: 8}\n")
    args = ["run", str(group["recipe"]), str(vanilla), "--seeds", "0,1,2", "--output-dir", str(tmp / "runs"),
            "--cache-dir", str(tmp / "cache"), "--quiet"]
    first = flat(invoke(args))
    # The seeded recipe's earlier group is found and complete; the new one runs all its seeds.
    assert "skipped (seed 0 skipped, seed 1 skipped, seed 2 skipped)" in first
    assert "new (seed 0 new, seed 1 new, seed 2 new)" in first
    results = group["path"] / "seed_2" / "results.json"
    data = json.loads(results.read_text())
    del data["retrieval"]
    results.write_text(json.dumps(data))
    again = flat(invoke(args))
    assert "resumed (seed 0 skipped, seed 1 skipped, seed 2 resumed)" in again
    assert "skipped (seed 0 skipped, seed 1 skipped, seed 2 skipped)" in again
    assert "retrieval" in json.loads(results.read_text())
    # The command it prints compares the two groups, paired by seed.
    assert f"mmcore report {tmp / 'runs'}/*" in again
    out = tmp / "report"
    invoke(["report", *(str(p) for p in sorted((tmp / "runs").iterdir())), "--baseline", "vanilla", "--out", str(out),
            "--no-plots"])
    report = (out / "report.md").read_text()
    assert "| tiny | Three | T → P → S |" in report and "| vanilla | None | vanilla | – | 3 (0, 1, 2) |" in report
    assert "## Paired differences to vanilla" in report and "| tiny | 3 |" in report


@pytest.mark.parametrize(("value", "message"), [
    ("[0, 0]", "seeds must be distinct (each runs into its own seed_<n> directory); repeated: 0"),
    ("3", "seeds must be a non-empty list of integers"),
    ("[]", "seeds must be a non-empty list of integers"),
    ("[1, -2]", "seeds[1]: must be >= 0"),
])
def test_seeds_key_is_validated_with_file_and_line(tmp_path, value, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(textwrap.dedent(TINY) + f"seeds: {value}\n")
    line = len(textwrap.dedent(TINY).splitlines()) + 1
    result = CliRunner().invoke(main, ["validate", str(recipe)], terminal_width=300)
    assert result.exit_code == 2 and message in flat(result.output), result.output
    assert f"{recipe}:{line}" in flat(result.output) and "Traceback" not in result.output


@pytest.mark.parametrize("value", ["0,x", "1,1", ","])
def test_seeds_option_is_checked(tmp_path, value):
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent(TINY))
    result = CliRunner().invoke(main, ["run", str(recipe), "--seeds", value, "--output-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--seeds" in result.output
    assert not (tmp_path / "tiny").exists()


def test_single_run_retrieval_has_a_bootstrap_interval_over_queries(group, tmp_path):
    run = group["path"] / "seed_0"
    results = json.loads((run / "results.json").read_text())
    for name in ("zs_retrieval", "retrieval"):
        intervals = results[name]["intervals"]
        assert set(intervals) == set(results[name]["metrics"])
        for metric, interval in intervals.items():
            assert interval["low"] <= results[name]["metrics"][metric] <= interval["high"], (name, metric)
        # IR ranks the test captions (5 per image), TR the 8 test images.
        assert intervals["ir_r1"]["queries"] == 5 * intervals["tr_r1"]["queries"] == 40
    assert "intervals" not in results["vqa"]  # the VQA head gives no per-query values
    r1 = results["retrieval"]["intervals"]["ir_r1"]
    cell = f"{100 * results['retrieval']['metrics']['ir_r1']:.2f} ({100 * r1['low']:.2f}–{100 * r1['high']:.2f})"
    assert cell in (run / "summary.md").read_text()
    invoke(["report", str(run), "--out", str(tmp_path), "--no-plots"])
    report = (tmp_path / "report.md").read_text()
    assert f"| {cell} |" in report and "| 1 (seed 0; no ±) |" in report


def test_resuming_one_seed_alone_refreshes_the_group(group):
    path = group["path"]
    (path / "results.json").unlink()
    (path / "summary.md").unlink()
    results_path = path / "seed_2" / "results.json"
    results = json.loads(results_path.read_text())
    kept = results.pop("vqa")
    results_path.write_text(json.dumps(results))
    invoke(["run", "--resume", str(path / "seed_2"), "--cache-dir", str(group["tmp"] / "cache"), "--quiet"])
    assert json.loads(results_path.read_text())["vqa"]["metrics"] == kept["metrics"]
    aggregate = json.loads((path / "results.json").read_text())
    assert aggregate["vqa"]["metrics"]["accuracy"]["values"]["2"] == kept["metrics"]["accuracy"]
    assert aggregate["vqa"]["metrics"]["accuracy"]["n"] == 3 and (path / "summary.md").is_file()


def test_validate_names_the_seeds(group):
    printed = invoke(["validate", str(group["recipe"]), "--set", "seeds=[4, 5]"])
    assert "2 fine-tuning; seeds 4, 5" in flat(printed)


def test_a_group_matches_its_recipe_whatever_its_seeds(group):
    text = (group["path"] / "recipe.seeds.yaml").read_text()
    assert same_group(text, text.replace("seeds: [0, 1, 2]", "seeds: [0, 1, 2, 3, 4]"))
    assert "lr: 0.0001" in text and not same_group(text, text.replace("lr: 0.0001", "lr: 0.001"))


SEED_PAUSE_PLUGIN = '''
"""Pause one seed's run at one logged step (env MMCORE_TEST_PAUSE: "seed N:log:SCOPE:STEP") so it can be killed."""
import os
import time
from pathlib import Path

import mmcore


@mmcore.hookimpl
def mmcore_log(run, step, metrics):
    if os.environ.get("MMCORE_TEST_PAUSE") == f"seed {run.seed}:log:{metrics['scope']}:{step}":
        Path(os.environ["MMCORE_TEST_MARK"]).write_text("paused")
        time.sleep(600)
'''


@pytest.mark.slow  # two processes, one killed (about a minute on 2 cores); the fast test above simulates it
def test_a_group_killed_in_its_second_seed_resumes_that_seed_only(tmp_path):
    from tests.test_resume_kill import KILL, _mmcore

    (tmp_path / "pause.py").write_text(SEED_PAUSE_PLUGIN)
    recipe = tmp_path / "kill.yaml"
    recipe.write_text(KILL)
    env = {**os.environ, "MMCORE_PLUGINS": str(tmp_path / "pause.py"), "OMP_NUM_THREADS": "1"}
    group_path = tmp_path / "runs" / "kill" / "g"
    # SIGKILL at step 3 of seed 1's token stage, after its checkpoint of step 2; seed 0 is complete by then.
    _mmcore(["run", str(recipe), "--seeds", "0,1", "--output-dir", str(tmp_path / "runs"), "--run-name", "g",
             "--cache-dir", str(tmp_path / "cache"), "--quiet"], env, pause="seed 1:log:token:3",
            mark=tmp_path / "paused")
    seed_0, seed_1 = group_path / "seed_0", group_path / "seed_1"
    assert (seed_0 / "finetune" / "vqa" / "checkpoint.pt").is_file() and (seed_0 / "results.json").is_file()
    assert (seed_1 / "stages" / "token" / "partial.pt").is_file() and not (seed_1 / "results.json").exists()
    kept = checkpoint_times(seed_0)
    _mmcore(["run", "--resume", str(group_path), "--cache-dir", str(tmp_path / "cache"), "--quiet"], env)
    assert checkpoint_times(seed_0) == kept
    results = json.loads((seed_1 / "results.json").read_text())
    assert results["_stages"]["token"]["steps"] == 5 and "accuracy" in results["vqa"]["metrics"]
    aggregate = json.loads((group_path / "results.json").read_text())
    assert aggregate["vqa"]["metrics"]["accuracy"]["n"] == 2
    assert aggregate["_runs"] == {"0": {"path": "seed_0", "complete": True}, "1": {"path": "seed_1", "complete": True}}
