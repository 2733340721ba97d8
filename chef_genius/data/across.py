"""Duplicates across training sources: a later source's twin of an earlier source's recipe.

Each source is deduplicated by itself first (``corpus.find_duplicates``: its own saved decision, so
adding a source neither re-tokenizes nor re-hashes the others). Then, in the canonical order of the
sources (``mixture.canonical``: by content, so the command line's order does not matter), each
source's remaining recipes are compared with the recipes kept from the sources before it:

- exact: the same content key (the normal form of ``dedup.py``);
- near: the earlier recipe of highest similarity at or above the threshold, estimated from the saved
  sketches (``dedup.sketch``: the low 8 bits of each of the 128 MinHash values, all that a saved
  decision keeps of a recipe's MinHash), among those sharing one of the LSH bands a file's own search
  uses (``dedup.sketch_twins``). The estimate stays within 0.02 of the full MinHash's (0.003 on
  average over planted rewordings); version 1 judged by the count of equal band keys (32 of 4 values),
  which at the 0.74 default found 0.947 of the planted reworded copies across two files where the
  within-file search found 0.961.

A twin takes the earlier recipe's cluster key, so with ``--dedup keep`` (twins trained on) the content
split still puts both on the same side; with ``--dedup remove`` it leaves training and is listed in
``removed_duplicates.csv`` as ``exact_across`` / ``near_across`` with the twin's source and record.

The decision is saved in the tokenized cache (``across-KEY.npy``, named by every source's own saved
decision, in canonical order), so a rerun or a resume reads it instead of matching again, as one array
(``AcrossTable``: a start makes no Python object per twin).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chef_genius.data import dedup

ACROSS_KINDS = ("exact_across", "near_across")
ACROSS_VERSION = 2  # part of the saved decision's name: bump when the matching changes (2: sketches)


@dataclass
class Across:
    row: int  # the removed row: index among its source's usable recipes
    twin_source: int  # the earlier source (canonical index)
    twin: int  # its row there
    kind: str  # exact_across | near_across
    similarity: float


class AcrossTable(Sequence):
    """One source's twins of earlier sources' recipes: an (n, 5) array of row, twin source, twin row,
    kind index and similarity, sorted by row; ``Across`` objects made only when read one by one (the
    audit)."""

    def __init__(self, table=None):
        self.table = np.zeros((0, 5)) if table is None else np.asarray(table, dtype=np.float64).reshape(-1, 5)

    def rows(self) -> np.ndarray:
        return self.table[:, 0].astype(np.int64)

    def of_kind(self, kind: str) -> int:
        """How many twins are of ``kind`` (exact_across | near_across)."""
        return int((self.table[:, 3] == ACROSS_KINDS.index(kind)).sum())

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        r, s, t, k, sim = self.table[index].tolist()
        return Across(int(r), int(s), int(t), ACROSS_KINDS[int(k)], sim)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]


def across_sources(keys: list[np.ndarray], sketches: list[np.ndarray], candidates: list[np.ndarray], threshold: float):
    """Per source (canonical order): its twins among the earlier sources' recipes (``AcrossTable``), and
    its keys with each twin's cluster key taken over (pure). ``keys[i]`` / ``sketches[i]``: content keys
    and sketches of source i's usable recipes; ``candidates[i]``: the rows compared (those its own
    deduplication kept). Only rows that are not twins become the earlier recipes of later sources."""
    seen_keys = np.zeros(0, dtype=np.uint64)
    seen_sketch = np.zeros((0, dedup.NUM_PERM), dtype=np.uint8)
    seen_from = np.zeros((0, 2), dtype=np.int64)  # (source, row) of each earlier recipe
    found: list[AcrossTable] = []
    new_keys: list[np.ndarray] = []
    for i, (k, sk, rows) in enumerate(zip(keys, sketches, candidates)):
        rows = np.asarray(rows, dtype=np.int64)
        mine = _match(k[rows], sk[rows], seen_keys, seen_sketch, threshold)
        if len(mine):  # rows and earlier recipes as numbered in the sources
            mine[:, 0] = rows[mine[:, 0].astype(np.int64)]
            earlier = seen_from[mine[:, 2].astype(np.int64)]
            mine[:, 1], mine[:, 2] = earlier[:, 0], earlier[:, 1]
        table = AcrossTable(mine)
        remapped = _clustered(k, table, new_keys)
        found.append(table)
        new_keys.append(remapped)
        keep = np.setdiff1d(rows, table.rows())
        seen_keys = np.concatenate([seen_keys, remapped[keep]])
        seen_sketch = np.concatenate([seen_sketch, sk[keep]])
        seen_from = np.concatenate([seen_from, np.stack([np.full(len(keep), i), keep], axis=1)])
    return found, new_keys


def _clustered(k: np.ndarray, mine: AcrossTable, earlier: list[np.ndarray]) -> np.ndarray:
    """Keys ``k`` of a source with each twin's cluster (its rows in this source with it) moved to the
    cluster key of the earlier recipe it twins (``earlier``: the earlier sources' keys, clustered; of
    two twins in one cluster, the later one's)."""
    remapped = np.asarray(k, dtype=np.uint64).copy()
    if not len(mine):
        return remapped
    t = mine.table
    old = remapped[t[:, 0].astype(np.int64)]
    new = np.empty(len(t), dtype=np.uint64)
    for source in np.unique(t[:, 1]).astype(np.int64).tolist():
        at = t[:, 1] == source
        new[at] = earlier[source][t[at, 2].astype(np.int64)]
    last = len(old) - 1 - np.unique(old[::-1], return_index=True)[1]  # the last twin of each old key
    old, new = old[last], new[last]
    order = np.argsort(old)
    old, new = old[order], new[order]
    where = np.isin(remapped, old)
    remapped[where] = new[np.searchsorted(old, remapped[where])]
    return remapped


def clustered_keys(keys: list[np.ndarray], found: list[AcrossTable]) -> list[np.ndarray]:
    """``across_sources``' keys from its twins (a saved decision read back)."""
    out: list[np.ndarray] = []
    for k, mine in zip(keys, found):
        out.append(_clustered(k, mine, out))
    return out


def save(path: Path, found: list[AcrossTable]) -> None:
    """The twins across sources, one row each (source, row, twin source, twin row, kind, similarity)."""
    table = np.concatenate(
        [np.zeros((0, 6))] + [np.column_stack([np.full(len(m), i), m.table]) for i, m in enumerate(found)]
    )
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}.npy")
    np.save(tmp, table)
    os.replace(tmp, path)


