"""Compositional text about synthworld scenes: GQA-style questions (relations, attribute comparisons, choices,
logic; one exact answer each) and NLVR2-style true/false statements about a pair of scenes.

Questions and statements talk about the salient objects only (as the VQA questions do), and a question refers
to an object only by a description that picks it out uniquely ("the red dog" when there are two dogs).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from mmcore_synth.language import article, described, plural
from mmcore_synth.world import (
    COLOURS,
    MATERIALS,
    SALIENT,
    SIZES,
    Region,
    Scene,
    category,
    relation,
)

_DIRECTIONS = ("to the left of", "to the right of", "above", "below")
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six")
_TRIES = 30

GQAQuestion = tuple[str, str]  # (sentence, answer)


def _is_person(r: Region) -> bool:
    return category(r.category).group == "person"


def _colour(r: Region) -> str:
    return COLOURS[r.colour]


def _identity(r: Region, detail: int) -> tuple[Any, ...]:
    # What a description with `detail` words tells about an object: name; colour too; size too.
    return r.name, r.colour if detail else None, r.size if detail == 2 else None


def references(scene: Scene) -> dict[int, str]:
    """The shortest unique description of each salient object that has one: its name, else colour and name,
    else size, colour and name ('dog', 'red dog', 'small red dog'; a person's colour is their clothes')."""
    regs, sal = scene.regions, scene.salient
    out: dict[int, str] = {}
    for i in sal:
        for detail in (0, 1, 2):
            mine = _identity(regs[i], detail)
            if sum(_identity(regs[j], detail) == mine for j in sal) == 1:
                r = regs[i]
                text = described(r.name, _colour(r) if detail else None)
                out[i] = f"{SIZES[r.size]} {text}" if detail == 2 else text
                break
    return out


def _gqa_makers(scene: Scene, rng: random.Random) -> dict[str, Callable[[], GQAQuestion | None]]:
    regs, sal = scene.regions, scene.salient
    refs = references(scene)
    named = list(refs)
    plain = [i for i in refs if refs[i] == regs[i].name]  # described by name alone: the colour is not given away

    def towards(x: int, direction: str) -> list[int]:
        return [i for i in sal if i != x and relation(regs[i].box, regs[x].box) == direction]

    def relate_name() -> GQAQuestion | None:
        if not named:
            return None
        x, direction = rng.choice(named), rng.choice(_DIRECTIONS)
        names = {regs[i].name for i in towards(x, direction)}
        if len(names) != 1:
            return None  # nothing or several kinds of things there: no exact answer
        return f"what is {direction} the {refs[x]}?", names.pop()

    def relate_attribute() -> GQAQuestion | None:
        if not named:
            return None
        x, direction = rng.choice(named), rng.choice(_DIRECTIONS)
        hits = towards(x, direction)
        counts = Counter(regs[i].name for i in hits)
        unique = [i for i in hits if counts[regs[i].name] == 1 and not _is_person(regs[i])]
        if not unique:
            return None
        y = regs[rng.choice(unique)]
        if y.material >= 0 and rng.random() < 0.4:
            return f"what is the {y.name} {direction} the {refs[x]} made of?", MATERIALS[y.material]
        return f"what color is the {y.name} {direction} the {refs[x]}?", _colour(y)

    def verify_relation() -> GQAQuestion | None:
        if len(named) < 2:
            return None
        a, b = rng.sample(named, 2)
        actual = relation(regs[a].box, regs[b].box)
        direction = actual if actual in _DIRECTIONS and rng.random() < 0.5 else rng.choice(_DIRECTIONS)
        answer = "yes" if direction == actual else "no"
        return f"is the {refs[a]} {direction} the {refs[b]}?", answer

    def same_attribute() -> GQAQuestion | None:
        pairs = [(a, b) for a in named for b in named if a < b and regs[a].name != regs[b].name]
        if not pairs:
            return None
        by_colour = [(a, b) for a, b in pairs if a in plain and b in plain]
        by_material = [(a, b) for a, b in pairs if regs[a].material >= 0 and regs[b].material >= 0]
        use_material = bool(by_material) and (not by_colour or rng.random() < 0.4)
        candidates = by_material if use_material else by_colour
        if not candidates:
            return None
        a, b = rng.choice(candidates)
        same = regs[a].material == regs[b].material if use_material else regs[a].colour == regs[b].colour
        answer = "yes" if same else "no"
        what = "made of the same material" if use_material else "the same color"
        return f"are the {refs[a]} and the {refs[b]} {what}?", answer

    def choose_attribute() -> GQAQuestion | None:
        options = [i for i in plain if not _is_person(regs[i])]
        if not options:
            return None
        r = regs[rng.choice(options)]
        if r.material >= 0 and rng.random() < 0.4:
            answer, pool, frame = MATERIALS[r.material], MATERIALS, "is the {} made of {} or {}?"
        else:
            answer, pool, frame = _colour(r), COLOURS, "is the {} {} or {}?"
        other = rng.choice([p for p in pool if p != answer])
        first, second = (answer, other) if rng.random() < 0.5 else (other, answer)
        return frame.format(r.name, first, second), answer

    present = sorted({(regs[i].name, _colour(regs[i])) for i in sal})

    def two_things() -> tuple[tuple[str, bool], tuple[str, bool]] | None:
        def thing() -> tuple[str, bool]:
            # Half the time something in the picture, else any coloured object (rarely in the picture).
            name, colour = rng.choice(present) if rng.random() < 0.5 else (rng.choice(SALIENT).name,
                                                                           rng.choice(COLOURS))
            return described(name, colour), (name, colour) in present

        first, second = thing(), thing()
        return None if first[0] == second[0] else (first, second)

    def logic_or() -> GQAQuestion | None:
        things = two_things()
        if things is None:
            return None
        (d1, t1), (d2, t2) = things
        return f"is there {article(d1)} or {article(d2)}?", "yes" if t1 or t2 else "no"

    def logic_and() -> GQAQuestion | None:
        things = two_things()
        if things is None:
            return None
        (d1, t1), (d2, t2) = things
        return f"are there both {article(d1)} and {article(d2)}?", "yes" if t1 and t2 else "no"

    return {"relate": relate_name, "relate_attr": relate_attribute, "verify_rel": verify_relation,
            "compare": same_attribute, "choose": choose_attribute, "logic_or": logic_or, "logic_and": logic_and}


_GQA_WEIGHTS = {"relate": 3, "relate_attr": 3, "verify_rel": 2, "compare": 2, "choose": 2, "logic_or": 1,
                "logic_and": 1}
_YES_NO = frozenset({"verify_rel", "compare", "logic_or", "logic_and"})


def _balanced(maker: Callable[[], Any], truth: Callable[[Any], bool], rng: random.Random) -> Any:
    """A made item whose truth is a coin flip: draw until one true and one false item are found, then pick one;
    ``None`` when the scene(s) allow only one of the two. So within each kind of question or statement, the
    answer cannot be guessed from the kind alone."""
    found: dict[bool, Any] = {}
    for _ in range(_TRIES):
        made = maker()
        if made is not None:
            found.setdefault(truth(made), made)
            if len(found) == 2:
                return found[rng.random() < 0.5]
    return None


def gqa_questions(scene: Scene, rng: random.Random, count: int, first_qid: int) -> list[dict[str, Any]]:
    """Up to ``count`` distinct GQA records ``{img_id, label: {answer: 1.0}, question_id, sent}`` for a scene;
    question ids are zero-padded digit strings, as GQA's are."""
    makers = _gqa_makers(scene, rng)
    kinds, weights = list(_GQA_WEIGHTS), list(_GQA_WEIGHTS.values())
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(count * 10):
        if len(out) == count:
            break
        kind = rng.choices(kinds, weights)[0]
        q = _balanced(makers[kind], lambda m: m[1] == "yes", rng) if kind in _YES_NO else makers[kind]()
        if q is None or q[0] in seen:
            continue
        seen.add(q[0])
        out.append({"img_id": scene.img_id, "label": {q[1]: 1.0}, "question_id": f"{first_qid + len(out):08d}",
                    "sent": q[0]})
    return out


