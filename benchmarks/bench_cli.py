"""How long ``mmcore --help``, ``mmcore --version`` and shell completion take to answer (goal: at most 0.5 s).

    python benchmarks/bench_cli.py [--repeats 5]

Each command runs as a fresh process (as a shell runs it); the median wall time of the repeats is printed beside
two references measured the same way now: a bare ``python -c pass`` and ``python -c "import torch"`` (what every
command paid before the CLI imported torch and plugins lazily), and beside the times recorded before that change.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

# Measured on the 2-core reference machine before the lazy imports, with `/usr/bin/time mmcore --help` (median of 3
# fresh processes: 4.59, 2.93, 3.69 s) and `mmcore --version` (mean of 2: 3.43, 2.99 s); `import torch` took 2.38 s
# then. The machine was shared with other work, so compare against this run's `import torch` line too.
BEFORE = {"mmcore --help": 3.69, "mmcore --version": 3.21}


def timed(argv: list[str], env: dict[str, str] | None = None, repeats: int = 5) -> float:
    """Median wall seconds of ``argv`` run ``repeats`` times (output discarded; a failure stops the benchmark)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    """Print one line per command: median seconds, and the recorded time before the change where there is one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    mmcore = shutil.which("mmcore") or sys.exit("the mmcore command is not on PATH (pip install the package first)")
    rows = [
        ("python -c pass", timed([sys.executable, "-c", "pass"], repeats=repeats)),
        ("python -c 'import torch'", timed([sys.executable, "-c", "import torch"], repeats=repeats)),
        ("mmcore --help", timed([mmcore, "--help"], repeats=repeats)),
        ("mmcore --version", timed([mmcore, "--version"], repeats=repeats)),
        ("mmcore <TAB> (bash completion)", timed([mmcore], {"COMP_WORDS": "mmcore ", "COMP_CWORD": "1",
                                                              "_MMCORE_COMPLETE": "bash_complete"}, repeats)),
    ]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'command':<34} {'now (s)':>8} {'before (s)':>11}")
    for name, seconds in rows:
        before = f"{BEFORE[name]:.2f}" if name in BEFORE else ""
        print(f"{name:<34} {seconds:>8.2f} {before:>11}")


if __name__ == "__main__":
    main()
