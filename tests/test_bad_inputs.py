"""A catalogue of bad inputs: each gives a located message, exit code 2, no traceback and no partial output.

Recipes go through the real CLI (``mmcore validate``/``run`` via click's runner, one through ``python -m
mmcore``); checkpoints through ``init:`` and ``--resume``; feature stores and annotation files through a run whose
data cache holds the bad file (their readers' own cases: test_bad_data_files.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from mmcore import cli
from mmcore.cli import main

TINY = """\
name: tiny
seed: 3
log_every: 1
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 2}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - name: token
    data: {view: token}
    tasks: {mlm: {}, ifrs: {shuffle_prob: 0.5}}
    max_steps: 3
    batch_size: 8
    max_text_len: 12
finetune:
  - {name: vqa, head: vqa, data: {view: vqa}, max_steps: 2, batch_size: 8}
"""
NEEDS_DEPTH = '''
import mmcore
from mmcore import PAIR_FIELDS, Task

class NeedsDepth(Task):
    """A task that needs a batch field no built-in view provides."""
    name = "needs_depth"
    requires = PAIR_FIELDS | {"depth_map"}

@mmcore.hookimpl
def mmcore_register_tasks(registry):
    registry.add_task(NeedsDepth)
'''


@pytest.fixture(autouse=True)
def wide_errors(monkeypatch):
    """Error lines unwrapped, so messages can be matched whole."""
    monkeypatch.setattr(cli.err_console, "width", 1000)


def flat(text: str) -> str:
    return " ".join(text.split())


def invoke(args: list[str], code: int = 2) -> str:
    """Run the CLI; assert exit ``code`` (2: recipe or usage, 3: data) through MMCoreError (no other exception, no
    traceback); the output."""
    result = CliRunner().invoke(main, args, terminal_width=1000)
    assert result.exit_code == code, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # any other exception would be a crash
    assert "Traceback" not in result.output and "error:" in result.output
    return flat(result.output)


def snapshot(*roots: Path) -> set[Path]:
    return {p for root in roots for p in root.rglob("*")}


def assert_nothing_left(before: set[Path], *roots: Path) -> None:
    """No new files (no run directory, no half-written or temporary file) under ``roots``."""
    assert snapshot(*roots) - before == set()


# ---- recipes ------------------------------------------------------------------------------------------------

def case(case_id: str, expected: list[str], *, edit: tuple[str, str] | None = None, prepend: str = "",
         text: str | bytes | None = None, files: dict[str, str] | None = None, args: tuple[str, ...] = ()):
    recipe = text if text is not None else prepend + (TINY.replace(*edit) if edit else TINY)
    if edit:
        assert edit[0] in TINY, edit
    return pytest.param(recipe, files or {}, list(args), expected, id=case_id)


RECIPE_CASES = [
    case("yaml-syntax", ["recipe.yaml:13: invalid YAML: expected ',' or '}'",
                         "while parsing a flow mapping that starts at line 12"],
         edit=("    max_steps: 3\n", "    optim: {lr: 1.0\n")),
    case("yaml-tab", ["recipe.yaml:2: invalid YAML: found character '\\t'"], text="name: x\n\tseed: 1\n"),
    case("yaml-duplicate-key", ["recipe.yaml:4: log_every: duplicate key 'log_every' (first at line 3)"],
         edit=("log_every: 1\n", "log_every: 1\nlog_every: 5\n")),
    case("top-level-list", ["recipe.yaml:1: a recipe must be a YAML mapping", "got a list"], text="- stages\n- finetune\n"),
    case("empty-recipe", ["recipe.yaml: the recipe is empty"], text="# nothing yet\n"),
    case("not-utf8", ["recipe.yaml: not a text file (byte 0 is not UTF-8)"], text=b"\xff\xfename: x\n"),
    case("epochs-word", ["recipe.yaml:12: stages[0].epochs: must be an integer, got 'ten'"],
         edit=("max_steps: 3", "epochs: ten")),
    case("lr-negative", ["recipe.yaml:12: stages[0].optim.lr: must be > 0, got -1"],
         edit=("max_steps: 3", "optim: {lr: -1}")),
    case("batch-size-zero", ["recipe.yaml:13: stages[0].batch_size: must be >= 1, got 0"],
         edit=("batch_size: 8\n    max_text_len", "batch_size: 0\n    max_text_len")),
    case("tasks-list", ["recipe.yaml:11: stages[0].tasks: tasks must map task names to their options", "got a list"],
         edit=("tasks: {mlm: {}, ifrs: {shuffle_prob: 0.5}}", "tasks: [mlm, ifrs]")),
    case("betas-scalar", ["recipe.yaml:12: stages[0].optim.betas: betas must be a list of two numbers"],
         edit=("max_steps: 3", "optim: {betas: 0.9}")),
    case("nonfinite-mode", ["recipe.yaml:12: stages[0].optim.nonfinite: nonfinite must be 'stop' or 'skip'"],
         edit=("max_steps: 3", "optim: {nonfinite: ignore}")),
    case("device", ["recipe.yaml:1: device: device must be auto, cpu, cuda, cuda:N or mps, got 'gpu0'"],
         prepend="device: gpu0\n"),
    case("unknown-top-key", ["recipe.yaml:1: stagse: unknown key 'stagse' in the recipe (did you mean 'stages'?)"],
         prepend="stagse: []\n"),
    case("unknown-stage-key", [("recipe.yaml:12: stages[0].epohcs: unknown key 'epohcs' in a stage "
                               "(did you mean 'epochs'?)")], edit=("max_steps: 3", "epohcs: 3")),
    case("unknown-task", ["recipe.yaml:11: stages[0].tasks.ifr: unknown task 'ifr' (did you mean 'ifrs'?)"],
         edit=("ifrs: {shuffle_prob: 0.5}", "ifr: {}")),
    case("unknown-backbone", ["recipe.yaml:4: backbone.name: unknown backbone 'lxmert_z' (did you mean"],
         edit=("name: lxmert_s,", "name: lxmert_z,")),
    case("unknown-dataset", ["recipe is invalid (1 problem)",
                             "recipe.yaml:6: datasets.synthwrld: unknown dataset 'synthwrld' (did you mean 'synthworld'?)"],
         edit=("  synthworld: {", "  synthwrld: {")),
    case("unknown-head", ["recipe.yaml:16: finetune[0].head: unknown head 'vqq' (did you mean 'vqa'?)"],
         edit=("head: vqa", "head: vqq")),
    case("unknown-view", [("recipe.yaml:10: stages[0].data.view: dataset 'synthworld' has no view 'tokn' "
                          "(did you mean 'token'?)")], edit=("view: token", "view: tokn")),
    case("unknown-task-option", [("recipe.yaml:11: stages[0].tasks.ifrs.shuffle_prb: unknown key 'shuffle_prb' in "
                                 "task 'ifrs' options (did you mean 'shuffle_prob'?)")],
         edit=("shuffle_prob: 0.5", "shuffle_prb: 0.5")),
    case("task-option-type", [("recipe.yaml:11: stages[0].tasks.ifrs.shuffle_prob: must be a number (default 0.05), "
                              "got 'half'")], edit=("shuffle_prob: 0.5", "shuffle_prob: half")),
    case("backbone-option-type", ["recipe.yaml:4: backbone.hidden_size: must be an integer (default 768), got 32.5"],
         edit=("hidden_size: 32", "hidden_size: 32.5")),
    case("dataset-option-type", [("recipe.yaml:7: datasets.synthworld.feature_dim: must be an integer (default 2048), "
                                 "got 'big'")], edit=("feature_dim: 16", "feature_dim: big")),
    case("task-weight-type", ["recipe.yaml:11: stages[0].tasks.mlm.weight: must be a number, got 'heavy'"],
         edit=("mlm: {}", "mlm: {weight: heavy}")),
    case("cyclic-include", ["b.yaml:1: include[0]: cyclic include:", "recipe.yaml -> ", "a.yaml -> ", "b.yaml -> ",
                            "a.yaml"],
         prepend="include: [a.yaml]\n", files={"a.yaml": "include: [b.yaml]\n", "b.yaml": "include: [a.yaml]\n"}),
    case("missing-include", ["recipe.yaml:1: include[0]: included file not found:", "base/nope.yaml"],
         prepend="include: [base/nope.yaml]\n"),
    case("missing-plugin-file", ["recipe.yaml:1: plugins[0]: plugin file not found: my_tasks.py"],
         prepend="plugins: [my_tasks.py]\n"),
    case("plugin-raises", ["recipe.yaml:1: plugins[0]: plugin file", ("broken.py failed to import: RuntimeError: no GPU "
                           "here (at broken.py:3)")],
         prepend="plugins: [broken.py]\n", files={"broken.py": "import os\n\nraise RuntimeError('no GPU here')\n"}),
    case("plugin-syntax-error", ["recipe.yaml:1: plugins[0]: plugin file", ("typo.py failed to import: SyntaxError: "
                                 "invalid syntax (typo.py, line 2)")],
         prepend="plugins: [typo.py]\n", files={"typo.py": "import os\ndef loss(:\n"}),
    case("set-bad-path", ["--set: stages.tokn: no item 'tokn' in this list (by index 0..0 or name: token)"],
         args=("--set", "stages.tokn.epochs=2")),
    case("set-bad-value", ["--set stages.token.epochs=two: stages[0].epochs: must be an integer, got 'two'"],
         args=("--set", "stages.token.epochs=two")),
    case("set-no-equals", ["--set: override 'seed' must look like key.path=value"], args=("--set", "seed")),
    case("set-into-scalar", ["--set: name: cannot set 'x' inside a str"], args=("--set", "name.x=1")),
    case("task-field-missing", [("recipe.yaml:12: stages[0].tasks.needs_depth: stage 'token': task 'needs_depth' "
                                "requires batch field(s) depth_map that its data (synthworld/token) does not provide")],
         prepend="plugins: [depth.py]\n", edit=("ifrs: {shuffle_prob: 0.5}", "needs_depth: {}"),
         files={"depth.py": NEEDS_DEPTH}),
    case("head-field-missing", [("recipe.yaml:16: finetune[0].data: head 'vqa' requires batch field(s) vqa_target that "
                                "its data does not provide")], edit=("data: {view: vqa}", "data: {view: retrieval}")),
    case("duplicate-stage", ["recipe.yaml:15: stages[1].name: stage name 'token' is used twice (first by stages[0])"],
         edit=("finetune:\n", "  - {name: token, data: {view: token}, tasks: {mlm: {}}}\nfinetune:\n")),
    case("init-missing", ["recipe.yaml:10: stages[0].init: checkpoint not found: ckpt/none.pt (looked for"],
         edit=("    data: {view: token}\n", "    init: ckpt/none.pt\n    data: {view: token}\n")),
    case("stage-without-data", ["recipe.yaml:9: stages[0].data: data is required"],
         edit=("    data: {view: token}\n", "")),
]


@pytest.mark.parametrize(("recipe", "files", "args", "expected"), RECIPE_CASES)
def test_bad_recipe(tmp_path, recipe, files, args, expected):
    path = tmp_path / "recipe.yaml"
    if isinstance(recipe, bytes):
        path.write_bytes(recipe)
    else:
        path.write_text(recipe)
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    before = snapshot(tmp_path)
    output = invoke(["validate", str(path), *args])
    for fragment in expected:
        assert flat(fragment) in output, (fragment, output)
    assert_nothing_left(before, tmp_path)


def test_missing_recipe_file(tmp_path):
    output = invoke(["validate", str(tmp_path / "absent.yaml")])
    assert "absent.yaml: cannot read recipe: No such file or directory" in output


@pytest.mark.parametrize(("recipe", "expected"), [
    pytest.param("name: x\nstages:\n  - name: a\n    data: {view: token\n",
                 ("recipe.yaml:5: invalid YAML: expected ',' or '}', but got '<stream end>' (while parsing a flow "
                  "mapping that starts at line 4)"), id="yaml-syntax"),
    # Each interpreter start costs seconds on a small machine: one case runs by default.
    pytest.param(TINY.replace("mlm: {}", "mlmm: {}"),
                 "recipe.yaml:11: stages[0].tasks.mlmm: unknown task 'mlmm' (did you mean 'mlm'?)",
                 id="unknown-task", marks=pytest.mark.slow),
])
def test_bad_recipe_through_python_m_mmcore(tmp_path, recipe, expected):
    (tmp_path / "recipe.yaml").write_text(recipe)
    proc = subprocess.run([sys.executable, "-m", "mmcore", "validate", "recipe.yaml"], check=False, cwd=tmp_path,
                          capture_output=True, text=True, env={**_env(), "COLUMNS": "1000"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert expected in flat(proc.stderr) and "Traceback" not in proc.stderr + proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.yaml"]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MMCORE_PLUGINS", "MMCORE_DISABLE_PLUGINS")}


# ---- runs whose data or checkpoints are bad -----------------------------------------------------------------

@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A cache holding the tiny world, generated once."""
    cache = tmp_path_factory.mktemp("world")
    recipe = cache / "recipe.yaml"
    recipe.write_text(TINY)
    result = CliRunner().invoke(main, ["run", str(recipe), "--output-dir", str(cache / "runs"), "--run-name", "w",
                                       "--cache-dir", str(cache / "cache"), "--quiet", "--set", "finetune=[]",
                                       "--set", "stages.token.max_steps=1"])
    assert result.exit_code == 0, (result.output, result.exception)
    return cache


