"""A training file's duplicates, its content-based validation split, and what a run records of them.

- ``find_duplicates``: ``dedup.decide`` over the file's usable recipes (and the ``--eval-data``
  recipes, whose twins leave training), read and hashed by worker processes (``dedup_read``), kept
  in the tokenized cache folder under a key of the dedup settings and the held-out file (plain
  arrays, read without pickle), so a rerun or a resume reads it back instead of hashing again.
- ``content_split``: the validation split by content. A recipe is held out when a hash of its
  cluster's content key and the seed falls below ``--eval-split-ratio``: its side depends on what it
  is, not on its row number, so appending rows moves no old recipe across the split, and a recipe and
  its twins (kept with ``--dedup keep``) always fall on the same side.
- ``write_audit``: ``removed_duplicates.csv`` in the run folder, one line per removed row.
- ``save_signatures`` / ``twins_in_training``: the training recipes' content keys and sketches
  (``dedup.sketch``, 136 bytes a recipe), saved beside the final model, so ``evaluate_recipes.py``
  can count held-out recipes that were trained on.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chef_genius.data import dedup
from chef_genius.data.dedup_read import read_signed
from chef_genius.data.readers import ReadOptions
from chef_genius.errors import DataError

log = logging.getLogger("chef_genius")

# Part of the saved decision's key and of the signatures file: bump when the normal form or hashing
# changes (cached decisions are rebuilt). 2: the decision file holds plain arrays (titles as a string
# table), read without pickle; the normal form and hashing are version 1's. 3: each row's sketch
# (``dedup.sketch``) replaces its band keys, in the decision and in the signatures file.
DEDUP_VERSION = 3
SIGNATURE_VERSIONS = (1, 2, 3)  # signatures files this code reads (1, 2: band keys; 3: sketches)
AUDIT_FILE = "removed_duplicates.csv"
SIGNATURES_FILE = "chef_genius_training_signatures.npz"


@dataclass(frozen=True)
class DedupOptions:
    """``--dedup`` (remove | keep | off) and ``--dedup-threshold``."""

    mode: str = "remove"
    threshold: float = dedup.DEFAULT_THRESHOLD

    @property
    def active(self) -> bool:
        return self.mode != "off"


@dataclass
class FileDedup:
    """What was decided for one training file (rows = its usable recipes, in order)."""

    path: str
    records: np.ndarray  # 1-based record number in the file of each usable recipe
    titles: Sequence[str]  # read back from a saved decision at first use (``SavedColumn``)
    result: dedup.Dedup
    eval_path: str | None = None
    eval_records: np.ndarray | None = None
    eval_titles: Sequence[str] | None = None
    decision: str = ""  # the saved decision's path (``result_path``; its name is its key): what was decided

    def sketches(self) -> np.ndarray:
        """Every row's ``dedup.sketch``: in memory after a search, else read from the saved decision now
        (a start from the cache needs them only to look for twins across sources anew)."""
        if self.result.sketch is None:
            with np.load(self.decision, allow_pickle=False) as z:
                self.result.sketch = z["sketch"]
        return self.result.sketch

    def train_rows(self, mode: str) -> np.ndarray:
        """The rows training may use: the kept ones (``remove``) or all but the held-out twins (``keep``)."""
        if mode == "remove":
            return self.result.kept
        held = self.result.removed_rows("held_out_twin")
        mask = np.ones(len(self.result.keys), dtype=bool)
        mask[held] = False
        return np.flatnonzero(mask)


def _key(path, options: ReadOptions, settings: DedupOptions, eval_path) -> str:
    """By content (every byte, as the tokenized cache and the resume check): an edit that keeps the size
    and modification time still gets a new decision. The hash is remembered per file state in this process."""
    from chef_genius.data.fingerprint import content_sha256

    key = {
        "version": DEDUP_VERSION,
        "data": content_sha256(path),
        **options.key(),
        "threshold": settings.threshold,
        "eval": content_sha256(eval_path) if eval_path else None,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def result_path(folder: Path, path, options: ReadOptions, settings: DedupOptions, eval_path) -> Path:
    return Path(folder) / f"dedup-{_key(path, options, settings, eval_path)}.npz"


def find_duplicates(
    path, options: ReadOptions, settings: DedupOptions, folder: Path, eval_path=None, num_proc: int = 0
) -> FileDedup:
    """The duplicates of ``path`` (and the twins of ``eval_path``'s recipes), saved in ``folder``.
    ``num_proc``: processes that read and hash the file (0: one per available core)."""
    saved = result_path(folder, path, options, settings, eval_path)
    if saved.is_file():
        try:
            return _load(saved, path, eval_path, settings.threshold)
        except Exception as err:  # damaged, cut short, or an older (pickled) layout: found again, never trusted
            log.warning("%s is damaged (%s): looking for the duplicates again", saved.name, type(err).__name__)
            saved.unlink(missing_ok=True)
    signed = read_signed(path, options, num_proc)
    held = read_signed(eval_path, options, num_proc) if eval_path else None
    log.info(
        "looking for duplicates among %d recipes of %s (threshold %.2f)", len(signed.keys), path, settings.threshold
    )
    result = dedup.decide(
        signed.keys,
        signed.digests,
        settings.threshold,
        held.keys if held else None,
        held.digests if held else None,
    )
    found = FileDedup(
        str(path),
        signed.records,
        signed.titles,
        result,
        str(eval_path) if eval_path else None,
        held.records if held else None,
        held.titles if held else None,
        str(saved),
    )
    _save(saved, found)
    return found


# -- the saved decision: plain arrays, no pickle --------------------------------------------------------
def _pack(strings: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A string table: the UTF-8 bytes of all strings and the character offset where each ends."""
    text = "".join(strings)
    ends = np.cumsum([len(s) for s in strings], dtype=np.int64)
    return np.frombuffer(text.encode("utf-8", "surrogatepass"), dtype=np.uint8), ends


def _unpack(blob: np.ndarray, ends: np.ndarray) -> list[str]:
    text = blob.tobytes().decode("utf-8", "surrogatepass")
    starts = np.concatenate(([0], ends[:-1])).tolist()
    return [text[a:b] for a, b in zip(starts, ends.tolist())]


def _save(where: Path, found: FileDedup) -> None:
    r = found.result
    assert r.sketch is not None  # dedup.decide always computes them
    if isinstance(r.removed, dedup.RemovalTable):
        removed = r.removed.table
    else:
        removed = np.array(
            [(x.row, x.twin, dedup.REMOVAL_KINDS.index(x.kind), x.similarity) for x in r.removed], dtype=np.float64
        ).reshape(-1, 4)
    titles, title_ends = _pack(list(found.titles))
    eval_titles, eval_title_ends = _pack(list(found.eval_titles or []))
    tmp = where.with_name(where.name + f".tmp-{os.getpid()}.npz")
    np.savez(
        tmp,
        version=np.array(DEDUP_VERSION),
        keys=r.keys,
        sketch=r.sketch,
        removed=removed,
        records=found.records,
        titles=titles,
        title_ends=title_ends,
        eval_records=found.eval_records if found.eval_records is not None else np.zeros(0, np.int64),
        eval_titles=eval_titles,
        eval_title_ends=eval_title_ends,
    )
    os.replace(tmp, where)


def _load(where: Path, path, eval_path, threshold: float) -> FileDedup:
    with np.load(where, allow_pickle=False) as z:  # a pickled (older) file raises: found again
        if int(z["version"]) != DEDUP_VERSION:
            raise ValueError(f"decision file version {int(z['version'])}")
        # the sketches (128 bytes a row, most of the file) read when asked for (``FileDedup.sketches``)
        result = dedup.Dedup(z["keys"], dedup.RemovalTable(z["removed"]), None, threshold)
        return FileDedup(
            str(path),
            z["records"],
            SavedColumn(z["titles"], z["title_ends"]),
            result,
            str(eval_path) if eval_path else None,
            z["eval_records"],
            SavedColumn(z["eval_titles"], z["eval_title_ends"]),
            str(where),
        )


class SavedColumn(Sequence):
    """A string table of a saved decision (``_pack``), decoded into strings at its first use: the titles,
    which only the audit reads (a resume does not write it again), so a start does not decode a million
    strings for nothing. The arrays themselves are read with the decision (a damaged file is found then)."""

    def __init__(self, blob: np.ndarray, ends: np.ndarray):
        self.blob, self.ends, self.length = blob, ends, len(ends)
        self._values: list | None = None

    def _read(self) -> list:
        if self._values is None:
            self._values = _unpack(self.blob, self.ends)
        return self._values

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index):
        return self._read()[index]

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]  # compared as a list is


