"""The default VQA fine-tuning against the question-only baseline on the drawn shapes (tests/shapes.py).

    OMP_NUM_THREADS=1 python benchmarks/measure_drawn_vqa.py --out /tmp/drawn [--seeds 0 1 2] [--normalise none]
        [--per-image 2]

Draws 1,000 images (700 train, 150 val, 150 test; one shape each, or two with --per-image 2; four questions each:
colour, shape and two yes/no), prepares them with
``mmcore data prepare --extractor grid`` (default 2048-d features, 6x6 grid), then fine-tunes LXMERT-S at CPU width
(recipes/base/lxmert_s_cpu.yaml) from scratch with recipes/base/downstream.yaml's ``vqa`` entry, once per seed.
Prints test accuracy overall and per question type beside the question-only baseline and chance, and each
epoch's validation accuracy. A seed whose run directory already holds results is read, not run again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from shapes import write_source  # noqa: E402

TYPES = ("colour", "shape", "yes/no")


def main() -> None:
    """Draw, prepare, fine-tune per seed, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--normalise", choices=["standardise", "none"], default="standardise")
    parser.add_argument("--per-image", type=int, choices=[1, 2], default=1, help="Shapes per image.")
    args = parser.parse_args()
    source = args.out / f"source_{args.per_image}"
    ready = args.out / f"ready_{args.per_image}_{args.normalise}"
    if not source.is_dir():
        write_source(source, {"train": 700, "val": 150, "test": 150}, seed=0, per_image=args.per_image)
    if not ready.is_dir():
        subprocess.run(["mmcore", "data", "prepare", str(source), str(ready), "--extractor", "grid", "--quiet",
                        "--normalise", args.normalise], check=True)
    print(spread(ready / "features.h5"))
    downstream = yaml.safe_load((ROOT / "recipes/base/downstream.yaml").read_text())
    vqa = next(entry for entry in downstream["finetune"] if entry["name"] == "vqa")
    for seed in args.seeds:
        name = f"drawn_vqa_{args.per_image}_{args.normalise}"
        run = args.out / "runs" / name / f"seed{seed}"
        if not (run / "results.json").is_file():
            recipe = args.out / f"{name}_seed{seed}.yaml"  # one file per seed: seeds may run side by side
            recipe.write_text(yaml.safe_dump({"name": name, "seed": seed, "include": ["base/lxmert_s_cpu.yaml"],
                                              "datasets": {"pairs": {"root": str(ready.resolve())}},
                                              "finetune": [vqa]}, sort_keys=False))
            subprocess.run(["mmcore", "run", str(recipe), "--output-dir", str(args.out / "runs"), "--run-name",
                            f"seed{seed}", "--cache-dir", str(args.out / "cache"), "--quiet"], check=True)
        report(seed, run)


def spread(store: Path) -> str:
    """How much of a region's features is one vector common to all regions, over the first 300 images."""
    import h5py
    import numpy as np

    with h5py.File(store, "r") as f:
        feats = f["features"][:300].astype(np.float64)
        real = np.arange(feats.shape[1])[None, :] < f["num_boxes"][:300][:, None]
    rows = feats[real]
    mean = rows.mean(0)
    return (f"features {store}: mean region vector norm {np.linalg.norm(mean):.1f}, a region's offset from it "
            f"{np.linalg.norm(rows - mean, axis=1).mean():.1f} (mean norm)")


def report(seed: int, run: Path) -> None:
    """One line of test figures and one of validation accuracy by epoch."""
    m = json.loads((run / "results.json").read_text())["vqa"]["metrics"]
    types = "  ".join(f"{t} {100 * m[f'accuracy_{t}']:.1f}" for t in TYPES)
    print(f"seed {seed}: test accuracy {100 * m['accuracy']:.2f}  question-only {100 * m['question_only']:.2f}  "
          f"gap {100 * (m['accuracy'] - m['question_only']):+.2f}  ({types}; chance colour 12.5 shape 33.3 "
          "yes/no 50.0)")
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curve = " ".join(f"{100 * r['val_accuracy']:.1f}" for r in epochs if "val_accuracy" in r)
    print(f"         val accuracy by epoch: {curve}")


if __name__ == "__main__":
    main()
