"""What ``mmcore data check`` reports about a dataset: counts, answer coverage, unknown images and the
question-only baseline (each question answered with the most frequent training answer of its question string,
else of its question type, else of all training questions)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmcore.data.userdata import Annotations, Record

__all__ = ["QuestionPrior", "prior_score", "question_key"]

ALL_TYPES = "all"


def question_key(question: str) -> str:
    """Questions compare lowercased, whitespace collapsed, without a final question mark."""
    return " ".join(question.lower().split()).rstrip("?").strip()


@dataclass
class QuestionPrior:
    """The most frequent training answer by question string, by question type and overall."""

    by_question: dict[str, str]
    by_type: dict[str, str]
    overall: str

    @classmethod
    def fit(cls, questions: Iterable[tuple[str, str | None, Mapping[str, float]]]) -> QuestionPrior:
        """From (question, type or None, answer scores) of the training questions."""
        per_question: dict[str, Counter[str]] = {}
        per_type: dict[str, Counter[str]] = {}
        overall: Counter[str] = Counter()
        for question, qtype, label in questions:
            for answer, score in label.items():
                per_question.setdefault(question_key(question), Counter())[answer] += score
                if qtype is not None:
                    per_type.setdefault(qtype, Counter())[answer] += score
                overall[answer] += score
        return cls({q: _top(c) for q, c in per_question.items()}, {t: _top(c) for t, c in per_type.items()},
                   _top(overall) if overall else "")

    def answer(self, question: str, qtype: str | None = None) -> str:
        """The prior's answer to one question."""
        found = self.by_question.get(question_key(question))
        if found is None and qtype is not None:
            found = self.by_type.get(qtype)
        return found if found is not None else self.overall


def _top(counts: Counter[str]) -> str:
    # Ties go to the alphabetically first answer, so the baseline does not depend on record order.
    return min(counts, key=lambda a: (-counts[a], a))


def prior_score(prior: QuestionPrior, questions: Sequence[tuple[str, str | None, Mapping[str, float]]]
                ) -> dict[str, float]:
    """Mean score of the prior's answers: ``all`` and one entry per question type."""
    totals: dict[str, list[float]] = {}
    for question, qtype, label in questions:
        score = float(label.get(prior.answer(question, qtype), 0.0))
        totals.setdefault(ALL_TYPES, []).append(score)
        if qtype is not None:
            totals.setdefault(qtype, []).append(score)
    return {k: sum(v) / len(v) for k, v in totals.items()}


def _questions(records: Sequence[Record]) -> list[tuple[str, str | None, dict[str, float]]]:
    return [(r.text, r.data.get("type"), r.data["label"]) for r in records]


@dataclass
class CheckReport:
    """Every figure ``mmcore data check`` prints."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # kind -> split -> records
    images: dict[str, int] = field(default_factory=dict)  # split -> distinct images
    unknown_images: list[str] = field(default_factory=list)  # "file:line: id"
    unused_images: int = 0
    coverage: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> split -> fraction answerable
    baseline: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # kind -> split -> type -> score
    chance: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> type -> 1 / answers of the type

    def rows(self) -> list[list[str]]:
        """One row per (kind, split): records, images, coverage and question-only baseline, in %."""
        out = []
        for kind, splits in self.counts.items():
            for split, count in splits.items():
                cov = self.coverage.get(kind, {}).get(split)
                base = self.baseline.get(kind, {}).get(split, {})
                types = ", ".join(f"{t} {100 * v:.1f}" for t, v in base.items() if t != ALL_TYPES)
                out.append([kind, split, str(count), "" if cov is None else f"{100 * cov:.1f}",
                            "" if ALL_TYPES not in base else f"{100 * base[ALL_TYPES]:.2f}", types])
        return out


def check(annotations: Annotations, known_images: set[str] | None,
          tables: Mapping[str, Sequence[str]]) -> CheckReport:
    """The report of a source or prepared dataset; ``tables`` are the answer tables by question kind."""
    report = CheckReport()
    used: set[str] = set()
    for kind in annotations.kinds():
        report.counts[kind] = {}
        for split in sorted(annotations.records[kind], key=("train", "val", "test").index):
            records = annotations.of(kind, split)
            report.counts[kind][split] = len(records)
            for r in records:
                used.update(r.images)
                if known_images is not None:
                    report.unknown_images += [f"{r.where}: {i!r}" for i in r.images if i not in known_images]
        for split in report.counts[kind]:
            report.images[split] = len({i for k in annotations.kinds() for r in annotations.of(k, split)
                                        for i in r.images})
        if kind in tables:
            _answers(report, annotations, kind, tables[kind])
    if known_images is not None:
        report.unused_images = len(known_images - used)
    return report


def _answers(report: CheckReport, annotations: Annotations, kind: str, table: Sequence[str]) -> None:
    known = set(table)
    prior = QuestionPrior.fit(_questions(annotations.of(kind, "train")))
    for split in report.counts[kind]:
        records = annotations.of(kind, split)
        answerable = [any(a in known and s > 0 for a, s in r.data["label"].items()) for r in records]
        report.coverage.setdefault(kind, {})[split] = sum(answerable) / max(1, len(records))
        if split != "train":
            report.baseline.setdefault(kind, {})[split] = prior_score(prior, _questions(records))
    per_type: dict[str, set[str]] = {}
    for r in annotations.of(kind, "train"):
        if "type" in r.data:
            per_type.setdefault(r.data["type"], set()).update(r.data["label"])
    report.chance[kind] = {t: 1.0 / len(a) for t, a in sorted(per_type.items()) if a}


def report_dict(report: CheckReport) -> dict[str, Any]:
    """The report as plain JSON (``mmcore data check --json``)."""
    return {"counts": report.counts, "images": report.images, "unknown_images": report.unknown_images,
            "unused_images": report.unused_images, "coverage": report.coverage, "question_only": report.baseline,
            "chance": report.chance}
