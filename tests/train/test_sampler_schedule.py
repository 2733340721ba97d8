import math

import numpy as np
import pytest
import torch

from chef_genius.data.sampler import ResumableBatchSampler, epoch_order
from chef_genius.train.schedule import Schedule, lr_factor, make_scheduler, scheduler_state_at


def test_epoch_order_is_a_pure_permutation_grouped_by_length():
    lengths = np.random.default_rng(0).integers(5, 500, size=1000)
    a = epoch_order(1000, seed=1, epoch=2, lengths=lengths, group_size=100)
    assert sorted(a.tolist()) == list(range(1000))
    assert np.array_equal(a, epoch_order(1000, seed=1, epoch=2, lengths=lengths, group_size=100))
    assert not np.array_equal(a, epoch_order(1000, seed=1, epoch=3, lengths=lengths, group_size=100))
    for start in range(0, 1000, 100):  # longest first inside each group
        group = lengths[a[start : start + 100]]
        assert np.all(group[:-1] >= group[1:])


def test_sampler_resume_is_index_arithmetic_and_world_size_independent():
    full = ResumableBatchSampler(50, 4, seed=7)
    batches = list(full)
    assert len(batches) == 13 and sorted(sum(batches, [])) == list(range(50))
    resumed = ResumableBatchSampler(50, 4, seed=7)
    resumed.set_position(0, 24)
    assert list(resumed) == batches[6:] and len(resumed) == 7
    two = [ResumableBatchSampler(50, 2, seed=7, num_replicas=2, rank=r) for r in (0, 1)]
    merged = [a + b for a, b in zip(*two)]
    assert merged == batches  # same global order, each rank its half


@pytest.mark.parametrize("kind", ["linear", "cosine", "constant"])
def test_lr_factor_warmup_and_decay(kind):
    # warmup 10, decay over steps 10..100: the factor for 0-based step s
    assert [lr_factor(s, 10, 100, kind) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    inside = {10: 1.0, 32: 68 / 90, 55: 0.5, 77: 23 / 90, 99: 1 / 90}  # linear: 1 - (s - 10) / 90
    if kind == "cosine":  # 0.5 * (1 + cos(pi * (s - 10) / 90)) at progress 0, 1/6, 1/2, 2/3, 89/90
        inside = {10: 1.0, 25: (2 + math.sqrt(3)) / 4, 55: 0.5, 70: 0.25, 99: (1 - math.cos(math.pi / 90)) / 2}
    if kind == "constant":
        inside = {10: 1.0, 55: 1.0, 99: 1.0}
    assert {s: lr_factor(s, 10, 100, kind) for s in inside} == pytest.approx(inside, rel=1e-12, abs=1e-15)
    # the end, and past it (a run resumed with more steps than planned): 0, never negative
    end = 1.0 if kind == "constant" else 0.0
    assert [lr_factor(s, 10, 100, kind) for s in (100, 150)] == pytest.approx([end, end], abs=1e-15)
    decay = [lr_factor(s, 10, 100, kind) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))


def test_rewarm_ramps_from_the_resume_step_without_restarting_warmup():
    plain = lr_factor(500, 100, 1000, "linear")
    assert lr_factor(500, 100, 1000, "linear", rewarm_from=500, rewarm_steps=10) == pytest.approx(plain / 10)
    assert lr_factor(509, 100, 1000, "linear", 500, 10) == pytest.approx(lr_factor(509, 100, 1000, "linear"))


def test_scheduler_state_at_matches_a_stepped_scheduler():
    schedule = Schedule(5, 50, "cosine")
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    sched = make_scheduler(opt, schedule)
    for _ in range(17):
        opt.step()
        sched.step()
    expected = scheduler_state_at(17, 1e-3, schedule)
    assert sched.last_epoch == expected["last_epoch"]
    assert sched.get_last_lr() == expected["_last_lr"]
