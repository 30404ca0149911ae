"""Logging plugins: metrics.jsonl through the mmcore_log hook, the tensorboard logger, third-party loggers, errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_end_to_end import TINY, run_cli, write_recipe

from mmcore.cli import main
from mmcore.errors import MMCoreError, PluginError
from mmcore.loggers import JsonlLogger, run_loggers
from mmcore.plugins import load_plugins
from mmcore.recipe import parse_yaml
from mmcore.rundir import RunDir

# Three short stages and one fine-tuning whose validation record goes through the loggers too.
SHORT = ["--quiet", "--set", "zero_shot=[]", "--set", "stages.phrase.max_steps=1", "--set", "stages.sentence.max_steps=1",
         "--set", "finetune=[{name: vqa, head: vqa, data: {view: vqa}, max_steps: 2, batch_size: 8}]"]

CAPTURE = '''
import json
from pathlib import Path

import mmcore


class Capture:
    """Appends every record it receives to a file of the run directory."""

    def __init__(self, run_dir, file="captured.jsonl", fail_at=0):
        self.path, self.fail_at = Path(run_dir) / file, fail_at
        self.path.write_text("")

    @mmcore.hookimpl
    def mmcore_log(self, run, step, metrics):
        with open(self.path, "a") as handle:
            handle.write(json.dumps(metrics) + "\\n")
        if step == self.fail_at:
            raise mmcore.MMCoreError(f"capture stops at step {step}")

    def close(self):
        (self.path.parent / "capture.closed").write_text("closed")


class Deaf:
    """Forgot the hookimpl marker."""

    def __init__(self, run_dir):
        pass

    def mmcore_log(self, run, step, metrics):
        pass


@mmcore.hookimpl
def mmcore_register_loggers(registry):
    registry.add_logger("capture", Capture, defaults={"file": "captured.jsonl", "fail_at": 0})
    registry.add_logger("deaf", Deaf)
'''


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def capture_plugin(tmp_path, monkeypatch) -> Path:
    """A third-party plugin file registering the loggers ``capture`` and ``deaf``, loaded via MMCORE_PLUGINS."""
    path = tmp_path / "capture_logger.py"
    path.write_text(CAPTURE)
    monkeypatch.setenv("MMCORE_PLUGINS", str(path))
    return path


def squashed(text: str) -> str:
    """``text`` without whitespace: the error console wraps long lines wherever the terminal width says."""
    return "".join(text.split())


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def without_wall_clock(rs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "samples_per_s"} for r in rs]


def scalars(log_dir: Path) -> dict[str, dict[int, float]]:
    """Every scalar of the event files under ``log_dir``: tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def test_loggers_receive_every_record_and_metrics_jsonl_is_unchanged(tmp_path, cache_dir, capture_plugin):
    runs = tmp_path / "runs"
    recipe = write_recipe(tmp_path)
    run_cli(["run", str(recipe), "--output-dir", str(runs), "--run-name", "plain", "--cache-dir", str(cache_dir), *SHORT])
    logged_recipe = write_recipe(tmp_path, "loggers: {capture: {}, tensorboard: {log_dir: tb}}\n" + TINY, "logged.yaml")
    # --logger tensorboard adds nothing here: the recipe names it, and its options (log_dir: tb) are kept.
    run_cli(["run", str(logged_recipe), "--output-dir", str(runs), "--run-name", "logged", "--cache-dir", str(cache_dir),
             "--logger", "tensorboard", *SHORT])
    plain, logged = runs / "tiny" / "plain", runs / "tiny" / "logged"

    # metrics.jsonl: one JSON line per record, as before, and the same records as the run without loggers.
    text = (logged / "metrics.jsonl").read_text()
    written = records(logged / "metrics.jsonl")
    assert text == "".join(json.dumps(r) + "\n" for r in written)
    assert all(list(r)[:3] == ["scope", "step", "epoch"] for r in written)
    assert without_wall_clock(written) == without_wall_clock(records(plain / "metrics.jsonl"))
    assert [(r["scope"], r["step"]) for r in written if r.get("split") == "val"] == [("vqa", 2)]

    # The third-party logger saw exactly the records of metrics.jsonl, then was closed.
    assert records(logged / "captured.jsonl") == written
    assert (logged / "capture.closed").read_text() == "closed"
    assert not (plain / "captured.jsonl").exists()

    # TensorBoard: one scalar per numeric metric, tagged <scope>/<metric>, at the record's step, equal as float32.
    assert not (logged / "tensorboard").exists() and list((logged / "tb").glob("events.out.tfevents.*"))
    expected: dict[str, dict[int, float]] = {}
    for r in written:
        for key, value in r.items():
            if key not in ("scope", "step", "epoch", "split"):
                expected.setdefault(f"{r['scope']}/{key}", {})[r["step"]] = float(np.float32(value))
    got = scalars(logged / "tb")
    assert got == expected
    assert got["vqa/val_accuracy"] == {2: float(np.float32(written[-1]["val_accuracy"]))}
    assert "token/mlm" in got and len(got["token/mlm"]) == 3
    resolved = parse_yaml((logged / "recipe.resolved.yaml").read_text())
    assert resolved["loggers"] == {"capture": {"file": "captured.jsonl", "fail_at": 0}, "tensorboard": {"log_dir": "tb"}}
    assert "loggers" not in parse_yaml((plain / "recipe.resolved.yaml").read_text())


