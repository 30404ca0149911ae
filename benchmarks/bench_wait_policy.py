"""How idle OpenMP threads wait, measured: the pre-training stages of ``msp_tps`` through ``mmcore run`` under several
wait settings, on the idle machine and beside busy processes, in one run.

    python benchmarks/bench_wait_policy.py                              # idle and beside one busy process
    python benchmarks/bench_wait_policy.py --busy 0 --steps 40 --setting passive --setting spin:3000

OpenMP reads ``OMP_WAIT_POLICY`` and ``GOMP_SPINCOUNT`` once, when torch loads, so every setting runs in a process
of its own: ``mmcore run recipes/msp_tps.yaml`` with each stage cut to ``--steps`` steps and no evaluation, into a temporary
directory. Its samples/s per stage come from the run's ``results.json`` (``_stages``: samples / seconds), so they
are the engine's own figures. Settings:

- ``passive``: ``OMP_WAIT_POLICY=PASSIVE``, no ``GOMP_SPINCOUNT`` (idle threads sleep at once);
- ``active``: ``OMP_WAIT_POLICY=ACTIVE`` (they spin for minutes);
- ``spin:N``: ``OMP_WAIT_POLICY=PASSIVE`` and ``GOMP_SPINCOUNT=N`` (libgomp spins N times, then sleeps; the count
  overrides the policy in libgomp, while LLVM's libomp ignores it and keeps PASSIVE);
- ``default``: whatever the ``mmcore`` command sets when the environment sets neither;
- ``one-thread``: ``--threads 1``.

All but ``one-thread`` use the thread count mmcore chooses. The first setting is the reference of the ratios.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click

from bench_stage import busy_processes

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "msp_tps.yaml"
STAGES = ("token", "phrase", "sentence")
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


@dataclass(frozen=True)
class Setting:
    """One way of running: the label, what it puts into the environment, and a ``--threads`` (None: mmcore's)."""

    label: str
    env: dict[str, str]
    threads: int | None = None


def parse_setting(text: str) -> Setting:
    """``passive``, ``active``, ``spin:N``, ``default`` or ``one-thread`` as a :class:`Setting`."""
    if text == "passive":
        return Setting(text, {"OMP_WAIT_POLICY": "PASSIVE"})
    if text == "active":
        return Setting(text, {"OMP_WAIT_POLICY": "ACTIVE"})
    if text == "default":
        return Setting(text, {})
    if text == "one-thread":
        return Setting(text, {}, threads=1)
    if text.startswith("spin:") and text[5:].isdigit():
        return Setting(text, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": text[5:]})
    raise click.BadParameter(f"{text!r}: expected passive, active, spin:N, default or one-thread")


def run_stages(setting: Setting, steps: int, workdir: Path, tag: str) -> dict[str, float]:
    """Samples/s of each stage of ``msp_tps`` cut to ``steps`` steps, run by ``mmcore run`` under ``setting``
    into ``workdir`` as the run named after the setting and ``tag``."""
    name = f"{setting.label.replace(':', '_')}_{tag}"
    argv = [sys.executable, "-m", "mmcore", "run", str(RECIPE), "--quiet", "--output-dir", str(workdir),
            "--run-name", name, "--set", "zero_shot:=[]", "--set", "finetune:=[]"]
    for stage in STAGES:
        argv += ["--set", f"stages.{stage}.max_steps={steps}"]
    if setting.threads is not None:
        argv += ["--threads", str(setting.threads)]
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES} | setting.env
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    results = json.loads(next(workdir.glob(f"*/{name}/results.json")).read_text(encoding="utf-8"))
    return {stage: s["samples"] / s["seconds"] for stage, s in results["_stages"].items()}


def table(busy: int, rows: list[tuple[Setting, dict[str, float]]]) -> str:
    """A markdown table: samples/s per stage and each row's ratio to the first row."""
    head = f"## beside {busy} busy process(es)" if busy else "## idle"
    lines = [head, "", "| setting | " + " | ".join(f"{s} samples/s" for s in STAGES) + " | vs first (per stage) |",
             "|---|" + "---:|" * len(STAGES) + "---|"]
    reference = rows[0][1]
    for setting, rates in rows:
        ratios = ", ".join(f"{rates[s] / reference[s]:.2f}" for s in STAGES)
        lines.append(f"| {setting.label} | " + " | ".join(f"{rates[s]:.0f}" for s in STAGES) + f" | {ratios} |")
    return "\n".join(lines)


@click.command()
@click.option("--steps", type=click.IntRange(min=1), default=30, show_default=True, help="Steps per stage.")
@click.option("--busy", "busy_counts", default="0,1", show_default=True,
              help="Comma-separated numbers of busy processes to measure beside (0: idle).")
@click.option("--setting", "settings", multiple=True, callback=lambda _c, _p, v: [parse_setting(s) for s in v],
              help="passive | active | spin:N | default | one-thread (repeatable; default: a sweep).")
def main(steps: int, busy_counts: str, settings: list[Setting]) -> None:
    """Print each stage's samples/s under each wait setting, idle and beside busy processes."""
    settings = settings or [parse_setting(s) for s in
                            ("default", "passive", "spin:1000", "spin:3000", "spin:10000", "active", "one-thread")]
    click.echo(f"# {RECIPE.name}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f}; {steps} steps "
               "per stage; samples/s from each run's results.json")
    with tempfile.TemporaryDirectory() as tmp:
        for busy in (int(b) for b in busy_counts.split(",")):
            workers = busy_processes(busy)
            rows = []
            try:
                for setting in settings:
                    if busy and setting.label == "active":
                        continue  # spinning threads beside a busy process crawl (docs/benchmarks.md)
                    rows.append((setting, run_stages(setting, steps, Path(tmp), f"busy{busy}")))
                    click.echo(f"{setting.label}: " + ", ".join(f"{v:.0f}" for v in rows[-1][1].values()), err=True)
            finally:
                for process in workers:
                    process.kill()
                    process.wait()
            click.echo(table(busy, rows) + "\n")


if __name__ == "__main__":
    main()