def load(path: Path, sources: int) -> list[AcrossTable]:
    table = np.load(path, allow_pickle=False).reshape(-1, 6)
    return [AcrossTable(table[table[:, 0] == i, 1:]) for i in range(sources)]


def _match(keys, sketch, seen_keys, seen_sketch, threshold: float) -> np.ndarray:
    """(n, 5) rows of ``AcrossTable`` numbered among the rows asked and the earlier recipes (twin source
    column left 0): exact twins (the earliest earlier recipe with the same key), else near twins
    (``dedup.sketch_twins``), by row."""
    out = np.zeros((0, 5))
    if not len(seen_keys) or not len(keys):
        return out
    unique, first = np.unique(seen_keys, return_index=True)
    at = np.minimum(np.searchsorted(unique, keys), len(unique) - 1)
    exact = unique[at] == keys
    exact_rows = np.flatnonzero(exact)
    rest = np.flatnonzero(~exact)
    rows, twins, sims = dedup.sketch_twins(sketch[rest], seen_sketch, threshold)
    table = np.concatenate(
        [
            np.column_stack(
                [
                    exact_rows,
                    np.zeros(len(exact_rows)),
                    first[at[exact_rows]],
                    np.zeros(len(exact_rows)),
                    np.ones(len(exact_rows)),
                ]
            ),
            np.column_stack([rest[rows], np.zeros(len(rows)), twins, np.ones(len(rows)), np.round(sims, 4)]),
        ]
    )
    return table[np.argsort(table[:, 0], kind="stable")]
