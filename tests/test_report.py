"""Table-4 ablation recipes, ``mmcore run A B C`` into one parent directory, and ``mmcore report`` over the runs."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from mmcore.cli import main, prepare_recipe
from mmcore.layout import Layout
from mmcore.plugins import load_plugins
from mmcore.report import RunInfo, columns, curriculum, load_run, loss_curves
from mmcore.runfinder import same_recipe

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Table 4's rows: (stage count, stages used, tasks) as the paper prints them, removals applied.
ALL_TASKS = "MLM MRFR MOC TITS ITM_HS IFRS TITP"
TABLE4 = {
    "vanilla": ("None", "vanilla", "–"),
    "s_only": ("Single", "S", "MLM MRFR MOC TITS ITM_HS"),
    "s_only_no_itm_hs": ("Single", "S", "MLM MRFR MOC TITS"),
    "s_only_no_itm_hs_tits": ("Single", "S", "MLM MRFR MOC"),
    "tps_joint": ("Single", "T + P + S", "MLM MRFR MOC ITM"),
    "t_s": ("Two", "T → S", "MLM MRFR MOC TITS ITM_HS IFRS"),
    "t_s_no_ifrs": ("Two", "T → S", "MLM MRFR MOC TITS ITM_HS"),
    "p_s": ("Two", "P → S", "MLM MRFR MOC TITS ITM_HS TITP"),
    "p_s_no_titp": ("Two", "P → S", "MLM MRFR MOC TITS ITM_HS"),
    "t_p_s": ("Three", "T → P → S", ALL_TASKS),
    "t_p_s_no_titp": ("Three", "T → P → S", "MLM MRFR MOC TITS ITM_HS IFRS"),
    "s_p_t": ("Three", "S → P → T", ALL_TASKS),
    "p_t_s": ("Three", "P → T → S", ALL_TASKS),
}

BASE = """\
seed: 3
log_every: 1
eval_batch_size: 64
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
zero_shot:
  - {name: zs_retrieval, head: retrieval, data: {view: retrieval, split: test}}
finetune:
  - {name: vqa, head: vqa, data: {view: vqa}, max_steps: 2, batch_size: 8}
  - {name: retrieval, head: retrieval, data: {view: retrieval}, max_steps: 2, batch_size: 4}
