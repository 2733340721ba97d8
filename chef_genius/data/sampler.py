"""Deterministic, resumable sample order.

The order of epoch E is a pure function of (number of samples, seed, E, lengths, group size): a
seeded permutation, cut into groups of ``group_size`` examples, each group sorted longest first so
a batch holds examples of similar length (little padding). The order does not depend on the batch
size or the number of processes, so a run can resume on another world size at the same global
sample position. Resuming mid-epoch is index arithmetic: start at ``samples_in_epoch``.

The sampler owns the run's ``DataPosition`` (``chef_genius/data/position.py``): the trainer advances it
as batches are trained on, and a checkpoint saves and restores it through ``state_dict`` /
``load_state_dict``, which refuses a position taken under another sample order.
"""

from __future__ import annotations

import math

import numpy as np

from chef_genius.data.shares import rank_share
from chef_genius.data.position import DataPosition


def epoch_order(num_samples: int, seed: int, epoch: int, lengths: np.ndarray | None = None,
                group_size: int = 1024) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    if lengths is None:
        return order
    lengths = np.asarray(lengths)
    groups = []
    for start in range(0, num_samples, group_size):
        group = order[start:start + group_size]
        groups.append(group[np.argsort(-lengths[group], kind="stable")])
    return np.concatenate(groups) if groups else order


class ResumableBatchSampler:
    """Yields this rank's micro-batches of one epoch, starting at a global sample position.

    Each global micro-batch is ``batch_size * num_replicas`` consecutive samples of the epoch order;
    rank r takes its share (``shares.rank_share``: every rank gets at least one sample when the chunk
    has as many samples as ranks, else a padding index ``~i``, see ``shares.ShareDataset``).
    ``set_position`` picks the epoch and how many samples (all ranks together) were already consumed;
    an iteration starts there, while ``position`` moves on as the trainer consumes batches.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int, lengths=None, group_size: int = 1024,
                 num_replicas: int = 1, rank: int = 0):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_size = group_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0  # where the iteration starts (set_position)
        self.start = 0
        self.position = DataPosition(seed=seed, num_samples=num_samples, group_by_length=lengths is not None,
                                     length_group_size=group_size)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.num_replicas

    def micro_batches_per_epoch(self) -> int:
        return math.ceil(self.num_samples / self.global_batch_size)

    def set_position(self, epoch: int, samples_in_epoch: int) -> None:
        self.epoch = epoch
        self.start = samples_in_epoch
        self.position.epoch, self.position.samples_in_epoch = epoch, samples_in_epoch

    def resume_iteration(self) -> None:
        """The next iteration starts where ``position`` is now."""
        self.set_position(self.position.epoch, self.position.samples_in_epoch)

    def state_dict(self) -> dict:
        return self.position.state_dict()

    def load_state_dict(self, state: dict, allow_change: bool = False) -> None:
        self.position.load_state_dict(state, allow_change)
        self.resume_iteration()

    def order(self) -> np.ndarray:
        return epoch_order(self.num_samples, self.seed, self.epoch, self.lengths, self.group_size)

    def __len__(self) -> int:
        return math.ceil(max(0, self.num_samples - self.start) / self.global_batch_size)

    def __iter__(self):
        order = self.order()
        for pos in range(self.start, self.num_samples, self.global_batch_size):
            yield rank_share(order[pos:pos + self.global_batch_size], self.num_replicas, self.rank)
