"""One example across a run's pre-training stages, like the MSP paper's Figures 3 and 4.

For each stage of the run, in order: the top answers (with probabilities) that the answer head fine-tuned from that
stage gives one question (``init: <stage>`` in the recipe; the last stage's is the default fine-tuning), and the
caption that the retrieval head ranks first for one image among every caption of the split: the head fine-tuned
from that stage if there is one, else the stage's pre-trained image-text matching head (zero-shot), else none.
A run without stages has one row: its fine-tuned heads. Heads are reached through the registry and the
:class:`mmcore.api.Head` methods ``top_predictions``, ``gold_labels`` and ``pair_scores``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmcore.api import Backbone, Batch, ExampleSource, Head
from mmcore.checkpointing import check_fits, read_checkpoint
from mmcore.data.collate import Collator, to_device
from mmcore.errors import MMCoreError
from mmcore.builders import build_backbone, build_head, pretrained_tasks, stage_state
from mmcore.context import RunContext
from mmcore.finetuning import BEST
from mmcore.layout import Layout
from mmcore.schema.keys import MAX_TEXT_LEN
from mmcore.training import autocast

TOP_K = 3
NO_STAGES = "(no pre-training)"
_SHOWN_IDS = 5  # ids listed in an unknown-id error


@dataclass
class AnswerCell:
    """The answers of one stage's fine-tuned answer head (``source`` None: none; ``note`` says why)."""

    source: str | None
    answers: list[tuple[str, float]] = field(default_factory=list)
    note: str = ""


@dataclass
class CaptionCell:
    """The first-ranked caption of one stage's matching head (``source`` None: none; ``note`` says why)."""

    source: str | None
    caption: str | None = None
    score: float | None = None
    gold: bool = False
    gold_rank: int | None = None  # rank of the image's best-scoring own caption (ties count against it)
    note: str = ""


@dataclass
class StageRow:
    """One row: the stage, the curriculum up to it (``T → P``), its answers and its caption."""

    stage: str
    curriculum: str
    answers: AnswerCell
    caption: CaptionCell


@dataclass
class Inspection:
    """Everything ``mmcore inspect`` shows and writes."""

    run: str
    question_id: str
    question: str
    image_id: str
    data: str  # dataset/view/split of the question
    gold: dict[str, float]
    caption_image: str | None
    caption_data: str | None
    gold_captions: list[str]
    rows: list[StageRow]

    def to_json(self) -> dict[str, Any]:
        """Plain values (answers as ``{"answer", "probability"}``)."""
        out = asdict(self)
        for row in out["rows"]:
            row["answers"]["answers"] = [{"answer": a, "probability": p} for a, p in row["answers"]["answers"]]
        return out


