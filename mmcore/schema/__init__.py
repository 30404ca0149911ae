"""The recipe schema: every recipe key declared once (:mod:`.keys`), the types of keys and plugin options
(:mod:`.types`), the JSON Schema made from them (:mod:`.json_schema`) and the generated docs table (:mod:`.docs`)."""

from mmcore.schema.keys import (
    DATA, FINETUNE, FINETUNE_OPTIM, MAX_TEXT_LEN, OPTIM, SECTIONS, SELECT, STAGE, TASK, TOP, UNSET, ZERO_SHOT, Key,
    Section,
)

__all__ = ["DATA", "FINETUNE", "FINETUNE_OPTIM", "MAX_TEXT_LEN", "OPTIM", "SECTIONS", "SELECT", "STAGE", "TASK", "TOP",
           "UNSET", "ZERO_SHOT", "Key", "Section"]
