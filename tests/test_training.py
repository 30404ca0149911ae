"""The training loop's data side: mixing views by weight, seeded epochs, and the warm-up + decay schedule."""

from __future__ import annotations

import torch

from mmcore.training import EpochSampler, MixedExamples, make_schedule


class ListView(list):
    """A minimal view: examples are their own indices."""


def test_mixed_views_are_drawn_by_weight_per_view():
    small, large = ListView(range(100)), ListView(range(400))
    data = MixedExamples([small, large], [None, None])
    sampler = EpochSampler(data, [3.0, 1.0], seed=0)
    draws = list(sampler)
    assert len(draws) == 500
    share_small = sum(1 for i in draws if i < 100) / len(draws)
    assert abs(share_small - 0.75) < 0.06  # weights are per view, not per example
    example, source = data[150]
    assert example == 50 and source is large


def test_single_view_epochs_are_seeded_permutations():
    data = MixedExamples([ListView(range(50))], [20])
    sampler = EpochSampler(data, [1.0], seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(20))  # `limit` keeps the first 20
    sampler.set_epoch(1)
    second = list(sampler)
    assert sorted(second) == list(range(20)) and second != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_schedule_warms_up_then_decays_to_zero():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = make_schedule(optimizer, total_steps=10, warmup=0.2)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[0] == 0.5 and lrs[1] == 1.0
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:])) and lrs[2] > lrs[3] and lrs[-1] > 0
    assert optimizer.param_groups[0]["lr"] == 0.0