# -- the split ----------------------------------------------------------------------------------------
def side_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    """A uniform 64-bit value per content key and seed (splitmix64's finaliser over key ^ seed)."""
    x = np.asarray(keys, dtype=np.uint64) ^ np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def content_split(keys: np.ndarray, rows: np.ndarray, ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of ``rows``: held out where the side hash of the row's cluster
    key falls below ``ratio`` (pure). With a ratio above 0 and two rows or more, at least one row is on
    each side (the lowest hash held out, or the highest kept)."""
    rows = np.asarray(rows, dtype=np.int64)
    if ratio <= 0 or len(rows) < 2:
        return rows, rows[:0]
    h = side_hash(keys[rows], seed)
    cut = np.uint64(min(int(ratio * 2.0**64), 2**64 - 1))
    held = h < cut
    if not held.any():
        held[np.argmin(h)] = True
    if held.all():
        held[np.argmax(h)] = False
    return rows[~held], rows[held]


def split_rows(
    num_rows: int, found: FileDedup | None, mode: str, has_eval_data: bool, ratio: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of a file's usable recipes (pure given ``found``): with
    ``--eval-data`` every row training may use and no validation row, else the content split of those
    rows; with ``--dedup off`` (``found`` None) the split of rows by number, as before duplicates were
    looked for (``tokenized.split_indices``)."""
    if found is None:
        if has_eval_data:
            return np.arange(num_rows), np.arange(0)
        from chef_genius.data.tokenized import split_indices

        return split_indices(num_rows, ratio, seed)
    usable = found.train_rows(mode)
    if has_eval_data:
        return usable, usable[:0]
    return content_split(found.result.keys, usable, ratio, seed)


# -- what the run folder gets -------------------------------------------------------------------------
AUDIT_COLUMNS = ["kind", "file", "record", "title", "twin_file", "twin_record", "twin_title", "similarity"]


def write_audit(out_dir: Path, found: FileDedup | list[FileDedup], extra_rows=()) -> Path:
    """``removed_duplicates.csv``: each removed row (file, record, title), its kept twin, the similarity;
    of one file or of several (``found`` a list), then ``extra_rows`` (the twins across sources, in
    ``AUDIT_COLUMNS``' order)."""
    out = Path(out_dir) / AUDIT_FILE
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        w = csv.writer(handle)
        w.writerow(AUDIT_COLUMNS)
        for one in found if isinstance(found, list) else [found]:
            w.writerows(_audit_rows(one))
        w.writerows(extra_rows)
    os.replace(tmp, out)
    return out


def _audit_rows(found: FileDedup):
    for r in found.result.removed:
        held = r.kind == "held_out_twin"
        twin_file = found.eval_path if held else found.path
        if held:  # a twin in the --eval-data file, read with it
            assert found.eval_records is not None and found.eval_titles is not None
            twin_record, twin_title = found.eval_records[r.twin], found.eval_titles[r.twin]
        else:
            twin_record, twin_title = found.records[r.twin], found.titles[r.twin]
        yield [
            r.kind,
            found.path,
            int(found.records[r.row]),
            found.titles[r.row],
            twin_file,
            int(twin_record),
            twin_title,
            f"{r.similarity:.4f}",
        ]


def save_signatures(folder: Path, keys: np.ndarray, sketches: np.ndarray, threshold: float, stamp: str = "") -> Path:
    """``SIGNATURES_FILE`` of training recipes with content ``keys`` and ``sketches``, and the
    ``stamp`` of what they were written from (``records_written``). Not compressed: hash values do not
    compress (5 % smaller, 2 s more per 1M recipes on this machine)."""
    out = Path(folder) / SIGNATURES_FILE
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}.npz")
    np.savez(
        tmp,
        keys=np.unique(keys),
        sketch=sketches,
        version=np.array(DEDUP_VERSION),
        threshold=np.array(threshold),
        stamp=np.array(stamp),
    )
    os.replace(tmp, out)
    return out


