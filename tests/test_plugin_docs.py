"""docs/plugins.md is the plugin contract: every hook and public API name is on it, its generated options
table matches the installed built-ins, its third-party test file is the real one, and its examples work."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import numpy as np
import torch

import mmcore.api
import mmcore.hookspecs
from mmcore.data.collate import Collator
from mmcore.data.store import write_feature_store
from mmcore.describe import built_in_markdown, update
from mmcore.testing import TinySource, check_dataset, check_head, check_task, tiny_info, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "plugins.md"
TEXT = PAGE.read_text(encoding="utf-8")


def public_api() -> set[str]:
    """``mmcore.api.__all__`` and every class, function or constant the module itself defines."""
    own = {name for name, value in vars(mmcore.api).items() if not name.startswith("_") and (
        getattr(value, "__module__", None) == "mmcore.api" and (inspect.isclass(value) or inspect.isfunction(value))
        or (name.isupper() and isinstance(value, (str, frozenset))))}
    return own | set(mmcore.api.__all__)


def test_every_hook_and_public_api_name_is_documented():
    hooks = {name for name, _ in inspect.getmembers(mmcore.hookspecs, inspect.isfunction) if name.startswith("mmcore_")}
    assert len(hooks) >= 10
    missing = sorted(name for name in hooks | public_api() if f"`{name}`" not in TEXT)
    assert not missing, f"docs/plugins.md does not document: {', '.join(missing)}"


def test_api_docstrings_point_to_the_page():
    assert "docs/plugins.md" in (mmcore.api.__doc__ or "") and "DESIGN.md" not in inspect.getsource(mmcore.api)
    for cls in (mmcore.api.Task, mmcore.api.Head, mmcore.api.Dataset):
        assert "docs/plugins.md" in (cls.__doc__ or ""), cls


def test_generated_options_are_current():
    assert update(PAGE, built_in_markdown()) == TEXT, "run: python -m mmcore.describe docs/plugins.md"


def test_the_third_party_test_file_is_shown_as_it_is():
    test_file = ROOT / "tests" / "third_party" / "mmcore_grounded_count" / "test_grounded_count.py"
    assert test_file.read_text() in TEXT and len(test_file.read_text().splitlines()) <= 15


def examples() -> dict:
    namespace: dict = {}
    for block in re.findall(r"```python\n(.*?)```", TEXT, flags=re.S):
        if "mmcore.testing" not in block:  # the third-party test file needs its plugin's package
            exec(compile(block, str(PAGE), "exec"), namespace)
    return namespace


def test_the_task_head_backbone_and_logger_examples_work(tmp_path):
    ns = examples()
    assert "gradient reaches the backbone" in check_task(ns["ITC"]).checked
    assert "evaluate returns finite metrics with the primary one" in check_head(ns["RegionCount"]).checked
    info = tiny_info()
    backbone = ns["build_bag_of_regions"](ns["BAG_DEFAULTS"], info)
    out = backbone.encode(Collator(tiny_tokenizer(), 16)([TinySource(info)[i] for i in range(3)]))
    assert out.pooled.shape == (3, 64) and out.vision.shape == (3, info.max_regions, 64)
    with torch.device("meta"):
        assert ns["build_bag_of_regions"](ns["BAG_DEFAULTS"], info).words.weight.is_meta
    logger = ns["CsvLogger"](tmp_path)
    logger.mmcore_log(None, 3, {"scope": "token", "step": 3, "loss": 0.5})
    logger.close()
    assert (tmp_path / "losses.csv").read_text() == "token,3,0.5\n"


def test_the_dataset_example_works(tmp_path):
    ns = examples()
    info, source = tiny_info(), TinySource(tiny_info())
    ids = list(source.image_ids())
    images = [source.image(i) for i in ids]
    field = lambda key: np.stack([image[key] for image in images])  # noqa: E731
    write_feature_store(tmp_path / "features.h5", ids, field("visual_feats"), field("visual_pos"),
                        np.full(len(ids), info.max_regions), field("obj_labels"), field("obj_conf"),
                        field("attr_labels"), field("attr_conf"))
    pairs = [[source[i]["img_id"], source[i]["text"]] for i in range(len(source))]
    (tmp_path / "captions.json").write_text(json.dumps({"train": pairs[:10], "val": pairs[10:]}))
    tiny_tokenizer().save_pretrained(str(tmp_path / "tokenizer"))
    report = check_dataset(ns["CaptionFolder"], {"root": str(tmp_path)}, tmp_path / "cache", splits=("train", "val"))
    assert "every view's examples carry its declared fields, deterministically" in report.checked
