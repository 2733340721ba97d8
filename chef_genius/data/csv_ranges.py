"""Reading one CSV file in several processes: byte ranges that start at record starts.

A newline ends a record unless it is inside a quoted field, and a well-formed CSV quotes with ``"``
and doubles the quotes inside a field, so a newline with an even number of quotes before it ends a
record. ``plan_csv`` cuts the file there, one scan of ``bytes.count`` speed. A file that breaks that
rule (a stray quote in an unquoted field) must still read exactly as in one pass, so each range's
reader checks its cut: it stops at the first record that starts at or after its end and reports
whether that was exactly the end. Range 0 starts right after the header, so if every range ends
where the next begins, every range started where the one-pass reader starts a record, and the
concatenated rows (and skip counts) are the one-pass reader's. Otherwise the caller reads the file in
one pass.

Only plain UTF-8 files (with or without BOM) whose line ends are LF or CRLF are cut: compressed and
zipped files cannot be entered in the middle, other encodings are not byte-aligned at newlines,
and a lone CR ends a line for the one-pass reader but not for a byte-level one.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterator

from chef_genius.errors import DataError
from chef_genius.data.readers import ReadOptions, ReadStats, csv_fields, csv_reader, examples
from chef_genius.data.sources import UNDECODABLE, data_format, detect_encoding

SCAN_BLOCK = 8 << 20


@dataclass(frozen=True)
class CsvPlan:
    path: str
    delimiter: str
    width: int  # fields in the header
    at: dict  # layout field -> column index
    ranges: tuple  # (start, end) byte ranges of records, in file order


class Lines:
    """Decoded lines of the bytes ``[start, end)``, tracking the byte position; a read past ``end``
    (a record that goes on past the cut) sets ``overran`` and ends the input."""

    def __init__(self, handle, start: int, end: int | None = None):
        self.handle, self.pos, self.end, self.overran = handle, start, end, False
        handle.seek(start)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.end is not None and self.pos >= self.end:
            self.overran = True
            raise StopIteration
        line = self.handle.readline()
        if not line:
            raise StopIteration
        self.pos += len(line)
        return line.decode("utf-8", UNDECODABLE)


def plan_csv(path: str | Path, options: ReadOptions, parts: int) -> CsvPlan | None:
    """About ``parts`` ranges of the records of ``path``, or None where the file cannot be cut."""
    path = Path(path)
    if parts < 2 or path.suffix.lower() != ".csv" or data_format(path) != "csv":
        return None
    with open(path, "rb") as handle:
        head = handle.read(4096)
        codec, _ = detect_encoding(head, path)
        if codec not in ("utf-8", "utf-8-sig"):
            return None
        start = len(codecs.BOM_UTF8) if head.startswith(codecs.BOM_UTF8) else 0
        lines = Lines(handle, start)
        try:
            reader, width, at = csv_reader(path, lines, options.columns)
        except DataError:  # the one-pass reader says what is wrong, or reads it (a lone CR, say)
            return None
        delimiter = reader.dialect.delimiter
        body = lines.pos
    size = path.stat().st_size
    targets = [body + (size - body) * i // parts for i in range(1, parts)]
    cuts = _cuts(path, body, targets)
    if cuts is None:
        return None
    edges = [body, *cuts, size]
    ranges = tuple((a, b) for a, b in zip(edges, edges[1:]) if b > a)
    return CsvPlan(str(path), delimiter, width, at, ranges) if len(ranges) > 1 else None


def _cuts(path: Path, start: int, targets: list[int]) -> list[int] | None:
    """For each target, the first record start at or after it (the byte after a newline with an even
    number of quotes from ``start`` on), without repeats; None if the file has a lone CR."""
    cuts: list[int] = []
    quotes, offset, cr_before = 0, start, False
    pending = list(targets)  # pending[0]: where the search for the next cut goes on
    with open(path, "rb") as handle:
        handle.seek(start)
        while block := handle.read(SCAN_BLOCK):
            if cr_before and block[:1] != b"\n":
                return None
            ends_cr = block.endswith(b"\r")
            if block.count(b"\r") - ends_cr != block.count(b"\r\n"):
                return None
            cr_before = ends_cr
            while pending and pending[0] < offset + len(block):
                cut = _even_newline(block, pending[0] - offset, quotes)
                if cut is None:
                    pending[0] = offset + len(block)  # go on in the next block
                    break
                cuts.append(offset + cut)
                pending = [t for t in pending if t >= offset + cut]
                if pending:
                    pending[0] = max(pending[0], offset + cut)
            quotes += block.count(b'"')
            offset += len(block)
    return None if cr_before else cuts


def _even_newline(block: bytes, at: int, quotes: int) -> int | None:
    while True:
        newline = block.find(b"\n", at)
        if newline < 0:
            return None
        if (quotes + block.count(b'"', 0, newline)) % 2 == 0:
            return newline + 1
        at = newline + 1


class Cut:
    """Whether a range's reader ended exactly at the range's end (None until it has ended)."""

    ok: bool | None = None


def read_range(
    plan: CsvPlan, index: int, stats: ReadStats, options: ReadOptions, cut: Cut, done=None
) -> Iterator[dict]:
    """The examples of range ``index``; ``done(byte position)`` is called as it goes."""
    import csv

    start, end = plan.ranges[index]
    with open(plan.path, "rb") as handle:
        lines = Lines(handle, start, end)
        reader = csv.reader(lines, delimiter=plan.delimiter)

        def more() -> bool:
            if done is not None:
                done(lines.pos - start)
            return lines.pos < end

        yield from examples(csv_fields(reader, plan.width, plan.at, stats, more), stats, options.source_template)
        cut.ok = not lines.overran and lines.pos == end
