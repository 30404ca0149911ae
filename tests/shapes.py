"""A drawn image set for the ``pairs`` dataset tests: one coloured shape per small PNG (Pillow), with captions,
phrases and colour / shape / yes-no questions templated from what was drawn, in the JSONL formats of
docs/your-data.md. Images of each split live in images/<split>/ and are numbered from 0 in every split, so the
same file name recurs across splits (the dataset must keep them apart)."""

from __future__ import annotations

import json
import random
from pathlib import Path

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (40, 60, 220), "yellow": (235, 215, 30),
           "purple": (140, 40, 170), "orange": (245, 140, 20), "white": (250, 250, 250), "black": (15, 15, 15)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (7, 10), "large": (13, 17)}  # half-widths in pixels of a 48-pixel image
BACKGROUND = (128, 128, 128)
SIDE = 48


def draw(directory: Path, counts: dict[str, int], seed: int = 0) -> dict[str, list[dict]]:
    """Draw ``counts[split]`` images per split under ``directory``; returns what was drawn per split."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    drawn: dict[str, list[dict]] = {}
    for split, count in counts.items():
        folder = directory / "images" / split
        folder.mkdir(parents=True, exist_ok=True)
        drawn[split] = []
        for index in range(count):
            scene = {"image": f"{split}/{index}.png", "colour": rng.choice(list(COLOURS)),
                     "shape": rng.choice(SHAPES), "size": rng.choice(list(SIZES))}
            r = rng.randint(*SIZES[scene["size"]])
            cx, cy = rng.randint(r, SIDE - r - 1), rng.randint(r, SIDE - r - 1)
            image = Image.new("RGB", (SIDE, SIDE), BACKGROUND)
            pen = ImageDraw.Draw(image)
            fill = COLOURS[scene["colour"]]
            if scene["shape"] == "circle":
                pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
            elif scene["shape"] == "square":
                pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
            else:
                pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
            image.save(folder / f"{index}.png")
            scene["where"] = ("top" if cy < SIDE / 2 else "bottom") + (" left" if cx < SIDE / 2 else " right")
            drawn[split].append(scene)
    return drawn


def questions(scene: dict, rng: random.Random) -> list[dict]:
    """A colour, a shape and a yes/no question about one scene (yes half the time)."""
    out = [{"question": rng.choice(["what colour is the shape?", "what color is the object?"]),
            "answers": [scene["colour"]], "type": "colour"},
           {"question": rng.choice(["what shape is it?", "what kind of shape is shown?"]),
            "answers": [scene["shape"]], "type": "shape"}]
    if rng.random() < 0.5:
        colour, shape = scene["colour"], scene["shape"]
    else:  # a wrong colour or a wrong shape
        colour = rng.choice([c for c in COLOURS if c != scene["colour"]]) if rng.random() < 0.5 else scene["colour"]
        shape = scene["shape"] if colour != scene["colour"] else rng.choice([s for s in SHAPES if s != scene["shape"]])
    answer = "yes" if (colour, shape) == (scene["colour"], scene["shape"]) else "no"
    out.append({"question": f"is there a {colour} {shape}?", "answers": [answer], "type": "yes/no"})
    return out


def write_source(directory: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """A complete source folder: images/, captions_<split>.jsonl, phrases.jsonl and vqa.jsonl (split column)."""
    drawn = draw(directory, counts, seed)
    rng = random.Random(seed + 1)
    vqa, phrases = [], []
    for split, scenes in drawn.items():
        captions = []
        for scene in scenes:
            c, s, size, where = scene["colour"], scene["shape"], scene["size"], scene["where"]
            captions += [{"image": scene["image"], "text": f"a {size} {c} {s} on a grey background"},
                         {"image": scene["image"], "text": f"a {c} {s} in the {where}"}]
            phrases += [{"image": scene["image"], "text": t, "split": split}
                        for t in (f"{c} {s}", f"{size} {s}", f"{where} corner", "grey background")]
            vqa += [{"image": scene["image"], **q, "split": split} for q in questions(scene, rng)]
        _write(directory / f"captions_{split}.jsonl", captions)
    _write(directory / "phrases.jsonl", phrases)
    _write(directory / "vqa.jsonl", vqa)
    return directory


def _write(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
