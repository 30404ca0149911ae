"""The model card (``README.md``) of an ``mmcore export`` directory: how to load it, what differs, results, recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def model_card(manifest: dict[str, Any], resolved: dict[str, Any], run: Path) -> str:
    """Markdown with a Hub metadata header: loading in transformers and in mmcore, differences, results, recipe."""
    backbone = manifest["backbone"]
    options = ", ".join(f"{k}: {_yaml(v)}" for k, v in backbone.items() if k != "name")
    lines = ["---", "library_name: transformers", "tags: [mmcore, lxmert, vision-and-language]", "---", "",
             f"# {manifest['recipe']}: {manifest['kind']} {manifest['name']}", "",
             f"Exported by `mmcore export` from `{manifest['source']}`.", "", "## Load it with transformers", "",
             "```python", "from transformers import AutoTokenizer, LxmertModel", "",
             'model = LxmertModel.from_pretrained("THIS_DIRECTORY")',
             'tokenizer = AutoTokenizer.from_pretrained("THIS_DIRECTORY")', "```", "",
             "`visual_feats` are the region features the run was trained on and `visual_pos` their boxes "
             "(x1, y1, x2, y2) normalised to [0, 1].", "", "## Load it back in mmcore", "",
             "In a recipe (the side files `mmcore_extras.safetensors` and `mmcore_backbone.json`, when present, hold "
             "what transformers has no place for; with them the backbone is the exported one exactly):", "",
             "```yaml", f"backbone: {{name: {backbone['name']}, {options}, weights: THIS_DIRECTORY}}", "```", ""]
    if manifest.get("head"):
        head = manifest["head"]
        lines += [f"The `{head['name']}` head's weights are `{head['file']}` (a state dict of the mmcore head).", ""]
    if manifest.get("differences"):
        lines += ["## What transformers' LxmertModel does not reproduce", ""]
        lines += [f"- {d}" for d in manifest["differences"]] + [""]
    summary = run / "summary.md"
    if summary.is_file():
        lines += ["## Results of the run", "", summary.read_text(encoding="utf-8").strip(), ""]
    lines += ["## Recipe", "", "```yaml", yaml.safe_dump(resolved, sort_keys=False, width=110).rstrip(), "```", ""]
    return "\n".join(lines)


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
