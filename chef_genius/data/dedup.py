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
planted-duplicates measurement in ``bench/results/2026-12-06-dedup-scale.md``; ``--dedup-threshold``)
is a near-duplicate of it.

The rule: rows are taken in order and each is compared with the rows kept before it, so the first copy
of a recipe is the one kept, and a row's fate never depends on rows after it: appending rows to a file
removes nothing that was kept before. Held-out recipes (``--eval-data``) come first, so a training row
that twins one of them is removed too (``held_out_twin``).

How it runs at scale (``decide``): the per-row work (normal form, content key, MinHash) is pure, so
``signatures`` runs in worker processes over chunks of a file (``dedup_read.read_signed``); the LSH
candidates of all rows (rows sharing one of ``SEARCH_BANDS`` bands of ``SEARCH_ROWS`` MinHash values)
are found at once, a sort per band, and their similarities compared in numpy (``twin_pairs``); only
the rows with a candidate at or above the threshold are then visited in order, applying the rule
above. The result is the row-by-row decision's, removal for removal (tests/data/test_dedup.py checks
it against an LSH index filled and queried row by row).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from chef_genius.data.recipes import parse_target

DEFAULT_THRESHOLD = 0.74
NUM_PERM = 128
NUM_BANDS = 32  # the LSH bands of a sketch (sketch_bands): 32 bands of 4 values
# The search's LSH bands: 25 of 5 values (125 of the 128). A pair at the 0.74 default is a candidate
# with p = 0.998, one at 0.2 (recipes sharing stock phrases) with p = 0.008; 32 bands of 4 made the
# second 0.05, and candidates grew with the corpus (18 a row at 60,000 generated recipes, 670 at 2.2M).
SEARCH_ROWS = 5
SEARCH_BANDS = NUM_PERM // SEARCH_ROWS
MINHASH_SEED = 20261206  # fixed: signatures recorded with a model must match those computed later
SHINGLING = "word3"  # see shingles()
MODES = ("remove", "keep", "off")  # remove twins / find them (report, split) but train on all / old behaviour
REMOVAL_KINDS = ("exact", "near", "held_out_twin")
_NOT_WORD = re.compile(r"[\W_]+")


def words_of(text: str) -> str:
    """Lower case, letters and digits only, single spaces."""
    return " ".join(_NOT_WORD.sub(" ", text.casefold()).split())


def normal_form(target: str, recipe=None) -> str:
    """The recipe text as duplicates are judged: see the module docstring (``recipe``: the target
    already parsed, ``parse_target(target)``)."""
    recipe = parse_target(target) if recipe is None else recipe
    if not recipe.ingredients and not recipe.directions:
        return words_of(target)
    items = sorted(w for w in (words_of(i) for i in recipe.ingredients) if w)
    return " | ".join((words_of(recipe.title), " ; ".join(items), words_of(" ".join(recipe.directions))))


def content_key(normal: str) -> int:
    """64-bit hash of a normal form (the exact-duplicate key and the split's hash input)."""
    return int.from_bytes(hashlib.blake2b(normal.encode("utf-8"), digest_size=8).digest(), "little")


def shingles(normal: str, kind: str | None = None) -> list[str]:
    """The shingles of a normal form (``SHINGLING`` unless ``kind`` says: ``word<k>`` for word k-grams,
    ``char<k>`` for character k-grams); the whole text when it is shorter than one."""
    kind = kind or SHINGLING
    k = int(kind[4:])
    if kind.startswith("char"):
        return list({normal[i : i + k] for i in range(max(1, len(normal) - k + 1))})
    tokens = normal.split()
    if len(tokens) <= k:
        return [" ".join(tokens)]
    return list({" ".join(tokens[i : i + k]) for i in range(len(tokens) - k + 1)})


ROWS_PER_BAND = NUM_PERM // NUM_BANDS
SKETCH_BITS = 8
_MIX = np.array([0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F], dtype=np.uint32)


def sketch(digests: np.ndarray) -> np.ndarray:
    """(rows, NUM_PERM) uint8: the low ``SKETCH_BITS`` bits of each MinHash value ("b-bit MinHash"),
    what is kept of a recipe once its file is decided (128 bytes): the recipes a model trained on
    (``corpus.SIGNATURES_FILE``) and, per source, what the search across sources compares. Two
    recipes at Jaccard J agree on a value with probability J + (1 - J) / 256, so the share of equal
    values estimates J nearly as well as the full digests (``sketch_similarity``); viewed as 32 uint32
    (``sketch_bands``) they are the LSH band keys that find the candidates."""
    return np.asarray(digests, dtype=np.uint32).astype(np.uint8)  # the low 8 bits of each value