def test_list_loggers_and_plugins_show_loggers(capture_plugin, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    output = run_cli(["list-loggers"])
    assert "tensorboard" in output and "capture" in output and "capture_logger" in output
    assert "logger capture" in run_cli(["plugins"])


def test_a_failing_logger_stops_the_run_and_every_logger_is_closed(tmp_path, cache_dir, capture_plugin):
    recipe = write_recipe(tmp_path, "loggers: {capture: {fail_at: 2}}\n" + TINY)
    result = CliRunner().invoke(main, ["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "f",
                                       "--cache-dir", str(cache_dir), *SHORT])
    assert result.exit_code == 2, result.output
    assert "capture stops at step 2" in result.output and "Traceback" not in result.output
    run = tmp_path / "runs" / "tiny" / "f"
    assert (run / "capture.closed").is_file()
    # metrics.jsonl is written first, so the record the other logger failed on is in it.
    assert [(r["scope"], r["step"]) for r in records(run / "metrics.jsonl")] == [("token", 1), ("token", 2)]


def test_unknown_logger_exits_2_with_did_you_mean(tmp_path):
    recipe = write_recipe(tmp_path)
    result = CliRunner().invoke(main, ["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--logger", "tensorbord"])
    assert result.exit_code == 2
    assert squashed("--logger tensorbord: loggers.tensorbord: unknown logger 'tensorbord' (did you mean "
                    "'tensorboard'?); known loggers:") in squashed(result.output)
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # checked before the run directory is made


def test_logger_options_and_names_are_checked_with_their_location(tmp_path):
    recipe = write_recipe(tmp_path, "loggers:\n  tensorboard: {log_dir: 3, logdir: tb}\n  jsonl: {}\n  tensorbaord: {}\n"
                          + TINY)
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2
    out = squashed(result.output)
    assert squashed("tiny.yaml:2: loggers.tensorboard.log_dir: must be a string (default 'tensorboard'), got 3") in out
    assert squashed("loggers.tensorboard.logdir: unknown key 'logdir' in logger 'tensorboard' options (did you mean 'log_dir'?)") in out
    assert squashed("tiny.yaml:3: loggers.jsonl: metrics.jsonl is always written") in out
    assert squashed("tiny.yaml:4: loggers.tensorbaord: unknown logger 'tensorbaord' (did you mean 'tensorboard'?)") in out
    listed = write_recipe(tmp_path, "loggers: [tensorboard]\n" + TINY, "listed.yaml")
    result = CliRunner().invoke(main, ["validate", str(listed)])
    assert result.exit_code == 2 and squashed("loggers must map logger names to their options") in squashed(result.output)


def test_missing_tensorboard_package_is_a_clear_error(tmp_path, cache_dir, monkeypatch):
    for name in [m for m in sys.modules if m == "tensorboard" or m.startswith(("tensorboard.", "torch.utils.tensorboard"))]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now fails as if not installed
    recipe = write_recipe(tmp_path)
    result = CliRunner().invoke(main, ["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "m",
                                       "--cache-dir", str(cache_dir), "--logger", "tensorboard", *SHORT])
    assert result.exit_code == 2
    assert squashed('logger tensorboard needs the tensorboard package: pip install "mmcore-vlp[tensorboard]"') in \
        squashed(result.output)
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs" / "tiny" / "m").exists()  # it stopped at startup: nothing to keep


def test_run_loggers_registers_for_the_block_only(tmp_path, capture_plugin, monkeypatch):
    plugins = load_plugins()
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    hook = plugins.manager.hook.mmcore_log
    record = {"scope": "s", "step": 1, "epoch": 0, "loss": 0.5}
    with pytest.raises(MMCoreError, match="boom"), run_loggers(plugins.manager, plugins.registry, run_dir,
                                                               {"capture": {"file": "c.jsonl", "fail_at": 0}}) as active:
        assert [type(a).__name__ for a in active] == ["JsonlLogger", "Capture"]
        hook(run=None, step=1, metrics=record)
        raise MMCoreError("boom")
    assert not [i for i in hook.get_hookimpls() if isinstance(i.plugin, JsonlLogger) or type(i.plugin).__name__ == "Capture"]
    assert (run_dir.path / "capture.closed").is_file()
    assert records(run_dir.path / "metrics.jsonl") == records(run_dir.path / "c.jsonl") == [record]
    with pytest.raises(PluginError, match="logger 'deaf' .* has no @mmcore.hookimpl method mmcore_log"), \
            run_loggers(plugins.manager, plugins.registry, run_dir, {"deaf": {}}):
        pass
    assert not hook.get_hookimpls()  # the JSONL logger registered before 'deaf' failed is gone as well
    monkeypatch.setattr(run_dir, "main", False)  # another process of a multi-process run: it logs nothing
    with run_loggers(plugins.manager, plugins.registry, run_dir, {"capture": {"file": "other.jsonl", "fail_at": 0}}) as active:
        assert active == [] and not hook.get_hookimpls()
