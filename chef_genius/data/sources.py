"""Opening a data file as it arrives: compressed or zipped, and in the encoding it was saved in.

- Containers: ``.gz`` and ``.bz2`` (``recipes.csv.gz``: the name before the suffix gives the format)
  and ``.zip`` holding one data file (RecipeNLG ships ``full_dataset.csv`` in ``RecipeNLG_dataset.zip``).
  Nothing is unpacked to disk; the archive is read as a stream each time.
- Encodings: a byte-order mark decides (UTF-8 with BOM as Excel writes it, UTF-16 LE / BE as Windows
  PowerShell 5.1's ``>`` redirect writes it, UTF-32); without one the text is UTF-8. UTF-16 without a
  BOM (NUL bytes in every other place) is refused, naming the encoding and how to convert it, rather
  than read as garbage. Line ends (LF or CRLF) are the CSV / JSON readers' business: both accept both.

A byte sequence the encoding cannot decode becomes a lone surrogate, so the row holding it is
skipped and counted (``invalid_utf8``) instead of stopping the run.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import gzip
import io
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from chef_genius.errors import DataError

DATA_SUFFIXES = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
COMPRESSED: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".bz2": bz2.open}  # opened "rb": binary
ARCHIVES = (".zip",)
BOMS = (  # longest first: the UTF-32 LE mark starts with the UTF-16 LE one
    (codecs.BOM_UTF32_LE, "utf-32", "UTF-32 LE"),
    (codecs.BOM_UTF32_BE, "utf-32", "UTF-32 BE"),
    (codecs.BOM_UTF8, "utf-8-sig", "UTF-8 with BOM"),
    (codecs.BOM_UTF16_LE, "utf-16", "UTF-16 LE"),
    (codecs.BOM_UTF16_BE, "utf-16", "UTF-16 BE"),
)
UNDECODABLE = "chef_genius_undecodable"
_HEAD = 4096


def _mark_undecodable(err: UnicodeError) -> tuple[str, int]:
    assert isinstance(err, UnicodeDecodeError)  # registered for decoding only
    return "\udcff", err.end  # a lone surrogate: the row check counts it as invalid text


codecs.register_error(UNDECODABLE, _mark_undecodable)


def data_format(path: str | Path) -> str:
    """csv, jsonl or parquet, from the name of the data file (inside its archive for a .zip)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in ARCHIVES:
        return _suffix_format(PurePosixPath(_zip_member(path)), path)
    if suffix in COMPRESSED:
        return _suffix_format(path.with_suffix(""), path)
    return _suffix_format(path, path)


def _suffix_format(name: PurePosixPath | Path, path: Path) -> str:
    fmt = DATA_SUFFIXES.get(name.suffix.lower())
    if fmt is None:
        shown = name.suffix or "(no suffix)"
        raise DataError(
            f"{path}: unknown data format {shown}; use .csv, .jsonl or .parquet, "
            "optionally as .gz, .bz2 or inside a .zip"
        )
    return fmt


def _zip_member(path: Path) -> str:
    """The one data file inside a zip (folders, macOS metadata and hidden files do not count)."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info.filename for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path}: not a readable zip file ({err})") from None
    visible = [n for n in names if not n.startswith("__MACOSX/") and not PurePosixPath(n).name.startswith(".")]
    data = [n for n in visible if PurePosixPath(n).suffix.lower() in DATA_SUFFIXES]
    if len(data) == 1:
        return data[0]
    if not data:
        shown = ", ".join(visible[:5]) or "nothing"
        raise DataError(f"{path}: the zip holds no .csv, .jsonl or .parquet file (it holds {shown})")
    raise DataError(
        f"{path}: the zip holds {len(data)} data files ({', '.join(data[:5])}); "
        "unzip it and pass the one to train on with --data"
    )


@contextlib.contextmanager
def open_binary(path: str | Path):
    """The data file's bytes, decompressed or taken out of its zip as a stream."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in ARCHIVES:
            member = _zip_member(path)
            with zipfile.ZipFile(path) as archive, archive.open(member) as handle:
                yield handle
        elif suffix in COMPRESSED:
            with COMPRESSED[suffix](path, "rb") as handle:
                yield _checked_stream(handle, path, suffix)
        else:
            with open(path, "rb") as handle:
                yield handle
    except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: the {suffix} file is damaged or cut short ({err})") from None


def _checked_stream(handle, path: Path, suffix: str):
    try:
        handle.peek(1)
    except (OSError, EOFError) as err:  # bz2 / gzip say so on the first read
        raise DataError(f"{path}: not a readable {suffix} file ({err})") from None
    return handle


def detect_encoding(head: bytes, where: str | Path) -> tuple[str, str]:
    """(codec, name shown to the user) of a text file starting with ``head``."""
    for bom, codec, name in BOMS:
        if head.startswith(bom):
            return codec, name
    utf16 = _utf16_without_bom(head)
    if utf16:
        raise DataError(
            f"{where}: looks like {utf16} text without a byte-order mark; save it as UTF-8 "
            f"(iconv -f {utf16.replace(' ', '')} -t UTF-8 FILE > FILE.utf8, or in PowerShell: "
            "Get-Content FILE | Set-Content -Encoding utf8 NEW_FILE)"
        )
    return "utf-8", "UTF-8"


def _utf16_without_bom(head: bytes) -> str | None:
    """Mostly-ASCII UTF-16 has a NUL in every other byte: LE puts them at odd offsets, BE at even."""
    sample = head[: len(head) - len(head) % 2]
    if len(sample) < 8:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    half = len(sample) // 2
    if odd > 0.6 * half and even < 0.05 * half:
        return "UTF-16 LE"
    if even > 0.6 * half and odd < 0.05 * half:
        return "UTF-16 BE"
    return None


@contextlib.contextmanager
def open_text(path: str | Path):
    """The data file as text (BOM removed, newlines untranslated) and the encoding's name."""
    with open_binary(path) as handle:
        head = handle.read(_HEAD)
        handle.seek(0)
        codec, name = detect_encoding(head, path)
        text = io.TextIOWrapper(handle, encoding=codec, errors=UNDECODABLE, newline="")
        try:
            yield text, name
        finally:
            text.detach()  # the binary handle is closed by its own context
