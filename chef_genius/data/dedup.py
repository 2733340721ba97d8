"""Exact and near-duplicate recipes: found by content, the later copy removed, every removal listed.

What counts as the same recipe (``normal_form``): the recipe text the model learns to write (the
target: title, ingredient lines, directions), with

- case folded, every character that is not a letter or digit turned into a space (punctuation,
  quotes, bullets), runs of spaces made one;
- the ingredient lines sorted (the order of a list of ingredients is not a different recipe);
- the model input left out: it is made from the recipe (the ingredient names), so two rows with one
  recipe and two spellings of its names are one recipe.

Two rows with the same normal form are exact duplicates. Near-duplicates are found by MinHash over
the normal form's word 3-grams, indexed with LSH (``rensa``: chosen over ``datasketch`` by the
measurement in ``bench/results/2026-12-06-dedup-libraries.md``): a row whose estimated Jaccard
similarity to an earlier kept row is at least the threshold (``DEFAULT_THRESHOLD``, set by the
planted-duplicates measurement in that file; ``--dedup-threshold``) is a near-duplicate of it.

Rows are taken in order and each is compared with the rows kept before it, so the first copy of a
recipe is the one kept, and a row's fate never depends on rows after it: appending rows to a file
removes nothing that was kept before. Held-out recipes (``--eval-data``) are indexed first, so a
training row that twins one of them is removed too (``held_out_twin``).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from chef_genius.data.recipes import parse_target

DEFAULT_THRESHOLD = 0.75
NUM_PERM = 128
NUM_BANDS = 32  # 32 bands of 4 rows: a pair at Jaccard 0.5 is a candidate with p = 0.87
MINHASH_SEED = 20261206  # fixed: signatures recorded with a model must match those computed later
SHINGLE = 3
MODES = ("remove", "keep", "off")  # remove twins / find them (report, split) but train on all / old behaviour
REMOVAL_KINDS = ("exact", "near", "held_out_twin")
_NOT_WORD = re.compile(r"[\W_]+")


def words_of(text: str) -> str:
    """Lower case, letters and digits only, single spaces."""
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).split())


def normal_form(target: str) -> str:
    """The recipe text as duplicates are judged: see the module docstring."""
    recipe = parse_target(target)
    if not recipe.ingredients and not recipe.directions:
        return words_of(target)
    items = sorted(w for w in (words_of(i) for i in recipe.ingredients) if w)
    return " | ".join((words_of(recipe.title), " ; ".join(items), words_of(" ".join(recipe.directions))))


def content_key(normal: str) -> int:
    """64-bit hash of a normal form (the exact-duplicate key and the split's hash input)."""
    return int.from_bytes(hashlib.blake2b(normal.encode("utf-8"), digest_size=8).digest(), "little")


def shingles(normal: str) -> list[str]:
    """The word 3-grams of a normal form (the whole text when it is shorter)."""
    tokens = normal.split()
    if len(tokens) <= SHINGLE:
        return [" ".join(tokens)]
    return list({" ".join(tokens[i : i + SHINGLE]) for i in range(len(tokens) - SHINGLE + 1)})


def minhash(normal: str):
    """The MinHash of a normal form (``rensa.RMinHash``)."""
    from rensa import RMinHash

    m = RMinHash(NUM_PERM, MINHASH_SEED)
    m.update(shingles(normal))
    return m


ROWS_PER_BAND = NUM_PERM // NUM_BANDS
_MIX = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F], dtype=np.uint32)


def band_keys(digests: np.ndarray) -> np.ndarray:
    """(rows, NUM_BANDS) uint32: one key per LSH band (4 MinHash values) of each digest (rows x
    NUM_PERM uint32): what a model records of its training recipes, 128 bytes each."""
    values = np.asarray(digests, dtype=np.uint32).reshape(len(digests), NUM_BANDS, ROWS_PER_BAND)
    with np.errstate(over="ignore"):
        mixed = values * _MIX[:ROWS_PER_BAND]
    keys = mixed[..., 0].copy()
    for i in range(1, ROWS_PER_BAND):
        keys = (keys << np.uint32(5) | keys >> np.uint32(27)) ^ mixed[..., i]
    return keys


def bands_for(threshold: float) -> int:
    """Shared bands that make two recipes near-twins when only band keys are known: each band of two
    recipes at Jaccard J is equal with probability J ** ROWS_PER_BAND, so the count of equal bands
    estimates J; this is the count at the threshold."""
    return max(1, math.ceil(NUM_BANDS * threshold**ROWS_PER_BAND))


@dataclass
class Removal:
    row: int  # the removed row: index among the file's usable recipes
    twin: int  # the row kept in its place (a held-out row's index for held_out_twin)
    kind: str  # exact | near | held_out_twin
    similarity: float  # 1.0 for an exact duplicate; the MinHash estimate otherwise