# ---- NLVR2 ------------------------------------------------------------------------------------------------

def _has(scene: Scene, name: str, colour: str | None) -> bool:
    return any(scene.regions[i].name == name and (colour is None or _colour(scene.regions[i]) == colour)
               for i in scene.salient)


def _count(scene: Scene, name: str) -> int:
    return sum(scene.regions[i].name == name for i in scene.salient)


def _nlvr2_makers(left: Scene, right: Scene, rng: random.Random) -> list[Callable[[], tuple[str, bool] | None]]:
    scenes = {"left": left, "right": right}
    names = sorted({s.regions[i].name for s in (left, right) for i in s.salient})

    def a_name() -> str:
        # Mostly things that are in one of the pictures; now and then one that is in neither.
        return rng.choice(names) if names and rng.random() < 0.85 else rng.choice(SALIENT).name

    def a_thing() -> tuple[str, str | None]:
        name = a_name()
        colours = sorted({_colour(s.regions[i]) for s in (left, right) for i in s.salient if s.regions[i].name == name})
        if rng.random() < 0.5:
            return name, None
        return name, rng.choice(colours) if colours and rng.random() < 0.8 else rng.choice(COLOURS)

    def both() -> tuple[str, bool]:
        name, colour = a_thing()
        return (f"both images contain {article(described(name, colour))}",
                _has(left, name, colour) and _has(right, name, colour))

    def exactly_one() -> tuple[str, bool]:
        name, colour = a_thing()
        return (f"exactly one image contains {article(described(name, colour))}",
                _has(left, name, colour) != _has(right, name, colour))

    def more() -> tuple[str, bool]:
        name, side = a_name(), rng.choice(("left", "right"))
        other = "right" if side == "left" else "left"
        return (f"the {side} image has more {plural(name)} than the {other} image",
                _count(scenes[side], name) > _count(scenes[other], name))

    def exactly() -> tuple[str, bool] | None:
        name, side = a_name(), rng.choice(("left", "right"))
        true = _count(scenes[side], name)
        k = max(1, true + rng.choice((-1, 0, 0, 1)))
        if k >= len(_NUMBERS):
            return None
        return f"the {side} image shows exactly {_NUMBERS[k]} {name if k == 1 else plural(name)}", true == k

    def total() -> tuple[str, bool] | None:
        name = a_name()
        true = _count(left, name) + _count(right, name)
        k = max(2, true + rng.choice((-1, 0, 0, 1)))
        if k >= len(_NUMBERS):
            return None
        return f"there are {_NUMBERS[k]} {plural(name)} in total", true == k

    def arrangement() -> tuple[str, bool] | None:
        side = rng.choice(("left", "right"))
        scene = scenes[side]
        if len(scene.salient) < 2:
            return None
        a, b = rng.sample(scene.salient, 2)
        na, nb = scene.regions[a].name, scene.regions[b].name
        actual = relation(scene.regions[a].box, scene.regions[b].box)
        direction = actual if actual in _DIRECTIONS and rng.random() < 0.5 else rng.choice(_DIRECTIONS)
        holds = any(relation(scene.regions[i].box, scene.regions[j].box) == direction
                    for i in scene.salient for j in scene.salient
                    if i != j and scene.regions[i].name == na and scene.regions[j].name == nb)
        return f"in the {side} image {article(na)} is {direction} {article(nb)}", holds

    return [both, exactly_one, more, exactly, total, arrangement]


