"""Deterministic, resumable sample order.

The order of epoch E is a pure function of (number of samples, seed, E, lengths, group size): a
seeded permutation, cut into groups of ``group_size`` examples, each group sorted longest first so
a batch holds examples of similar length (little padding). The order does not depend on the batch
size or the number of processes, so a run can resume on another world size at the same global
sample position. Resuming mid-epoch is index arithmetic: start at ``samples_in_epoch``.

Several weighted sources (``data/mixture.py``): the epoch's samples are ``Mixture.rows`` (a pure
function of the seed, the epoch, the weights and the per-source counts), ordered the same way
(``mixed_order``); with every weight 1 that is every recipe once, the order above.

The sampler owns the run's ``DataPosition`` (``chef_genius/data/position.py``): the trainer advances it
as batches are trained on, and a checkpoint saves and restores it through ``state_dict`` /
``load_state_dict``, which refuses a position taken under another sample order.
"""

from __future__ import annotations

import math

import numpy as np

from chef_genius.data.mixture import Mixture
from chef_genius.data.shares import rank_share
from chef_genius.data.position import DataPosition


def epoch_order(
    num_samples: int, seed: int, epoch: int, lengths: np.ndarray | None = None, group_size: int = 1024
) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(num_samples)
    if lengths is None:
        return order
    lengths = np.asarray(lengths)
    groups = []
    for start in range(0, num_samples, group_size):
        group = order[start : start + group_size]
        groups.append(group[np.argsort(-lengths[group], kind="stable")])
    return np.concatenate(groups) if groups else order


def mixed_order(rows: np.ndarray, seed: int, epoch: int, lengths: np.ndarray | None = None, group_size: int = 1024):
    """The order of an epoch whose samples are ``rows`` (training-set indices, some repeated or left out:
    a weighted mixture's, ``mixture.Mixture.rows``): ``epoch_order`` over the list, as indices into the
    training set. ``lengths`` are the training set's."""
    lengths = None if lengths is None else np.asarray(lengths)[rows]
    return rows[epoch_order(len(rows), seed, epoch, lengths, group_size)]


class ResumableBatchSampler:
    """Yields this rank's micro-batches of one epoch, starting at a global sample position.

    Each global micro-batch is ``batch_size * num_replicas`` consecutive samples of the epoch order;
    rank r takes its share (``shares.rank_share``: every rank gets at least one sample when the chunk
    has as many samples as ranks, else a padding index ``~i``, see ``shares.ShareDataset``).
    ``set_position`` picks the epoch and how many samples (all ranks together) were already consumed;
    an iteration starts there, while ``position`` moves on as the trainer consumes batches.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        seed: int,
        lengths=None,
        group_size: int = 1024,
        num_replicas: int = 1,
        rank: int = 0,
        mixture: Mixture | None = None,
    ):
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.seed = seed
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.group_size = group_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0  # where the iteration starts (set_position)
        self.start = 0
        # a weighted mixture's epochs (num_samples: its samples per epoch); None: every sample once
        self.mixture = mixture if mixture is not None and not mixture.plain else None
        self.position = DataPosition(
            seed=seed, num_samples=num_samples, group_by_length=lengths is not None, length_group_size=group_size
        )
        if mixture is not None and (len(mixture.counts) > 1 or not mixture.plain):
            assert mixture.size == num_samples, "a mixture's sampler counts its samples per epoch"
            self.position.mixture = mixture.record()  # one file of weight 1 saves the position as always

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

    def advance(self, micro_batches: int) -> None:
        """The trainer consumed ``micro_batches`` more global micro-batches: move the position on."""
        self.position.advance(micro_batches * self.global_batch_size)

    def planned_steps(self, epochs: int, accumulation: int, epoch: int = 0, samples_in_epoch: int = 0) -> int:
        """Optimizer steps from (``epoch``, ``samples_in_epoch``) to the end of ``epochs`` (pure)."""
        if epoch >= epochs:
            return 0
        per_epoch = math.ceil(self.micro_batches_per_epoch() / accumulation)
        rest = math.ceil(math.ceil(max(0, self.num_samples - samples_in_epoch) / self.global_batch_size) / accumulation)
        return rest + (epochs - epoch - 1) * per_epoch

    def state_dict(self) -> dict:
        return self.position.state_dict()

    def load_state_dict(self, state: dict, allow_change: bool = False) -> None:
        self.position.load_state_dict(state, allow_change)
        self.resume_iteration()

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The sample order of ``epoch`` (default: the one the iteration starts in), as training-set indices."""
        epoch = self.epoch if epoch is None else epoch
        if self.mixture is not None:
            return mixed_order(self.mixture.rows(self.seed, epoch), self.seed, epoch, self.lengths, self.group_size)
        return epoch_order(self.num_samples, self.seed, epoch, self.lengths, self.group_size)

    def __len__(self) -> int:
        return math.ceil(max(0, self.num_samples - self.start) / self.global_batch_size)

    def __iter__(self):
        order = self.order()
        for pos in range(self.start, self.num_samples, self.global_batch_size):
            yield rank_share(order[pos : pos + self.global_batch_size], self.num_replicas, self.rank)