def inspect_example(ctx: RunContext, question_id: str, caption_image: str | None = None, *,
                    answer_head: str | None = None, caption_head: str | None = None, split: str | None = None,
                    k: int = TOP_K) -> Inspection:
    """Inspect question ``question_id`` (and image ``caption_image``, default the question's) in the run of
    context ``ctx`` (opened over the run's resolved recipe and directory). The answer head
    defaults to the first fine-tuned one that predicts labels, the caption head to the first evaluated one that
    scores text-image pairs."""
    recipe = ctx.recipe
    answer_head = answer_head or first_head(ctx, ("finetune",), "top_predictions")
    caption_head = caption_head or first_head(ctx, ("finetune", "zero_shot"), "pair_scores")
    stages = [s["name"] for s in recipe["stages"]]
    answer_items = [f for f in recipe["finetune"] if f["head"] == answer_head]
    if not answer_items:
        tunings = ", ".join(f"{f['name']} ({f['head']})" for f in recipe["finetune"]) or "none"
        wanted = "whose head predicts labels" if answer_head is None else f"with head {answer_head!r}"
        raise MMCoreError(f"{ctx.run.path}: the run has no fine-tuning {wanted} (fine-tunings: {tunings}); "
                          f"--head picks another answer head")
    first = answer_items[0]
    split = split or first["eval_split"]
    data = first["data"][0]
    view = ctx.dataset(data["dataset"]).view(data["view"], split)
    where = f"{data['dataset']}/{data['view']}/{split}"
    listing = ctx.run.path / "finetune" / first["name"] if split == first["eval_split"] else None
    index = find_question(view, question_id, where, listing)
    example = view[index]
    batch = to_device(Collator(ctx.tokenizer, first["max_text_len"])([example]), ctx.device)
    labeller = build_head(ctx, first, {}, build_backbone(ctx).hidden_size)  # untrained: reads targets only
    gold = labeller.gold_labels(batch)[0] if _implements(labeller, "gold_labels") else {}
    gold = dict(sorted(gold.items(), key=lambda pair: -pair[1]))  # the best-scored answer first
    matcher = _Matcher(ctx, caption_head, caption_image, str(example["img_id"]))
    rows = []
    layout = Layout.of(ctx.registry)
    for index_, stage in enumerate(stages or [None]):
        curriculum = " → ".join(layout.stage_label(s) for s in recipe["stages"][: index_ + 1]) or "vanilla"
        item = _starting_from(answer_items, stage, stages)
        rows.append(StageRow(stage or NO_STAGES, curriculum, _answers(ctx, item, batch, k), matcher.cell(stage)))
    return Inspection(str(ctx.run.path), str(question_id), str(example["text"]), str(example["img_id"]), where,
                      gold, matcher.image_id, matcher.where, matcher.gold_captions, rows)


def find_question(view: ExampleSource, question_id: str, where: str, finetune_dir: Path | None) -> int:
    """The index of the question whose id reads ``question_id``, or an error listing where the ids are (among them
    the predictions file of the fine-tuning evaluated on this split, ``finetune_dir``, when given)."""
    ids = getattr(view, "question_ids", None)
    if ids is None:  # a view without the id list: read each example's id
        ids = [view[i].get("question_id") for i in range(len(view))]
    wanted = str(question_id)
    for index, qid in enumerate(ids):
        if str(qid) == wanted:
            return index
    shown = ", ".join(str(q) for q in list(ids)[:_SHOWN_IDS]) or "(none)"
    listing = finetune_dir / "predictions.json" if finetune_dir is not None else None
    hint = f"; every id of the split is in {listing} (question_id)" if listing is not None and listing.is_file() else ""
    raise MMCoreError(f"no question with id {wanted!r} in {where} ({len(ids)} questions; the first: {shown}){hint}; "
                      "--split picks another split")


def _implements(head: Head | type[Head], method: str) -> bool:
    """Whether the head overrides the :class:`Head` default of ``method`` (which raises NotImplementedError)."""
    return getattr(head if isinstance(head, type) else type(head), method) is not getattr(Head, method)


def first_head(ctx: RunContext, sections: Sequence[str], method: str) -> str | None:
    """The head of the first entry of the recipe's ``sections`` whose class implements ``method``, if any."""
    for section in sections:
        for item in ctx.recipe[section]:
            if _implements(ctx.registry.get("head", item["head"]).factory, method):
                return str(item["head"])
    return None


def _starting_from(items: Sequence[dict[str, Any]], stage: str | None, stages: list[str]) -> dict[str, Any] | None:
    """The first entry that starts from ``stage`` (no ``init``: the last stage; in a run without stages, any)."""
    for item in items:
        if item.get("init", stages[-1] if stages else None) == stage:
            return item
    return None