@pytest.fixture
def cache(world, tmp_path) -> Path:
    """A private copy of the world's cache, free to damage."""
    return Path(shutil.copytree(world / "cache", tmp_path / "cache"))


def _world_file(cache: Path, name: str) -> Path:
    (directory,) = (cache / "synthworld").iterdir()
    return directory / name


def _run(tmp_path: Path, cache: Path, *args: str, code: int = 2) -> str:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY)
    (tmp_path / "runs").mkdir()  # the output directory may exist already; what goes inside it must not stay
    before = snapshot(tmp_path)
    output = invoke(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "r",
                     "--cache-dir", str(cache), "--quiet", *args], code)
    assert_nothing_left(before, tmp_path)  # the fresh run directory is removed again, nothing half-written
    return output


@pytest.mark.parametrize(("damage", "expected"), [
    (lambda p: p.write_text("id,features\n"), "cannot read the feature store; not an HDF5 file, or it is truncated"),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 3]), ("cannot read the feature store; not an HDF5 "
                                                                        "file, or it is truncated or damaged")),
], ids=["not-hdf5", "truncated"])
def test_damaged_cached_feature_store_stops_a_run(tmp_path, cache, damage, expected):
    path = _world_file(cache, "features.h5")
    damage(path)
    assert f"{path}: {expected}" in _run(tmp_path, cache, code=3)  # a data error


