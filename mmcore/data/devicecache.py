"""Feature stores held as device tensors: examples carry row references, batches are gathered on the device.

With ``features_cache: gpu`` a store's visual fields live on the training device. An example's visual fields are
:class:`RowRef` placeholders; :func:`mmcore.data.collate.Collator` turns a batch's references into one
:class:`DeviceGather` per field (a row-index tensor), and :func:`mmcore.data.collate.to_device` resolves each with
one ``index_select`` on the device. Text is still collated on the CPU.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mmcore.errors import MMCoreError

# Tables are looked up by key when unpickled, so a batch sent back from a (forked) data-loader worker carries
# a few bytes instead of a copy of every feature.
_TABLES: dict[int, DeviceTable] = {}
_KEYS = itertools.count()

# field -> (store dataset, dtype on the device after the gather)
_FIELDS: dict[str, tuple[str, torch.dtype]] = {
    "visual_feats": ("features", torch.float32),
    "visual_pos": ("boxes", torch.float32),
    "obj_labels": ("obj_ids", torch.long),
    "obj_conf": ("obj_conf", torch.float32),
    "attr_labels": ("attr_ids", torch.long),
    "attr_conf": ("attr_conf", torch.float32),
}
FIELDS = (*_FIELDS, "visual_mask")


def _lookup(key: int) -> DeviceTable:
    try:
        return _TABLES[key]
    except KeyError:
        raise MMCoreError("features_cache 'gpu': a batch refers to a feature table this process does not hold "
                          "(data-loader workers must be forked, not spawned)") from None


class DeviceTable:
    """The arrays of one feature store (features kept float16), copied to each device once, on first use."""

    def __init__(self, arrays: dict[str, np.ndarray], num_boxes: np.ndarray, name: str) -> None:
        self.name = name
        self.key = next(_KEYS)
        self._host = {k: torch.from_numpy(np.ascontiguousarray(arrays[k])) for k, _ in _FIELDS.values()}
        self._host["num_boxes"] = torch.from_numpy(np.asarray(num_boxes, dtype=np.int64))
        self.max_boxes = int(self._host["features"].shape[1])
        self._on: dict[torch.device, dict[str, Tensor]] = {}
        _TABLES[self.key] = self

    def __reduce__(self) -> tuple[Any, tuple[int]]:
        return _lookup, (self.key,)

    def tensors(self, device: torch.device) -> dict[str, Tensor]:
        """Every array of the store on ``device`` (copied at the first call for that device)."""
        device = torch.device(device)
        if device not in self._on:
            self._on[device] = {k: v.to(device) for k, v in self._host.items()}
        return self._on[device]

    def gather(self, field: str, rows: Tensor, device: torch.device) -> Tensor:
        """``field`` of the images at ``rows`` (row indices into the store), gathered on ``device``."""
        arrays = self.tensors(device)
        rows = rows.to(arrays["num_boxes"].device, non_blocking=True)
        if field == "visual_mask":
            count = arrays["num_boxes"].index_select(0, rows)
            return (torch.arange(self.max_boxes, device=rows.device)[None, :] < count[:, None]).long()
        name, dtype = _FIELDS[field]
        return arrays[name].index_select(0, rows).to(dtype)


@dataclass(frozen=True)
class RowRef:
    """One image's ``field`` in a :class:`DeviceTable`: what an example holds instead of an array."""

    table: DeviceTable
    row: int
    field: str


@dataclass
class DeviceGather:
    """A batch's ``field``: row indices into ``table``, resolved on the device by :meth:`resolve`."""

    table: DeviceTable
    field: str
    rows: Tensor

    def resolve(self, device: torch.device) -> Tensor:
        """The gathered field on ``device``."""
        return self.table.gather(self.field, self.rows, device)


def stack_refs(key: str, values: list[Any]) -> DeviceGather:
    """Collate one field's row references (all of one table) into a :class:`DeviceGather`."""
    first = values[0]
    if not all(isinstance(v, RowRef) and v.table is first.table and v.field == first.field for v in values):
        raise MMCoreError(f"field {key!r}: a batch mixes images of a 'gpu' feature cache with other images; "
                          "use one features_cache for every store a stage reads")
    return DeviceGather(first.table, first.field, torch.tensor([v.row for v in values], dtype=torch.long))


def image_refs(table: DeviceTable, row: int) -> dict[str, RowRef]:
    """The visual fields of store row ``row`` as references."""
    return {field: RowRef(table, row, field) for field in FIELDS}