def _finetuned(ctx: RunContext, item: dict[str, Any]) -> tuple[Backbone, Head, str] | None:
    """(backbone, head, checkpoint name) of a fine-tuning: its selected ``best.pt``, else ``checkpoint.pt``."""
    folder = ctx.run.path / "finetune" / item["name"]
    path = folder / BEST if (folder / BEST).is_file() else folder / "checkpoint.pt"
    if not path.is_file():
        return None
    ckpt = read_checkpoint(path)
    backbone = _backbone(ctx, ckpt["backbone"], str(path))
    head = build_head(ctx, item, {}, backbone.hidden_size)
    try:
        head.load_state_dict(ckpt["head"])
    except RuntimeError as exc:
        raise MMCoreError(f"{path}: its head weights do not fit head {item['head']!r}: "
                          f"{str(exc).splitlines()[0]}") from None
    head.eval()
    return backbone, head, path.name


def _backbone(ctx: RunContext, weights: dict[str, Tensor], path: str) -> Backbone:
    torch.manual_seed(ctx.seed)
    backbone = build_backbone(ctx)
    check_fits(weights, backbone, "mmcore inspect", path)
    backbone.load_state_dict(weights)
    return backbone.eval()


def _answers(ctx: RunContext, item: dict[str, Any] | None, batch: Batch, k: int) -> AnswerCell:
    if item is None:
        return AnswerCell(None, note="no fine-tuning starts from this stage")
    loaded = _finetuned(ctx, item)
    if loaded is None:
        return AnswerCell(None, note=f"fine-tuning {item['name']!r} has no checkpoint yet")
    backbone, head, file = loaded
    if not _implements(head, "top_predictions"):
        raise MMCoreError(f"head {item['head']!r} does not predict answers (no top_predictions); --head picks another")
    with torch.no_grad(), autocast(ctx.device, ctx.precision.precision):
        answers = head.top_predictions(backbone, batch, k)[0]
    return AnswerCell(f"{item['name']} ({file})", [(str(a), float(p)) for a, p in answers])


