"""Every key a recipe may write, declared once: section by section, each with its type, default and one-line help.

:mod:`mmcore.validate` checks recipes and fills defaults from these declarations, ``mmcore show`` prints what
they resolve to, ``mmcore schema`` turns them into a JSON Schema and ``docs/recipe-keys.md`` is generated from
them. Plugin options (tasks, heads, datasets, backbones, loggers) are declared by each plugin, not here.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()  # a key with no fixed default


@dataclass(frozen=True)
class Key:
    """One recipe key. ``default`` is UNSET when there is none or it is computed (``computed`` says how);
    ``filled`` is false for keys that appear in the resolved recipe only when written; ``section`` names the
    nested section a mapping (or, with ``many``, a list of mappings) follows; ``plugins`` the plugin kind whose
    names a mapping's keys are (``task``) or whose options sit beside ``name`` (``backbone``)."""

    name: str
    type: Any
    help: str
    default: Any = UNSET
    computed: str = ""
    filled: bool = True
    minimum: float | None = None
    exclusive: bool = False
    maximum: float | None = None
    pattern: str | None = None
    section: str | None = None
    many: bool = False
    plugins: str | None = None
    required: bool = False

    @property
    def integer(self) -> bool:
        """Whether the key takes an integer (possibly null)."""
        return self.type is int or self.type == (int | None)

    def default_text(self) -> str:
        """The default as the docs write it."""
        if self.default is UNSET:
            if self.section is not None and not self.computed and not self.required:
                return f"its keys' defaults (see {self.section})"
            return self.computed or ("required" if self.required else "(not set)")
        if self.default is None:
            return "null"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return repr(self.default) if isinstance(self.default, str) else str(self.default)


@dataclass(frozen=True)
class Section:
    """A mapping of recipe keys, e.g. a stage or a fine-tuning entry."""

    name: str
    help: str
    keys: dict[str, Key] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Key:
        return self.keys[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys)

    def defaults(self) -> dict[str, Any]:
        """``{name: default}`` of every key resolve fills in with a fixed default, in declaration order."""
        return {k.name: copy.deepcopy(k.default) for k in self.keys.values() if k.filled and k.default is not UNSET}

    def with_defaults(self, name: str, help: str, **defaults: Any) -> Section:
        """A copy with other defaults (a fine-tuning's optimiser starts from other values than a stage's)."""
        keys = {k: replace(key, default=defaults[k]) if k in defaults else key for k, key in self.keys.items()}
        return Section(name, help, keys)


def _section(name: str, help: str, *keys: Key) -> Section:
    return Section(name, help, {key.name: key for key in keys})


DEVICE_PATTERN = r"^(auto|cpu|mps|cuda(:\d+)?)$"
PRECISIONS = ("fp32", "bf16", "auto")
NONFINITE = ("stop", "skip")  # what a step with a non-finite loss does: stop the run, or skip its update
MAX_TEXT_LEN = 20  # tokens per text, [CLS] and [SEP] included

OPTIM = _section(
    "optim", "AdamW with linear warm-up then linear decay, and the guard against non-finite losses",
    Key("lr", float, "peak learning rate", 1.0e-4, minimum=0, exclusive=True),
    Key("weight_decay", float, "AdamW weight decay (not on biases and LayerNorm)", 0.01, minimum=0),
    Key("warmup", float, "fraction of the steps spent warming up linearly", 0.05, minimum=0, maximum=1),
    Key("clip", float | None, "gradient-norm clipping (null: none)", 1.0, minimum=0, exclusive=True),
    Key("betas", list[float], "AdamW betas, two numbers in [0, 1)", [0.9, 0.999]),
    Key("eps", float, "AdamW epsilon", 1.0e-6, minimum=0, exclusive=True),
    Key("nonfinite", Literal["stop", "skip"], "a step whose loss is NaN/inf: stop the run, or skip its update",
        "stop"),
)
FINETUNE_OPTIM = OPTIM.with_defaults("finetune optim", "a fine-tuning's optimiser (other defaults than a stage's)",
                                     lr=5.0e-5, warmup=0.1, clip=5.0)

DATA = _section(
    "data", "one data view: a dataset's view and split (a stage may list several, mixed by weight)",
    Key("dataset", str, "a dataset named under the top-level datasets", computed="the only dataset declared"),
    Key("view", str, "one of the dataset's views (mmcore list-datasets)", required=True),
    Key("split", str, "the split to read", computed="train (zero_shot: test)"),
    Key("weight", float, "sampling weight among a stage's data views", 1.0, minimum=0, exclusive=True),
    Key("limit", int | None, "read only the first N examples (null: all)", None, minimum=1),
)

SCHEDULE = (  # the keys a stage and a fine-tuning share
    Key("epochs", int, "passes over the data", 1, minimum=0),
    Key("batch_size", int, "global batch: divisible by processes x grad_accum", 32, minimum=1),
    Key("max_steps", int | None, "stop after this many optimiser steps (null: epochs decide)", None, minimum=1),
    Key("max_text_len", int, "tokens per text, [CLS] and [SEP] included", MAX_TEXT_LEN, minimum=3),
    Key("grad_accum", int, "micro-batches per optimiser step", 1, minimum=1),
    Key("checkpoint_every", int, "checkpoint every N steps (0: only at the end)", computed="the top-level's",
        minimum=0),
    Key("num_workers", int, "data-loader worker processes", computed="the top-level's", minimum=0),
)


def batch_size_rule(batch_size: int, world_size: int, grad_accum: int) -> str:
    """The message for a ``batch_size`` that does not split into equal micro-batches of ``grad_accum`` per process."""
    return (f"batch_size {batch_size} must be divisible by processes × grad_accum = {world_size} × {grad_accum} = "
            f"{world_size * grad_accum}: every optimiser step takes batch_size samples, as per-process "
            "micro-batches of batch_size / (processes × grad_accum)")


