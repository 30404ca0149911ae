"""``mmcore report`` over seed groups: mean ± std [95% t interval] with n, and ``--baseline`` paired differences,
checked against numbers computed by hand (the run directories are written here, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from mmcore.cli import main
from mmcore.report import Column, _error_bar, collect

# VQA accuracy per seed. Hand computation (t_{0.975,2} = 4.302653, sqrt(3) = 1.7320508):
#   A: mean 0.53, std sqrt(0.0026 / 2) = 0.0360555, half-width 4.302653 * 0.0360555 / 1.7320508 = 0.0895670
#   B: mean 0.6166667, std sqrt(0.00086667 / 2) = 0.0208167, half-width 0.0517114
#   B - A by seed: 0.10, 0.09, 0.07: mean 0.0866667, std 0.0152753, half-width 0.0379458 -> excludes zero
#   C - A by seed: 0.05, -0.02, 0.01: mean 0.0133333, std 0.0351188, half-width 0.0872395 -> includes zero
ACCURACY = {"A": [0.50, 0.52, 0.57], "B": [0.60, 0.61, 0.64], "C": [0.55, 0.50, 0.58]}
# A's zero-shot retrieval is skipped in seed 2 (a recipe's metric can have fewer values than the row has seeds).
IR_R1 = {"A": [0.10, 0.20, None], "B": [0.30, 0.30, 0.36], "C": [0.2, 0.1, 0.3]}


def recipe(name: str, seed: int) -> dict:
    return {"name": name, "seed": seed, "stages": [], "zero_shot": [{"name": "zs", "head": "retrieval"}],
            "finetune": [{"name": "vqa", "head": "vqa"}]}


def results(accuracy: float, ir_r1: float | None) -> dict:
    out = {"vqa": {"kind": "finetune", "head": "vqa", "split": "test", "metrics": {"accuracy": accuracy}}}
    zero_shot = {"metrics": {"ir_r1": ir_r1}} if ir_r1 is not None else {"skipped": "no pre-trained head"}
    out["zs"] = {"kind": "zero_shot", "head": "retrieval", "split": "test", **zero_shot}
    return out


def write_run(path: Path, name: str, seed: int, accuracy: float, ir_r1: float | None) -> None:
    path.mkdir(parents=True)
    (path / "recipe.resolved.yaml").write_text(yaml.safe_dump(recipe(name, seed)))
    (path / "results.json").write_text(json.dumps(results(accuracy, ir_r1)))


def write_group(root: Path, name: str) -> Path:
    group = root / name / "g"
    for seed in range(3):
        write_run(group / f"seed_{seed}", name, seed, ACCURACY[name][seed], IR_R1[name][seed])
    (group / "recipe.seeds.yaml").write_text(yaml.safe_dump({**recipe(name, 0), "seeds": [0, 1, 2]}))
    return group


def markdown_rows(text: str, after: str = "") -> list[list[str]]:
    lines = [line for line in text[text.index(after):].splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_report_over_seed_groups_with_a_baseline(tmp_path):
    root = tmp_path / "runs"
    for name in ACCURACY:
        write_group(root, name)
    # A single run of a fourth recipe (seed 1 only): n = 1, paired with the baseline's seed 1 alone.
    write_run(root / "D" / "one", "D", 1, 0.70, None)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(root), "--baseline", "A", "--out", str(out), "--no-plots"],
                                terminal_width=400)
    assert result.exit_code == 0, result.output
    text = (out / "report.md").read_text()
    header, *rows = markdown_rows(text)[: 1 + 4]
    table = {row[0]: dict(zip(header, row)) for row in rows}
    assert table["A"]["n (seeds)"] == "3 (0, 1, 2)" and table["D"]["n (seeds)"] == "1 (seed 1; no ±)"
    assert table["A"]["VQA acc"] == "53.00 ± 3.61 [44.04, 61.96]"
    assert table["B"]["VQA acc"] == "61.67 ± 2.08 [56.50, 66.84]"
    assert table["D"]["VQA acc"] == "**70.00**"  # the best mean is bold; one seed: no ±
    # A has zero-shot IR R@1 in two of its three seeds: t_{0.975,1} = 12.706205, std 0.0707107, half 0.6353102.
    assert table["A"]["ZS-IR R@1"] == "15.00 ± 7.07 [-48.53, 78.53] (n=2)"
    assert table["D"]["ZS-IR R@1"] == "–"
    diff_header, *diffs = markdown_rows(text, after="## Paired differences to A")[: 1 + 3]
    paired = {row[0]: dict(zip(diff_header, row)) for row in diffs}
    assert set(paired) == {"B", "C", "D"}  # the baseline itself has no row
    assert paired["B"]["n pairs"] == "3" and paired["B"]["VQA acc"] == "+8.67 [+4.87, +12.46] *"
    assert paired["C"]["VQA acc"] == "+1.33 [-7.39, +10.06]"  # the interval includes zero: not marked
    assert paired["D"]["n pairs"] == "1" and paired["D"]["VQA acc"] == "+18.00 (n=1)"
    # Paired over the two seeds where A has the metric: B - A = 0.20, 0.10.
    assert paired["B"]["ZS-IR R@1"] == "+15.00 [-48.53, +78.53]"
    printed = " ".join(result.output.split())
    assert "paired differences to A" in printed and "+8.67 [+4.87, +12.46] *" in printed
    assert "* marks an interval that excludes zero" in printed


def test_error_bars_are_the_intervals_of_the_table(tmp_path):
    rows = {row.label: row for row in collect([write_group(tmp_path, "A"), write_group(tmp_path, "B")])}
    vqa = Column("VQA acc", "finetune", "vqa", "accuracy")
    mean, below, above = _error_bar(rows["A"], vqa)
    assert (round(mean, 4), round(below, 4), round(above, 4)) == (53.0, 8.9567, 8.9567)


def test_unknown_baseline_is_a_clear_error(tmp_path):
    write_group(tmp_path, "A")
    result = CliRunner().invoke(main, ["report", str(tmp_path / "A"), "--baseline", "Z", "--no-plots",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "--baseline 'Z' is none of the reported recipes: A" in result.output
    assert "Traceback" not in result.output
