"""Text about a synthworld scene: VG-style phrases, COCO-style captions and VQA questions with annotators."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from mmcore.data.annotations import vqa_soft_score
from mmcore_synth.world import (
    COLOURS,
    MATERIALS,
    SALIENT,
    SIZES,
    Region,
    Scene,
    category,
    object_index,
    relation,
)

_IRREGULAR = {"man": "men", "woman": "women", "sheep": "sheep", "bus": "buses", "bench": "benches"}
_COUNT_WORDS = ("no", "one", "two", "three", "four", "five", "six")
_DIRECTIONS = ("to the left of", "to the right of", "above", "below")
_ANNOTATORS = 10


def plural(name: str) -> str:
    """The plural of a category name."""
    return _IRREGULAR.get(name, name + "s")


def article(phrase: str) -> str:
    """``phrase`` with 'a' or 'an' in front."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def noun_phrase(r: Region, rng: random.Random, detail: str = "random") -> str:
    """Attributes (size, colour, material, in that order) and the name, e.g. 'large red metal car'; a
    person's colour is their clothes' ('small man in red').

    ``detail``: 'full' (every attribute), 'colour' (colour always, others by chance) or 'random'.
    """
    p_size, p_colour, p_material = {"full": (1, 1, 1), "colour": (0.4, 1, 0.4), "random": (0.35, 0.7, 0.45)}[detail]
    size = SIZES[r.size] if rng.random() < p_size else None
    colour = COLOURS[r.colour] if rng.random() < p_colour else None
    material = MATERIALS[r.material] if r.material >= 0 and rng.random() < p_material else None
    if category(r.category).group == "person":
        return " ".join(w for w in (size, r.name) if w) + (f" in {colour}" if colour else "")
    return " ".join(w for w in (size, colour, material, r.name) if w)


def described(name: str, colour: str | None) -> str:
    """A name with a colour: 'red dog', or for people (whose colour is their clothes') 'man in red'."""
    if colour is None:
        return name
    return f"{name} in {colour}" if category(object_index(name)).group == "person" else f"{colour} {name}"


def _is_background(r: Region) -> bool:
    return category(r.category).group == "background"


def _ground(scene: Scene) -> str | None:
    names = {r.name for r in scene.regions}
    return next((g for g in ("grass", "road", "floor", "water") if g in names), None)


def vg_phrases(scene: Scene, rng: random.Random) -> list[str]:
    """Visual-Genome-style region phrases: attribute phrases, background, parts, spatial and verb phrases."""
    regs, out = scene.regions, []
    for i in scene.salient:
        r = regs[i]
        if rng.random() < 0.6:
            out.append(noun_phrase(r, rng, "full"))
        short = noun_phrase(r, rng, "random")
        if short != r.name or not out or rng.random() < 0.3:
            out.append(short)
    seen: set[str] = set()
    for r in regs:
        if _is_background(r) and r.name not in seen and rng.random() < 0.7:
            seen.add(r.name)
            out.append(f"{COLOURS[r.colour]} {r.name}")
    parts = [r for r in regs if r.parent >= 0]
    for r in rng.sample(parts, min(2, len(parts))):
        out.append(f"{r.name} of {regs[r.parent].name}")
    if len(scene.salient) >= 2:
        for _ in range(rng.randint(1, 2)):
            a, b = rng.sample(scene.salient, 2)
            out.append(f"{regs[a].name} {relation(regs[a].box, regs[b].box)} {regs[b].name}")
    for s, verb, o in scene.actions:
        obj = noun_phrase(regs[o], rng) if not _is_background(regs[o]) else regs[o].name
        out.append(f"{regs[s].name} {verb} {obj}")
    rng.shuffle(out)
    return list(dict.fromkeys(out))


