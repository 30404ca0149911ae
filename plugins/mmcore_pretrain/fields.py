"""Batch-field sets the pre-training tasks declare in ``requires``."""

from __future__ import annotations

# Every task's loss needs one backbone forward pass, so each one requires what that pass reads.
FORWARD_FIELDS: frozenset[str] = frozenset(
    {"input_ids", "attention_mask", "visual_feats", "visual_pos", "visual_mask"}
)

# Detector outputs per region; IFRS moves them along with the features they describe.
DETECTOR_FIELDS: tuple[str, ...] = ("obj_labels", "obj_conf", "attr_labels", "attr_conf")

IGNORE_INDEX: int = -100
"""Label value that cross-entropy ignores (``mlm_labels`` outside selected tokens)."""
