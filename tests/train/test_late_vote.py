"""The per-step stop vote on several processes is read one step late, and every rank reads the same one."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp

from chef_genius.train.distributed import World


class _Accelerator:
    def __init__(self, rank: int, world: int):
        self.num_processes, self.process_index, self.is_main_process = world, rank, rank == 0
        self.device = torch.device("cpu")


def _worker(rank: int, world: int, init: str, results):
    td.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        vote = World(_Accelerator(rank, world))
        seen = []
        for step in range(1, 7):
            # rank 1 is signalled at step 3 only; rank 0 wants a clock save at step 5 only
            stop = rank == 1 and step == 3
            clock = rank == 0 and step == 5
            seen.append(vote.agree_late(stop, clock))
        results[rank] = seen
    finally:
        td.destroy_process_group()


@pytest.mark.slow  # two processes
def test_every_rank_acts_on_the_same_vote_one_step_after_it_was_cast(tmp_path):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(2, f"file://{tmp_path / 'store'}", results), nprocs=2, join=True)
        seen = dict(results)
    expected = [(False, False), (False, False), (False, False), (True, False), (False, False), (False, True)]
    assert seen[0] == expected
    assert seen[1] == expected


def test_one_process_votes_at_once():
    vote = World(_Accelerator(0, 1))
    assert vote.agree_late(True, False) == (True, False)
