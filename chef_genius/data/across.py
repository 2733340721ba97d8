"""Duplicates across training sources: a later source's twin of an earlier source's recipe.

Each source is deduplicated by itself first (``corpus.find_duplicates``: its own saved decision, so
adding a source neither re-tokenizes nor re-hashes the others). Then, in the canonical order of the
sources (``mixture.canonical``: by content, so the command line's order does not matter), each
source's remaining recipes are compared with the recipes kept from the sources before it:

- exact: the same content key (the normal form of ``dedup.py``);
- near: at least ``dedup.bands_for(threshold)`` of the 32 LSH band keys equal (what
  ``evaluate_recipes.py`` uses to find a held-out recipe's twin in training: the saved band keys are
  all that is kept of each recipe's MinHash). The similarity recorded is the estimate from the count
  of equal bands, ``(equal / 32) ** (1 / 4)``.

A twin takes the earlier recipe's cluster key, so with ``--dedup keep`` (twins trained on) the content
split still puts both on the same side; with ``--dedup remove`` it leaves training and is listed in
``removed_duplicates.csv`` as ``exact_across`` / ``near_across`` with the twin's source and record.

The decision is saved in the tokenized cache (``across-KEY.npy``, named by every source's own saved
decision, in canonical order), so a rerun or a resume reads it instead of matching again (the
matching took 46 s and 2.2 GB peak for 2.2M + 0.5M recipes of random band keys, 1 % of them planted
twins, on this 2-core machine under load; 2 s for 220k + 50k).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chef_genius.data import dedup

ACROSS_KINDS = ("exact_across", "near_across")
ACROSS_VERSION = 1  # part of the saved decision's name: bump when the matching changes
_CHUNK = 50_000  # new rows matched at once (bounds the candidate pairs held in memory)


@dataclass
class Across:
    row: int  # the removed row: index among its source's usable recipes
    twin_source: int  # the earlier source (canonical index)
    twin: int  # its row there
    kind: str  # exact_across | near_across
    similarity: float


def across_sources(keys: list[np.ndarray], bands: list[np.ndarray], candidates: list[np.ndarray], threshold: float):
    """Per source (canonical order): its twins among the earlier sources' recipes, and its keys with
    each twin's cluster key taken over (pure). ``keys[i]`` / ``bands[i]``: content keys and band keys
    of source i's usable recipes; ``candidates[i]``: the rows compared (those its own deduplication
    kept). Only rows that are not twins become the earlier recipes of later sources."""
    need = dedup.bands_for(threshold)
    seen_keys = np.zeros(0, dtype=np.uint64)
    seen_bands = np.zeros((0, dedup.NUM_BANDS), dtype=np.uint32)
    seen_from = np.zeros((0, 2), dtype=np.int64)  # (source, row) of each earlier recipe
    found: list[list[Across]] = []
    new_keys: list[np.ndarray] = []
    for i, (k, b, rows) in enumerate(zip(keys, bands, candidates)):
        rows = np.asarray(rows, dtype=np.int64)
        twins = _match(k[rows], b[rows], seen_keys, seen_bands, need) if len(seen_keys) else {}
        mine = [
            Across(int(rows[r]), int(seen_from[t, 0]), int(seen_from[t, 1]), kind, sim)
            for r, (t, kind, sim) in sorted(twins.items())
        ]
        remapped = _clustered(k, mine, new_keys)
        found.append(mine)
        new_keys.append(remapped)
        keep = np.setdiff1d(rows, [a.row for a in mine])
        seen_keys = np.concatenate([seen_keys, remapped[keep]])
        seen_bands = np.concatenate([seen_bands, b[keep]])
        seen_from = np.concatenate([seen_from, np.stack([np.full(len(keep), i), keep], axis=1)])
    return found, new_keys


def _clustered(k: np.ndarray, mine: list[Across], earlier: list[np.ndarray]) -> np.ndarray:
    """Keys ``k`` of a source with each twin's cluster (its rows in this source with it) moved to the
    cluster key of the earlier recipe it twins (``earlier``: the earlier sources' keys, clustered)."""
    remapped = np.asarray(k, dtype=np.uint64).copy()
    if mine:
        moved = {int(k[a.row]): int(earlier[a.twin_source][a.twin]) for a in mine}
        old = np.array(sorted(moved), dtype=np.uint64)
        new = np.array([moved[o] for o in sorted(moved)], dtype=np.uint64)
        where = np.isin(remapped, old)
        remapped[where] = new[np.searchsorted(old, remapped[where])]
    return remapped


def clustered_keys(keys: list[np.ndarray], found: list[list[Across]]) -> list[np.ndarray]:
    """``across_sources``' keys from its twins (a saved decision read back)."""
    out: list[np.ndarray] = []
    for k, mine in zip(keys, found):
        out.append(_clustered(k, mine, out))
    return out


def save(path: Path, found: list[list[Across]]) -> None:
    """The twins across sources, one row each (source, row, twin source, twin row, kind, similarity)."""
    table = np.array(
        [
            (i, a.row, a.twin_source, a.twin, ACROSS_KINDS.index(a.kind), a.similarity)
            for i, m in enumerate(found)
            for a in m
        ],
        dtype=np.float64,
    ).reshape(-1, 6)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}.npy")
    np.save(tmp, table)
    os.replace(tmp, path)