class RemovalTable(Sequence):
    """Removals read back from a saved decision: one (n, 4) array of row, twin, kind index and similarity,
    made into ``Removal`` objects only when they are read one by one (the audit). A start needs only
    the rows and kinds (``Dedup.kept``, ``counts``): 350,000 objects for 2.2M recipes cost 1.4 s."""

    def __init__(self, table: np.ndarray):
        self.table = np.asarray(table, dtype=np.float64).reshape(-1, 4)
        self._items: list[Removal] | None = None

    def rows(self) -> np.ndarray:
        return self.table[:, 0].astype(np.int64)

    def kinds(self) -> np.ndarray:
        return self.table[:, 2].astype(np.int64)

    def _list(self) -> list[Removal]:
        if self._items is None:
            self._items = [Removal(int(r), int(t), REMOVAL_KINDS[int(k)], s) for r, t, k, s in self.table.tolist()]
        return self._items

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index):
        return self._list()[index]

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # mutable-alike, as a list


@dataclass
class Dedup:
    """What deduplication decided for one file's usable recipes."""

    keys: np.ndarray  # uint64 content key of each row's cluster (its kept twin's)
    removed: Sequence[Removal] = field(default_factory=list)  # a list, or a RemovalTable read back
    bands: np.ndarray | None = None  # (rows, NUM_BANDS) uint32 band keys of each row
    threshold: float = DEFAULT_THRESHOLD

    def removed_rows(self, kind: str | None = None) -> np.ndarray:
        """The removed rows (of one ``kind``), as an array."""
        if isinstance(self.removed, RemovalTable):
            rows = self.removed.rows()
            return rows if kind is None else rows[self.removed.kinds() == REMOVAL_KINDS.index(kind)]
        return np.array([r.row for r in self.removed if kind is None or r.kind == kind], dtype=np.int64)

    @property
    def kept(self) -> np.ndarray:
        mask = np.ones(len(self.keys), dtype=bool)
        mask[self.removed_rows()] = False
        return np.flatnonzero(mask)

    def counts(self) -> dict:
        if isinstance(self.removed, RemovalTable):
            found = np.bincount(self.removed.kinds(), minlength=len(REMOVAL_KINDS))
            return {kind: int(n) for kind, n in zip(REMOVAL_KINDS, found)}
        out = {"exact": 0, "near": 0, "held_out_twin": 0}
        for r in self.removed:
            out[r.kind] += 1
        return out


class Index:
    """Kept recipes so far: their exact keys, and their MinHashes in an LSH index. ``digests`` (rows x
    NUM_PERM) holds every row's MinHash values; a candidate's similarity is the share of equal values
    (what ``RMinHash.jaccard`` computes), compared for all candidates of a row at once."""

    def __init__(self, threshold: float, digests: np.ndarray):
        from rensa import RMinHashLSH

        self.threshold, self.digests = threshold, digests
        self.lsh = RMinHashLSH(threshold, NUM_PERM, NUM_BANDS)
        self.exact: dict[int, int] = {}

    def match(self, key: int, m, row: int) -> tuple[int, float] | None:
        """(kept row, similarity) of the closest kept twin of ``row`` at or above the threshold, exact first;
        ties go to the earliest row."""
        if key in self.exact:
            return self.exact[key], 1.0
        candidates = np.sort(np.fromiter(self.lsh.query(m), dtype=np.int64))
        if not len(candidates):
            return None
        similarity = (self.digests[candidates] == self.digests[row]).mean(axis=1)
        best = int(np.argmax(similarity))  # the first of the highest: the earliest row
        return (int(candidates[best]), float(similarity[best])) if similarity[best] >= self.threshold else None

    def add(self, row: int, key: int, m) -> None:
        self.exact.setdefault(key, row)
        self.lsh.insert(row, m)


def deduplicate(targets, threshold: float = DEFAULT_THRESHOLD, held_out=()) -> Dedup:
    """Duplicates among ``targets`` (recipe texts in row order) and twins of the ``held_out`` ones."""
    if not 0 < threshold <= 1:
        raise ValueError(f"the near-duplicate threshold must be in (0, 1], got {threshold}")
    targets, held_out = list(targets), list(held_out)
    held = Index(threshold, np.zeros((len(held_out) + 1, NUM_PERM), dtype=np.uint32))
    for row, target in enumerate(held_out):
        normal = normal_form(target)
        m = minhash(normal)
        held.digests[row] = m.digest()
        held.add(row, content_key(normal), m)
    index = Index(threshold, np.zeros((len(targets), NUM_PERM), dtype=np.uint32))
    keys, removed = np.zeros(len(targets), dtype=np.uint64), []
    for row, target in enumerate(targets):
        normal = normal_form(target)
        key = content_key(normal)
        m = minhash(normal)
        index.digests[row] = m.digest()
        keys[row] = key
        if held_out:
            held.digests[-1] = index.digests[row]
            twin = held.match(key, m, len(held_out))
            if twin is not None:
                removed.append(Removal(row, twin[0], "held_out_twin", round(twin[1], 4)))
                continue
        twin = index.match(key, m, row)
        if twin is not None:
            removed.append(Removal(row, twin[0], "exact" if key in index.exact else "near", round(twin[1], 4)))
            keys[row] = keys[twin[0]]
            continue
        index.add(row, key, m)
    return Dedup(keys, removed, band_keys(index.digests), threshold)
