"""Read recipe files (CSV, JSONL, Parquet) into (source, target) training pairs.

Three layouts are understood:
- RecipeNLG CSV: an unnamed index column, ``title``, ``ingredients``, ``directions``, ``link``,
  ``source``, ``NER``; list columns are list strings, parsed with ``json`` / ``ast.literal_eval``.
- the replaced system's JSONL: ``{"input": ..., "output": ...}`` (extra keys ignored);
- plain records ``{title, ingredients, directions}`` in JSONL or Parquet (lists or list strings).

A bad row (missing field, unparsable list, empty text, invalid UTF-8, oversized field) is skipped
and counted in ``ReadStats``; it never stops the run. A file that is not a recipe file at all
raises ``DataError`` with one line that says what was expected.
"""

from __future__ import annotations

import csv
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from chef_genius.errors import DataError, printable
from chef_genius.data.recipes import RowError, clean, format_source, format_target, recipe_from_fields

MAX_FIELD_CHARS = 1_000_000  # a recipe field larger than this is junk, not a recipe
CSV_SUFFIXES = {".csv"}
JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
RECIPE_COLUMNS = ("title", "ingredients", "directions")
PAIR_COLUMNS = ("input", "output")


@dataclass
class ReadStats:
    rows: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1

    def summary(self) -> str:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return f"{self.kept} of {self.rows} rows kept; skipped: {reasons}"

    def to_dict(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "skipped": dict(self.skipped)}


def data_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        return "csv"
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise DataError(f"{path}: unknown data format {suffix or '(no suffix)'}; use .csv, .jsonl or .parquet")


def read_examples(path: str | Path, stats: ReadStats) -> Iterator[dict]:
    """Yield ``{"source": str, "target": str}`` for every usable row of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    reader = {"csv": _csv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}[data_format(path)]
    for row in reader(path, stats):
        stats.rows += 1
        try:
            example = _example(row)
        except RowError as err:
            stats.skip(str(err))
            continue
        stats.kept += 1
        yield example


def _example(row: dict) -> dict:
    for value in row.values():
        if isinstance(value, str):
            if len(value) > MAX_FIELD_CHARS:
                raise RowError("oversized_field")
            if _has_surrogates(value):
                raise RowError("invalid_utf8")
    if "input" in row and "output" in row:
        source, target = row["input"], row["output"]
        if not isinstance(source, str) or not isinstance(target, str):
            raise RowError("missing_field")
        source, target = clean(source), clean(target)
        if not source or not target:
            raise RowError("empty_text")
        return {"source": source, "target": target}
    recipe = recipe_from_fields(row.get("title"), row.get("ingredients"), row.get("directions"),
                                row.get("NER", row.get("ner")))
    return {"source": format_source(recipe), "target": format_target(recipe)}


def _has_surrogates(text: str) -> bool:
    # Undecodable bytes arrive as lone surrogates (errors="surrogateescape").
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_columns(path: Path, columns) -> None:
    columns = set(columns or ())
    if set(PAIR_COLUMNS) <= columns or set(RECIPE_COLUMNS) <= columns:
        return
    raise DataError(f"{path}: expected columns {', '.join(RECIPE_COLUMNS)} (RecipeNLG layout) or "
                    f"{', '.join(PAIR_COLUMNS)}; found {printable(', '.join(sorted(map(str, columns))), 120) or 'none'}"
                    + _binary_hint(columns))


def _binary_hint(columns) -> str:
    text = "".join(map(str, columns))
    odd = sum(1 for c in text[:4096] if not c.isprintable() and c not in "\t")
    return "; it looks like a binary file, not text" if text and odd > len(text[:4096]) // 10 else ""


def _csv_rows(path: Path, stats: ReadStats) -> Iterator[dict]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        try:
            header = reader.fieldnames
        except csv.Error as err:
            raise DataError(f"{path}: not a readable CSV file ({printable(str(err), 120)})") from None
        if not header:
            raise DataError(f"{path}: the file is empty")
        _check_columns(path, header)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error:
                stats.rows += 1
                stats.skip("malformed_csv")
                continue
            if None in row or any(v is None for v in row.values()):
                stats.rows += 1
                stats.skip("wrong_field_count")
                continue
            yield row


def _jsonl_rows(path: Path, stats: ReadStats) -> Iterator[dict]:
    with open(path, "rb") as handle:
        first = handle.read(1024).lstrip()
        handle.seek(0)
        if not first:
            raise DataError(f"{path}: the file is empty")
        if first.startswith(b"["):
            yield from _json_array_rows(path, handle)
            return
        seen_object = False
        for raw in handle:
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                stats.rows += 1
                stats.skip("invalid_utf8")
                continue
            except ValueError:
                if not seen_object and stats.rows >= 20:
                    raise DataError(f"{path}: not a JSON Lines file (no JSON object in its first lines)")
                stats.rows += 1
                stats.skip("bad_json")
                continue
            if not isinstance(row, dict):
                stats.rows += 1
                stats.skip("bad_json")
                continue
            if not seen_object:
                _check_columns(path, row.keys())
                seen_object = True
            yield row
        if not seen_object:
            raise DataError(f"{path}: not a JSON Lines file of recipes (no JSON object found)")


def _json_array_rows(path: Path, handle) -> Iterator[dict]:
    try:
        rows = json.loads(handle.read().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path}: not a valid JSON file ({printable(str(err), 120)})") from None
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
        raise DataError(f"{path}: expected a JSON array of recipe objects")
    _check_columns(path, rows[0].keys())
    yield from (row if isinstance(row, dict) else {} for row in rows)


def _parquet_rows(path: Path, stats: ReadStats) -> Iterator[dict]:
    import pyarrow.parquet as pq
    try:
        parquet = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet file ({printable(str(err), 120)})") from None
    names = parquet.schema_arrow.names
    _check_columns(path, names)
    wanted = [c for c in (*PAIR_COLUMNS, *RECIPE_COLUMNS, "NER", "ner") if c in names]
    for batch in parquet.iter_batches(batch_size=4096, columns=wanted):
        yield from batch.to_pylist()