# ---------------------------------------------------------------------------------------------
# token-budget micro-batches


def padded(lengths: np.ndarray, multiple: int = 8) -> np.ndarray:
    return -(-np.asarray(lengths, dtype=np.int64) // multiple) * multiple


def budget_bounds(
    order: np.ndarray, source_lengths: np.ndarray, target_lengths: np.ndarray, max_tokens: int, multiple: int = 8
) -> np.ndarray:
    """Where the micro-batches of ``order`` start, plus ``len(order)`` (pure).

    Consecutive samples of the order go into one micro-batch while its padded size, rows x (widest
    source + widest target, each padded to ``multiple`` as the collator pads), stays within
    ``max_tokens``; a sample larger than the budget alone is a micro-batch of its own.
    """
    src, tgt = padded(source_lengths, multiple)[order], padded(target_lengths, multiple)[order]
    bounds, rows, widest_src, widest_tgt = [0], 0, 0, 0
    for i, (s, t) in enumerate(zip(src.tolist(), tgt.tolist())):
        ws, wt = max(widest_src, s), max(widest_tgt, t)
        if rows and (rows + 1) * (ws + wt) > max_tokens:
            bounds.append(i)
            rows, ws, wt = 0, s, t
        rows, widest_src, widest_tgt = rows + 1, ws, wt
    bounds.append(len(order))
    return np.asarray(bounds if len(order) else [0], dtype=np.int64)


class TokenBudgetSampler(ResumableBatchSampler):
    """Micro-batches of about ``max_tokens`` padded tokens each instead of a fixed number of rows.

    The epoch order is the same length-grouped order as ``ResumableBatchSampler``'s; it is cut into
    micro-batches by ``budget_bounds`` (a pure function of the order, the lengths and the budget, not
    of the number of processes). Global micro-batch g is micro-batches ``g*world .. g*world+world-1``,
    one per rank; in the epoch's last one, a rank without a micro-batch steps on a padding copy
    ``~i`` (no loss, no tokens), so every rank runs the same number of micro-batches. The position
    still counts samples (all ranks together), and a saved count always falls on a micro-batch
    boundary, on any world size: resuming is a search in the boundaries.
    """

    def __init__(
        self,
        num_samples: int,
        max_tokens: int,
        seed: int,
        lengths,
        source_lengths,
        target_lengths,
        group_size: int = 1024,
        num_replicas: int = 1,
        rank: int = 0,
        mixture: Mixture | None = None,
    ):
        super().__init__(num_samples, 1, seed, lengths, group_size, num_replicas, rank, mixture)
        self.max_tokens = max_tokens
        self.source_lengths, self.target_lengths = np.asarray(source_lengths), np.asarray(target_lengths)
        self.position.max_tokens_per_batch = max_tokens
        self._bounds: dict[int, np.ndarray] = {}

    def bounds(self, epoch: int) -> np.ndarray:
        if epoch not in self._bounds:
            if len(self._bounds) > 2:
                self._bounds.clear()
            order = self.order(epoch)
            self._bounds[epoch] = budget_bounds(order, self.source_lengths, self.target_lengths, self.max_tokens)
        return self._bounds[epoch]

    def _first(self, epoch: int, samples_in_epoch: int) -> int:
        """The micro-batch that starts at ``samples_in_epoch`` (the next boundary if none does, which only
        a position taken under another order can ask for)."""
        return int(np.searchsorted(self.bounds(epoch), samples_in_epoch, side="left"))

    def _global_batches(self, epoch: int, first: int = 0) -> int:
        return math.ceil(max(0, len(self.bounds(epoch)) - 1 - first) / self.num_replicas)

    def micro_batches_per_epoch(self) -> int:
        return self._global_batches(0)

    def __len__(self) -> int:
        return self._global_batches(self.epoch, self._first(self.epoch, self.start))

    def __iter__(self):
        order, bounds = self.order(), self.bounds(self.epoch)
        count = len(bounds) - 1
        for g in range(self._first(self.epoch, self.start), count, self.num_replicas):
            mine = g + self.rank
            if mine < count:
                yield order[bounds[mine] : bounds[mine + 1]].tolist()
            else:
                yield [~int(order[bounds[g]])]

    def advance(self, micro_batches: int) -> None:
        p = self.position
        bounds = self.bounds(p.epoch)
        first = self._first(p.epoch, p.samples_in_epoch)
        last = min(first + micro_batches * self.num_replicas, len(bounds) - 1)
        p.advance(int(bounds[last]) - p.samples_in_epoch)

    def planned_steps(self, epochs: int, accumulation: int, epoch: int = 0, samples_in_epoch: int = 0) -> int:
        steps = 0
        for e in range(epoch, epochs):
            first = self._first(e, samples_in_epoch) if e == epoch else 0
            steps += math.ceil(self._global_batches(e, first) / accumulation)
        return steps
