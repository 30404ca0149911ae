"""The training loop's phase accounting (mmcore.phases): exclusive time per phase, nothing when not recording,
every phase of a real stage seen, and results unchanged by measuring them."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from helpers import comparable, invoke

from mmcore import phases
from mmcore.phases import PhaseClock, phase, recording


@pytest.fixture
def ticks(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fake clock: perf_counter returns now[0], which the test advances."""
    now = [0.0]
    monkeypatch.setattr(phases.time, "perf_counter", lambda: now[0])
    return now


def test_nested_phases_count_their_own_time_only(ticks: list[float]) -> None:
    clock = PhaseClock()
    with recording(clock):
        with phase("fetch"):
            ticks[0] += 1.0
            with phase("collate"):
                ticks[0] += 2.0
            ticks[0] += 0.5
        timed = phases.begin("optimizer")
        ticks[0] += 4.0
        phases.end(timed)
    assert dict(clock.seconds) == {"fetch": 1.5, "collate": 2.0, "optimizer": 4.0}
    assert clock.wall == 7.5 and clock.counts["collate"] == 1


def test_nothing_is_recorded_outside_recording(ticks: list[float]) -> None:
    clock = PhaseClock()
    with recording(clock):
        pass
    with phase("forward"):
        ticks[0] += 1.0
    phases.end(phases.begin("logging"))
    assert not clock.seconds and clock.wall == 0.0


TINY = """\
name: tiny
seed: 1
log_every: 2
backbone: {name: lxmert_s, hidden_size: 16, num_attention_heads: 2, intermediate_size: 32, x_layers: 1}
datasets:
  synthworld: {train_images: 16, val_images: 4, test_images: 4, vqa_train_images: 4, retrieval_train_images: 4,
               max_regions: 4, feature_dim: 8, hard_negatives_top: 3}
stages:
  - {name: sentence, data: {view: sentence}, tasks: {mlm: {}, itm_hs: {}}, max_steps: 3, batch_size: 4,
     checkpoint_every: 2}
"""


def test_a_stage_shows_every_phase_and_measuring_changes_no_result(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent(TINY))
    args = ["run", str(recipe), "--output-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    clock = PhaseClock()
    with recording(clock):
        invoke([*args, "--run-name", "timed"])
    invoke([*args, "--run-name", "plain"])
    expected = {"read", "prepare", "collate", "fetch", "host_to_device", "masking", "forward", "backward",
                "optimizer", "logging", "checkpoint"}
    assert set(clock.seconds) == expected
    assert clock.counts["forward"] == clock.counts["backward"] == 3 and clock.counts["read"] == 12
    assert clock.counts["checkpoint"] == 2  # one inside the stage (step 2), one at its end
    assert comparable(tmp_path / "tiny" / "timed") == comparable(tmp_path / "tiny" / "plain")
    assert json.loads((tmp_path / "tiny" / "timed" / "results.json").read_text())["_stages"]["sentence"]["steps"] == 3
