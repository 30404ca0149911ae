"""``mmcore new recipe --dataset DIR``: a recipe that pre-trains on a prepared ``pairs`` dataset (token -> phrase
-> sentence, the stages its annotations allow) and fine-tunes every downstream task it has annotations for."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from mmcore import MMCoreError
from mmcore.data.fileio import atomic_path
from mmcore.data.prepare import read_manifest

# Fine-tuning settings of recipes/base/downstream.yaml and downstream_all.yaml (batch 32, the paper's epochs).
_FINETUNE = {
    "vqa": {"epochs": 6, "lr": 5.0e-4}, "gqa": {"epochs": 5, "lr": 5.0e-4},
    "nlvr2": {"epochs": 8, "lr": 1.0e-4}, "retrieval": {"epochs": 8, "lr": 1.0e-4},
}


@click.group(name="new")
def new() -> None:
    """Write starting files (a recipe for your own data)."""


@new.command(name="recipe")
@click.option("--dataset", "dataset", required=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="A prepared dataset directory (mmcore data prepare SOURCE DIR).")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the recipe (default: <dataset name>.yaml here).")
@click.option("--overwrite", is_flag=True, help="Replace an existing recipe file.")
def recipe_command(dataset: Path, output: Path | None, overwrite: bool) -> None:
    """Write a recipe that pre-trains LXMERT-S (CPU width) on DATASET and fine-tunes on it."""
    manifest = read_manifest(dataset)
    output = output or Path(f"{dataset.resolve().name}.yaml")
    if output.exists() and not overwrite:
        raise MMCoreError(f"{output} already exists; pass --overwrite to replace it")
    text = f"# Pre-training and fine-tuning on {dataset.resolve()} (written by `mmcore new recipe`).\n"
    text += yaml.safe_dump(recipe_for(dataset.resolve(), manifest, output.stem), sort_keys=False)
    with atomic_path(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}; run it with `mmcore run {output}`")


def recipe_for(directory: Path, manifest: dict[str, Any], name: str) -> dict[str, Any]:
    """The recipe as a mapping: the stages and fine-tunings the dataset's annotations support."""
    kinds = set(manifest["counts"])
    labels = bool(manifest["detector_labels"])
    detector_tasks = {"moc": {}} if labels else {}  # object labels exist only when a detector extracted them
    stages = []
    if labels:
        stages.append(_stage("token", {"mlm": {}, "mrfr": {}, **detector_tasks}, 5, 32))
    if "phrases" in kinds:
        stages.append(_stage("phrase", {"mlm": {}, "mrfr": {}, **detector_tasks, **({"titp": {}} if labels else {})},
                             10, 64))
    if "captions" in kinds:
        stages.append(_stage("sentence", {"mlm": {}, "mrfr": {}, **detector_tasks,
                                          **({"tits": {}} if labels else {}), "itm_hs": {}}, 10, 64))
    for stage in stages[1:]:
        stage["init"] = "previous"
    finetune = []
    for head, kind in (("vqa", "vqa"), ("gqa", "gqa"), ("nlvr2", "nlvr2"), ("retrieval", "captions")):
        if kind in kinds or (head == "retrieval" and "retrieval" in kinds):
            split_ok = "train" in manifest["counts"].get(kind if kind in kinds else "retrieval", {})
            if split_ok:
                s = _FINETUNE[head]
                finetune.append({"name": head, "head": head, "data": {"view": head}, "epochs": s["epochs"],
                                 "batch_size": 32, "optim": {"lr": s["lr"], "warmup": 0.1, "clip": 5.0}})
    return {"name": name, "seed": 0, "include": ["base/lxmert_s_cpu.yaml"],
            "datasets": {"pairs": {"root": str(directory)}}, "stages": stages, "finetune": finetune}


def _stage(name: str, tasks: dict[str, Any], epochs: int, batch: int) -> dict[str, Any]:
    return {"name": name, "data": {"view": name}, "tasks": tasks, "epochs": epochs, "batch_size": batch,
            "max_text_len": 40, "optim": {"lr": 5.0e-4}}
