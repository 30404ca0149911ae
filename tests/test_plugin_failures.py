"""Plugin code that raises during a run is named (plugin, distribution, method, stage, step) in one paragraph with
its own last frames; the full traceback goes to the run's errors.log; the run resumes once the plugin is fixed."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

import mmcore.blame
from tests.helpers import invoke
from tests.test_extractors import needs_reader, write_images
from tests.test_plugin_containment import install

RECIPE = """\
name: flaky
log_every: 1
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 1}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}}, max_steps: 2, batch_size: 8}
  - {name: sentence, data: {view: sentence}, tasks: {mlm: {}, flaky: {}}, max_steps: 3, batch_size: 8}
"""

PLUGIN = """
    import mmcore
    from mmcore import Task

    class Flaky(Task):
        '''Its loss raises on the second call.'''
        name = "flaky"

        def __init__(self, info, backbone, **options):
            super().__init__(info, backbone, **options)
            self.calls = 0

        def loss(self, output, batch):
            self.calls += 1
            if self.calls == 2 and BROKEN:
                raise RuntimeError("the pooled output has no norm today")
            return output.pooled.pow(2).mean()

    @mmcore.hookimpl
    def mmcore_register_tasks(registry):
        registry.add_task(Flaky)
"""


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def test_raising_loss_is_named_and_the_run_resumes_after_the_fix(tmp_path, third_party, cache_dir, monkeypatch):
    monkeypatch.setattr(mmcore.blame, "_debug", False)  # restored after --debug below
    install(third_party, "mmcore-flaky", "0.2.0", "flaky", "flaky_mod", "BROKEN = True\n" + textwrap.dedent(PLUGIN))
    recipe = tmp_path / "flaky.yaml"
    recipe.write_text(RECIPE)
    runs, cache = tmp_path / "runs", ["--cache-dir", str(cache_dir), "--quiet"]
    out = " ".join(invoke(["run", str(recipe), "--output-dir", str(runs), "--run-name", "a", *cache], code=1).split())
    assert ("task 'flaky' of plugin 'flaky' (mmcore-flaky 0.2.0) raised RuntimeError: the pooled output has no "
            "norm today in loss() during stage 'sentence', step 2, epoch 0.") in out
    assert "flaky_mod.py:17 in loss: raise RuntimeError(" in out and "Traceback" not in out
    run = runs / "flaky" / "a"
    assert f"Full traceback: {run / 'errors.log'}" in out and "mmcore run --resume" in out
    assert "Traceback (most recent call last)" in (run / "errors.log").read_text()
    token_trained = (run / "stages" / "token" / "checkpoint.pt").stat().st_mtime_ns

    out = invoke(["run", "--resume", str(run), "--debug", *cache], code=1)
    assert "Traceback (most recent call last)" in out and "RuntimeError: the pooled output" in out

    (third_party / "flaky_mod.py").write_text("BROKEN = False\n" + textwrap.dedent(PLUGIN))  # the author's fix
    monkeypatch.delitem(sys.modules, "flaky_mod")  # as a new process would import it
    invoke(["run", "--resume", str(run), *cache])
    stages = json.loads((run / "results.json").read_text())["_stages"]
    assert stages["sentence"]["steps"] == 3 and "final_flaky" in stages["sentence"] and stages["token"]["steps"] == 2
    assert (run / "stages" / "token" / "checkpoint.pt").stat().st_mtime_ns == token_trained  # not trained again


BAD_LOGGER = '''
import mmcore


class Fragile:
    """Fails on the second record it receives."""

    def __init__(self, run_dir):
        self.seen = 0

    @mmcore.hookimpl
    def mmcore_log(self, run, step, metrics):
        self.seen += 1
        if self.seen == 2:
            raise KeyError("lr_group_0")


@mmcore.hookimpl
def mmcore_register_loggers(registry):
    registry.add_logger("fragile", Fragile)
'''


def test_a_failing_logger_is_named_with_the_step(tmp_path, cache_dir):
    (tmp_path / "fragile_logger.py").write_text(BAD_LOGGER)
    recipe = tmp_path / "flaky.yaml"
    recipe.write_text("plugins: [fragile_logger.py]\nloggers: {fragile: {}}\n"
                      + RECIPE.replace(", flaky: {}", "").replace("max_steps: 3", "max_steps: 1"))
    out = " ".join(invoke(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--cache-dir", str(cache_dir),
                           "--quiet"], code=1).split())
    assert ("logger 'fragile' of plugin 'fragile_logger' raised KeyError: 'lr_group_0' in mmcore_log() during stage "
            "'token', step 2, epoch 0.") in out
    assert "fragile_logger.py:15 in mmcore_log: raise KeyError(\"lr_group_0\")" in out and "errors.log" in out


BAD_EXTRACTOR = '''
import mmcore


class Stubborn:
    """Builds, then fails on its first batch."""

    name, defaults, feature_dim, max_boxes = "stubborn", {}, 8, 2

    def extract(self, images):
        raise ValueError("cannot read a 4-channel image")

    def vocabularies(self):
        return {}


@mmcore.hookimpl
def mmcore_register_extractors(registry):
    registry.add_extractor("stubborn", lambda options: Stubborn())
'''


@needs_reader
def test_a_failing_extractor_is_named(tmp_path, monkeypatch):
    (tmp_path / "stubborn.py").write_text(BAD_EXTRACTOR)
    monkeypatch.setenv("MMCORE_PLUGINS", str(tmp_path / "stubborn.py"))
    write_images(tmp_path / "images", ["a", "b"])
    out = " ".join(invoke(["data", "extract", str(tmp_path / "images"), str(tmp_path / "f.h5"), "--extractor",
                           "stubborn", "--quiet"], code=1).split())
    assert ("extractor 'stubborn' of plugin 'stubborn' raised ValueError: cannot read a 4-channel image in extract() "
            "during mmcore data extract.") in out
    assert "stubborn.py:11 in extract" in out and "MMCORE_DEBUG=1" in out and not (tmp_path / "f.h5").exists()


TWO_TASKS = '''
import mmcore
from mmcore import Task


class Early(Task):
    """Its prepare fails; another task of the stage comes after it."""

    name = "early"
    order = 0

    def prepare(self, example, source, rng):
        raise IndexError("no such caption")

    def loss(self, output, batch):
        return output.pooled.mean()


class Late(Early):
    name = "late"
    order = 40

    def prepare(self, example, source, rng):
        return dict(example)


@mmcore.hookimpl
def mmcore_register_tasks(registry):
    registry.add_task(Early)
    registry.add_task(Late)
'''


def test_a_failing_prepare_names_its_own_task(tmp_path, cache_dir):
    (tmp_path / "two.py").write_text(TWO_TASKS)
    recipe = tmp_path / "flaky.yaml"
    recipe.write_text("plugins: [two.py]\n" + RECIPE.replace("tasks: {mlm: {}}", "tasks: {late: {}, early: {}}").replace(", flaky: {}", ""))
    out = " ".join(invoke(["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--cache-dir", str(cache_dir),
                           "--quiet"], code=1).split())
    assert ("task 'early' of plugin 'two' raised IndexError: no such caption in prepare() during stage 'token', "
            "step 1, epoch 0.") in out
