"""Results over repeated seeds: the aggregate ``results.json`` and ``summary.md`` of a seed group, and their table.

Every metric of every evaluation is summarised over the seeds that have it (mean, sample std, 95% Student-t
interval, n, the value of each seed); each pre-training stage's final loss likewise.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmcore.layout import Layout
from mmcore.rundir import atomic_write_text
from mmcore.stats import Summary, summarize
from mmcore.summary import INTERVAL_LEGEND, markdown_table, summary_cell

# Fields of an evaluation's entry copied into the aggregate (from the first seed that has the evaluation).
KEPT_FIELDS = ("kind", "head", "split", "init")


def _summary_entry(values: Mapping[int, float]) -> dict[str, Any]:
    seeds = sorted(values)
    return {**summarize([values[s] for s in seeds]).as_dict(), "values": {str(s): values[s] for s in seeds}}


def aggregate_results(results_by_seed: Mapping[int, dict[str, Any]], layout: Layout) -> dict[str, Any]:
    """The aggregate of per-seed ``results.json`` dicts: per evaluation and metric (in the heads' declared order),
    a summary over seeds."""
    out: dict[str, Any] = {"_seeds": sorted(results_by_seed)}
    stages: dict[str, dict[int, float]] = {}
    evaluations: dict[str, dict[str, Any]] = {}
    for seed in sorted(results_by_seed):
        results = results_by_seed[seed]
        for stage, metrics in (results.get("_stages") or {}).items():
            if isinstance(metrics.get("final_loss"), (int, float)):
                stages.setdefault(stage, {})[seed] = float(metrics["final_loss"])
        for name, result in results.items():
            if name.startswith("_") or not isinstance(result, dict):
                continue
            entry = evaluations.setdefault(name, {**{k: result[k] for k in KEPT_FIELDS if k in result}, "values": {}})
            if "skipped" in result:
                entry.setdefault("skipped", result["skipped"])
            for metric, value in (result.get("metrics") or {}).items():
                if isinstance(value, (int, float)):
                    entry["values"].setdefault(metric, {})[seed] = float(value)
    out["_stages"] = {stage: {"final_loss": _summary_entry(values)} for stage, values in stages.items()}
    for name, entry in evaluations.items():
        values = entry.pop("values")
        entry["metrics"] = {metric: _summary_entry(values[metric]) for metric in layout.ordered_metrics(values)}
        out[name] = entry
    return out


def summary_of(entry: Mapping[str, Any]) -> Summary:
    """The :class:`Summary` stored in an aggregate metric entry."""
    return Summary(int(entry["n"]), float(entry["mean"]), entry.get("std"), entry.get("ci_low"), entry.get("ci_high"),
                   float(entry.get("level", 0.95)))


def _pct(value: float | None, scale: float = 100.0) -> str:
    return "–" if value is None else f"{scale * value:.2f}"


def aggregate_rows(aggregate: dict[str, Any], layout: Layout) -> tuple[list[str], list[list[str]]]:
    """Header and rows (one per evaluation and metric, in %): n, mean, std, 95% CI and each seed's value."""
    seeds = [str(s) for s in aggregate.get("_seeds", [])]
    header = ["evaluation", "kind", "metric", "n", "mean", "std", "95% CI", *(f"seed {s}" for s in seeds)]
    rows = []
    for name, entry in aggregate.items():
        if name.startswith("_"):
            continue
        kind = str(entry.get("kind", "")) + (" (skipped)" if "skipped" in entry and not entry["metrics"] else "")
        for metric, stats in entry["metrics"].items():
            summary, scale = summary_of(stats), layout.metric_scale(metric)
            interval = ("n = 1: no interval" if summary.low is None
                        else f"[{_pct(summary.low, scale)}, {_pct(summary.high, scale)}]")
            rows.append([name, kind, layout.metric_label(metric), str(summary.n), _pct(summary.mean, scale),
                         _pct(summary.std, scale) if summary.std is not None else "–", interval,
                         *(_pct(stats["values"].get(s), scale) for s in seeds)])
        if not entry["metrics"]:
            rows.append([name, kind, "–", "0", "–", "–", "–", *("–" for _ in seeds)])
    return header, rows


def results_summary_rows(label: str, aggregate: dict[str, Any], layout: Layout) -> tuple[list[str], list[list[str]]]:
    """Header and the one row of a seed group in the heads' results columns (:meth:`Layout.results_columns`) that
    it has, each cell ``mean ± std [95% CI]`` in % (evaluations from an earlier stage's weights, ``init``, are left
    out)."""
    entries = [e for name, e in aggregate.items() if not name.startswith("_") and "init" not in e]
    header, row = ["run", "n"], [label, str(len(aggregate.get("_runs") or aggregate.get("_seeds") or []))]
    for column in layout.results_columns():
        entry = next((e for e in entries if (e.get("kind"), e.get("head")) == (column.kind, column.head)), None)
        if entry is None:
            continue
        stats = entry["metrics"].get(column.metric)
        header.append(column.label)
        row.append("–" if stats is None else summary_cell(summary_of(stats), n_row=int(row[1]), scale=column.scale))
    return header, [row]


def stage_loss_rows(aggregate: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of each stage's final training loss over seeds."""
    header = ["stage", "n", "final loss mean", "std", "95% CI"]
    rows = []
    for stage, entry in aggregate.get("_stages", {}).items():
        s = summary_of(entry["final_loss"])
        rows.append([stage, str(s.n), f"{s.mean:.4f}", "–" if s.std is None else f"{s.std:.4f}",
                     "n = 1: no interval" if s.low is None else f"[{s.low:.4f}, {s.high:.4f}]"])
    return header, rows


def write_group_summary(path: Path, recipe: dict[str, Any], aggregate: dict[str, Any],
                        seed_dirs: Mapping[int, tuple[Path, bool]], layout: Layout) -> None:
    """Write the seed group's ``summary.md``: its seeds and their run directories, then the aggregate tables."""
    lines = [f"# {recipe['name']} over {len(seed_dirs)} seeds", "", f"Seed group: `{path}`", "",
             "Each seed is a full run of the curriculum with that training seed (initialisation, data order, masking, "
             "negatives, dropout); the datasets' own seeds are those of the recipe.", "", "## Seeds", ""]
    for seed, (run, complete) in sorted(seed_dirs.items()):
        lines.append(f"- seed {seed}: `{run.name}` ({'complete' if complete else 'incomplete'})")
    lines += ["", "## Results (%)", "", f"{INTERVAL_LEGEND}.", "",
              markdown_table(*results_summary_rows(str(recipe["name"]), aggregate, layout)), "",
              "## Evaluations (%)", "", markdown_table(*aggregate_rows(aggregate, layout)), "",
              "## Pre-training", "", markdown_table(*stage_loss_rows(aggregate)), ""]
    atomic_write_text(path / "summary.md", "\n".join(lines))