"""
TINY = {
    "vanilla": "stages: []\n",
    "tps_joint": """\
        stages:
          - name: joint
            data: [{view: token, weight: 1}, {view: phrase, weight: 3}, {view: sentence, weight: 5}]
            tasks: {mlm: {}, mrfr: {}, moc: {}, itm: {}}
            max_steps: 3
            batch_size: 8
            max_text_len: 12
        """,
    "t_s": """\
        stages:
          - name: token
            data: {view: token}
            tasks: {mlm: {}, mrfr: {}, moc: {}, ifrs: {shuffle_prob: 0.5}}
            max_steps: 2
            batch_size: 8
            max_text_len: 12
          - name: sentence
            data: {view: sentence}
            tasks: {mlm: {}, mrfr: {}, moc: {}, tits: {}, itm_hs: {}}
            max_steps: 2
            batch_size: 8
        """,
}


def cli(args: list[str]) -> str:
    result = CliRunner().invoke(main, args, terminal_width=240)
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def flat(text: str) -> str:
    """Output with line wrapping undone (status lines are wrapped at the console width)."""
    return " ".join(text.split())


def ablation_files() -> list[Path]:
    return sorted((ROOT / "recipes" / "ablations").glob("*.yaml"))


@pytest.mark.parametrize("path", ablation_files(), ids=lambda p: p.stem)
def test_ablation_recipe_validates_and_is_its_table4_row(path):
    cli(["validate", str(path)])
    _, plugins, resolved = prepare_recipe(path)
    assert resolved["name"] == path.stem
    # The built-in plugins' declarations (task display order, view labels) lay out Table 4's words.
    assert curriculum(resolved, Layout.of(plugins.registry)) == TABLE4[path.stem]
    # Same per-stage schedule as msp_tps for the same view (the joint stage: msp_tps's sentence batch and lr).
    _, _, main_recipe = prepare_recipe(ROOT / "recipes" / "msp_tps.yaml")
    by_view = {s["data"][0]["view"]: s for s in main_recipe["stages"]}
    for stage in resolved["stages"]:
        reference = by_view[stage["data"][0]["view"] if len(stage["data"]) == 1 else "sentence"]
        assert stage["batch_size"] == reference["batch_size"] and stage["optim"] == reference["optim"]
        if len(stage["data"]) == 1:
            assert (stage["epochs"], stage["max_text_len"]) == (reference["epochs"], reference["max_text_len"])
    assert resolved["finetune"] == main_recipe["finetune"] and resolved["backbone"] == main_recipe["backbone"]


def test_every_table4_row_has_a_recipe():
    assert {p.stem for p in ablation_files()} == set(TABLE4)


def test_joint_stage_mixes_three_views_with_itm():
    _, _, resolved = prepare_recipe(ROOT / "recipes" / "ablations" / "tps_joint.yaml")
    (stage,) = resolved["stages"]
    assert [(d["view"], d["weight"]) for d in stage["data"]] == [("token", 1), ("phrase", 3), ("sentence", 5)]


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> dict:
    """Three tiny ablation-style recipes run once by ``mmcore run A B C`` into one parent directory."""
    tmp = tmp_path_factory.mktemp("ablations")
    (tmp / "base.yaml").write_text(BASE)
    recipes = []
    for name, stages in TINY.items():
        path = tmp / f"{name}.yaml"
        path.write_text(f"name: {name}\ninclude: [base.yaml]\n" + textwrap.dedent(stages))
        recipes.append(str(path))
    args = ["run", *recipes, "--output-dir", str(tmp / "runs"), "--cache-dir", str(tmp / "cache")]
    first = cli(args)
    runs = {name: run_dir(tmp / "runs", name) for name in TINY}
    return {"tmp": tmp, "args": args, "first": first, "runs": runs}


def run_dir(parent: Path, name: str) -> Path:
    (child,) = [p for p in (parent / name).iterdir() if p.is_dir()]
    return child


def checkpoints(runs: dict[str, Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for run in runs.values() for p in run.rglob("checkpoint.pt")}


def test_run_many_runs_each_recipe_into_the_parent(batch):
    for index, name in enumerate(TINY, 1):
        assert f"recipe {index}/3: {name} → {batch['runs'][name]}" in flat(batch["first"])
        results = json.loads((batch["runs"][name] / "results.json").read_text())
        assert {"zs_retrieval", "vqa", "retrieval"} <= set(results)
    assert json.loads((batch["runs"]["t_s"] / "results.json").read_text())["_stages"]["token"]["steps"] == 2
    assert "skipped" in json.loads((batch["runs"]["vanilla"] / "results.json").read_text())["zs_retrieval"]
    assert f"mmcore report {batch['tmp'] / 'runs'}/*" in flat(batch["first"])


def test_run_many_again_skips_complete_and_resumes_partial(batch):
    before = checkpoints(batch["runs"])
    again = cli(batch["args"])
    for index, name in enumerate(TINY, 1):
        assert f"recipe {index}/3: {name} complete in {batch['runs'][name]}, skipped" in flat(again)
    assert checkpoints(batch["runs"]) == before
    # A partly done run (its last fine-tuning lost) is resumed in place, the rest skipped.
    results_path = batch["runs"]["t_s"] / "results.json"
    results = json.loads(results_path.read_text())
    kept = results.pop("retrieval")
    results_path.write_text(json.dumps(results))
    resumed = cli([*batch["args"], "--quiet"])
    statuses = [line.split("│")[2].strip() for line in resumed.splitlines() if line.count("│") == 4]
    assert [s for s in statuses if s] == ["skipped", "skipped", "resumed"]
    assert {name: run_dir(batch["tmp"] / "runs", name) for name in TINY} == batch["runs"]  # no new run directory
    after = checkpoints(batch["runs"])
    redone = [p for p in before if after[p] != before[p]]
    # Only the evaluation was lost: the fine-tuning's checkpoint is complete, so it is evaluated, not retrained.
    assert redone == []
    assert json.loads(results_path.read_text())["retrieval"] == kept


def test_run_many_ignores_keys_that_cannot_change_results(batch):
    # Workers or a checkpoint frequency do not make a new run of the same recipe; a learning rate does.
    again = cli([*batch["args"], "--set", "num_workers=1", "--set", "checkpoint_every=5"])
    for index, name in enumerate(TINY, 1):
        assert f"recipe {index}/3: {name} complete in {batch['runs'][name]}, skipped" in flat(again)
    text = (batch["runs"]["t_s"] / "recipe.resolved.yaml").read_text()
    assert "num_workers: 0" in text
    assert same_recipe(text, text.replace("num_workers: 0", "num_workers: 4"))
    assert same_recipe(text, text + "loggers: {tensorboard: {}}\n")
    assert not same_recipe(text, text.replace("seed: 0", "seed: 1"))


def test_run_many_refuses_resume_and_duplicate_names(batch):
    recipe = str(batch["tmp"] / "t_s.yaml")
    result = CliRunner().invoke(main, ["run", recipe, recipe, "--output-dir", str(batch["tmp"] / "dup")])
    assert result.exit_code == 2 and "several recipes are named 't_s'" in result.output
    assert not (batch["tmp"] / "dup").exists()
    result = CliRunner().invoke(main, ["run", recipe, recipe, "--resume", str(batch["runs"]["t_s"])])
    assert result.exit_code == 2 and "--resume continues one run directory" in result.output


def markdown_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_report_table_markdown_and_plots(batch, tmp_path):
    out = tmp_path / "report"
    printed = cli(["report", *(str(batch["tmp"] / "runs" / name) for name in TINY), "--out", str(out)])
    header, *rows = markdown_rows((out / "report.md").read_text())
    assert header[:6] == ["recipe", "stage count", "stages used", "tasks", "n (seeds)", "VQA acc"]
    assert {row[4] for row in rows} == {"1 (seed 3; no ±)"}  # one run each: n = 1 is said, no ± shown
    assert {"IR avg", "ZS-IR avg", "TR avg", "ZS-TR avg", "IR R@1", "ZS-IR R@1", "TR R@1", "ZS-TR R@1"} <= set(header)
    # Grouped by stage count as in Table 4.
    assert [row[:4] for row in rows] == [["vanilla", *TABLE4["vanilla"]], ["tps_joint", *TABLE4["tps_joint"]],
                                         ["t_s", *TABLE4["t_s"]]]
    columns = {"VQA acc": ("vqa", "accuracy"), "IR R@1": ("retrieval", "ir_r1"), "ZS-IR avg": ("zs_retrieval", "ir_mean"),
               "TR avg": ("retrieval", "tr_mean")}
    for label, (evaluation, metric) in columns.items():
        col = header.index(label)
        values = {}
        for row in rows:
            results = json.loads((batch["runs"][row[0]] / "results.json").read_text())
            value = results[evaluation].get("metrics", {}).get(metric)
            values[row[0]] = value
            interval = results[evaluation].get("intervals", {}).get(metric)
            # One seed: the value, and for retrieval its bootstrap interval over the test queries.
            expected = "–" if value is None else f"{100 * value:.2f}"
            if interval is not None:
                expected += f" ({100 * interval['low']:.2f}–{100 * interval['high']:.2f})"
            assert (interval is not None) == (value is not None and evaluation != "vqa")
            assert row[col].strip("*") == expected, (label, row)
        best = max(v for v in values.values() if v is not None)
        assert {r[0] for r in rows if r[col].startswith("**")} == {n for n, v in values.items() if v == best}
    assert rows[0][header.index("ZS-IR avg")] == "–" != rows[0][header.index("VQA acc")]  # vanilla: no ZS head
    # The printed table has the same rows (rich may wrap a long cell over lines, so compare words).
    for line in ("T + P + S", "T → S", "MLM MRFR MOC ITM", "VQA acc", "ZS-IR R@1"):
        assert all(word in printed for word in line.split()), line
    assert "3 runs" in printed and "95% Student-t interval" in flat(printed)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["downstream.png", "losses_t_s.png", "losses_tps_joint.png"]  # vanilla trains no stage
    image = pytest.importorskip("matplotlib.image")
    for name in pngs:
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
        pixels = image.imread(out / name)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 200 and pixels.std() > 0.01
        assert f"]({name})" in (out / "report.md").read_text()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_report_accepts_a_parent_of_run_directories(batch, tmp_path):
    printed = cli(["report", str(batch["tmp"] / "runs"), "--out", str(tmp_path), "--no-plots"])
    assert "3 runs" in printed and not list(tmp_path.glob("*.png"))


def test_report_over_a_glob_skips_files_beside_the_runs(batch, tmp_path):
    log = batch["tmp"] / "runs" / "sweep.log"
    log.write_text("a log kept beside the runs\n")
    try:
        dirs = sorted(str(p) for p in (batch["tmp"] / "runs").iterdir())
        printed = cli(["report", *dirs, "--out", str(tmp_path), "--no-plots"])
    finally:
        log.unlink()
    assert "3 runs" in printed and "sweep.log: not a directory, skipped" in flat(printed)
    lone = tmp_path / "notes.txt"
    lone.write_text("no runs here\n")
    only_files = CliRunner().invoke(main, ["report", str(lone), "--no-plots"])
    assert only_files.exit_code == 2 and "no run directories given" in only_files.output


def test_loss_curves_follow_metrics_jsonl(batch):
    run = load_run(batch["runs"]["t_s"])
    curves = loss_curves(run)
    assert list(curves) == ["token", "sentence"]
    assert list(curves["token"]) == ["mlm", "mrfr", "moc", "ifrs"]
    records = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    token = [r for r in records if r["scope"] == "token"]
    assert curves["token"]["mlm"] == ([r["step"] for r in token], [r["mlm"] for r in token])
    assert curves["token"]["ifrs"][0] == [1, 2]


def test_loss_curves_keep_the_last_attempt_of_a_retrained_stage(tmp_path):
    (tmp_path / "recipe.resolved.yaml").write_text(
        "name: r\nstages:\n- name: s\n  data: [{view: sentence}]\n  tasks: {mlm: {}}\nzero_shot: []\nfinetune: []\n")
    rows = [("s", 1, 5.0), ("s", 2, 4.0), ("s", 1, 6.0), ("s", 2, 3.0), ("s", 3, 2.0), ("vqa", 1, 9.0)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"scope": s, "step": k, "mlm": v}) + "\n"
                                                    for s, k, v in rows) + '{"scope": "s", "st')  # torn last line
    assert loss_curves(load_run(tmp_path)) == {"s": {"mlm": ([1, 2, 3], [6.0, 3.0, 2.0])}}
    assert load_run(tmp_path).missing == ["stage s"]


def test_report_without_matplotlib_still_writes_markdown(batch, tmp_path, monkeypatch):
    for module in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib...` raise ImportError
    result = CliRunner().invoke(main, ["report", str(batch["runs"]["t_s"]), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert 'pip install "mmcore-vlp[plots]"' in result.output
    text = (tmp_path / "report.md").read_text()
    assert 'pip install "mmcore-vlp[plots]"' in text and "| t_s | Two | T → S |" in text
    assert not list(tmp_path.glob("*.png"))


def test_report_of_a_directory_without_runs_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(main, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "holds no run directories" in result.output and "Traceback" not in result.output


def test_headline_columns_read_the_fine_tuning_from_the_final_weights():
    # A fine-tuning from an earlier stage (init:) is listed first, yet the headline VQA column is the final one's;
    # the earlier one gets its own column.
    results = {"vqa_after_token": {"kind": "finetune", "head": "vqa", "init": "token", "metrics": {"accuracy": 0.1}},
               "vqa": {"kind": "finetune", "head": "vqa", "metrics": {"accuracy": 0.5}}}
    run = RunInfo(Path("r"), {"name": "r", "stages": []}, results)
    layout = Layout.of(load_plugins().registry)
    (vqa,) = [c for c in columns([run], layout) if c.label == "VQA acc"]
    assert run.value(vqa) == 0.5
    (early,) = [c for c in columns([run], layout) if c.name == "vqa_after_token"]
    assert run.value(early) == 0.1 and early.label == "vqa_after_token accuracy"


def test_validate_takes_every_ablation_recipe_at_once(tmp_path):
    # The README's command: one call over the whole directory; a bad file among good ones still fails the call.
    recipes = [str(p) for p in ablation_files()]
    result = CliRunner().invoke(main, ["validate", *recipes], terminal_width=240)
    assert result.exit_code == 0, result.output
    assert flat(result.output).count("ok ") == len(recipes) == 13
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstages: [{name: s, data: {view: sentence}, tasks: {mlmm: {}}}]\n")
    result = CliRunner().invoke(main, ["validate", recipes[0], str(bad)], terminal_width=240)
    assert result.exit_code == 2
    assert "ok " in result.output and "mlmm" in result.output and "1 of 2 recipes are invalid" in flat(result.output)


def test_a_runs_plugin_file_is_loaded_for_its_layout_and_a_broken_one_is_named(tmp_path):
    from mmcore.comparison import Row
    from mmcore.report import layout_for

    good = tmp_path / "my_head.py"
    good.write_text(textwrap.dedent("""
        import mmcore
        from mmcore.api import Head, Metric

        class Mine(Head):
            name = "mine"
            metrics = (Metric("hits", "Hits", "Mine hits", results=True, headline=1),)

        @mmcore.hookimpl
        def mmcore_register_heads(registry):
            registry.add_head(Mine)
    """))
    row = Row("r", {"name": "r", "plugins": [str(good)]}, {}, tmp_path, [0])
    assert "Mine hits" in [c.label for c in layout_for([row]).headline_columns()]
    broken = tmp_path / "my_broken_head.py"
    broken.write_text("def broken(:\n")
    notes: list[str] = []
    layout = layout_for([Row("b", {"name": "b", "plugins": [str(broken)]}, {}, tmp_path, [0])], notes.append)
    assert "Mine hits" not in [c.label for c in layout.headline_columns()] and "VQA acc" in [
        c.label for c in layout.headline_columns()]
    assert len(notes) == 1 and "my_broken_head.py" in notes[0] and "shown by name" in notes[0]
