"""Read recipe files (CSV, JSONL, Parquet) into (source, target) training pairs.

The layouts understood (``layouts.py``): RecipeNLG (an unnamed index column, ``title``,
``ingredients``, ``directions``, ``link``, ``source``, ``NER``), Food.com's ``RAW_recipes.csv``
(``name``, ``steps``, ``ingredients``...), the replaced system's ``{"input": ..., "output": ...}``
JSONL (extra keys ignored), plain ``{title, ingredients, directions}`` records, and any other one
mapped with ``--columns``. List columns may be lists, JSON or Python list strings (parsed with
``json`` / ``ast.literal_eval``) or one item a line.

A CSV header without commas but with semicolons or tabs sets that delimiter (Excel's exports in
locales with a decimal comma, and its "Text" export). The file may be compressed (.gz, .bz2) or
zipped, and in UTF-8 (with or without BOM), UTF-16 or UTF-32 with BOM, with LF or CRLF line ends
(``sources.py``). Only the fields the layout uses are checked, so junk in an unused column (a link,
a site name) does not cost the row.

A bad row (missing field, unparsable list, empty text, undecodable bytes, oversized field) is
skipped and counted in ``ReadStats``; it never stops the run. A file that is not a recipe file at
all raises ``DataError`` with one line that says what was expected.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Iterator

from chef_genius.errors import DataError, printable
from chef_genius.data.layouts import Layout, needed_columns, resolve_layout
from chef_genius.data.recipes import (
    DEFAULT_SOURCE_TEMPLATE,
    RowError,
    clean,
    format_source,
    format_target,
    recipe_from_fields,
)
from chef_genius.data.sources import data_format, open_binary, open_text

MAX_FIELD_CHARS = 1_000_000  # a recipe field larger than this is junk, not a recipe


@dataclass(frozen=True)
class ReadOptions:
    """How rows become examples: the ``--columns`` mapping and the ``--source-template``."""

    columns: str | None = None
    source_template: str = DEFAULT_SOURCE_TEMPLATE

    def key(self) -> dict:
        """What the tokenized cache key takes from these options."""
        return {"columns": self.columns, "source_template": self.source_template}


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


def encoding_hint(stats: dict) -> str | None:
    """What to do about rows skipped as undecodable: most likely a file saved in a Windows code page."""
    count = (stats.get("skipped") or {}).get("invalid_utf8", 0)
    if not count:
        return None
    rows = "1 row is" if count == 1 else f"{count} rows are"
    return (
        f"{rows} not valid UTF-8 and skipped; if the file was saved as Windows-1252 or "
        "Latin-1, convert it (iconv -f CP1252 -t UTF-8 FILE > FILE.utf8) and train on the converted file"
    )


def read_examples(path: str | Path, stats: ReadStats, options: ReadOptions = ReadOptions()) -> Iterator[dict]:
    """Yield ``{"source": str, "target": str}`` for every usable row of ``path``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    reader = {"csv": _csv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}[data_format(path)]
    yield from examples(reader(path, stats, options.columns), stats, options.source_template)


def examples(rows: Iterator[dict], stats: ReadStats, template: str) -> Iterator[dict]:
    """The usable examples of ``rows`` (field -> value, the layout applied); the others counted."""
    for fields in rows:
        stats.rows += 1
        try:
            example = _example(fields, template)
        except RowError as err:
            stats.skip(str(err))
            continue
        stats.kept += 1
        yield example


def _example(row: dict, template: str) -> dict:
    """``row``: field -> value (the layout applied)."""
    for value in row.values():
        if isinstance(value, str):
            if len(value) > MAX_FIELD_CHARS:
                raise RowError("oversized_field")
            if _has_surrogates(value):
                raise RowError("invalid_utf8")
    if "input" in row:
        source, target = row.get("input"), row.get("output")
        if not isinstance(source, str) or not isinstance(target, str):
            raise RowError("missing_field")
        source, target = clean(source), clean(target)
        if not source or not target:
            raise RowError("empty_text")
        return {"source": source, "target": target}
    recipe = recipe_from_fields(row.get("title"), row.get("ingredients"), row.get("directions"), row.get("ner"))
    return {"source": format_source(recipe, template), "target": format_target(recipe)}


def _has_surrogates(text: str) -> bool:
    # Undecodable bytes arrive as lone surrogates (errors="surrogateescape").
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _csv_rows(path: Path, stats: ReadStats, columns: str | None) -> Iterator[dict]:
    with open_text(path) as (handle, _):
        reader, width, at = csv_reader(path, iter(handle.readline, ""), columns)
        yield from csv_fields(reader, width, at, stats)


