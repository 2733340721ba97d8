"""Token-budget micro-batches (``--max-tokens-per-batch``): packed, deterministic, resumable, rank-safe."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from chef_genius.data.sampler import TokenBudgetSampler, budget_bounds, epoch_order, padded
from chef_genius.errors import UserError
from conftest import run_training, step_losses, train_args

rng = np.random.default_rng(5)
N = 203
SRC, TGT = rng.integers(3, 60, N), rng.integers(5, 200, N)
BUDGET = 1200


def _sampler(world=1, rank=0, budget=BUDGET, seed=7):
    return TokenBudgetSampler(N, budget, seed, SRC + TGT, SRC, TGT, group_size=32, num_replicas=world, rank=rank)


def _epoch(sampler, epoch=0, start=0):
    sampler.set_position(epoch, start)
    return list(sampler)


def test_budget_bounds_pack_the_whole_order_within_the_budget():
    order = epoch_order(N, 7, 0, SRC + TGT, 32)
    bounds = budget_bounds(order, SRC, TGT, BUDGET)
    assert bounds[0] == 0 and bounds[-1] == N and np.all(np.diff(bounds) > 0)
    src, tgt = padded(SRC), padded(TGT)
    for a, b in zip(bounds[:-1], bounds[1:]):
        members = order[a:b]
        size = len(members) * (src[members].max() + tgt[members].max())
        assert size <= BUDGET or len(members) == 1
        if b < N:  # greedy: the next recipe would not have fitted
            grown = order[a : b + 1]
            assert (len(grown)) * (src[grown].max() + tgt[grown].max()) > BUDGET
    np.testing.assert_array_equal(bounds, budget_bounds(order, SRC, TGT, BUDGET))  # pure


def test_batches_cover_every_recipe_once_and_vary_in_rows_not_in_work():
    batches = _epoch(_sampler())
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(N))
    assert len({len(b) for b in batches}) > 3  # short recipes travel in larger batches


def test_resume_mid_epoch_continues_with_the_same_batches():
    full = _epoch(_sampler())
    sampler = _sampler()
    sampler.set_position(0, 0)
    sampler.advance(5)  # the trainer consumed 5 micro-batches
    assert sampler.position.samples_in_epoch == sum(len(b) for b in full[:5])
    fresh = _sampler()
    fresh.load_state_dict(sampler.state_dict())
    assert list(fresh) == full[5:]
    assert len(fresh) == len(full) - 5


@pytest.mark.parametrize("world", [2, 3])
def test_every_rank_runs_the_same_number_of_micro_batches_and_together_they_are_the_one_rank_order(world):
    one = _epoch(_sampler())
    ranks = [_epoch(_sampler(world, r)) for r in range(world)]
    assert len({len(r) for r in ranks}) == 1
    assert all(len(_sampler(world, r)) == len(ranks[0]) for r in range(world))
    real = [batch for step in zip(*ranks) for batch in step if batch[0] >= 0]
    assert real == one
    pads = [batch for r in ranks for batch in r if batch[0] < 0]
    assert len(pads) == len(ranks[0]) * world - len(one) and all(len(p) == 1 for p in pads)


def test_a_position_saved_on_two_ranks_resumes_on_one():
    two = _sampler(world=2)
    two.set_position(0, 0)
    two.advance(4)  # 4 global micro-batches = 8 micro-batches
    one = _sampler()
    one.load_state_dict(two.state_dict())
    assert list(one) == _epoch(_sampler())[8:]


def test_planned_steps_count_what_the_epochs_hold():
    sampler = _sampler(world=2)
    per_epoch = [len(_epoch(_sampler(world=2), e)) for e in range(3)]
    assert sampler.planned_steps(3, 2) == sum(-(-n // 2) for n in per_epoch)
    sampler.set_position(1, 0)
    sampler.advance(3)
    where = sampler.position
    assert sampler.planned_steps(3, 1, where.epoch, where.samples_in_epoch) == per_epoch[1] - 3 + per_epoch[2]


def test_a_position_under_another_budget_is_refused():
    saved = _sampler().state_dict()
    with pytest.raises(UserError, match="max-tokens-per-batch: 1200 in the checkpoint, 900 now"):
        _sampler(budget=900).load_state_dict(saved)


# ---------------------------------------------------------------------------------------------
# the trainer

FLAGS = ("--max-tokens-per-batch", 1500, "--save-steps", 3, "--gradient-accumulation-steps", 2, "--epochs", 1)


@pytest.fixture(scope="module")
def budget_run(tiny_model, small_csv, cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("budget") / "run"
    assert run_training(*train_args(tiny_model, small_csv, out, cache_dir, *FLAGS)) == 0
    return out


def test_training_with_a_token_budget_resumes_bitwise(budget_run, tiny_model, small_csv, cache_dir, tmp_path):
    expected = step_losses(budget_run)
    total = max(expected)
    assert sorted(expected) == list(range(1, total + 1)) and total > 4
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(budget_run / "checkpoint-3", out / "checkpoint-3")
    assert (
        run_training(*train_args(tiny_model, small_csv, out, cache_dir, *FLAGS, "--resume-from-checkpoint", "latest"))
        == 0
    )
    got = step_losses(out)
    assert sorted(got) == list(range(4, total + 1))
    assert [got[s] for s in got] == [expected[s] for s in got]  # exact float equality


def test_a_resume_refuses_a_changed_budget(budget_run, tiny_model, small_csv, cache_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(budget_run / "checkpoint-3", out / "checkpoint-3")
    with pytest.raises(UserError, match="max-tokens-per-batch") as err:
        run_training(
            *train_args(
                tiny_model,
                small_csv,
                out,
                cache_dir,
                *FLAGS[2:],
                "--max-tokens-per-batch",
                2000,
                "--resume-from-checkpoint",
                "latest",
            )
        )
    assert err.value.exit_code == 2