TASK = _section(
    "task", "a pre-training task's options: the task's own (mmcore describe TASK) and its loss weight",
    Key("weight", float, "the task loss's weight in the stage's sum", 1.0, minimum=0),
)

STAGE = _section(
    "stage", "one pre-training stage",
    Key("name", str, "the stage's name (checkpoints, logs, results)", computed="stage<N>"),
    Key("init", str, "previous (the weights so far) | none (fresh) | a checkpoint path", "previous"),
    Key("data", dict, "a data view, or a list of them", section="data", required=True),
    *SCHEDULE,
    Key("optim", dict, "the optimiser", section="optim"),
    Key("tasks", dict, "task name -> its options and weight (mmcore list-tasks)", plugins="task", required=True),
)

SELECT = _section(
    "select", "model selection: evaluate on a split after every epoch and keep the best epoch by the head's metric",
    Key("split", str, "the split that selects the epoch", "val"),
    Key("every_epoch", bool, "evaluate and keep the best epoch (false: keep the last)", True),
    Key("allow_same_split", bool, "accept selecting on data the evaluation split also reads (a warning is "
        "recorded)", False, filled=False),
)

FINETUNE = _section(
    "finetune", "one downstream fine-tuning, from the final pre-trained weights (or a stage's: init)",
    Key("name", str, "the fine-tuning's name", computed="finetune_<head>"),
    Key("head", str, "the head (mmcore list-heads)", required=True),
    Key("init", str, "a pre-training stage whose final weights it starts from", computed="the final weights",
        filled=False),
    Key("options", dict, "the head's options (mmcore describe HEAD)", computed="the head's defaults",
        plugins="head"),
    Key("data", dict, "one data view", section="data", required=True),
    Key("eval_split", str, "the split whose metrics are reported", "test"),
    Key("select", dict, "model selection", section="select"),
    # The default epochs are the head's own (its class attribute ``epochs``), filled in by validation.
    *(replace(k, default=UNSET, computed="the head's epochs") if k.name == "epochs" else k for k in SCHEDULE),
    Key("optim", dict, "the optimiser", section="finetune optim"),
)

ZERO_SHOT = _section(
    "zero_shot", "one evaluation of the pre-trained model without fine-tuning",
    Key("name", str, "the evaluation's name", computed="zero_shot_<head>"),
    Key("head", str, "the head (mmcore list-heads)", required=True),
    Key("init", str, "a pre-training stage whose final weights it evaluates", computed="the final weights",
        filled=False),
    Key("options", dict, "the head's options (mmcore describe HEAD)", computed="the head's defaults",
        plugins="head"),
    Key("data", dict, "one data view", section="data", required=True),
    Key("max_text_len", int, "tokens per text, [CLS] and [SEP] included", MAX_TEXT_LEN, minimum=3),
)

TOP = _section(
    "recipe", "the top level of a recipe",
    Key("name", str, "run name", computed="the recipe file's stem"),
    Key("description", str, "free text", filled=False),
    Key("seed", int, "random seed", 0, minimum=0),
    Key("seeds", list[int], "run the whole curriculum once per training seed, e.g. [0, 1, 2] (replaces seed; "
        "see docs/seeds.md)", filled=False),
    Key("device", str, "auto | cpu | cuda | cuda:N | mps", "auto", pattern=DEVICE_PATTERN),
    Key("output_dir", str, "parent directory of runs", "runs"),
    Key("log_every", int, "log training metrics every N steps", 20, minimum=1),
    Key("checkpoint_every", int, "also checkpoint inside a stage or fine-tuning every N steps (0: only at its end)",
        0, minimum=0),
    Key("num_workers", int, "data-loader worker processes reading examples (0: read in the training process)", 0,
        minimum=0),
    Key("eval_batch_size", int, "batch size for evaluation", 256, minimum=1),
    Key("precision", Literal["fp32", "bf16", "auto"],
        "fp32 | bf16 (bf16 autocast for training and evaluation) | auto (bf16 where the device has it natively)",
        "fp32"),
    Key("compile", bool, "torch.compile the backbone", False),
    Key("plugins", list[str], "local .py plugin files, relative to the recipe", []),
    Key("threads", int, "intra-op CPU threads (--threads and OMP_NUM_THREADS override)",
        computed="the CPUs this process may use", filled=False, minimum=1),
    Key("loggers", dict, "logger name -> options (mmcore list-loggers; metrics.jsonl is always written)",
        plugins="logger", filled=False),
    Key("backbone", dict, "{name: BACKBONE, ...its options}", plugins="backbone", required=True),
    Key("datasets", dict, "dataset name -> options (each dataset's defaults fill the rest)", computed="none",
        plugins="dataset"),
    Key("stages", list, "the pre-training curriculum, in order", [], section="stage", many=True),
    Key("zero_shot", list, "evaluations of the pre-trained model without fine-tuning", [], section="zero_shot",
        many=True),
    Key("finetune", list, "downstream fine-tunings", [], section="finetune", many=True),
)

def setting(resolved: Mapping[str, Any], name: str) -> Any:
    """Top-level key ``name`` of a resolved recipe, or its declared default (for a recipe resolved before the key
    existed, e.g. one read back from an older run directory)."""
    return resolved.get(name, TOP[name].default)


# Read by the loader before anything else, so never seen by validation.
INCLUDE = Key("include", list[str] | str, "recipe files (or shipped recipes) merged under this one, in order", [])

SECTIONS: dict[str, Section] = {s.name: s for s in (TOP, STAGE, TASK, DATA, OPTIM, FINETUNE_OPTIM, SELECT, FINETUNE,
                                                     ZERO_SHOT)}
