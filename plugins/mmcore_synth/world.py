"""The synthworld ontology and scene sampler: categories, attributes, boxes, relations and actions.

A scene has 2-6 *salient* objects (category, colour, material, size, box), background regions (sky, wall,
...) and part regions (the head of a dog, the wheel of a bus) up to ``max_regions``, in shuffled order, as a
detector would list them. Categories carry colour/material priors and a typical setting (indoor/outdoor), so
context and language priors help, as in real data, without making the answers free.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import cache
from itertools import accumulate

COLOURS = ("red", "blue", "green", "yellow", "white", "black", "brown", "gray")
MATERIALS = ("metal", "wooden", "plastic", "glass", "leather")
SIZES = ("small", "large")
ATTRIBUTES = COLOURS + MATERIALS + SIZES
GROUPS = ("animal", "person", "vehicle", "object", "background", "part")


@dataclass(frozen=True)
class Category:
    """One object category: name, group, setting ('in', 'out', 'both'), typical box scale and priors."""

    name: str
    group: str
    setting: str = "both"
    scale: float = 0.3
    aspect: float = 1.0  # width / height
    colours: tuple[str, ...] = ()  # preferred colours (empty: any)
    materials: tuple[str, ...] = ()  # plausible materials (empty: the category has none)
    parts: tuple[str, ...] = ()


_ANIMAL_PARTS, _PERSON_PARTS, _VEHICLE_PARTS = ("head", "leg"), ("head", "hand", "leg"), ("wheel", "door")
SALIENT = (
    Category("dog", "animal", "both", 0.25, 1.2, ("brown", "black", "white", "yellow"), parts=_ANIMAL_PARTS),
    Category("cat", "animal", "in", 0.2, 1.1, ("black", "white", "gray", "brown"), parts=_ANIMAL_PARTS),
    Category("horse", "animal", "out", 0.4, 1.2, ("brown", "black", "white"), parts=_ANIMAL_PARTS),
    Category("cow", "animal", "out", 0.35, 1.4, ("black", "white", "brown"), parts=_ANIMAL_PARTS),
    Category("sheep", "animal", "out", 0.25, 1.3, ("white", "black", "gray"), parts=_ANIMAL_PARTS),
    Category("bird", "animal", "out", 0.12, 1.0, (), parts=("head",)),
    Category("elephant", "animal", "out", 0.45, 1.2, ("gray", "brown"), parts=_ANIMAL_PARTS),
    Category("giraffe", "animal", "out", 0.45, 0.6, ("yellow", "brown"), parts=_ANIMAL_PARTS),
    Category("zebra", "animal", "out", 0.35, 1.3, ("black", "white"), parts=_ANIMAL_PARTS),
    Category("bear", "animal", "out", 0.35, 1.1, ("brown", "black", "white"), parts=_ANIMAL_PARTS),
    Category("man", "person", "both", 0.35, 0.45, parts=_PERSON_PARTS),
    Category("woman", "person", "both", 0.35, 0.45, parts=_PERSON_PARTS),
    Category("boy", "person", "both", 0.28, 0.45, parts=_PERSON_PARTS),
    Category("girl", "person", "both", 0.28, 0.45, parts=_PERSON_PARTS),
    Category("car", "vehicle", "out", 0.35, 1.8, (), ("metal", "plastic"), _VEHICLE_PARTS),
    Category("bus", "vehicle", "out", 0.5, 1.6, ("red", "yellow", "white", "blue"), ("metal",), _VEHICLE_PARTS),
    Category("truck", "vehicle", "out", 0.45, 1.6, (), ("metal",), _VEHICLE_PARTS),
    Category("bike", "vehicle", "out", 0.25, 1.5, (), ("metal", "plastic"), ("wheel",)),
    Category("boat", "vehicle", "out", 0.35, 1.8, ("white", "blue", "red"), ("wooden", "metal"), ("door",)),
    Category("train", "vehicle", "out", 0.55, 2.2, (), ("metal",), _VEHICLE_PARTS),
    Category("plane", "vehicle", "out", 0.45, 2.0, ("white", "gray", "blue"), ("metal",), ("door", "wheel")),
    Category("cup", "object", "in", 0.1, 0.9, (), ("glass", "plastic", "metal"), ("handle",)),
    Category("bottle", "object", "both", 0.1, 0.4, ("green", "white", "brown"), ("glass", "plastic")),
    Category("bowl", "object", "in", 0.12, 1.6, (), ("glass", "wooden", "plastic")),
    Category("chair", "object", "in", 0.3, 0.8, (), ("wooden", "metal", "plastic", "leather")),
    Category("table", "object", "in", 0.45, 1.6, ("brown", "white", "black"), ("wooden", "metal", "glass")),
    Category("bench", "object", "out", 0.35, 2.0, ("brown", "green", "gray"), ("wooden", "metal")),
    Category("umbrella", "object", "out", 0.25, 1.4, (), ("plastic",), ("handle",)),
    Category("laptop", "object", "in", 0.18, 1.4, ("black", "gray", "white"), ("plastic", "metal")),
    Category("clock", "object", "both", 0.12, 1.0, (), ("wooden", "metal", "plastic")),
    Category("ball", "object", "both", 0.08, 1.0, (), ("leather", "plastic")),
    Category("kite", "object", "out", 0.15, 1.0, (), ("plastic",)),
)
BACKGROUND = (
    Category("sky", "background", "out", 0.9, 3.0, ("blue", "white", "gray")),
    Category("grass", "background", "out", 0.8, 3.0, ("green", "brown")),
    Category("road", "background", "out", 0.8, 3.0, ("gray", "black")),
    Category("water", "background", "out", 0.8, 3.0, ("blue", "green")),
    Category("tree", "background", "out", 0.4, 0.8, ("green", "brown")),
    Category("cloud", "background", "out", 0.2, 2.0, ("white", "gray")),
    Category("building", "background", "out", 0.45, 0.8, ("gray", "brown", "white", "red")),
    Category("fence", "background", "out", 0.3, 3.0, ("brown", "white", "gray")),
    Category("wall", "background", "in", 0.8, 1.5, ()),
    Category("floor", "background", "in", 0.8, 3.0, ("brown", "gray", "white")),
    Category("ceiling", "background", "in", 0.8, 3.0, ("white", "gray")),
    Category("window", "background", "in", 0.3, 1.0, ("white", "black")),
    Category("curtain", "background", "in", 0.3, 0.6, ()),
    Category("shelf", "background", "in", 0.3, 1.5, ("brown", "white", "black")),
)
PARTS = tuple(Category(name, "part") for name in ("head", "leg", "hand", "wheel", "door", "handle"))
CATEGORIES = SALIENT + BACKGROUND + PARTS
OBJECT_NAMES = tuple(c.name for c in CATEGORIES)
_INDEX = {name: i for i, name in enumerate(OBJECT_NAMES)}
_GROUND = {"in": ("floor",), "out": ("grass", "road", "water")}
_TOP = {"in": ("wall", "ceiling"), "out": ("sky", "building")}
# Where background regions sit: bands across the top or the bottom of the picture, or high up (clouds).
_BANDS = {"sky": "top", "wall": "top", "ceiling": "top", "cloud": "high",
          "grass": "bottom", "road": "bottom", "water": "bottom", "floor": "bottom"}

# (subject group or category, verb phrase, object categories): the actions phrases and captions may mention.
ACTIONS = (
    ("person", "riding", ("horse", "bike", "elephant", "boat", "bus")),
    ("person", "holding", ("cup", "bottle", "umbrella", "kite", "ball", "laptop", "bowl", "clock")),
    ("person", "sitting on", ("chair", "bench", "grass", "floor")),
    ("person", "walking on", ("road", "grass")),
    ("person", "throwing", ("ball",)),
    ("person", "flying", ("kite",)),
    ("person", "watching", ("dog", "cat", "horse", "bird", "train", "plane", "elephant", "giraffe", "zebra")),
    ("person", "driving", ("car", "truck", "bus")),
    ("animal", "eating", ("grass",)),
    ("animal", "standing on", ("grass", "road", "floor")),
    ("animal", "lying on", ("grass", "floor")),
    ("animal", "drinking", ("water",)),
    ("vehicle", "parked on", ("road", "grass")),
)
VERBS = frozenset({"riding", "holding", "sitting", "walking", "throwing", "flying", "watching", "driving",
                   "eating", "standing", "lying", "drinking", "parked"})


def category(index: int) -> Category:
    """The category of an objects-vocabulary index."""
    return CATEGORIES[index]


def object_index(name: str) -> int:
    """The objects-vocabulary index of a category name."""
    return _INDEX[name]


@dataclass
class Region:
    """One region of a scene: what it is (category, attributes) and where (normalised x1,y1,x2,y2)."""

    category: int
    colour: int
    material: int  # index into MATERIALS, -1 when the category has none
    size: int  # index into SIZES
    box: tuple[float, float, float, float]
    salient: bool
    parent: int = -1  # for a part: index of its object in Scene.regions

    @property
    def name(self) -> str:
        """The category name."""
        return OBJECT_NAMES[self.category]


@dataclass
class Scene:
    """One image: its regions in detector order, which of them are salient, and who does what to whom."""

    img_id: str
    setting: str
    regions: list[Region]
    salient: list[int] = field(default_factory=list)
    actions: list[tuple[int, str, int]] = field(default_factory=list)  # (subject, verb phrase, object) regions


def relation(a: tuple[float, ...], b: tuple[float, ...]) -> str:
    """Where box ``a`` lies relative to box ``b``: 'to the left of', 'to the right of', 'above', 'below' or
    'next to' (centres closer than 0.15)."""
    dx = (a[0] + a[2] - b[0] - b[2]) / 2
    dy = (a[1] + a[3] - b[1] - b[3]) / 2
    if math.hypot(dx, dy) < 0.15:
        return "next to"
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


@cache
def _cum_weights(options: tuple[str, ...], preferred: tuple[str, ...], boost: float) -> tuple[float, ...]:
    return tuple(accumulate(boost if o in preferred else 1.0 for o in options))


def _weighted(rng: random.Random, options: tuple[str, ...], preferred: tuple[str, ...], boost: float) -> str:
    """One option, ``boost`` times likelier when preferred (a category's typical colours)."""
    return rng.choices(options, cum_weights=_cum_weights(options, preferred, boost))[0]


def _box(rng: random.Random, scale: float, aspect: float, x: tuple[float, float] = (0.0, 1.0),
         y: tuple[float, float] = (0.0, 1.0)) -> tuple[float, float, float, float]:
    """A box of area about scale² and the given aspect, placed uniformly inside the x/y bounds."""
    w = min(x[1] - x[0], scale * math.sqrt(aspect) * rng.uniform(0.85, 1.15))
    h = min(y[1] - y[0], scale / math.sqrt(aspect) * rng.uniform(0.85, 1.15))
    x1 = rng.uniform(x[0], x[1] - w)
    y1 = rng.uniform(y[0], y[1] - h)
    return (round(x1, 4), round(y1, 4), round(x1 + w, 4), round(y1 + h, 4))


def _salient_object(rng: random.Random, cat: Category) -> Region:
    size = rng.randrange(2)
    # "large" objects get boxes ~1.6x the side of "small" ones, so size is visible in the box as well.
    box = _box(rng, cat.scale * (1.3 if size else 0.8), cat.aspect)
    colour = _weighted(rng, COLOURS, cat.colours, 6.0) if cat.colours else rng.choice(COLOURS)
    material = MATERIALS.index(rng.choice(cat.materials)) if cat.materials else -1
    return Region(object_index(cat.name), COLOURS.index(colour), material, size, box, True)


def _background(rng: random.Random, cat: Category) -> Region:
    band = _BANDS.get(cat.name)
    if band == "top":
        box = (0.0, 0.0, round(rng.uniform(0.6, 1.0), 4), round(rng.uniform(0.25, 0.5), 4))
    elif band == "bottom":
        box = (round(rng.uniform(0.0, 0.3), 4), round(rng.uniform(0.5, 0.75), 4), 1.0, 1.0)
    else:
        box = _box(rng, cat.scale, cat.aspect, y=(0.0, 0.4) if band == "high" else (0.0, 1.0))
    colour = _weighted(rng, COLOURS, cat.colours, 8.0) if cat.colours else rng.choice(COLOURS)
    area = (box[2] - box[0]) * (box[3] - box[1])
    return Region(object_index(cat.name), COLOURS.index(colour), -1, int(area > 0.1), box, False)


def _part(rng: random.Random, name: str, parent: Region, parent_index: int) -> Region:
    px1, py1, px2, py2 = parent.box
    box = _box(rng, 0.35 * math.sqrt((px2 - px1) * (py2 - py1)), 1.0, (px1, px2), (py1, py2))
    # Parts mostly share their object's colour (a brown dog's head is brown).
    colour = parent.colour if rng.random() < 0.8 else rng.randrange(len(COLOURS))
    return Region(object_index(name), colour, -1, 0, box, False, parent_index)


def sample_scene(rng: random.Random, img_id: str, max_regions: int) -> Scene:
    """Sample one scene of ``ceil(0.75 * max_regions)``..``max_regions`` regions in shuffled detector order."""
    setting = rng.choice(("in", "out"))
    pool = [c for c in SALIENT if c.setting in (setting, "both")]
    n_regions = rng.randint(math.ceil(0.75 * max_regions), max_regions)
    n_salient = min(rng.randint(2, 6), n_regions)
    cats: list[Category] = []
    while len(cats) < n_salient:
        # A repeated category now and then makes counting questions non-trivial.
        cats.append(rng.choice(cats) if cats and rng.random() < 0.25 else rng.choice(pool))
    regions = [_salient_object(rng, c) for c in cats]
    backgrounds = [c for c in BACKGROUND if c.setting == setting]
    ground = rng.choice(_GROUND[setting])
    extra = [c.name for c in rng.sample(backgrounds, 3)]
    bg_kinds = list(dict.fromkeys([ground, rng.choice(_TOP[setting]), *extra]))
    by_name = {c.name: c for c in CATEGORIES}
    kind_colour: dict[str, int] = {}
    while len(regions) < n_regions:
        owner = rng.randrange(n_salient)
        parts = cats[owner].parts
        if parts and rng.random() < 0.5:
            regions.append(_part(rng, rng.choice(parts), regions[owner], owner))
        else:
            bg = _background(rng, by_name[rng.choice(bg_kinds)])
            # Several boxes of one background (two boxes of sky) share its colour, as in a real photo.
            bg.colour = kind_colour.setdefault(bg.name, bg.colour)
            regions.append(bg)
    order = list(range(len(regions)))
    rng.shuffle(order)
    new_pos = {old: new for new, old in enumerate(order)}
    shuffled = [regions[old] for old in order]
    for r in shuffled:
        if r.parent >= 0:
            r.parent = new_pos[r.parent]
    scene = Scene(img_id, setting, shuffled, sorted(new_pos[i] for i in range(n_salient)))
    scene.actions = _actions(rng, scene)
    return scene


def _actions(rng: random.Random, scene: Scene) -> list[tuple[int, str, int]]:
    """Plausible (subject, verb, object) triples among the scene's salient and background regions."""
    present: dict[str, int] = {}
    for i in scene.salient + [i for i, r in enumerate(scene.regions) if category(r.category).group == "background"]:
        present.setdefault(scene.regions[i].name, i)
    out = []
    for s in scene.salient:
        subject = category(scene.regions[s].category)
        options = [(verb, present[o]) for group, verb, objects in ACTIONS if group in (subject.group, subject.name)
                   for o in objects if o in present and present[o] != s]
        if options and rng.random() < 0.6:
            verb, o = rng.choice(options)
            out.append((s, verb, o))
    return out