def load(path: Path, sources: int) -> list[list[Across]]:
    found: list[list[Across]] = [[] for _ in range(sources)]
    for i, row, twin_source, twin, kind, similarity in np.load(path):
        found[int(i)].append(Across(int(row), int(twin_source), int(twin), ACROSS_KINDS[int(kind)], float(similarity)))
    return found


def _match(keys, bands, seen_keys, seen_bands, need: int) -> dict[int, tuple[int, str, float]]:
    """row -> (earlier recipe, kind, similarity) of the rows with a twin: exact first, else the
    earlier recipe sharing the most band keys (the earliest of those), if at least ``need``."""
    out: dict[int, tuple[int, str, float]] = {}
    first: dict[int, int] = {}
    for j, key in enumerate(seen_keys.tolist()):
        first.setdefault(key, j)
    for r, key in enumerate(keys.tolist()):
        if key in first:
            out[r] = (first[key], "exact_across", 1.0)
    rest = np.array([r for r in range(len(keys)) if r not in out], dtype=np.int64)
    by_band = np.ascontiguousarray(seen_bands.T)  # one contiguous row per band: searched band by band
    order = np.argsort(by_band, axis=1, kind="stable")
    columns = np.take_along_axis(by_band, order, axis=1)
    for start in range(0, len(rest), _CHUNK):
        chunk = rest[start : start + _CHUNK]
        asked = np.ascontiguousarray(bands[chunk].T)
        pairs = []
        for b in range(dedup.NUM_BANDS):
            lo = np.searchsorted(columns[b], asked[b], "left")
            hi = np.searchsorted(columns[b], asked[b], "right")
            counts = hi - lo
            if not counts.any():
                continue
            who = np.repeat(chunk, counts)
            within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
            pairs.append(who * len(seen_keys) + order[b, np.repeat(lo, counts) + within])
        if not pairs:
            continue
        codes, shared = np.unique(np.concatenate(pairs), return_counts=True)
        hit = shared >= need
        rows, cands, shared = codes[hit] // len(seen_keys), codes[hit] % len(seen_keys), shared[hit]
        by = np.lexsort((cands, -shared, rows))  # per row: the most shared bands, then the earliest recipe
        _, first_of_row = np.unique(rows[by], return_index=True)
        for j in by[first_of_row].tolist():
            similarity = (shared[j] / dedup.NUM_BANDS) ** (1 / dedup.ROWS_PER_BAND)
            out[int(rows[j])] = (int(cands[j]), "near_across", round(float(similarity), 4))
    return out
