"""Each process's share of a global micro-batch, and the padding row of a share that came up empty.

On N processes each global micro-batch is ``batch_size * N`` consecutive samples of the epoch
order, and rank r trains on its ``np.array_split`` share of it. The last global micro-batch of an
epoch may hold fewer samples than there are processes. A rank without a real sample must still run
forward and backward (DDP's gradient all-reduce would hang otherwise), so its share is a *padding*
index ``~i`` (negative): a copy of sample ``i`` whose labels are all ignored, so it adds no loss, no
target tokens and no gradient.

The cached path (``sampler.ResumableBatchSampler`` with ``ShareDataset``) and ``--streaming``
(``streaming.StreamingDataset``) both split with ``rank_share`` and pad with ``ShareDataset`` /
``ShareCollator``, so every batch carries ``sample_index`` (negative for padding rows) either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from chef_genius.data.tokenized import LABEL_PAD


def rank_share(chunk: Sequence[int] | np.ndarray, num_replicas: int, rank: int) -> list[int]:
    """Rank ``rank``'s sample indices of the global micro-batch ``chunk`` (never empty)."""
    share = np.array_split(np.asarray(chunk), num_replicas)[rank].tolist()
    return share or [~int(chunk[0])]


class ShareDataset(torch.utils.data.Dataset):
    """``base`` plus padding items: index ``~i`` is sample ``i`` marked as padding.

    ``base`` is anything indexable by sample index: a dataset, or (streaming) a dict of the
    global micro-batch's rows by sample index.
    """

    def __init__(self, base):
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        source, target = self.base[~i if i < 0 else i]
        return source, target, i


class ShareCollator:
    """The wrapped collator, then padding rows' labels ignored and ``sample_index`` added."""

    def __init__(self, collate, label_pad: int = LABEL_PAD):
        self.collate = collate
        self.label_pad = label_pad

    def __call__(self, items):
        batch = self.collate([(source, target) for source, target, _ in items])
        index = torch.tensor([i for _, _, i in items], dtype=torch.long)
        padding = index < 0
        if padding.any():
            batch["labels"][padding] = self.label_pad
        batch["sample_index"] = index
        return batch