def records_stamp(found: FileDedup, train_rows: np.ndarray) -> str:
    """What a run folder's audit and signatures are a function of, for one source: the saved decision (its file name is
    its key: the data's and held-out file's content, the settings) and the training rows."""
    rows = hashlib.sha256(np.ascontiguousarray(train_rows, dtype=np.int64).tobytes()).hexdigest()[:16]
    return f"{Path(found.decision).name}:{rows}:{found.path}:{found.eval_path}"


def records_written(folder: Path, stamp: str) -> bool:
    """Whether ``folder`` already holds the audit and the signatures written with ``stamp`` (a resume of
    the same run: written again, they would cost seconds per 1M recipes)."""
    signatures = Path(folder) / SIGNATURES_FILE
    if not stamp or not (Path(folder) / AUDIT_FILE).is_file() or not signatures.is_file():
        return False
    try:
        with np.load(signatures) as z:
            return "stamp" in z.files and str(z["stamp"]) == stamp
    except (OSError, ValueError, EOFError):  # damaged: written again
        return False


def find_signatures(folder: Path) -> Path | None:
    """The signatures file of a model folder, a checkpoint's run folder, or None."""
    for where in (Path(folder), Path(folder).parent):
        if (where / SIGNATURES_FILE).is_file():
            return where / SIGNATURES_FILE
    return None


