"""An option a plugin rejects fails before anything trains: at ``mmcore validate`` through the plugin's
``check_options``, else when ``mmcore run`` builds every task and head on the meta device before the first stage."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import invoke

RECIPE = """\
name: early
log_every: 1
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 1}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}}, max_steps: 2, batch_size: 8}
  - name: sentence
    data: {view: sentence}
    tasks: {mlm: {}, LATE: {}}
    max_steps: 2
    batch_size: 8
"""

PICKY = '''
import mmcore
from mmcore import Task

class Picky(Task):
    """Rejects a non-positive temperature in its constructor (it declares no check_options)."""
    name = "picky"
    defaults = {"temperature": 0.07}

    def __init__(self, info, backbone, **options):
        super().__init__(info, backbone, **options)
        if self.options["temperature"] <= 0:
            raise ValueError(f"temperature must be > 0, got {self.options['temperature']}")

@mmcore.hookimpl
def mmcore_register_tasks(registry):
    registry.add_task(Picky)
'''


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def flat(text: str) -> str:
    return " ".join(text.split())


def test_validate_rejects_an_out_of_range_option_by_check_options(tmp_path, third_party):
    recipe = tmp_path / "early.yaml"
    recipe.write_text(RECIPE.replace("LATE: {}", "grounded_count: {scale: -1.0}"))
    out = flat(invoke(["validate", str(recipe)], code=2))
    assert "early.yaml:11: stages[1].tasks.grounded_count.scale" in out
    assert "plugin 'grounded' (mmcore-grounded-count 0.3.1)" in out and "must be >= 0" in out
    assert "Traceback" not in out
    out = flat(invoke(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--quiet"], code=2))
    assert "must be >= 0" in out and not (tmp_path / "runs").exists()  # nothing trained, no run directory


def test_run_builds_every_task_before_the_first_stage_trains(tmp_path, cache_dir):
    (tmp_path / "picky.py").write_text(PICKY)
    recipe = tmp_path / "early.yaml"
    recipe.write_text("plugins: [picky.py]\n" + RECIPE.replace("LATE: {}", "picky: {temperature: -1.0}"))
    invoke(["validate", str(recipe)])  # no check_options: validate cannot know without the data
    out = flat(invoke(["validate", str(recipe), "--build", "--cache-dir", str(cache_dir)], code=2))
    assert "early.yaml:12: stages[1].tasks.picky: task 'picky' (plugin 'picky')" in out
    assert "ValueError: temperature must be > 0, got -1.0" in out and "Traceback" not in out
    out = flat(invoke(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--cache-dir", str(cache_dir),
                       "--quiet"], code=2))
    assert "early.yaml:12: stages[1].tasks.picky: task 'picky' (plugin 'picky')" in out
    assert "ValueError: temperature must be > 0, got -1.0" in out and "Traceback" not in out
    assert not (tmp_path / "runs" / "early").exists()  # the first stage did not train: the fresh run dir is gone
    invoke(["validate", str(recipe), "--build", "--cache-dir", str(cache_dir), "--set",
            "stages.sentence.tasks.picky.temperature=0.1"])
