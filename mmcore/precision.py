"""The floating-point precision a run computes in, decided once per run and recorded in its ``results.json``.

``fp32`` and ``bf16`` are what they say (bf16: autocast for training and evaluation, weights and optimiser state in
fp32). ``auto`` takes bf16 where the device has native bf16 arithmetic (a CUDA GPU that supports bf16, a CPU with
AMX or AVX-512 BF16 instructions) and fp32 elsewhere, where bf16 would be emulated and slower than fp32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a run computes in (``fp32`` or ``bf16``), the recipe's ``setting`` and why."""

    precision: str
    setting: str
    reason: str

    def record(self) -> dict[str, Any]:
        """The choice as a JSON-ready dict (written to the run's ``results.json`` under ``_run``)."""
        return asdict(self)


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and what says so."""
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported(including_emulation=False)
        return supported, f"{torch.cuda.get_device_name(device)} {'supports' if supported else 'lacks'} bf16"
    if device.type == "cpu":
        features = [name for name, probe in (("AMX", "_is_amx_tile_supported"),
                                             ("AVX-512 BF16", "_is_avx512_bf16_supported"))
                    if getattr(torch.cpu, probe, lambda: False)()]
        if features:
            return True, f"the CPU has {' and '.join(features)}"
        return False, "the CPU has neither AVX-512 BF16 nor AMX"
    return False, f"bf16 is not chosen automatically on {device.type}"


def choose_precision(setting: str, device: torch.device) -> PrecisionChoice:
    """The precision for ``setting`` (``fp32``, ``bf16`` or ``auto``) on ``device``."""
    if setting != "auto":
        return PrecisionChoice(setting, setting, "the recipe's precision")
    native, why = native_bf16(device)
    return PrecisionChoice("bf16" if native else "fp32", setting, why)
