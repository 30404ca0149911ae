"""A third-party head, installed by entry point, is a peer of the built-in ones in every results table: its own
metrics, labels and columns appear in the end-of-run output, ``summary.md`` and ``mmcore report``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import invoke

from mmcore.api import Dataset, Head, Metric
from mmcore.errors import PluginError
from mmcore.layout import Layout
from mmcore.plugins import load_plugins
from mmcore.registry import Registry

RECIPE = """\
name: share
seed: 1
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 1}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}}, max_steps: 2, batch_size: 8}
finetune:
  - {name: share, head: grounded_share, data: {view: vqa, limit: 16}, epochs: 1, batch_size: 8}
  - {name: vqa, head: vqa, data: {view: vqa, limit: 16}, epochs: 1, batch_size: 8}
"""


@pytest.fixture
def share_head(third_party):
    """Also installs ``mmcore-grounded-share`` 0.1.0, whose entry point registers the ``grounded_share`` head."""
    info = third_party / "mmcore_grounded_share-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mmcore-grounded-share\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[mmcore]\nshare = mmcore_grounded_share.plugin\n")
    return third_party


def pct(value: float) -> str:
    return f"{100 * value:.2f}"


def test_the_head_declares_its_columns_and_comes_first_by_its_order(share_head):
    layout = Layout.of(load_plugins().registry)
    labels = [c.label for c in layout.results_columns()]
    assert labels[:4] == ["Grounded share ±0.1", "Grounded share error", "Grounded examples", "VQA acc"]
    assert "ZS-Grounded share ±0.1" in labels  # a zero-shot evaluation of it would get its own column
    assert [c.label for c in layout.headline_columns()][:2] == ["Grounded share ±0.1", "ZS-Grounded share ±0.1"]
    assert layout.metric_label("share_within") == "Within 0.1"


def test_its_metrics_appear_in_the_end_of_run_tables_summary_and_report(share_head, tmp_path):
    recipe = tmp_path / "share.yaml"
    recipe.write_text(RECIPE)
    printed = invoke(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "a",
                      "--cache-dir", str(tmp_path / "cache"), "--quiet"], width=400)
    path = tmp_path / "runs" / "share" / "a"
    results = json.loads((path / "results.json").read_text())
    check_end_of_run_and_summary(path, results, printed)
    check_report(path, results, tmp_path / "report")


def check_end_of_run_and_summary(path: Path, results: dict, printed: str) -> None:
    metrics = results["share"]["metrics"]
    assert set(metrics) == {"share_within", "share_error", "examples"} and results["share"]["head"] == "grounded_share"
    within, error = pct(metrics["share_within"]), pct(metrics["share_error"])
    examples = f"{metrics['examples']:.2f}"  # declared percent=False: shown as it is
    assert metrics["examples"] == int(metrics["examples"]) > 1  # every question of the test split
    vqa = pct(results["vqa"]["metrics"]["accuracy"])
    # End-of-run output: the per-evaluation table labels its metrics, the one-row table has its columns first.
    lines = printed.splitlines()
    header = next(line for line in lines if "Within 0.1" in line)
    assert "Abs error" in header and header.index("Within 0.1") < header.index("Acc")
    main = lines[next(i for i, line in enumerate(lines) if "main results (%)" in line):]
    columns = next(line for line in main if "Grounded share ±0.1" in line)
    assert columns.index("Grounded share ±0.1") < columns.index("Grounded share error") < columns.index("VQA acc")
    row = next(line for line in main if line.lstrip("│ ").startswith("share"))
    assert re.findall(r"\d+\.\d\d", row) == [within, error, examples, vqa]
    assert "Tables 2-3" not in printed
    # summary.md: the same row, and the evaluation table with its labels.
    summary = (path / "summary.md").read_text()
    assert "| run | Grounded share ±0.1 | Grounded share error | Grounded examples | VQA acc |" in summary
    assert f"| share | {within} | {error} | {examples} | {vqa} |" in summary
    evaluation = next(line for line in summary.splitlines() if line.startswith("| evaluation |"))
    assert evaluation == "| evaluation | kind | split | Within 0.1 | Abs error | Examples | Acc |"
    assert f"| share | finetune | test | {within} | {error} | {examples} | – |" in summary


def check_report(path: Path, results: dict, out: Path) -> None:
    printed = invoke(["report", str(path), "--out", str(out), "--no-plots"], width=400)
    text = (out / "report.md").read_text()
    header = next(line for line in text.splitlines() if line.startswith("| recipe |"))
    assert header.index("Grounded share ±0.1") < header.index("VQA acc")
    assert "share error" not in header  # a metric it does not mark headline stays out of the comparison
    assert "Grounded share ±0.1: share of examples whose predicted grounded share is within 0.1" in text
    row = next(line for line in text.splitlines() if line.startswith("| share |"))
    assert pct(results["share"]["metrics"]["share_within"]) in row
    assert "Grounded share ±0.1" in printed


@pytest.mark.parametrize(("metrics", "message"), [
    ((Metric("a", primary=True), Metric("b", primary=True)), "marks 2 metrics primary (a, b)"),
    ((Metric("a"), Metric("a", "A again")), "declares metric 'a' twice"),
    ((Metric("a", headline=1), Metric("b", headline=1)), "headline places must be distinct"),
    (("accuracy",), "'metrics' must be a tuple of mmcore.api.Metric"),
])
def test_a_head_whose_metrics_cannot_be_shown_is_rejected_naming_it(metrics, message):
    bad = type("Bad", (Head,), {"name": "bad_head", "metrics": metrics})
    registry = Registry().scoped("mine")
    with pytest.raises(PluginError) as info:
        registry.add_head(bad)
    assert "head 'bad_head' of plugin 'mine'" in str(info.value) and message in str(info.value)


def test_a_dataset_labelling_a_view_it_lacks_is_rejected():
    bad = type("Bad", (Dataset,), {"name": "bad_data", "views": {"token": frozenset()}, "view_labels": {"tok": "T"}})
    with pytest.raises(PluginError, match="'view_labels' names view 'tok', which is not among its views"):
        Registry().add_dataset(bad)
