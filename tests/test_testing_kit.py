"""mmcore.testing on the built-in plugins (every task, the VQA head, synthworld) and on broken plugins it must
catch: a loss the backbone does not feed, a prepare that edits the view's example, randomness outside the seed."""

from __future__ import annotations

import random

import numpy as np
import pytest

from mmcore.api import Task
from mmcore.plugins import load_plugins
from mmcore.testing import check_dataset, check_head, check_task, tiny_info

REGISTRY = load_plugins().registry
# A tiny batch has 24 regions: at the default 5% IFRS would often shuffle none, and learn nothing.
OPTIONS = {"ifrs": {"shuffle_prob": 0.5}}


@pytest.mark.parametrize("name", REGISTRY.names("task"))
def test_every_built_in_task_keeps_the_contract(name):
    report = check_task(REGISTRY.get("task", name).factory, **OPTIONS.get(name, {}))
    assert "gradient reaches the backbone" in report.checked and "deterministic under a seed" in report.checked


def test_the_vqa_head_keeps_the_contract():
    answers = ("yes", "no", "w3")

    def targets(example, rng):
        return {"vqa_target": rng.dirichlet(np.ones(len(answers))).astype(np.float32)}

    report = check_head(REGISTRY.get("head", "vqa").factory, info=tiny_info(answers={"vqa": answers}), extra=targets)
    assert "evaluate returns finite metrics with the primary one" in report.checked


def test_synthworld_keeps_the_dataset_contract(tmp_path):
    options = {"train_images": 12, "val_images": 4, "test_images": 4, "vqa_train_images": 4,
               "retrieval_train_images": 4, "max_regions": 4, "feature_dim": 8}
    report = check_dataset(REGISTRY.get("dataset", "synthworld").factory, options, tmp_path)
    assert "every view's examples carry its declared fields, deterministically" in report.checked


class Detached(Task):
    name = "detached"
    defaults = {"target": 1.0}

    def __init__(self, info, backbone, **options):
        super().__init__(info, backbone, **options)
        self.bias = __import__("torch").nn.Parameter(__import__("torch").zeros(()))

    def loss(self, output, batch):
        return (self.bias - self.options["target"]) ** 2


class Meddling(Detached):
    name = "meddling"

    def prepare(self, example, source, rng):
        example["visual_feats"][0] = 0.0  # edits the view's own array
        return example

    def loss(self, output, batch):
        return output.pooled.pow(2).mean()


class Unseeded(Meddling):
    name = "unseeded"

    def prepare(self, example, source, rng):
        return dict(example)

    def loss(self, output, batch):
        return output.pooled.pow(2).mean() * random.random()  # not the rng prepare is given


@pytest.mark.parametrize(("task", "rule"), [(Detached, "no gradient reaches the backbone"),
                                            (Meddling, "prepare changed the view's own example"),
                                            (Unseeded, "two runs under seed 0 differ")])
def test_a_broken_task_fails_with_the_rule_it_breaks(task, rule):
    with pytest.raises(AssertionError, match=rule):
        check_task(task)


def test_an_unknown_option_or_a_bad_default_is_caught():
    with pytest.raises(AssertionError, match=r"options \['targett'\] are not in its defaults"):
        check_task(Detached, targett=2.0)