_NLVR2_WEIGHTS = (3, 2, 2, 2, 1, 2)


def nlvr2_statement(left: Scene, right: Scene, rng: random.Random) -> tuple[str, bool]:
    """One statement about the pair (left = img0, right = img1) and whether it is true. Kinds of statement are
    tried in a weighted random order; the first that can be both true and false of this pair gives a true or a
    false statement by a coin flip."""
    makers = _nlvr2_makers(left, right, rng)
    # Weighted order without replacement (Efraimidis-Spirakis keys).
    order = sorted(range(len(makers)), key=lambda i: rng.random() ** (1.0 / _NLVR2_WEIGHTS[i]), reverse=True)
    for i in order:
        made = _balanced(makers[i], lambda m: m[1], rng)
        if made is not None:
            return made
    return makers[0]()  # type: ignore[return-value]  # no kind can be both: any statement (the first never fails)


def nlvr2_pairs(img_ids: list[str], count: int, rng: random.Random) -> list[tuple[str, str]]:
    """``count`` (left, right) pairs of distinct images; left images cycle through ``img_ids`` in order."""
    if len(img_ids) < 2:
        return []
    pairs = []
    for k in range(count):
        left = img_ids[k % len(img_ids)]
        right = rng.choice(img_ids)
        while right == left:
            right = rng.choice(img_ids)
        pairs.append((left, right))
    return pairs