def sketch_bands(sketches: np.ndarray) -> np.ndarray:
    """(rows, NUM_BANDS) uint32: each band of ROWS_PER_BAND sketch values as one key (equal when all four
    values are; two recipes at J share a band with probability about J ** 4)."""
    return np.ascontiguousarray(sketches, dtype=np.uint8).view(np.uint32).reshape(len(sketches), NUM_BANDS)


def sketch_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The Jaccard estimate of each row pair of two (n, NUM_PERM) sketches: the share of equal values less
    the chance agreement of two different values (1 / 256), rescaled, clipped to [0, 1]."""
    chance = 1.0 / (1 << SKETCH_BITS)
    equal = (np.asarray(a) == np.asarray(b)).mean(axis=1)
    return np.clip((equal - chance) / (1.0 - chance), 0.0, 1.0)


def band_keys(digests: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """(rows, NUM_BANDS) uint32: one key per LSH band (4 MinHash values) of each digest: what signatures
    files of versions 1 and 2 recorded (``corpus.twins_in_training`` reads them); ``sketch`` since."""
    digests = np.asarray(digests, dtype=np.uint32)
    out = np.empty((len(digests), NUM_BANDS), dtype=np.uint32)
    for s in range(0, len(digests), chunk):
        values = digests[s : s + chunk].reshape(-1, NUM_BANDS, ROWS_PER_BAND)
        with np.errstate(over="ignore"):
            mixed = values * _MIX[:ROWS_PER_BAND]
        keys = mixed[..., 0].copy()
        for i in range(1, ROWS_PER_BAND):
            keys = (keys << np.uint32(5) | keys >> np.uint32(27)) ^ mixed[..., i]
        out[s : s + chunk] = keys
    return out


def bands_for(threshold: float) -> int:
    """Shared band keys that make two recipes near-twins when only band keys are known (signatures of
    versions 1 and 2): each band of two recipes at Jaccard J is equal with probability J ** ROWS_PER_BAND,
    so the count of equal bands estimates J; this is the count at the threshold."""
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
    sketch: np.ndarray | None = None  # (rows, NUM_PERM) uint8 ``sketch`` of each row (None: not read yet)
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


def signatures(targets, normals=None, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(content keys uint64, MinHash digests rows x NUM_PERM uint32) of recipe texts: what the
    decision needs of each row, pure per row, so workers can compute them for chunks of a file."""
    from rensa import RMinHash

    normals = [normal_form(t) for t in targets] if normals is None else normals
    keys = np.fromiter((content_key(n) for n in normals), dtype=np.uint64, count=len(normals))
    if not normals:
        return keys, np.zeros((0, NUM_PERM), dtype=np.uint32)
    # One RMinHash a row, not RMinHash.digests_from_token_sets: that one hashes on a thread pool, which
    # a forked worker (dedup_read.read_signed) inherits without its threads and waits on forever.
    digests = np.empty((len(normals), NUM_PERM), dtype=np.uint32)
    for row, normal in enumerate(normals):
        m = RMinHash(NUM_PERM, MINHASH_SEED)
        m.update(shingles(normal, kind))
        digests[row] = m.digest()
    return keys, digests


