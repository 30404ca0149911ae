"""A drawn image set for the ``pairs`` dataset tests: one (or two) coloured shapes per small PNG (Pillow), with
captions, phrases and colour / shape / yes-no questions templated from what was drawn, in the JSONL formats of
docs/your-data.md. Images of each split live in images/<split>/ and are numbered from 0 in every split, so the
same file name recurs across splits (the dataset must keep them apart)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (40, 60, 220), "yellow": (235, 215, 30),
           "purple": (140, 40, 170), "orange": (245, 140, 20), "white": (250, 250, 250), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (6, 8), "large": (9, 11)}  # half-widths in pixels of a 48-pixel image
BACKGROUND = (128, 128, 128)
SIDE = 48


def draw(directory: Path, counts: dict[str, int], seed: int = 0, per_image: int = 1) -> dict[str, list[list[dict]]]:
    """Draw ``counts[split]`` images per split under ``directory``: ``per_image`` (1 or 2) shapes per image, each in
    its own half when there are two, of different kinds and colours. Returns the drawn objects per split."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    drawn: dict[str, list[list[dict]]] = {}
    for split, count in counts.items():
        folder = directory / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        drawn[split] = []
        for index in range(count):
            image = Image.new("RGB", (SIDE, SIDE), BACKGROUND)
            pen = ImageDraw.Draw(image)
            objects = []
            halves = rng.sample(["left", "right"], 2)[:per_image]
            for shape, colour, half in zip(rng.sample(SHAPES, per_image), rng.sample(list(COLOURS), per_image),
                                           halves):
                size = rng.choice(list(SIZES))
                r = rng.randint(*SIZES[size])
                x0, width = (0, SIDE) if per_image == 1 else (0 if half == "left" else SIDE // 2, SIDE // 2)
                cx, cy = rng.randint(x0 + r, x0 + width - r - 1), rng.randint(r, SIDE - r - 1)
                half = half if per_image > 1 else ("left" if cx < SIDE // 2 else "right")
                _shape(pen, shape, cx, cy, r, COLOURS[colour])
                objects.append({"image": f"{split}/{index}.png", "shape": shape, "colour": colour, "size": size,
                                "where": half})
            image.save(folder / f"{index}.png")
            drawn[split].append(objects)
    return drawn


def _shape(pen: Any, shape: str, cx: int, cy: int, r: int, fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)


def questions(objects: list[dict], rng: random.Random) -> list[dict]:
    """One colour question (of a named shape), one shape question (of a named colour) and two yes/no questions
    (is there a <colour> <shape>?), answered yes a third of the time, about one image."""
    a = rng.choice(objects)
    b = rng.choice(objects)
    out = [{"question": rng.choice([f"what colour is the {a['shape']}?", f"what color is the {a['shape']}?"]),
            "answers": [a["colour"]], "type": "colour"},
           {"question": f"what shape is the {b['colour']} object?", "answers": [b["shape"]], "type": "shape"}]
    present = {(o["colour"], o["shape"]) for o in objects}
    for _ in range(2):
        if rng.random() < 1 / 3:
            colour, shape = rng.choice(sorted(present))
        else:  # a colour and a shape that are not drawn together
            colour, shape = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present])
        out.append({"question": f"is there a {colour} {shape}?",
                    "answers": ["yes" if (colour, shape) in present else "no"], "type": "yes/no"})
    return out


def write_source(directory: Path, counts: dict[str, int], seed: int = 0, per_image: int = 1) -> Path:
    """A complete source folder: images/, captions_<split>.jsonl, phrases.jsonl and vqa.jsonl (split column)."""
    drawn = draw(directory, counts, seed, per_image)
    rng = random.Random(seed + 1)
    vqa, phrases = [], []
    for split, images in drawn.items():
        captions = []
        for objects in images:
            name = objects[0]["image"]
            described = [f"a {o['size']} {o['colour']} {o['shape']} on the {o['where']}" for o in objects]
            captions += [{"image": name, "text": " and ".join(described)},
                         {"image": name, "text": " beside ".join(f"a {o['colour']} {o['shape']}" for o in objects)
                                                 + " on a grey background"}]
            phrases += [{"image": name, "text": t, "split": split}
                        for o in objects for t in (f"{o['colour']} {o['shape']}", f"{o['size']} {o['shape']}")]
            vqa += [{"image": name, **q, "split": split} for q in questions(objects, rng)]
        _write(directory / f"captions_{split}.jsonl", captions)
    _write(directory / "phrases.jsonl", phrases)
    _write(directory / "vqa.jsonl", vqa)
    return directory


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
