"""Time one pre-training step (MLM + MRFR + MOC + ITM) of mmcore's ``lxmert_s`` with its tasks against
transformers' ``LxmertForPreTraining`` in the same shape, on the same batch, in the same process.

    python benchmarks/bench_pretrain_step.py --device cpu --batch 8 --dtype fp32 --steps 10
    python benchmarks/bench_pretrain_step.py --hidden 128 --layers 2 --steps 5     # a quick CPU check

A timed step is what the engine's loop does: zero the gradients, forward and losses (under autocast for bf16),
backward, clip at the engine's default norm, AdamW step. mmcore's optimiser comes from the engine's
``make_optimizer``; transformers gets ``torch.optim.AdamW`` with its defaults, or with ``--hf-optimizer engine``
mmcore's own, so that the ratio measures the models and tasks alone.

Both models see the same corrupted batch: mmcore's tasks mask it once beforehand (data preparation, as
transformers' data collator would do it) and transformers receives the same ids, features, MLM labels, masked
regions, detector labels and confidences, and ITM labels. mmcore's MLM and MRFR/MOC run with
``max_predictions`` (8 tokens, 12 regions per example by default; 0 turns a cap off), so their heads decode only
masked positions. After the warm-up the timed steps alternate between the models (the order flips every
iteration), so a busy machine slows both alike; the per-pair ratios are printed as well. FLOPs are counted once
per model over a forward and backward pass with ``torch.utils.flop_counter.FlopCounterMode``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import torch
from torch import Tensor, nn
from torch.utils import flop_counter

from mmcore.api import Batch, DataInfo
from mmcore.plugins import load_plugins
from mmcore.training import make_optimizer
from mmcore.validate import DEFAULT_OPTIM

BERT_PAD, BERT_UNK, BERT_CLS, BERT_SEP, BERT_MASK = 0, 100, 101, 102, 103
FIRST_WORD_ID = 1000  # BERT's vocabulary holds [unused] and single characters below this id
CPU_TIME_NOTE = ("# CPU s/step: the process's CPU time per step, all threads; with --threads 1 it measures the work "
                 "done whatever else runs on the machine")


@dataclass(frozen=True)
class BenchConfig:
    """What to time: shapes (LXMERT-S by default), batch, precision, compile, steps, and mmcore's caps."""

    device: str = "cpu"
    batch: int = 8
    dtype: str = "fp32"  # fp32 | bf16 (autocast)
    compile: bool = False
    steps: int = 10
    warmup: int = 2
    hidden: int = 768
    layers: int = 5
    heads: int | None = None  # None: hidden // 64
    intermediate: int | None = None  # None: 4 * hidden
    text_len: int = 20
    regions: int = 36
    feat_dim: int = 2048
    vocab: int = 30522
    num_objects: int = 1600
    num_attributes: int = 400
    mlm_max_predictions: int | None = 8
    region_max_predictions: int | None = 12
    hf_optimizer: str = "stock"  # stock: torch.optim.AdamW defaults | engine: mmcore's make_optimizer
    seed: int = 0

    @property
    def num_heads(self) -> int:
        return self.heads or max(1, self.hidden // 64)

    @property
    def ff(self) -> int:
        return self.intermediate or 4 * self.hidden


@dataclass
class Result:
    """One model's figures at one precision."""

    model: str
    dtype: str
    seconds: list[float]
    flops: int
    peak: str
    losses: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time per step (host side)
    peak_bytes: int | None = None  # CUDA: max allocated; CPU: the resident set's rise (None where unknown)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


# ----- models -------------------------------------------------------------------------------------------------


def make_info(cfg: BenchConfig) -> DataInfo:
    """A BERT-vocabulary, Visual-Genome-detector data description of the benchmark's shape."""
    specials = (BERT_PAD, BERT_UNK, BERT_CLS, BERT_SEP, BERT_MASK)
    return DataInfo(
        vocab_size=cfg.vocab, feature_dim=cfg.feat_dim, max_regions=cfg.regions, num_objects=cfg.num_objects,
        num_attributes=cfg.num_attributes, pad_token_id=BERT_PAD, cls_token_id=BERT_CLS, sep_token_id=BERT_SEP,
        mask_token_id=BERT_MASK, unk_token_id=BERT_UNK, special_token_ids=specials,
        object_token_ids=tuple((FIRST_WORD_ID + i % (cfg.vocab - FIRST_WORD_ID),) for i in range(cfg.num_objects)),
    )


def build_mmcore(cfg: BenchConfig, info: DataInfo, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """``lxmert_s`` and the mlm/mrfr/moc/itm tasks, built through the plugin registry as the engine builds them."""
    registry = load_plugins().registry
    spec = {"hidden_size": cfg.hidden, "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.ff,
            "x_layers": cfg.layers, "initializer_range": 0.02}
    torch.manual_seed(cfg.seed)
    backbone = registry.get("backbone", "lxmert_s").factory(spec, info).to(device)
    options = {"mlm": {"max_predictions": cfg.mlm_max_predictions},
               "mrfr": {"max_predictions": cfg.region_max_predictions},
               "moc": {"max_predictions": cfg.region_max_predictions}, "itm": {}}
    tasks = {name: registry.get("task", name).factory(info, backbone, **opts).to(device)
             for name, opts in options.items()}
    return backbone, dict(sorted(tasks.items(), key=lambda kv: kv[1].order))


def build_transformers(cfg: BenchConfig, device: torch.device) -> nn.Module:
    """``LxmertForPreTraining`` (l=0, x=layers, r=0; MLM, object/attribute/feature prediction, ITM; no QA)."""
    from transformers import LxmertConfig, LxmertForPreTraining

    config = LxmertConfig(
        vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_attention_heads=cfg.num_heads, intermediate_size=cfg.ff,
        l_layers=0, x_layers=cfg.layers, r_layers=0, visual_feat_dim=cfg.feat_dim, num_object_labels=cfg.num_objects,
        num_attr_labels=cfg.num_attributes, task_mask_lm=True, task_obj_predict=True, task_matched=True,
        task_qa=False, visual_obj_loss=True, visual_attr_loss=True, visual_feat_loss=True,
    )
    torch.manual_seed(cfg.seed)
    return LxmertForPreTraining(config).to(device)


# ----- data ---------------------------------------------------------------------------------------------------


def make_batch(cfg: BenchConfig, info: DataInfo) -> Batch:
    """A seeded CPU batch: [CLS] words [SEP] texts of varied length (one full), 36 real regions, detector labels."""
    g = torch.Generator().manual_seed(cfg.seed)
    b, t, o = cfg.batch, cfg.text_len, cfg.regions
    lengths = torch.randint(max(3, t // 2), t + 1, (b,), generator=g)
    lengths[0] = t
    pos = torch.arange(t)
    ids = torch.randint(FIRST_WORD_ID, cfg.vocab, (b, t), generator=g)
    ids[:, 0] = BERT_CLS
    ids = torch.where(pos == lengths[:, None] - 1, BERT_SEP, ids)
    attention = (pos < lengths[:, None]).long()
    ids = torch.where(attention.bool(), ids, BERT_PAD)
    special = (pos == 0) | (pos == lengths[:, None] - 1)
    # Whole-word positions with one word per token: padding 0, [CLS]/[SEP] 1, words from 2.
    positions = torch.where(attention.bool(), torch.where(special, 1, pos + 1), 0)
    corner = torch.rand(b, o, 2, generator=g) * 0.7
    size = 0.05 + torch.rand(b, o, 2, generator=g) * 0.25
    return {
        "input_ids": ids, "attention_mask": attention, "position_ids": positions,
        # ROI features are post-ReLU activations: non-negative, about half zero.
        "visual_feats": torch.relu(torch.randn(b, o, cfg.feat_dim, generator=g)),
        "visual_pos": torch.cat([corner, corner + size], dim=-1), "visual_mask": torch.ones(b, o, dtype=torch.long),
        "obj_labels": torch.randint(0, info.num_objects, (b, o), generator=g), "obj_conf": torch.rand(b, o, generator=g),
        "attr_labels": torch.randint(0, info.num_attributes, (b, o), generator=g),
        "attr_conf": torch.rand(b, o, generator=g), "itm_label": torch.randint(0, 2, (b,), generator=g),
    }


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Copy to ``device`` the way the engine's loader does: pinned host memory, non-blocking copies."""
    pin = device.type == "cuda"
    return {k: (v.pin_memory() if pin else v).to(device, non_blocking=True) for k, v in batch.items()}


def corrupt(batch: Batch, tasks: dict[str, Any], device: torch.device, seed: int) -> None:
    """Mask the batch once with mmcore's tasks (in their order), on the device, from a seeded generator."""
    generator = torch.Generator(device=device).manual_seed(seed)
    for task in tasks.values():
        task.corrupt(batch, generator)


def transformers_inputs(batch: Batch) -> dict[str, Any]:
    """The same corrupted batch in ``LxmertForPreTraining``'s arguments (masked regions weight the visual losses)."""
    masked = batch["region_mask"].float()
    return {
        "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
        "token_type_ids": torch.zeros_like(batch["input_ids"]), "visual_feats": batch["visual_feats"],
        "visual_pos": batch["visual_pos"], "visual_attention_mask": batch["visual_mask"].float(),
        "labels": batch["mlm_labels"], "matched_label": batch["itm_label"],
        "obj_labels": {
            "obj": (batch["obj_labels"], masked * batch["obj_conf"]),
            "attr": (batch["attr_labels"], masked * batch["attr_conf"]),
            "feat": (batch["visual_feats_orig"], masked),
        },
    }


# ----- measuring ----------------------------------------------------------------------------------------------


# PyTorch's table lacks the CPU flash-attention kernel that SDPA picks on CPU when dropout is off.
_EXTRA_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *_, **__: flop_counter.sdpa_flop_count(q, k, v),
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda grad, q, k, v, *_, **__: flop_counter.sdpa_backward_flop_count(grad, q, k, v),
}


class Runner:
    """One model's training step: zero grads, loss (under autocast for bf16), backward, clip, optimiser step."""

    def __init__(self, name: str, modules: list[nn.Module], loss_fn: Callable[[], Tensor],
                 optimizer: torch.optim.Optimizer, device: torch.device) -> None:
        self.name, self.modules, self.loss_fn, self.optimizer, self.device = name, modules, loss_fn, optimizer, device
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]
        self.bf16 = False

    def forward_backward(self) -> Tensor:
        """Loss and gradients of one step, without the update."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss_fn()
        loss.backward()
        return loss.detach()

    def step(self) -> Tensor:
        """A whole training step as the engine runs it (clip at the engine's default norm)."""
        loss = self.forward_backward()
        torch.nn.utils.clip_grad_norm_(self.params, DEFAULT_OPTIM["clip"])
        self.optimizer.step()
        return loss

    def count_flops(self) -> int:
        """FLOPs of one forward + backward pass (the optimiser adds no matrix products)."""
        with flop_counter.FlopCounterMode(display=False, custom_mapping=_EXTRA_FLOPS) as counter:
            self.forward_backward()
        self.optimizer.zero_grad(set_to_none=True)
        return counter.get_total_flops()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_kib(key: str) -> int | None:
    try:
        lines = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in lines if line.startswith(key + ":")), None)


class PeakMemory:
    """Peak memory of a step: CUDA's max allocated, or on Linux CPUs the resident-set high-water mark's rise."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: dict[str, int] = {}
        self.base = 0

    def start(self) -> None:
        """Reset the high-water mark before a step."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        except OSError:
            return
        self.base = _proc_kib("VmRSS") or 0

    def stop(self, name: str) -> None:
        """Record the step's peak for ``name`` (the largest over its steps is kept)."""
        if self.device.type == "cuda":
            value = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _proc_kib("VmHWM")
            if hwm is None or not self.base:
                return
            value = (hwm - self.base) * 1024
        self.peak[name] = max(self.peak.get(name, 0), value)

    def describe(self, name: str) -> str:
        """``12.3 GiB`` (CUDA), ``RSS rise 456 MiB`` (CPU), or ``n/a``."""
        if name not in self.peak:
            return "n/a"
        if self.device.type == "cuda":
            return f"{self.peak[name] / 2**30:.2f} GiB"
        return f"RSS rise {self.peak[name] / 2**20:.0f} MiB"


def run_benchmark(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> list[Result]:
    """Build both models, mask one batch, warm up, then time alternating steps; one Result per model."""
    device = torch.device(cfg.device)
    info = make_info(cfg)
    backbone, tasks = build_mmcore(cfg, info, device)
    hf_model = build_transformers(cfg, device)
    batch = to_device(make_batch(cfg, info), device)
    corrupt(batch, tasks, device, cfg.seed)
    hf_inputs = transformers_inputs(batch)

    def mmcore_loss() -> Tensor:
        output = backbone.encode(batch)
        return torch.stack([task.loss(output, batch) for task in tasks.values()]).sum()

    def transformers_loss() -> Tensor:
        return hf_model(**hf_inputs).loss

    mm_modules = [backbone, *tasks.values()]
    mm_params = [p for m in mm_modules for p in m.parameters() if p.requires_grad]
    hf_params = [p for p in hf_model.parameters() if p.requires_grad]
    if cfg.hf_optimizer == "engine":
        hf_optimizer = make_optimizer(hf_params, DEFAULT_OPTIM, device)
    else:
        hf_optimizer = torch.optim.AdamW(hf_params, lr=DEFAULT_OPTIM["lr"], weight_decay=DEFAULT_OPTIM["weight_decay"])
    runners = [
        Runner("mmcore", mm_modules, mmcore_loss, make_optimizer(mm_params, DEFAULT_OPTIM, device), device),
        Runner("transformers", [hf_model], transformers_loss, hf_optimizer, device),
    ]
    for module in (*mm_modules, hf_model):
        module.train()
    flops = {r.name: r.count_flops() for r in runners}  # eager, before any compilation
    if cfg.compile:
        for runner in runners:
            runner.loss_fn = torch.compile(runner.loss_fn)

    results = []
    for dtype in (["fp32", "bf16"] if cfg.dtype == "both" else [cfg.dtype]):
        for runner in runners:
            runner.bf16 = dtype == "bf16"
        for i in range(cfg.warmup):
            for runner in runners:
                runner.step()
            _sync(device)
            log(f"{dtype}: warm-up {i + 1}/{cfg.warmup}")
        memory = PeakMemory(device)
        times: dict[str, list[float]] = {r.name: [] for r in runners}
        cpu_times: dict[str, list[float]] = {r.name: [] for r in runners}
        losses: dict[str, list[float]] = {r.name: [] for r in runners}
        for i in range(cfg.steps):
            for runner in runners if i % 2 == 0 else runners[::-1]:
                _sync(device)
                memory.start()
                start, cpu_start = time.perf_counter(), time.process_time()
                loss = runner.step()
                _sync(device)
                times[runner.name].append(time.perf_counter() - start)
                cpu_times[runner.name].append(time.process_time() - cpu_start)
                memory.stop(runner.name)
                losses[runner.name].append(float(loss))  # after the clock: reading it back waits for the device
            log(f"{dtype}: step {i + 1}/{cfg.steps}: " + ", ".join(f"{n} {t[-1] * 1e3:.0f} ms" for n, t in times.items()))
        for runner in runners:
            results.append(Result(runner.name, dtype, times[runner.name], flops[runner.name],
                                  memory.describe(runner.name), losses[runner.name], cpu_times[runner.name],
                                  memory.peak.get(runner.name)))
    return results


# ----- report -------------------------------------------------------------------------------------------------


def format_table(cfg: BenchConfig, results: list[Result]) -> str:
    """A markdown table per model and precision: step time (and on CPU the process CPU time, median), samples/s,
    FLOPs, TFLOP/s, peak memory, and the samples/s ratio (from median step times)."""
    header = ["dtype", "model", "step ms (median)", "step ms (min)", "samples/s", "GFLOP/step", "TFLOP/s",
              "peak memory", "mmcore / transformers"]
    on_cpu = cfg.device == "cpu"
    if on_cpu:
        header.insert(4, "CPU s/step")
    rows = []
    by_key = {(r.dtype, r.model): r for r in results}
    for r in results:
        other = by_key.get((r.dtype, "transformers"))
        ratio = f"{other.median / r.median:.3f}x" if r.model == "mmcore" and other else ""
        row = [r.dtype, r.model, f"{r.median * 1e3:.1f}", f"{min(r.seconds) * 1e3:.1f}", f"{cfg.batch / r.median:.2f}",
               f"{r.flops / 1e9:.4g}", f"{r.flops / r.median / 1e12:.3g}", r.peak, ratio]
        if on_cpu:
            row.insert(4, f"{statistics.median(r.cpu_seconds):.3f}" if r.cpu_seconds else "n/a")
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    table = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]
    return "\n".join(table + paired_ratios(results))


def paired_ratios(results: list[Result]) -> list[str]:
    """Per precision, the ratio within each alternating pair of steps: robust to load that drifts over the run."""
    lines = []
    by_key = {(r.dtype, r.model): r for r in results}
    for dtype in dict.fromkeys(r.dtype for r in results):
        mm, hf = by_key.get((dtype, "mmcore")), by_key.get((dtype, "transformers"))
        if mm is None or hf is None:
            continue
        ratios = sorted(h / m for m, h in zip(mm.seconds, hf.seconds))
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        faster = sum(r > 1 for r in ratios)
        lines.append(f"# {dtype}: per-pair speed ratio median {quartiles[1]:.3f}x (quartiles {quartiles[0]:.3f}-"
                     f"{quartiles[2]:.3f}); mmcore faster in {faster} of {len(ratios)} pairs")
    return lines


def describe(cfg: BenchConfig, device: torch.device, loads: tuple[float, float]) -> str:
    """The run's settings as comment lines above the table."""
    import transformers

    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"cpu, {torch.get_num_threads()} threads")
    caps = (f"mlm max_predictions {cfg.mlm_max_predictions or 'off'}, "
            f"mrfr/moc max_predictions {cfg.region_max_predictions or 'off'}")
    hf_opt = "engine make_optimizer" if cfg.hf_optimizer == "engine" else "torch.optim.AdamW defaults"
    return "\n".join([
        (f"# one pre-training step (MLM + MRFR + MOC + ITM; forward, backward, clip, AdamW), batch {cfg.batch}, "
         f"{cfg.text_len} tokens, {cfg.regions} regions x {cfg.feat_dim}, vocab {cfg.vocab}"),
        (f"# shape: hidden {cfg.hidden}, {cfg.num_heads} heads, ff {cfg.ff}, x_layers {cfg.layers} (l=0, r=0); "
         f"{where}; torch {torch.__version__}, transformers {transformers.__version__}"
         + ("; torch.compile" if cfg.compile else "")),
        f"# mmcore: lxmert_s + mlm, mrfr, moc, itm ({caps}); optimiser: engine make_optimizer",
        f"# transformers: LxmertForPreTraining (mask_lm, obj+attr+feat, matched; qa off); optimiser: {hf_opt}",
        (f"# {cfg.steps} timed steps per model, alternating, after {cfg.warmup} warm-up steps; "
         f"load average {loads[0]:.2f} before, {loads[1]:.2f} after"),
    ] + ([CPU_TIME_NOTE] if device.type == "cpu" else []))