def twins_in_training(signatures: Path, targets: list[str]) -> tuple[np.ndarray, float]:
    """(for each recipe text: whether the recorded training data holds its twin, the threshold): an
    exact twin (same content key), or a near-twin: a training recipe whose sketch similarity is at the
    threshold or above (``dedup.sketch_twins``, what the search across sources uses); in a signatures
    file of version 1 or 2, which kept band keys, a training recipe sharing at least
    ``dedup.bands_for(threshold)`` of them."""
    with np.load(signatures) as z:
        version, threshold, keys = int(z["version"]), float(z["threshold"]), z["keys"]
        if version not in SIGNATURE_VERSIONS:
            raise DataError(
                f"{signatures} was written by another chef-genius (signatures version {version}, this one "
                f"reads {', '.join(map(str, SIGNATURE_VERSIONS))}): use that version to count the trained twins"
            )
        recorded = z["bands"] if version < 3 else z["sketch"]
    mine, digests = dedup.signatures(targets)
    hit = np.isin(mine, keys)
    asked = np.flatnonzero(~hit)
    if version >= 3:
        rows, _, _ = dedup.sketch_twins(dedup.sketch(digests[asked]), recorded, threshold)
        hit[asked[rows]] = True
        return hit, threshold
    mine_bands = dedup.band_keys(digests)
    need = dedup.bands_for(threshold)
    order = np.argsort(recorded, axis=0, kind="stable")
    columns = np.take_along_axis(recorded, order, axis=0)
    for i in asked:
        found = np.concatenate(
            [
                order[
                    np.searchsorted(columns[:, b], mine_bands[i, b], "left") : np.searchsorted(
                        columns[:, b], mine_bands[i, b], "right"
                    ),
                    b,
                ]
                for b in range(recorded.shape[1])
            ]
        )
        hit[i] = len(found) > 0 and np.bincount(found).max() >= need
    return hit, threshold