class _Matcher:
    """The retrieval side: which view and image, and each stage's first-ranked caption."""

    def __init__(self, ctx: RunContext, head: str | None, image_id: str | None, question_image: str) -> None:
        self.ctx, self.head = ctx, head
        recipe = ctx.recipe
        self.tunings = [f for f in recipe["finetune"] if f["head"] == head]
        self.zero_shots = [z for z in recipe["zero_shot"] if z["head"] == head]
        self.stages = [s["name"] for s in recipe["stages"]]
        self.image_id, self.where, self.gold_captions = None, None, []
        self.captions: list[str] = []
        self.owners: list[int] = []
        source = self.tunings[0] if self.tunings else (self.zero_shots[0] if self.zero_shots else None)
        if source is None:
            if image_id is not None:
                raise MMCoreError(f"--caption-image: the run has no evaluation with head {head!r} to take captions from")
            return
        self.item = source
        data = source["data"][0]
        split = source.get("eval_split", data["split"])
        self.view = ctx.dataset(data["dataset"]).view(data["view"], split)
        self.where = f"{data['dataset']}/{data['view']}/{split}"
        try:
            images = list(self.view.images)  # type: ignore[attr-defined]
            self.captions = list(self.view.captions)  # type: ignore[attr-defined]
            self.owners = list(self.view.caption_image)  # type: ignore[attr-defined]
        except AttributeError:
            raise MMCoreError(f"{self.where} is not a caption-ranking view (images, captions, caption_image)") from None
        if image_id is None:
            image_id = question_image if question_image in images else images[0]
        elif image_id not in images:
            shown = ", ".join(images[:_SHOWN_IDS])
            raise MMCoreError(f"--caption-image: no image {image_id!r} in {self.where} ({len(images)} images; the "
                              f"first: {shown})")
        self.image_id, self.image_index = image_id, images.index(image_id)
        self.gold_captions = [c for c, owner in zip(self.captions, self.owners) if owner == self.image_index]

    def cell(self, stage: str | None) -> CaptionCell:
        """The first-ranked caption of the head fine-tuned from ``stage``, else of its zero-shot head."""
        if self.image_id is None:
            return CaptionCell(None, note=f"the run has no evaluation with head {self.head!r}")
        item = _starting_from(self.tunings, stage, self.stages)
        loaded = _finetuned(self.ctx, item) if item is not None else None
        if loaded is not None:
            backbone, head, file = loaded
            return self._rank(backbone, head, f"{item['name']} ({file})")  # type: ignore[index]
        if stage is None:
            return CaptionCell(None, note="no fine-tuning to rank captions with")
        state = stage_state(self.ctx, stage)
        entry = next((z for z in self.zero_shots if z.get("init", self.stages[-1]) == stage), self.item)
        backbone = _backbone(self.ctx, state["backbone"], str(self.ctx.run.stage_checkpoint(stage)))
        tasks = pretrained_tasks(self.ctx, state, through=stage)
        head = build_head(self.ctx, entry, tasks, backbone.hidden_size).eval()
        if not head.zero_shot_ready:
            return CaptionCell(None, note="no fine-tuning from this stage and no pre-trained matching head")
        origin = getattr(head, "initialized_from", None)
        return self._rank(backbone, head, f"zero-shot ({origin})" if origin else "zero-shot")

    def _rank(self, backbone: Backbone, head: Head, source: str) -> CaptionCell:
        if not _implements(head, "pair_scores"):
            raise MMCoreError(f"head {self.head!r} does not score text-image pairs (no pair_scores)")
        scores = self.scores(backbone, head)
        top = int(scores.argmax())
        own = torch.tensor([owner == self.image_index for owner in self.owners])
        best_gold = scores[own].max()
        rank = int((scores >= best_gold).sum())
        return CaptionCell(source, self.captions[top], float(scores[top]), bool(own[top]), rank)

    def scores(self, backbone: Backbone, head: Head) -> Tensor:
        """Scores [C] of every caption of the view against the image, on the CPU."""
        ctx = self.ctx
        image = self.view.image(str(self.image_id))
        collate = Collator(ctx.tokenizer, int(self.item.get("max_text_len", MAX_TEXT_LEN)))
        size = int(ctx.recipe["eval_batch_size"])
        out = []
        with torch.no_grad(), autocast(ctx.device, ctx.precision.precision):
            for start in range(0, len(self.captions), size):
                examples = [{"text": c, **image} for c in self.captions[start : start + size]]
                out.append(head.pair_scores(backbone, to_device(collate(examples), ctx.device)).float().cpu())
        return torch.cat(out)


def file_stem(question_id: str) -> str:
    """``inspect_<id>`` with the id made safe for a file name."""
    return "inspect_" + (re.sub(r"[^A-Za-z0-9_.-]+", "_", str(question_id)).strip("_") or "example")


# ----- writing: markdown, JSON, PNG ---------------------------------------------------------------------------------
def answer_text(cell: AnswerCell, gold: dict[str, float], mark: Callable[[str], str] = lambda s: f"**{s}**",
                plain: Callable[[str], str] = lambda s: s) -> str:
    """``yes 0.62 · no 0.30 · two 0.03`` with gold answers through ``mark`` and other text through ``plain``, or
    ``–`` and why."""
    if cell.source is None:
        return plain(f"– ({cell.note})")
    return " · ".join((mark(a) if a in gold else plain(a)) + f" {p:.2f}" for a, p in cell.answers)


def caption_text(cell: CaptionCell) -> str:
    """``"a red cat" (score 1.23, gold)``, or ``–`` and why."""
    if cell.source is None or cell.caption is None:
        return f"– ({cell.note})"
    verdict = "gold" if cell.gold else f"not gold; best gold caption ranked {cell.gold_rank}"
    return f"“{cell.caption}” (score {cell.score:.3f}, {verdict})"