def captions(scene: Scene, rng: random.Random, count: int = 5, identifying: bool = False) -> list[str]:
    """``count`` distinct captions with attributes and relations (repeats only if the scene allows no more).

    With ``identifying`` every caption names two objects (when there are two) with their colours, so the five
    together pick the image out among others (retrieval).
    """
    detail = "colour" if identifying else "random"
    regs, sal = scene.regions, scene.salient

    def a(i: int) -> str:
        return article(noun_phrase(regs[i], rng, detail)) if not _is_background(regs[i]) else "the " + regs[i].name

    def pair() -> tuple[int, int] | None:
        if len(sal) < 2:
            return None
        first, second = rng.sample(sal, 2)
        return first, second

    def t_relation() -> str | None:
        p = pair()
        return p and f"{a(p[0])} {relation(regs[p[0]].box, regs[p[1]].box)} {a(p[1])}"

    def t_there() -> str | None:
        p = pair()
        where = rng.choice(("in the picture", "in this image", "in the photo"))
        return p and f"there is {a(p[0])} and {a(p[1])} {where}"

    def t_is() -> str | None:
        p = pair()
        if p is None:
            return None
        where = relation(regs[p[0]].box, regs[p[1]].box)
        return f"{a(p[0])} is {where} the {noun_phrase(regs[p[1]], rng, detail)}"

    def t_action() -> str | None:
        if not scene.actions:
            return None
        s, verb, o = rng.choice(scene.actions)
        other = [i for i in sal if i not in (s, o)]
        tail = f" next to {a(other[0])}" if identifying and _is_background(regs[o]) and other else ""
        return f"{a(s)} {verb} {a(o)}{tail}"

    def t_ground() -> str | None:
        g = _ground(scene)
        if g is None:
            return None
        i = rng.choice(sal)
        other = [j for j in sal if j != i]
        prep = "in the" if g == "water" else "on the"
        tail = f" with {a(other[0])}" if identifying and other else ""
        return f"{a(i)}{tail} {prep} {g}"

    def t_count() -> str | None:
        counts = Counter(regs[i].name for i in sal)
        many = [n for n, c in counts.items() if c > 1]
        if not many:
            return None
        name = rng.choice(many)
        rest = [i for i in sal if regs[i].name != name]
        tail = f" and {a(rest[0])}" if rest else ""
        return f"{_COUNT_WORDS[counts[name]]} {plural(name)}{tail}"

    def t_list() -> str | None:
        if len(sal) < 2:
            return None
        picks = rng.sample(sal, min(3, len(sal)))
        names = [a(i) for i in picks]
        body = ", ".join(names[:-1]) + " and " + names[-1]
        return f"{rng.choice(('a photo of', 'a picture of', 'an image with'))} {body}"

    def t_single() -> str | None:
        return None if identifying else f"{rng.choice(('a picture of', 'a close up of'))} {a(rng.choice(sal))}"

    templates: list[Callable[[], str | None]] = [t_relation, t_there, t_is, t_action, t_ground, t_count, t_list,
                                                  t_single]
    weights = [4, 2, 3, 2, 2, 1, 2, 1]
    out: list[str] = []
    for _ in range(count * 20):
        text = rng.choices(templates, weights)[0]()
        if text and text not in out:
            out.append(text)
            if len(out) == count:
                return out
    while len(out) < count:  # a very sparse scene: repeat rather than return fewer than `count`
        out.append(out[len(out) % max(1, len(out))] if out else article(regs[sal[0]].name))
    return out


# ---- VQA --------------------------------------------------------------------------------------------------

# A question: (sentence, answer, question_type, answer_type, a plausible wrong answer on demand).
Question = tuple[str, str, str, str, Callable[[], str]]


def _other(rng: random.Random, options: tuple[str, ...] | list[str], answer: str) -> Callable[[], str]:
    rest = [o for o in options if o != answer]
    return lambda: rng.choice(rest) if rest else answer


