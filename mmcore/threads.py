"""How many intra-op threads a run uses: the CPUs this process may actually use, unless told otherwise.

torch's default is the host's physical core count. In a container or cluster slot with a CPU quota, or on a machine
whose cores other work also uses, that many busy-waiting threads fight for too few cores and a run slows to a
crawl. So the automatic choice is the smaller of the CPUs in this process's affinity mask and its cgroup CPU quota
(v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, the tightest along the cgroup's path), at least 1.

Overrides, strongest first: ``mmcore run --threads N``, the environment's ``OMP_NUM_THREADS``, the recipe's
``threads:``. Data-loader worker processes use one thread each.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from mmcore.errors import MMCoreError

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class ThreadChoice:
    """The intra-op thread count and why: ``source`` is ``--threads``, ``OMP_NUM_THREADS``, ``recipe``,
    ``affinity`` or ``cgroup quota``; ``affinity_cpus`` and ``cgroup_cpus`` are what the machine allowed;
    ``wait_policy`` and ``spin_count`` are ``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` (the ``mmcore`` command sets
    both unless the environment sets either)."""

    threads: int
    source: str
    affinity_cpus: int
    cgroup_cpus: float | None
    wait_policy: str | None = None
    spin_count: str | None = None

    def record(self) -> dict[str, Any]:
        """The choice as a JSON-ready dict (written to the run's ``results.json`` under ``_run``)."""
        return asdict(self)


def affinity_cpus() -> int:
    """The number of CPUs this process may run on (its affinity mask; the host's count where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_cpus(root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> float | None:
    """The CPUs this process's cgroup may use per period (quota / period, the tightest along its path), or None
    without a quota (or outside Linux cgroups)."""
    try:
        lines = proc_cgroup.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    limits: list[float] = []
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # cgroup v2: one unified hierarchy
            limits += _limits_along(root, path, _v2_limit)
        elif "cpu" in controllers.split(","):
            for mount in (root / controllers, root / "cpu,cpuacct", root / "cpu"):
                if mount.is_dir():
                    limits += _limits_along(mount, path, _v1_limit)
                    break
    return min(limits) if limits else None


def _limits_along(mount: Path, path: str, read: Any) -> list[float]:
    # The cgroup's own directory and every parent up to the mount: a parent's quota caps its children. Inside a
    # container the path /proc names may not exist under the mount (its root is the container's cgroup).
    limits = []
    directory = mount / path.strip("/")
    while True:
        limit = read(directory)
        if limit is not None:
            limits.append(limit)
        if directory == mount or mount not in directory.parents:
            return limits
        directory = directory.parent


def _v2_limit(directory: Path) -> float | None:
    fields = _read(directory / "cpu.max").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_limit(directory: Path) -> float | None:
    return _ratio(_read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us"))


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return ""


def choose_threads(cli: int | None = None, recipe: int | None = None,
                   env: Mapping[str, str] | None = None) -> ThreadChoice:
    """The thread count for this process: ``cli`` (``--threads``), else ``OMP_NUM_THREADS`` in ``env``
    (default ``os.environ``), else ``recipe`` (``threads:``), else what the affinity mask and cgroup quota allow."""
    env = os.environ if env is None else env
    cpus, quota = affinity_cpus(), cgroup_cpus()
    wait = (env.get("OMP_WAIT_POLICY"), env.get("GOMP_SPINCOUNT"))
    given = [("--threads", cli), ("OMP_NUM_THREADS", _env_threads(env)), ("recipe", recipe)]
    for source, value in given:
        if value is not None:
            return ThreadChoice(int(value), source, cpus, quota, *wait)
    # A fractional quota rounds down: 1.5 CPUs of time cannot keep two threads busy without them waiting.
    if quota is not None and math.floor(quota) < cpus:
        return ThreadChoice(max(1, math.floor(quota)), "cgroup quota", cpus, quota, *wait)
    return ThreadChoice(max(1, cpus), "affinity", cpus, quota, *wait)


def _env_threads(env: Mapping[str, str]) -> int | None:
    raw = env.get("OMP_NUM_THREADS", "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise MMCoreError(f"OMP_NUM_THREADS must be a whole number >= 1, got {raw!r}")
    return value


def apply_threads(choice: ThreadChoice) -> None:
    """Set torch's intra-op thread count to the choice."""
    if torch.get_num_threads() != choice.threads:
        torch.set_num_threads(choice.threads)


def worker_threads() -> None:
    """A data-loader worker's setting: one intra-op thread (workers read and decode; the training process computes)."""
    torch.set_num_threads(1)