def csv_reader(path: Path, lines: Iterator[str], columns: str | None):
    """(csv reader past the header, the header's width, column index of each layout field) for the
    text ``lines`` of a CSV file."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    first = next(lines, "")
    reader = csv.reader(itertools.chain([first], lines), delimiter=_delimiter(first))
    try:
        header = next(reader, None)
    except csv.Error as err:
        raise DataError(f"{path}: not a readable CSV file ({printable(str(err), 120)})") from None
    if not header:
        raise DataError(f"{path}: the file is empty")
    layout = resolve_layout(path, header, columns)
    return reader, len(header), {name: header.index(column) for name, column in layout.columns.items()}


def csv_fields(reader, width: int, at: dict, stats: ReadStats, more=lambda: True) -> Iterator[dict]:
    """The layout's fields of each CSV record while ``more()``; malformed records counted."""
    while more():
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error:
            stats.rows += 1
            stats.skip("malformed_csv")
            continue
        if not values:
            continue  # a blank line (csv.DictReader skipped them too)
        if len(values) != width:
            stats.rows += 1
            stats.skip("wrong_field_count")
            continue
        yield {name: values[i] for name, i in at.items()}


def _delimiter(header: str) -> str:
    """A comma, unless the header has none but semicolons (Excel in locales with a decimal comma) or
    tabs (Excel's "Text" export)."""
    if "," not in header:
        for other in (";", "\t"):
            if other in header:
                return other
    return ","


def _jsonl_rows(path: Path, stats: ReadStats, columns: str | None) -> Iterator[dict]:
    with open_text(path) as (handle, _):
        lines = (line for line in handle if line.strip())
        first = next(lines, None)
        if first is None:
            raise DataError(f"{path}: the file is empty")
        if first.lstrip().startswith("["):
            yield from _json_array_rows(path, first + handle.read(), columns)
            return
        layouts: dict[frozenset, Layout | None] = {}
        seen_object = False
        for line in itertools.chain([first], lines):
            if _has_surrogates(line):
                stats.rows += 1
                stats.skip("invalid_utf8")
                continue
            try:
                row = json.loads(line)
            except ValueError:
                if not seen_object and stats.rows >= 20:
                    raise DataError(f"{path}: not a JSON Lines file (no JSON object in its first lines)") from None
                stats.rows += 1
                stats.skip("bad_json")
                continue
            if not isinstance(row, dict):
                stats.rows += 1
                stats.skip("bad_json")
                continue
            layout = _row_layout(path, row, columns, layouts, first=not seen_object)
            seen_object = True
            if layout is None:  # a later object that fits no layout
                stats.rows += 1
                stats.skip("missing_field")
                continue
            yield layout.fields(row)
        if not seen_object:
            raise DataError(f"{path}: not a JSON Lines file of recipes (no JSON object found)")


def _row_layout(path, row: dict, columns, layouts: dict, first: bool) -> Layout | None:
    """JSON objects may differ in keys (pairs beside plain records): a layout per key set; the first
    object's must fit (else the file is refused), a later misfit is a bad row."""
    keys = frozenset(row)
    if keys not in layouts:
        try:
            layouts[keys] = resolve_layout(path, list(row), columns)
        except DataError:
            if first:
                raise
            layouts[keys] = None
    return layouts[keys]


def _json_array_rows(path: Path, text: str, columns: str | None) -> Iterator[dict]:
    try:
        rows = json.loads(text)
    except ValueError as err:
        raise DataError(f"{path}: not a valid JSON file ({printable(str(err), 120)})") from None
    if not isinstance(rows, list) or not rows or not isinstance(rows[0], dict):
        raise DataError(f"{path}: expected a JSON array of recipe objects")
    layouts: dict[frozenset, Layout | None] = {}
    for i, row in enumerate(rows):
        layout = _row_layout(path, row, columns, layouts, first=i == 0) if isinstance(row, dict) else None
        yield layout.fields(row) if layout is not None else {}


def _parquet_rows(path: Path, stats: ReadStats, columns: str | None) -> Iterator[dict]:
    import pyarrow.parquet as pq

    with contextlib.ExitStack() as stack:
        plain = path.suffix.lower() in (".parquet", ".pq")  # else compressed or zipped: read as a stream
        source = path if plain else stack.enter_context(open_binary(path))
        try:
            parquet = pq.ParquetFile(source)
        except Exception as err:  # pyarrow raises several types for a file that is not Parquet
            raise DataError(f"{path}: not a readable Parquet file ({printable(str(err), 120)})") from None
        layout = resolve_layout(path, parquet.schema_arrow.names, columns)
        for batch in parquet.iter_batches(batch_size=4096, columns=needed_columns(layout)):
            yield from (layout.fields(row) for row in batch.to_pylist())
