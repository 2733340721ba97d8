"""The training set of one or several ``--data`` sources: tokenized, deduplicated, split, joined.

Each source is tokenized into its own cache folder and deduplicated by itself (``tokenized.py``,
``corpus.find_duplicates``: adding a source re-reads none of the others), then against the sources
before it in the canonical order (``across.py``). Each source is split by content as one file is
(``corpus.content_split``, or by row number with ``--dedup off``; no split with ``--eval-data``).
The training set is the sources' training rows, source after source in canonical order, read from
one memory-mapped table of every source's cache parts; the epoch's samples follow the weights
(``mixture.Mixture``). With one source this is exactly the one-file path: the same rows, split and
order.

``training_set`` is what training and ``cli/inspect_data.py`` both call; ``source_counts`` and
``records_in_cache`` (the audit and the signatures) are what a run records of it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from chef_genius.data import across as across_mod
from chef_genius.data import corpus
from chef_genius.data.across import AcrossTable, across_sources
from chef_genius.data.fingerprint import content_sha256
from chef_genius.data.mixture import Mixture, Source, canonical, parse_sources
from chef_genius.data.readers import ReadOptions
from chef_genius.data.tokenized import ArrowRows, TokenizedData, cache_folder, is_cached, load_settings_file
from chef_genius.errors import DataError

log = logging.getLogger("chef_genius")


@dataclass
class SourceData:
    source: Source
    tokenized: TokenizedData
    found: corpus.FileDedup | None  # its own duplicates (None: --dedup off)
    across: AcrossTable  # its twins of earlier sources' recipes
    train_rows: np.ndarray  # its usable recipes that training uses (indices into ``tokenized.dataset``)
    eval_rows: np.ndarray  # held out for validation


@dataclass
class TrainingSet:
    sources: list[SourceData]  # canonical order
    rows: ArrowRows  # every source's tokenized rows, source after source
    train: np.ndarray  # training rows of ``rows``, source after source
    eval: np.ndarray  # held-out rows of ``rows``
    mixture: Mixture
    mode: str  # --dedup

    @property
    def several(self) -> bool:
        return len(self.sources) > 1


def is_ready(c, tokenizer, cache_root: Path, options: ReadOptions, settings: corpus.DedupOptions) -> bool:
    """Whether every source (and ``--eval-data``) is tokenized and deduplicated in the cache."""
    files = [s.path for s in parse_sources(c.data)] + ([c.eval_data] if c.eval_data else [])
    if not all(is_cached(p, tokenizer, c.max_source_length, c.max_target_length, cache_root, options) for p in files):
        return False
    for s in parse_sources(c.data):
        folder = cache_folder(s.path, tokenizer, c.max_source_length, c.max_target_length, cache_root, options)
        if settings.active and not corpus.result_path(folder, s.path, options, settings, c.eval_data).is_file():
            return False
    return True


def training_set(
    c, tokenizer, cache_root: Path, options: ReadOptions, settings: corpus.DedupOptions, has_eval_data: bool
) -> TrainingSet:
    """Read, tokenize (or map from the cache), deduplicate and split every source of ``c.data``."""
    sources = canonical(parse_sources(c.data))
    loaded = []
    for s in sources:
        tok = load_settings_file(s.path, tokenizer, c, cache_root, options)
        found = (
            corpus.find_duplicates(s.path, options, settings, tok.cache_dir, c.eval_data) if settings.active else None
        )
        if found is not None and len(found.result.keys) != len(tok.dataset):
            raise DataError(
                f"{s.path}: the duplicate search saw {len(found.result.keys)} recipes, the tokenized cache "
                f"{len(tok.dataset)}; delete {tok.cache_dir} and run again"
            )
        loaded.append((s, tok, found))
    across, keys = _twins_across([(s, t.cache_dir, f) for s, t, f in loaded], c, cache_root, options, settings)
    out = []
    for (s, tok, found), twins, key in zip(loaded, across, keys):
        n = len(tok.dataset)
        if found is None:
            train, held = corpus.split_rows(n, None, c.dedup, has_eval_data, c.eval_split_ratio, c.seed)
        else:
            usable = _trained_rows(found, twins, c.dedup)
            if has_eval_data:
                train, held = usable, usable[:0]
            else:
                train, held = corpus.content_split(key, usable, c.eval_split_ratio, c.seed)
        out.append(SourceData(s, tok, found, twins, np.asarray(train), np.asarray(held)))
    offsets = np.cumsum([0] + [len(d.tokenized.dataset) for d in out])
    rows = out[0].tokenized.dataset if len(out) == 1 else ArrowRows([p for d in out for p in d.tokenized.dataset.paths])
    train = np.concatenate([d.train_rows + o for d, o in zip(out, offsets)]).astype(np.int64)
    held = np.concatenate([d.eval_rows + o for d, o in zip(out, offsets)]).astype(np.int64)
    if len(out) == 1:  # one file: its arrays as they are (same dtype, same object)
        train, held = out[0].train_rows, out[0].eval_rows
    mixture = Mixture(tuple(len(d.train_rows) for d in out), tuple(d.source.weight for d in out))
    return TrainingSet(out, rows, train, held, mixture, c.dedup)


def _twins_across(loaded, c, cache_root: Path, options: ReadOptions, settings: corpus.DedupOptions):
    """(twins across sources, content keys clustered across sources) per source: ``across.across_sources``,
    or its saved decision read back (``across-KEY.npy`` in the cache, named by each source's own one).
    ``loaded``: per source (canonical order) the source, the folder of its decision, the decision."""
    results = [f.result for _, _, f in loaded if f is not None]
    keys: list = [r.keys for r in results] or [None] * len(loaded)
    if len(results) < 2:
        return [AcrossTable() for _ in loaded], keys
    names = [corpus.result_path(folder, s.path, options, settings, c.eval_data).name for s, folder, _ in loaded]
    saved = Path(cache_root) / f"across-{_tag([across_mod.ACROSS_VERSION, names])}.npy"
    if saved.is_file():
        try:
            found = across_mod.load(saved, len(results))
            return found, across_mod.clustered_keys(keys, found)
        except Exception as err:  # damaged: matched again, never trusted
            log.warning("%s is damaged (%s): looking for twins across sources again", saved.name, type(err).__name__)
    sketches = [f.sketches() for _, _, f in loaded if f is not None]
    found, keys = across_sources(keys, sketches, [r.kept for r in results], settings.threshold)
    across_mod.save(saved, found)
    return found, keys


def streamed_set(c, sources: list[Source], cache_root: Path, options: ReadOptions, settings: corpus.DedupOptions):
    """``--streaming`` with ``--dedup``: per source (canonical order) its duplicate decision (kept in
    ``stream-NAME-KEY/`` of the cache root: no tokenized cache), its twins of earlier sources, and the
    usable rows it trains on; as a ``TrainingSet`` without tokenized rows (``rows`` is None), for the
    log's counts and the run folder's audit and signatures."""
    from chef_genius.data.fingerprint import file_fingerprint

    loaded = []
    for s in sources:
        folder = Path(cache_root) / f"stream-{Path(s.path).stem}-{_tag(file_fingerprint(s.path))}"
        folder.mkdir(parents=True, exist_ok=True)
        loaded.append((s, folder, corpus.find_duplicates(s.path, options, settings, folder, c.eval_data)))
    across, _ = _twins_across(loaded, c, cache_root, options, settings)
    out = []
    for (s, _, found), twins in zip(loaded, across):
        usable = _trained_rows(found, twins, c.dedup)
        out.append(SourceData(s, None, found, twins, usable, usable[:0]))  # type: ignore[arg-type]
    mixture = Mixture(tuple(len(d.train_rows) for d in out), tuple(s.weight for s in sources))
    return TrainingSet(out, None, None, None, mixture, c.dedup)  # type: ignore[arg-type]


def _trained_rows(found: corpus.FileDedup, twins: AcrossTable, mode: str) -> np.ndarray:
    """A source's usable rows that training may use: its own decision's (``FileDedup.train_rows``), less
    its twins of earlier sources with ``--dedup remove``."""
    usable = found.train_rows(mode)
    return np.setdiff1d(usable, twins.rows()) if mode == "remove" and len(twins) else usable


def duplicate_counts(d: SourceData) -> dict | None:
    """A source's duplicates by kind (within it, and twins of earlier sources); None without a search."""
    if d.found is None:
        return None
    return {**d.found.result.counts(), **{kind: d.across.of_kind(kind) for kind in across_mod.ACROSS_KINDS}}


def _tag(value) -> str:
    return hashlib.sha256(json.dumps(value).encode()).hexdigest()[:16]


def source_counts(ts: TrainingSet) -> list[dict]:
    """Per source (canonical order): what was read, kept, removed, held out and what an epoch takes."""
    out = []
    for d, per_epoch in zip(ts.sources, ts.mixture.per_epoch):
        stats = d.tokenized.stats
        out.append(
            {
                "data": d.source.path,
                "sha256": content_sha256(d.source.path),
                "weight": d.source.weight,
                "rows_read": stats.get("rows"),
                "usable": stats.get("kept"),
                "duplicates": duplicate_counts(d),
                "training_recipes": len(d.train_rows),
                "validation_recipes": len(d.eval_rows),
                "per_epoch": per_epoch,
            }
        )
    return out


def streamed_counts(sources: list[Source], mix: Mixture, ts: TrainingSet | None = None) -> list[dict]:
    """``source_counts`` of the streaming path (nothing held out): the training recipes, and with ``ts``
    (``streamed_set``: ``--dedup`` on) the usable rows and duplicates of each source."""
    out = []
    for i, (s, n, k) in enumerate(zip(sources, mix.counts, mix.per_epoch)):
        found = ts.sources[i].found if ts is not None else None
        out.append(
            {
                "data": s.path,
                "sha256": content_sha256(s.path),
                "weight": s.weight,
                "rows_read": None,
                "usable": len(found.result.keys) if found is not None else n,
                "duplicates": duplicate_counts(ts.sources[i]) if ts is not None else None,
                "training_recipes": n,
                "validation_recipes": 0,
                "per_epoch": k,
            }
        )
    return out


def source_lines(counts: list[dict], mode: str) -> list[str]:
    """One log line per source."""
    verb = "removed" if mode == "remove" else "found"
    lines = []
    for s in counts:
        d = s["duplicates"]
        dup = (
            "duplicates not looked for"
            if d is None
            else f"duplicates {verb}: {d['exact']} exact, {d['near']} near within, "
            f"{d['exact_across']} exact, {d['near_across']} near of an earlier source"
        )
        read = f"{s['rows_read']} rows read, " if s["rows_read"] is not None else ""
        lines.append(
            f"source {s['data']} (weight {s['weight']:g}): {read}{s['usable']} usable; "
            f"{dup}; {s['training_recipes']} training, {s['validation_recipes']} validation; "
            f"{s['per_epoch']} samples per epoch"
        )
    return lines


def across_audit_rows(ts: TrainingSet):
    """The rows of ``removed_duplicates.csv`` for the twins across sources (``corpus.AUDIT_COLUMNS``)."""
    for d in ts.sources:
        assert d.found is not None or not d.across
        for a in d.across:
            twin = ts.sources[a.twin_source]
            assert d.found is not None and twin.found is not None
            yield [
                a.kind,
                d.found.path,
                int(d.found.records[a.row]),
                d.found.titles[a.row],
                twin.found.path,
                int(twin.found.records[a.twin]),
                twin.found.titles[a.twin],
                f"{a.similarity:.4f}",
            ]


def write_audit(output: Path, ts: TrainingSet) -> Path:
    return corpus.write_audit(output, [d.found for d in ts.sources if d.found is not None], across_audit_rows(ts))


def removed_any(ts: TrainingSet) -> bool:
    return any(d.found is not None and (len(d.found.result.removed) or len(d.across)) for d in ts.sources)


def records_stamp(ts: TrainingSet) -> str:
    """What the run's audit and signatures are a function of: per source its saved decision (its name is
    its key: the content, the settings, the held-out file), its training rows and the paths the audit
    names (``corpus.records_stamp``), and with several sources the matching across them; "" without a
    duplicate search (``--dedup off``)."""
    if any(d.found is None for d in ts.sources):
        return ""
    parts = [corpus.records_stamp(d.found, d.train_rows) for d in ts.sources]  # type: ignore[arg-type]
    return " | ".join(parts + ([f"across {across_mod.ACROSS_VERSION}"] if ts.several else []))


def write_signatures(output: Path, ts: TrainingSet, stamp: str = "") -> Path:
    """The training recipes' content keys and sketches of every source (``corpus.SIGNATURES_FILE``)."""
    founds = [d.found for d in ts.sources]
    assert all(f is not None for f in founds)
    keys = np.concatenate([d.found.result.keys[d.train_rows] for d in ts.sources])  # type: ignore[union-attr]
    sketches = np.concatenate([d.found.sketches()[d.train_rows] for d in ts.sources])  # type: ignore[union-attr]
    return corpus.save_signatures(output, keys, sketches, founds[0].result.threshold, stamp)  # type: ignore[union-attr]


def records_in_cache(cache_root: Path, ts: TrainingSet, stamp: str) -> Path | None:
    """A folder in the cache holding the audit and the signatures of this data and split (``stamp``),
    written once: a new run folder on the same cached data gets them linked or copied
    (``place_records``) instead of writing 700,000 audit lines and 2.7M signatures again (8 s). One
    folder per set of decisions, so another split replaces it rather than adding one. None when the
    cache cannot hold it (read-only, or a run beside this one replaced it meanwhile)."""
    names = [Path(d.found.decision).name for d in ts.sources if d.found is not None]
    folder = Path(cache_root) / f"records-{_tag([across_mod.ACROSS_VERSION, names])}"
    if corpus.records_written(folder, stamp):
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_audit(tmp, ts)
        write_signatures(tmp, ts, stamp)
        shutil.rmtree(folder, ignore_errors=True)  # another split's
        os.replace(tmp, folder)
    except OSError:
        pass  # a read-only cache, or a run beside this one wrote the folder first
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder if corpus.records_written(folder, stamp) else None


def place_records(folder: Path, output: Path) -> None:
    """The audit and the signatures of ``folder`` into the run folder ``output``: hard links where the
    file system allows (no copy; both are only ever replaced whole, never written in place), else
    copies; the signatures last, as their stamp says the pair is complete."""
    for name in (corpus.AUDIT_FILE, corpus.SIGNATURES_FILE):
        tmp = Path(output) / f"{name}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(folder / name, tmp)
        except OSError:
            shutil.copyfile(folder / name, tmp)
        os.replace(tmp, Path(output) / name)
