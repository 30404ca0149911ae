"""What a run's floating-point results depend on besides the recipe: recorded so a rerun can be judged.

A recipe run twice on one machine gives bit-identical metrics and losses (``tests/test_determinism.py``). Across
machines it need not: the CPU kernels torch dispatches to (AVX2, AVX-512, ...), the intra-op thread count and the
library versions change the order of floating-point sums, and training amplifies those last-bit differences into
different final figures. Two runs whose fingerprints differ are expected to agree only up to the seed spread.
"""

from __future__ import annotations

import platform
from typing import Any

import torch


def machine_fingerprint() -> dict[str, Any]:
    """The software and CPU facts that decide bit-level results: versions, torch's CPU kernel level, processor."""
    import numpy
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "processor": _processor_name(),
    }


def _processor_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