def bf16_supported(device: torch.device) -> bool:
    """Whether bf16 has native support here (CUDA: the GPU says so; CPU: AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@click.command()
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--dtype", type=click.Choice(["fp32", "bf16", "both"]), default="both", show_default=True,
              help="bf16 = autocast; both = fp32, then bf16 where the hardware supports it")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile both models' forward and loss")
@click.option("--steps", type=click.IntRange(min=1), default=10, show_default=True, help="timed steps per model")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=768, show_default=True)
@click.option("--layers", type=click.IntRange(min=1), default=5, show_default=True, help="cross-modality layers")
@click.option("--heads", type=click.IntRange(min=1), default=None, help="default: hidden / 64")
@click.option("--mlm-max-predictions", type=click.IntRange(min=0), default=8, show_default=True,
              help="0: uncapped (syncs)")
@click.option("--region-max-predictions", type=click.IntRange(min=0), default=12, show_default=True, help="0: uncapped")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU threads for torch (default: torch's choice); 1 gives steadier figures on a shared machine")
@click.option("--hf-optimizer", type=click.Choice(["stock", "engine"]), default="stock", show_default=True,
              help="transformers' optimiser: torch AdamW defaults, or mmcore's make_optimizer (same as mmcore)")
def main(device: str, batch: int, dtype: str, compile_: bool, steps: int, warmup: int, hidden: int, layers: int,
         heads: int | None, mlm_max_predictions: int, region_max_predictions: int, threads: int | None,
         hf_optimizer: str) -> None:
    """Time one pre-training step of mmcore and of transformers' LXMERT and print a table."""
    if device == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", param_hint="--device")
    heads = heads or max(1, hidden // 64)
    if hidden % heads:
        raise click.BadParameter(f"hidden {hidden} is not a multiple of {heads} heads", param_hint="--heads")
    if threads is not None:
        torch.set_num_threads(threads)
    if compile_ and warmup < 1:
        raise click.BadParameter("--compile needs at least one warm-up step (compilation)", param_hint="--warmup")
    cfg = BenchConfig(device=device, batch=batch, dtype=dtype, compile=compile_, steps=steps, warmup=warmup,
                      hidden=hidden, layers=layers, heads=heads, mlm_max_predictions=mlm_max_predictions or None,
                      region_max_predictions=region_max_predictions or None, hf_optimizer=hf_optimizer)
    notes = []
    if dtype == "both" and not bf16_supported(torch.device(device)):
        notes.append(f"# bf16 skipped: no native bf16 support on this {device}")
        cfg = replace(cfg, dtype="fp32")
    before = os.getloadavg()[0]
    results = run_benchmark(cfg, log=lambda s: print(s, file=sys.stderr, flush=True))
    print(describe(cfg, torch.device(device), (before, os.getloadavg()[0])))
    print("\n".join(notes + [format_table(cfg, results)]))


if __name__ == "__main__":
    main()
