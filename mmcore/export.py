"""``mmcore export``: a run's model as a Hugging Face directory that ``transformers`` and ``AutoTokenizer`` load.

The backbone's plugin writes the weights (hook ``mmcore_export_backbone``: ``config.json``, ``model.safetensors``
and any side file mmcore needs to rebuild the backbone exactly); the core adds the run's tokenizer files, the
head's (fine-tuning) or the pre-training tasks' (stage) weights as ``head.safetensors`` / ``tasks.safetensors``,
``mmcore.json`` (what was exported, and the recipe lines that load it back) and a model card ``README.md``. The
directory is written under a temporary name and renamed, so it is complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmcore.errors import MMCoreError, did_you_mean
from mmcore.export_card import model_card

if TYPE_CHECKING:
    from mmcore.context import RunContext

RESOLVED = "recipe.resolved.yaml"
MANIFEST = "mmcore.json"


@dataclass
class Source:
    """The checkpoint to export: ``kind`` "stage" or "finetune", its ``name`` and the run directory it lies in."""

    checkpoint: Path
    run: Path
    kind: str
    name: str


def find_source(target: Path, resolved: dict[str, Any], stage: str | None, finetune: str | None) -> Source:
    """The checkpoint TARGET names: a checkpoint file, or a run directory's ``--stage``/``--finetune`` (by default its
    last pre-training stage, else its only fine-tuning)."""
    if target.is_file():
        if stage is not None or finetune is not None:
            raise MMCoreError(f"{target} is a checkpoint file: --stage and --finetune choose within a run directory")
        kind = {"stages": "stage", "finetune": "finetune"}.get(target.resolve().parent.parent.name)
        if kind is None:
            raise MMCoreError(f"{target}: expected <run>/stages/<name>/... or <run>/finetune/<name>/...")
        return Source(target, target.resolve().parents[2], kind, target.resolve().parent.name)
    stages = [s["name"] for s in resolved["stages"]]
    tunings = [f["name"] for f in resolved["finetune"]]
    if finetune is None and stage is None:
        if not stages and len(tunings) != 1:
            raise MMCoreError(f"{target}: the run has no pre-training stage; choose a fine-tuning with --finetune "
                              f"({', '.join(tunings) or 'none'})")
        stage, finetune = (stages[-1], None) if stages else (None, tunings[0])
    if finetune is not None:
        if finetune not in tunings:
            raise MMCoreError(f"{target}: no fine-tuning {finetune!r}{did_you_mean(finetune, tunings)}; "
                              f"fine-tunings: {', '.join(tunings) or '(none)'}")
        folder = target / "finetune" / finetune
        best = folder / "best.pt"  # the selected epoch, as mmcore evaluate reads it
        return Source(best if best.is_file() else folder / "checkpoint.pt", target, "finetune", finetune)
    assert stage is not None
    if stage not in stages:
        raise MMCoreError(f"{target}: no pre-training stage {stage!r}{did_you_mean(stage, stages)}; "
                          f"stages: {', '.join(stages) or '(none)'}")
    return Source(target / "stages" / stage / "checkpoint.pt", target, "stage", stage)


def run_of(target: Path) -> Path:
    """The run directory of TARGET (itself, or the one a checkpoint file lies in)."""
    parents = target.resolve().parents
    run = target if target.is_dir() else parents[2] if len(parents) > 2 else target
    if not (run / RESOLVED).is_file():
        raise MMCoreError(f"{target}: not a run directory nor a checkpoint inside one (no {RESOLVED})")
    return run


def check_export(source: Source, out: Path, overwrite: bool = False) -> None:
    """Before anything is loaded: ``out`` may be written and ``source``'s checkpoint exists."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise MMCoreError(f"{out} exists and is not empty; choose another directory or add --overwrite")
    if not source.checkpoint.is_file():
        raise MMCoreError(f"{source.checkpoint}: no checkpoint; is the {source.kind} {source.name!r} finished? "
                          "(mmcore run --resume RUN_DIR)")


def export(ctx: RunContext, source: Source, out: Path) -> dict[str, Any]:
    """Write the export directory ``out`` for ``source`` from the run's context ``ctx`` (opened on the CPU, see
    :func:`check_export` first); returns its manifest (``mmcore.json``)."""
    import torch

    ckpt, backbone = _load(ctx, source)
    name = str(ctx.recipe["backbone"]["name"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        with torch.no_grad():
            written = ctx.plugins.hook.mmcore_export_backbone(name=name, backbone=backbone, directory=tmp)
        if written is None:
            raise MMCoreError(f"backbone {name!r} cannot be exported: its plugin does not implement the "
                              "mmcore_export_backbone hook")
        manifest = _write_rest(tmp, ctx.tokenizer, ckpt, source, ctx.recipe, name, written)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _load(ctx: RunContext, source: Source) -> tuple[dict[str, Any], Any]:
    """(the checkpoint, its backbone in eval mode), built as the run built it."""
    from mmcore.builders import build_backbone
    from mmcore.checkpointing import check_fits, read_checkpoint

    ckpt = read_checkpoint(source.checkpoint)
    backbone = build_backbone(ctx)
    check_fits(ckpt["backbone"], backbone, "mmcore export", str(source.checkpoint))
    backbone.load_state_dict(ckpt["backbone"])
    return ckpt, backbone.eval()


def _write_rest(tmp: Path, tokenizer: Any, ckpt: dict[str, Any], source: Source, resolved: dict[str, Any],
                name: str, written: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import save_file

    from mmcore.data.fileio import write_json

    if not callable(getattr(tokenizer, "save_pretrained", None)):
        raise MMCoreError("the run's tokenizer cannot be saved (it has no save_pretrained); nothing exported")
    tokenizer.save_pretrained(str(tmp))
    head: dict[str, Any] | None = None
    if source.kind == "finetune":
        item = next(f for f in resolved["finetune"] if f["name"] == source.name)
        save_file(_cpu(ckpt["head"]), str(tmp / "head.safetensors"), metadata={"format": "pt"})
        head = {"name": item["head"], "options": item.get("options", {}), "file": "head.safetensors"}
    elif ckpt.get("tasks"):
        tensors = {f"{task}.{key}": value for task, state in ckpt["tasks"].items() for key, value in state.items()}
        save_file(_cpu(tensors), str(tmp / "tasks.safetensors"), metadata={"format": "pt"})
    backbone = {"name": name, **written.get("options", {})}
    manifest = {"format": 1, "source": str(source.checkpoint), "kind": source.kind, "name": source.name,
                "recipe": resolved.get("name"), "backbone": backbone, "head": head,
                "differences": written.get("differences", []),
                "files": sorted({*(p.name for p in tmp.iterdir()), MANIFEST, "README.md"})}
    write_json(tmp / MANIFEST, manifest)
    (tmp / "README.md").write_text(model_card(manifest, resolved, source.run), encoding="utf-8")
    return manifest


def _cpu(state: dict[str, Any]) -> dict[str, Any]:
    return {key: value.detach().to("cpu").contiguous() for key, value in state.items()}


def manifest_of(directory: Path) -> dict[str, Any]:
    """An export directory's ``mmcore.json``."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise MMCoreError(f"{directory}: not an mmcore export (no {MANIFEST})")
    return json.loads(path.read_text(encoding="utf-8"))