def markdown(ins: Inspection, png: str | None, no_png: str = "") -> str:
    """The inspection as a markdown page (tables of answers and captions per stage)."""
    gold = ", ".join(f"{a} ({s:.1f})" for a, s in ins.gold.items()) or "(none)"
    lines = [f"# Example {ins.question_id} across the pre-training stages", "",
             f"Run: `{ins.run}`", "",
             f"**Question** ({ins.data}, image `{ins.image_id}`): {ins.question}", "",
             f"**Gold answers** (score): {gold}", "",
             "| after stage | curriculum | answer head | top answers (probability; gold in bold) |",
             "|---|---|---|---|"]
    lines += [f"| {r.stage} | {r.curriculum} | {r.answers.source or '–'} | {_md(answer_text(r.answers, ins.gold))} |"
              for r in ins.rows]
    if ins.caption_image is not None:
        lines += ["", f"**Caption image** `{ins.caption_image}` ({ins.caption_data}); its captions: "
                  + "; ".join(f"“{c}”" for c in ins.gold_captions), "",
                  "| after stage | curriculum | matching head | top-1 caption among the split's |", "|---|---|---|---|"]
        lines += [f"| {r.stage} | {r.curriculum} | {r.caption.source or '–'} | {_md(caption_text(r.caption))} |"
                  for r in ins.rows]
    lines += ["", f"![answers and captions per stage]({png})" if png else no_png]
    return "\n".join(lines).rstrip() + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def plot(ins: Inspection, path: Path) -> Path | None:
    """One panel per stage: bars of the top answers' probabilities (gold answers highlighted), the retrieved
    caption below; None when matplotlib (the ``plots`` extra) is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    import textwrap

    from mmcore.data.fileio import atomic_path

    fig = Figure(figsize=(4.2 * len(ins.rows), 4.4), layout="constrained")
    axes = fig.subplots(1, len(ins.rows), squeeze=False)[0]
    for ax, row in zip(axes, ins.rows):
        answers = row.answers.answers[::-1]  # barh draws bottom-up: the most probable on top
        colours = ["tab:green" if a in ins.gold else "tab:gray" for a, _ in answers]
        ax.barh(range(len(answers)), [p for _, p in answers], color=colours)
        ax.set_yticks(range(len(answers)), [a for a, _ in answers])
        for y, (_, p) in enumerate(answers):
            ax.text(min(p + 0.02, 0.8), y, f"{p:.2f}", va="center", fontsize="small")
        ax.set_xlim(0, 1)
        if not answers:
            ax.text(0.5, 0.5, "no fine-tuning\nfrom this stage", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])  # an empty panel: a probability axis would suggest zeros
        ax.set_title(f"after {row.stage} ({row.curriculum})", fontsize="medium")
        caption = row.caption
        if ins.caption_image is not None:
            text = ("–" if caption.caption is None else
                    f"“{caption.caption}” ({'gold' if caption.gold else 'not gold'})")
            ax.set_xlabel("top-1 caption: " + textwrap.fill(text, 44), fontsize="small",
                          color="tab:green" if caption.gold else "black")
    gold = ", ".join(ins.gold) or "(no gold answer)"
    title = f"Q{ins.question_id}: {ins.question} — gold: {gold} (bars: answer probability; green: a gold answer)"
    fig.suptitle(textwrap.fill(title, 40 * len(ins.rows)), fontsize="medium")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


def write_outputs(ins: Inspection, out: Path, hint: str) -> list[Path]:
    """Write ``inspect_<id>.json``, ``.png`` (when matplotlib is there) and ``.md`` under ``out``, each atomically;
    return the files written. ``hint`` says in the markdown how to get the PNG when it is missing."""
    from mmcore.data.fileio import atomic_path, write_json

    stem = file_stem(ins.question_id)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    write_json(json_path, ins.to_json())
    png = plot(ins, out / f"{stem}.png")
    md_path = out / f"{stem}.md"
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown(ins, png.name if png else None, f"No PNG: {hint}."), encoding="utf-8")
    return [md_path, json_path, *([png] if png else [])]