def test_damaged_cached_vqa_file_stops_a_run(tmp_path, cache):
    path = _world_file(cache, "vqa_train.json")
    path.write_text('[{"img_id": "train_0", "question_id": 1,\n "sent": }]')
    assert f"{path}:2:10: not valid JSON: Expecting value" in _run(tmp_path, cache, "--set", "stages=[]", code=3)


def test_init_checkpoint_of_another_width_stops_before_training(tmp_path, world):
    ckpt = world / "runs" / "tiny" / "w" / "stages" / "token" / "checkpoint.pt"
    output = _run(tmp_path, world / "cache", "--set", f"stages.token.init={ckpt}", "--set", "backbone.hidden_size=64")
    head = f"--set stages.token.init={ckpt}: stages[0].init: checkpoint {ckpt} does not fit the recipe's backbone: "
    assert re.search(re.escape(head) + r"\d+ tensor\(s\) differ in shape, e.g. embeddings\.word_embeddings\.weight is "
                     r"\[\d+, 32\] in the checkpoint but \[\d+, 64\] in this recipe's backbone", output), output


@pytest.mark.parametrize(("make", "expected"), [
    (lambda src, dst: dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2]),
     "is damaged or truncated (PytorchStreamReader failed reading zip archive"),
    (lambda src, dst: dst.write_text("step,loss\n1,0.5\n"), ("is not a PyTorch file (expected one written by "
                                                            "torch.save)")),
    (lambda src, dst: torch.save({"model": {"w": 1}}, dst), ("holds no backbone weights: expected an mmcore checkpoint "
                                                            "(with 'backbone') or a state dict of tensors; top-level "
                                                            "keys: model")),
    (lambda src, dst: torch.save([torch.zeros(2)], dst), "holds a list, not a mapping of weights"),
], ids=["truncated", "not-a-checkpoint", "no-backbone", "a-list"])
def test_bad_init_checkpoint_fails_validation(tmp_path, world, make, expected):
    make(world / "runs" / "tiny" / "w" / "stages" / "token" / "checkpoint.pt", tmp_path / "init.pt")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(TINY.replace("    data: {view: token}\n", "    init: init.pt\n    data: {view: token}\n"))
    before = snapshot(tmp_path)
    output = invoke(["validate", str(recipe)])
    assert f"recipe.yaml:10: stages[0].init: checkpoint {tmp_path / 'init.pt'} {expected}" in output, output
    assert_nothing_left(before, tmp_path)


def test_resume_with_a_truncated_stage_checkpoint(tmp_path, world):
    run = Path(shutil.copytree(world / "runs" / "tiny" / "w", tmp_path / "run"))
    ckpt = run / "stages" / "token" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    before = snapshot(tmp_path)
    output = invoke(["run", "--resume", str(run), "--cache-dir", str(world / "cache"), "--quiet"])
    assert f"checkpoint {ckpt} is damaged or truncated" in output and "delete it to train stage 'token' again" in output
    assert_nothing_left(before, tmp_path)