def _questions(scene: Scene, rng: random.Random) -> dict[str, Callable[[], Question | None]]:
    regs, sal = scene.regions, scene.salient
    counts = Counter(regs[i].name for i in sal)
    unique = [i for i in sal if counts[regs[i].name] == 1]
    names = list(counts)

    def colour() -> Question | None:
        if not unique:
            return None
        r = regs[rng.choice(unique)]
        ans = COLOURS[r.colour]
        sent = f"what color is the {r.name}{' wearing' if category(r.category).group == 'person' else ''}?"
        return sent, ans, "what color is the", "other", _other(rng, COLOURS, ans)

    def material() -> Question | None:
        options = [i for i in unique if regs[i].material >= 0]
        if not options:
            return None
        r = regs[rng.choice(options)]
        ans = MATERIALS[r.material]
        plausible = category(r.category).materials
        wrong = _other(rng, plausible if len(plausible) > 1 else MATERIALS, ans)
        return f"what is the {r.name} made of?", ans, "what is the", "other", wrong

    def count() -> Question | None:
        name = rng.choice(names) if rng.random() < 0.75 else rng.choice(SALIENT).name
        n = counts.get(name, 0)
        where = rng.choice(("are there", "are in the picture", "can you see"))
        wrong = lambda: str(max(0, n + rng.choice((-1, 1))))
        return f"how many {plural(name)} {where}?", str(n), "how many", "number", wrong

    def exist() -> Question | None:
        if rng.random() < 0.5:
            r = regs[rng.choice(sal)]
            phrase, ans = described(r.name, COLOURS[r.colour] if rng.random() < 0.5 else None), "yes"
        elif rng.random() < 0.5:
            name = rng.choice([c.name for c in SALIENT if c.name not in counts])
            phrase, ans = name, "no"
        else:
            name = rng.choice(names)
            used = {COLOURS[regs[i].colour] for i in sal if regs[i].name == name}
            phrase, ans = described(name, rng.choice([c for c in COLOURS if c not in used])), "no"
        where = rng.choice((" in the picture", " in the image", ""))
        return f"is there {article(phrase)}{where}?", ans, "is there a", "yes/no", _other(rng, ("yes", "no"), ans)

    def spatial() -> Question | None:
        if not unique or len(sal) < 2:
            return None
        x = rng.choice(unique)
        direction = rng.choice(_DIRECTIONS)
        hits = [i for i in sal if i != x and relation(regs[i].box, regs[x].box) == direction]
        if len({regs[i].name for i in hits}) != 1:
            return None  # ambiguous or empty: only ask when the answer is well defined
        ans = regs[hits[0]].name
        others = [regs[i].name for i in sal if regs[i].name != ans] or [c.name for c in SALIENT]
        return f"what is {direction} the {regs[x].name}?", ans, "what is", "other", _other(rng, others, ans)

    def size() -> Question | None:
        if not unique:
            return None
        r = regs[rng.choice(unique)]
        ans = SIZES[r.size]
        return f"is the {r.name} large or small?", ans, "is the", "other", _other(rng, SIZES, ans)

    return {"colour": colour, "material": material, "count": count, "exist": exist, "spatial": spatial,
            "size": size}


_TYPE_WEIGHTS = {"colour": 3, "material": 2, "count": 2, "exist": 2, "spatial": 2, "size": 1}


def vqa_questions(scene: Scene, rng: random.Random, count: int, first_qid: int) -> list[dict[str, Any]]:
    """Up to ``count`` distinct VQA records for a scene; labels are soft scores from 10 simulated annotators.

    Each question gets an annotator reliability in [0.65, 0.98]; an unreliable annotator gives a plausible
    wrong answer (another colour, a count off by one, the other of yes/no, another object in the scene).
    """
    makers = _questions(scene, rng)
    kinds, weights = list(_TYPE_WEIGHTS), list(_TYPE_WEIGHTS.values())
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(count * 10):
        if len(out) == count:
            break
        q = makers[rng.choices(kinds, weights)[0]]()
        if q is None or q[0] in seen:
            continue
        sent, answer, qtype, atype, wrong = q
        seen.add(sent)
        reliability = rng.uniform(0.65, 0.98)
        votes = Counter(answer if rng.random() < reliability else wrong() for _ in range(_ANNOTATORS))
        label = {a: vqa_soft_score(n) for a, n in sorted(votes.items())}
        out.append({"answer_type": atype, "img_id": scene.img_id, "label": label,
                    "question_id": first_qid + len(out), "question_type": qtype, "sent": sent})
    return out