def band_hash(digests: np.ndarray, band: int) -> np.ndarray:
    """(rows,) uint64: the SEARCH_ROWS MinHash values of search band ``band`` of each row folded into
    64 bits (two rows share the band when these are equal; a spurious equality, about 1 in 2**64, only
    adds a candidate, which the similarity check then judges)."""
    h = np.zeros(len(digests), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(band * SEARCH_ROWS, (band + 1) * SEARCH_ROWS):
            h = (h ^ digests[:, i].astype(np.uint64)) * np.uint64(0x100000001B3) + np.uint64(0x9E3779B97F4A7C15)
            h ^= h >> np.uint64(29)
    return h


def _band_pairs(column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later) rows of every pair with equal values in ``column`` (one sort)."""
    order = np.argsort(column, kind="stable")
    column = column[order]
    n, los, his = len(column), [], []
    at = np.flatnonzero(column[1:] == column[:-1])  # runs of equal values: pairs at distance d
    d = 1
    while len(at):
        lo, hi = order[at], order[at + d]
        los.append(np.minimum(lo, hi))
        his.append(np.maximum(lo, hi))
        d += 1
        at = at[at + d < n]
        at = at[column[at + d] == column[at]]
    if not los:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(los).astype(np.int64), np.concatenate(his).astype(np.int64)


def twin_pairs(held: np.ndarray, digests: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """(earlier rows, later rows, similarities), sorted by later row then earlier: every pair of rows
    that shares at least one search band (the LSH candidates) and whose MinHash similarity is at
    least ``threshold``; rows numbered held-out first (0 .. len(held)-1), then ``digests``. One sort
    per band and the similarities in numpy, band by band, so only pairs at or above the threshold
    are kept: memory does not grow with the candidates."""
    h = len(held)
    codes, sims = [], []
    n = h + len(digests)
    for b in range(SEARCH_BANDS):
        column = band_hash(digests, b)
        lo, hi = _band_pairs(np.concatenate([band_hash(held, b), column]) if h else column)
        keep = hi >= h  # pairs of two held-out rows do not matter
        lo, hi = lo[keep], hi[keep]
        sim = similarities(held, digests, lo, hi)
        close = sim >= threshold
        codes.append(lo[close] * n + hi[close])
        sims.append(sim[close])
    code, sim = np.concatenate(codes), np.concatenate(sims)
    lo, hi = code // n, code % n
    order = np.lexsort((lo, hi))
    lo, hi, sim = lo[order], hi[order], sim[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])  # a pair found in several bands, once
    return lo[first], hi[first], sim[first]


def similarities(held: np.ndarray, digests: np.ndarray, lo: np.ndarray, hi: np.ndarray, chunk: int = 1 << 16):
    """The MinHash estimate of each pair's Jaccard similarity (the share of equal values, what
    ``RMinHash.jaccard`` computes); rows numbered as ``twin_pairs`` numbers them."""

    def rows(index: np.ndarray) -> np.ndarray:
        if not len(held):
            return digests[index]
        out = np.empty((len(index), NUM_PERM), dtype=np.uint32)
        mine = index < len(held)
        out[mine], out[~mine] = held[index[mine]], digests[index[~mine] - len(held)]
        return out

    out = np.empty(len(lo), dtype=np.float64)
    for s in range(0, len(lo), chunk):
        out[s : s + chunk] = (rows(lo[s : s + chunk]) == rows(hi[s : s + chunk])).mean(axis=1)
    return out


def decide(keys, digests, threshold: float = DEFAULT_THRESHOLD, held_keys=None, held_digests=None) -> Dedup:
    """The duplicates among rows with these content keys and digests (row order) and the twins of the
    held-out rows: each row against the rows kept before it (exact twin first, else the kept candidate
    of highest similarity at or above the threshold, ties to the earliest), as a pass over the rows
    would decide; the candidates and similarities are computed for all rows at once, and only rows
    with a twin candidate are visited one by one."""
    if not 0 < threshold <= 1:
        raise ValueError(f"the near-duplicate threshold must be in (0, 1], got {threshold}")
    keys = np.asarray(keys, dtype=np.uint64).copy()
    digests = np.asarray(digests, dtype=np.uint32).reshape(len(keys), NUM_PERM)
    held_keys = np.zeros(0, np.uint64) if held_keys is None else np.asarray(held_keys, dtype=np.uint64)
    held_digests = np.zeros((0, NUM_PERM), np.uint32) if held_digests is None else np.asarray(held_digests, np.uint32)
    h = len(held_keys)
    lo, hi, sim = twin_pairs(held_digests.reshape(h, NUM_PERM), digests, threshold)
    lo, hi = lo - h, hi - h  # held-out rows now negative: -h .. -1
    starts = np.searchsorted(hi, np.arange(len(keys) + 1))
    visit = np.unique(np.concatenate([lo[lo >= 0], hi]))  # rows with a twin candidate, in order
    held_exact: dict[int, int] = {}
    for i, k in enumerate(held_keys.tolist()):
        held_exact.setdefault(k, i)
    kept = np.ones(len(keys), dtype=bool)
    exact: dict[int, int] = {}  # content key -> the kept row holding it
    removed = []
    lo_l, sim_l, key_l = lo.tolist(), sim.tolist(), keys.tolist()
    for row in visit.tolist():
        key, a, b = key_l[row], int(starts[row]), int(starts[row + 1])
        twin = _held_twin(key, held_exact, lo_l[a:b], sim_l[a:b], h)
        if twin is not None:
            removed.append(Removal(row, twin[0], "held_out_twin", round(twin[1], 4)))
            kept[row] = False
            continue
        if key in exact:
            twin, kind = (exact[key], 1.0), "exact"
        else:
            twin, kind = _best(((i, s) for i, s in zip(lo_l[a:b], sim_l[a:b]) if i >= 0 and kept[i])), "near"
        if twin is not None:
            removed.append(Removal(row, twin[0], kind, round(twin[1], 4)))
            kept[row] = False
            keys[row] = keys[twin[0]]
            continue
        exact.setdefault(key, row)
    return Dedup(keys, removed, sketch(digests), threshold)


def _held_twin(key: int, held_exact: dict, lo: list, sim: list, h: int) -> tuple[int, float] | None:
    if not h:
        return None
    if key in held_exact:
        return held_exact[key], 1.0
    best = _best((i + h, s) for i, s in zip(lo, sim) if i < 0)
    return None if best is None else (best[0], best[1])


def _best(candidates) -> tuple[int, float] | None:
    """The candidate of highest similarity, the earliest of equals (candidates come in row order)."""
    best = None
    for row, s in candidates:
        if best is None or s > best[1]:
            best = (row, s)
    return best


def deduplicate(targets, threshold: float = DEFAULT_THRESHOLD, held_out=()) -> Dedup:
    """Duplicates among ``targets`` (recipe texts in row order) and twins of the ``held_out`` ones."""
    if not 0 < threshold <= 1:
        raise ValueError(f"the near-duplicate threshold must be in (0, 1], got {threshold}")
    keys, digests = signatures(list(targets))
    held_keys, held_digests = signatures(list(held_out))
    return decide(keys, digests, threshold, held_keys, held_digests)


_PAIRS_AT_ONCE = 1_000_000  # candidate pairs compared at once: 400 MB of sketch rows (bounds sketch_twins)


def sketch_twins(asked: np.ndarray, seen: np.ndarray, threshold: float):
    """(rows of ``asked``, their twins in ``seen``, similarities), by row: for each row of the sketches
    ``asked`` the row of ``seen`` of highest ``sketch_similarity`` at or above ``threshold`` (the earliest
    of equals). Candidates are found as the file's own search finds them (``twin_pairs``): the pairs
    sharing one of ``SEARCH_BANDS`` bands of ``SEARCH_ROWS`` sketch values, band by band, a sort of
    ``seen``'s band each, and compared at once in numpy, ``_PAIRS_AT_ONCE`` at most, so memory does not
    grow with the candidates (32 bands of 4 gave 3,000 candidates a row between 0.5M and 2M generated
    recipes sharing stock phrases: 5 GB and 95 s)."""
    empty = np.zeros(0, np.int64)
    if not len(asked) or not len(seen):
        return empty, empty, np.zeros(0)
    n = len(seen)
    codes, sims = [empty], [np.zeros(0)]
    for b in range(SEARCH_BANDS):
        column = band_hash(seen, b)
        order = np.argsort(column, kind="stable")
        column = column[order]
        mine = band_hash(asked, b)
        lo = np.searchsorted(column, mine, "left")
        counts = np.searchsorted(column, mine, "right") - lo
        del column, mine
        ends = np.cumsum(counts)
        start = 0
        while start < len(counts):  # rows of ``asked`` whose candidates fit in one batch of pairs
            stop = max(start + 1, int(np.searchsorted(ends, ends[start] - counts[start] + _PAIRS_AT_ONCE, "right")))
            c = counts[start:stop]
            if c.any():
                who = np.repeat(np.arange(start, stop, dtype=np.int64), c)
                within = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c)
                twin = order[np.repeat(lo[start:stop], c) + within]
                sim = sketch_similarity(asked[who], seen[twin])
                close = sim >= threshold
                codes.append(who[close] * n + twin[close])
                sims.append(sim[close])
            start = stop
    code, sim = np.concatenate(codes), np.concatenate(sims)
    rows, twins = code // n, code % n
    best = np.lexsort((twins, -sim, rows))  # per row: the most similar, then the earliest
    _, first = np.unique(rows[best], return_index=True)
    pick = best[first]
    return rows[pick], twins[pick], sim[pick]
