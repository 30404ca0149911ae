"""The mlflow and wandb loggers, read back through each library's own reader and compared with metrics.jsonl."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import sys
from pathlib import Path

import pytest
import yaml

from mmcore_loggers.runfiles import flat_params, numeric_metrics

from mmcore.report import plots_available
from tests.helpers import invoke
from tests.test_end_to_end import write_recipe

mlflow = pytest.importorskip("mlflow")
wandb_pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")

RECIPE = """\
name: tracked
seed: 3
log_every: 1
backbone: {name: lxmert_s, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64, x_layers: 1}
datasets:
  synthworld: {train_images: 40, val_images: 8, test_images: 8, vqa_train_images: 16, retrieval_train_images: 8,
               max_regions: 6, feature_dim: 16, hard_negatives_top: 10}
stages:
  - {name: token, data: {view: token}, tasks: {mlm: {}, mrfr: {}}, max_steps: 3, batch_size: 8, max_text_len: 12}
  - {name: phrase, data: {view: phrase}, tasks: {mlm: {}, titp: {}}, max_steps: 2, batch_size: 8}
finetune:
  - {name: vqa, head: vqa, data: {view: vqa}, max_steps: 2, batch_size: 8}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One tiny run logged by both trackers (``--logger mlflow --logger wandb``)."""
    tmp = tmp_path_factory.mktemp("tracked")
    patch = pytest.MonkeyPatch()
    for variable in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        patch.setenv(variable, str(tmp / "wandb-home"))  # nothing outside the test's folder
    patch.setenv("WANDB_MODE", "offline")
    recipe = write_recipe(tmp, RECIPE, "tracked.yaml")
    invoke(["run", str(recipe), "--output-dir", str(tmp), "--run-name", "a", "--cache-dir", str(tmp / "cache"),
            "--quiet", "--logger", "mlflow", "--logger", "wandb"])
    patch.undo()
    return tmp / "tracked" / "a"


def expected_series(run: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as ``<scope>/<metric>`` -> [(step, value)], the shape both trackers hold."""
    series: dict[str, list[tuple[int, float]]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key, value in numeric_metrics(record).items():
            series.setdefault(key, []).append((int(record["step"]), value))
    return series


def md5_b64(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_mlflow_holds_the_recipe_every_metric_at_its_step_and_the_files(run, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("tracked")
    (found,) = client.search_runs([experiment.experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "a"
    recipe = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    assert found.data.params == flat_params(recipe)
    assert found.data.params["stages.token.max_steps"] == "3" and found.data.params["finetune.vqa.head"] == "vqa"
    expected = expected_series(run)
    assert {"token/mlm", "phrase/titp", "vqa/loss"} <= set(expected)
    for key, points in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))
        assert history == sorted(points), key
    names = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert "summary.md" in names
    assert ("plots" in names) == plots_available()  # with matplotlib: the loss curves and downstream bars
    if plots_available():
        assert {Path(a.path).suffix for a in client.list_artifacts(found.info.run_id, "plots")} == {".png"}
    local = client.download_artifacts(found.info.run_id, "summary.md", str(tmp_path))
    assert Path(local).read_text() == (run / "summary.md").read_text()


def wandb_records(path: Path) -> list:
    """The records of a ``.wandb`` file: W&B's 7-byte header, then the LevelDB log format (32 KiB blocks; each
    chunk: crc32c, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4) of ``wandb_internal_pb2.Record`` messages."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_wandb_offline_run_holds_the_recipe_every_metric_at_its_step_and_the_files(run):
    (path,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(path)
    by_type: dict[str, list] = {}
    for record in records:
        by_type.setdefault(record.WhichOneof("record_type"), []).append(record)
    (started,) = by_type["run"]
    config = {item.key: json.loads(item.value_json) for item in started.run.config.update}
    recipe = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    assert {key: config[key] for key in recipe} == recipe
    logged: dict[str, list[tuple[int, float]]] = {}
    for record in by_type["history"]:
        row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        steps = [key for key in row if key.endswith("/step")]
        assert len(steps) == 1  # each row is one mmcore record, on its scope's own x-axis
        scope = steps[0].removesuffix("/step")
        for key, value in row.items():
            if key.startswith(f"{scope}/") and key != steps[0]:
                logged.setdefault(key, []).append((int(row[steps[0]]), value))
    expected = expected_series(run)
    assert set(logged) == set(expected)
    for key, points in expected.items():
        # W&B stores floats with 7 significant digits.
        assert [s for s, _ in logged[key]] == [s for s, _ in points], key
        assert all(math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9) for (_, a), (_, b) in zip(logged[key], points)), key
    (artifact,) = by_type["artifact"]
    files = {entry.path: entry.digest for entry in artifact.artifact.manifest.contents}
    assert files["summary.md"] == md5_b64(run / "summary.md")
    assert all(name == "summary.md" or (name.startswith("plots/") and name.endswith(".png")) for name in files)
    assert (len(files) > 1) == plots_available()
    (finished,) = by_type["exit"]
    assert finished.exit.exit_code == 0


@pytest.mark.parametrize(("module", "logger", "extra"), [("mlflow", "MlflowLogger", "mlflow"),
                                                         ("wandb", "WandbLogger", "wandb")])
def test_a_missing_tracker_package_is_a_clear_error(tmp_path, monkeypatch, module, logger, extra):
    import importlib

    from mmcore.errors import MMCoreError

    for name in [m for m in sys.modules if m == module or m.startswith(f"{module}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import now fails as if the package were not installed
    factory = getattr(importlib.import_module(f"mmcore_loggers.{module}_logger"), logger)
    with pytest.raises(MMCoreError) as info:
        factory(tmp_path)
    assert f'pip install "mmcore-vlp[{extra}]"' in str(info.value)
