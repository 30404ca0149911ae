"""Model selection never on the reported data: ``mmcore validate`` rejects a fine-tuning whose selection split
reads a file its evaluation split also reads (the same split, or splits a dataset says share files, see
:meth:`mmcore.api.Dataset.split_files`), unless ``select.allow_same_split: true`` accepts it; the run then
records a warning in ``results.json``."""

from __future__ import annotations

from typing import Any

from mmcore.checker import Checker
from mmcore.errors import MMCoreError
from mmcore.registry import Registry

SAME_SPLIT = "allow_same_split"  # the optional select key that accepts selecting on the reported data
WARNING = "_selection_warning"  # where a resolved fine-tuning carries the warning results.json records


def check_selection(c: Checker, item: dict[str, Any], datasets: dict[str, dict[str, Any]]) -> None:
    """Fail, or with ``select.allow_same_split`` mark ``item`` with a warning, when its selection and evaluation
    data share a file."""
    key = (*item["_key"], "select")
    allowed = item["select"].get(SAME_SPLIT, False)
    if not isinstance(allowed, bool):
        c.fail((*key, SAME_SPLIT), f"must be true or false, got {allowed!r}")
        return
    shared = shared_data(c.registry, item, datasets)
    if not shared:
        return
    what = (f"fine-tuning {item['name']!r} selects its epoch on split {item['select']['split']!r}, which reads data "
            f"its evaluation split {item['eval_split']!r} also reads ({', '.join(shared)})")
    if allowed:
        item[WARNING] = f"{what}; accepted by select.{SAME_SPLIT}: the reported metrics were selected on themselves"
    else:
        c.fail(key, f"{what}: the reported figure would be chosen on itself. Select on held-out data (see "
                    f"docs/protocol.md), or set select.{SAME_SPLIT}: true to accept it (results.json then records a "
                    "warning)")


def shared_data(registry: Registry, item: dict[str, Any], datasets: dict[str, dict[str, Any]]) -> list[str]:
    """The files (or the split) a fine-tuning's selection and evaluation read both; empty when it selects
    nothing or its dataset does not say which files a split reads."""
    select = item["select"]
    if select.get("every_epoch") is not True or not item["data"]:
        return []
    data = item["data"][0]
    chosen, reported = str(select["split"]), str(item["eval_split"])
    if chosen == reported:
        return [f"split {chosen!r} of {data['dataset']}/{data['view']}"]
    try:
        split_files = getattr(registry.get("dataset", data["dataset"]).factory, "split_files", None)
    except MMCoreError:
        return []  # an unknown dataset is reported where it is named
    if split_files is None:
        return []
    options = datasets.get(data["dataset"], {})
    first, second = (split_files(options, data["view"], split) for split in (chosen, reported))
    if first is None or second is None:
        return []
    return sorted(set(first) & set(second))
