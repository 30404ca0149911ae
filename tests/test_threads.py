"""The intra-op thread choice: affinity and cgroup quota (v1 and v2, faked on disk), the overrides, the record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import invoke

from mmcore import threads
from mmcore.cli import SPIN_COUNT
from mmcore.errors import MMCoreError
from mmcore.threads import cgroup_cpus, choose_threads


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_tightest_along_the_path(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    _write(proc, "0::/slice/job\n")
    _write(root / "slice" / "job" / "cpu.max", "150000 100000\n")
    _write(root / "slice" / "cpu.max", "max 100000\n")
    assert cgroup_cpus(root, proc) == 1.5
    _write(root / "cpu.max", "50000 100000\n")  # a parent's quota caps its children
    assert cgroup_cpus(root, proc) == 0.5


def test_cgroup_v1_quota_inside_a_container(tmp_path):
    # Inside a container /proc names the host's path, which the container's mount does not have: its root counts.
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    _write(proc, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "200000\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cgroup_cpus(root, proc) == 2.0


def test_no_quota_or_no_cgroup_means_no_limit(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    assert cgroup_cpus(root, proc) is None  # not Linux, or /proc unreadable
    _write(proc, "1:cpu:/\n0::/\n")
    _write(root / "cpu" / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu" / "cpu.cfs_period_us", "100000\n")
    _write(root / "cpu.max", "max 100000\n")
    assert cgroup_cpus(root, proc) is None


@pytest.fixture
def machine(monkeypatch):
    """Set the fake machine's affinity CPU count and cgroup quota: ``machine(cpus, quota)``."""
    def set_machine(cpus: int, quota: float | None) -> None:
        monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
        monkeypatch.setattr(threads, "cgroup_cpus", lambda: quota)
    return set_machine


def test_automatic_choice_follows_affinity_and_quota_not_the_host(machine):
    machine(8, None)
    assert (choose_threads(env={}).threads, choose_threads(env={}).source) == (8, "affinity")
    machine(64, 2.0)  # a container with 2 CPUs of quota on a 64-core host
    choice = choose_threads(env={})
    assert (choice.threads, choice.source, choice.affinity_cpus, choice.cgroup_cpus) == (2, "cgroup quota", 64, 2.0)
    machine(64, 1.5)  # a fractional quota rounds down
    assert choose_threads(env={}).threads == 1
    machine(4, 0.25)  # never below one thread
    assert choose_threads(env={}).threads == 1
    machine(2, 16.0)  # a quota larger than the affinity mask: the mask limits
    assert (choose_threads(env={}).threads, choose_threads(env={}).source) == (2, "affinity")


def test_overrides_cli_then_environment_then_recipe(machine):
    machine(8, 2.0)
    assert choose_threads(recipe=3, env={}).record() == {"threads": 3, "source": "recipe", "affinity_cpus": 8,
                                                         "cgroup_cpus": 2.0, "wait_policy": None,
                                                         "spin_count": None}
    assert (choose_threads(recipe=3, env={"OMP_NUM_THREADS": "5"}).threads,
            choose_threads(recipe=3, env={"OMP_NUM_THREADS": "5"}).source) == (5, "OMP_NUM_THREADS")
    choice = choose_threads(cli=6, recipe=3, env={"OMP_NUM_THREADS": "5"})
    assert (choice.threads, choice.source) == (6, "--threads")
    assert choose_threads(env={"OMP_NUM_THREADS": " "}).source == "cgroup quota"  # empty: unset


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_omp_num_threads_is_a_clear_error(machine, value):
    machine(2, None)
    with pytest.raises(MMCoreError, match="OMP_NUM_THREADS must be a whole number >= 1"):
        choose_threads(env={"OMP_NUM_THREADS": value})


def test_recipe_threads_key_is_validated(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(textwrap.dedent("""\
        backbone: {name: lxmert_s}
        threads: 0
        stages: []
        zero_shot: [{name: zs, head: retrieval, data: {dataset: synthworld, view: retrieval, split: test}}]
        """))
    output = invoke(["validate", str(recipe)], code=2)
    assert "threads" in output and "must be >= 1" in output


def test_run_sets_and_records_the_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    before = torch.get_num_threads()
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(textwrap.dedent("""\
        name: tiny
        threads: 2
        backbone: {name: lxmert_s, hidden_size: 16, num_attention_heads: 2, intermediate_size: 32, x_layers: 1}
        datasets:
          synthworld: {train_images: 8, val_images: 4, test_images: 4, vqa_train_images: 4,
                       retrieval_train_images: 4, max_regions: 4, feature_dim: 8, hard_negatives_top: 3}
        stages:
          - {name: token, data: {view: token}, tasks: {mlm: {}}, max_steps: 1, batch_size: 4}
        """))
    try:
        invoke(["run", str(recipe), "--output-dir", str(tmp_path), "--run-name", "a", "--cache-dir",
                str(tmp_path / "cache"), "--quiet", "--threads", "1"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    recorded = json.loads((tmp_path / "tiny" / "a" / "results.json").read_text())["_run"]["threads"]
    assert (recorded["threads"], recorded["source"]) == (1, "--threads")
    assert recorded["affinity_cpus"] >= 1
    assert recorded["wait_policy"] == os.environ["OMP_WAIT_POLICY"]  # importing mmcore.cli set them
    assert recorded["spin_count"] == os.environ.get("GOMP_SPINCOUNT")


@pytest.mark.parametrize(("given", "expected"), [
    ({}, ["PASSIVE", str(SPIN_COUNT)]),  # spin briefly, then sleep
    ({"OMP_WAIT_POLICY": "ACTIVE"}, ["ACTIVE", "-"]),  # the user's policy wins, no count added
    ({"GOMP_SPINCOUNT": "0"}, ["-", "0"]),  # as does the user's count
])
def test_the_command_bounds_how_long_idle_openmp_threads_spin_unless_told(given: dict[str, str],
                                                                          expected: list[str]) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | given
    code = ("import os, sys, mmcore.cli; e = os.environ; "
            "print(e.get('OMP_WAIT_POLICY', '-'), e.get('GOMP_SPINCOUNT', '-'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == [*expected, "False"]  # set before torch (and its OpenMP) is loaded
