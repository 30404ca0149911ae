"""bf16 autocast and torch.compile as recipe options: wired through training, evaluation and the backbone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from test_end_to_end import TINY, write_recipe

from mmcore.cli import main
from mmcore.precision import choose_precision
from mmcore.training import autocast

ONE_STAGE = TINY.split("  - name: phrase")[0] + """\
zero_shot: []
finetune:
  - {name: vqa, head: vqa, data: {view: vqa}, max_steps: 2, batch_size: 8}
"""


def test_autocast_is_bf16_only_when_asked() -> None:
    cpu = torch.device("cpu")
    with autocast(cpu, "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def _run(tmp_path: Path, cache: Path, extra: str, name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, list]:
    seen: list[tuple[str, bool]] = []
    def spy(self, *args, **kwargs):  # record whether each forward ran under autocast, in training and evaluation
        seen.append(("train" if self.training else "eval", torch.is_autocast_enabled("cpu")))
        return real_forward(self, *args, **kwargs)

    from mmcore_lxmert.model import Lxmert

    real_forward = Lxmert.forward
    recipe = write_recipe(tmp_path, extra + ONE_STAGE, f"{name}.yaml")
    with monkeypatch.context() as patch:  # undone after the run, so a second run's spy wraps the real forward
        patch.setattr(Lxmert, "forward", spy)
        result = CliRunner().invoke(main, ["run", str(recipe), "--output-dir", str(tmp_path / "runs"),
                                           "--run-name", name, "--cache-dir", str(cache), "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    results = json.loads((tmp_path / "runs" / "tiny" / name / "results.json").read_text())
    return results, seen


def test_bf16_recipe_trains_and_evaluates_under_autocast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    fp32, seen32 = _run(tmp_path, cache, "precision: fp32\n", "fp32", monkeypatch)
    bf16, seen16 = _run(tmp_path, cache, "precision: bf16\n", "bf16", monkeypatch)
    assert {mode for mode, _ in seen16} == {"train", "eval"}
    assert all(on for _, on in seen16) and not any(on for _, on in seen32)
    loss32, loss16 = fp32["_stages"]["token"]["final_loss"], bf16["_stages"]["token"]["final_loss"]
    assert 0.0 <= bf16["vqa"]["metrics"]["accuracy"] <= 1.0
    assert loss16 != loss32 and abs(loss16 - loss32) < 0.05 * abs(loss32)  # lower precision, same training


def test_compile_option_compiles_the_backbone_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(type(self).__name__))
    _run(tmp_path, tmp_path / "cache", "compile: true\n", "compiled", monkeypatch)
    assert calls and set(calls) == {"Lxmert"}  # every backbone the run builds, nothing else


def test_bad_precision_and_compile_values_are_located(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, "precision: fp16\ncompile: yes please\n" + ONE_STAGE)
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "precision must be one of fp32, bf16, auto, got 'fp16'" in result.output
    assert "compile must be true or false, got 'yes please'" in result.output


@pytest.mark.slow
def test_compiled_backbone_trains_for_real(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, "compile: true\n" + ONE_STAGE)
    result = CliRunner().invoke(main, ["run", str(recipe), "--output-dir", str(tmp_path / "runs"), "--run-name", "c",
                                       "--cache-dir", str(tmp_path / "cache"), "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    ckpt = torch.load(tmp_path / "runs" / "tiny" / "c" / "stages" / "token" / "checkpoint.pt", weights_only=False)
    assert not any("_orig_mod" in key for key in ckpt["backbone"])  # checkpoints keep the plain names



@pytest.mark.parametrize(("amx", "avx512_bf16", "expected"), [
    (True, True, "bf16"), (False, True, "bf16"), (True, False, "bf16"), (False, False, "fp32")])
def test_auto_takes_bf16_only_on_a_cpu_with_native_bf16(amx: bool, avx512_bf16: bool, expected: str,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    choice = choose_precision("auto", torch.device("cpu"))
    assert (choice.precision, choice.setting) == (expected, "auto")
    assert choice.reason == {(True, True): "the CPU has AMX and AVX-512 BF16", (True, False): "the CPU has AMX",
                             (False, True): "the CPU has AVX-512 BF16",
                             (False, False): "the CPU has neither AVX-512 BF16 nor AMX"}[amx, avx512_bf16]


def test_explicit_precision_is_kept_whatever_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert choose_precision("fp32", torch.device("cpu")).precision == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    assert choose_precision("bf16", torch.device("cpu")).precision == "bf16"


@pytest.mark.parametrize("native", [True, False])
def test_auto_run_trains_in_the_chosen_precision_and_records_why(native: bool, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    results, seen = _run(tmp_path, tmp_path / "cache", "precision: auto\n", "auto", monkeypatch)
    expected = "bf16" if native else "fp32"
    assert results["_run"]["precision"] == {
        "precision": expected, "setting": "auto",
        "reason": "the CPU has AVX-512 BF16" if native else "the CPU has neither AVX-512 BF16 nor AMX"}
    assert seen and all(on == native for _, on in seen)
